// The cost model behind SpecDec++'s automatic threshold.
import { describe, expect, it } from "vitest";
import { RoundCosts } from "../../decoding/speculative/costs.js";
import { SpecDecPlusPlusPolicy } from "../../decoding/speculative/policies.js";
import type { DraftFeatures } from "../../decoding/speculative/features.js";

async function calibrated(draftMs: number, pass: (n: number) => number, max = 12): Promise<RoundCosts> {
  const costs = new RoundCosts();
  await costs.calibrate(async () => draftMs, async (n) => pass(n), max, 1);
  return costs;
}

const survivals = (p: number, k: number) => Array.from({ length: k }, (_, i) => p ** (i + 1));

describe("RoundCosts", () => {
  it("interpolates target passes between measured sizes and extends past the largest", async () => {
    const costs = await calibrated(1, (n) => 10 + 2 * n, 12);
    expect(costs.targetPass(7)).toBeCloseTo(24, 10); // 7 was not measured (sizes 6 and 8 were)
    expect(costs.targetPass(20)).toBeCloseTo(50, 10);
    expect(costs.targetPass(1)).toBe(12);
  });

  it("on GPU-like costs (flat passes, cheap drafts) keeps drafting while acceptance is high", async () => {
    const costs = await calibrated(0.5, (n) => 20 + 0.1 * n);
    expect(costs.decide(1, survivals(0.9, 1), 0.9, 12)).toBe("continue");
    expect(costs.decide(6, survivals(0.9, 6), 0.9, 12)).toBe("continue");
    // A collapse in predicted acceptance ends the candidate.
    expect(costs.decide(3, [0.9, 0.81, 0.04], 0.05, 12)).toBe("stop");
  });

  it("on CPU-like costs (passes grow with size) proposes nothing when no round beats the target alone", async () => {
    // T(1) = 5, then T grows ~2.4 ms per token after a jump: verification is never cheap.
    const costs = await calibrated(0.4, (n) => (n === 1 ? 5 : 9 + 2.4 * n));
    expect(costs.decide(1, [0.8], 0.8, 12)).toBe("drop-and-stop");
    // With a near-perfect draft, long rounds do pay even there.
    expect(costs.decide(1, [0.999], 0.999, 12)).toBe("continue");
  });

  it("is undecided until calibrated, and the policy then falls back to the fixed threshold", () => {
    const costs = new RoundCosts();
    expect(costs.decide(1, [0.9], 0.9, 8)).toBeNull();
    const policy = new SpecDecPlusPlusPolicy({ name: "c", predict: () => 0.8, observe: () => {} }, costs, 1, 8, 0.45);
    const f = { chosen: 0.8, top1: 0.8, margin: 0.5, entropy: 0.5, position: 1, recentAcceptance: 0.8 } satisfies DraftFeatures;
    policy.begin();
    expect([1, 2, 3].map((k) => policy.decide(k, f))).toEqual(["continue", "continue", "stop"]);
  });

  it("proposes the drafted prefix with the best expected rate once drafting is paid for", async () => {
    // CPU-like: T(2) = 2.5·T(1), then cheap per extra token.
    const costs = await calibrated(0.3, (n) => (n === 1 ? 4 : 8 + 1.2 * n));
    // One likely candidate: at most 2 tokens for 10.4 ms against 1 per 4 ms — withdrawn.
    expect(costs.bestPrefix([0.9])).toBe(0);
    // Four near-certain ones: 4.9 tokens for 14 ms beats target-only.
    expect(costs.bestPrefix(survivals(0.99, 4))).toBe(4);
    // A confident run, then a collapse: keep the run, drop the tail.
    expect(costs.bestPrefix([0.99, 0.98, 0.97, 0.96, 0.1, 0.01])).toBe(4);
    // GPU-like: verifying is nearly free, every candidate is worth proposing.
    const flat = await calibrated(0.5, (n) => 20 + 0.1 * n);
    expect(flat.bestPrefix(survivals(0.5, 5))).toBe(5);
  });

  it("scales predictions by how verification has gone, and drifts back when it stops drafting", async () => {
    const costs = await calibrated(0.3, (n) => (n === 1 ? 4 : 8 + 1.2 * n));
    const confident = survivals(0.97, 1);
    expect(costs.calibration).toBe(1);
    expect(costs.decide(1, confident, 0.97, 12)).toBe("continue");
    // The predictor promised 3 accepted candidates per round; verification accepted 1.5.
    for (let i = 0; i < 400; i++) costs.observeRound(3, 1.5);
    expect(costs.calibration).toBeCloseTo(0.5, 2);
    expect(costs.decide(1, confident, 0.97, 12)).toBe("drop-and-stop");
    // Evidence outweighs the drift where nine rounds in ten draft nothing.
    for (let i = 0; i < 4000; i++) (i % 10 === 0 ? costs.observeRound(3, 1.5) : costs.observeUndraftedRound());
    expect(costs.calibration).toBeLessThan(0.6);
    // Without drafted rounds the evidence fades, and drafting is tried again.
    for (let i = 0; i < 30_000; i++) costs.observeUndraftedRound();
    expect(costs.calibration).toBeGreaterThan(0.99);
    expect(costs.decide(1, confident, 0.97, 12)).toBe("continue");
  });

  it("the SpecDec++ policy proposes through the costs and reports each round to them", async () => {
    const costs = await calibrated(0.3, (n) => (n === 1 ? 4 : 8 + 1.2 * n));
    const predictions = [0.99, 0.99, 0.99, 0.99, 0.2];
    const policy = new SpecDecPlusPlusPolicy({ name: "scripted", predict: (f) => predictions[f.position - 1], observe: () => {} }, costs, 1, 8);
    policy.begin();
    const f = (position: number) => ({ chosen: 0.9, top1: 0.9, margin: 0.5, entropy: 0.5, position, recentAcceptance: 0.8 }) satisfies DraftFeatures;
    for (let k = 1; k <= 5; k++) policy.decide(k, f(k));
    expect(policy.propose(5)).toBe(4);
    for (let i = 0; i < 400; i++) policy.end(4, 0);
    expect(costs.calibration).toBeLessThan(0.2);
    // A fixed threshold proposes whatever it drafted and keeps no calibration.
    const fixed = new SpecDecPlusPlusPolicy({ name: "c", predict: () => 0.5, observe: () => {} }, 0.9, 1, 8);
    fixed.begin();
    fixed.decide(1, f(1));
    expect(fixed.propose(1)).toBe(1);
  });

  it("where rounds keep proposing nothing, the policy skips drafting for 1, 2, 4, … rounds (at most 16)", async () => {
    const costs = await calibrated(0.3, (n) => (n === 1 ? 4 : 8 + 1.2 * n));
    const policy = new SpecDecPlusPlusPolicy({ name: "c", predict: () => 0.5, observe: () => {} }, costs, 1, 8);
    const drafted: number[] = [];
    const round = (i: number, proposal: number) => {
      if (!policy.skipRound()) drafted.push(i);
      policy.end(drafted.at(-1) === i ? proposal : 0, 0);
    };
    for (let i = 0; i < 80; i++) round(i, 0);
    expect(drafted).toEqual([0, 2, 5, 10, 19, 36, 53, 70]);
    // The next drafted round (87, after 16 skipped) proposes something: the back-off resets.
    drafted.length = 0;
    for (let i = 80; i < 88; i++) round(i, 3);
    for (let i = 88; i < 96; i++) round(i, 0);
    expect(drafted).toEqual([87, 88, 90, 93]);
    // A fixed threshold always drafts.
    const fixed = new SpecDecPlusPlusPolicy({ name: "c", predict: () => 0.5, observe: () => {} }, 0.9, 1, 8);
    fixed.end(0, 0);
    expect(fixed.skipRound()).toBe(false);
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
