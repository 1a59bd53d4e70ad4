// One stats object per speculative pipeline, read by responses, logs, /metrics and benchmarks.
// Names follow vLLM's spec_decode_* counters.
import type { TextSource } from "./text-proposals.js";

/** Who proposed a round's candidates: the draft model, or text. */
export type CandidateSource = "draft" | TextSource;
export const CANDIDATE_SOURCES: readonly CandidateSource[] = ["draft", "lookup", "prediction"];

export class SpeculativeStats {
  /** Verification rounds that proposed at least one token. */
  drafts = 0;
  draftTokens = 0;
  acceptedTokens = 0;
  /** acceptedPerPosition[i]: rounds whose token at position i+1 was accepted. */
  readonly acceptedPerPosition: number[] = [];
  /** Target forward passes (verification batches, including rounds with no candidate). */
  targetCalls = 0;
  /** Verification rounds by mode (rejection sampling, coupled keyed noise). */
  readonly rounds: Record<"rejection" | "coupled", number> = { rejection: 0, coupled: 0 };
  /** Positions a candidate-length policy declined before drawing their candidate (the round ended there). */
  declinedBeforeDraw = 0;
  /** Rounds the candidate-length policy skipped drafting for (target-only rounds; the SpecDec++ rule's back-off where drafting does not pay). */
  skippedRounds = 0;
  /** Candidates a grammar forced (proposed without the draft; counted in draftTokens too). */
  forcedTokens = 0;
  /** Candidates proposed and accepted by proposer: the draft (with a grammar's forced tokens), or text (counted in draftTokens too). */
  readonly bySource: Record<CandidateSource, { proposed: number; accepted: number }> = {
    draft: { proposed: 0, accepted: 0 },
    lookup: { proposed: 0, accepted: 0 },
    prediction: { proposed: 0, accepted: 0 },
  };

  recordDeclined(): void {
    this.declinedBeforeDraw++;
  }

  recordSkipped(): void {
    this.skippedRounds++;
  }

  recordRound(drafted: number, accepted: number, verification: "rejection" | "coupled" = "rejection", forced = 0, source: CandidateSource = "draft"): void {
    this.targetCalls++;
    this.forcedTokens += forced;
    this.rounds[verification]++;
    if (drafted === 0) return;
    this.bySource[source].proposed += drafted;
    this.bySource[source].accepted += accepted;
    this.drafts++;
    this.draftTokens += drafted;
    this.acceptedTokens += accepted;
    for (let i = 0; i < accepted; i++) this.acceptedPerPosition[i] = (this.acceptedPerPosition[i] ?? 0) + 1;
  }

  merge(other: SpeculativeStats): void {
    this.drafts += other.drafts;
    this.draftTokens += other.draftTokens;
    this.acceptedTokens += other.acceptedTokens;
    this.targetCalls += other.targetCalls;
    this.rounds.rejection += other.rounds.rejection;
    this.rounds.coupled += other.rounds.coupled;
    this.declinedBeforeDraw += other.declinedBeforeDraw;
    this.skippedRounds += other.skippedRounds;
    this.forcedTokens += other.forcedTokens;
    for (const source of CANDIDATE_SOURCES) {
      this.bySource[source].proposed += other.bySource[source].proposed;
      this.bySource[source].accepted += other.bySource[source].accepted;
    }
    other.acceptedPerPosition.forEach((n, i) => (this.acceptedPerPosition[i] = (this.acceptedPerPosition[i] ?? 0) + n));
  }

  get acceptanceRate(): number {
    return this.draftTokens === 0 ? 0 : this.acceptedTokens / this.draftTokens;
  }
  /** Candidates per target call, rounds without any candidate included. */
  get meanCandidateLength(): number {
    return this.targetCalls === 0 ? 0 : this.draftTokens / this.targetCalls;
  }
}
