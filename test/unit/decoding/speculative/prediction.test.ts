// The Predicted Outputs aligner (decoding/speculative/prediction.ts): it follows the prediction
// while the output agrees, proposes nothing once they diverge, and picks the prediction up again
// where the latest output reappears in it.
import { describe, expect, it } from "vitest";
import { PREDICTION_PER_ROUND, PredictionAligner } from "../../../../decoding/speculative/prediction.js";

describe("PredictionAligner", () => {
  const prediction = [10, 11, 12, 90, 91, 92, 13, 14, 15, 16, 17];

  it("follows the prediction while the output agrees, with the run as its match", () => {
    const a = new PredictionAligner(prediction);
    expect(a.propose([], 4)).toEqual({ tokens: [10, 11, 12, 90], match: 1 });
    a.advance([10, 11], [10, 11]);
    expect(a.propose([], 2)).toEqual({ tokens: [12, 90], match: 3 });
    expect(a.propose([], 1000).tokens.length).toBe(Math.min(PREDICTION_PER_ROUND, prediction.length - 2));
  });

  it("proposes nothing after a divergence, then resynchronises on the output's latest tokens", () => {
    const a = new PredictionAligner(prediction);
    const output: number[] = [];
    const emit = (...tokens: number[]) => {
      output.push(...tokens);
      a.advance(tokens, output);
    };
    emit(10, 11, 12);
    // The output skips the prediction's 90 91 92: nothing to propose until it is found again.
    emit(13);
    expect(a.propose(output, 4)).toEqual({ tokens: [], match: 1 });
    // "12 13" is not in the prediction either; "13 14" is: follow on after it.
    emit(14);
    expect(a.propose(output, 3)).toEqual({ tokens: [15, 16, 17], match: 3 });
    emit(15, 16);
    expect(a.propose(output, 8)).toEqual({ tokens: [17], match: 5 });
  });

  it("resynchronises on the longest suffix that occurs, up to 8 tokens", () => {
    const repeated = [1, 2, 3, 1, 2, 4, 5];
    const a = new PredictionAligner(repeated);
    const output = [9, 1, 2, 4];
    a.advance(output, output);
    // "1 2 4" occurs once: after it, 5 (not after the first "1 2").
    expect(a.propose(output, 4)).toEqual({ tokens: [5], match: 4 });
  });
});
