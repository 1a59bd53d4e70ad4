// Proposals from text rather than a model — a request's Predicted Output (prediction.ts) or the
// text itself (prompt lookup, lookup.ts) — and what they are worth.
//
// A text proposal is deterministic (a one-hot q), so the cost-aware rule (costs.ts) may judge
// it whole before proposing any of it: nothing is drawn. Its acceptance chance is learned per
// model from verification's labels, by source and by the proposal's match — how many tokens of
// context already agree with the source where the candidate is taken from it (the lookup's
// matched n-gram, 0 where it copies on past an edit; the run of the prediction followed since
// the last divergence), plus the candidates before it in the round: the i-th candidate of a
// lookup that matched n tokens is judged as a match of n + i − 1. A longer match has been right for longer, so it is trusted
// more; how much more, each model's own text decides.
import type { SamplingRegime } from "./costs.js";

export type TextSource = "lookup" | "prediction";

/** Candidates from text, and the length of the match they continue. */
export interface TextProposal {
  tokens: number[];
  /** Tokens of context that agree with the source before the first candidate (0: copying on past an edit). */
  match: number;
}

/**
 * Candidates from text: deterministic proposals, verified as one-hot q.
 */
export interface TextProposer {
  readonly source: TextSource;
  /** False: every offer is proposed whole, unpriced (default true). */
  readonly priced?: boolean;
  /** Up to `max` candidates to follow `text` (prompt + output). */
  propose(text: readonly number[], max: number): TextProposal;
  /** Tokens just emitted; `output` is all generated so far. */
  advance?(emitted: readonly number[], output: readonly number[]): void;
}

/** Matches longer than this share one estimate. */
const LONGEST_MATCH = 32;
/**
 * The prior of a source's overall acceptance, worth this many verified candidates: a lookup is
 * a guess, a prediction the client's expectation.
 */
const PRIOR_WEIGHT = 2;
const PRIOR_MEAN: Record<TextSource, number> = { lookup: 0.5, prediction: 0.8 };
/**
 * Each match length's estimate starts from the source's overall acceptance, worth this many of
 * its own candidates: the lengths a proposal reaches are seen a few times each, the source as a
 * whole at every candidate, so what all of them show carries over at once.
 */
const POOL_WEIGHT = 4;
/** Counts are halved past this many candidates per match length, so the estimate follows a changing workload. */
const WINDOW = 256;
/**
 * Offers declined in a row after which one is proposed anyway, its first EXPLORE_LENGTH
 * candidates: a source priced out by its prior (or by a bad spell) would otherwise never show
 * that it now pays, and a short offer costs little where it does not. Exact either way.
 */
const EXPLORE_AFTER = 16;
export const EXPLORE_LENGTH = 4;

/** Verified candidates per match length, and of all lengths: summed acceptance labels and how many. */
interface Tally {
  accepted: Float64Array;
  seen: Float64Array;
  pooled: { accepted: number; seen: number };
}
const tally = (): Tally => ({ accepted: new Float64Array(LONGEST_MATCH + 1), seen: new Float64Array(LONGEST_MATCH + 1), pooled: { accepted: 0, seen: 0 } });

/**
 * The acceptance chance of text candidates by source and match length, per sampling regime
 * (greedy acceptance is 0 or 1, rejection sampling's p(y), coupled noise's 0 or 1 again with
 * a different rate), from verification's labels: min(1, p(y)/q(y)) = p(y) for a one-hot q in
 * rejection mode, agreement with the target's own draw otherwise. One per model.
 */
export class TextAcceptance {
  private readonly tallies = new Map<string, Tally>();
  private readonly declinedInARow = new Map<string, number>();

  /** An offer was not proposed (the rule priced it below the target alone, or the draft). */
  declined(regime: SamplingRegime, source: TextSource): void {
    const key = `${regime}:${source}`;
    this.declinedInARow.set(key, (this.declinedInARow.get(key) ?? 0) + 1);
  }

  /** Whether the next offer is proposed whatever its price (its first EXPLORE_LENGTH candidates), to learn from. */
  explores(regime: SamplingRegime, source: TextSource): boolean {
    return (this.declinedInARow.get(`${regime}:${source}`) ?? 0) >= EXPLORE_AFTER;
  }

  private tallyOf(regime: SamplingRegime, source: TextSource): Tally {
    const key = `${regime}:${source}`;
    let known = this.tallies.get(key);
    if (!known) this.tallies.set(key, (known = tally()));
    return known;
  }

  /** The chance that a candidate continuing a match of `match` tokens is accepted, given those before it were. */
  chance(regime: SamplingRegime, source: TextSource, match: number): number {
    const { accepted, seen, pooled } = this.tallyOf(regime, source);
    const m = Math.min(LONGEST_MATCH, Math.max(0, match));
    const overall = (pooled.accepted + PRIOR_WEIGHT * PRIOR_MEAN[source]) / (pooled.seen + PRIOR_WEIGHT);
    return (accepted[m] + POOL_WEIGHT * overall) / (seen[m] + POOL_WEIGHT);
  }

  /** The chances of a proposal's candidates, in order. */
  chances(regime: SamplingRegime, source: TextSource, proposal: TextProposal): number[] {
    return proposal.tokens.map((_, i) => this.chance(regime, source, proposal.match + i));
  }

  /** Verification's labels for a proposal's candidates (each given those before it were accepted). */
  observe(regime: SamplingRegime, source: TextSource, match: number, labels: readonly number[]): void {
    this.declinedInARow.set(`${regime}:${source}`, 0);
    const { accepted, seen, pooled } = this.tallyOf(regime, source);
    labels.forEach((label, i) => {
      const m = Math.min(LONGEST_MATCH, Math.max(0, match + i));
      accepted[m] += label;
      seen[m] += 1;
      pooled.accepted += label;
      pooled.seen += 1;
      if (seen[m] > WINDOW) {
        accepted[m] /= 2;
        seen[m] /= 2;
      }
      if (pooled.seen > WINDOW) {
        pooled.accepted /= 2;
        pooled.seen /= 2;
      }
    });
  }
}
