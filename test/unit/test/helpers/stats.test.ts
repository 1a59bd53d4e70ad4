// The chi-square helper the statistical sampler tests rely on, against published quantiles.
import { describe, expect, it } from "vitest";
import { chiSquarePValue, chiSquareStatistic, logGamma, regularizedGammaQ } from "../../../helpers/stats.js";

describe("chi-square p-value", () => {
  it("matches table quantiles (upper-tail probabilities)", () => {
    expect(chiSquarePValue(3.841459, 1)).toBeCloseTo(0.05, 5);
    expect(chiSquarePValue(6.634897, 1)).toBeCloseTo(0.01, 5);
    expect(chiSquarePValue(23.209251, 10)).toBeCloseTo(0.01, 5);
    expect(chiSquarePValue(18.307038, 10)).toBeCloseTo(0.05, 5);
    expect(chiSquarePValue(124.342113, 100)).toBeCloseTo(0.05, 5);
  });

  it("covers the series branch (statistic below the mean) too", () => {
    // 5 % lower-tail quantile of chi2(10) is 3.940299, so the upper tail there is 0.95.
    expect(chiSquarePValue(3.940299, 10)).toBeCloseTo(0.95, 5);
    expect(chiSquarePValue(0.003932, 1)).toBeCloseTo(0.95, 4);
  });

  it("equals the closed form exp(-x/2) for two degrees of freedom", () => {
    for (const x of [0.1, 1, 2.5, 5.991, 13.8, 40]) {
      expect(chiSquarePValue(x, 2)).toBeCloseTo(Math.exp(-x / 2), 12);
    }
  });

  it("is 1 at zero and decreases with the statistic", () => {
    expect(chiSquarePValue(0, 3)).toBe(1);
    let previous = 1;
    for (let x = 0.5; x < 60; x += 0.5) {
      const p = chiSquarePValue(x, 7);
      expect(p).toBeLessThan(previous);
      previous = p;
    }
  });

  it("rests on a correct log-gamma and rejects invalid arguments", () => {
    expect(logGamma(5)).toBeCloseTo(Math.log(24), 12);
    expect(logGamma(0.5)).toBeCloseTo(0.5 * Math.log(Math.PI), 12);
    expect(() => regularizedGammaQ(0, 1)).toThrow(RangeError);
    expect(() => regularizedGammaQ(1, -1)).toThrow(RangeError);
  });

  it("computes Pearson's statistic over cells with positive probability", () => {
    // expected 25/0/75 of 100; (30-25)²/25 + (70-75)²/75 = 1 + 1/3
    const { statistic, degreesOfFreedom } = chiSquareStatistic([30, 0, 70], [0.25, 0, 0.75]);
    expect(statistic).toBeCloseTo(4 / 3, 12);
    expect(degreesOfFreedom).toBe(1);
  });
});
