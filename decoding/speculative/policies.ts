// Candidate-length policies: after each drafted token, whether to keep it and whether to draft
// another. One interface for fixed K, the draft-confidence threshold used by llama.cpp and
// node-llama-cpp, and SpecDec++.
import { type AcceptancePredictor, unweightedAcceptance } from "./predictors.js";
import type { AcceptanceCalibration, RoundCosts, SamplingRegime } from "./costs.js";
import type { DraftFeatures } from "./features.js";

export type PolicyDecision = "continue" | "stop" | "drop-and-stop";

export interface CandidateLengthPolicy {
  readonly name: string;
  /** Starts a new candidate. */
  begin(): void;
  /** Decides after the k-th drafted token (1-based). */
  decide(k: number, features: DraftFeatures): PolicyDecision;
  /** The predicted acceptance of the last decided token, when the policy uses a predictor. */
  readonly lastPrediction?: number;
  /** Whether to skip drafting this round altogether (the draft catches up when it next drafts). */
  skipRound?(): boolean;
  /** Drafting ended with `drafted` candidates: how many to propose (all, without this method). */
  propose?(drafted: number): number;
  /**
   * The round was verified: `proposed` candidates (0 when skipped or withdrawn), `accepted` of
   * them kept, with their acceptance chances min(1, p(y)/q(y)) (verification's soft labels).
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
  decide(k: number): PolicyDecision {
    return k >= this.k ? "stop" : "continue";
  }
}

/**
 * llama.cpp's --draft-p-min and node-llama-cpp's DraftSequenceTokenPredictor: a drafted token
 * whose draft probability is below pMin is not proposed, and drafting ends.
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
  decide(k: number, features: DraftFeatures): PolicyDecision {
    if (features.top1 < this.pMin) return "drop-and-stop";
    return k >= this.maxCandidates ? "stop" : "continue";
  }
}

/**
 * SpecDec++: stop once the predicted probability that at least one candidate is rejected,
 * 1 − Π_j P̂_j, exceeds the threshold h; the token that crossed it is still proposed.
 * With `threshold: "auto"` the same predictions drive a cost-aware rule (costs.ts): draft on
 * while a longer round promises a better expected token rate, and propose nothing when no round
 * beats target-only decoding; when drafting ends, propose the prefix with the best expected
 * rate, and tell the costs how verification went (their calibration of P̂ and the yield of
 * drafting). Until the costs are calibrated, h = fallbackThreshold.
 *
 * Drafting costs draft steps even when it proposes nothing. Where drafted rounds have recently
 * yielded fewer tokens per ms than the target alone (hardware where speculation cannot pay),
 * the auto rule skips drafting for 1, then 2, 4, … (at most MAX_SKIPPED) rounds between drafted
 * ones, so decoding costs what target-only costs; a single round that proposes nothing (an
 * unpromising context) does not stop drafting where it pays.
 */
const MAX_SKIPPED = 16;

export class SpecDecPlusPlusPolicy implements CandidateLengthPolicy {
  readonly name = "specdec++";
  private survivals: number[] = [];
  /** The auto rule's P̂ per candidate before recalibration (what the calibration learns from). */
  private uncalibrated: number[] = [];
  lastPrediction?: number;
  /** Consecutive drafted rounds after which drafting did not pay; rounds still to skip; this round skipped. */
  private unpaidRounds = 0;
  private toSkip = 0;
  private skipping = false;

  constructor(
    private readonly predictor: AcceptancePredictor,
    private readonly threshold: number | RoundCosts,
    private readonly minCandidates: number,
    private readonly maxCandidates: number,
    private readonly regime: SamplingRegime = "sampled",
    private readonly fallbackThreshold = 0.7,
  ) {}

  begin(): void {
    this.survivals = [];
    this.uncalibrated = [];
  }

  private get calibration(): AcceptanceCalibration | null {
    return typeof this.threshold === "number" ? null : this.threshold.acceptanceCalibration[this.regime];
  }

  decide(k: number, features: DraftFeatures): PolicyDecision {
    const raw = this.predictor.predict(features);
    this.lastPrediction = raw;
    // The authors' threshold h was tuned on their (pessimistic, w = 6) P̂ as it is; the
    // cost-aware rule needs acceptance chances: it undoes the predictor's rejection weight and
    // recalibrates what remains against verification's labels.
    let p = raw;
    const calibration = this.calibration;
    if (calibration) {
      const unweighted = unweightedAcceptance(raw, this.predictor.rejectionWeight);
      this.uncalibrated.push(unweighted);
      p = calibration.apply(unweighted);
    }
    this.survivals.push((this.survivals.at(-1) ?? 1) * p);
    if (typeof this.threshold !== "number") {
      const decision = this.threshold.decide(k, this.survivals, p, this.maxCandidates);
      if (decision !== null) return k >= this.maxCandidates && decision === "continue" ? "stop" : decision;
    }
    if (k >= this.maxCandidates) return "stop";
    const h = typeof this.threshold === "number" ? this.threshold : this.fallbackThreshold;
    if (k >= this.minCandidates && 1 - this.survivals[k - 1] > h) return "stop";
    return "continue";
  }

  skipRound(): boolean {
    this.skipping = typeof this.threshold !== "number" && this.toSkip > 0;
    if (this.skipping) this.toSkip--;
    return this.skipping;
  }

  propose(drafted: number): number {
    if (typeof this.threshold === "number") return drafted;
    // The cost-aware rule, like its stopping decisions, is not bound by minCandidates.
    return this.threshold.bestPrefix(this.survivals.slice(0, drafted)) ?? drafted;
  }

  end(proposed: number, accepted: number, acceptance: readonly number[]): void {
    const calibration = this.calibration;
    if (typeof this.threshold === "number" || !calibration) return;
    for (let i = 0; i < proposed; i++) calibration.observe(this.uncalibrated[i], acceptance[i]);
    if (proposed === 0) calibration.relax();
    if (this.skipping) return;
    this.threshold.observeDraftedRound(this.regime, this.survivals.length, proposed, accepted + 1);
    if (this.threshold.draftingPays(this.regime)) {
      this.unpaidRounds = 0;
      return;
    }
    this.toSkip = Math.min(MAX_SKIPPED, 2 ** this.unpaidRounds++);
  }
}
