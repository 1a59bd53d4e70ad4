// First-order Markov chains over tokens: the analytic next-token distributions the forge
// compiles into model weights. A token's state is its own piece for the language's pieces;
// every other token (bytes, prefixes, specials, EOS) shares the start-of-text state.
import type { Rng } from "../decoding/rng.js";
import { capitalize, type Domain, document } from "./language.js";
import { languagePieces, SPACE, type Vocab } from "./vocab.js";

export interface SparseRow {
  tokens: number[];
  probs: number[];
}

export interface Chain {
  vocabSize: number;
  /** stateNames[0] is the start-of-text state. */
  stateNames: string[];
  stateOfToken: Int32Array;
  rows: SparseRow[];
}

export const START_STATE = 0;

/** The state layout every chain of one vocabulary shares. */
export interface StateLayout {
  stateNames: string[];
  stateOfToken: Int32Array;
}

export function stateLayout(vocab: Vocab): StateLayout {
  const stateNames = ["<start>", ...languagePieces()];
  const stateOfToken = new Int32Array(vocab.tokens.length).fill(START_STATE);
  stateNames.forEach((piece, state) => {
    if (state !== START_STATE) stateOfToken[vocab.idOf(piece)] = state;
  });
  return { stateNames, stateOfToken };
}

/** Token ids of a document as the chain emits it: bare capital first, ▁-words, ".", EOS. */
export function documentTokens(vocab: Vocab, sentences: readonly (readonly string[])[]): number[] {
  const ids: number[] = [];
  sentences.forEach((words, si) => {
    words.forEach((w, wi) => {
      if (w === ".") ids.push(vocab.idOf("."));
      else if (wi === 0) ids.push(vocab.idOf(si === 0 ? capitalize(w) : SPACE + capitalize(w)));
      else ids.push(vocab.idOf(SPACE + w));
    });
  });
  ids.push(vocab.eos);
  return ids;
}

export type Counts = Map<number, Map<number, number>>;

export function countTransitions(layout: StateLayout, docs: readonly number[][]): Counts {
  const counts: Counts = new Map();
  for (const doc of docs) {
    let state = START_STATE;
    for (const token of doc) {
      let row = counts.get(state);
      if (!row) counts.set(state, (row = new Map()));
      row.set(token, (row.get(token) ?? 0) + 1);
      state = layout.stateOfToken[token];
    }
  }
  return counts;
}

/**
 * Turns counts into a chain over a fixed support per state (the union of successors seen in
 * any domain), adding `smoothing` pseudo-counts on that support so that chains built from
 * different corpora stay mutually absolutely continuous (finite logit differences).
 * States with no counts take `fallback`'s row.
 */
export function chainFromCounts(
  layout: StateLayout,
  vocabSize: number,
  counts: Counts,
  support: Map<number, number[]>,
  smoothing: number,
  fallback?: Chain,
): Chain {
  const rows: SparseRow[] = layout.stateNames.map((_, state) => {
    const row = counts.get(state);
    const tokens = support.get(state);
    if (!tokens || !row || row.size === 0) {
      if (fallback) return fallback.rows[state];
      // A state never seen in any corpus: back to the start distribution.
      return { tokens: [], probs: [] };
    }
    const weights = tokens.map((t) => (row.get(t) ?? 0) + smoothing);
    const total = weights.reduce((a, b) => a + b, 0);
    return { tokens: [...tokens], probs: weights.map((w) => w / total) };
  });
  rows.forEach((row, state) => {
    if (row.tokens.length === 0) rows[state] = rows[START_STATE];
  });
  return { vocabSize, stateNames: layout.stateNames, stateOfToken: layout.stateOfToken, rows };
}

export function supportOf(counts: Counts): Map<number, number[]> {
  const support = new Map<number, number[]>();
  for (const [state, row] of counts) support.set(state, [...row.keys()].sort((a, b) => a - b));
  return support;
}

/** Generates a corpus of single-domain documents. */
export function corpus(rng: Rng, vocab: Vocab, domains: readonly Domain[], docsPerDomain: number): number[][] {
  const docs: number[][] = [];
  for (const d of domains) {
    for (let i = 0; i < docsPerDomain; i++) docs.push(documentTokens(vocab, document(rng, [d], 2 + rng.int(4))));
  }
  return docs;
}

/** Dense probabilities of one state's row (for tests, samplers and closed forms). */
export function denseRow(chain: Chain, state: number): Float64Array {
  const out = new Float64Array(chain.vocabSize);
  const row = chain.rows[state];
  row.tokens.forEach((t, i) => (out[t] = row.probs[i]));
  return out;
}

/** Mixes each state's row with `noise` (same support) by a per-state weight. */
export function perturbChain(chain: Chain, rng: Rng, weightOf: (state: number) => number): Chain {
  const rows = chain.rows.map((row, state) => {
    const lambda = weightOf(state);
    const noise = row.tokens.map(() => rng.next() ** 3 + 1e-3);
    const total = noise.reduce((a, b) => a + b, 0);
    return { tokens: [...row.tokens], probs: row.probs.map((p, i) => (1 - lambda) * p + (lambda * noise[i]) / total) };
  });
  return { ...chain, rows };
}

/** Flattens every row towards uniform over its support (a weaker model of the same text). */
export function smoothChain(chain: Chain, lambda: number): Chain {
  const rows = chain.rows.map((row) => ({
    tokens: [...row.tokens],
    probs: row.probs.map((p) => (1 - lambda) * p + lambda / row.tokens.length),
  }));
  return { ...chain, rows };
}

/** Σ_x min(p(x), q(x)) per state: the speculative acceptance rate at temperature 1. */
export function acceptancePerState(target: Chain, draft: Chain): number[] {
  return target.rows.map((row, state) => {
    const q = denseRow(draft, state);
    return row.tokens.reduce((acc, t, i) => acc + Math.min(row.probs[i], q[t]), 0);
  });
}

/** Whether the draft's argmax equals the target's in each state (temperature-0 acceptance). */
export function greedyAgreementPerState(target: Chain, draft: Chain): boolean[] {
  const argmax = (row: SparseRow): number => row.tokens[row.probs.indexOf(Math.max(...row.probs))];
  return target.rows.map((row, state) => argmax(row) === argmax(draft.rows[state]));
}

/** (1 − w)·a + w·b, row by row over the union of their supports. */
export function mixRows(a: SparseRow, b: SparseRow, w: number): SparseRow {
  const probs = new Map<number, number>();
  a.tokens.forEach((t, i) => probs.set(t, (1 - w) * a.probs[i]));
  b.tokens.forEach((t, i) => probs.set(t, (probs.get(t) ?? 0) + w * b.probs[i]));
  const tokens = [...probs.keys()].sort((x, y) => x - y);
  return { tokens, probs: tokens.map((t) => probs.get(t)!) };
}
