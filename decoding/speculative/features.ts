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
}

/** One pass over the distribution: top-2 and entropy. */
export function draftFeatures(q: Float64Array, token: number, position: number, recentAcceptance: number): DraftFeatures {
  let top1 = 0;
  let top2 = 0;
  let entropy = 0;
  for (let i = 0; i < q.length; i++) {
    const p = q[i];
    if (p <= 0) continue;
    entropy -= p * Math.log(p);
    if (p > top1) {
      top2 = top1;
      top1 = p;
    } else if (p > top2) top2 = p;
  }
  return { chosen: q[token], top1, margin: top1 - top2, entropy, position, recentAcceptance };
}
