// Predicted Outputs: text the client expects the answer to repeat, proposed as candidates. The
// prediction is followed while the output agrees with it; after a divergence the aligner finds
// where the latest output reappears in the prediction and follows it from there. A proposal is
// deterministic (a one-hot q), which verification handles exactly: rejection sampling accepts
// y with probability p(y) and otherwise draws from p without y; coupled noise as always.
import type { TextProposal, TextProposer } from "./text-proposals.js";

/** A prediction's candidates per round at most (the cost rule proposes as many of them as pay). */
export const PREDICTION_PER_ROUND = 32;

/** The longest output suffix looked up in the prediction to re-synchronise, and the shortest. */
const MAX_SYNC = 8;
const MIN_SYNC = 2;

export class PredictionAligner implements TextProposer {
  readonly source = "prediction";
  /** Index in the prediction of the token expected next; -1 while not synchronised. */
  private at = 0;
  /** Output tokens that agree with the prediction since the start or the last re-synchronisation. */
  private run = 0;

  constructor(private readonly prediction: readonly number[]) {}

  /** The prediction's next tokens, up to `max` and PREDICTION_PER_ROUND (none while not synchronised). */
  propose(_text: readonly number[], max: number): TextProposal {
    const take = Math.min(max, PREDICTION_PER_ROUND);
    return { tokens: this.at < 0 ? [] : this.prediction.slice(this.at, this.at + take), match: 1 + this.run };
  }

  /** Tokens just emitted; `output` is everything generated so far (those included). */
  advance(emitted: readonly number[], output: readonly number[]): void {
    for (const token of emitted) {
      if (this.at >= 0 && this.prediction[this.at] === token) {
        this.at++;
        this.run++;
      } else this.at = -1;
    }
    if (this.at < 0) ({ at: this.at, run: this.run } = this.resync(output));
  }

  /** After the longest suffix of the output (MIN_SYNC…MAX_SYNC tokens) found in the prediction, or -1. */
  private resync(output: readonly number[]): { at: number; run: number } {
    for (let n = Math.min(MAX_SYNC, output.length); n >= MIN_SYNC; n--) {
      const suffix = output.slice(output.length - n);
      for (let i = 0; i + n <= this.prediction.length; i++) {
        let match = true;
        for (let j = 0; j < n && match; j++) match = this.prediction[i + j] === suffix[j];
        if (match) return { at: i + n, run: n };
      }
    }
    return { at: -1, run: 0 };
  }
}

/** The one-hot distribution of a deterministic proposal (in `zeros`, a buffer of zeros, where given). */
export function oneHot(vocabularySize: number, token: number, zeros?: Float64Array): Float64Array {
  const q = zeros?.length === vocabularySize ? zeros : new Float64Array(vocabularySize);
  q[token] = 1;
  return q;
}
