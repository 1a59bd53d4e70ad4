// Candidate-length policies and the online acceptance predictor.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { draftFeatures, type DraftFeatures, preDrawFeatures } from "../../../../decoding/speculative/features.js";
import { ConfidencePolicy, FixedLengthPolicy, SpecDecPlusPlusPolicy } from "../../../../decoding/speculative/policies.js";
import { type AcceptancePredictor, DraftConfidencePredictor, OnlineLogisticPredictor } from "../../../../decoding/speculative/predictors.js";
import { createRng } from "../../../../decoding/rng.js";

const features = (chosen: number, position = 1): DraftFeatures => ({ chosen, top1: chosen, margin: chosen / 2, entropy: 1, position, recentAcceptance: 0.7, token: 1 });

describe("draftFeatures", () => {
  it("computes the chosen probability, top-1, margin and entropy in one pass", () => {
    // logits (up to a constant) of [0.5, 0.25, 0.25, 0] at temperature 2: log p × 2.
    const logits = Float32Array.from([2 * Math.log(0.5), 2 * Math.log(0.25), 2 * Math.log(0.25), -Infinity]);
    const f = draftFeatures(Float64Array.from([0.5, 0.25, 0.25, 0]), logits, 2, 1, 3, 0.6);
    expect(f).toMatchObject({ chosen: 0.25, top1: 0.5, margin: 0.25, position: 3, recentAcceptance: 0.6 });
    // q's most likely tokens, most likely first (ties in token order), zeros left out.
    expect(f.top).toEqual([
      { token: 0, p: 0.5 },
      { token: 1, p: 0.25 },
      { token: 2, p: 0.25 },
    ]);
    expect(f.entropy).toBeCloseTo(-(0.5 * Math.log(0.5) + 2 * 0.25 * Math.log(0.25)), 6);
  });

  it("measures the entropy of a truncated distribution on the tokens it keeps", () => {
    // softmax of [1, 0, -1] truncated to the top two and renormalised.
    const e = [Math.E, 1];
    const q = Float64Array.from([e[0] / (e[0] + e[1]), e[1] / (e[0] + e[1]), 0]);
    const f = draftFeatures(q, Float32Array.from([1, 0, -1]), 1, 0, 1, 0.5);
    expect(f.entropy).toBeCloseTo(-(q[0] * Math.log(q[0]) + q[1] * Math.log(q[1])), 6);
  });
});

describe("policies", () => {
  it("fixed K proposes exactly K", () => {
    const policy = new FixedLengthPolicy(3);
    policy.begin();
    expect([1, 2, 3].map((k) => policy.afterDraw(k))).toEqual(["continue", "continue", "stop"]);
  });

  it("the confidence rule does not draft a position whose top draft token is unlikely, and caps the length", () => {
    const policy = new ConfidencePolicy(0.6, 2);
    // Decided before the draw, from q alone.
    expect(policy.beforeDraw(1, features(0.9))).toBe("draft");
    expect(policy.beforeDraw(1, features(0.5))).toBe("stop");
    expect(policy.afterDraw(1)).toBe("continue");
    expect(policy.afterDraw(2)).toBe("stop");
  });

  it("SpecDec++ stops once 1 − ΠP̂ exceeds h, never before the minimum, always at the maximum", () => {
    const constant = (p: number): AcceptancePredictor => ({ name: "c", rejectionWeight: 1, predict: () => p, observe: () => {} });
    // P̂ = 0.8: survival 0.8, 0.64, 0.512 → 1 − 0.512 > 0.45 at k = 3.
    const policy = new SpecDecPlusPlusPolicy(constant(0.8), 0.45, 2, 10);
    policy.begin();
    expect([1, 2, 3].map((k) => policy.afterDraw(k, features(0.5)))).toEqual(["continue", "continue", "stop"]);
    // A pessimistic predictor still drafts the minimum.
    const low = new SpecDecPlusPlusPolicy(constant(0.1), 0.5, 2, 10);
    low.begin();
    expect([1, 2].map((k) => low.afterDraw(k, features(0.5)))).toEqual(["continue", "stop"]);
    // An optimistic one stops at the maximum; begin() resets the product.
    const high = new SpecDecPlusPlusPolicy(constant(0.999), 0.9, 1, 4);
    high.begin();
    expect([1, 2, 3, 4].map((k) => high.afterDraw(k, features(0.5)))).toEqual(["continue", "continue", "continue", "stop"]);
    high.begin();
    expect(high.afterDraw(1, features(0.5))).toBe("continue");
  });
});

describe("OnlineLogisticPredictor", () => {
  it("starts at the draft's confidence and learns acceptance that the confidence misjudges", () => {
    const predictor = new OnlineLogisticPredictor({ learningRate: 0.1 });
    expect(predictor.predict(features(0.3))).toBeCloseTo(0.3, 6);
    // Synthetic truth: late positions are rejected more than the draft's confidence says.
    const truth = (f: DraftFeatures) => Math.min(1, f.chosen * (f.position <= 2 ? 1.3 : 0.4));
    const rng = createRng(3);
    const error = () => {
      let e = 0;
      for (let i = 0; i < 500; i++) {
        const f = features(0.2 + 0.7 * rng.next(), 1 + Math.floor(rng.next() * 6));
        e += (predictor.predict(f) - truth(f)) ** 2;
      }
      return e / 500;
    };
    const before = error();
    for (let i = 0; i < 20_000; i++) {
      const f = features(0.2 + 0.7 * rng.next(), 1 + Math.floor(rng.next() * 6));
      predictor.observe(f, truth(f));
    }
    expect(error()).toBeLessThan(before / 3);
    expect(predictor.observations).toBe(20_000);
  });

  it("persists its weights and reloads them", () => {
    const dir = mkdtempSync(join(tmpdir(), "predictor-"));
    try {
      const file = join(dir, "pair.json");
      const a = new OnlineLogisticPredictor({ file });
      for (let i = 0; i < 100; i++) a.observe(features(0.9, 4), 0);
      a.save();
      const b = new OnlineLogisticPredictor({ file });
      expect(b.predict(features(0.9, 4))).toBeCloseTo(a.predict(features(0.9, 4)), 12);
      expect(b.predict(features(0.9, 4))).toBeLessThan(0.9);
      expect(b.observations).toBe(100);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("the draft-confidence predictor is q(y); its expectation before the draw is Σ q(y)²", () => {
    expect(new DraftConfidencePredictor().predict(features(0.42))).toBe(0.42);
    const q = Float64Array.from([0.5, 0.3, 0.2]);
    const before = preDrawFeatures(q, Float32Array.from(q, Math.log), 1, 1, 0.7);
    expect(new DraftConfidencePredictor().expected(before)).toBeCloseTo(0.25 + 0.09 + 0.04, 12);
  });

  it("the online predictor's expectation before the draw is E_q[P̂(y)] over q's tokens", () => {
    const predictor = new OnlineLogisticPredictor();
    for (let i = 0; i < 200; i++) predictor.observe(features(0.3 + (i % 5) * 0.1, 2), i % 3 === 0 ? 0 : 1);
    const q = Float64Array.from([0.45, 0.25, 0.15, 0.1, 0.05]);
    const before = preDrawFeatures(q, Float32Array.from(q, Math.log), 1, 2, 0.7);
    const exact = [...q].reduce((sum, p, y) => sum + p * predictor.predict({ ...before, chosen: p, token: y }), 0);
    expect(predictor.expected!(before)).toBeCloseTo(exact, 12);
    // Greedy decoding draws the most likely token: the expectation is P̂ there, nothing else.
    const greedy = { ...before, greedy: true };
    expect(predictor.expected!(greedy)).toBe(predictor.predict({ ...before, chosen: 0.45, token: 0 }));
    expect(new DraftConfidencePredictor().expected(greedy)).toBe(0.45);
  });
});
