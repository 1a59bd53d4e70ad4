// What an acceptance predictor sees about a drafted token: cheap statistics of the draft's
// sampling distribution, the position in the candidate, and how the pair has been doing.

export interface DraftFeatures {
  /** q(y): probability of the drafted token under the draft. */
  chosen: number;
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
  /** The drafted token y. */
  token: number;
  /** Only for predictors that read hidden states: the draft's final hidden state that produced q. */
  hidden?: Float32Array;
  /** Only for predictors that need it: the draft's final hidden state at y. */
  candidateHidden?: Float32Array;
}

/**
 * One multiply-add pass over the distribution: top-2, and the entropy without a logarithm per
 * token. q is softmax(logits / T) over the tokens it keeps, so log q_i = s_i − log Z with
 * s_i = logits_i / T, and H = −Σ q log q = log Z − Σ q_i s_i, where log Z = s_y − log q_y for
 * any kept token y.
 */
export function draftFeatures(
  q: Float64Array,
  logits: Float32Array,
  temperature: number,
  token: number,
  position: number,
  recentAcceptance: number,
): DraftFeatures {
  const scale = 1 / temperature;
  let top1 = 0;
  let top2 = 0;
  let expectedLogit = 0;
  let anchor = -1;
  for (let i = 0; i < q.length; i++) {
    const p = q[i];
    if (p <= 0) continue;
    if (anchor < 0) anchor = i;
    expectedLogit += p * logits[i] * scale;
    if (p > top1) {
      top2 = top1;
      top1 = p;
    } else if (p > top2) top2 = p;
  }
  const logZ = logits[anchor] * scale - Math.log(q[anchor]);
  // Rounding can leave a tiny negative value for a one-hot distribution.
  const entropy = Math.max(0, logZ - expectedLogit);
  return { chosen: q[token], top1, margin: top1 - top2, entropy, position, recentAcceptance, token };
}
