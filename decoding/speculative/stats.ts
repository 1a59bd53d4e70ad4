// One stats object per speculative pipeline, read by responses, logs, /metrics and benchmarks.
// Names follow vLLM's spec_decode_* counters.

export class SpeculativeStats {
  /** Verification rounds that proposed at least one token. */
  drafts = 0;
  draftTokens = 0;
  acceptedTokens = 0;
  /** acceptedPerPosition[i]: rounds whose token at position i+1 was accepted. */
  readonly acceptedPerPosition: number[] = [];
  /** Target forward passes (verification batches, including rounds with no candidate). */
  targetCalls = 0;

  recordRound(drafted: number, accepted: number): void {
    this.targetCalls++;
    if (drafted === 0) return;
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
