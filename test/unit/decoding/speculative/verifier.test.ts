// The verifier on peaked synthetic distributions (table-driven), and its losslessness.
import { describe, expect, it } from "vitest";
import { drawResidual, verify } from "../../../../decoding/speculative/verifier.js";
import { createRng } from "../../../../decoding/rng.js";
import { goodnessOfFit } from "../../../helpers/goodness.js";

const dist = (...p: number[]) => Float64Array.from(p);
const oneHot = (n: number, i: number) => Float64Array.from({ length: n }, (_, j) => (j === i ? 1 : 0));

describe("verify", () => {
  it.each([
    {
      name: "identical distributions accept everything and add a bonus",
      drafted: [0, 1],
      q: [dist(0.7, 0.3, 0), dist(0.1, 0.8, 0.1)],
      p: [dist(0.7, 0.3, 0), dist(0.1, 0.8, 0.1), oneHot(3, 2)],
      accepted: 2,
      next: 2,
      kind: "bonus",
    },
    {
      name: "a token the target rules out is rejected and replaced from the residual",
      drafted: [1],
      q: [oneHot(3, 1)],
      p: [dist(0, 0, 1), oneHot(3, 0)],
      accepted: 0,
      next: 2,
      kind: "recovered",
    },
    {
      name: "greedy: argmax agreement accepts, disagreement recovers the target's argmax",
      drafted: [2, 0, 1],
      q: [oneHot(3, 2), oneHot(3, 0), oneHot(3, 1)],
      p: [oneHot(3, 2), oneHot(3, 1), oneHot(3, 1), oneHot(3, 0)],
      accepted: 1,
      next: 1,
      kind: "recovered",
    },
    {
      name: "no candidates: one token from the target",
      drafted: [],
      q: [],
      p: [oneHot(4, 3)],
      accepted: 0,
      next: 3,
      kind: "bonus",
    },
  ])("$name", ({ drafted, q, p, accepted, next, kind }) => {
    const v = verify(drafted, q, p, createRng(5));
    expect(v).toMatchObject({ accepted, next, nextKind: kind });
  });

  it("reports min(1, p/q) as the soft acceptance label of every candidate", () => {
    const v = verify([0, 1], [dist(0.5, 0.5), dist(0.2, 0.8)], [dist(0.25, 0.75), dist(0.6, 0.4), dist(1, 0)], createRng(1));
    expect(v.acceptanceProbabilities[0]).toBeCloseTo(0.5, 12);
    expect(v.acceptanceProbabilities[1]).toBeCloseTo(0.5, 12);
  });

  it("rejects a length mismatch", () => {
    expect(() => verify([0], [dist(1)], [dist(1)], createRng(1))).toThrow(/need/);
  });

  it("is lossless: the first emitted token is distributed as p, whatever q is", () => {
    const p = dist(0.05, 0.4, 0.25, 0.2, 0.1, 0);
    const q = dist(0.3, 0.1, 0.1, 0.2, 0.05, 0.25);
    const rng = createRng(123);
    const counts = new Map<number, number>();
    const N = 20_000;
    let accepted = 0;
    for (let i = 0; i < N; i++) {
      // Draw the candidate from q, as the draft does.
      const u = rng.next();
      let y = 0;
      for (let c = q[0]; u >= c && y < q.length - 1; c += q[++y]);
      const v = verify([y], [q], [p, p], rng);
      const first = v.accepted === 1 ? y : v.next;
      counts.set(first, (counts.get(first) ?? 0) + 1);
      accepted += v.accepted;
    }
    const fit = goodnessOfFit(counts, p);
    expect(fit.outsideSupport).toBe(0);
    expect(fit.pValue).toBeGreaterThan(1e-4);
    // And the acceptance rate is Σ min(p, q) (binomial, 5 standard deviations).
    const alpha = p.reduce((acc, pi, i) => acc + Math.min(pi, q[i]), 0);
    expect(Math.abs(accepted / N - alpha)).toBeLessThan(5 * Math.sqrt((alpha * (1 - alpha)) / N));
  });
});

describe("drawResidual", () => {
  it("draws only where p exceeds q, proportionally to the excess", () => {
    const p = dist(0.5, 0.3, 0.2);
    const q = dist(0.2, 0.3, 0.5);
    const rng = createRng(9);
    const seen = new Set<number>();
    for (let i = 0; i < 200; i++) seen.add(drawResidual(p, q, rng));
    expect([...seen]).toEqual([0]);
  });
});
