// Vocabulary-sized buffers a decoder reuses from one round to the next. At 151,936 tokens a
// distribution is 1.2 MB; allocated afresh per position, such arrays keep V8's garbage collector
// busier than the sampling itself.

/** The most buffers a pool keeps (a round of 32 candidates uses 65 distributions). */
const MAX_SPARE = 72;

/** Float64Arrays handed out and taken back whole (a speculative round's distributions). */
export class DistributionPool {
  private readonly spare: Float64Array[] = [];

  /** A buffer of `length` whose contents are left over from its last use (the caller overwrites every entry). */
  take(length: number): Float64Array {
    const at = this.spare.findIndex((buffer) => buffer.length === length);
    return at >= 0 ? this.spare.splice(at, 1)[0] : new Float64Array(length);
  }

  /** A buffer of `length` zeros. */
  takeZeroed(length: number): Float64Array {
    return this.take(length).fill(0);
  }

  /** Takes back buffers nothing reads any more. */
  give(buffers: Iterable<Float64Array | undefined>): void {
    for (const buffer of buffers) {
      if (buffer && this.spare.length < MAX_SPARE && !this.spare.includes(buffer)) this.spare.push(buffer);
    }
  }
}
