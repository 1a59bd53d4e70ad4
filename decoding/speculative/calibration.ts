// P̂'s recalibration against verification's labels, one per sampling regime: the cost-aware
// rule (policies.ts, costs.ts) needs P̂ to be a probability, and predictors are not always
// calibrated where they serve (costs.ts says why).
import type { SamplingRegime } from "./costs.js";
import { sigmoid } from "./predictors.js";

const logit = (p: number) => {
  const q = Math.min(1 - 1e-4, Math.max(1e-4, p));
  return Math.log(q / (1 - q));
};

/** Step size of the calibration's gradient steps (per verified candidate). */
const CALIBRATION_RATE = 0.01;
/**
 * Per round that proposes nothing, how far the calibration relaxes towards the identity: such
 * rounds teach it nothing, and a calibration that stays pessimistic would never propose (and
 * learn) again. Far weaker than the evidence of a drafted round.
 */
const CALIBRATION_DRIFT = 0.0005;
/** How fast the mean first-position P̂ follows new rounds, and drifts up in rounds that propose nothing. */
const FIRST_PREDICTION_RATE = 0.1;
const FIRST_PREDICTION_DRIFT = 0.005;
/** Empty rounds in a row after which a declined first position is drafted anyway. */
const EXPLORE_AFTER = 16;

/**
 * Platt scaling of P̂, fitted online to the soft labels min(1, p(y)/q(y)) that verification
 * gives every proposed candidate (unweighted log loss): P̃ = σ(a·logit(P̂) + b). It keeps the
 * predictor's ranking and fixes its scale and steepness — which a correction of expected
 * accepted tokens per round could not. Starts as the identity.
 */
export class AcceptanceCalibration {
  private a = 1;
  private b = 0;
  /**
   * The mean raw P̂ of recent first candidates: the pre-draw guess at position 1 for predictors
   * without an expectation under q. Starts optimistic, so that drafting is tried.
   */
  firstPrediction = 0.9;
  /** Rounds in a row that proposed nothing. */
  private emptyRounds = 0;

  observeFirstPrediction(raw: number): void {
    this.firstPrediction += FIRST_PREDICTION_RATE * (raw - this.firstPrediction);
  }

  /**
   * Whether to draft a first position the rule declined: after EXPLORE_AFTER empty rounds in a
   * row one is drafted anyway, since only proposed candidates bring the labels that could
   * correct a pessimistic P̂ (an untrained predictor's prior in a spread distribution). Decided
   * before the draw, like any decision to draft.
   */
  get explore(): boolean {
    return this.emptyRounds >= EXPLORE_AFTER;
  }

  observeRound(proposed: number): void {
    this.emptyRounds = proposed > 0 ? 0 : this.emptyRounds + 1;
  }

  apply(p: number): number {
    return sigmoid(this.a * logit(p) + this.b);
  }

  observe(p: number, label: number): void {
    const x = logit(p);
    const gradient = sigmoid(this.a * x + this.b) - label;
    this.a = Math.min(10, Math.max(0.1, this.a - CALIBRATION_RATE * gradient * x));
    this.b = Math.min(10, Math.max(-10, this.b - CALIBRATION_RATE * gradient));
  }

  relax(): void {
    this.a += CALIBRATION_DRIFT * (1 - this.a);
    this.b += CALIBRATION_DRIFT * (0 - this.b);
    // The guess at position 1 too drifts up, or a pessimistic one would never be revised.
    this.firstPrediction += FIRST_PREDICTION_DRIFT * (1 - this.firstPrediction);
  }

  describe(): { slope: number; offset: number } {
    return { slope: this.a, offset: this.b };
  }
}

/**
 * One calibration per sampling regime: for the same P̂, greedy acceptance (argmax agreement) and
 * sampled acceptance differ. A speculative model keeps one set across its requests.
 */
export type AcceptanceCalibrations = Record<SamplingRegime, AcceptanceCalibration>;

export function acceptanceCalibrations(): AcceptanceCalibrations {
  return { greedy: new AcceptanceCalibration(), sampled: new AcceptanceCalibration(), coupled: new AcceptanceCalibration() };
}
