// How a request's speculative settings become a policy and a verification (config.ts declares them).
import type { AcceptanceCalibrations } from "./calibration.js";
import type { RoundCosts, SamplingRegime } from "./costs.js";
import type { VerificationMode } from "./verifier.js";
import { ConfidencePolicy, type CandidateLengthPolicy, CostAwareSpecDecPolicy, FixedLengthPolicy, SpecDecPlusPlusPolicy } from "./policies.js";
import type { AcceptancePredictor } from "./predictors.js";
import type { SpeculativeOverrides, SpeculativeSettings } from "./config.js";

/** How a request is verified: what it asked for; else coupled with keyed noise (a seed), the model's setting without. */
export function verificationFor(settings: SpeculativeSettings, overrides: SpeculativeOverrides, keyedNoise: boolean): VerificationMode {
  return overrides.verification ?? (keyedNoise ? "coupled" : settings.verification);
}

/** Which calibration of P̂ applies: greedy acceptance, rejection sampling's or coupled noise's. */
export function samplingRegime(temperature: number, verification: VerificationMode): SamplingRegime {
  return temperature === 0 ? "greedy" : verification === "coupled" ? "coupled" : "sampled";
}

export function buildPolicy(
  settings: SpeculativeSettings,
  predictor: AcceptancePredictor,
  costs: RoundCosts,
  calibrations: AcceptanceCalibrations,
  regime: SamplingRegime,
): CandidateLengthPolicy {
  switch (settings.policy) {
    case "fixed":
      return new FixedLengthPolicy(settings.k);
    case "confidence":
      return new ConfidencePolicy(settings.pMin, settings.maxCandidates);
    case "specdec++":
      return settings.threshold === "auto"
        ? new CostAwareSpecDecPolicy(predictor, costs, settings.minCandidates, settings.maxCandidates, { regime, calibrations })
        : new SpecDecPlusPlusPolicy(predictor, settings.threshold, settings.minCandidates, settings.maxCandidates);
  }
}

/** The most candidates a round can hold under these settings. */
export function candidateCap(settings: SpeculativeSettings): number {
  return settings.policy === "fixed" ? settings.k : settings.maxCandidates;
}
