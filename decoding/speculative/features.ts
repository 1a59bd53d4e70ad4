// What an acceptance predictor sees about a drafted position: cheap statistics of the draft's
// sampling distribution, the position in the candidate, how the pair has been doing — all known
// before the position's candidate is drawn (PreDrawFeatures) — and then the drawn candidate
// itself (DraftFeatures). The split is what keeps speculation exact: whether a position is
// drafted may depend on PreDrawFeatures only (policies.ts).

import { nativeKernels } from "../../engine/native.js";
import { laneTotal } from "../sampler.js";

/** How many of q's most likely tokens PreDrawFeatures lists (expected acceptance sums over them). */
export const TOP_CANDIDATES = 8;

export interface PreDrawFeatures {
  /** Probability of the draft's most likely token. */
  top1: number;
  /** top1 − second most likely. */
  margin: number;
  /** Shannon entropy of q in nats. */
  entropy: number;
  /** 1-based position in the candidate. */
  position: number;
  /** Exponential moving average of recent acceptance (soft labels). */
  recentAcceptance: number;
  /** q's TOP_CANDIDATES most likely tokens, most likely first (pre-draw expectations sum over them). */
  top?: ReadonlyArray<{ token: number; p: number }>;
  /**
   * Greedy decoding: the draw is the most likely token, whatever the probabilities (which then
   * describe the draft's confidence, softmax at temperature 1): an expectation is P̂ at top[0].
   */
  greedy?: boolean;
  /** The token before the position (the context's last): online predictors learn per context. */
  context?: number;
  /** Only for predictors that read hidden states: the draft's final hidden state that produced q. */
  hidden?: Float32Array;
}

export interface DraftFeatures extends PreDrawFeatures {
  /** q(y): probability of the drafted token under the draft. */
  chosen: number;
  /** The drafted token y. */
  token: number;
  /** Only for predictors that need it: the draft's final hidden state at y. */
  candidateHidden?: Float32Array;
}

/**
 * One multiply-add pass over the distribution: the top tokens, and the entropy without a
 * logarithm per token. q is softmax(logits / T) over the tokens it keeps, so log q_i = s_i − log Z
 * with s_i = logits_i / T, and H = −Σ q log q = log Z − Σ q_i s_i, where log Z = s_y − log q_y
 * for any kept token y.
 */
export function preDrawFeatures(q: Float64Array, logits: Float32Array, temperature: number, position: number, recentAcceptance: number): PreDrawFeatures {
  const scale = 1 / temperature;
  const { top, expectedLogit, anchor } = summarize(q, logits, scale);
  const logZ = logits[anchor] * scale - Math.log(q[anchor]);
  // Rounding can leave a tiny negative value for a one-hot distribution.
  const entropy = Math.max(0, logZ - expectedLogit);
  const top1 = top[0]?.p ?? 0;
  return { top1, margin: top1 - (top[1]?.p ?? 0), entropy, position, recentAcceptance, top };
}

const topTokens = new Int32Array(TOP_CANDIDATES);
const topProbs = new Float64Array(TOP_CANDIDATES);

/** q's most likely tokens, Σ q_i·s_i and the first kept token: in the addon where installed (this code is its reference). */
function summarize(q: Float64Array, logits: Float32Array, scale: number): { top: Array<{ token: number; p: number }>; expectedLogit: number; anchor: number } {
  const kernel = nativeKernels().distributionSummary;
  if (kernel) {
    const [count, expectedLogit, anchor] = kernel(q, logits, scale, topTokens, topProbs);
    return { top: Array.from({ length: count }, (_, r) => ({ token: topTokens[r], p: topProbs[r] })), expectedLogit, anchor };
  }
  const top: Array<{ token: number; p: number }> = [];
  // Σ q_i·s_i in laneTotal's order.
  const lanes = [0, 0, 0, 0, 0, 0, 0, 0];
  let anchor = -1;
  for (let i = 0; i < q.length; i++) {
    const p = q[i];
    if (p <= 0) continue;
    if (anchor < 0) anchor = i;
    lanes[i & 7] += p * logits[i] * scale;
    if (top.length === TOP_CANDIDATES && p <= top[TOP_CANDIDATES - 1].p) continue;
    let at = top.length;
    while (at > 0 && top[at - 1].p < p) at--;
    top.splice(at, 0, { token: i, p });
    if (top.length > TOP_CANDIDATES) top.pop();
  }
  const expectedLogit = laneTotal(lanes);
  return { top, expectedLogit, anchor };
}

/** The features of the candidate `token` drawn from q at a position described by `before`. */
export function candidateFeatures(before: PreDrawFeatures, q: Float64Array, token: number): DraftFeatures {
  return { ...before, chosen: q[token], token };
}

/** Both at once (training data, benchmarks). */
export function draftFeatures(q: Float64Array, logits: Float32Array, temperature: number, token: number, position: number, recentAcceptance: number): DraftFeatures {
  return candidateFeatures(preDrawFeatures(q, logits, temperature, position, recentAcceptance), q, token);
}
