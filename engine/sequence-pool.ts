// The sequences of one context, lent one request choice at a time: admission control, the
// bounded queue of waiting acquisitions, and prefix-aware choice of the idle sequence to lend.
// Knows nothing of llama.cpp: LoadedModel (model.ts) gives it the sequences and how to lend one.
import { FlockError } from "./errors.js";
import { type SequenceCache, sharedPrefixLength } from "./sequence.js";

interface Waiter<S> {
  prompt: readonly number[];
  /** performance.now() when it started waiting (queue time). */
  since: number;
  resolve: (seq: S) => void;
  reject: (err: unknown) => void;
  signal?: AbortSignal;
  onAbort?: () => void;
}

export class SequencePool<S> {
  private readonly free: SequenceCache[];
  private readonly waiters: Waiter<S>[] = [];
  /** Choices admitted by `admit` and not yet done (running or waiting). */
  private admitted = 0;
  /** Told how long each acquisition waited for a sequence, in seconds (0 when one was idle), and its request's signal. */
  onAcquire: ((waitedSeconds: number, signal?: AbortSignal) => void) | null = null;
  /** Told when a sequence comes back and every sequence is idle (a retiring model disposes then). */
  onAllIdle: (() => void) | null = null;

  constructor(
    /** Named in the overload error. */
    private readonly modelId: string,
    /** Every sequence of the context, busy or free. */
    readonly sequences: readonly SequenceCache[],
    /** Acquisitions that may wait for a sequence at once; more are refused (overloaded). */
    readonly maxQueue: number,
    /** Wraps a pooled sequence for its borrower; `release` gives it back. */
    private readonly lend: (seq: SequenceCache, release: () => void) => S,
  ) {
    this.free = [...sequences];
  }

  /** Sequences not lent right now. */
  get idle(): number {
    return this.free.length;
  }
  /** Sequences lent right now. */
  get running(): number {
    return this.sequences.length - this.free.length;
  }
  /** Acquisitions waiting for a sequence. */
  get waiting(): number {
    return this.waiters.length;
  }
  /** Most choices one request can ever be admitted with. */
  get capacity(): number {
    return this.sequences.length + this.maxQueue;
  }

  /**
   * Reserves `choices` sequences' worth of capacity (sequences plus maxQueue waiting places) if
   * the reservations left room, and returns the function that gives them back; null when full.
   * Synchronous, so a check and its reservation cannot interleave with another request's.
   */
  admit(choices: number): (() => void) | null {
    if (this.admitted + choices > this.capacity) return null;
    this.admitted += choices;
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.admitted -= choices;
    };
  }

  /**
   * Lends an idle sequence, preferring the one whose cached tokens share the longest prefix with
   * `prompt` (its KV cache is reused), or waits for one. Rejects when `signal` aborts while
   * waiting, and with `overloaded` when maxQueue acquisitions are already waiting (a server that
   * accepts everything only converts overload into timeouts).
   */
  acquire(prompt: readonly number[], signal?: AbortSignal): Promise<S> {
    if (signal?.aborted) return Promise.reject(signal.reason);
    const seq = this.takeBestFree(prompt);
    if (seq) {
      this.onAcquire?.(0, signal);
      return Promise.resolve(this.wrap(seq));
    }
    if (this.waiters.length >= this.maxQueue) {
      return Promise.reject(new FlockError("overloaded", `model ${this.modelId} is busy: ${this.waiters.length} requests are already waiting; retry shortly`));
    }
    return new Promise((resolve, reject) => {
      const waiter: Waiter<S> = { prompt, since: performance.now(), resolve, reject, signal };
      if (signal) {
        waiter.onAbort = () => {
          const i = this.waiters.indexOf(waiter);
          if (i >= 0) this.waiters.splice(i, 1);
          reject(signal.reason);
        };
        signal.addEventListener("abort", waiter.onAbort, { once: true });
      }
      this.waiters.push(waiter);
    });
  }

  /** Every waiting acquisition fails with `err`. */
  rejectWaiters(err: FlockError): void {
    for (const waiter of this.waiters.splice(0)) {
      if (waiter.onAbort) waiter.signal?.removeEventListener("abort", waiter.onAbort);
      waiter.reject(err);
    }
  }

  private takeBestFree(prompt: readonly number[]): SequenceCache | undefined {
    if (this.free.length === 0) return undefined;
    let best = 0;
    let bestShared = -1;
    this.free.forEach((seq, i) => {
      const shared = sharedPrefixLength(seq.tokens, prompt);
      if (shared > bestShared) [best, bestShared] = [i, shared];
    });
    return this.free.splice(best, 1)[0];
  }

  private wrap(seq: SequenceCache): S {
    return this.lend(seq, () => this.release(seq));
  }

  /** A returned sequence goes to the oldest waiter, else back to the idle ones. */
  private release(seq: SequenceCache): void {
    const waiter = this.waiters.shift();
    if (!waiter) {
      this.free.push(seq);
      if (this.free.length === this.sequences.length) this.onAllIdle?.();
      return;
    }
    if (waiter.onAbort) waiter.signal?.removeEventListener("abort", waiter.onAbort);
    this.onAcquire?.((performance.now() - waiter.since) / 1000, waiter.signal);
    waiter.resolve(this.wrap(seq));
  }
}
