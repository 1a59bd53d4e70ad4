// Speculative settings: per model in the server config, overridable per request.
import type { RoundCosts, SamplingRegime } from "./costs.js";
import type { VerificationMode } from "./verifier.js";
import { ConfidencePolicy, type CandidateLengthPolicy, FixedLengthPolicy, SpecDecPlusPlusPolicy } from "./policies.js";
import type { AcceptancePredictor } from "./predictors.js";

export interface SpeculativeSettings {
  policy: "specdec++" | "fixed" | "confidence";
  k: number;
  /** SpecDec++'s h, or "auto": derived from measured round costs (costs.ts). */
  threshold: number | "auto";
  pMin: number;
  minCandidates: number;
  maxCandidates: number;
  /** How requests without a seed are verified (seeded ones are coupled unless a request says otherwise). */
  verification: VerificationMode;
}

/** What a request may change (under the `flock.speculative` extension key). */
export type SpeculativeOverrides = Partial<SpeculativeSettings> & {
  enabled?: boolean;
  /** Report how every token came to be (SpeculativeRound.detail); off, nothing extra is computed. */
  detail?: boolean;
};

/** How a request is verified: what it asked for; else coupled with keyed noise (a seed), the model's setting without. */
export function verificationFor(settings: SpeculativeSettings, overrides: SpeculativeOverrides, keyedNoise: boolean): VerificationMode {
  return overrides.verification ?? (keyedNoise ? "coupled" : settings.verification);
}

/** Which calibration of P̂ applies: greedy acceptance, rejection sampling's or coupled noise's. */
export function samplingRegime(temperature: number, verification: VerificationMode): SamplingRegime {
  return temperature === 0 ? "greedy" : verification === "coupled" ? "coupled" : "sampled";
}

export function buildPolicy(settings: SpeculativeSettings, predictor: AcceptancePredictor, costs: RoundCosts, regime: SamplingRegime): CandidateLengthPolicy {
  switch (settings.policy) {
    case "fixed":
      return new FixedLengthPolicy(settings.k);
    case "confidence":
      return new ConfidencePolicy(settings.pMin, settings.maxCandidates);
    case "specdec++":
      return new SpecDecPlusPlusPolicy(predictor, settings.threshold === "auto" ? costs : settings.threshold, settings.minCandidates, settings.maxCandidates, regime);
  }
}

/** The most candidates a round can hold under these settings. */
export function candidateCap(settings: SpeculativeSettings): number {
  return settings.policy === "fixed" ? settings.k : settings.maxCandidates;
}
