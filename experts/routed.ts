// Routed-expert pipelines: a base model plus its expert library, served as `<base>+phatgoose`
// and `<base>+arrow`. Each request runs on a context configured for what it asked —
// routed LoRA inside llama.cpp (per token and module), or a baseline: one adapter (single),
// every adapter at 1/N (merge), or the one adapter retrieval picks — kept in a small cache of
// contexts keyed by that configuration.
import { plainDecode } from "../decoding/plain.js";
import type { RoutingMethod, RoutingMode, RoutingOverrides, RoutingSettings } from "./config.js";
import type { DecodeStep, GenerationRequest, RoutingToken } from "../decoding/types.js";
import { FlockError } from "../engine/errors.js";
import type { LoadedModel } from "../engine/model.js";
import type { RoutedLoraConfig, RoutingTrace } from "../engine/native.js";
import type { Expert, ExpertLibrary } from "./library.js";
import { routingScores, topWeights } from "./score.js";

/** What a variant context is: LoRA adapters at fixed scales, or routed LoRA; with or without hidden states. */
export interface VariantSpec {
  adapters: Array<{ path: string; scale: number }>;
  routing?: RoutedLoraConfig;
  hiddenStates: boolean;
}

/** Creates the context for a variant; supplied by the loader, which owns the engine. */
export type VariantLoader = (spec: VariantSpec) => Promise<LoadedModel>;

/** The output layer: its input is the final hidden state, the one module input the engine returns (retrieval, fit:gates). */
export const OUTPUT_MODULE = "output.weight";

/**
 * The contexts of one expert library, most recently used last; the oldest are retired past
 * `max`. A retired context lives on until its requests finish, so `max` alone does not bound
 * memory under load: at most `max` contexts are alive at once, cached or retired, and a
 * configuration that would need another is refused (429) until one frees.
 */
export class VariantCache {
  private readonly entries = new Map<string, Promise<LoadedModel>>();
  /** The cached contexts that finished loading. */
  private readonly loaded = new Map<string, LoadedModel>();
  /** Retired contexts that requests still hold. */
  private retired: LoadedModel[] = [];

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
      if (this.live >= this.max) {
        // Room only where the context this one evicts is idle, and so freed at once.
        const evicted = this.entries.size >= this.max ? this.loaded.get(this.entries.keys().next().value!) : undefined;
        if (!evicted || evicted.runningSequences > 0 || evicted.waitingSequences > 0) {
          throw new FlockError(
            "overloaded",
            `all ${this.max} routing contexts of this model are in use by other configurations (experts, mode, top_k, temperature); retry, or use a configuration already served`,
          );
        }
      }
      entry = this.load(spec);
      entry.then(
        (model) => this.entries.get(key) === entry && this.loaded.set(key, model),
        () => this.entries.delete(key),
      );
    }
    this.entries.set(key, entry);
    while (this.entries.size > this.max) {
      const [oldest, model] = this.entries.entries().next().value!;
      this.entries.delete(oldest);
      this.loaded.delete(oldest);
      void model.then((m) => this.retire(m), () => undefined);
    }
    return entry;
  }

  private retire(model: LoadedModel): void {
    model.retire();
    this.retired.push(model);
  }

  get size(): number {
    return this.entries.size;
  }

  /** Contexts alive: cached, and retired ones that requests still hold. */
  get live(): number {
    this.retired = this.retired.filter((m) => !m.isDisposed);
    return this.entries.size + this.retired.length;
  }

  /** Retires every context (the library changed); requests holding one finish on it. */
  clear(): void {
    for (const model of this.entries.values()) void model.then((m) => this.retire(m), () => undefined);
    this.entries.clear();
    this.loaded.clear();
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
  // Each routing configuration is a context of its own: temperatures that differ past two
  // significant digits are one configuration, not a new context per float.
  const temperature = Number((overrides.temperature ?? setup.settings.temperature).toPrecision(2));
  const plan = { mode, topK: Math.min(overrides.topK ?? setup.settings.topK, library.size), temperature };
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
  if (mode === "retrieval" && !experts.every((e) => gateOf(e, method, OUTPUT_MODULE))) {
    throw new FlockError("invalid_request", `retrieval compares the prompt with each expert's ${OUTPUT_MODULE} gate; some of these experts do not adapt ${OUTPUT_MODULE}`, param);
  }
  return { ...plan, experts };
}

/**
 * Positions evaluated at once for retrieval: every position is an output, and llama.cpp computes
 * and keeps a vocabulary of logits for each (its outputs cannot be hidden states alone), so a
 * whole long prompt at once would hold prompt × vocabulary floats (2.4 GB for 4k tokens at
 * 151,936). flock reads the hidden states only: no logits are copied out.
 */
const RETRIEVAL_CHUNK = 32;

/** Retrieval: the expert whose reported-module gate scores highest against the prompt's mean final hidden state. */
async function retrieve(setup: RoutedSetup, experts: readonly Expert[], prompt: readonly number[], signal?: AbortSignal): Promise<Expert> {
  const base = await setup.variants.get("base+hidden", { adapters: [], hiddenStates: true });
  const seq = await base.acquire(prompt, signal);
  let mean: Float64Array | null = null;
  try {
    await seq.truncate(0);
    for (let at = 0; at < prompt.length; at += RETRIEVAL_CHUNK) {
      const chunk = prompt.slice(at, at + RETRIEVAL_CHUNK);
      const { hidden } = await seq.evaluateWithHidden(chunk, chunk.map((_, i) => i), { logits: false });
      mean ??= new Float64Array(hidden[0].length);
      for (const h of hidden) for (let i = 0; i < h.length; i++) mean[i] += h[i] / prompt.length;
    }
  } finally {
    seq.release();
  }
  const scores = routingScores(setup.method, mean!, experts.map((e) => gateOf(e, setup.method, OUTPUT_MODULE)!));
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

/** What the engine reports about one position: its final hidden state, and on routed contexts its routing trace. */
interface PositionReport {
  hidden: Float32Array;
  routing?: RoutingTrace;
}

/** The context a plan runs on, and who served each token (from the engine's report on the position behind it). */
interface Variant {
  model: LoadedModel;
  report(position: PositionReport | undefined): RoutingToken | null;
}

/** `blk.3.attn_q.weight` → `attn_q`; `output.weight` → `output`. */
export function moduleGroup(module: string): string {
  return module.replace(/^blk\.\d+\./, "").replace(/\.weight$/, "");
}

/** Mean weight per expert over a set of modules' top-k weights, most first (experts without weight left out). */
function averaged(totals: Float64Array, modules: number, names: readonly string[]): Array<{ expert: string; weight: number }> {
  return [...totals]
    .map((total, i) => ({ expert: names[i], weight: total / modules }))
    .filter((e) => e.weight > 0)
    .sort((a, b) => b.weight - a.weight);
}

/**
 * One token's routing from its trace (modules × experts softmax, in the engine's module order):
 * each module keeps its top k renormalised, as the graph did; the token's experts are the mean
 * over all routed modules, and over each module group.
 */
export function summariseTrace(trace: Float32Array, modules: readonly string[], names: readonly string[], topK: number): RoutingToken {
  const n = names.length;
  const total = new Float64Array(n);
  const groups = new Map<string, { totals: Float64Array; modules: number }>();
  modules.forEach((module, m) => {
    const group = groups.get(moduleGroup(module)) ?? { totals: new Float64Array(n), modules: 0 };
    groups.set(moduleGroup(module), group);
    group.modules++;
    for (const { expert, weight } of topWeights(trace.subarray(m * n, (m + 1) * n), topK)) {
      total[expert] += weight;
      group.totals[expert] += weight;
    }
  });
  return {
    experts: averaged(total, modules.length, names),
    groups: Object.fromEntries([...groups].map(([group, g]) => [group, averaged(g.totals, g.modules, names)])),
  };
}

/** `context`: the tokens retrieval compares the experts with (the prompt). */
async function variantFor(setup: RoutedSetup, plan: RoutingPlan, context: readonly number[], signal?: AbortSignal): Promise<Variant> {
  if (plan.mode === "routed") {
    const key = JSON.stringify({ version: setup.library.version, method: setup.method, topK: plan.topK, temperature: plan.temperature, experts: plan.experts.map((e) => e.spec.name) });
    const model = await setup.variants.get(key, { adapters: [], routing: { ...routedConfig(setup, plan), trace: true }, hiddenStates: true });
    const names = plan.experts.map((e) => e.spec.name);
    return {
      model,
      report(position) {
        const trace = position?.routing;
        // A trace that does not cover every expert in every module would be misread: none.
        if (!trace || trace.modules.length === 0 || trace.probabilities.length !== trace.modules.length * names.length) return null;
        return summariseTrace(trace.probabilities, trace.modules, names, plan.topK);
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

export async function* routedDecode(setup: RoutedSetup, request: GenerationRequest & { routing?: RoutingOverrides }): AsyncGenerator<DecodeStep> {
  const plan = planRouting(setup, request.routing);
  const { model, report } = await variantFor(setup, plan, request.prompt, request.signal);
  const positions: PositionReport[] = [];
  const observePosition = model.hasHiddenStates ? (p: PositionReport) => positions.push(p) : undefined;
  for await (const step of plainDecode(model, { ...request, observePosition })) {
    yield { ...step, routing: step.tokens.map(() => report(positions.shift())) };
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
    const { logits, hidden, routing } = await seq.evaluateWithHidden(tokens, positions);
    return { logits, routing: hidden.map((h, i) => report({ hidden: h, routing: routing[i] })) };
  } finally {
    seq.release();
  }
}
