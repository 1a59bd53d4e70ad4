// constrainedDraw (decoding/constraint.ts): a draw from the distribution masked to the tokens a
// grammar allows, checking the draw's preferred tokens before paying for a mask. Over a
// vocabulary of 1,000 with allowed sets of small mass, so that both ways are taken.
import { describe, expect, it } from "vitest";
import { type TokenConstraint, constrainedDraw } from "../../../decoding/constraint.js";
import { keyedOrder, keyedSample, PositionNoise, positionKey, tokenDraws } from "../../../decoding/noise.js";
import { createRng } from "../../../decoding/rng.js";
import { argmax, DEFAULT_SAMPLING, largestLogits, samplingDistribution, type SamplingParams } from "../../../decoding/sampler.js";
import { goodnessOfFit } from "../../helpers/goodness.js";

const V = 1000;
const rng = createRng(5);
const gaussian = () => Math.sqrt(-2 * Math.log(1 - rng.next())) * Math.cos(2 * Math.PI * rng.next());

/** A constraint allowing a fixed set, counting its masks and checks. */
class SetConstraint implements TokenConstraint {
  masks = 0;
  checks = 0;
  constructor(private readonly allowed: ReadonlySet<number>) {}
  allows(token: number): boolean {
    this.checks++;
    return this.allowed.has(token);
  }
  mask(logits: Float32Array): void {
    this.masks++;
    for (let t = 0; t < logits.length; t++) if (!this.allowed.has(t)) logits[t] = -Infinity;
  }
  forcedToken(): number | undefined {
    return this.allowed.size === 1 ? [...this.allowed][0] : undefined;
  }
  accept(): void {}
  clone(): TokenConstraint {
    return new SetConstraint(this.allowed);
  }
  release(): void {}
}

const masked = (logits: Float32Array, allowed: ReadonlySet<number>) => logits.map((l, t) => (allowed.has(t) ? l : -Infinity));

describe("the draw's ranked tokens", () => {
  it("keyed: the first allowed of them is the keyed draw on masked logits; logit order at T = 0 is argmax's", () => {
    let viaRanking = 0;
    for (let c = 0; c < 3000; c++) {
      const logits = Float32Array.from({ length: V }, () => [1, 3, 6][c % 3] * gaussian());
      const params: SamplingParams = { ...DEFAULT_SAMPLING, temperature: [0, 1, 0.7][c % 3] };
      const allowed = new Set(Array.from({ length: 1 + (c % 50) }, () => rng.int(V)));
      const noise = new PositionNoise(positionKey({ seed: c, choice: 0 }, 7));
      const order = keyedOrder(logits, params, noise, 8);
      expect(order[0]).toBe(keyedSample(logits, params, noise));
      const first = order.find((t) => allowed.has(t));
      if (first !== undefined) {
        viaRanking++;
        expect(first, `case ${c}`).toBe(keyedSample(masked(logits, allowed), params, noise));
      }
    }
    expect(viaRanking).toBeGreaterThan(100);
    const logits = Float32Array.from([1, 5, 5, 2, 5]);
    expect(largestLogits(logits, 4)).toEqual([1, 2, 4, 3]);
    expect(largestLogits(logits, 1)[0]).toBe(argmax(logits));
  });

  it.for([
    ["keyed, T = 1", true, DEFAULT_SAMPLING],
    ["sequential, T = 1", false, DEFAULT_SAMPLING],
    ["sequential, T = 0.7, top_p 0.9 (mask first)", false, { ...DEFAULT_SAMPLING, temperature: 0.7, topP: 0.9 }],
  ] as const)("%s: 10^5 draws follow the masked distribution, through both the ranking and the mask", ([, keyed, params]) => {
    const logits = Float32Array.from({ length: V }, () => 2 * gaussian());
    // Allowed: 30 tokens of small total mass, so the ranked tokens often miss them all.
    const allowed = new Set(Array.from({ length: 30 }, (_, i) => 17 * i + 3));
    const expected = samplingDistribution(masked(logits, allowed), params);
    const constraint = new SetConstraint(allowed);
    const counts = new Map<number, number>();
    const N = 100_000;
    for (let seed = 0; seed < N; seed++) {
      const draws = tokenDraws({ seed, keyedNoise: keyed });
      const token = constrainedDraw(new Float32Array(logits), params, constraint, draws, 4);
      counts.set(token, (counts.get(token) ?? 0) + 1);
    }
    expect([...counts.keys()].every((t) => allowed.has(t))).toBe(true);
    expect(goodnessOfFit(counts, expected).pValue).toBeGreaterThan(1e-4);
    expect(constraint.masks).toBeGreaterThan(N / 100);
    if (params.topP === 1) expect(constraint.masks).toBeLessThan(N * 0.9);
    else expect(constraint.masks).toBe(N);
  });
});
