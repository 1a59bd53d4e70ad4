// Logit fusion under a grammar: the fused distribution, masked. Three chain models (strong, small
// base, small expert) whose next-token distributions depend only on the last token, fused with a
// static α, and a grammar whose allowed set depends on the last token too: the exact distribution
// of each generated token is known, and the decoder's draws must follow it.
import { describe, expect, it } from "vitest";
import { AUTHORS_GRID } from "../../../../decoding/fusion/solver.js";
import { fusionDecode, FusionStats, type FusionSetup } from "../../../../decoding/fusion/decoder.js";
import { DEFAULT_SAMPLING, samplingDistribution, type SamplingParams } from "../../../../decoding/sampler.js";
import type { GenerationRequest } from "../../../../decoding/types.js";
import { ChainModel, type GrammarCalls, LastTokenGrammar } from "../../../helpers/fake-engine.js";
import { goodnessOfFit } from "../../../helpers/goodness.js";

const V = 4;
const STRONG = [
  [0.4, 0.3, 0.2, 0.1],
  [0.1, 0.4, 0.3, 0.2],
  [0.25, 0.25, 0.25, 0.25],
  [0.3, 0.1, 0.2, 0.4],
];
const BASE = [
  [0.25, 0.25, 0.25, 0.25],
  [0.4, 0.2, 0.2, 0.2],
  [0.1, 0.2, 0.3, 0.4],
  [0.25, 0.25, 0.25, 0.25],
];
const EXPERT = [
  [0.1, 0.2, 0.3, 0.4],
  [0.4, 0.2, 0.2, 0.2],
  [0.4, 0.3, 0.2, 0.1],
  [0.1, 0.6, 0.1, 0.2],
];
/** After each token, the tokens the grammar allows: after 3 only 1 (a forced token). */
const ALLOWED_AFTER = [[0, 1, 3], [2, 3], [0, 1, 3], [1]];
const PROMPT = [2];
const ALPHA = 1;

const calls: GrammarCalls = { masks: 0, allows: 0, created: 0, released: 0 };
const grammar = (last: number) => new LastTokenGrammar(ALLOWED_AFTER, last, calls);

const setup = (): FusionSetup => ({
  strong: new ChainModel("strong", STRONG),
  base: new ChainModel("base", BASE),
  experts: [{ name: "expert", model: new ChainModel("expert", EXPERT) }],
  settings: { mode: "static", alpha: ALPHA, grid: AUTHORS_GRID, supportMargin: null },
  stats: new FusionStats(),
});

/** The fused distribution after `last`, computed by hand: p ∝ p_strong · (p_expert / p_base)^α, masked or not. */
function exactFused(last: number, masked: boolean, sampling: SamplingParams = DEFAULT_SAMPLING): Float64Array {
  const logits = Float32Array.from({ length: V }, (_, v) => Math.log(STRONG[last][v]) + ALPHA * (Math.log(EXPERT[last][v]) - Math.log(BASE[last][v])));
  if (masked) for (let v = 0; v < V; v++) if (!ALLOWED_AFTER[last].includes(v)) logits[v] = -Infinity;
  return samplingDistribution(logits, sampling);
}

/** The exact distribution of the second token: Σ_t p(t) p(· | t). */
function exactSecond(masked: boolean): Float64Array {
  const out = new Float64Array(V);
  exactFused(PROMPT[0], masked).forEach((p, t) => exactFused(t, masked).forEach((q, u) => (out[u] += p * q)));
  return out;
}

const totalVariation = (p: ArrayLike<number>, q: ArrayLike<number>) => {
  let sum = 0;
  for (let i = 0; i < p.length; i++) sum += Math.abs(p[i] - q[i]);
  return sum / 2;
};
const fits = (counts: number[], exact: Float64Array) => goodnessOfFit(new Map(counts.map((c, t) => [t, c])), exact).pValue;

describe("fusion decoding under a grammar", () => {
  it.for([
    ["sequential draws", false],
    ["keyed (seeded) draws", true],
  ] as const)("%s: the first two tokens follow the masked fused distribution (chi-square over 20,000 decodes)", async ([, keyedNoise]) => {
    const N = 20_000;
    const first = Array<number>(V).fill(0);
    const second = Array<number>(V).fill(0);
    const third = Array<number>(V).fill(0);
    const before = { ...calls };
    const fusion = setup();
    for (let seed = 0; seed < N; seed++) {
      const request: GenerationRequest = {
        prompt: PROMPT,
        maxTokens: 3,
        sampling: DEFAULT_SAMPLING,
        seed,
        keyedNoise,
        stopStrings: [],
        stopTokens: [],
        topLogprobs: null,
        constraint: grammar(PROMPT[0]),
      };
      const tokens: number[] = [];
      for await (const step of fusionDecode(fusion, request)) {
        tokens.push(...step.tokens);
        expect(step.fusion?.[0]).toEqual({ expert: "expert", alpha: ALPHA });
      }
      request.constraint!.release();
      expect(tokens).toHaveLength(3);
      tokens.forEach((token, i) => expect(ALLOWED_AFTER[i === 0 ? PROMPT[0] : tokens[i - 1]], `seed ${seed}: ${tokens}`).toContain(token));
      first[tokens[0]]++;
      second[tokens[1]]++;
      if (tokens[1] === 3) third[tokens[2]]++;
    }
    expect(fits(first, exactFused(PROMPT[0], true))).toBeGreaterThan(1e-4);
    expect(fits(second, exactSecond(true))).toBeGreaterThan(1e-4);
    // After the forced state only 1 may come.
    expect(third.filter((n, t) => t !== 1 && n > 0)).toEqual([]);
    // The mask matters here: the masked fused distribution is neither the unmasked fused one
    // nor the masked strong one, and the draws are far from the unmasked fused ones.
    expect(totalVariation(exactFused(PROMPT[0], true), exactFused(PROMPT[0], false))).toBeGreaterThan(0.1);
    const strongMasked = samplingDistribution(Float32Array.from(STRONG[PROMPT[0]], (p, v) => (ALLOWED_AFTER[PROMPT[0]].includes(v) ? Math.log(p) : -Infinity)), DEFAULT_SAMPLING);
    expect(totalVariation(exactFused(PROMPT[0], true), strongMasked)).toBeGreaterThan(0.1);
    expect(fits(first, exactFused(PROMPT[0], false))).toBeLessThan(1e-6);
    expect(fits(first, strongMasked)).toBeLessThan(1e-6);
    // The decoder consulted the grammar and released each clone it made.
    expect(calls.allows + calls.masks - before.allows - before.masks).toBeGreaterThan(N);
    expect(calls.created - before.created).toBe(2 * N);
    expect(calls.released - before.released).toBe(2 * N);
    expect(fusion.stats.steps).toBe(3 * N);
  });
});
