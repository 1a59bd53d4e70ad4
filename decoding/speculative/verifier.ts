// Lossless verification of drafted tokens (speculative sampling, Leviathan et al. / Chen et al.).
//
// Definitions, for one round with K drafted tokens y_1..y_K:
// - p_i: the target's sampling distribution at position i (after temperature and truncation),
//   for i = 1..K+1; q_i: the draft's sampling distribution y_i was drawn from, i = 1..K.
// - accepted tokens: y_1..y_a, where each y_i survived u_i ≤ p_i(y_i) / q_i(y_i), u_i ~ U(0,1),
//   and y_{a+1} did not.
// - recovered token: when y_{a+1} is rejected, a token drawn from the residual
//   norm(max(p_{a+1} − q_{a+1}, 0)); it replaces y_{a+1}.
// - bonus token: when all K survive, one token drawn from p_{K+1}.
// Every round therefore emits a + 1 tokens, and the emitted sequence is distributed exactly as
// sampling from the target alone. At temperature 0 both p and q are one-hot on their argmax, so
// this reduces to argmax matching and the output equals greedy target-only decoding.
//
// Coupled verification (seeded requests, noise.ts): the draft proposed y_i = argmax_j log q_i(j)
// + g_i(j), and the target's own choice is x_i = argmax_j log p_i(j) + g_i(j) with the same keyed
// noise g_i. y_i is accepted iff y_i = x_i; the first x_i that differs is the recovered token,
// and x_{K+1} the bonus. The emitted tokens are then exactly the target's own keyed draws, so the
// text does not depend on what was proposed: any candidate-length rule is exact, and a seed
// reproduces with or without a draft. Its acceptance P(argmax agree) is below Σ min(p, q).
import { nativeKernels } from "../../engine/native.js";
import type { Rng } from "../rng.js";
import { argmax, drawFrom } from "../sampler.js";

/** Rejection sampling (the highest acceptance), or coupled keyed noise (the target's own draws whatever is proposed). */
export type VerificationMode = "rejection" | "coupled";

export interface Verification {
  /** Number of drafted tokens accepted (a). */
  accepted: number;
  /** The token emitted after the accepted ones. */
  next: number;
  /** How `next` was chosen. */
  nextKind: "recovered" | "bonus";
  /**
   * Per drafted position, its acceptance label: min(1, p(y)/q(y)), the authors' soft label
   * (rejection sampling), or 1/0 for whether the target's keyed draw equals y (coupled).
   */
  acceptanceProbabilities: number[];
}

/**
 * Coupled verification: `targetChoices[i]` is the target's keyed draw at candidate position i
 * (i = 0..K; each given the candidates before it), which it emits in place of a candidate that
 * differs. Every position gets its label (a position after the first difference is labelled as
 * if its prefix had been accepted).
 */
export function verifyCoupled(draftTokens: readonly number[], targetChoices: readonly number[]): Verification {
  const K = draftTokens.length;
  if (targetChoices.length !== K + 1) throw new Error(`verifyCoupled: ${K} drafted tokens need ${K + 1} target choices`);
  const acceptanceProbabilities = draftTokens.map((y, i) => (y === targetChoices[i] ? 1 : 0));
  const accepted = acceptanceProbabilities.indexOf(0);
  if (accepted < 0) return { accepted: K, next: targetChoices[K], nextKind: "bonus", acceptanceProbabilities };
  return { accepted, next: targetChoices[accepted], nextKind: "recovered", acceptanceProbabilities };
}

export function verify(
  draftTokens: readonly number[],
  draftDistributions: readonly Float64Array[],
  targetDistributions: readonly Float64Array[],
  rng: Rng,
): Verification {
  const K = draftTokens.length;
  if (draftDistributions.length !== K || targetDistributions.length !== K + 1) {
    throw new Error(`verify: ${K} drafted tokens need ${K} draft and ${K + 1} target distributions`);
  }
  const acceptanceProbabilities = draftTokens.map((y, i) => {
    const q = draftDistributions[i][y];
    return q > 0 ? Math.min(1, targetDistributions[i][y] / q) : 0;
  });
  for (let i = 0; i < K; i++) {
    if (rng.next() < acceptanceProbabilities[i]) continue;
    return { accepted: i, next: drawResidual(targetDistributions[i], draftDistributions[i], rng), nextKind: "recovered", acceptanceProbabilities };
  }
  return { accepted: K, next: drawFrom(targetDistributions[K], rng), nextKind: "bonus", acceptanceProbabilities };
}

/** A draw from norm(max(p − q, 0)). */
export function drawResidual(p: Float64Array, q: Float64Array, rng: Rng): number {
  const { residualMass, drawResidual: nativeResidual } = nativeKernels();
  if (residualMass && nativeResidual) {
    // The same two steps in the addon, without the residual array.
    const mass = residualMass(p, q);
    return mass > 0 ? nativeResidual(p, q, mass, rng.next()) : argmax(p);
  }
  const residual = new Float64Array(p.length);
  let total = 0;
  for (let x = 0; x < p.length; x++) {
    const r = p[x] - q[x];
    if (r > 0) {
      residual[x] = r;
      total += r;
    }
  }
  // A rejection implies p ≠ q, hence positive residual mass; rounding aside, fall back to p.
  if (!(total > 0)) return argmax(p);
  for (let x = 0; x < residual.length; x++) residual[x] /= total;
  return drawFrom(residual, rng);
}
