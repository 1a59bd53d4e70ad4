// What a speculative round costs on this machine, and the candidate length those costs favour.
//
// A draft step costs c; a target pass over n tokens costs T(n). Where a pass is bound by reading
// the weights (a GPU; a CPU with a large model) T(n) is nearly flat for small n; where it is
// bound by arithmetic (a CPU with a small model) T grows with n — T(2) ≈ 3·T(1) was measured
// here with a small q8_0 target — so whether and how far to speculate depends on the hardware.
// The table of T(n) is measured at load (calibrate) and kept current from the rounds themselves.
//
// Cost-aware stopping (SpecDec++'s rule with its threshold derived from the costs): with
// predicted survivals S_i = Π_{j≤i} P̂_j, a round that proposes k' candidates yields
// E(k') = 1 + Σ_{i≤k'} S_i tokens for k'·c + T(k'+1) ms (the first draft step catches the draft
// up; future S extrapolated with the latest P̂). Before position k is drawn, draft it if some
// round of k or more candidates has a better expected rate than ending at k − 1, judging P̂_k
// by its expectation under the draft's distribution there; after the draw, take the step
// towards k + 1 if some longer round beats ending at k. At k = 1 "ending" is target-only
// decoding. No drawn candidate is ever withdrawn (policies.ts says why).
//
// The rule needs P̂ to be a probability, and predictors are not always calibrated where they
// serve: the authors' head is trained on sampled rollouts, but under greedy decoding acceptance
// is 0 or 1; an online predictor can be over-confident by a few points, which on thin margins
// turns gains into losses. So P̂ is recalibrated per token, online, from verification's labels
// (calibration.ts).

/**
 * Greedy decoding (temperature 0), sampling verified by rejection sampling, or sampling verified
 * by coupled noise: for the same P̂ their acceptance differs.
 */
export type SamplingRegime = "greedy" | "sampled" | "coupled";

const EMA = 0.05;

/**
 * One EMA step towards a new timing, clipped to twice the estimate: a garbage-collection pause
 * or a busy neighbour must not inflate T(1) (which made speculation look better than it is).
 */
function follow(estimate: number, ms: number): number {
  return estimate + EMA * (Math.min(ms, 2 * estimate) - estimate);
}


/** Weight of one drafted round in the recent yield of drafting (about the last 20 count). */
const YIELD_EMA = 0.05;
/** Text rounds in a row after which the draft gets a round (its yield may have changed). */
const STALE_AFTER = 64;


export class RoundCosts {
  private draftStep: number | null = null;
  /** passMs[n]: ms for a target pass over n tokens (index 0 unused). */
  private readonly passMs: Array<number | undefined> = [];
  /** The measured sizes as [n, ms], ascending (rebuilt when a size is added, updated in place; read per decision). */
  private measured: Array<[number, number]> = [];
  /** Recent drafted rounds per regime: mean emitted tokens and mean modelled ms. */
  private readonly draftedYield: Record<SamplingRegime, { tokens: number; ms: number } | null> = { greedy: null, sampled: null, coupled: null };
  /** Rounds text proposed since the last drafted round, per regime. */
  private readonly textRoundsInARow: Record<SamplingRegime, number> = { greedy: 0, sampled: 0, coupled: 0 };

  observeDraftStep(ms: number): void {
    this.draftStep = this.draftStep === null ? ms : follow(this.draftStep, ms);
  }

  observeTargetPass(tokens: number, ms: number): void {
    const known = this.passMs[tokens];
    this.passMs[tokens] = known === undefined ? ms : follow(known, ms);
    if (known === undefined) this.indexPasses();
    else this.measured.find(([size]) => size === tokens)![1] = this.passMs[tokens]!;
  }

  /**
   * Measures draft steps and target passes of sizes up to maxTokens before serving. A pass size
   * keeps the fastest of its repeats: a slow one is the machine's noise (a busy neighbour), and
   * an overestimate would last — the rule avoids sizes it believes slow, so rounds would never
   * measure them again — while an underestimate is corrected by the rounds it attracts.
   */
  async calibrate(draftStep: (() => Promise<number>) | null, targetPass: (tokens: number) => Promise<number>, maxTokens: number, repeats = 5): Promise<void> {
    // Without a draft (text proposals only) there is no draft step to time.
    if (draftStep) {
      const steps: number[] = [];
      for (let i = 0; i < repeats * 3; i++) steps.push(await draftStep());
      this.draftStep = steps.sort((a, b) => a - b)[Math.floor(steps.length / 2)];
    }
    const sizes = [1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 24, 32, 48, 64].filter((n) => n < maxTokens);
    for (const n of [...sizes, maxTokens]) {
      let fastest = Infinity;
      for (let i = 0; i < repeats; i++) fastest = Math.min(fastest, await targetPass(n));
      this.passMs[n] = fastest;
    }
    this.indexPasses();
  }

  private indexPasses(): void {
    this.measured = this.passMs.flatMap((ms, size) => (ms === undefined ? [] : [[size, ms] as [number, number]]));
  }

  /**
   * A drafted round (skipped rounds are not counted): `drafted` draft steps, `proposed`
   * candidates verified, `emitted` tokens. Its cost is taken from the table, not the clock.
   */
  observeDraftedRound(regime: SamplingRegime, drafted: number, proposed: number, emitted: number): void {
    this.textRoundsInARow[regime] = 0;
    if (!this.calibrated) return;
    const ms = drafted * this.draftStep! + this.targetPass(proposed + 1);
    const known = this.draftedYield[regime];
    this.draftedYield[regime] = known
      ? { tokens: known.tokens + YIELD_EMA * (emitted - known.tokens), ms: known.ms + YIELD_EMA * (ms - known.ms) }
      : { tokens: emitted, ms };
  }

  /**
   * Tokens per ms that recent drafted rounds yielded, by the cost table: what a text proposal
   * must beat to take a round from the draft. Null before any drafted round.
   */
  draftedRate(regime: SamplingRegime): number | null {
    const known = this.draftedYield[regime];
    return known === null ? null : known.tokens / known.ms;
  }

  /** Whether the draft is due a round: text has had STALE_AFTER in a row, and the draft's yield may have changed. */
  draftDue(regime: SamplingRegime): boolean {
    return this.textRoundsInARow[regime] >= STALE_AFTER;
  }

  /** A round that text proposed (a prediction, lookup) in place of the draft. */
  observeTextRound(regime: SamplingRegime): void {
    this.textRoundsInARow[regime]++;
  }

  /** Whether drafted rounds have recently yielded more tokens per ms than the target alone. */
  draftingPays(regime: SamplingRegime): boolean {
    const known = this.draftedYield[regime];
    return !this.calibrated || known === null || known.tokens / known.ms > 1 / this.targetPass(1);
  }

  get calibrated(): boolean {
    return this.draftStep !== null && this.passMs[1] !== undefined;
  }

  /** T(n), interpolated between the sizes measured (extended linearly past the largest). */
  targetPass(n: number): number {
    const known = this.measured;
    if (known.length === 0) return NaN;
    const above = known.findIndex(([size]) => size >= n);
    if (above === 0) return known[0][1];
    const [lo, hi] = above > 0 ? [known[above - 1], known[above]] : [known.at(-2) ?? known[0], known.at(-1)!];
    if (hi[0] === lo[0]) return hi[1];
    return lo[1] + ((hi[1] - lo[1]) * (n - lo[0])) / (hi[0] - lo[0]);
  }

  /**
   * How many of a text proposal's candidates to propose (text-proposals.ts), from each one's
   * chance given those before it: the length whose round — T(length + 1) ms, nothing to draft,
   * for 1 + Σ S_i expected tokens — has the best rate, 0 (the target alone) included; and that
   * rate. All of them, at an unknown rate, while T(1) is unmeasured.
   */
  textRound(chances: readonly number[]): { length: number; rate: number } {
    if (this.passMs[1] === undefined) return { length: chances.length, rate: Infinity };
    let best = { length: 0, rate: 1 / this.targetPass(1) };
    let survival = 1;
    let tokens = 1;
    chances.forEach((p, i) => {
      survival *= p;
      tokens += survival;
      const rate = tokens / this.targetPass(i + 2);
      if (rate > best.rate) best = { length: i + 1, rate };
    });
    return best;
  }

  /** Expected tokens per ms of a round proposing `length` candidates that yield `expected` tokens. */
  private rate(length: number, expected: number): number {
    return expected / (length * this.draftStep! + this.targetPass(length + 1));
  }

  /** The best expected rate of rounds of `from` to `maxCandidates` candidates, S extrapolated from `survival` with p. */
  private bestFrom(from: number, tokens: number, survival: number, p: number, maxCandidates: number): number {
    let best = -Infinity;
    for (let length = from; length <= maxCandidates; length++) {
      survival *= p;
      tokens += survival;
      best = Math.max(best, this.rate(length, tokens));
    }
    return best;
  }

  /**
   * Before position k is drawn, with survivals S_1..S_{k−1} of the candidates drawn so far and
   * p̄ the position's expected acceptance: whether drafting it (and perhaps more) promises a
   * better rate than ending the round at k − 1 (at k = 1: than target-only decoding). Past the
   * first position the draft step that produced q_k is already paid: ending now costs k steps,
   * not k − 1, and leaves that step unused.
   */
  draftPosition(k: number, survivals: readonly number[], expected: number, maxCandidates: number): "draft" | "stop" {
    const tokens = 1 + survivals.reduce((a, s) => a + s, 0);
    const ending = k === 1 ? 1 / this.targetPass(1) : tokens / (k * this.draftStep! + this.targetPass(k));
    return this.bestFrom(k, tokens, survivals.at(-1) ?? 1, expected, maxCandidates) > ending ? "draft" : "stop";
  }

  /**
   * After the k-th candidate was drawn, with survivals S_1..S_k and its acceptance p: whether a
   * longer round (S extrapolated with p) promises a better rate than ending at k.
   */
  draftAnother(k: number, survivals: readonly number[], p: number, maxCandidates: number): "continue" | "stop" {
    const tokens = 1 + survivals.reduce((a, s) => a + s, 0);
    return this.bestFrom(k + 1, tokens, survivals[survivals.length - 1], p, maxCandidates) > this.rate(k, tokens) ? "continue" : "stop";
  }

  describe(): { draftStepMs: number | null; targetPassMs: Record<number, number> } {
    return {
      draftStepMs: this.draftStep,
      targetPassMs: Object.fromEntries(this.passMs.flatMap((ms, n) => (ms === undefined ? [] : [[n, Math.round(ms * 1000) / 1000]]))),
    };
  }
}
