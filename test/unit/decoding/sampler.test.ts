// Token selection: logit adjustments, the truncated sampling distribution, draws, logprobs.
// Expected values are derived by hand from small distributions chosen so the arithmetic is exact
// enough to check (logits are log-probabilities, so softmax(logits) gives them back).
import { describe, expect, it } from "vitest";
import { TokenHistory } from "../../../decoding/history.js";
import {
  adjustLogits,
  argmax,
  DEFAULT_SAMPLING,
  drawFrom,
  logSoftmax,
  sampleToken,
  samplingDistribution,
  type SamplingParams,
  topTokens,
  truncationCut,
} from "../../../decoding/sampler.js";
import { createRng, type Rng } from "../../../decoding/rng.js";
import { fullSortDistribution } from "../../helpers/reference-sampler.js";
import { chiSquarePValue, chiSquareStatistic } from "../../helpers/stats.js";

const params = (over: Partial<SamplingParams> = {}): SamplingParams => ({ ...DEFAULT_SAMPLING, ...over });
const logitsOf = (probs: number[]) => new Float32Array(probs.map((p) => (p > 0 ? Math.log(p) : -Infinity)));
const expectDistribution = (actual: Float64Array, expected: number[]) => {
  expect(actual.length).toBe(expected.length);
  expected.forEach((p, i) => expect(actual[i], `token ${i}`).toBeCloseTo(p, 6));
};
const sum = (xs: ArrayLike<number>) => Array.from(xs).reduce((a, b) => a + b, 0);
/** An Rng that returns the given uniforms in turn. */
const scripted = (...us: number[]): Rng => ({
  next: () => us.shift() ?? 0.5,
  int: () => 0,
  pick: <T>(items: readonly T[]) => items[0],
});

describe("adjustLogits", () => {
  it("adds logit_bias to the named tokens, ignores ids beyond the vocabulary and copies the input", () => {
    const logits = new Float32Array([1, 2, 3]);
    const out = adjustLogits(logits, params({ logitBias: new Map([[0, 5], [2, -100], [7, 1]]) }), TokenHistory.after([]));
    expect(Array.from(out)).toEqual([6, 2, -97]);
    expect(Array.from(logits)).toEqual([1, 2, 3]);
    expect(out).not.toBe(logits);
  });

  it("subtracts presence·[count>0] + frequency·count (OpenAI's formula)", () => {
    const logits = new Float32Array([1, 1, 1, 1]);
    const out = adjustLogits(logits, params({ presencePenalty: 0.5, frequencyPenalty: 0.25 }), TokenHistory.of([], [2, 1, 2, 2]));
    expect(Array.from(out)).toEqual([1, 1 - 0.5 - 0.25, 1 - 0.5 - 0.75, 1]);
  });

  it("accepts negative penalties (they encourage repetition) and combines them with bias", () => {
    const out = adjustLogits(
      new Float32Array([0, 0]),
      params({ presencePenalty: -1, frequencyPenalty: -0.5, logitBias: new Map([[0, 2]]) }),
      TokenHistory.of([], [0, 0]),
    );
    expect(Array.from(out)).toEqual([2 + 1 + 1, 0]);
  });

  it("counts generated tokens only for presence and frequency: the prompt's tokens go free", () => {
    const out = adjustLogits(new Float32Array([1, 1]), params({ presencePenalty: 2 }), TokenHistory.of([0, 0], [1]));
    expect(Array.from(out)).toEqual([1, -1]);
  });

  it("repetition penalty: divides a positive logit and multiplies a negative one, once per distinct token in the window, prompt included", () => {
    const logits = new Float32Array([2, -2, 2, 2, 0.5]);
    const history = TokenHistory.of([0, 1, 2], [1, 1, 3]);
    // Window of the last 4 tokens: 2, 1, 1, 3 — token 0 falls outside it.
    const out = adjustLogits(logits, params({ repetitionPenalty: 2, repeatLastN: 4 }), history);
    expect(Array.from(out)).toEqual([2, -4, 1, 1, 0.5]);
    // -1: the whole context; 0: none; 1: off.
    expect(Array.from(adjustLogits(logits, params({ repetitionPenalty: 2, repeatLastN: -1 }), history))).toEqual([1, -4, 1, 1, 0.5]);
    expect(Array.from(adjustLogits(logits, params({ repetitionPenalty: 2, repeatLastN: 0 }), history))).toEqual(Array.from(logits));
    expect(Array.from(adjustLogits(logits, params({ repetitionPenalty: 1, repeatLastN: -1 }), history))).toEqual(Array.from(logits));
  });

  it("leaves logits alone when nothing is set", () => {
    expect(Array.from(adjustLogits(new Float32Array([3, -1]), params(), TokenHistory.of([0], [0, 0])))).toEqual([3, -1]);
  });
});

describe("argmax", () => {
  it("returns the index of the largest value, the lowest id on ties", () => {
    expect(argmax([0.1, 3, -2, 3, 1])).toBe(1);
    expect(argmax([5])).toBe(0);
    expect(argmax(new Float32Array([-Infinity, -Infinity, -7, -8]))).toBe(2);
    expect(argmax([-1, -1, -1])).toBe(0);
  });
});

describe("samplingDistribution", () => {
  const p4 = [0.1, 0.2, 0.3, 0.4];

  it("is softmax(logits) at temperature 1, and sums to 1", () => {
    const d = samplingDistribution(logitsOf(p4), params());
    expectDistribution(d, p4);
    expect(sum(d)).toBeCloseTo(1, 12);
  });

  it("scales logits by 1/temperature", () => {
    // probs ∝ p^(1/T): T = 0.5 squares, T = 2 takes square roots
    expectDistribution(samplingDistribution(logitsOf([1 / 7, 2 / 7, 4 / 7]), params({ temperature: 0.5 })), [1 / 21, 4 / 21, 16 / 21]);
    const r = Math.SQRT2;
    expectDistribution(samplingDistribution(logitsOf([1 / 7, 2 / 7, 4 / 7]), params({ temperature: 2 })), [1 / (3 + r), r / (3 + r), 2 / (3 + r)]);
  });

  it("is one-hot on the argmax at temperature 0, whatever the truncation settings", () => {
    const d = samplingDistribution(new Float32Array([0.5, 2, -1, 2]), params({ temperature: 0, topK: 3, topP: 0.1, minP: 0.9 }));
    expect(Array.from(d)).toEqual([0, 1, 0, 0]);
  });

  it("top_k keeps the k most likely tokens, renormalised, ties broken by lowest id", () => {
    expectDistribution(samplingDistribution(logitsOf(p4), params({ topK: 2 })), [0, 0, 3 / 7, 4 / 7]);
    expectDistribution(samplingDistribution(logitsOf(p4), params({ topK: 4 })), p4);
    expectDistribution(samplingDistribution(logitsOf(p4), params({ topK: 100 })), p4);
    const tied = new Float32Array([1, 3, 2, 3]);
    expectDistribution(samplingDistribution(tied, params({ topK: 1 })), [0, 1, 0, 0]);
    expectDistribution(samplingDistribution(tied, params({ topK: 2 })), [0, 0.5, 0, 0.5]);
  });

  it("top_p keeps the smallest prefix whose cumulative probability reaches top_p", () => {
    // sorted: 0.4, 0.3, 0.2, 0.1 → cumulative 0.4, 0.7, 0.9, 1.0
    expectDistribution(samplingDistribution(logitsOf(p4), params({ topP: 0.35 })), [0, 0, 0, 1]);
    expectDistribution(samplingDistribution(logitsOf(p4), params({ topP: 0.41 })), [0, 0, 3 / 7, 4 / 7]);
    expectDistribution(samplingDistribution(logitsOf(p4), params({ topP: 0.69 })), [0, 0, 3 / 7, 4 / 7]);
    expectDistribution(samplingDistribution(logitsOf(p4), params({ topP: 0.71 })), [0, 2 / 9, 3 / 9, 4 / 9]);
    expectDistribution(samplingDistribution(logitsOf(p4), params({ topP: 0.95 })), p4);
  });

  it("min_p keeps tokens with p ≥ min_p · p_max, measured after temperature", () => {
    expectDistribution(samplingDistribution(logitsOf(p4), params({ minP: 0.6 })), [0, 0, 3 / 7, 4 / 7]); // ≥ 0.24
    expectDistribution(samplingDistribution(logitsOf(p4), params({ minP: 0.45 })), [0, 2 / 9, 3 / 9, 4 / 9]); // ≥ 0.18
    expectDistribution(samplingDistribution(logitsOf(p4), params({ minP: 0.2 })), p4); // ≥ 0.08
    // T = 0.5 → ∝ 1, 4, 9, 16: min_p 0.3 keeps ≥ 4.8, i.e. 9 and 16 (0.2 would survive at T = 1)
    expectDistribution(samplingDistribution(logitsOf(p4), params({ temperature: 0.5, minP: 0.3 })), [0, 0, 9 / 25, 16 / 25]);
  });

  it("applies top_k, top_p and min_p together as the tightest of the three", () => {
    const p = [0.05, 0.1, 0.15, 0.3, 0.4]; // sorted cumulative: 0.4, 0.7, 0.85, 0.95, 1
    expectDistribution(samplingDistribution(logitsOf(p), params({ topK: 3, topP: 0.99, minP: 0 })), [0, 0, 0.15 / 0.85, 0.3 / 0.85, 0.4 / 0.85]);
    expectDistribution(samplingDistribution(logitsOf(p), params({ topK: 4, topP: 0.99, minP: 0.5 })), [0, 0, 0, 3 / 7, 4 / 7]);
  });

  it("measures top_p on the top-k survivors renormalised, as vLLM and llama.cpp do", () => {
    // top_k = 2 leaves 0.4, 0.3 → renormalised 4/7 ≈ 0.571, 3/7; 4/7 ≥ 0.5 already → only token 3.
    expectDistribution(samplingDistribution(logitsOf(p4), params({ topK: 2, topP: 0.5 })), [0, 0, 0, 1]);
  });

  it("gives -Infinity logits probability 0 and rejects a distribution with no mass", () => {
    const d = samplingDistribution(new Float32Array([-Infinity, 0, -Infinity, 0]), params({ topP: 0.99 }));
    expectDistribution(d, [0, 0.5, 0, 0.5]);
    expect(() => samplingDistribution(new Float32Array([-Infinity, -Infinity]), params())).toThrow();
  });
});

describe("samplingDistribution against a sort of the whole vocabulary", () => {
  /** Random logits: Gaussian of scale sigma, rounded to `step` (ties) and some -Infinity. */
  const randomLogits = (rng: Rng, n: number, sigma: number, step: number, zeros: number) =>
    Float32Array.from({ length: n }, () => {
      if (rng.next() < zeros) return -Infinity;
      const g = Math.sqrt(-2 * Math.log(1 - rng.next())) * Math.cos(2 * Math.PI * rng.next()) * sigma;
      return step > 0 ? Math.round(g / step) * step : g;
    });

  it("keeps exactly the tokens, with exactly the probabilities, of a full sort (of the logits for top-k)", () => {
    const rng = createRng(20261202);
    const pick = <T>(xs: readonly T[]) => xs[Math.floor(rng.next() * xs.length)];
    let partial = 0;
    let lowered = 0;
    let topK = 0;
    for (let c = 0; c < 1500; c++) {
      const n = pick([1, 2, 7, 100, 1000, 5000]);
      const logits = randomLogits(rng, n, pick([0.05, 0.5, 1, 4, 12]), pick([0, 0, 0.25, 1]), pick([0, 0, 0.5, 0.99]));
      if (!logits.some((l) => l > -Infinity)) logits[0] = 0;
      const p = params({
        temperature: pick([0.3, 0.8, 1, 2]),
        topK: pick([0, 0, 1, 2, 40, 1000, n, n + 5]),
        topP: pick([1, 1, 0.1, 0.5, 0.9, 0.95, 0.999, 1 - 1e-12]),
        minP: pick([0, 0, 1e-9, 0.001, 0.05, 0.5, 1]),
      });
      const flock = samplingDistribution(logits, p);
      const reference = fullSortDistribution(logits, p);
      expect(Array.from(flock), `case ${c}`).toEqual(Array.from(reference));
      if (p.topK > 0 && p.topK < n) {
        topK++;
        continue;
      }
      const probs = samplingDistribution(logits, params({ temperature: p.temperature }));
      const positives = probs.filter((x) => x > 0).length;
      const { sorted } = truncationCut(probs, p.topP, p.minP);
      if (sorted < positives) partial++;
      const max = probs.reduce((a, b) => Math.max(a, b), 0);
      if (probs.filter((x) => x >= max / 8).length < sorted) lowered++;
    }
    // Every path ran: top-k selection, and top-p/min-p cuts decided on part of the distribution
    // or reaching far below its top.
    expect(topK).toBeGreaterThan(400);
    expect(partial).toBeGreaterThan(200);
    expect(lowered).toBeGreaterThan(50);
  });

  it("sorts little more than the nucleus, not all 151,936 tokens, for top_p 0.95", () => {
    for (const sigma of [3, 4, 6]) {
      const logits = randomLogits(createRng(sigma), 151_936, sigma, 0, 0);
      const probs = samplingDistribution(logits, params());
      const { keep, sorted } = truncationCut(probs, 0.95, 0);
      expect(keep).toBeGreaterThan(3);
      expect(sorted).toBeLessThan(1.1 * keep + 64);
      expect(Array.from(samplingDistribution(logits, params({ topP: 0.95 })))).toEqual(Array.from(fullSortDistribution(logits, params({ topP: 0.95 }))));
    }
  });
});

describe("drawFrom", () => {
  it("maps a uniform through the inverse CDF, skipping zero-probability tokens", () => {
    const probs = new Float64Array([0.25, 0, 0.5, 0.25]);
    expect([0.1, 0.3, 0.7, 0.9].map((u) => drawFrom(probs, scripted(u)))).toEqual([0, 2, 2, 3]);
    // a uniform beyond the (rounded) total lands on the last token with mass, not on a zero
    expect(drawFrom(new Float64Array([0.3, 0.3, 0.3, 0]), scripted(0.95))).toBe(2);
  });

  it("matches the distribution in a chi-square test (false-failure probability 1e-3)", () => {
    const probs = new Float64Array([0.05, 0, 0.15, 0.3, 0, 0.5]);
    const rng = createRng(20240601);
    const counts = new Array<number>(probs.length).fill(0);
    const n = 20_000;
    for (let i = 0; i < n; i++) counts[drawFrom(probs, rng)]++;
    expect(counts[1] + counts[4]).toBe(0);
    const fit = chiSquareStatistic(counts, probs);
    expect(fit.degreesOfFreedom).toBe(3);
    expect(chiSquarePValue(fit.statistic, fit.degreesOfFreedom)).toBeGreaterThan(1e-3);
    // and the same counts do reject a distribution that is off by one percentage point per cell
    const wrong = chiSquareStatistic(counts, [0.06, 0, 0.14, 0.3, 0, 0.5]);
    expect(chiSquarePValue(wrong.statistic, wrong.degreesOfFreedom)).toBeLessThan(1e-3);
  });
});

describe("sampleToken", () => {
  const logits = logitsOf([0.1, 0.2, 0.3, 0.4]);
  const run = (seed: number, p: SamplingParams, n = 200) => {
    const rng = createRng(seed);
    return Array.from({ length: n }, () => sampleToken(logits, p, rng));
  };

  it("reproduces the same tokens from the same seed, and different ones from another seed", () => {
    expect(run(7, params())).toEqual(run(7, params()));
    expect(run(7, params())).not.toEqual(run(8, params()));
  });

  it("draws from the truncated distribution (top_k 2 at T = 0.5: ∝ 9, 16)", () => {
    const draws = run(99, params({ topK: 2, temperature: 0.5 }), 10_000);
    const counts = [0, 1, 2, 3].map((t) => draws.filter((d) => d === t).length);
    expect(counts[0] + counts[1]).toBe(0);
    const fit = chiSquareStatistic(counts, [0, 0, 9 / 25, 16 / 25]);
    expect(chiSquarePValue(fit.statistic, fit.degreesOfFreedom)).toBeGreaterThan(1e-3);
  });

  it("is the argmax at temperature 0", () => {
    expect(new Set(run(3, params({ temperature: 0 }), 20))).toEqual(new Set([3]));
  });
});

describe("logSoftmax", () => {
  it("returns log-probabilities that exponentiate to a distribution", () => {
    const lp = logSoftmax(new Float32Array([0, Math.log(2), Math.log(4)]));
    [1 / 7, 2 / 7, 4 / 7].forEach((p, i) => expect(lp[i]).toBeCloseTo(Math.log(p), 6));
    expect(sum(Array.from(lp, Math.exp))).toBeCloseTo(1, 12);
  });

  it("is stable for large logits and keeps -Infinity as -Infinity", () => {
    const lp = logSoftmax(new Float32Array([1000, 1000, -Infinity]));
    expect(lp[0]).toBeCloseTo(Math.log(0.5), 12);
    expect(lp[1]).toBeCloseTo(Math.log(0.5), 12);
    expect(lp[2]).toBe(-Infinity);
  });
});

describe("topTokens", () => {
  it("returns the most likely tokens first, ties by lowest token id", () => {
    const lp = new Float64Array([-2, -0.5, -3, -0.5, -1]);
    expect(topTokens(lp, 3)).toEqual([
      { token: 1, logprob: -0.5 },
      { token: 3, logprob: -0.5 },
      { token: 4, logprob: -1 },
    ]);
    expect(topTokens(lp, 2).map((t) => t.token)).toEqual([1, 3]);
    expect(topTokens(lp, 1).map((t) => t.token)).toEqual([1]);
  });

  it("returns every token, sorted, when count exceeds the vocabulary", () => {
    expect(topTokens(new Float64Array([-3, -1, -2]), 10).map((t) => t.token)).toEqual([1, 2, 0]);
  });

  it("ranks -Infinity below every finite logprob, ties among them by id", () => {
    const lp = new Float64Array([-Infinity, -5, -Infinity, -9]);
    expect(topTokens(lp, 3)).toEqual([
      { token: 1, logprob: -5 },
      { token: 3, logprob: -9 },
      { token: 0, logprob: -Infinity },
    ]);
    expect(topTokens(lp, 2).map((t) => t.token)).toEqual([1, 3]);
  });

  it("returns an empty list for count 0 (chat logprobs: true without top_logprobs)", () => {
    expect(topTokens(new Float64Array([-1, -2]), 0)).toEqual([]);
  });
});
