// The only place that reaches into node-llama-cpp internals, to use flock's native addon
// methods (engine/native/addon). With the prebuilt binary none of this is present, and the
// engine falls back to node-llama-cpp's public probabilities path.
import type { Llama, LlamaContext, LlamaGrammarEvaluationState } from "node-llama-cpp";
import { BufferPool } from "./buffers.js";
import { ADDON_FUNCTIONS, CONTEXT_METHODS } from "./native/surface.js";

interface AddonContextWithFlock {
  sampleToken(batchLogitIndex: number, sampler: unknown, probabilities?: boolean, confidence?: boolean): Promise<unknown>;
  flockGetLogits(batchLogitIndex: number, into?: Float32Array): Float32Array;
  /** node-llama-cpp's decodeBatch, on the context's own thread (engine/batch.ts). */
  flockDecodeBatch(): Promise<void>;
  /** The generation loop on that thread (engine/batch.ts's NativeGenerationJob). */
  flockGenerate(job: object, onEvent: (token: number, decoded: number, error?: string) => void): void;
  flockGenerateStop(): void;
  flockGenerateConsumed(count: number): void;
  flockFusionGrid(strong: Float32Array, base: Float32Array, experts: Float32Array[], step: number, steps: number, pruneMargin: number): Float64Array;
  flockEnableHiddenStates(): void;
  flockGetHiddenState(batchLogitIndex: number): Float32Array;
  flockSetRoutedLoras(paths: string[], scales: number[], modules: string[], gates: Float32Array[], method: number, topK: number, temperature: number, trace: boolean): void;
  flockGetRoutingTraceModules(): string[];
  flockGetRoutingTrace(batchLogitIndex: number, adapters: number): Float32Array | null;
}

/** Routed LoRA over a set of adapter files, computed inside llama.cpp's graph (docs/native-engine.md). */
export interface RoutedLoraConfig {
  adapters: ReadonlyArray<{ path: string; scale: number }>;
  /** The routed modules (base weight tensor names), each with one gate vector per adapter, concatenated. */
  modules: ReadonlyArray<{ name: string; gates: Float32Array }>;
  method: "phatgoose" | "arrow";
  topK: number;
  temperature: number;
  /** Keep each output token's per-module routing (read back with the logits). */
  trace?: boolean;
}

/** Sets (or, with null, clears) routed LoRA on a context; throws with llama.cpp's reason logged. */
export function setRoutedLoras(context: LlamaContext, config: RoutedLoraConfig | null): void {
  const addon = (context as unknown as { _ctx: AddonContextWithFlock })._ctx;
  if (!config) {
    addon.flockSetRoutedLoras([], [], [], [], 0, 1, 1, false);
    return;
  }
  addon.flockSetRoutedLoras(
    config.adapters.map((a) => a.path),
    config.adapters.map((a) => a.scale),
    config.modules.map((m) => m.name),
    config.modules.map((m) => m.gates),
    config.method === "arrow" ? 1 : 0,
    config.topK,
    config.temperature,
    config.trace === true,
  );
}

/** One output token's routing on a traced routed context. */
export interface RoutingTrace {
  /** Each routed module's softmax over the adapters, modules × adapters, in `modules` order. */
  probabilities: Float32Array;
  /** The routed modules (weight names), in graph order. */
  modules: readonly string[];
}

/** What a raw-logits request returns on a context with hidden states enabled. */
export interface LogitsWithHidden {
  logits: Float32Array;
  hidden: Float32Array;
  /** Traced routed contexts: the position's routing. */
  routing?: RoutingTrace;
}

/**
 * The fusion objective on every grid point, compiled (AddonFlock.cpp): experts × (steps + 1)
 * objectives, then each expert's movement. Same computation as decoding/fusion/solver.ts.
 */
export type FusionGridKernel = (strong: Float32Array, base: Float32Array, experts: Float32Array[], step: number, steps: number, pruneMargin: number) => Float64Array;

export function fusionGridKernel(context: LlamaContext): FusionGridKernel | undefined {
  const addon = (context as unknown as { _ctx: Partial<AddonContextWithFlock> })._ctx;
  if (typeof addon.flockFusionGrid !== "function") return undefined;
  return (strong, base, experts, step, steps, pruneMargin) => addon.flockFusionGrid!(strong, base, experts, step, steps, pruneMargin);
}

/** Whether the loaded addon carries flock's methods (a local build made by `npm run build:native`). */
export function hasFlockAddon(llama: Llama): boolean {
  const bindings = (llama as unknown as { _bindings?: { AddonContext?: { prototype?: Partial<AddonContextWithFlock> } } })._bindings;
  const prototype = bindings?.AddonContext?.prototype;
  return CONTEXT_METHODS.every((method) => typeof prototype?.[method] === "function");
}

/** One of the addon's flock functions (ADDON_FUNCTIONS), if the loaded binary has it. */
function addonFunction(llama: Llama, name: (typeof ADDON_FUNCTIONS)[number]): unknown {
  return (llama as unknown as { _bindings?: Record<string, unknown> })._bindings?.[name];
}

/**
 * softmax(logits / T) into `out`, natively, with decoding/sampler.ts's arithmetic (which stays
 * the reference); returns the total, 0 when no logit is finite.
 */
export type SoftmaxKernel = (logits: Float32Array, temperature: number, out: Float64Array) => number;

/**
 * One position's draw, natively (AddonFlockSampler.cpp): the token decoding/sampler.ts's
 * sampleToken (keyed false, `value` the RNG's uniform) or decoding/noise.ts's keyedSample (keyed
 * true, `value` the position's noise key) picks from adjusted logits; −1 when no token has a
 * positive probability.
 */
export type SampleTokenKernel = (logits: Float32Array, temperature: number, topK: number, topP: number, minP: number, keyed: boolean, value: number) => number;

/** decoding/sampler.ts's samplingDistribution into `out`, natively; false when no token has a positive probability. */
export type DistributionKernel = (logits: Float32Array, temperature: number, topK: number, topP: number, minP: number, out: Float64Array) => boolean;

/** decoding/sampler.ts's drawFrom at the uniform `u`, natively. */
export type DrawFromKernel = (probs: Float64Array, u: number) => number;

/**
 * decoding/speculative/features.ts's pass over a draft distribution, natively: its most likely
 * tokens into topTokens/topProbs, and [how many, Σ q·logits·scale, the first token with q > 0].
 */
export type DistributionSummaryKernel = (q: Float64Array, logits: Float32Array, scale: number, topTokens: Int32Array, topProbs: Float64Array) => Float64Array;

/** decoding/speculative/verifier.ts's residual draw, natively: Σ max(p − q, 0), then the draw from it at `u`. */
export type ResidualMassKernel = (p: Float64Array, q: Float64Array) => number;
export type DrawResidualKernel = (p: Float64Array, q: Float64Array, total: number, u: number) => number;

export interface SamplingKernels {
  softmax?: SoftmaxKernel;
  sampleToken?: SampleTokenKernel;
  distribution?: DistributionKernel;
  drawFrom?: DrawFromKernel;
  distributionSummary?: DistributionSummaryKernel;
  residualMass?: ResidualMassKernel;
  drawResidual?: DrawResidualKernel;
}

const KERNEL_FUNCTIONS = {
  softmax: "flockSoftmax",
  sampleToken: "flockSampleToken",
  distribution: "flockSamplingDistribution",
  drawFrom: "flockDrawFrom",
  distributionSummary: "flockDistributionSummary",
  residualMass: "flockResidualMass",
  drawResidual: "flockDrawResidual",
} as const satisfies Record<keyof SamplingKernels, (typeof ADDON_FUNCTIONS)[number]>;

let kernels: SamplingKernels = {};

/**
 * Makes every sampler in this process use the addon's per-position kernels, when the loaded
 * binary has them (Engine.create); false when it does not, and the samplers stay in TypeScript.
 */
export function installSamplingKernels(llama: Llama): boolean {
  const found = samplingKernels(llama);
  if (Object.keys(found).length < Object.keys(KERNEL_FUNCTIONS).length) return false;
  useSamplingKernels(found);
  return true;
}

/** The addon's per-position kernels, where the loaded binary has them. */
export function samplingKernels(llama: Llama): SamplingKernels {
  const found: Record<string, unknown> = {};
  for (const [name, fn] of Object.entries(KERNEL_FUNCTIONS)) {
    const kernel = addonFunction(llama, fn);
    if (typeof kernel === "function") found[name] = kernel;
  }
  return found as SamplingKernels;
}

/** Sets the kernels the samplers use ({} for none: the TypeScript reference); benchmarks and tests compare both. */
export function useSamplingKernels(installed: SamplingKernels): void {
  kernels = installed;
}

/** The native kernels the samplers use ({} without the extension, or before an engine installed them). */
export function nativeKernels(): Readonly<SamplingKernels> {
  return kernels;
}

/** Whether the loaded addon carries the startup weight check (engine/weight-check.ts). */
export function hasWeightCheck(llama: Llama): boolean {
  return typeof addonFunction(llama, "flockCheckWeightType") === "function";
}

/** The logits of a position read for its hidden state only. */
const NO_LOGITS = new Float32Array(0);

/** What a decoded position yields: raw logits, or logits with hidden state and routing. */
export type PositionOutput = Float32Array | LogitsWithHidden;

/** What flock reads of a decoded batch position on its contexts, and where read arrays go back. */
export interface RawOutputs {
  /**
   * The position's raw logits (with hidden state and routing where the context keeps them);
   * with `hiddenOnly`, on a context with hidden states, the hidden state alone (no logits copied).
   */
  read(batchLogitIndex: number, hiddenOnly?: boolean): PositionOutput;
  recycle: LogitsRecycler;
}

/**
 * The reader of a flock context's decoded positions: raw logits (a Float32Array copied by
 * flockGetLogits into a recycled array where one is spare); with `hiddenStates` also the final
 * hidden state, and with `routedAdapters` (a routed context with traces) its routing. Must be
 * called between decodes: a later decode overwrites what llama.cpp holds.
 */
export function rawOutputs(context: LlamaContext, options: { hiddenStates?: boolean; routedAdapters?: number } = {}): RawOutputs {
  const addon = (context as unknown as { _ctx: AddonContextWithFlock })._ctx;
  // Logits arrays their readers are done with, overwritten by later reads instead of allocating.
  const spare = new BufferPool<Float32Array>((length) => new Float32Array(length), MAX_SPARE_LOGITS);
  const vocabularySize = context.model.fileInfo.metadata.tokenizer?.ggml?.tokens?.length ?? 0;
  if (options.hiddenStates) addon.flockEnableHiddenStates();
  const adapters = options.routedAdapters ?? 0;
  // The module list is the context's state after its last decode, read between decodes like
  // the logits. Fixed per context once known, so read again only when a trace does not match it.
  let modules: readonly string[] = [];
  const read = (index: number, hiddenOnly = false): PositionOutput => {
    if (!options.hiddenStates) return addon.flockGetLogits(index, spare.reuse(vocabularySize));
    // llama.cpp still computes the position's logits (its outputs are logits and embeddings
    // together); they are just not copied out, a vocabulary of floats per position.
    if (hiddenOnly) return { logits: NO_LOGITS, hidden: addon.flockGetHiddenState(index) };
    const answer: LogitsWithHidden = { logits: addon.flockGetLogits(index, spare.reuse(vocabularySize)), hidden: addon.flockGetHiddenState(index) };
    const probabilities = adapters > 0 ? addon.flockGetRoutingTrace(index, adapters) : null;
    if (probabilities) {
      if (modules.length * adapters !== probabilities.length) modules = addon.flockGetRoutingTraceModules();
      answer.routing = { probabilities, modules };
    }
    return answer;
  };
  return { read, recycle: (arrays) => spare.give(arrays) };
}

/**
 * Makes `controlledEvaluate` return raw logits for positions that ask for `confidence` only
 * (for code that drives a flock context through node-llama-cpp; flock's own sequences decode
 * through engine/batch.ts).
 *
 * node-llama-cpp samples every requested position through `_ctx.sampleToken(index, sampler,
 * probabilities, confidence)` and passes the returned confidence through untouched. A
 * confidence-only request is answered with the position's raw outputs (rawOutputs) instead of
 * a sampled token; every other request goes to node-llama-cpp as before. node-llama-cpp maps a
 * batch's logits before it starts the next decode, so the reads fall between decodes.
 */
export function enableRawLogits(context: LlamaContext, options: { hiddenStates?: boolean; routedAdapters?: number } = {}): LogitsRecycler {
  const addon = (context as unknown as { _ctx: AddonContextWithFlock })._ctx;
  const sampleToken = addon.sampleToken.bind(addon);
  const { read, recycle } = rawOutputs(context, options);
  const withRawLogits: AddonContextWithFlock["sampleToken"] = (batchLogitIndex, sampler, probabilities, confidence) => {
    if (confidence === true && probabilities !== true) return Promise.resolve([-1, undefined, read(batchLogitIndex)]);
    return sampleToken(batchLogitIndex, sampler, probabilities, confidence);
  };
  // N-API methods are read-only on the prototype; an own property shadows it.
  Object.defineProperty(addon, "sampleToken", { value: withRawLogits });
  return recycle;
}

/**
 * Hands logits arrays a context returned back to it: the caller reads them no more, and a later
 * evaluation on the same context may overwrite and return them.
 */
export type LogitsRecycler = (arrays: readonly Float32Array[]) => void;

/** The most spare logits arrays a context keeps (a speculative round reads up to 33 at once). */
const MAX_SPARE_LOGITS = 40;

/**
 * Grammar-constrained decoding's native half (AddonFlockGrammar.cpp and node-llama-cpp's grammar
 * sampler), on a node-llama-cpp grammar evaluation state; engine/grammar.ts wraps it.
 */
export interface GrammarKernels {
  /** Whether the state's grammar parsed. */
  valid(state: LlamaGrammarEvaluationState): boolean;
  /**
   * Sets the logits of the tokens the state forbids to −Infinity, in place; returns how many
   * the grammar allows. With a cache, the state's mask is looked up, or computed and kept.
   */
  mask(state: LlamaGrammarEvaluationState, logits: Float32Array, cache?: MaskCacheKey): number;
  /**
   * Whether `token` may come next: a bit of the cached mask where there is one — with
   * `maskIfNarrow`, computed and kept first where only a few characters may come next (between
   * JSON fields: a short walk that answers every later check) — else a check of that one token.
   */
  allows(state: LlamaGrammarEvaluationState, token: number, cache?: MaskCacheKey, maskIfNarrow?: boolean): boolean;
  /** Advances the state past `token`. */
  accept(state: LlamaGrammarEvaluationState, token: number): void;
  /**
   * The only token the state allows, from its cached mask (computed on a miss when
   * `computeOnMiss`); undefined where several may come or the mask is not known.
   */
  forcedToken(state: LlamaGrammarEvaluationState, key: MaskCacheKey, computeOnMiss: boolean): number | undefined;
  /** A mask cache for one model's grammars, holding up to `budgetBytes`. */
  maskCache(budgetBytes: number): MaskCache;
  /** What a mask cache holds and how it has served. */
  maskCacheStats(cache: MaskCache): MaskCacheStats;
  /** llama.cpp's JSON-schema-to-GBNF converter; throws with its reasons. */
  jsonSchemaToGrammar(schema: string): string;
  /** Frees the state's grammar now (the state is unusable after). */
  free(state: LlamaGrammarEvaluationState): void;
}

/** A native mask cache (freed when collected). */
export type MaskCache = { readonly maskCache: unique symbol };

/** Where a state's masks are kept: the model's cache, under the id of the grammar it follows. */
export interface MaskCacheKey {
  cache: MaskCache;
  grammarId: number;
}

export interface MaskCacheStats {
  /** Masks found, computed (a grammar pass over the vocabulary), and states that could not be keyed. */
  hits: number;
  misses: number;
  unkeyed: number;
  /** Masks held and their size. */
  masks: number;
  bytes: number;
}

interface AddonSamplerStatics {
  acceptGrammarEvaluationStateToken(state: unknown, token: number): void;
}

/** The grammar kernels, where the loaded binary has flock's functions. */
export function grammarKernels(llama: Llama): GrammarKernels | undefined {
  const fn = (name: (typeof ADDON_FUNCTIONS)[number]) => addonFunction(llama, name) as ((...args: unknown[]) => unknown) | undefined;
  const [valid, mask, allows, forced, cache, stats, convert, free] = (
    [
      "flockGrammarValid",
      "flockGrammarMask",
      "flockGrammarAllows",
      "flockGrammarForcedToken",
      "flockGrammarMaskCache",
      "flockGrammarMaskCacheStats",
      "flockJsonSchemaToGrammar",
      "flockGrammarFree",
    ] as const
  ).map(fn);
  if (![valid, mask, allows, forced, cache, stats, convert, free].every((f) => typeof f === "function")) return undefined;
  const sampler = (llama as unknown as { _bindings: { AddonSampler: AddonSamplerStatics } })._bindings.AddonSampler;
  const addonState = (state: LlamaGrammarEvaluationState) => (state as unknown as { _state: unknown })._state;
  const cached = (key: MaskCacheKey | undefined) => (key ? [key.cache, key.grammarId] : []);
  return {
    valid: (state) => valid!(addonState(state)) as boolean,
    mask: (state, logits, key) => mask!(addonState(state), logits, ...cached(key)) as number,
    allows: (state, token, key, maskIfNarrow = false) => allows!(addonState(state), token, ...cached(key), ...(key ? [maskIfNarrow] : [])) as boolean,
    accept: (state, token) => sampler.acceptGrammarEvaluationStateToken(addonState(state), token),
    forcedToken: (state, key, computeOnMiss) => {
      const token = forced!(addonState(state), key.cache, key.grammarId, computeOnMiss) as number;
      return token < 0 ? undefined : token;
    },
    maskCache: (budgetBytes) => cache!(budgetBytes) as MaskCache,
    maskCacheStats: (handle) => stats!(handle) as MaskCacheStats,
    jsonSchemaToGrammar: (schema) => convert!(schema) as string,
    free: (state) => free!(addonState(state)),
  };
}

/** llama.cpp's RPC backend (AddonFlockRpc.cpp): servers on other machines hold a model's layers. */
export interface RpcBackend {
  /** Connects to each "host:port" and makes their devices the next load of `path`'s devices; throws when one cannot be reached. */
  setModelServers(path: string, endpoints: readonly string[]): number;
  /** Those of `endpoints` that failed (unreachable, or died) since they last connected. */
  failed(endpoints: readonly string[]): string[];
}

/** The RPC backend, where the loaded binary has it. */
export function rpcBackend(llama: Llama): RpcBackend | undefined {
  const supported = addonFunction(llama, "flockRpcSupported") as (() => boolean) | undefined;
  if (typeof supported !== "function" || !supported()) return undefined;
  const set = addonFunction(llama, "flockSetModelRpcServers") as (path: string, endpoints: string[]) => number;
  const failed = addonFunction(llama, "flockRpcFailed") as (endpoints: string[]) => string[];
  return { setModelServers: (path, endpoints) => set(path, [...endpoints]), failed: (endpoints) => failed([...endpoints]) };
}
