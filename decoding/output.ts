// Turns generated tokens into released text: incremental detokenization, stop-sequence
// hold-back, and release of each token's logprob entry together with its text.
import { IncrementalDetokenizer } from "./detokenizer.js";
import { StopMatcher } from "./stop.js";
import type { DecodingModel, TokenLogprob } from "./types.js";

interface Pending {
  /** Offset in the raw text where this token's text begins. */
  start: number;
  logprob?: TokenLogprob;
}

export interface Released {
  text: string;
  logprobs: TokenLogprob[];
  /** A stop sequence matched: generation must end. */
  stopped: boolean;
}

export class OutputAssembler {
  private readonly detokenizer: IncrementalDetokenizer;
  private readonly stops: StopMatcher;
  private raw = "";
  private released = 0;
  private pending: Pending[] = [];

  constructor(model: DecodingModel, prompt: readonly number[], stopStrings: readonly string[]) {
    this.detokenizer = new IncrementalDetokenizer((tokens, context) => model.detokenize(tokens, context), prompt);
    this.stops = new StopMatcher(stopStrings);
  }

  push(token: number, logprob?: TokenLogprob): Released {
    this.pending.push({ start: this.raw.length, logprob });
    this.raw += this.detokenizer.push(token);
    const scan = this.stops.scan(this.raw, this.released);
    if ("stopAt" in scan) return this.releaseUntil(scan.stopAt, true);
    return this.releaseUntil(scan.safeUntil, false);
  }

  /** Releases everything held (generation ended without a stop sequence). */
  finish(): Released {
    this.raw += this.detokenizer.flush();
    const scan = this.stops.scan(this.raw, this.released);
    if ("stopAt" in scan) return this.releaseUntil(scan.stopAt, true);
    return this.releaseUntil(this.raw.length, false, true);
  }

  private releaseUntil(end: number, stopped: boolean, all = false): Released {
    const text = this.raw.slice(this.released, end);
    this.released = end;
    let n = 0;
    while (n < this.pending.length && (all || this.pending[n].start < end)) n++;
    const out = this.pending.splice(0, n).flatMap((p) => (p.logprob ? [p.logprob] : []));
    return { text, logprobs: out, stopped };
  }
}
