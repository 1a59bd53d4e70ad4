// Pearson's chi-square goodness of fit of observed token counts against an exact distribution.
import { chiSquarePValue } from "./stats.js";

export interface Fit {
  statistic: number;
  degreesOfFreedom: number;
  pValue: number;
  /** Observations of tokens the distribution gives probability 0 (must be none). */
  outsideSupport: number;
}

/** Bins with an expected count under 5 are pooled into one, as the test's approximation requires. */
export function goodnessOfFit(counts: ReadonlyMap<number, number>, expected: Float64Array): Fit {
  const total = [...counts.values()].reduce((a, b) => a + b, 0);
  let outsideSupport = 0;
  for (const [token, n] of counts) if (!(expected[token] > 0)) outsideSupport += n;
  const bins: Array<{ observed: number; expected: number }> = [];
  const pooled = { observed: 0, expected: 0 };
  expected.forEach((p, token) => {
    if (p <= 0) return;
    const bin = { observed: counts.get(token) ?? 0, expected: p * total };
    if (bin.expected < 5) {
      pooled.observed += bin.observed;
      pooled.expected += bin.expected;
    } else bins.push(bin);
  });
  if (pooled.expected > 0) bins.push(pooled);
  const statistic = bins.reduce((acc, b) => acc + (b.observed - b.expected) ** 2 / b.expected, 0);
  const degreesOfFreedom = Math.max(1, bins.length - 1);
  return { statistic, degreesOfFreedom, pValue: chiSquarePValue(statistic, degreesOfFreedom), outsideSupport };
}
