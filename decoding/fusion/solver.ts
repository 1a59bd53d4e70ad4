// Dynamic logit fusion (weak-to-strong): P̃ = softmax(L_strong + α (L_expert − L_base)), with
// α chosen at every step so that the strong model moves as far from itself as the small expert
// moves from its small base:
//
//   minimise over α:  (KL(P̃‖P) − KL(Q_t‖Q))² + (KL(P‖P̃) − KL(Q‖Q_t))²
//
// with P = softmax(L_strong), Q = softmax(L_base), Q_t = softmax(L_expert). The authors search a
// grid (α ∈ [0, 2], step 0.1) and, with several experts, keep one expert active per step: each
// expert's α is searched with the others at 0 and the best (expert, α) pair wins.
//
// Both KL terms of P̃ have closed forms in D = L_expert − L_base:
//   log P̃ − log P = αD − log Z_α + log Z_0,   Z_α = Σ exp(L_strong + αD),
//   KL(P̃‖P) = α E_P̃[D] − log(Z_α / Z_0),     KL(P‖P̃) = log(Z_α / Z_0) − α E_P[D],
// so each grid point needs only Z_α and E_P̃[D]. With grid points α_k = k·s, the weights
// exp(L_strong + α_k D) follow from one exp per token and a multiplication per grid step.
// Tokens whose every weight on the grid is below e^-40 of the strong model's top token are
// skipped: their share of any sum is under 1e-17 (rigorous bound, not an approximation).

export interface AlphaGrid {
  max: number;
  step: number;
}

export const AUTHORS_GRID: AlphaGrid = { max: 2, step: 0.1 };

export interface FusionChoice {
  /** Index of the active expert, or -1 when α = 0 for every expert. */
  expert: number;
  alpha: number;
  /** The objective at the chosen point. */
  objective: number;
}

/** One expert's grid search: its objective at every grid point. */
export interface ExpertSearch {
  alphas: number[];
  objectives: number[];
  /** KL(Q_t‖Q) + KL(Q‖Q_t): how far the expert moves from its base at this step. */
  movement: number;
}

/**
 * An expert that does not move from its base at a step has nothing to transfer there, and
 * the objective is 0 for it at every α (P̃ = P): taken literally, the authors' "best pair"
 * rule would pick such a silent expert over every expert that does move. flock lets only
 * experts that move compete; when none does, α = 0.
 */
export const SILENT_EXPERT_MOVEMENT = 1e-6;

const PRUNE_LOG_MARGIN = 40;

/**
 * The expert's shift of one token. Logits are finite from llama.cpp; only node-llama-cpp's
 * probabilities fallback yields -Infinity (a probability that underflowed below 1e-45), and a
 * token both small models rule out that way gets no shift.
 */
function shift(expert: Float32Array, base: Float32Array, i: number): number {
  const d = expert[i] - base[i];
  return Number.isFinite(d) ? d : 0;
}

/** softmax(logits) and its log-normaliser, one exp per token. */
function softmaxWithLse(logits: Float32Array): { p: Float64Array; lse: number } {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
  const p = new Float64Array(logits.length);
  let total = 0;
  for (let i = 0; i < logits.length; i++) total += p[i] = Math.exp(logits[i] - max);
  for (let i = 0; i < logits.length; i++) p[i] /= total;
  return { p, lse: max + Math.log(total) };
}

/** KL(A‖B) and KL(B‖A) of softmax(a), softmax(b) in one pass. */
export function klBothWays(a: Float32Array, b: Float32Array): { ab: number; ba: number } {
  const A = softmaxWithLse(a);
  const B = softmaxWithLse(b);
  return klFromSoftmaxes(a, A, b, B);
}

/**
 * KL(A‖B) = Σ p_A (a − b) − (lse_A − lse_B), and symmetrically: only multiply-adds once both
 * softmaxes exist (shifts of tokens both rule out count as 0, see shift()).
 */
function klFromSoftmaxes(a: Float32Array, A: { p: Float64Array; lse: number }, b: Float32Array, B: { p: Float64Array; lse: number }): { ab: number; ba: number } {
  let ab = 0;
  let ba = 0;
  for (let i = 0; i < a.length; i++) {
    const d = a[i] - b[i];
    if (!Number.isFinite(d)) continue;
    ab += A.p[i] * d;
    ba -= B.p[i] * d;
  }
  return { ab: ab - (A.lse - B.lse), ba: ba + (A.lse - B.lse) };
}

/** What every expert's search shares at one step: the strong model's weights, the base's softmax. */
interface SharedStep {
  strong: Float32Array;
  base: Float32Array;
  baseSoftmax: { p: Float64Array; lse: number };
  /** exp(L_strong − max L_strong). */
  strongWeight: Float64Array;
  top: number;
}

function shareStep(strong: Float32Array, base: Float32Array): SharedStep {
  let top = 0;
  for (let i = 1; i < strong.length; i++) if (strong[i] > strong[top]) top = i;
  const strongWeight = new Float64Array(strong.length);
  for (let i = 0; i < strong.length; i++) strongWeight[i] = Math.exp(strong[i] - strong[top]);
  return { strong, base, baseSoftmax: softmaxWithLse(base), strongWeight, top };
}

/** The objective at every grid point for one expert. */
export function searchExpert(strong: Float32Array, base: Float32Array, expert: Float32Array, grid: AlphaGrid = AUTHORS_GRID): ExpertSearch {
  return searchWithShared(shareStep(strong, base), expert, grid);
}

function searchWithShared(shared: SharedStep, expert: Float32Array, grid: AlphaGrid): ExpertSearch {
  const { strong, base, top } = shared;
  const { ab: klExpertBase, ba: klBaseExpert } = klFromSoftmaxes(expert, softmaxWithLse(expert), base, shared.baseSoftmax);
  const steps = Math.round(grid.max / grid.step);
  const alphas = Array.from({ length: steps + 1 }, (_, k) => k * grid.step);

  // Per grid point k: Z_k = Σ w_i f_i^k and Z_k·E[D] = Σ w_i f_i^k d_i, with w_i = exp(L_i − L_top)
  // and f_i = exp(s·d_i): one exp per token, then multiplications, token by token so the
  // 2 × (steps + 1) sums stay in registers/L1. Tokens negligible at every α are skipped.
  const floor = strong[top] + grid.max * Math.min(0, shift(expert, base, top)) - PRUNE_LOG_MARGIN;
  const z = new Float64Array(steps + 1);
  const zd = new Float64Array(steps + 1);
  const weights = shared.strongWeight;
  for (let i = 0; i < strong.length; i++) {
    const d = shift(expert, base, i);
    if (strong[i] + grid.max * (d > 0 ? d : 0) < floor) continue;
    const f = Math.exp(grid.step * d);
    let w = weights[i];
    for (let k = 0; k <= steps; k++) {
      z[k] += w;
      zd[k] += w * d;
      w *= f;
    }
  }
  const meanD0 = zd[0] / z[0];
  const objectives: number[] = [];
  for (let k = 0; k <= steps; k++) {
    const alpha = alphas[k];
    const logRatio = Math.log(z[k] / z[0]);
    const klFusedStrong = alpha * (zd[k] / z[k]) - logRatio;
    const klStrongFused = logRatio - alpha * meanD0;
    objectives.push((klFusedStrong - klExpertBase) ** 2 + (klStrongFused - klBaseExpert) ** 2);
  }
  return { alphas, objectives, movement: klExpertBase + klBaseExpert };
}

/** A compiled implementation of the grid search (engine/native.ts); same results, faster. */
export type GridKernel = (strong: Float32Array, base: Float32Array, experts: Float32Array[], step: number, steps: number, pruneMargin: number) => Float64Array;

export interface SolveOptions {
  grid?: AlphaGrid;
  kernel?: GridKernel;
  /**
   * Restrict the solve to the support set: tokens within this many nats of the top token of
   * any of the models. Undefined: the exact solve over the whole vocabulary. The tokens left
   * out carry at most vocabulary × e^-margin of each model's top token's weight; the error
   * against the exact solve is measured by `npm run bench:fusion`.
   */
  supportMargin?: number;
}

/** Indices of the tokens within `margin` nats of the top of any of the given logit vectors. */
export function supportSet(models: readonly Float32Array[], margin: number): Int32Array {
  const n = models[0].length;
  const keep = new Uint8Array(n);
  for (const logits of models) {
    let max = -Infinity;
    for (let i = 0; i < n; i++) if (logits[i] > max) max = logits[i];
    const floor = max - margin;
    for (let i = 0; i < n; i++) if (logits[i] >= floor) keep[i] = 1;
  }
  let count = 0;
  for (let i = 0; i < n; i++) count += keep[i];
  const out = new Int32Array(count);
  for (let i = 0, j = 0; i < n; i++) if (keep[i]) out[j++] = i;
  return out;
}

const gather = (logits: Float32Array, indices: Int32Array) => Float32Array.from(indices, (i) => logits[i]);

/** The best (expert, α) over every expert's grid, one expert active. */
export function solveFusion(strong: Float32Array, base: Float32Array, experts: readonly Float32Array[], options: SolveOptions = {}): FusionChoice {
  const grid = options.grid ?? AUTHORS_GRID;
  if (options.supportMargin !== undefined) {
    const support = supportSet([strong, base, ...experts], options.supportMargin);
    return solveFusion(gather(strong, support), gather(base, support), experts.map((e) => gather(e, support)), { grid, kernel: options.kernel });
  }
  let best: FusionChoice = { expert: -1, alpha: 0, objective: Infinity };
  const steps = Math.round(grid.max / grid.step);
  const compiled = options.kernel?.(strong, base, [...experts], grid.step, steps, PRUNE_LOG_MARGIN);
  const shared = compiled ? undefined : shareStep(strong, base);
  experts.forEach((expert, e) => {
    const { alphas, objectives, movement } = compiled
      ? {
          alphas: Array.from({ length: steps + 1 }, (_, k) => k * grid.step),
          objectives: Array.from(compiled.subarray(e * (steps + 1), (e + 1) * (steps + 1))),
          movement: compiled[experts.length * (steps + 1) + e],
        }
      : searchWithShared(shared!, expert, grid);
    if (movement < SILENT_EXPERT_MOVEMENT) return;
    objectives.forEach((objective, k) => {
      if (objective < best.objective) best = { expert: e, alpha: alphas[k], objective };
    });
  });
  if (best.alpha === 0 || best.expert < 0) best = { expert: -1, alpha: 0, objective: best.expert < 0 ? 0 : best.objective };
  return best;
}

/** L_strong + Σ α_t (L_expert_t − L_base), into `into` (of the same length, overwritten) where given. */
export function fuseLogits(strong: Float32Array, base: Float32Array, experts: ReadonlyArray<{ logits: Float32Array; alpha: number }>, into?: Float32Array): Float32Array {
  const out = into?.length === strong.length ? into : new Float32Array(strong.length);
  out.set(strong);
  for (const { logits, alpha } of experts) {
    if (alpha === 0) continue;
    for (let i = 0; i < out.length; i++) out[i] += alpha * shift(logits, base, i);
  }
  return out;
}
