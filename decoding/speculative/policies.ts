// Candidate-length policies: after each drafted token, whether to keep it and whether to draft
// another. One interface for fixed K, the draft-confidence threshold used by llama.cpp and
// node-llama-cpp, and SpecDec++.
import type { AcceptancePredictor } from "./predictors.js";
import type { RoundCosts } from "./costs.js";
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
  /** The round was verified: `proposed` candidates (0 when skipped), `accepted` of them accepted. */
  end?(proposed: number, accepted: number): void;
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
 * rate, and tell the costs how verification went (their calibration of P̂). Until the costs
 * are calibrated, h = fallbackThreshold.
 *
 * A round that proposes nothing still paid for a draft step (on a CPU about a tenth of a target
 * step). So after such a round the auto rule skips drafting for 1, then 2, 4, … (at most
 * MAX_SKIPPED) rounds while proposals stay empty, and drafts every round again after one that
 * proposes something: where speculation cannot pay, decoding costs what target-only costs.
 */
const MAX_SKIPPED = 16;

export class SpecDecPlusPlusPolicy implements CandidateLengthPolicy {
  readonly name = "specdec++";
  private survivals: number[] = [];
  lastPrediction?: number;
  /** Consecutive drafted rounds that proposed nothing; rounds still to skip; this round skipped. */
  private emptyRounds = 0;
  private toSkip = 0;
  private skipping = false;

  constructor(
    private readonly predictor: AcceptancePredictor,
    private readonly threshold: number | RoundCosts,
    private readonly minCandidates: number,
    private readonly maxCandidates: number,
    private readonly fallbackThreshold = 0.7,
  ) {}

  begin(): void {
    this.survivals = [];
  }

  decide(k: number, features: DraftFeatures): PolicyDecision {
    const p = this.predictor.predict(features);
    this.lastPrediction = p;
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

  end(proposed: number, accepted: number): void {
    if (typeof this.threshold === "number") return;
    if (proposed > 0) {
      this.threshold.observeRound(this.survivals.slice(0, proposed).reduce((a, b) => a + b, 0), accepted);
      this.emptyRounds = 0;
      return;
    }
    this.threshold.observeUndraftedRound();
    if (!this.skipping) this.toSkip = Math.min(MAX_SKIPPED, 2 ** this.emptyRounds++);
  }
}
