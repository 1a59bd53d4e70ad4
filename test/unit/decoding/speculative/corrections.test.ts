import { describe, expect, it } from "vitest";
import { AcceptanceCorrections } from "../../../../decoding/speculative/corrections.js";
import type { DraftFeatures } from "../../../../decoding/speculative/features.js";
import { preDrawFeatures } from "../../../../decoding/speculative/features.js";
import { OnlineLogisticPredictor } from "../../../../decoding/speculative/predictors.js";
import { createRng } from "../../../../decoding/rng.js";

/** Identical draft statistics: only the context and the candidate tell the positions apart. */
const at = (context: number, token: number): DraftFeatures => ({ chosen: 0.5, top1: 0.5, margin: 0.1, entropy: 1, position: 1, recentAcceptance: 0.7, context, token });

describe("AcceptanceCorrections", () => {
  it("learns an offset per context, per candidate and per pair, and keeps them apart", () => {
    const c = new AcceptanceCorrections();
    // After context 7, token 3 is always accepted and token 4 never; elsewhere both are even.
    for (let i = 0; i < 200; i++) {
      c.observe(7, 3, -0.5);
      c.observe(7, 4, 0.5);
    }
    expect(c.offset(7, 3)).toBeGreaterThan(5);
    expect(c.offset(7, 4)).toBeLessThan(-5);
    // The context's own offset is the sum of both, which cancel; another context learned nothing.
    expect(Math.abs(c.contextOffset(7))).toBeLessThan(1e-6);
    expect(c.offset(8, 5)).toBe(0);
    // Offsets stay bounded, whatever the stream.
    for (let i = 0; i < 1000; i++) c.observe(9, 9, -1);
    expect(c.offset(9, 9)).toBeLessThanOrEqual(24);
  });

  it("round-trips through its serialized form and refuses a table of the wrong size", () => {
    const c = new AcceptanceCorrections();
    c.observe(1, 2, 0.3);
    c.observe(undefined, 5, -0.7);
    const back = AcceptanceCorrections.deserialize(c.serialize())!;
    expect(back.offset(1, 2)).toBe(c.offset(1, 2));
    expect(back.offset(undefined, 5)).toBe(c.offset(undefined, 5));
    expect(AcceptanceCorrections.deserialize(Buffer.from([1, 2, 3]).toString("base64"))).toBeNull();
  });
});

describe("OnlineLogisticPredictor with corrections", () => {
  it("tells apart candidates the draft's statistics cannot, and its expectation follows", () => {
    const predictor = new OnlineLogisticPredictor();
    const rng = createRng(5);
    // Truth: after context 11, token 1 survives 95 % of the time, token 2 10 %.
    for (let i = 0; i < 3000; i++) {
      const token = rng.next() < 0.5 ? 1 : 2;
      predictor.observe(at(11, token), token === 1 ? 0.95 : 0.1);
    }
    expect(predictor.predict(at(11, 1))).toBeGreaterThan(0.85);
    expect(predictor.predict(at(11, 2))).toBeLessThan(0.2);
    // Before the draw: E_q[P̂] over q = (0.8 on token 1, 0.2 on token 2) weighs both.
    const q = Float64Array.from([0, 0.8, 0.2]);
    const before = { ...preDrawFeatures(q, Float32Array.from(q, Math.log), 1, 1, 0.7), context: 11 };
    const expected = predictor.expected!(before);
    const exact = 0.8 * predictor.predict({ ...before, chosen: 0.8, token: 1 }) + 0.2 * predictor.predict({ ...before, chosen: 0.2, token: 2 });
    expect(expected).toBeCloseTo(exact, 12);
  });
});
