// Online corrections of an acceptance predictor's logit, per context and candidate token.
//
// Whether a candidate survives verification, min(1, p(y)/q(y)), depends on which token y is and
// what came before it far more than the draft's summary statistics (top-1, entropy, margin) can
// tell: a draft is reliably right on some continuations and reliably wrong on others. So the
// predictor's logit z gets three learned offsets — one for the token before the position (the
// context), one for the candidate y, one for the pair — trained online from every verified
// candidate with the predictor's own loss gradient. They live in one hashed table of fixed size,
// whatever the vocabulary (collisions only blur two offsets together).
//
// Exactness: the offsets at position i depend on the context (known before y_i is drawn) and on
// y_i; a policy reads the y-dependent part only after the draw, or in expectation over q.

/** log2 of the table's size: 65,536 offsets, 256 KiB. */
const TABLE_BITS = 16;
/** Step size per verified candidate for each offset it touches. */
const RATE = 0.2;
/** Offsets are kept within ±LIMIT (a logit offset of 8 already means near certainty). */
const LIMIT = 8;

const CONTEXT = 0x9e3779b1;
const TOKEN = 0x85ebca77;
const PAIR = 0xc2b2ae3d;

export class AcceptanceCorrections {
  private readonly table: Float32Array;
  private readonly mask: number;

  constructor(table?: Float32Array) {
    this.table = table ?? new Float32Array(1 << TABLE_BITS);
    this.mask = this.table.length - 1;
    if ((this.table.length & this.mask) !== 0) throw new Error("acceptance corrections: the table's size must be a power of two");
  }

  /** The offset that depends on the context only (undefined context: none). */
  contextOffset(context: number | undefined): number {
    return context === undefined ? 0 : this.table[this.slot(CONTEXT, context, 0)];
  }

  /** The offsets that depend on the candidate: its own and the pair's. */
  candidateOffset(context: number | undefined, token: number): number {
    const own = this.table[this.slot(TOKEN, token, 0)];
    return context === undefined ? own : own + this.table[this.slot(PAIR, context, token)];
  }

  /** All three. */
  offset(context: number | undefined, token: number): number {
    return this.contextOffset(context) + this.candidateOffset(context, token);
  }

  /** One gradient step: `gradient` is d(loss)/dz at the candidate's prediction. */
  observe(context: number | undefined, token: number, gradient: number): void {
    const step = -RATE * gradient;
    this.nudge(this.slot(TOKEN, token, 0), step);
    if (context === undefined) return;
    this.nudge(this.slot(CONTEXT, context, 0), step);
    this.nudge(this.slot(PAIR, context, token), step);
  }

  private nudge(slot: number, step: number): void {
    this.table[slot] = Math.min(LIMIT, Math.max(-LIMIT, this.table[slot] + step));
  }

  /** A multiplicative hash of (kind, a, b) into the table. */
  private slot(kind: number, a: number, b: number): number {
    let h = Math.imul(kind ^ a, 0x27d4eb2d);
    h = Math.imul(h ^ (h >>> 15) ^ b, 0x165667b1);
    return (h ^ (h >>> 13)) & this.mask;
  }

  /** The table as base64 (what a predictor's file keeps). */
  serialize(): string {
    return Buffer.from(this.table.buffer, this.table.byteOffset, this.table.byteLength).toString("base64");
  }

  /** A table serialized by serialize(); null when it does not decode to one of the expected size. */
  static deserialize(text: string): AcceptanceCorrections | null {
    const bytes = Buffer.from(text, "base64");
    if (bytes.length !== 4 << TABLE_BITS) return null;
    const table = new Float32Array(1 << TABLE_BITS);
    new Uint8Array(table.buffer).set(bytes);
    return table.every(Number.isFinite) ? new AcceptanceCorrections(table) : null;
  }
}
