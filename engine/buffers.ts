// Vocabulary-sized buffers reused from one position or round to the next. At 151,936 tokens a
// distribution is 1.2 MB and a logits array 600 KB; allocated afresh per position, such arrays
// are external memory V8 collects with full garbage collections, which cost more than the
// sampling itself.

/** Typed arrays handed out and taken back whole; at most `max` are kept. */
export class BufferPool<T extends Float32Array | Float64Array> {
  private readonly spare: T[] = [];

  constructor(
    private readonly create: (length: number) => T,
    private readonly max: number,
  ) {}

  /** A kept buffer of `length` whose contents are left over from its last use, if any. */
  reuse(length: number): T | undefined {
    const at = this.spare.findIndex((buffer) => buffer.length === length);
    return at >= 0 ? this.spare.splice(at, 1)[0] : undefined;
  }

  /** A buffer of `length`: a kept one (the caller overwrites every entry) or a new one. */
  take(length: number): T {
    return this.reuse(length) ?? this.create(length);
  }

  /** A buffer of `length` zeros. */
  takeZeroed(length: number): T {
    return this.take(length).fill(0) as T;
  }

  /** Takes back buffers nothing reads any more. */
  give(buffers: Iterable<T | undefined>): void {
    for (const buffer of buffers) {
      if (buffer && this.spare.length < this.max && !this.spare.includes(buffer)) this.spare.push(buffer);
    }
  }
}

/** A speculative round's draft, target and one-hot distributions (32 candidates use 65). */
export const distributionPool = () => new BufferPool<Float64Array>((length) => new Float64Array(length), 72);
