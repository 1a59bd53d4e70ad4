// Exactness of speculative rounds, through the real decoder (decoding/speculative/decoder.ts)
// with a fake engine: a target and a draft that are Markov chains over three tokens, so a decode
// costs microseconds and the target's exact distributions are known. The acceptance predictor's
// P̂ depends on the drawn candidate's value — the case that once biased the default policy,
// which withdrew candidates by their P̂ — and every test proves it exercised what could break
// (rejections, rounds of several lengths, stops after a draw, positions declined before one).
//
// - Rejection sampling, enumerated exactly: the chains' probabilities are multiples of 1/4, so
//   every comparison verification makes against a uniform lands on the same side for the whole
//   quarter of [0, 1) the uniform falls in. Replacing the request's RNG by one that enumerates
//   quarters (each path weighted 4^-draws) gives the exact distribution of the first emitted
//   token under every policy: it must equal the target's. The same enumeration over whole
//   rounds: the first three tokens' joint distribution; and, with top_k = 2 and a presence
//   penalty on chains whose thresholds all fall on five edges (each draw branches over the six
//   cells between them), the first two tokens' joint distribution — exact, total variation
//   below 10^-6 where the issue asks for 0.003.
// - With temperature, top-p and presence/frequency penalties the probabilities leave that grid:
//   10^5 seeded decodes per policy must pass a chi-square test (one that a total variation of
//   0.01 fails) for the first token and, with the first one's penalties, the second. (Seeing
//   0.003 this way would take about 10^6 decodes per policy, some 50 s each here; truncation
//   and penalties are held to that by the exact enumeration above.)
// - Coupled verification: with keyed noise the speculative text must be token for token the
//   target's own keyed draws (plain decoding with the same seed), under every policy; and keyed
//   sampling itself must be exact (10^6 keys, total variation below 0.003).
import { beforeEach, describe, expect, it, vi } from "vitest";
import { keyedSample, PositionNoise, positionKey } from "../../../../decoding/noise.js";
import { gumbelMaxSample } from "../../../helpers/reference-sampler.js";
import { plainDecode } from "../../../../decoding/plain.js";
import { TokenHistory } from "../../../../decoding/history.js";
import { adjustLogits, DEFAULT_SAMPLING, samplingDistribution, type SamplingParams } from "../../../../decoding/sampler.js";
import { RoundCosts } from "../../../../decoding/speculative/costs.js";
import { type SpeculativeSetup, speculativeDecode } from "../../../../decoding/speculative/decoder.js";
import type { DraftFeatures, PreDrawFeatures } from "../../../../decoding/speculative/features.js";
import { type CandidateLengthPolicy, ConfidencePolicy, CostAwareSpecDecPolicy, FixedLengthPolicy, SpecDecPlusPlusPolicy } from "../../../../decoding/speculative/policies.js";
import { type LookupSettings, PromptLookup } from "../../../../decoding/speculative/lookup.js";
import { acceptanceCalibrations } from "../../../../decoding/speculative/calibration.js";
import { samplingRegime } from "../../../../decoding/speculative/settings.js";
import { TextAcceptance } from "../../../../decoding/speculative/text-proposals.js";
import { type AcceptancePredictor, expectedOverTop } from "../../../../decoding/speculative/predictors.js";
import { SpeculativeStats } from "../../../../decoding/speculative/stats.js";
import type { VerificationMode } from "../../../../decoding/speculative/verifier.js";
import type { GenerationRequest } from "../../../../decoding/types.js";
import { ChainModel, type GrammarCalls, LastTokenGrammar } from "../../../helpers/fake-engine.js";
import { createRng, type Rng } from "../../../../decoding/rng.js";
import { goodnessOfFit } from "../../../helpers/goodness.js";

// The request's RNG, replaced by an enumerating one while `scripted` is set.
const rngControl = vi.hoisted(() => ({ scripted: null as null | (() => { next(): number; int(n: number): number; pick<T>(items: readonly T[]): T }) }));
vi.mock("../../../../decoding/rng.js", async (importOriginal) => {
  const original = await importOriginal<typeof import("../../../../decoding/rng.js")>();
  return { ...original, createRng: (seed: number) => rngControl.scripted?.() ?? original.createRng(seed) };
});

const V = 3;
/**
 * Next-token probabilities after each token: the target, and a draft that disagrees with it.
 * Every probability, acceptance ratio min(1, p/q) and residual max(p − q, 0) / Σ is a multiple
 * of 1/4, which exact enumeration needs.
 */
const TARGET = [
  [0.5, 0.25, 0.25],
  [0.25, 0.5, 0.25],
  [0.75, 0.25, 0],
];
const DRAFT = [
  [0.25, 0.5, 0.25],
  [0.5, 0.25, 0.25],
  [0.75, 0, 0.25],
];
const PROMPT = [2];
const MAX_CANDIDATES = 4;

const target = new ChainModel("target", TARGET);
const draft = new ChainModel("draft", DRAFT);

/**
 * P̂ that depends on the candidate's value: token 0 looks safe, the others do not — unsafe enough
 * that where the draft gives token 0 only a quarter of its mass, E_q[P̂] says the position is
 * not worth a draft step (so the E_q rule declines positions before their draw).
 */
const valueDependent = (withExpectation: boolean): AcceptancePredictor => {
  const predict = (f: DraftFeatures) => (f.token === 0 ? 0.95 : 0.1);
  return {
    name: "value-dependent",
    rejectionWeight: 1,
    predict,
    ...(withExpectation ? { expected: (before: PreDrawFeatures) => expectedOverTop(before, (chosen, token) => predict({ ...before, chosen, token }), Infinity) } : {}),
    observe: () => {},
  };
};

/** A cost table that the fake engine's microsecond timings do not overwrite. */
class FixedCosts extends RoundCosts {
  override observeDraftStep(): void {}
  override observeTargetPass(): void {}
}

/**
 * Costs where neither a draft step nor verification is free, so the auto rule's decisions depend
 * on P̂: past two tokens each one more verified costs 1.25 ms, enough that a position whose
 * E_q[P̂] is low is declined before its draw even with the draft step to q_k already paid, while
 * a likely candidate before it (P̂ 0.95) still makes the step towards it worth taking.
 */
async function cpuLikeCosts(): Promise<RoundCosts> {
  const costs = new FixedCosts();
  await costs.calibrate(async () => 1, async (n) => (n === 1 ? 4 : 4.4 + 1.25 * (n - 2)), 8, 1);
  return costs;
}

/** Costs where each token more verified costs little, so priced text proposals vary in length. */
async function cheapVerificationCosts(): Promise<RoundCosts> {
  const costs = new FixedCosts();
  await costs.calibrate(async () => 1.5, async (n) => (n === 1 ? 4 : 4 + 0.2 * n), 8, 1);
  return costs;
}

type PolicyCase = { name: string; make: (costs: RoundCosts) => CandidateLengthPolicy; predictor: AcceptancePredictor | null };
const POLICIES: PolicyCase[] = [
  { name: "fixed K = 3", make: () => new FixedLengthPolicy(3), predictor: null },
  { name: "confidence 0.6", make: () => new ConfidencePolicy(0.6, MAX_CANDIDATES), predictor: null },
  { name: "specdec++ h = 0.5", make: () => new SpecDecPlusPlusPolicy(valueDependent(false), 0.5, 1, MAX_CANDIDATES), predictor: valueDependent(false) },
  { name: "specdec++ auto, E_q[P̂] before each draw", make: (costs) => new CostAwareSpecDecPolicy(valueDependent(true), costs, 1, MAX_CANDIDATES), predictor: valueDependent(true) },
  { name: "specdec++ auto, the last P̂ before each draw", make: (costs) => new CostAwareSpecDecPolicy(valueDependent(false), costs, 1, MAX_CANDIDATES), predictor: valueDependent(false) },
];

interface Exercised {
  /** Positions a policy declined before their draw; rounds it ended after a draw before its cap. */
  stopsBeforeDraw: number;
  stopsAfterDraw: number;
  lengths: Set<number>;
  rejections: number;
  /** Candidates a grammar forced (all accepted), and draft candidates accepted after one in a round. */
  forcedAccepted: number;
  drawnAfterForced: number;
}
const exercised = (): Exercised => ({ stopsBeforeDraw: 0, stopsAfterDraw: 0, lengths: new Set(), rejections: 0, forcedAccepted: 0, drawnAfterForced: 0 });

/** The policy, counting (with `weight`) the positions it declines before a draw and the rounds it ends early after one. */
function counting(policy: CandidateLengthPolicy, seen: Exercised, weight: () => number): CandidateLengthPolicy {
  return {
    name: policy.name,
    begin: () => policy.begin(),
    ...(policy.beforeDraw && {
      beforeDraw: (k: number, before: PreDrawFeatures) => {
        const decision = policy.beforeDraw!(k, before);
        if (decision === "stop") seen.stopsBeforeDraw += weight();
        return decision;
      },
    }),
    afterDraw: (k: number, features: DraftFeatures) => {
      const decision = policy.afterDraw(k, features);
      if (decision === "stop" && k < MAX_CANDIDATES) seen.stopsAfterDraw += weight();
      return decision;
    },
    get lastPrediction() {
      return policy.lastPrediction;
    },
    ...(policy.skipRound && { skipRound: () => policy.skipRound!() }),
    ...(policy.end && { end: (proposed: number, accepted: number, acceptance: readonly number[]) => policy.end!(proposed, accepted, acceptance) }),
  };
}

/** Decodes until `count` tokens are out; reports each round to `seen`. */
async function firstTokens(
  policy: CandidateLengthPolicy,
  predictor: AcceptancePredictor | null,
  costs: RoundCosts,
  request: GenerationRequest,
  verification: VerificationMode,
  count: number,
  seen: Exercised,
  weight: () => number,
): Promise<number[]> {
  return decodeCounting({ target, draft, policy, predictor, maxCandidates: MAX_CANDIDATES, stats: new SpeculativeStats(), costs, verification }, request, count, seen, weight);
}

/** The first `count` tokens of a speculative decode; each round's length and rejections go to `seen`. */
async function decodeCounting(setup: SpeculativeSetup, request: GenerationRequest, count: number, seen: Exercised, weight: () => number): Promise<number[]> {
  const tokens: number[] = [];
  for await (const step of speculativeDecode(setup, request)) {
    const round = step.speculative!;
    seen.lengths.add(round.drafted);
    if (round.accepted < round.drafted) seen.rejections += weight();
    seen.forcedAccepted += round.origins.filter((o) => o === "forced").length;
    seen.drawnAfterForced += round.origins.filter((o, i) => o === "accepted" && round.origins.slice(0, i).includes("forced")).length;
    tokens.push(...step.tokens);
    if (tokens.length >= count) break;
  }
  return tokens;
}

const request = (sampling: SamplingParams, seed: number, extra: Partial<GenerationRequest> = {}): GenerationRequest => ({
  prompt: PROMPT,
  maxTokens: 8,
  sampling,
  seed,
  stopStrings: [],
  stopTokens: [],
  topLogprobs: null,
  ...extra,
});

/** The target's exact distribution of the next token after `history` (penalties count the output). */
function exactNext(history: readonly number[], sampling: SamplingParams): Float64Array {
  const last = history.length > 0 ? history[history.length - 1] : PROMPT[PROMPT.length - 1];
  return samplingDistribution(adjustLogits(Float32Array.from(TARGET[last], Math.log), sampling, TokenHistory.of(PROMPT, history)), sampling);
}

/** The target's exact distribution of the second token (the penalties count the first). */
function exactSecond(sampling: SamplingParams): Float64Array {
  const out = new Float64Array(V);
  exactNext([], sampling).forEach((p, t) => exactNext([t], sampling).forEach((q, u) => (out[u] += p * q)));
  return out;
}

/** The target's exact distributions of the first and second tokens after `prompt` (the penalties count the output). */
function exactFirstTwo(prompt: readonly number[], sampling: SamplingParams): { first: Float64Array; second: Float64Array } {
  const after = (history: readonly number[]) =>
    samplingDistribution(adjustLogits(Float32Array.from(TARGET[history.at(-1)!], Math.log), sampling, TokenHistory.of(prompt, history.slice(prompt.length))), sampling);
  const first = after(prompt);
  const second = new Float64Array(V);
  first.forEach((p, t) => after([...prompt, t]).forEach((q, u) => (second[u] += p * q)));
  return { first, second };
}

/** The chi-square p-value of token counts (indexed by token) against an exact distribution. */
const fits = (counts: number[], exact: Float64Array) => goodnessOfFit(new Map(counts.map((c, t) => [t, c])), exact).pValue;

const totalVariation = (p: ArrayLike<number>, q: ArrayLike<number>) => {
  let sum = 0;
  for (let i = 0; i < p.length; i++) sum += Math.abs(p[i] - q[i]);
  return sum / 2;
};

function expectExercised(policy: PolicyCase, seen: Exercised, total: number): void {
  expect(seen.rejections).toBeGreaterThan(total / 20);
  // Round lengths vary with the drawn values (the E_q rule may end every round at the same
  // length, once by a draw's P̂ and once before a draw: both stops are counted below).
  if (!/fixed|E_q/.test(policy.name)) expect(seen.lengths.size).toBeGreaterThan(1);
  if (policy.name.startsWith("specdec++")) expect(seen.stopsAfterDraw).toBeGreaterThan(total / 20);
  if (/E_q|confidence/.test(policy.name)) expect(seen.stopsBeforeDraw).toBeGreaterThan(total / 1000);
}

/**
 * The exact distribution of the first emitted token of `decode`: every sequence of uniform
 * draws, each a quarter's midpoint, enumerated like an odometer (the draws a path does not make
 * do not branch it); a path of d draws has probability 4^-d, which `decode` gets as `weight()`.
 */
async function enumerateFirstToken(decode: (weight: () => number) => Promise<number>): Promise<{ first: Float64Array; paths: number }> {
  const GRID = 4;
  const first = new Float64Array(V);
  let digits: number[] = [];
  let paths = 0;
  for (;;) {
    let used = 0;
    rngControl.scripted = () => {
      const next = () => {
        if (used === digits.length) digits.push(0);
        return (digits[used++] + 0.5) / GRID;
      };
      return { next, int: (n: number) => Math.floor(next() * n), pick: <T>(items: readonly T[]) => items[Math.floor(next() * items.length)] } satisfies Rng;
    };
    const token = await decode(() => GRID ** -used);
    first[token] += GRID ** -used;
    paths++;
    // The next path: drop the draws this path did not make, then increment like an odometer.
    digits = digits.slice(0, used);
    while (digits.length > 0 && digits[digits.length - 1] === GRID - 1) digits.pop();
    if (digits.length === 0) break;
    digits[digits.length - 1]++;
  }
  rngControl.scripted = null;
  return { first, paths };
}

/**
 * The exact distribution of what `decode` returns (a few tokens, as a key): like
 * enumerateFirstToken, but each uniform draw branches over the cells between `breakpoints`
 * (every threshold any draw is compared with: CDFs, acceptance ratios, residuals), at each
 * cell's midpoint with the cell's width as its probability. `weight()` is the product of the
 * widths of the draws made so far.
 */
async function enumerateOutcomes(decode: (weight: () => number) => Promise<readonly number[]>, breakpoints: readonly number[]): Promise<{ outcomes: Map<string, number>; paths: number }> {
  const edges = [0, ...[...breakpoints].sort((a, b) => a - b), 1];
  const cells = edges.slice(1).map((hi, i) => ({ mid: (edges[i] + hi) / 2, width: hi - edges[i] }));
  const outcomes = new Map<string, number>();
  let digits: number[] = [];
  let paths = 0;
  for (;;) {
    let used = 0;
    let weight = 1;
    rngControl.scripted = () => {
      const next = () => {
        if (used === digits.length) digits.push(0);
        const cell = cells[digits[used++]];
        weight *= cell.width;
        return cell.mid;
      };
      return { next, int: (n: number) => Math.floor(next() * n), pick: <T>(items: readonly T[]) => items[Math.floor(next() * items.length)] } satisfies Rng;
    };
    const key = (await decode(() => weight)).join(",");
    outcomes.set(key, (outcomes.get(key) ?? 0) + weight);
    paths++;
    digits = digits.slice(0, used);
    while (digits.length > 0 && digits[digits.length - 1] === cells.length - 1) digits.pop();
    if (digits.length === 0) break;
    digits[digits.length - 1]++;
  }
  rngControl.scripted = null;
  return { outcomes, paths };
}

/** The exact joint distribution of the first `count` tokens after `prompt` under `rows` (the penalties count the output). */
function exactJoint(rows: readonly number[][], prompt: readonly number[], sampling: SamplingParams, count: number): Map<string, number> {
  const out = new Map<string, number>();
  const extend = (history: number[], probability: number) => {
    if (history.length === count) {
      out.set(history.join(","), probability);
      return;
    }
    const last = history.length > 0 ? history[history.length - 1] : prompt[prompt.length - 1];
    const p = samplingDistribution(adjustLogits(Float32Array.from(rows[last], Math.log), sampling, TokenHistory.of(prompt, history)), sampling);
    p.forEach((x, t) => x > 0 && extend([...history, t], probability * x));
  };
  extend([], 1);
  return out;
}

/** Total variation between two distributions over keys. */
function jointDistance(a: ReadonlyMap<string, number>, b: ReadonlyMap<string, number>): number {
  let sum = 0;
  for (const key of new Set([...a.keys(), ...b.keys()])) sum += Math.abs((a.get(key) ?? 0) - (b.get(key) ?? 0));
  return sum / 2;
}

describe("rejection sampling, enumerated exactly", () => {
  beforeEach(() => {
    rngControl.scripted = null;
  });

  /**
   * The exact distribution of the first emitted token: every sequence of uniform draws, each
   * a quarter's midpoint, enumerated like an odometer (the draws a path does not make do not
   * branch it); a path of d draws has probability 4^-d.
   */
  async function enumerate(policy: PolicyCase, seen: Exercised): Promise<{ first: Float64Array; paths: number }> {
    return enumerateFirstToken(async (weight) => {
      // Fresh costs and policy per path: every path sees the same policy state.
      const costs = await cpuLikeCosts();
      const [token] = await firstTokens(counting(policy.make(costs), seen, weight), policy.predictor, costs, request(DEFAULT_SAMPLING, 0), "rejection", 1, seen, weight);
      return token;
    });
  }

  it.for(POLICIES)("$name: the first token's distribution is the target's", async (policy) => {
    const seen = exercised();
    const { first, paths } = await enumerate(policy, seen);
    expect(first.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 12);
    // Exact, up to the float rounding of the logits the fake models hand out.
    expect(totalVariation(first, exactNext([], DEFAULT_SAMPLING))).toBeLessThan(1e-6);
    expect(paths).toBeGreaterThan(10);
    expectExercised(policy, seen, 1);
  });
});

describe("rejection sampling, whole rounds enumerated exactly", () => {
  beforeEach(() => {
    rngControl.scripted = null;
  });

  // The first three tokens jointly: the first round's candidates (up to three: max_tokens 4
  // leaves room for them and the token after), what verification keeps of them and the token
  // after, then the rounds after it until three tokens are out. A policy whose decisions leaned
  // on a candidate's value would bias a later token of the round even where the first token's
  // marginal came out right. Fixed K = 3, which reads nothing, gets max_tokens 3 (two
  // candidates): its three-candidate rounds alone would take 1.3 million paths.
  it.for(POLICIES)("$name: the joint distribution of the first three tokens is the target's", async (policy) => {
    const seen = exercised();
    const maxTokens = policy.name.startsWith("fixed") ? 3 : 4;
    const { outcomes, paths } = await enumerateOutcomes(async (weight) => {
      const costs = await cpuLikeCosts();
      return (await firstTokens(counting(policy.make(costs), seen, weight), policy.predictor, costs, request(DEFAULT_SAMPLING, 0, { maxTokens }), "rejection", 3, seen, weight)).slice(0, 3);
    }, [0.25, 0.5, 0.75]);
    expect([...outcomes.values()].reduce((a, b) => a + b, 0)).toBeCloseTo(1, 12);
    expect(jointDistance(outcomes, exactJoint(TARGET, PROMPT, DEFAULT_SAMPLING, 3))).toBeLessThan(1e-6);
    expect(paths).toBeGreaterThan(100);
    expectExercised(policy, seen, 1);
  });

  // top_k = 2 and a presence penalty of ln 4 (a token already in the output keeps a quarter of
  // its weight): on rows that do not depend on the last token, every probability, acceptance
  // ratio and residual any round meets, whatever the penalised set, lies on a grid whose
  // thresholds are 1/3, 1/2, 2/3, 3/4 and 8/9 (checked below), so each draw branches over the
  // six cells between them. The penalty changes the target's distribution from the second
  // token on, and top_k cuts a different token as it does; the draft's top two are not the
  // target's (its second choice is one the target's top_k cuts), and it draws token 0, which the
  // value-dependent P̂ trusts, two times in three before the penalty.
  const TRUNCATED_TARGET = Array.from({ length: V }, () => [10 / 16, 1 / 16, 5 / 16]);
  const TRUNCATED_DRAFT = Array.from({ length: V }, () => [10 / 16, 5 / 16, 1 / 16]);
  const truncated: SamplingParams = { ...DEFAULT_SAMPLING, topK: 2, presencePenalty: Math.log(4) };
  const THRESHOLDS = [1 / 3, 1 / 2, 2 / 3, 3 / 4, 8 / 9];

  it("the grid: every threshold a round can compare a uniform with is one of the cells' edges", () => {
    const onGrid = (x: number) => x <= 1e-9 || x >= 1 - 1e-9 || THRESHOLDS.some((b) => Math.abs(x - b) < 1e-6);
    const cumulative = (p: Float64Array) => {
      let c = 0;
      return [...p].filter((x) => x > 0).map((x) => (c += x));
    };
    // Every penalised set: the output so far holds some subset of the tokens.
    for (let set = 0; set < 2 ** V; set++) {
      const present = [0, 1, 2].filter((t) => set & (1 << t));
      const dist = (rows: number[][]) => samplingDistribution(adjustLogits(Float32Array.from(rows[0], Math.log), truncated, TokenHistory.of(PROMPT, present)), truncated);
      const [p, q] = [dist(TRUNCATED_TARGET), dist(TRUNCATED_DRAFT)];
      expect(p.filter((x) => x > 0).length).toBe(2);
      const residual = p.map((x, t) => Math.max(x - q[t], 0));
      const mass = residual.reduce((a, b) => a + b, 0);
      const thresholds = [...cumulative(p), ...cumulative(q), ...[...q].flatMap((x, t) => (x > 0 ? [Math.min(1, p[t] / x)] : [])), ...(mass > 0 ? cumulative(residual.map((r) => r / mass)) : [])];
      for (const x of thresholds) expect(onGrid(x), `set {${present}}: ${x}`).toBe(true);
    }
    // Truncation and the penalty matter: the first two tokens' joint law differs from the one without them.
    expect(jointDistance(exactJoint(TRUNCATED_TARGET, PROMPT, truncated, 2), exactJoint(TRUNCATED_TARGET, PROMPT, { ...truncated, presencePenalty: 0 }, 2))).toBeGreaterThan(0.05);
    expect(jointDistance(exactJoint(TRUNCATED_TARGET, PROMPT, truncated, 2), exactJoint(TRUNCATED_TARGET, PROMPT, { ...truncated, topK: 0 }, 2))).toBeGreaterThan(0.05);
  });

  it.for(POLICIES)("$name, top_k 2 and a presence penalty: the joint distribution of the first two tokens is the target's", async (policy) => {
    const seen = exercised();
    const [truncatedTarget, truncatedDraft] = [new ChainModel("target", TRUNCATED_TARGET), new ChainModel("draft", TRUNCATED_DRAFT)];
    const { outcomes, paths } = await enumerateOutcomes(async (weight) => {
      const costs = await cpuLikeCosts();
      const setup: SpeculativeSetup = {
        target: truncatedTarget,
        draft: truncatedDraft,
        policy: counting(policy.make(costs), seen, weight),
        predictor: policy.predictor,
        maxCandidates: MAX_CANDIDATES,
        stats: new SpeculativeStats(),
        costs,
        verification: "rejection",
      };
      return (await decodeCounting(setup, request(truncated, 0, { maxTokens: 3 }), 2, seen, weight)).slice(0, 2);
    }, THRESHOLDS);
    expect([...outcomes.values()].reduce((a, b) => a + b, 0)).toBeCloseTo(1, 12);
    expect(jointDistance(outcomes, exactJoint(TRUNCATED_TARGET, PROMPT, truncated, 2))).toBeLessThan(1e-6);
    expect(paths).toBeGreaterThan(30);
    expect(seen.rejections).toBeGreaterThan(0.05);
    if (!/fixed|E_q/.test(policy.name)) expect(seen.lengths.size).toBeGreaterThan(1);
  });
});

describe("rejection sampling with temperature, top-p and penalties (chi-square over 10^5 decodes)", () => {
  const sampling: SamplingParams = { ...DEFAULT_SAMPLING, temperature: 0.8, topP: 0.9, presencePenalty: 0.6, frequencyPenalty: 0.4 };
  const DECODES = 100_000;

  async function measure(policy: PolicyCase): Promise<{ first: number[]; second: number[]; seen: Exercised }> {
    const costs = await cpuLikeCosts();
    const seen = exercised();
    const first = Array<number>(V).fill(0);
    const second = Array<number>(V).fill(0);
    for (let seed = 0; seed < DECODES; seed++) {
      const tokens = await firstTokens(counting(policy.make(costs), seen, () => 1), policy.predictor, costs, request(sampling, seed), "rejection", 2, seen, () => 1);
      first[tokens[0]]++;
      second[tokens[1]]++;
    }
    return { first, second, seen };
  }

  it.for(POLICIES)("$name", async (policy) => {
    const { first, second, seen } = await measure(policy);
    expect(fits(first, exactNext([], sampling))).toBeGreaterThan(1e-4);
    expect(fits(second, exactSecond(sampling))).toBeGreaterThan(1e-4);
    expectExercised(policy, seen, DECODES);
  });

  it("the test sees a total variation of 0.01: the same counts against a target off by that much fail it", async () => {
    const { first } = await measure(POLICIES[0]);
    const off = Float64Array.from(exactNext([], sampling));
    off[0] -= 0.01;
    off[1] += 0.01;
    expect(totalVariation(off, exactNext([], sampling))).toBeCloseTo(0.01, 12);
    expect(fits(first, off)).toBeLessThan(1e-4);
  });
});

describe("coupled verification", () => {
  const samplings: Array<[string, SamplingParams]> = [
    ["T = 1", DEFAULT_SAMPLING],
    ["T = 0.8, top_p 0.9, penalties", { ...DEFAULT_SAMPLING, temperature: 0.8, topP: 0.9, presencePenalty: 0.6, frequencyPenalty: 0.4 }],
  ];

  it.for(samplings)("%s: every policy's text is the target's own keyed draws, token for token", async ([, sampling]) => {
    for (const policy of POLICIES) {
      const costs = await cpuLikeCosts();
      const seen = exercised();
      for (let seed = 0; seed < 2000; seed++) {
        const req = request(sampling, seed, { keyedNoise: true, choice: seed % 3 });
        const spec = await firstTokens(counting(policy.make(costs), seen, () => 1), policy.predictor, costs, req, "coupled", 8, seen, () => 1);
        const plain: number[] = [];
        for await (const step of plainDecode(target, req)) plain.push(...step.tokens);
        expect(spec.slice(0, 8), `${policy.name}, seed ${seed}`).toEqual(plain);
      }
      expectExercised(policy, seen, 2000);
    }
  });

  it.for(samplings)("%s: keyed sampling is exact (10^6 keys, total variation below 0.003)", ([, sampling]) => {
    const adjusted = adjustLogits(Float32Array.from(TARGET[1], Math.log), sampling, TokenHistory.of(PROMPT, [1]));
    const exact = samplingDistribution(adjusted, sampling);
    const counts = new Float64Array(V);
    const N = 1_000_000;
    for (let seed = 0; seed < N; seed++) counts[keyedSample(adjusted, sampling, new PositionNoise(positionKey({ seed, choice: 0 }, 5)))]++;
    expect(totalVariation(counts.map((c) => c / N), exact)).toBeLessThan(0.003);
    expect(goodnessOfFit(new Map([...counts].map((c, t) => [t, c])), exact).pValue).toBeGreaterThan(1e-4);
  });

  it("the exponential race picks Gumbel-max's token, taking few logarithms", () => {
    const rng = createRng(11);
    const gaussian = () => Math.sqrt(-2 * Math.log(1 - rng.next())) * Math.cos(2 * Math.PI * rng.next());
    const logs = vi.spyOn(Math, "log");
    let cases = 0;
    let logarithms = 0;
    let tokens = 0;
    for (const n of [3, 50, 1000, 20_000]) {
      for (let c = 0; c < (n === 20_000 ? 40 : 2000); c++) {
        const adjusted = Float32Array.from({ length: n }, () => [0.3, 2, 6][c % 3] * gaussian());
        const sampling = { ...DEFAULT_SAMPLING, temperature: [1, 0.7, 1.6][c % 3], topP: c % 4 === 0 ? 0.9 : 1, minP: c % 5 === 0 ? 0.01 : 0 };
        const key = positionKey({ seed: c, choice: n }, 3);
        logs.mockClear();
        const raced = keyedSample(adjusted, sampling, new PositionNoise(key));
        logarithms += logs.mock.calls.length;
        tokens += n;
        expect(raced, `n ${n}, case ${c}`).toBe(gumbelMaxSample(adjusted, sampling, key));
        cases++;
      }
    }
    logs.mockRestore();
    expect(cases).toBe(6040);
    // Gumbel-max takes two per token; the race a handful per draw.
    expect(logarithms / tokens).toBeLessThan(0.05);
  });
});

describe("Predicted Outputs: one-hot proposals from a prediction", () => {
  /** Decodes with the prediction as the only proposer (no draft model), as plain models do. */
  async function predictedTokens(req: GenerationRequest, verification: VerificationMode, count: number, seen: Exercised, weight: () => number, lookup: LookupSettings | null = null): Promise<number[]> {
    const costs = await cheapVerificationCosts();
    const setup = { target, draft: null, lookup, policy: new FixedLengthPolicy(MAX_CANDIDATES), predictor: null, maxCandidates: MAX_CANDIDATES, stats: new SpeculativeStats(), costs, verification };
    return decodeCounting(setup, req, count, seen, weight);
  }

  it("rejection sampling, enumerated exactly: the first token's distribution is the target's, whatever the prediction", async () => {
    // Predictions that start with each token: the likely one, an unlikely one, the impossible-after-2 one.
    for (const prediction of [[0, 0, 1], [1, 2, 0], [2, 1, 1]]) {
      const seen = exercised();
      const { first } = await enumerateFirstToken(async (weight) => (await predictedTokens(request(DEFAULT_SAMPLING, 0, { prediction }), "rejection", 1, seen, weight))[0]);
      expect(first.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 12);
      expect(totalVariation(first, exactNext([], DEFAULT_SAMPLING)), `prediction ${prediction}`).toBeLessThan(1e-6);
      expect(seen.rejections, `prediction ${prediction} is rejected on some paths`).toBeGreaterThan(0);
    }
  });

  it("prompt lookup, enumerated exactly: the first token's distribution is the target's, whatever the text offers", async () => {
    // Prompts ending in 2 whose earlier 2 was followed by 0, 1 and 2: lookup offers each first.
    const lookup: LookupSettings = { enabled: true, minMatch: 1, maxMatch: 3, maxCandidates: MAX_CANDIDATES, priced: false };
    for (const prompt of [[1, 2, 0, 2], [0, 2, 1, 2], [2, 2]]) {
      const seen = exercised();
      const { first } = await enumerateFirstToken(async (weight) => (await predictedTokens(request(DEFAULT_SAMPLING, 0, { prompt }), "rejection", 1, seen, weight, lookup))[0]);
      expect(first.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 12);
      expect(totalVariation(first, exactNext([], DEFAULT_SAMPLING)), `prompt ${prompt}`).toBeLessThan(1e-6);
      expect(seen.lengths.has(0), `prompt ${prompt}: every round proposed`).toBe(false);
      expect(seen.rejections, `prompt ${prompt}: the offer is rejected on some paths`).toBeGreaterThan(0);
    }
  });

  it("rejection sampling with temperature, top-p and penalties: the first two tokens follow the target (chi-square over 10^5 decodes)", async () => {
    const sampling: SamplingParams = { ...DEFAULT_SAMPLING, temperature: 0.8, topP: 0.9, presencePenalty: 0.6, frequencyPenalty: 0.4 };
    const seen = exercised();
    const first = Array<number>(V).fill(0);
    const second = Array<number>(V).fill(0);
    for (let seed = 0; seed < 100_000; seed++) {
      const tokens = await predictedTokens(request(sampling, seed, { prediction: [0, 1, 0, 1] }), "rejection", 2, seen, () => 1);
      first[tokens[0]]++;
      second[tokens[1]]++;
    }
    expect(fits(first, exactNext([], sampling))).toBeGreaterThan(1e-4);
    expect(fits(second, exactSecond(sampling))).toBeGreaterThan(1e-4);
    expect(seen.rejections).toBeGreaterThan(100_000 / 20);
  });

  it("prompt lookup (proposals copied from the text itself): rejection sampling's first two tokens follow the target; coupled text is the target's own", async () => {
    const lookup: LookupSettings = { enabled: true, minMatch: 1, maxMatch: 3, maxCandidates: MAX_CANDIDATES, priced: true };
    // A prompt that repeats itself, so the lookup always finds a match.
    const prompt = [0, 1, 2, 0, 1, 2, 0, 1, 2];
    const sampling: SamplingParams = { ...DEFAULT_SAMPLING, temperature: 0.8, topP: 0.9, presencePenalty: 0.6, frequencyPenalty: 0.4 };
    const seen = exercised();
    const first = Array<number>(V).fill(0);
    const second = Array<number>(V).fill(0);
    for (let seed = 0; seed < 100_000; seed++) {
      const tokens = await predictedTokens(request(sampling, seed, { prompt }), "rejection", 2, seen, () => 1, lookup);
      first[tokens[0]]++;
      second[tokens[1]]++;
    }
    const exact = exactFirstTwo(prompt, sampling);
    expect(fits(first, exact.first)).toBeGreaterThan(1e-4);
    expect(fits(second, exact.second)).toBeGreaterThan(1e-4);
    expect(seen.rejections).toBeGreaterThan(100_000 / 20);
    expect(seen.lengths.size).toBeGreaterThan(1);
    // Coupled: seeded text is the plain decoder's.
    for (let seed = 0; seed < 1000; seed++) {
      const req = request(DEFAULT_SAMPLING, seed, { prompt, keyedNoise: true });
      const plain: number[] = [];
      for await (const step of plainDecode(target, req)) plain.push(...step.tokens);
      expect(await predictedTokens(req, "coupled", 8, seen, () => 1, lookup), `seed ${seed}`).toEqual(plain.slice(0, 8));
    }
  });

  it("prompt lookup proposes what followed the longest, then latest, earlier match", () => {
    const lookup = new PromptLookup({ minMatch: 1, maxMatch: 3, maxCandidates: 8 });
    // Suffix [5, 6]: its latest earlier occurrence (index 4) was followed by 9, 9.
    expect(lookup.propose([5, 6, 7, 8, 5, 6, 9, 9, 5, 6], 3)).toEqual({ tokens: [9, 9, 5], match: 2 });
    // Longest first: [1, 2, 3] occurs once earlier, followed by 4 — preferred to a later [2, 3].
    expect(lookup.propose([1, 2, 3, 4, 0, 2, 3, 7, 1, 2, 3], 2)).toEqual({ tokens: [4, 0], match: 3 });
    expect(lookup.propose([1, 2, 3], 4).tokens).toEqual([]);
    expect(new PromptLookup({ minMatch: 2, maxMatch: 4, maxCandidates: 8 }).propose([7, 1, 8, 1], 2).tokens).toEqual([]);
    // maxCandidates bounds what the caller's budget allows.
    expect(new PromptLookup({ minMatch: 1, maxMatch: 3, maxCandidates: 2 }).propose([5, 6, 7, 8, 5, 6, 9, 9, 5, 6], 3).tokens).toEqual([9, 9]);
    // An edit: the target keeps 3 and writes 0 where the source has 4. No n-gram ending in 0
    // occurs earlier, so copying goes on past the replaced token (match 0).
    const editing = new PromptLookup({ minMatch: 2, maxMatch: 4, maxCandidates: 3 });
    const text = [1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2];
    expect(editing.propose(text, 8)).toEqual({ tokens: [3, 4, 5], match: 2 });
    editing.advance([3, 0]);
    expect(editing.propose([...text, 3, 0], 8)).toEqual({ tokens: [5, 6, 7], match: 0 });
    // Once an n-gram matches again, the match wins.
    editing.advance([5, 6, 7, 8]);
    expect(editing.propose([...text, 3, 0, 5, 6, 7, 8], 8)).toEqual({ tokens: [9, 1, 2], match: 4 });
    // An offer speaks for its own round only: after a round the lookup sat out, nothing resumes.
    const idle = new PromptLookup({ minMatch: 2, maxMatch: 4, maxCandidates: 3 });
    idle.propose(text, 8);
    idle.advance([3, 0]);
    idle.advance([9]);
    expect(idle.propose([...text, 3, 0, 9], 8).tokens).toEqual([]);
    // Nothing offered, nothing to resume.
    const fresh = new PromptLookup({ minMatch: 2, maxMatch: 4, maxCandidates: 3 });
    fresh.advance([7]);
    expect(fresh.propose([1, 2, 3], 8).tokens).toEqual([]);
  });

  it("coupled verification: a seeded text is the target's own keyed draws, with any prediction", async () => {
    const seen = exercised();
    for (let seed = 0; seed < 2000; seed++) {
      const req = request(DEFAULT_SAMPLING, seed, { keyedNoise: true, choice: seed % 3 });
      const plain: number[] = [];
      for await (const step of plainDecode(target, req)) plain.push(...step.tokens);
      // The prediction: the text itself, or the text with one token changed.
      const prediction = seed % 2 === 0 ? plain : plain.map((t, i) => (i === 3 ? (t + 1) % V : t));
      const spec = await predictedTokens({ ...req, prediction }, "coupled", 8, seen, () => 1);
      expect(spec.slice(0, 8), `seed ${seed}`).toEqual(plain);
    }
    expect(seen.rejections).toBeGreaterThan(500);
  });
});

describe("prompt lookup beside a draft: each round goes to the proposer with the better expected rate", () => {
  const lookup: LookupSettings = { enabled: true, minMatch: 1, maxMatch: 3, maxCandidates: MAX_CANDIDATES, priced: true };
  // A prompt that repeats itself, so the lookup always has something to offer.
  const prompt = [0, 1, 2, 0, 1, 2, 0, 1, 2];
  const sampling: SamplingParams = { ...DEFAULT_SAMPLING, temperature: 0.8, topP: 0.9, presencePenalty: 0.6, frequencyPenalty: 0.4 };

  /** One model's state across its requests, as a pipeline keeps it, and what its rounds did. */
  async function model() {
    return {
      costs: await cpuLikeCosts(),
      textAcceptance: new TextAcceptance(),
      calibrations: acceptanceCalibrations(),
      seen: { lookup: 0, draft: 0, cut: 0, rejections: 0 },
    };
  }

  async function decode(m: Awaited<ReturnType<typeof model>>, req: GenerationRequest, verification: VerificationMode, count: number): Promise<number[]> {
    const predictor = valueDependent(true);
    const policy = new CostAwareSpecDecPolicy(predictor, m.costs, 1, MAX_CANDIDATES, { calibrations: m.calibrations, regime: samplingRegime(req.sampling.temperature, verification) });
    const setup: SpeculativeSetup = { target, draft, lookup, textAcceptance: m.textAcceptance, policy, predictor, maxCandidates: MAX_CANDIDATES, stats: new SpeculativeStats(), costs: m.costs, verification };
    const offers = new PromptLookup(lookup);
    const tokens: number[] = [];
    for await (const step of speculativeDecode(setup, req)) {
      const round = step.speculative!;
      if (round.source === "lookup") {
        m.seen.lookup++;
        // The rule proposed fewer candidates than the lookup offered.
        const offered = offers.propose([...req.prompt, ...tokens], Math.min(MAX_CANDIDATES, req.maxTokens - tokens.length - 1)).tokens.length;
        if (round.drafted < offered) m.seen.cut++;
      } else if (round.drafted > 0) m.seen.draft++;
      if (round.accepted < round.drafted) m.seen.rejections++;
      tokens.push(...step.tokens);
      if (tokens.length >= count) break;
    }
    return tokens;
  }

  it("rejection sampling's first two tokens follow the target (chi-square over 10^5 decodes)", async () => {
    const m = await model();
    const first = Array<number>(V).fill(0);
    const second = Array<number>(V).fill(0);
    for (let seed = 0; seed < 100_000; seed++) {
      const tokens = await decode(m, request(sampling, seed, { prompt }), "rejection", 2);
      first[tokens[0]]++;
      second[tokens[1]]++;
    }
    const exact = exactFirstTwo(prompt, sampling);
    expect(fits(first, exact.first)).toBeGreaterThan(1e-4);
    expect(fits(second, exact.second)).toBeGreaterThan(1e-4);
    // Both proposers had rounds; the rule cut some offers short; candidates were rejected.
    expect(m.seen.lookup).toBeGreaterThan(50_000);
    // After 64 lookup rounds in a row the draft is due a round.
    expect(m.seen.draft).toBeGreaterThan(1000);
    expect(m.seen.cut).toBeGreaterThan(5000);
    expect(m.seen.rejections).toBeGreaterThan(100_000 / 20);
  });

  it("coupled verification: a seeded text is the target's own keyed draws, whichever proposer had each round", async () => {
    const m = await model();
    for (let seed = 0; seed < 2000; seed++) {
      const req = request(sampling, seed, { prompt, keyedNoise: true });
      const plain: number[] = [];
      for await (const step of plainDecode(target, req)) plain.push(...step.tokens);
      expect((await decode(m, req, "coupled", 8)).slice(0, 8), `seed ${seed}`).toEqual(plain);
    }
    expect(m.seen.lookup).toBeGreaterThan(4000);
    expect(m.seen.draft).toBeGreaterThan(50);
    expect(m.seen.cut).toBeGreaterThan(500);
    expect(m.seen.rejections).toBeGreaterThan(500);
  });
});

describe("constrained decoding: the grammar's mask on target and draft alike", () => {
  /**
   * A grammar over the three tokens whose allowed set depends on the state (the last token),
   * so a state not rolled back to the accepted prefix masks the wrong tokens: after 0 token 2
   * is forbidden; after 1 only 0 may come (forced: proposed without the draft); after 2
   * anything goes.
   */
  const ALLOWED_AFTER = [[0, 1], [0], [0, 1, 2]];
  const calls: GrammarCalls = { masks: 0, allows: 0, created: 0, released: 0 };
  const grammar = (last: number) => new LastTokenGrammar(ALLOWED_AFTER, last, calls);
  const constrained = (sampling: SamplingParams, seed: number, extra: Partial<GenerationRequest> = {}) =>
    request(sampling, seed, { constraint: grammar(PROMPT[PROMPT.length - 1]), ...extra });
  /** The target's exact masked distribution of the next token after `history`. */
  function exactConstrained(history: readonly number[], sampling: SamplingParams): Float64Array {
    const last = history.length > 0 ? history[history.length - 1] : PROMPT[PROMPT.length - 1];
    const adjusted = adjustLogits(Float32Array.from(TARGET[last], Math.log), sampling, TokenHistory.of(PROMPT, history));
    for (let t = 0; t < V; t++) if (!ALLOWED_AFTER[last].includes(t)) adjusted[t] = -Infinity;
    return samplingDistribution(adjusted, sampling);
  }
  const obeys = (tokens: readonly number[]) => tokens.every((t, i) => ALLOWED_AFTER[i === 0 ? PROMPT[PROMPT.length - 1] : tokens[i - 1]].includes(t));
  const samplings: Array<[string, SamplingParams]> = [
    ["T = 1", DEFAULT_SAMPLING],
    ["T = 0.8, top_p 0.9, penalties", { ...DEFAULT_SAMPLING, temperature: 0.8, topP: 0.9, presencePenalty: 0.6, frequencyPenalty: 0.4 }],
  ];

  it.for(samplings)("%s, rejection sampling: the first three tokens follow the masked target (chi-square over 10^5 decodes)", async ([, sampling]) => {
    const policy = POLICIES[3];
    const costs = await cpuLikeCosts();
    const seen = exercised();
    const counts = [0, 1, 2].map(() => Array<number>(V).fill(0));
    const paths = new Map<string, number>();
    for (let seed = 0; seed < 100_000; seed++) {
      const tokens = await firstTokens(counting(policy.make(costs), seen, () => 1), policy.predictor, costs, constrained(sampling, seed), "rejection", 3, seen, () => 1);
      expect(obeys(tokens), `seed ${seed}: ${tokens}`).toBe(true);
      tokens.slice(0, 3).forEach((t, i) => counts[i][t]++);
      const key = tokens.slice(0, 2).join(",");
      paths.set(key, (paths.get(key) ?? 0) + 1);
    }
    expect(fits(counts[0], exactConstrained([], sampling))).toBeGreaterThan(1e-4);
    const second = new Float64Array(V);
    const third = new Float64Array(V);
    exactConstrained([], sampling).forEach((p, t) =>
      exactConstrained([t], sampling).forEach((q, u) => {
        second[u] += p * q;
        exactConstrained([t, u], sampling).forEach((r, w) => (third[w] += p * q * r));
      }),
    );
    expect(fits(counts[1], second)).toBeGreaterThan(1e-4);
    expect(fits(counts[2], third)).toBeGreaterThan(1e-4);
    // The mask changed something (the unconstrained second token differs), rounds rejected.
    expect(totalVariation(second, exactSecond(sampling))).toBeGreaterThan(0.05);
    expect(seen.rejections).toBeGreaterThan(100_000 / 20);
    expect(seen.lengths.size).toBeGreaterThan(1);
    // Forced tokens were proposed without the draft, and the draft drew on after them (it read
    // them in a batch with the candidate before): what it drew there is in the fit above.
    expect(seen.forcedAccepted).toBeGreaterThan(100_000 / 20);
    expect(seen.drawnAfterForced).toBeGreaterThan(100_000 / 20);
  });

  it.for(samplings)("%s, coupled: the text is constrained plain decoding's, token for token", async ([, sampling]) => {
    const policy = POLICIES[2];
    const costs = await cpuLikeCosts();
    const seen = exercised();
    let plainMasks = 0;
    let specMasks = 0;
    const before = { created: calls.created, released: calls.released };
    for (let seed = 0; seed < 2000; seed++) {
      const req = constrained(sampling, seed, { keyedNoise: true, choice: seed % 3 });
      const plain: number[] = [];
      const before = calls.masks;
      for await (const step of plainDecode(target, req)) plain.push(...step.tokens);
      plainMasks += calls.masks - before;
      expect(obeys(plain)).toBe(true);
      const specBefore = calls.masks;
      const spec = await firstTokens(counting(policy.make(costs), seen, () => 1), policy.predictor, costs, req, "coupled", 8, seen, () => 1);
      specMasks += calls.masks - specBefore;
      expect(spec.slice(0, 8), `seed ${seed}`).toEqual(plain);
    }
    expectExercised(policy, seen, 2000);
    expect(seen.forcedAccepted).toBeGreaterThan(2000 / 10);
    expect(seen.drawnAfterForced).toBeGreaterThan(2000 / 10);
    // Coupled drafts and verifications check ranked tokens: no mask without truncation.
    if (sampling.topP === 1) expect(specMasks).toBe(0);
    else expect(specMasks).toBeGreaterThan(0);
    // Every state a decoder made was released: only the 2000 requests' own are left.
    expect(calls.created - before.created - (calls.released - before.released)).toBe(2000);
    // Without truncation the draw's ranking covers all three tokens: plain decoding never masks;
    // with top-p the mask comes first, at every position.
    if (sampling.topP === 1) expect(plainMasks).toBe(0);
    else expect(plainMasks).toBeGreaterThanOrEqual(2000 * 8);
  });

  it("plain decoding's first two tokens follow the masked target (chi-square over 10^5 decodes, sequential draws)", async () => {
    const first = Array<number>(V).fill(0);
    const second = Array<number>(V).fill(0);
    for (let seed = 0; seed < 100_000; seed++) {
      const tokens: number[] = [];
      for await (const step of plainDecode(target, constrained(DEFAULT_SAMPLING, seed, { maxTokens: 2 }))) tokens.push(...step.tokens);
      first[tokens[0]]++;
      second[tokens[1]]++;
    }
    const exactSecondConstrained = new Float64Array(V);
    exactConstrained([], DEFAULT_SAMPLING).forEach((p, t) => exactConstrained([t], DEFAULT_SAMPLING).forEach((q, u) => (exactSecondConstrained[u] += p * q)));
    expect(fits(first, exactConstrained([], DEFAULT_SAMPLING))).toBeGreaterThan(1e-4);
    expect(fits(second, exactSecondConstrained)).toBeGreaterThan(1e-4);
  });

  it("a prediction the grammar forbids is cut where it strays; the text still follows the grammar", async () => {
    const seen = exercised();
    for (let seed = 0; seed < 500; seed++) {
      const req = constrained(DEFAULT_SAMPLING, seed, { keyedNoise: true, prediction: [0, 2, 1, 1, 0] });
      const plain: number[] = [];
      for await (const step of plainDecode(target, req)) plain.push(...step.tokens);
      const costs = await cpuLikeCosts();
      const setup = { target, draft: null, policy: new FixedLengthPolicy(MAX_CANDIDATES), predictor: null, maxCandidates: MAX_CANDIDATES, stats: new SpeculativeStats(), costs, verification: "coupled" as const };
      const spec = await decodeCounting(setup, req, 8, seen, () => 1);
      expect(spec.slice(0, 8)).toEqual(plain);
    }
    // Every run of four predicted tokens breaks the grammar somewhere: no round proposes four.
    expect(Math.max(...seen.lengths)).toBeLessThan(MAX_CANDIDATES);
    expect(seen.lengths.has(1)).toBe(true);
  });

  it("a lookup offer the grammar forbids outright leaves the round to the draft", async () => {
    // After 0 the grammar forbids 2, and the prompt's earlier 0 was followed by 2: lookup offers 2 first.
    const prompt = [0, 2, 1, 0];
    const lookup: LookupSettings = { enabled: true, minMatch: 1, maxMatch: 1, maxCandidates: MAX_CANDIDATES, priced: false };
    for (let seed = 0; seed < 200; seed++) {
      const req = request(DEFAULT_SAMPLING, seed, { prompt, keyedNoise: true, constraint: grammar(0) });
      const plain: number[] = [];
      for await (const step of plainDecode(target, { ...req, constraint: grammar(0) })) plain.push(...step.tokens);
      const setup: SpeculativeSetup = { target, draft, lookup, policy: new FixedLengthPolicy(2), predictor: null, maxCandidates: MAX_CANDIDATES, stats: new SpeculativeStats(), costs: await cpuLikeCosts(), verification: "coupled" };
      const generation = speculativeDecode(setup, req);
      const first = (await generation.next()).value!;
      expect(first.speculative!.source, `seed ${seed}`).toBeUndefined();
      expect(first.speculative!.drafted, `seed ${seed}: the draft proposed`).toBeGreaterThan(0);
      const tokens = [...first.tokens];
      for await (const step of generation) tokens.push(...step.tokens);
      expect(tokens, `seed ${seed}`).toEqual(plain);
    }
  });
});
