// What a speculative round costs on this machine, and the candidate length those costs favour.
//
// A draft step costs c; a target pass over n tokens costs T(n). On a GPU, T(n) is nearly flat
// for small n (weights are read once for the whole batch); on a CPU verification is
// compute-bound and T grows with n — measured here, T(2) ≈ 2.2–2.5·T(1), T(8) ≈ 3.9–4.7·T(1) — so
// whether and how far to speculate depends on the hardware. The table of T(n) is measured at
// load (calibrate) and kept current from the rounds themselves.
//
// Cost-aware stopping (SpecDec++'s rule with its threshold derived from the costs): after k
// candidates with predicted survival S_i = Π_{j≤i} P̂_j, a round that stops at k' yields
// E(k') = 1 + Σ_{i≤k'} S_i tokens for k'·c + T(k'+1) ms (future S extrapolated with the last P̂).
// Keep drafting while some longer round has a better expected rate; propose nothing when no
// round beats target-only decoding (1 token per T(1)). Once drafting ends, the drafting is paid
// for: propose the prefix j ≤ k with the best E(j) / T(j + 1) — on a CPU, where T(2) can be
// 2.5·T(1), a short unconfident candidate is better withdrawn than verified.
//
// The margins are thin on such hardware, so a predictor that is over-confident by a few
// points turns a gain into a loss. The rule therefore scales predicted accepted tokens by how
// many verification actually accepted, per predicted one, over recent drafted rounds
// (`calibration`). Rounds that draft nothing teach it nothing; during them it drifts back
// towards 1, so drafting is tried again now and then.

const EMA = 0.05;
/** Weight of one drafted round in the calibration (about the last 50 rounds count). */
const CALIBRATION_EMA = 0.02;
/**
 * Per undrafted round, how far the calibration drifts back towards 1. Far below the weight of a
 * drafted round: where most rounds draft nothing, a faster drift would outweigh the evidence
 * and keep an over-confident predictor's calibration near 1 (seen: 0.005 did).
 */
const CALIBRATION_DRIFT = 0.0002;

/**
 * One EMA step towards a new timing, clipped to twice the estimate: a garbage-collection pause
 * or a busy neighbour must not inflate T(1) (which made speculation look better than it is).
 */
function follow(estimate: number, ms: number): number {
  return estimate + EMA * (Math.min(ms, 2 * estimate) - estimate);
}

export class RoundCosts {
  private draftStep: number | null = null;
  /** passMs[n]: ms for a target pass over n tokens (index 0 unused). */
  private readonly passMs: Array<number | undefined> = [];
  /** Recent drafted rounds: mean predicted accepted candidates (Σ S_i) and mean accepted. */
  private predictedAccepted = 1;
  private realizedAccepted = 1;

  observeDraftStep(ms: number): void {
    this.draftStep = this.draftStep === null ? ms : follow(this.draftStep, ms);
  }

  observeTargetPass(tokens: number, ms: number): void {
    const known = this.passMs[tokens];
    this.passMs[tokens] = known === undefined ? ms : follow(known, ms);
  }

  /** Measures draft steps and target passes of sizes up to maxTokens before serving. */
  async calibrate(draftStep: () => Promise<number>, targetPass: (tokens: number) => Promise<number>, maxTokens: number, repeats = 3): Promise<void> {
    const median = (xs: number[]) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)];
    const steps: number[] = [];
    for (let i = 0; i < repeats * 3; i++) steps.push(await draftStep());
    this.draftStep = median(steps);
    const sizes = [1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 24, 32, 48, 64].filter((n) => n < maxTokens);
    for (const n of [...sizes, maxTokens]) {
      const passes: number[] = [];
      for (let i = 0; i < repeats; i++) passes.push(await targetPass(n));
      this.passMs[n] = median(passes);
    }
  }

  /** A verified round: the accepted candidates the predictor expected (Σ S_i over those proposed) and those accepted. */
  observeRound(predicted: number, accepted: number): void {
    this.predictedAccepted += CALIBRATION_EMA * (predicted - this.predictedAccepted);
    this.realizedAccepted += CALIBRATION_EMA * (accepted - this.realizedAccepted);
  }

  /** A round that proposed nothing. */
  observeUndraftedRound(): void {
    this.realizedAccepted += CALIBRATION_DRIFT * (this.predictedAccepted - this.realizedAccepted);
  }

  /** Accepted candidates per predicted one, recently (1: the predictor is calibrated). */
  get calibration(): number {
    return Math.min(2, Math.max(0.1, this.realizedAccepted / this.predictedAccepted));
  }

  /** A candidate's chance of being accepted given its predicted survival S, calibrated. */
  private expectedAccepted(): (survival: number) => number {
    const r = this.calibration;
    return (survival) => Math.min(1, r * survival);
  }

  get calibrated(): boolean {
    return this.draftStep !== null && this.passMs[1] !== undefined;
  }

  /** T(n), interpolated between the sizes measured (extended linearly past the largest). */
  targetPass(n: number): number {
    const known = this.passMs.flatMap((ms, size) => (ms === undefined ? [] : [[size, ms] as const]));
    if (known.length === 0) return NaN;
    const above = known.findIndex(([size]) => size >= n);
    if (above === 0) return known[0][1];
    const [lo, hi] = above > 0 ? [known[above - 1], known[above]] : [known.at(-2) ?? known[0], known.at(-1)!];
    if (hi[0] === lo[0]) return hi[1];
    return lo[1] + ((hi[1] - lo[1]) * (n - lo[0])) / (hi[0] - lo[0]);
  }

  /**
   * After k candidates with survivals S_1..S_k (S_k last) and last prediction p, whether to
   * draft another, stop, or withdraw the candidates (k = 1 only) because no round length beats
   * target-only decoding. Null while uncalibrated.
   */
  decide(k: number, survivals: readonly number[], p: number, maxCandidates: number): "continue" | "stop" | "drop-and-stop" | null {
    if (!this.calibrated) return null;
    const c = this.draftStep!;
    const expected = this.expectedAccepted();
    let tokens = 1 + survivals.reduce((a, s) => a + expected(s), 0);
    let survival = survivals[survivals.length - 1];
    const rateAt = (length: number, expected: number) => expected / (length * c + this.targetPass(length + 1));
    const now = rateAt(k, tokens);
    let best = now;
    for (let length = k + 1; length <= maxCandidates; length++) {
      survival *= p;
      tokens += expected(survival);
      best = Math.max(best, rateAt(length, tokens));
    }
    if (k === 1 && best < 1 / this.targetPass(1)) return "drop-and-stop";
    return best > now ? "continue" : "stop";
  }

  /**
   * Drafting is over (its cost is spent): how many of the drafted candidates, with survivals
   * S_1..S_k, to propose — the prefix with the best expected tokens per ms of verification.
   * Null while uncalibrated.
   */
  bestPrefix(survivals: readonly number[]): number | null {
    if (!this.calibrated) return null;
    const expected = this.expectedAccepted();
    let best = 0;
    let bestRate = 1 / this.targetPass(1);
    let tokens = 1;
    survivals.forEach((s, i) => {
      tokens += expected(s);
      const rate = tokens / this.targetPass(i + 2);
      if (rate > bestRate) [best, bestRate] = [i + 1, rate];
    });
    return best;
  }

  describe(): { draftStepMs: number | null; targetPassMs: Record<number, number> } {
    return {
      draftStepMs: this.draftStep,
      targetPassMs: Object.fromEntries(this.passMs.flatMap((ms, n) => (ms === undefined ? [] : [[n, Math.round(ms * 1000) / 1000]]))),
    };
  }
}
