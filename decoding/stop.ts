// Stop sequences matched across token boundaries. Text that might be the beginning of a stop
// sequence is held back until it is known not to be; a matched stop sequence is never emitted.

export class StopMatcher {
  private readonly stops: readonly string[];
  private readonly longest: number;

  constructor(stops: readonly string[]) {
    this.stops = stops.filter((s) => s.length > 0);
    this.longest = Math.max(0, ...this.stops.map((s) => s.length));
  }

  /**
   * Looks at the whole text generated so far (from `from` on, the part not yet released).
   * Returns where a stop sequence starts, or else how far the text is safe to release.
   */
  scan(text: string, from: number): { stopAt: number } | { safeUntil: number } {
    if (this.stops.length === 0) return { safeUntil: text.length };
    // A stop sequence may straddle `from` only if it began in held-back text, which starts at `from`.
    let stopAt = -1;
    for (const stop of this.stops) {
      const i = text.indexOf(stop, from);
      if (i >= 0 && (stopAt < 0 || i < stopAt)) stopAt = i;
    }
    if (stopAt >= 0) return { stopAt };
    // Hold back the longest suffix that is a proper prefix of some stop sequence.
    for (let k = Math.min(this.longest - 1, text.length - from); k > 0; k--) {
      const tail = text.slice(text.length - k);
      if (this.stops.some((s) => s.startsWith(tail))) return { safeUntil: text.length - k };
    }
    return { safeUntil: text.length };
  }
}
