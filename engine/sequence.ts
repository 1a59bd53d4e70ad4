// One KV-cache sequence checked out of a model's pool: evaluate tokens, read next-token
// logits at chosen positions, roll the cache back. Released back to the pool when done.
import type { ControlledEvaluateInputItem, LlamaContextSequence, Token } from "node-llama-cpp";
import { FlockError } from "./errors.js";
import { engineFaultPoint, faultPlanned } from "./faults.js";
import type { LogitsRecycler, PositionOutput, RoutingTrace } from "./native.js";

/**
 * One KV-cache sequence lent to a decoder: what LoadedModel.acquire returns (EngineSequence) and
 * what decoder unit tests fake (test/helpers/fake-engine.ts).
 */
export interface Sequence {
  /** Tokens the KV cache holds. */
  readonly tokens: readonly number[];
  readonly length: number;
  /** Tokens the sequence can hold. */
  readonly contextSize: number;
  /** Brings the cache to exactly `prompt`; the next-token logits after its last token. */
  prefill(prompt: readonly number[]): Promise<Float32Array>;
  /** How many leading tokens of `tokens` the cache already holds. */
  sharedPrefix(tokens: readonly number[]): number;
  /** Makes the cache hold exactly `tokens`; no logits. */
  syncTo(tokens: readonly number[]): Promise<void>;
  /**
   * Appends `tokens`; next-token logits after each position in `logitsAt` (indices into `tokens`),
   * in arrays the caller owns: it may adjust them in place.
   */
  evaluate(tokens: readonly number[], logitsAt: readonly number[]): Promise<Float32Array[]>;
  /**
   * Like evaluate, with final hidden states and routing traces (models loaded with hidden
   * states); with `{ logits: false }` the hidden states alone (`logits` is then empty).
   */
  evaluateWithHidden(
    tokens: readonly number[],
    logitsAt: readonly number[],
    options?: { logits?: boolean },
  ): Promise<{ logits: Float32Array[]; hidden: Float32Array[]; routing: Array<RoutingTrace | undefined> }>;
  /** Drops every cached token from `length` on (KV rollback). */
  truncate(length: number): Promise<void>;
  /** Gives the sequence back to its pool. */
  release(): void;
  /** Hands back logits arrays the caller will not read again (a later evaluation may reuse them). */
  recycle(logits: readonly Float32Array[]): void;
  /**
   * Plain decoding in the addon from here on (engine/batch.ts): decodes `first`, then draws and
   * decodes as `job` says, `onToken` for each token drawn; null where it cannot run now (then
   * evaluate as usual). Absent without flock's addon.
   */
  generate?(first: number, job: NativeGenerationJob, onToken: (token: number) => void): NativeGeneration | null;
}

/**
 * Plain decoding of one sequence inside the addon (AddonFlockDecode.cpp): decode, draw with
 * flock's native sampler, post the token, decode it … without a round trip through JavaScript
 * per token. decoding/plain.ts builds the job; its draws are the ones its own loop would make.
 */
export interface NativeGenerationJob {
  temperature: number;
  topK: number;
  topP: number;
  minP: number;
  /** `values` are keyed noise's position keys (noise.ts); otherwise the RNG's uniforms. */
  keyed: boolean;
  /** The draw's value for each token the loop may draw, in order: its length is the budget. */
  values: Float64Array;
  /** The request's logit bias. */
  biasTokens: Int32Array;
  biasValues: Float64Array;
  /** Tokens that end the generation besides the model's end-of-generation tokens. */
  stopTokens: Int32Array;
  /** The penalties (SamplingParams), and what they read: the tokens seen so far, the generated tokens' counts. */
  repetitionPenalty: number;
  repeatLastN: number;
  presencePenalty: number;
  frequencyPenalty: number;
  /** Prompt and output so far (the last repeatLastN are enough; all when it is negative). */
  history: Int32Array;
  generatedTokens: Int32Array;
  generatedCounts: Int32Array;
  /** How many drawn tokens may wait for the consumer (backpressure). */
  window: number;
}

/** A running generation loop, as its sequence's decoder sees it. */
export interface NativeGeneration {
  /** Settles with every token the loop decoded (`first`, then drawn tokens), when it has ended. */
  readonly done: Promise<number[]>;
  /** The loop stops after its current step. */
  stop(): void;
  /** The consumer took one more token. */
  consumed(): void;
}

/**
 * A sequence of a context as the engine drives it: on flock's contexts a BatchedSequence
 * (engine/batch.ts, raw outputs); without flock's addon, node-llama-cpp's own sequence
 * (NodeLlamaCppSequence, log-probabilities).
 */
export interface SequenceCache {
  /** Tokens the KV cache holds. */
  readonly tokens: readonly number[];
  /** Appends `tokens`; the outputs after the token indices in `logitsAt`, in that order (`hiddenOnly`: hidden states alone, where kept). */
  append(tokens: readonly number[], logitsAt: readonly number[], hiddenOnly?: boolean): Promise<PositionOutput[]>;
  /** Keeps the first `length` cached tokens. */
  cut(length: number): Promise<void>;
  /** A generation loop in the addon (BatchedSequence.generate). */
  generate?(first: number, job: NativeGenerationJob, onToken: (token: number) => void): NativeGeneration | null;
}

/**
 * The fallback without flock's addon: node-llama-cpp's controlledEvaluate and its probabilities
 * path (logits up to an additive constant, ~12 ms per position at 32k), named in the startup log.
 */
export class NodeLlamaCppSequence implements SequenceCache {
  constructor(
    private readonly seq: LlamaContextSequence,
    private readonly vocabularySize: number,
  ) {}

  get tokens(): readonly number[] {
    return this.seq.contextTokens;
  }

  async append(tokens: readonly number[], logitsAt: readonly number[]): Promise<Float32Array[]> {
    const wanted = new Set(logitsAt);
    const input: ControlledEvaluateInputItem[] = tokens.map((t, i) => (wanted.has(i) ? [t as Token, { generateNext: { probabilities: true } }] : (t as Token)));
    const results = await this.seq.controlledEvaluate(input);
    return logitsAt.map((i) => {
      const probabilities = results[i]?.next?.probabilities;
      if (!probabilities) throw new FlockError("internal", `the engine returned no distribution for position ${i}`);
      const logits = new Float32Array(this.vocabularySize).fill(-Infinity);
      for (const [token, p] of probabilities) logits[token] = Math.log(p);
      return logits;
    });
  }

  async cut(length: number): Promise<void> {
    const end = this.seq.nextTokenIndex;
    if (length < end) await this.seq.eraseContextTokenRanges([{ start: length, end }]);
  }
}

/** How many leading tokens `a` and `b` share. */
export function sharedPrefixLength(a: readonly number[], b: readonly number[]): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}

export class EngineSequence implements Sequence {
  private released = false;
  /** Evaluations and erasures llama.cpp has not finished yet. */
  private pending = 0;
  /** release() was called while operations were pending: hand the sequence back when they end. */
  private releaseWhenIdle = false;

  constructor(
    private readonly cache: SequenceCache,
    readonly contextSize: number,
    private readonly rawLogits: boolean,
    private readonly onRelease: () => void,
    private readonly recycleLogits?: LogitsRecycler,
  ) {}

  /**
   * Logits this sequence returned that the caller will not read again: a later evaluation may
   * overwrite and return them instead of allocating (vocabulary-sized arrays per token are
   * otherwise the garbage collector's main work).
   */
  recycle(logits: readonly Float32Array[]): void {
    this.recycleLogits?.(logits);
  }

  /** Tokens currently held in the KV cache. */
  get tokens(): readonly number[] {
    return this.cache.tokens;
  }
  get length(): number {
    return this.cache.tokens.length;
  }

  /**
   * Brings the cache to exactly `prompt`, reusing the longest cached prefix, and returns the
   * next-token logits after the prompt's last token.
   */
  async prefill(prompt: readonly number[]): Promise<Float32Array> {
    if (prompt.length === 0) throw new FlockError("invalid_request", "the prompt is empty", "prompt");
    // The last prompt token is always evaluated again: its logits are what we need.
    await this.syncTo(prompt.slice(0, -1));
    const [logits] = await this.evaluate(prompt.slice(-1), [0]);
    return logits;
  }

  /** How many leading tokens of `tokens` the cache already holds. */
  sharedPrefix(tokens: readonly number[]): number {
    return sharedPrefixLength(this.cache.tokens, tokens);
  }

  /** Makes the cache hold exactly `tokens`, reusing the longest cached prefix; no logits. */
  async syncTo(tokens: readonly number[]): Promise<void> {
    const reused = this.sharedPrefix(tokens);
    await this.truncate(reused);
    if (reused < tokens.length) await this.evaluate(tokens.slice(reused), []);
  }

  /**
   * Appends `tokens` to the cache and returns next-token logits after each position listed in
   * `logitsAt` (indices into `tokens`), in that order. With the native addon these are
   * llama.cpp's raw logits; otherwise log-probabilities (NodeLlamaCppSequence).
   */
  async evaluate(tokens: readonly number[], logitsAt: readonly number[]): Promise<Float32Array[]> {
    const outputs = await this.append(tokens, logitsAt);
    return outputs.map((output) => (output instanceof Float32Array ? output : output.logits));
  }

  /**
   * Like evaluate, with each position's final hidden state too (the vector that feeds the
   * output projection), and on traced routed contexts its routing; only on models loaded with
   * hidden states.
   */
  async evaluateWithHidden(
    tokens: readonly number[],
    logitsAt: readonly number[],
    options: { logits?: boolean } = {},
  ): Promise<{ logits: Float32Array[]; hidden: Float32Array[]; routing: Array<RoutingTrace | undefined> }> {
    if (!this.rawLogits) throw new FlockError("unsupported", "hidden states need flock's native addon (npm run build:native)");
    const withLogits = options.logits !== false;
    const answers = (await this.append(tokens, logitsAt, !withLogits)).map((output) => {
      if (output instanceof Float32Array) throw new FlockError("internal", "this model was not loaded with hidden states");
      return output;
    });
    return { logits: withLogits ? answers.map((a) => a.logits) : [], hidden: answers.map((a) => a.hidden), routing: answers.map((a) => a.routing) };
  }

  private append(tokens: readonly number[], logitsAt: readonly number[], hiddenOnly = false): Promise<PositionOutput[]> {
    this.assertHeld();
    if (logitsAt.length > 0) engineFaultPoint();
    if (this.length + tokens.length > this.contextSize) {
      throw new FlockError("context_length_exceeded", `the sequence is full (${this.contextSize} tokens)`);
    }
    return this.track(this.cache.append(tokens, logitsAt, hiddenOnly));
  }

  generate(first: number, job: NativeGenerationJob, onToken: (token: number) => void): NativeGeneration | null {
    this.assertHeld();
    // A planned fault counts evaluations, which the loop makes out of JavaScript's sight.
    if (!this.cache.generate || faultPlanned()) return null;
    // The loop decodes `first` and at most all but the last of the tokens it may draw.
    if (this.length + job.values.length > this.contextSize) {
      throw new FlockError("context_length_exceeded", `the sequence is full (${this.contextSize} tokens)`);
    }
    const generation = this.cache.generate(first, job, onToken);
    if (generation) void this.track(generation.done).catch(() => undefined);
    return generation;
  }

  /** Drops every cached token from `length` on (KV rollback). */
  async truncate(length: number): Promise<void> {
    this.assertHeld();
    if (length < this.length) await this.track(this.cache.cut(length));
  }

  /**
   * Gives the sequence back to its pool — once llama.cpp has finished every operation already
   * started on it. A decoder that stops early (an error in one of several concurrent
   * evaluations, a cancellation) may release while another evaluation of this sequence is still
   * queued or running; handing it to the next request then would let that request's cache edits
   * interleave with the stale evaluation (llama.cpp: "sequence positions must remain
   * consecutive", a failed decode, a corrupted cache).
   */
  release(): void {
    if (this.released) return;
    this.released = true;
    if (this.pending === 0) this.onRelease();
    else this.releaseWhenIdle = true;
  }

  private async track<T>(operation: Promise<T>): Promise<T> {
    this.pending++;
    try {
      return await operation;
    } finally {
      this.pending--;
      if (this.pending === 0 && this.releaseWhenIdle) {
        this.releaseWhenIdle = false;
        this.onRelease();
      }
    }
  }

  [Symbol.dispose](): void {
    this.release();
  }

  private assertHeld(): void {
    if (this.released) throw new FlockError("internal", "sequence used after release");
  }
}
