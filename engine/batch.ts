// Decoding on the contexts flock's addon serves: one llama_decode at a time per context, the
// queued tokens of all its sequences packed into each batch, KV-cache edits between batches.
//
// node-llama-cpp's controlledEvaluate does the same job for any caller, at a price paid per
// call: a sampler object configured and disposed, two locks, a scheduling pass and a sampling
// round trip per requested position (about 0.2 ms, as much as a small model's whole step). flock
// reads raw logits and samples them itself, so it drives the addon's batch calls (initBatch,
// addToBatch, decodeBatch) directly and keeps each sequence's cached tokens on its own side.
import type { LlamaContext } from "node-llama-cpp";
import { FlockError } from "./errors.js";
import type { PositionOutput, RawOutputs } from "./native.js";
import type { NativeGeneration, NativeGenerationJob, SequenceCache } from "./sequence.js";

/** The addon's batch calls (node-llama-cpp's AddonContext). */
interface AddonBatchCalls {
  initBatch(size: number): void;
  addToBatch(sequenceId: number, firstPosition: number, tokens: Uint32Array, logitIndexes: Uint32Array): Uint32Array;
  decodeBatch(): Promise<void>;
  /** decodeBatch on the context's own thread (flock's addon: engine/native/addon/AddonFlockDecode.cpp). */
  flockDecodeBatch?(): Promise<void>;
  /** A generation loop on that thread: onEvent per token drawn (token ≥ 0), then once with token −1. */
  flockGenerate?(job: NativeGenerationJob & { sequence: number; position: number; first: number }, onEvent: (token: number, decoded: number, error?: string) => void): void;
  flockGenerateStop?(): void;
  flockGenerateConsumed?(count: number): void;
  removeTokenCellsFromSequence(sequenceId: number, start: number, end: number): boolean;
}

interface QueuedDecode {
  sequence: number;
  /** Cache position of tokens[0]. */
  position: number;
  tokens: readonly number[];
  /** Token indices whose outputs are wanted. */
  wanted: ReadonlySet<number>;
  /** Read only their hidden states (RawOutputs.read). */
  hiddenOnly: boolean;
  /** Tokens already decoded (a long prompt takes several batches). */
  done: number;
  outputs: Map<number, PositionOutput>;
  resolve(outputs: Map<number, PositionOutput>): void;
  reject(err: unknown): void;
}

interface QueuedErase {
  sequence: number;
  from: number;
  resolve(): void;
  reject(err: unknown): void;
}

export class BatchDecoder {
  private readonly addon: AddonBatchCalls;
  private readonly batchSize: number;
  private readonly decodes: QueuedDecode[] = [];
  private readonly erases: QueuedErase[] = [];
  private running = false;
  /** Whether generate may run loops at all (models[].generationLoop). */
  generationLoop = true;
  /** The generation loop that holds the context, if one does. */
  private generation: NativeGeneration | null = null;
  private dispatchScheduled = false;
  private idleWaiters: Array<() => void> = [];
  /** Told how many sequences each batch carries (flock_batch_sequences); `loop`: a generation loop's decode. */
  onBatch: ((sequences: number, loop: boolean) => void) | null = null;

  constructor(
    context: LlamaContext,
    private readonly outputs: RawOutputs,
    /** How many sequences are serving requests: a batch waits a turn of the event loop for those not yet queued. */
    private readonly busySequences: () => number,
    /** Run after each decode: an error means its results cannot be trusted (an RPC server failed). */
    private readonly afterDecode?: () => Error | null,
  ) {
    this.addon = (context as unknown as { _ctx: AddonBatchCalls })._ctx;
    this.batchSize = context.batchSize;
  }

  /**
   * Appends `tokens` to `sequence`'s cache from `position` on; resolves with the outputs of the
   * token indices in `wanted`, by index.
   */
  decode(sequence: number, position: number, tokens: readonly number[], wanted: ReadonlySet<number>, hiddenOnly = false): Promise<Map<number, PositionOutput>> {
    if (tokens.length === 0) return Promise.resolve(new Map());
    return new Promise((resolve, reject) => {
      this.decodes.push({ sequence, position, tokens, wanted, hiddenOnly, done: 0, outputs: new Map(), resolve, reject });
      // Another sequence needs the context: a generation loop gives it up after its step.
      this.generation?.stop();
      this.schedule();
    });
  }

  /**
   * Starts a generation loop for `sequence`, which decodes `first` at `position` and goes on
   * drawing (NativeGenerationJob), with `onToken` for each token drawn; null when the context
   * cannot be given to one sequence now (other sequences are busy or queued, a decode is running,
   * the addon has no loop, or each decode must be checked: an RPC model).
   */
  generate(sequence: number, position: number, first: number, job: NativeGenerationJob, onToken: (token: number) => void): NativeGeneration | null {
    const addon = this.addon;
    if (!this.generationLoop || !addon.flockGenerate || !addon.flockGenerateStop || !addon.flockGenerateConsumed) return null;
    if (this.running || this.decodes.length > 0 || this.busySequences() > 1 || this.afterDecode) return null;
    let ended!: (tokens: number[]) => void;
    let failed!: (err: unknown) => void;
    const done = new Promise<number[]>((resolve, reject) => {
      ended = resolve;
      failed = reject;
    });
    const drawn: number[] = [];
    this.running = true;
    const generation: NativeGeneration = {
      done,
      stop: () => addon.flockGenerateStop!(),
      consumed: () => addon.flockGenerateConsumed!(1),
    };
    this.generation = generation;
    addon.flockGenerate({ ...job, sequence, position, first }, (token, count, error) => {
      if (token >= 0) {
        drawn.push(token);
        this.onBatch?.(1, true); // the decode this token was drawn after
        onToken(token);
        return;
      }
      // The loop has ended: `count` tokens decoded, `first` and then the tokens drawn.
      const decoded = count === 0 ? [] : [first, ...drawn.slice(0, count - 1)];
      this.generation = null;
      this.ranToEnd();
      if (error === undefined) ended(decoded);
      else failed(Object.assign(new FlockError("internal", `llama_decode failed: ${error}`), { decoded }));
    });
    return generation;
  }

  /** Drops `sequence`'s cached tokens from `from` on; between decodes, since a decode reads the cache. */
  erase(sequence: number, from: number): Promise<void> {
    if (!this.running) {
      this.removeCells(sequence, from);
      return Promise.resolve();
    }
    return new Promise((resolve, reject) => this.erases.push({ sequence, from, resolve, reject }));
  }

  /** Resolves once no decode is queued or running (before the context is freed). */
  idle(): Promise<void> {
    if (!this.running && this.decodes.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private removeCells(sequence: number, from: number): void {
    // llama_memory_seq_rm with an end below 0: to the end of the sequence.
    if (!this.addon.removeTokenCellsFromSequence(sequence, from, -1)) {
      throw new FlockError("internal", `the KV cache of sequence ${sequence} cannot be cut at ${from}`);
    }
  }

  /**
   * Decodes now when every busy sequence has queued its tokens (nothing else will join the
   * batch); otherwise after this turn of the event loop, so that the sequences whose previous
   * step just finished join the same batch.
   */
  private schedule(): void {
    if (this.running) return;
    const queued = new Set(this.decodes.map((d) => d.sequence)).size;
    if (queued >= this.busySequences()) {
      void this.dispatch();
      return;
    }
    if (this.dispatchScheduled) return;
    this.dispatchScheduled = true;
    setImmediate(() => {
      this.dispatchScheduled = false;
      if (!this.running) void this.dispatch();
    });
  }

  private async dispatch(): Promise<void> {
    if (this.running || this.decodes.length === 0) return;
    this.running = true;
    try {
      let batch: ReturnType<BatchDecoder["fill"]>;
      try {
        batch = this.fill();
      } catch (err) {
        // A batch that could not be built: none of what is queued can be trusted to fit.
        for (const decode of this.decodes.splice(0)) decode.reject(err);
        return;
      }
      let failure: unknown;
      try {
        await (this.addon.flockDecodeBatch ? this.addon.flockDecodeBatch() : this.addon.decodeBatch());
      } catch (err) {
        failure = new FlockError("internal", `llama_decode failed: ${(err as Error).message}`, null, { cause: err });
      }
      failure ??= this.afterDecode?.() ?? undefined;
      this.finish(batch, failure);
    } finally {
      this.ranToEnd();
    }
  }

  /** After a decode or a generation loop: the cuts that waited for it, then what is queued (or the idle waiters). */
  private ranToEnd(): void {
    this.running = false;
    this.runErases();
    if (this.decodes.length > 0) this.schedule();
    else for (const wake of this.idleWaiters.splice(0)) wake();
  }

  /**
   * Packs queued tokens into one batch: each queued decode gets an even share of the batch's
   * slots, shorter ones first so that what they leave goes to longer ones (a long prompt does
   * not hold up the sequences that are generating).
   */
  private fill(): Array<{ decode: QueuedDecode; count: number; logitIndexes: Uint32Array; tokenIndexes: number[] }> {
    const order = [...this.decodes].sort((a, b) => a.tokens.length - a.done - (b.tokens.length - b.done));
    const shares: Array<{ decode: QueuedDecode; count: number }> = [];
    let slots = this.batchSize;
    order.forEach((decode, i) => {
      const count = Math.min(decode.tokens.length - decode.done, slots, Math.max(1, Math.floor(slots / (order.length - i))));
      if (count <= 0) return;
      shares.push({ decode, count });
      slots -= count;
    });
    this.addon.initBatch(this.batchSize - slots);
    this.onBatch?.(shares.length, false);
    return shares.map(({ decode, count }) => {
      const tokenIndexes: number[] = [];
      for (let i = decode.done; i < decode.done + count; i++) if (decode.wanted.has(i)) tokenIndexes.push(i);
      const tokens = Uint32Array.from(decode.tokens.slice(decode.done, decode.done + count));
      const within = Uint32Array.from(tokenIndexes, (i) => i - decode.done);
      const logitIndexes = this.addon.addToBatch(decode.sequence, decode.position + decode.done, tokens, within);
      return { decode, count, logitIndexes, tokenIndexes };
    });
  }

  /** Reads the batch's outputs (before any later decode overwrites them), settles what is complete. */
  private finish(batch: ReturnType<BatchDecoder["fill"]>, failure: unknown): void {
    for (const { decode, count, logitIndexes, tokenIndexes } of batch) {
      if (failure === undefined) {
        try {
          tokenIndexes.forEach((tokenIndex, k) => decode.outputs.set(tokenIndex, this.outputs.read(logitIndexes[k], decode.hiddenOnly)));
        } catch (err) {
          failure = err;
        }
      }
      if (failure !== undefined) {
        this.dequeue(decode);
        decode.reject(failure);
        continue;
      }
      decode.done += count;
      if (decode.done === decode.tokens.length) {
        this.dequeue(decode);
        decode.resolve(decode.outputs);
      }
    }
  }

  private dequeue(decode: QueuedDecode): void {
    this.decodes.splice(this.decodes.indexOf(decode), 1);
  }

  private runErases(): void {
    for (const erase of this.erases.splice(0)) {
      try {
        this.removeCells(erase.sequence, erase.from);
        erase.resolve();
      } catch (err) {
        erase.reject(err);
      }
    }
  }
}

/**
 * One sequence of a BatchDecoder's context: the tokens its KV cache holds, kept here (the cache
 * itself is llama.cpp's), and its operations one at a time in the order they were asked for.
 */
export class BatchedSequence implements SequenceCache {
  private readonly held: number[] = [];
  private last: Promise<unknown> = Promise.resolve();
  /** Operations of this sequence queued or running. */
  private operations = 0;

  constructor(
    private readonly decoder: BatchDecoder,
    readonly id: number,
  ) {}

  get tokens(): readonly number[] {
    return this.held;
  }

  /** Appends `tokens`; the outputs after the token indices in `logitsAt`, in that order (`hiddenOnly`: hidden states alone). */
  append(tokens: readonly number[], logitsAt: readonly number[], hiddenOnly = false): Promise<PositionOutput[]> {
    return this.serially(async () => {
      const outputs = await this.decoder.decode(this.id, this.held.length, tokens, new Set(logitsAt), hiddenOnly).catch(async (err: unknown) => {
        // A long input may have been decoded in part: the cache keeps only what is recorded here.
        await this.decoder.erase(this.id, this.held.length);
        throw err;
      });
      for (const token of tokens) this.held.push(token);
      return logitsAt.map((i) => outputs.get(i)!);
    });
  }

  /**
   * Hands the sequence to a generation loop (BatchDecoder.generate) that decodes `first` next;
   * null when the context cannot be given to it now. Later operations wait for the loop's end.
   */
  generate(first: number, job: NativeGenerationJob, onToken: (token: number) => void): NativeGeneration | null {
    if (this.busy) return null;
    const generation = this.decoder.generate(this.id, this.held.length, first, job, onToken);
    if (!generation) return null;
    // What the loop decoded is in the cache, also when it failed part way.
    const done = generation.done.then(
      (decoded) => {
        for (const token of decoded) this.held.push(token);
        return decoded;
      },
      (err: unknown) => {
        for (const token of (err as { decoded?: number[] }).decoded ?? []) this.held.push(token);
        throw err;
      },
    );
    this.last = done.catch(() => undefined);
    return { ...generation, done };
  }

  /** Keeps the first `length` cached tokens. */
  cut(length: number): Promise<void> {
    return this.serially(async () => {
      if (length >= this.held.length) return;
      await this.decoder.erase(this.id, length);
      this.held.length = length;
    });
  }

  private serially<T>(operation: () => Promise<T>): Promise<T> {
    this.operations++;
    const result = this.last.then(operation).finally(() => this.operations--);
    this.last = result.catch(() => undefined);
    return result;
  }

  private get busy(): boolean {
    return this.operations > 0;
  }
}
