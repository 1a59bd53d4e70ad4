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
import type { Rng } from "../../models/util/rng.js";
import { argmax, drawFrom } from "../sampler.js";

export interface Verification {
  /** Number of drafted tokens accepted (a). */
  accepted: number;
  /** The token emitted after the accepted ones. */
  next: number;
  /** How `next` was chosen. */
  nextKind: "recovered" | "bonus";
  /** Per drafted position, min(1, p(y)/q(y)): the authors' soft acceptance label. */
  acceptanceProbabilities: number[];
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
