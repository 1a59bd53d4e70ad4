// Candidate-length policies: one interface for fixed K, the draft-confidence threshold used by
// llama.cpp and node-llama-cpp, and SpecDec++.
//
// Exactness is built into the interface. Speculative sampling reproduces the target's
// distribution only if the decision to propose candidate y_k depends on nothing but what was
// known before y_k was drawn: with p = q and y kept with probability g(y), the output would be
// q(x)·(g(x) + 1 − E_q[g]) instead of q(x). So a policy decides whether to draft position k
// before the draw (beforeDraw, from PreDrawFeatures), and after the draw only whether to draft
// another (afterDraw: y_k itself is proposed whatever it says). Nothing ever withdraws a drawn
// candidate.
import { type AcceptancePredictor, unweightedAcceptance } from "./predictors.js";
import { type AcceptanceCalibration, type AcceptanceCalibrations, acceptanceCalibrations } from "./calibration.js";
import type { RoundCosts, SamplingRegime } from "./costs.js";
import type { DraftFeatures, PreDrawFeatures } from "./features.js";

export interface CandidateLengthPolicy {
  readonly name: string;
  /** Starts a new candidate. */
  begin(): void;
  /** Before the k-th candidate (1-based) is drawn: draft it, or end the round with k − 1. */
  beforeDraw?(k: number, before: PreDrawFeatures): "draft" | "stop";
  /** The k-th candidate was drawn (and will be proposed): draft another, or stop. */
  afterDraw(k: number, features: DraftFeatures): "continue" | "stop";
  /** The predicted acceptance of the last drawn candidate, when the policy uses a predictor. */
  readonly lastPrediction?: number;
  /** Whether to skip drafting this round altogether (the draft catches up when it next drafts). */
  skipRound?(): boolean;
  /**
   * The round was verified: `proposed` candidates (0 when skipped), `accepted` of them kept, with
   * their acceptance labels (min(1, p(y)/q(y)) in rejection mode, 0 or 1 in coupled mode).
   */
  end?(proposed: number, accepted: number, acceptance: readonly number[]): void;
}

/** Always K candidates. */
export class FixedLengthPolicy implements CandidateLengthPolicy {
  readonly name: string;
  constructor(private readonly k: number) {
    this.name = `fixed-${k}`;
  }
  begin(): void {}
  afterDraw(k: number): "continue" | "stop" {
    return k >= this.k ? "stop" : "continue";
  }
}

/**
 * llama.cpp's --draft-p-min and node-llama-cpp's DraftSequenceTokenPredictor: a position whose
 * most likely draft token is below pMin is not drafted, and the round ends.
 */
export class ConfidencePolicy implements CandidateLengthPolicy {
  readonly name: string;
  constructor(
    private readonly pMin: number,
    private readonly maxCandidates: number,
  ) {
    this.name = `confidence-${pMin}`;
  }
  begin(): void {}
  beforeDraw(_k: number, before: PreDrawFeatures): "draft" | "stop" {
    return before.top1 < this.pMin ? "stop" : "draft";
  }
  afterDraw(k: number): "continue" | "stop" {
    return k >= this.maxCandidates ? "stop" : "continue";
  }
}

/**
 * SpecDec++ as its authors run it: stop once the predicted probability that at least one
 * candidate is rejected, 1 − Π P̂_j, exceeds the threshold h (after minCandidates); the
 * candidate that crossed it is still proposed.
 */
export class SpecDecPlusPlusPolicy implements CandidateLengthPolicy {
  readonly name = "specdec++";
  private survival = 1;
  lastPrediction?: number;

  constructor(
    private readonly predictor: AcceptancePredictor,
    private readonly threshold: number,
    private readonly minCandidates: number,
    private readonly maxCandidates: number,
  ) {}

  begin(): void {
    this.survival = 1;
  }

  afterDraw(k: number, features: DraftFeatures): "continue" | "stop" {
    const p = this.predictor.predict(features);
    this.lastPrediction = p;
    this.survival *= p;
    return stopsAtThreshold(k, 1 - this.survival, this.threshold, this.minCandidates, this.maxCandidates) ? "stop" : "continue";
  }
}

/** The authors' rule: stop at maxCandidates, or past minCandidates once P(some rejection) > h. */
function stopsAtThreshold(k: number, rejection: number, h: number, minCandidates: number, maxCandidates: number): boolean {
  return k >= maxCandidates || (k >= minCandidates && rejection > h);
}

/**
 * SpecDec++ with `threshold: "auto"`: the same predictions drive a cost-aware rule (costs.ts).
 * Before each draw it asks whether drafting the position pays, from the predictor's expected
 * acceptance under the draft's distribution there, E_q[P̂] (or, for predictors without one, the
 * last candidate's P̂; at the first position, the mean first-position P̂ of recent rounds); after
 * each draw it asks, from the candidate's own P̂, whether to take the draft step towards another.
 * Both are recalibrated per token (AcceptanceCalibration) from verification's labels; the decoder
 * tells the costs what each drafted round yielded. After a run of empty rounds a first position
 * is drafted anyway, to learn from. Until the costs are calibrated, the authors' rule with
 * h = fallbackThreshold decides.
 *
 * Drafting costs draft steps even when it proposes nothing. Where drafted rounds have recently
 * yielded fewer tokens per ms than the target alone (hardware where speculation cannot pay),
 * the rule skips drafting for 1, then 2, 4, … (at most MAX_SKIPPED) rounds between drafted
 * ones, so decoding costs what target-only costs; a single round that proposes nothing (an
 * unpromising context) does not stop drafting where it pays.
 */
const MAX_SKIPPED = 16;

export class CostAwareSpecDecPolicy implements CandidateLengthPolicy {
  readonly name = "specdec++";
  private survivals: number[] = [];
  /** P̂ per candidate before recalibration (what the calibration learns from). */
  private uncalibrated: number[] = [];
  lastPrediction?: number;
  /** Consecutive drafted rounds after which drafting did not pay; rounds still to skip; this round skipped. */
  private unpaidRounds = 0;
  private toSkip = 0;
  private skipping = false;

  private readonly regime: SamplingRegime;
  private readonly fallbackThreshold: number;
  private readonly calibration: AcceptanceCalibration;

  /**
   * `calibrations`: the model's, shared by its requests (a fresh set by default); `regime`
   * picks the one this request's acceptance follows (default sampled); `fallbackThreshold` is
   * h until the costs are calibrated (default 0.7).
   */
  constructor(
    private readonly predictor: AcceptancePredictor,
    private readonly costs: RoundCosts,
    private readonly minCandidates: number,
    private readonly maxCandidates: number,
    options: { regime?: SamplingRegime; fallbackThreshold?: number; calibrations?: AcceptanceCalibrations } = {},
  ) {
    this.regime = options.regime ?? "sampled";
    this.fallbackThreshold = options.fallbackThreshold ?? 0.7;
    this.calibration = (options.calibrations ?? acceptanceCalibrations())[this.regime];
  }

  begin(): void {
    this.survivals = [];
    this.uncalibrated = [];
  }

  /**
   * The acceptance chance the cost-aware rule works with: the authors' threshold h was tuned on
   * their (pessimistic, w = 6) P̂ as it is; the rule needs probabilities, so it undoes the
   * predictor's rejection weight and recalibrates what remains against verification's labels.
   */
  private chance(raw: number): { unweighted: number; calibrated: number } {
    const unweighted = unweightedAcceptance(raw, this.predictor.rejectionWeight);
    return { unweighted, calibrated: this.calibration.apply(unweighted) };
  }

  beforeDraw(k: number, before: PreDrawFeatures): "draft" | "stop" {
    if (!this.costs.calibrated) return "draft";
    const calibration = this.calibration;
    const expected = this.predictor.expected?.(before);
    const raw = expected !== undefined && Number.isFinite(expected) ? expected : k > 1 ? this.lastPrediction! : calibration.firstPrediction;
    const decision = this.costs.draftPosition(k, this.survivals, this.chance(raw).calibrated, this.maxCandidates);
    return decision === "stop" && k === 1 && calibration.explore ? "draft" : decision;
  }

  afterDraw(k: number, features: DraftFeatures): "continue" | "stop" {
    const raw = this.predictor.predict(features);
    this.lastPrediction = raw;
    if (k === 1) this.calibration.observeFirstPrediction(raw);
    const { unweighted, calibrated: p } = this.chance(raw);
    this.uncalibrated.push(unweighted);
    this.survivals.push((this.survivals.at(-1) ?? 1) * p);
    if (k >= this.maxCandidates) return "stop";
    if (this.costs.calibrated) return this.costs.draftAnother(k, this.survivals, p, this.maxCandidates);
    return stopsAtThreshold(k, 1 - this.survivals[k - 1], this.fallbackThreshold, this.minCandidates, this.maxCandidates) ? "stop" : "continue";
  }

  skipRound(): boolean {
    this.skipping = this.toSkip > 0;
    if (this.skipping) this.toSkip--;
    return this.skipping;
  }

  end(proposed: number, accepted: number, acceptance: readonly number[]): void {
    const calibration = this.calibration;
    for (let i = 0; i < proposed; i++) calibration.observe(this.uncalibrated[i], acceptance[i]);
    if (proposed === 0) calibration.relax();
    if (this.skipping) return;
    calibration.observeRound(proposed);
    // The decoder has told the costs what this round yielded.
    if (this.costs.draftingPays(this.regime)) {
      this.unpaidRounds = 0;
      return;
    }
    this.toSkip = Math.min(MAX_SKIPPED, 2 ** this.unpaidRounds++);
  }
}
