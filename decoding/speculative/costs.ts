// What a speculative round costs on this machine, and the candidate length those costs favour.
//
// A draft step costs c; a target pass over n tokens costs T(n). On a GPU, T(n) is nearly flat
// for small n (weights are read once for the whole batch); on a CPU verification is
// compute-bound and T grows with n — measured here, T(2) ≈ 1.9·T(1) and T(8) ≈ 3.3·T(1) — so
// whether and how far to speculate depends on the hardware. The table of T(n) is measured at
// load (calibrate) and kept current from the rounds themselves.
//
// Cost-aware stopping (SpecDec++'s rule with its threshold derived from the costs): after k
// candidates with predicted survival S_i = Π_{j≤i} P̂_j, a round that stops at k' yields
// E(k') = 1 + Σ_{i≤k'} S_i tokens for k'·c + T(k'+1) ms (future S extrapolated with the last P̂).
// Keep drafting while some longer round has a better expected rate; propose nothing when no
// round beats target-only decoding (1 token per T(1)).

const EMA = 0.05;

export class RoundCosts {
  private draftStep: number | null = null;
  /** passMs[n]: ms for a target pass over n tokens (index 0 unused). */
  private readonly passMs: Array<number | undefined> = [];

  observeDraftStep(ms: number): void {
    this.draftStep = this.draftStep === null ? ms : this.draftStep + EMA * (ms - this.draftStep);
  }

  observeTargetPass(tokens: number, ms: number): void {
    const known = this.passMs[tokens];
    this.passMs[tokens] = known === undefined ? ms : known + EMA * (ms - known);
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
    let tokens = 1 + survivals.reduce((a, b) => a + b, 0);
    let survival = survivals[survivals.length - 1];
    const rateAt = (length: number, expected: number) => expected / (length * c + this.targetPass(length + 1));
    const now = rateAt(k, tokens);
    let best = now;
    for (let length = k + 1; length <= maxCandidates; length++) {
      survival *= p;
      tokens += survival;
      best = Math.max(best, rateAt(length, tokens));
    }
    if (k === 1 && best < 1 / this.targetPass(1)) return "drop-and-stop";
    return best > now ? "continue" : "stop";
  }

  describe(): { draftStepMs: number | null; targetPassMs: Record<number, number> } {
    return {
      draftStepMs: this.draftStep,
      targetPassMs: Object.fromEntries(this.passMs.flatMap((ms, n) => (ms === undefined ? [] : [[n, Math.round(ms * 1000) / 1000]]))),
    };
  }
}
