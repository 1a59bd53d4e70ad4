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

  it("keeps its table current from the rounds it sees", async () => {
    const costs = await calibrated(1, () => 10);
    for (let i = 0; i < 200; i++) costs.observeTargetPass(4, 30);
    expect(costs.targetPass(4)).toBeGreaterThan(29);
    expect(costs.describe().targetPassMs[4]).toBeGreaterThan(29);
  });
});
