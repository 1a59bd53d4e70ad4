// A target/draft pair for speculative-decoding benchmarks, built so the workload is honest:
// - the target's most likely successor of every word is one long cycle through all words, so a
//   greedy (temperature 0) run never repeats within a generation shorter than the vocabulary
//   of words — a first-order chain of real text falls into short loops where every draft agrees;
// - the target's confidence varies per state (confident and uncertain states), which is what
//   an adaptive candidate length can exploit;
// - in a controlled fraction of states the draft's most likely token differs from the
//   target's, and there the draft is also unsure (as real drafts tend to be); elsewhere the
//   draft is the target blurred by a per-state amount of noise.
// No state leads to end-of-text, so runs last exactly max_tokens.
import type { Rng } from "../decoding/rng.js";
import { type Chain, START_STATE, type StateLayout } from "./chain.js";

export interface SpecPairOptions {
  /** Fraction of states where the draft's argmax is not the target's. */
  disagreement: number;
}

export function speculativePair(layout: StateLayout, vocabSize: number, tokenOfState: (state: number) => number, rng: Rng, options: SpecPairOptions): { target: Chain; draft: Chain } {
  const words = layout.stateNames.map((_, s) => s).filter((s) => s !== START_STATE);
  // A random cyclic order of the words: successor(s) is the next word in it.
  const order = [...words];
  for (let i = order.length - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    [order[i], order[j]] = [order[j], order[i]];
  }
  const successor = new Map(order.map((s, i) => [s, order[(i + 1) % order.length]]));
  successor.set(START_STATE, order[0]);

  const targetRows: Chain["rows"] = [];
  const draftRows: Chain["rows"] = [];
  for (let state = 0; state < layout.stateNames.length; state++) {
    const main = successor.get(state)!;
    const alternatives = new Set<number>();
    while (alternatives.size < 4) {
      const s = rng.pick(words);
      if (s !== main) alternatives.add(s);
    }
    const alts = [...alternatives];
    const confidence = rng.pick([0.95, 0.8, 0.6, 0.4]);
    const weights = alts.map(() => 0.5 + 0.5 * rng.next());
    const wsum = weights.reduce((a, b) => a + b, 0);
    const targetProbs = [confidence, ...weights.map((w) => ((1 - confidence) * w) / wsum)];
    const tokens = [main, ...alts].map(tokenOfState);
    targetRows.push({ tokens, probs: targetProbs });

    let draftProbs: number[];
    if (rng.next() < options.disagreement) {
      // The draft prefers an alternative, without much conviction.
      draftProbs = [0.35, 0.45, ...alts.slice(1).map(() => 0.2 / (alts.length - 1))];
    } else {
      const lambda = rng.pick([0.05, 0.15, 0.3]);
      const noise = tokens.map(() => rng.next() + 0.05);
      const nsum = noise.reduce((a, b) => a + b, 0);
      draftProbs = targetProbs.map((p, i) => (1 - lambda) * p + (lambda * noise[i]) / nsum);
      // Keep the argmax where the target has it (the noise must not flip it).
      const top = Math.max(...draftProbs.slice(1));
      if (draftProbs[0] <= top) draftProbs[0] = top * 1.05;
      const total = draftProbs.reduce((a, b) => a + b, 0);
      draftProbs = draftProbs.map((p) => p / total);
    }
    draftRows.push({ tokens: [...tokens], probs: draftProbs });
  }
  const chain = (rows: Chain["rows"]): Chain => ({ vocabSize, stateNames: layout.stateNames, stateOfToken: layout.stateOfToken, rows });
  return { target: chain(targetRows), draft: chain(draftRows) };
}
