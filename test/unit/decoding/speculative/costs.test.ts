// The cost model behind SpecDec++'s automatic threshold.
import { describe, expect, it } from "vitest";
import { AcceptanceCalibration, acceptanceCalibrations } from "../../../../decoding/speculative/calibration.js";
import { RoundCosts } from "../../../../decoding/speculative/costs.js";
import { type CandidateLengthPolicy, CostAwareSpecDecPolicy, SpecDecPlusPlusPolicy } from "../../../../decoding/speculative/policies.js";
import type { DraftFeatures, PreDrawFeatures } from "../../../../decoding/speculative/features.js";
import { type AcceptancePredictor, unweightedAcceptance } from "../../../../decoding/speculative/predictors.js";
import { TextAcceptance } from "../../../../decoding/speculative/text-proposals.js";

async function calibrated(draftMs: number, pass: (n: number) => number, max = 12): Promise<RoundCosts> {
  const costs = new RoundCosts();
  await costs.calibrate(async () => draftMs, async (n) => pass(n), max, 1);
  return costs;
}

const survivals = (p: number, k: number) => Array.from({ length: k }, (_, i) => p ** (i + 1));
const before = (position: number): PreDrawFeatures => ({ top1: 0.9, margin: 0.5, entropy: 0.5, position, recentAcceptance: 0.8 });
const f = (position: number): DraftFeatures => ({ ...before(position), chosen: 0.9, token: 1 });
/** A predictor with the same P̂ for every candidate, and that expectation before the draw. */
const constant = (p: number, rejectionWeight = 1): AcceptancePredictor => ({ name: "c", rejectionWeight, predict: () => p, expected: () => p, observe: () => {} });

describe("RoundCosts", () => {
  it("interpolates target passes between measured sizes and extends past the largest", async () => {
    const costs = await calibrated(1, (n) => 10 + 2 * n, 12);
    expect(costs.targetPass(7)).toBeCloseTo(24, 10); // 7 was not measured (sizes 6 and 8 were)
    expect(costs.targetPass(20)).toBeCloseTo(50, 10);
    expect(costs.targetPass(1)).toBe(12);
  });

  it("calibrates each pass size at its fastest repeat, so slow repeats do not make a size look costly", async () => {
    const costs = new RoundCosts();
    let call = 0;
    // Two passes in three are slowed 3x, as a busy neighbour would (a median would be slow).
    await costs.calibrate(async () => 0.5, async (n) => (++call % 3 === 0 ? 1 : 3) * (10 + n), 8);
    for (const n of [1, 2, 3, 4, 5, 6, 8]) expect(costs.targetPass(n)).toBe(10 + n);
  });

  it("on GPU-like costs (flat passes, cheap drafts) keeps drafting while acceptance is high", async () => {
    const costs = await calibrated(0.5, (n) => 20 + 0.1 * n);
    expect(costs.draftPosition(1, [], 0.9, 12)).toBe("draft");
    expect(costs.draftAnother(1, survivals(0.9, 1), 0.9, 12)).toBe("continue");
    expect(costs.draftAnother(6, survivals(0.9, 6), 0.9, 12)).toBe("continue");
    // A collapse in predicted acceptance ends the candidate.
    expect(costs.draftAnother(3, [0.9, 0.81, 0.04], 0.05, 12)).toBe("stop");
  });

  it("on CPU-like costs (passes grow with size) proposes nothing when no round beats the target alone", async () => {
    // T(1) = 5, then T grows ~2.4 ms per token after a jump: verification is never cheap.
    const costs = await calibrated(0.4, (n) => (n === 1 ? 5 : 9 + 2.4 * n));
    // Decided before anything is drawn: no candidate is ever withdrawn.
    expect(costs.draftPosition(1, [], 0.8, 12)).toBe("stop");
    // With a near-perfect draft, long rounds do pay even there.
    expect(costs.draftPosition(1, [], 0.999, 12)).toBe("draft");
    expect(costs.draftAnother(1, [0.999], 0.999, 12)).toBe("continue");
  });

  it("is undecided until calibrated, and the policy then falls back to the fixed threshold", () => {
    const costs = new RoundCosts();
    expect(costs.calibrated).toBe(false);
    const policy = new CostAwareSpecDecPolicy(constant(0.8), costs, 1, 8, { fallbackThreshold: 0.45 });
    policy.begin();
    expect([1, 2, 3].map((k) => policy.beforeDraw(k, before(k)))).toEqual(["draft", "draft", "draft"]);
    expect([1, 2, 3].map((k) => policy.afterDraw(k, f(k)))).toEqual(["continue", "continue", "stop"]);
  });

  it("before each draw, drafts a position only if its expected acceptance promises a better rate than ending the round", async () => {
    // CPU-like: T(2) = 2.5·T(1), then cheap per extra token.
    const costs = await calibrated(0.3, (n) => (n === 1 ? 4 : 8 + 1.2 * n));
    // One likely candidate: at most 2 tokens for 10.4 ms against 1 per 4 ms — not drafted.
    expect(costs.draftPosition(1, [], 0.5, 1)).toBe("stop");
    // Near-certain candidates: long rounds beat target-only.
    expect(costs.draftPosition(1, [], 0.99, 8)).toBe("draft");
    // A confident run, then a position the draft is unsure of: end the round before it.
    expect(costs.draftPosition(5, survivals(0.98, 4), 0.1, 8)).toBe("stop");
    expect(costs.draftPosition(5, survivals(0.98, 4), 0.95, 8)).toBe("draft");
    // GPU-like: verifying is nearly free, every position is worth drafting.
    const flat = await calibrated(0.5, (n) => 20 + 0.1 * n);
    expect(flat.draftPosition(6, survivals(0.9, 5), 0.9, 8)).toBe("draft");
  });

  it("counts the draft step that produced a position's distribution as paid when deciding to draft it", async () => {
    // Costly draft steps, cheap extra verified tokens: at k = 3 the step to q_3 is spent, so
    // ending costs 3 steps + T(3) for the tokens so far, and drafting adds only T(4) − T(3).
    const costs = await calibrated(2, (n) => 10 + 0.5 * n);
    // p̄ = 0.3 pays for the extra verified token (ending at 2 candidates as if the third step
    // were free, the rule would stop here and waste that step).
    expect(costs.draftPosition(3, survivals(0.9, 2), 0.3, 8)).toBe("draft");
    // p̄ = 0.05 does not.
    expect(costs.draftPosition(3, survivals(0.9, 2), 0.05, 8)).toBe("stop");
  });

  it("recalibrates P̂ per token from verification's labels, per sampling regime, and relaxes when it stops drafting", () => {
    const calibration = new AcceptanceCalibration();
    expect(calibration.apply(0.7)).toBeCloseTo(0.7, 9);
    // Greedy decoding: the candidates a predictor rates 0.9 always survive, those it rates 0.3
    // never do — Platt scaling steepens it (a scalar on expected accepted tokens could not).
    for (let i = 0; i < 20_000; i++) calibration.observe(i % 2 ? 0.9 : 0.3, i % 2 ? 1 : 0);
    expect(calibration.apply(0.9)).toBeGreaterThan(0.97);
    expect(calibration.apply(0.3)).toBeLessThan(0.03);
    // An over-confident predictor is scaled down.
    const overConfident = new AcceptanceCalibration();
    for (let i = 0; i < 20_000; i++) overConfident.observe(i % 2 ? 0.9 : 0.6, i % 2 ? 0.6 : 0.3);
    expect(overConfident.apply(0.9)).toBeCloseTo(0.6, 1);
    expect(overConfident.apply(0.6)).toBeCloseTo(0.3, 1);
    // Without labels it relaxes to the identity, so drafting is tried again.
    for (let i = 0; i < 30_000; i++) overConfident.relax();
    expect(overConfident.apply(0.9)).toBeCloseTo(0.9, 2);
  });

  it("the policy learns the calibration of its own regime from the rounds it proposes", async () => {
    const costs = await calibrated(0.3, (n) => (n === 1 ? 4 : 8 + 1.2 * n));
    const calibrations = acceptanceCalibrations();
    const greedy = new CostAwareSpecDecPolicy(constant(0.97), costs, 1, 8, { regime: "greedy", calibrations });
    greedy.begin();
    expect(greedy.beforeDraw(1, before(1))).toBe("draft");
    // Verification keeps none of them: the greedy calibration learns it, the others do not.
    for (let i = 0; i < 400; i++) {
      greedy.begin();
      greedy.afterDraw(1, f(1));
      greedy.afterDraw(2, f(2));
      greedy.end(2, 0, [0, 0]);
    }
    greedy.begin();
    expect(greedy.beforeDraw(1, before(1))).toBe("stop");
    expect(calibrations.greedy.apply(0.97)).toBeLessThan(0.3);
    expect(calibrations.sampled.apply(0.97)).toBeCloseTo(0.97, 9);
    expect(calibrations.coupled.apply(0.97)).toBeCloseTo(0.97, 9);
    for (const regime of ["sampled", "coupled"] as const) {
      const other = new CostAwareSpecDecPolicy(constant(0.97), costs, 1, 8, { regime, calibrations });
      other.begin();
      expect(other.beforeDraw(1, before(1))).toBe("draft");
    }
  });

  it("without an expectation under q, a position is judged by the last candidate's P̂ (the first by recent first candidates')", async () => {
    const costs = await calibrated(0.3, (n) => (n === 1 ? 4 : 8 + 1.2 * n));
    let predictions = [0.99, 0.99, 0.99, 0.99, 0.2];
    const scripted: AcceptancePredictor = { name: "scripted", rejectionWeight: 1, predict: (d) => predictions[d.position - 1], observe: () => {} };
    const calibrations = acceptanceCalibrations();
    const policy = new CostAwareSpecDecPolicy(scripted, costs, 1, 8, { calibrations });
    const drafted = () => {
      policy.begin();
      let k = 1;
      while (policy.beforeDraw(k, before(k)) === "draft") {
        if (policy.afterDraw(k, f(k)) === "stop") return k;
        k++;
      }
      return k - 1;
    };
    // The first position is drafted on the optimistic prior guess, the next ones on the candidate
    // before them; the collapse at 5 (known only after its draw) ends the round.
    expect(drafted()).toBe(5);
    // First candidates that keep failing teach the guess at position 1: drafting stops before any draw.
    predictions = [0.05, 0.05];
    const lengths = Array.from({ length: 40 }, drafted);
    expect(lengths[0]).toBe(1);
    expect(lengths.at(-1)).toBe(0);
    // It stops where drafting no longer pays, well above the 0.05 the candidates get: that bound is what it learned.
    expect(calibrations.sampled.firstPrediction).toBeLessThan(0.9);
  });

  it("undoes a predictor's rejection weight for the cost-aware rule, not for a fixed threshold", async () => {
    const costs = await calibrated(0.3, (n) => 6 + 0.4 * n);
    // A head fitted with w = 6 reports P̂ = a / (a + 6(1 − a)): 0.9 → 0.6.
    const a = 0.9;
    const weighted = a / (a + 6 * (1 - a));
    expect(unweightedAcceptance(weighted, 6)).toBeCloseTo(a, 12);
    expect(unweightedAcceptance(weighted, 1)).toBe(weighted);
    const lengths = (predictor: AcceptancePredictor, threshold: RoundCosts | number) => {
      const policy: CandidateLengthPolicy = typeof threshold === "number" ? new SpecDecPlusPlusPolicy(predictor, threshold, 1, 12) : new CostAwareSpecDecPolicy(predictor, threshold, 1, 12);
      policy.begin();
      let k = 1;
      while ((policy.beforeDraw?.(k, before(k)) ?? "draft") === "draft" && policy.afterDraw(k, f(k)) === "continue") k++;
      return k;
    };
    const pessimistic = constant(weighted, 6);
    const calibratedPredictor = constant(a);
    const plainRule = lengths(calibratedPredictor, costs);
    expect(plainRule).toBeGreaterThan(3);
    expect(lengths(pessimistic, costs)).toBe(plainRule);
    // Read as it is, the pessimistic P̂ would end the round far earlier.
    expect(lengths({ ...pessimistic, rejectionWeight: 1 }, costs)).toBeLessThan(plainRule);
    // The authors' h applies to their P̂ as it is: 1 − 0.6^k > 0.7 at k = 3.
    expect(lengths(pessimistic, 0.7)).toBe(3);
  });

  it("where drafting does not pay, the policy skips it for 1, 2, 4, … rounds (at most 16); where it pays, an empty round does not stop it", async () => {
    // CPU-like costs, and rounds that propose nothing: drafting never pays.
    const costs = await calibrated(0.3, (n) => (n === 1 ? 4 : 8 + 1.2 * n));
    const predictor = constant(0.5);
    const rounds = (policy: CostAwareSpecDecPolicy, costsOf: RoundCosts, from: number, to: number, proposal: number, accepted: number, drafted: number[]) => {
      for (let i = from; i < to; i++) {
        const drafting = !policy.skipRound();
        if (drafting) drafted.push(i);
        policy.begin();
        // The decoder tells the costs what a drafted round yielded, then the policy how it went.
        if (drafting) costsOf.observeDraftedRound("sampled", proposal, proposal, accepted + 1);
        policy.end(drafting ? proposal : 0, drafting ? accepted : 0, Array<number>(drafting ? proposal : 0).fill(0.5));
      }
    };
    const drafted: number[] = [];
    rounds(new CostAwareSpecDecPolicy(predictor, costs, 1, 8), costs, 0, 80, 0, 0, drafted);
    expect(drafted).toEqual([0, 2, 5, 10, 19, 36, 53, 70]);
    expect(costs.draftingPays("sampled")).toBe(false);
    // Flat passes, and rounds that keep 4 of 4 candidates: drafting pays; an empty round now and
    // then (an unpromising context) does not make the policy skip the next.
    const flat = await calibrated(0.3, (n) => 4 + 0.1 * n);
    const paying = new CostAwareSpecDecPolicy(predictor, flat, 1, 8);
    const draftedThere: number[] = [];
    rounds(paying, flat, 0, 20, 4, 4, draftedThere);
    rounds(paying, flat, 20, 21, 0, 0, draftedThere);
    rounds(paying, flat, 21, 30, 4, 4, draftedThere);
    expect(draftedThere).toHaveLength(30);
    expect(flat.draftingPays("sampled")).toBe(true);
    // The yield is kept per regime.
    expect(flat.draftingPays("greedy")).toBe(true);
    // A fixed threshold always drafts: it has no round to skip.
    const fixed: CandidateLengthPolicy = new SpecDecPlusPlusPolicy(predictor, 0.9, 1, 8);
    expect(fixed.skipRound).toBeUndefined();
  });

  it("keeps its table current from the rounds it sees", async () => {
    const costs = await calibrated(1, () => 10);
    for (let i = 0; i < 200; i++) costs.observeTargetPass(4, 30);
    expect(costs.targetPass(4)).toBeGreaterThan(29);
    expect(costs.describe().targetPassMs[4]).toBeGreaterThan(29);
    // Outliers (a GC pause) move it only as far as twice the estimate would.
    costs.observeTargetPass(1, 1000);
    expect(costs.targetPass(1)).toBeCloseTo(10 + 0.05 * 10, 10);
  });
});

describe("text proposals (a prediction, prompt lookup): priced whole, from how they fared", () => {
  it("proposes the prefix with the best expected rate, none where the target alone is faster, all before T(1) is known", async () => {
    // Compute-bound verification: every candidate costs a fifth of a target step.
    const costs = new RoundCosts();
    await costs.calibrate(null, async (n) => 4 + 0.8 * (n - 1), 12, 1);
    expect(costs.calibrated).toBe(false); // no draft step: the drafting rule stays off, pricing works
    // Rate of k candidates at chance 0.7 each: (1 + Σ 0.7^i) / (4 + 0.8k).
    const rate = (k: number) => (1 + survivals(0.7, k).reduce((a, b) => a + b, 0)) / (4 + 0.8 * k);
    const best = Array.from({ length: 8 }, (_, k) => k).reduce((a, k) => (rate(k) > rate(a) ? k : a), 0);
    expect(best).toBeGreaterThan(0);
    expect(best).toBeLessThan(7);
    expect(costs.textRound(Array(7).fill(0.7))).toEqual({ length: best, rate: expect.closeTo(rate(best), 10) });
    // A confident run, then a guess: the guess is not worth its share of the pass.
    expect(costs.textRound([0.99, 0.99, 0.05, 0.99]).length).toBe(2);
    expect(costs.textRound([0.1, 0.1]).length).toBe(0);
    expect(new RoundCosts().textRound([0.1, 0.1])).toEqual({ length: 2, rate: Infinity });
  });

  it("the draft's yield is what lookup must beat; after 64 text rounds in a row the draft is due a round", async () => {
    const costs = await calibrated(1, (n) => 10 + n);
    expect(costs.draftedRate("greedy")).toBeNull();
    costs.observeDraftedRound("greedy", 3, 3, 3);
    expect(costs.draftedRate("greedy")).toBeCloseTo(3 / (3 + 14), 10);
    for (let i = 0; i < 63; i++) costs.observeTextRound("greedy");
    expect(costs.draftDue("greedy")).toBe(false);
    costs.observeTextRound("greedy");
    expect(costs.draftDue("greedy")).toBe(true);
    expect(costs.draftDue("sampled")).toBe(false);
    expect(costs.draftedRate("sampled")).toBeNull();
    costs.observeDraftedRound("greedy", 3, 3, 3);
    expect(costs.draftDue("greedy")).toBe(false);
  });

  it("learns acceptance per match length, source and regime, starting from the source's prior", () => {
    const record = new TextAcceptance();
    expect(record.chance("greedy", "lookup", 2)).toBeCloseTo(0.5, 10);
    expect(record.chance("greedy", "prediction", 2)).toBeCloseTo(0.8, 10);
    // Short matches were wrong, long ones right: candidate i of a match of n counts as a match of n + i.
    for (let i = 0; i < 100; i++) {
      record.observe("greedy", "lookup", 2, [0, 0]);
      record.observe("greedy", "lookup", 8, [1, 1, 1, 1]);
    }
    expect(record.chance("greedy", "lookup", 2)).toBeLessThan(0.05);
    expect(record.chance("greedy", "lookup", 3)).toBeLessThan(0.05);
    expect(record.chance("greedy", "lookup", 10)).toBeGreaterThan(0.95);
    expect(record.chances("greedy", "lookup", { tokens: [5, 6, 7], match: 1 })).toHaveLength(3);
    // A length never seen starts from the source's overall acceptance (2/3 of these labels).
    expect(record.chance("greedy", "lookup", 20)).toBeCloseTo(2 / 3, 1);
    // Other sources and regimes keep their priors.
    expect(record.chance("sampled", "lookup", 2)).toBeCloseTo(0.5, 10);
    expect(record.chance("greedy", "prediction", 2)).toBeCloseTo(0.8, 10);
  });
});
