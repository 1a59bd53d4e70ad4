// Routed-expert pipelines: a base model plus its expert library, served as `<base>+phatgoose`
// and `<base>+arrow`. Each request runs on a context configured for what it asked —
// routed LoRA inside llama.cpp (per token and module), or a baseline: one adapter (single),
// every adapter at 1/N (merge), or the one adapter retrieval picks — kept in a small cache of
// contexts keyed by that configuration.
import { plainDecode } from "../decoding/plain.js";
import type { RoutingMethod, RoutingMode, RoutingOverrides } from "../decoding/routing.js";
import type { DecodeStep, GenerationRequest, RoutingToken } from "../decoding/types.js";
import { FlockError } from "../models/errors.js";
import type { LoadedModel } from "../models/model.js";
import type { RoutedLoraConfig } from "../models/native.js";
import type { Expert, ExpertLibrary } from "./experts.js";
import { routingScores, topExperts } from "./score.js";

export interface RoutingSettings {
  topK: number;
  temperature: number;
}

/** What a variant context is: LoRA adapters at fixed scales, or routed LoRA; with or without hidden states. */
export interface VariantSpec {
  adapters: Array<{ path: string; scale: number }>;
  routing?: RoutedLoraConfig;
  hiddenStates: boolean;
}

/** Creates the context for a variant; supplied by the loader, which owns the engine. */
export type VariantLoader = (spec: VariantSpec) => Promise<LoadedModel>;

/** The module whose routing is reported per token: its input is the final hidden state. */
export const REPORTED_MODULE = "output.weight";

/** The contexts of one expert library, most recently used last; the oldest are retired past `max`. */
export class VariantCache {
  private readonly entries = new Map<string, Promise<LoadedModel>>();

  constructor(
    private readonly load: VariantLoader,
    readonly max: number,
  ) {}

  /** `key` names the configuration (the spec itself can hold megabytes of gates). */
  get(key: string, spec: VariantSpec): Promise<LoadedModel> {
    let entry = this.entries.get(key);
    if (entry) {
      this.entries.delete(key);
    } else {
      entry = this.load(spec);
      entry.catch(() => this.entries.delete(key));
    }
    this.entries.set(key, entry);
    while (this.entries.size > this.max) {
      const [oldest, model] = this.entries.entries().next().value!;
      this.entries.delete(oldest);
      void model.then((m) => m.retire(), () => undefined);
    }
    return entry;
  }

  get size(): number {
    return this.entries.size;
  }

  /** Retires every context (the library changed); requests holding one finish on it. */
  clear(): void {
    for (const model of this.entries.values()) void model.then((m) => m.retire(), () => undefined);
    this.entries.clear();
  }
}

export interface RoutedSetup {
  method: RoutingMethod;
  library: ExpertLibrary;
  settings: RoutingSettings;
  variants: VariantCache;
}

/** A request's routing, resolved against the library before anything is generated. */
export interface RoutingPlan {
  mode: RoutingMode;
  topK: number;
  temperature: number;
  /** The experts routing, merge and retrieval choose among; for single, the one adapter. */
  experts: Expert[];
}

function gateOf(expert: Expert, method: RoutingMethod, module: string): Float32Array | null {
  return (method === "phatgoose" ? expert.phatgoose : expert.arrow)?.get(module) ?? null;
}

/**
 * Checks a request's routing against the library: unknown names, an expert without the
 * method's gates (PHATGOOSE needs a gate file), single without an expert. Throws FlockErrors
 * the server turns into 400s before a stream starts.
 */
export function planRouting(setup: RoutedSetup, overrides: RoutingOverrides = {}): RoutingPlan {
  const { library, method } = setup;
  const param = "flock.routing";
  const mode = overrides.mode ?? "routed";
  const byName = (name: string, field: string) => {
    const expert = library.get(name);
    if (!expert) {
      const known = library.list().map((e) => e.spec.name);
      throw new FlockError("invalid_request", `unknown expert "${name}"; ${library.baseId} has ${known.length > 0 ? known.join(", ") : "no experts"}`, `${param}.${field}`);
    }
    return expert;
  };
  const plan = { mode, topK: overrides.topK ?? setup.settings.topK, temperature: overrides.temperature ?? setup.settings.temperature };
  if (mode === "single") {
    if (!overrides.expert) throw new FlockError("invalid_request", `mode "single" needs ${param}.expert`, `${param}.expert`);
    return { ...plan, experts: [byName(overrides.expert, "expert")] };
  }
  if (overrides.expert !== undefined) throw new FlockError("invalid_request", `${param}.expert is for mode "single"`, `${param}.expert`);
  const needsGates = mode === "routed" || mode === "retrieval";
  let experts: Expert[];
  if (overrides.experts) {
    experts = overrides.experts.map((name) => byName(name, "experts"));
    const ungated = needsGates ? experts.find((e) => !e.modules.every((m) => gateOf(e, method, m))) : undefined;
    if (ungated) {
      throw new FlockError("invalid_request", `expert ${ungated.spec.name} has no PHATGOOSE gate file, so ${library.baseId}+phatgoose cannot route to it (use +arrow, or fit gates with npm run fit:gates)`, `${param}.experts`);
    }
  } else {
    // By default PHATGOOSE routes among the experts that have gate files.
    experts = needsGates ? library.list().filter((e) => e.modules.every((m) => gateOf(e, method, m))) : library.list();
  }
  if (experts.length === 0) {
    const why = library.size === 0 ? "has no experts" : `has no expert with ${method} gates`;
    throw new FlockError("invalid_request", `model ${library.baseId} ${why}`, param);
  }
  if (mode === "retrieval" && !experts.every((e) => gateOf(e, method, REPORTED_MODULE))) {
    throw new FlockError("invalid_request", `retrieval compares the prompt with each expert's ${REPORTED_MODULE} gate; some of these experts do not adapt ${REPORTED_MODULE}`, param);
  }
  return { ...plan, experts };
}

/** Retrieval: the expert whose reported-module gate scores highest against the prompt's mean final hidden state. */
async function retrieve(setup: RoutedSetup, experts: readonly Expert[], prompt: readonly number[], signal?: AbortSignal): Promise<Expert> {
  const base = await setup.variants.get("base+hidden", { adapters: [], hiddenStates: true });
  const seq = await base.acquire(prompt, signal);
  let mean: Float64Array;
  try {
    await seq.truncate(0);
    const { hidden } = await seq.evaluateWithHidden(prompt, prompt.map((_, i) => i));
    mean = new Float64Array(hidden[0].length);
    for (const h of hidden) for (let i = 0; i < h.length; i++) mean[i] += h[i] / hidden.length;
  } finally {
    seq.release();
  }
  const scores = routingScores(setup.method, mean, experts.map((e) => gateOf(e, setup.method, REPORTED_MODULE)!));
  return experts[scores.indexOf(Math.max(...scores))];
}

/** The routed LoRA configuration over `experts`: every module some expert adapts. */
function routedConfig(setup: RoutedSetup, plan: RoutingPlan): RoutedLoraConfig {
  const { library, method } = setup;
  const modules = [...new Set(plan.experts.flatMap((e) => e.modules))].sort();
  return {
    adapters: plan.experts.map((e) => ({ path: e.spec.lora, scale: e.spec.scale })),
    // An expert that leaves a module alone gets a zero gate there; its zero A and B add nothing.
    modules: modules.map((module) => {
      const width = library.base.modules.get(module)![0];
      const gates = new Float32Array(plan.experts.length * width);
      plan.experts.forEach((e, i) => {
        const gate = gateOf(e, method, module);
        if (gate) gates.set(gate, i * width);
      });
      return { name: module, gates };
    }),
    method,
    topK: plan.topK,
    temperature: plan.temperature,
  };
}

/** The context a plan runs on, and who serves each token (from the hidden state behind its logits). */
interface Variant {
  model: LoadedModel;
  report(hidden: Float32Array | undefined): RoutingToken | null;
}

/** `context`: the tokens retrieval compares the experts with (the prompt). */
async function variantFor(setup: RoutedSetup, plan: RoutingPlan, context: readonly number[], signal?: AbortSignal): Promise<Variant> {
  if (plan.mode === "routed") {
    const config = routedConfig(setup, plan);
    const reported = config.modules.find((m) => m.name === REPORTED_MODULE);
    const key = JSON.stringify({ version: setup.library.version, method: setup.method, topK: plan.topK, temperature: plan.temperature, experts: plan.experts.map((e) => e.spec.name) });
    const model = await setup.variants.get(key, { adapters: [], routing: config, hiddenStates: reported !== undefined });
    const width = reported ? reported.gates.length / plan.experts.length : 0;
    const gates = plan.experts.map((_, i) => reported?.gates.subarray(i * width, (i + 1) * width) ?? new Float32Array());
    return {
      model,
      report(hidden) {
        if (!hidden || !reported) return null;
        const weights = topExperts(routingScores(setup.method, hidden, gates), plan.topK, plan.temperature);
        return { experts: weights.map((w) => ({ expert: plan.experts[w.expert].spec.name, weight: w.weight })) };
      },
    };
  }
  const chosen = plan.mode === "retrieval" ? [await retrieve(setup, plan.experts, context, signal)] : plan.experts;
  const share = 1 / chosen.length;
  const scale = plan.mode === "merge" ? share : 1;
  const adapters = chosen.map((e) => ({ path: e.spec.lora, scale: e.spec.scale * scale }));
  const model = await setup.variants.get(JSON.stringify({ version: setup.library.version, adapters }), { adapters, hiddenStates: false });
  const fixed: RoutingToken = { experts: chosen.map((e) => ({ expert: e.spec.name, weight: share })) };
  return { model, report: () => fixed };
}

export async function* routedDecode(setup: RoutedSetup, request: GenerationRequest): AsyncGenerator<DecodeStep> {
  const plan = planRouting(setup, request.routing);
  const { model, report } = await variantFor(setup, plan, request.prompt, request.signal);
  const hiddenStates: Float32Array[] = [];
  const observeHidden = model.hasHiddenStates ? (h: Float32Array) => hiddenStates.push(h) : undefined;
  for await (const step of plainDecode(model, { ...request, observeHidden })) {
    yield { ...step, routing: step.tokens.map(() => report(hiddenStates.shift())) };
  }
}

/**
 * Teacher-forced scoring: the next-token logits at every position of `tokens` and who served
 * each, in one batch. Retrieval compares the experts with the whole text.
 */
export async function scoreRouted(setup: RoutedSetup, overrides: RoutingOverrides, tokens: readonly number[]): Promise<{ logits: Float32Array[]; routing: Array<RoutingToken | null> }> {
  const plan = planRouting(setup, overrides);
  const { model, report } = await variantFor(setup, plan, tokens);
  const seq = await model.acquire([]);
  try {
    await seq.truncate(0);
    const positions = tokens.map((_, i) => i);
    if (!model.hasHiddenStates) {
      const logits = await seq.evaluate(tokens, positions);
      return { logits, routing: logits.map(() => report(undefined)) };
    }
    const { logits, hidden } = await seq.evaluateWithHidden(tokens, positions);
    return { logits, routing: hidden.map((h) => report(h)) };
  } finally {
    seq.release();
  }
}
