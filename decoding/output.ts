// Turns generated tokens into released text: incremental detokenization, stop-sequence
// hold-back, and release of each token's logprob entry together with its text.
import { IncrementalDetokenizer } from "./detokenizer.js";
import { StopMatcher } from "./stop.js";
import type { DecodingModel, FinishReason, TokenLogprob } from "./types.js";

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

export interface Emitted extends Released {
  /** Set when this token ends generation. */
  finishReason?: FinishReason;
}

/** What can end generation at a token, besides a stop sequence in the text. */
export interface TokenEnds {
  /** An end-of-generation or stop token: it ends generation, and its own text is not emitted. */
  endOfGeneration: boolean;
  /** max_tokens or the context is used up with this token. */
  limitReached: boolean;
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

  /**
   * One generated token, in every decoder's order of endings: an end-of-generation token, then
   * a stop sequence the token completes, then the limit (which releases everything held).
   */
  emit(token: number, logprob: TokenLogprob | undefined, ends: TokenEnds): Emitted {
    if (ends.endOfGeneration) return { ...this.finish(), finishReason: "stop" };
    const released = this.push(token, logprob);
    if (released.stopped) return { ...released, finishReason: "stop" };
    if (!ends.limitReached) return released;
    const rest = this.finish();
    return {
      text: released.text + rest.text,
      logprobs: [...released.logprobs, ...rest.logprobs],
      stopped: rest.stopped,
      finishReason: rest.stopped ? "stop" : "length",
    };
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
