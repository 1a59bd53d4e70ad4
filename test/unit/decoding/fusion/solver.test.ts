// The fusion solver against a brute-force evaluation of the authors' objective.
import { describe, expect, it } from "vitest";
import { AUTHORS_GRID, fuseLogits, klBothWays, searchExpert, solveFusion, supportSet } from "../../../../decoding/fusion/solver.js";
import { createRng } from "../../../../decoding/rng.js";

function softmax(logits: ArrayLike<number>): number[] {
  const max = Math.max(...Array.from(logits));
  const e = Array.from(logits, (x) => Math.exp(x - max));
  const z = e.reduce((a, b) => a + b, 0);
  return e.map((x) => x / z);
}
const kl = (p: number[], q: number[]) => p.reduce((acc, pi, i) => (pi > 0 ? acc + pi * Math.log(pi / q[i]) : acc), 0);

/** The objective computed directly from its definition. */
function bruteObjective(strong: Float32Array, base: Float32Array, expert: Float32Array, alpha: number): number {
  const fused = softmax(Array.from(strong, (x, i) => x + alpha * (expert[i] - base[i])));
  const p = softmax(strong);
  const q = softmax(base);
  const qt = softmax(expert);
  return (kl(fused, p) - kl(qt, q)) ** 2 + (kl(p, fused) - kl(q, qt)) ** 2;
}

function randomLogits(rng: ReturnType<typeof createRng>, n: number, spread: number): Float32Array {
  return Float32Array.from({ length: n }, () => spread * (rng.next() * 2 - 1) ** 3 * 4);
}

describe("fusion solver", () => {
  it("computes the objective at every grid point as its definition does", () => {
    const rng = createRng(11);
    for (let trial = 0; trial < 20; trial++) {
      const n = 5 + rng.int(60);
      const strong = randomLogits(rng, n, 2);
      const base = randomLogits(rng, n, 1);
      const expert = Float32Array.from(base, (x) => x + (rng.next() - 0.5) * 3);
      const { alphas, objectives } = searchExpert(strong, base, expert);
      expect(alphas).toHaveLength(21);
      alphas.forEach((a, k) => expect(objectives[k]).toBeCloseTo(bruteObjective(strong, base, expert, a), 7));
    }
  });

  it("returns the grid minimiser over all experts (brute force over random distributions)", () => {
    const rng = createRng(5);
    for (let trial = 0; trial < 30; trial++) {
      const n = 10 + rng.int(40);
      const strong = randomLogits(rng, n, 2);
      const base = randomLogits(rng, n, 1.5);
      const experts = [0, 1, 2].map(() => Float32Array.from(base, (x) => x + (rng.next() - 0.5) * 4 * rng.next()));
      const choice = solveFusion(strong, base, experts);
      let best = { expert: -1, alpha: 0, objective: Infinity };
      experts.forEach((e, t) => {
        for (let k = 0; k <= 20; k++) {
          const objective = bruteObjective(strong, base, e, k * 0.1);
          if (objective < best.objective) best = { expert: t, alpha: k * 0.1, objective };
        }
      });
      expect(choice.objective).toBeCloseTo(best.objective, 8);
      expect(choice.alpha).toBeCloseTo(best.alpha, 10);
      if (best.alpha > 0) expect(choice.expert).toBe(best.expert);
      else expect(choice.expert).toBe(-1);
    }
  });

  it("lets only experts that move compete: a silent expert (objective 0 everywhere) is not chosen", () => {
    const rng = createRng(4);
    const strong = randomLogits(rng, 40, 2);
    const base = randomLogits(rng, 40, 1);
    const moving = Float32Array.from(base, (x) => x + (rng.next() - 0.5) * 2);
    const silent = Float32Array.from(base);
    const choice = solveFusion(strong, base, [silent, moving]);
    expect(choice.expert).toBe(1);
    expect(choice.alpha).toBeGreaterThan(0);
    expect(solveFusion(strong, base, [silent])).toEqual({ expert: -1, alpha: 0, objective: 0 });
  });

  it("skips only tokens that cannot matter: a vocabulary of impossible tokens changes nothing", () => {
    const rng = createRng(2);
    const strong = randomLogits(rng, 30, 2);
    const base = randomLogits(rng, 30, 1);
    const expert = Float32Array.from(base, (x) => x + rng.next() - 0.5);
    const pad = (x: Float32Array) => Float32Array.from([...x, ...Array(5000).fill(-1e4)]);
    const small = searchExpert(strong, base, expert);
    const large = searchExpert(pad(strong), pad(base), pad(expert));
    small.objectives.forEach((o, k) => expect(large.objectives[k]).toBeCloseTo(o, 12));
  });

  it("restricted to a support set, the solve on peaked distributions picks the exact solve's point", () => {
    const rng = createRng(21);
    for (let trial = 0; trial < 10; trial++) {
      const n = 3000;
      // Peaked, LLM-like: a few strong tokens over a low bulk.
      const peaked = () => Float32Array.from({ length: n }, (_, i) => (i < 20 ? 8 + rng.next() * 6 : -4 + 2 * rng.next()));
      const strong = peaked();
      const base = peaked();
      const experts = [0, 1].map(() => Float32Array.from(base, (x, i) => x + (i < 20 ? (rng.next() - 0.5) * 4 : 0)));
      const exact = solveFusion(strong, base, experts);
      const restricted = solveFusion(strong, base, experts, { supportMargin: 12 });
      expect(supportSet([strong, base, ...experts], 12).length).toBeLessThan(n / 10);
      expect([restricted.expert, restricted.alpha]).toEqual([exact.expert, exact.alpha]);
      expect(restricted.objective).toBeCloseTo(exact.objective, 4);
    }
  });

  it("α = 0 is the strong model; fusing one expert is softmax(L + α(L_e − L_b))", () => {
    const rng = createRng(8);
    const strong = randomLogits(rng, 50, 2);
    const base = randomLogits(rng, 50, 1);
    const expert = randomLogits(rng, 50, 1);
    expect(Array.from(fuseLogits(strong, base, [{ logits: expert, alpha: 0 }]))).toEqual(Array.from(strong));
    const fused = fuseLogits(strong, base, [{ logits: expert, alpha: 0.7 }]);
    fused.forEach((x, i) => expect(x).toBeCloseTo(strong[i] + 0.7 * (expert[i] - base[i]), 5));
  });

  it("KL in both directions matches its definition", () => {
    const rng = createRng(3);
    const a = randomLogits(rng, 40, 2);
    const b = randomLogits(rng, 40, 2);
    const { ab, ba } = klBothWays(a, b);
    expect(ab).toBeCloseTo(kl(softmax(a), softmax(b)), 9);
    expect(ba).toBeCloseTo(kl(softmax(b), softmax(a)), 9);
  });

  it("uses the authors' grid: α ∈ [0, 2] in steps of 0.1", () => {
    expect(AUTHORS_GRID).toEqual({ max: 2, step: 0.1 });
  });
});
