// Acceptance predictors: P̂(drafted token survives verification | prefix). SpecDec++ stops
// drafting when the predicted chance of at least one rejection crosses its threshold.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import { z } from "zod";
import { AcceptanceCorrections } from "./corrections.js";
import type { DraftFeatures, PreDrawFeatures } from "./features.js";

export interface AcceptancePredictor {
  readonly name: string;
  /** The draft's hidden states are read for this predictor (native extension). */
  readonly needsHidden?: boolean;
  /**
   * It also reads the hidden state at the candidate, so the draft evaluates each candidate
   * before the decision (the step it takes next anyway; a round's last one is extra).
   */
  readonly needsCandidateHidden?: boolean;
  predict(features: DraftFeatures): number;
  /**
   * E_{y~q}[P̂(y)] before y is drawn: what a policy may use to decide whether to draft the
   * position at all (exactness allows nothing that depends on the drawn y). Absent where P̂ needs
   * what only the draw brings (the draft's hidden state at y).
   */
  expected?(before: PreDrawFeatures): number;
  /**
   * The rejection weight w of the loss its predictions were fitted with (1: plain soft-label
   * BCE). Where the fit is good, P̂ = a / (a + w(1 − a)) for the true acceptance chance a: the
   * authors' w = 6 makes P̂ deliberately pessimistic for their threshold h = 0.7.
   */
  readonly rejectionWeight: number;
  /** A verified position: its features and the soft label min(1, p(y)/q(y)). */
  observe(features: DraftFeatures, acceptance: number): void;
  /** Writes what serving taught it to its file (predictors that learn and have one). */
  save?(): void;
}

/**
 * The acceptance chance a P̂ fitted with rejection weight w stands for: the inverse of
 * P̂ = a / (a + w(1 − a)), the minimiser of the weighted loss at a given input.
 */
export function unweightedAcceptance(p: number, rejectionWeight: number): number {
  if (rejectionWeight === 1) return p;
  return (rejectionWeight * p) / (1 - p + rejectionWeight * p);
}

/**
 * E_{y~q}[predict(y)] over q's `count` most likely tokens, `predict` given the candidate's
 * probability and id; the rest of q's mass is judged like a token as likely as the last of them
 * (every other token is at most that likely), with `rest` set: it stands for no token in particular.
 * Under greedy decoding the draw is top[0]: the expectation is its P̂.
 */
export function expectedOverTop(before: PreDrawFeatures, predict: (chosen: number, token: number, rest?: boolean) => number, count: number): number {
  const top = before.top ?? [];
  const n = Math.min(count, top.length);
  if (n === 0) return NaN;
  if (before.greedy) return predict(top[0].p, top[0].token);
  let mass = 0;
  let sum = 0;
  for (let i = 0; i < n; i++) {
    sum += top[i].p * predict(top[i].p, top[i].token);
    mass += top[i].p;
  }
  const rest = 1 - mass;
  if (rest > 1e-12) sum += rest * predict(Math.min(top[n - 1].p, rest), top[n - 1].token, true);
  return sum;
}

/**
 * d/dz of the authors' weighted soft-label loss at P̂ = σ(z) for label a, normalised by the
 * sample's weight: [w(1 − a)·P̂ − a·(1 − P̂)] / [w(1 − a) + a].
 */
function weightedLossGradient(p: number, acceptance: number, rejectionWeight: number): number {
  const w = rejectionWeight;
  return (w * (1 - acceptance) * p - acceptance * (1 - p)) / (w * (1 - acceptance) + acceptance);
}

const FEATURE_COUNT = 7;

const logitOf = (p: number) => Math.log(Math.max(p, 1e-6) / Math.max(1 - p, 1e-6));

function featureVector(f: DraftFeatures): number[] {
  return [1, logitOf(f.chosen), logitOf(f.top1), f.margin, f.entropy, Math.log(f.position), logitOf(f.recentAcceptance)];
}

export const sigmoid = (z: number) => 1 / (1 + Math.exp(-z));

const Saved = z.object({
  version: z.literal(1),
  /** FEATURE_COUNT weights, then the extra logit's where there is one. */
  weights: z.array(z.number().finite()).min(FEATURE_COUNT).max(FEATURE_COUNT + 1),
  updates: z.int().min(0),
  /** The per-token offsets (corrections.ts), base64; files without them start from zeros. */
  corrections: z.string().optional(),
  /** The fingerprint of the model behind the extra logit (a file learned beside another one is not reused). */
  extra: z.string().optional(),
});

/** A logit from another model (a trained head) that the online model reads as one more feature. */
export interface ExtraLogit {
  logit(features: DraftFeatures): number;
  /** Identifies that model's weights. */
  fingerprint: string;
}

/**
 * Logistic regression over the draft's own statistics plus per-context and per-token offsets
 * (corrections.ts), trained online from every verified position with the authors' weighted
 * soft-label loss:
 *   L = w(1 − a)(−log(1 − P̂)) + a(−log P̂),   a = min(1, p(y)/q(y)), w = rejectionWeight.
 * The prior (before any label) is P̂ = q(y): the draft's confidence in its own token. With an
 * extra logit (a trained head's), that logit is one more feature and the prior is its P̂: the
 * online model learns how far to trust it beside the rest.
 */
export class OnlineLogisticPredictor implements AcceptancePredictor {
  readonly name = "online-logistic";
  readonly rejectionWeight: number;
  private weights: number[];
  private updates = 0;
  private dirty = false;
  private corrections = new AcceptanceCorrections();

  constructor(
    private readonly options: { learningRate?: number; rejectionWeight?: number; file?: string; extra?: ExtraLogit } = {},
  ) {
    this.weights = options.extra ? [0, 0, 0, 0, 0, 0, 0, 1] : [0, 1, 0, 0, 0, 0, 0];
    this.rejectionWeight = options.rejectionWeight ?? 1;
    if (options.file && existsSync(options.file)) {
      const saved = Saved.safeParse(JSON.parse(readFileSync(options.file, "utf8")));
      if (saved.success && saved.data.weights.length === this.weights.length && saved.data.extra === options.extra?.fingerprint) {
        this.weights = saved.data.weights;
        this.updates = saved.data.updates;
        const corrections = saved.data.corrections === undefined ? null : AcceptanceCorrections.deserialize(saved.data.corrections);
        if (corrections) this.corrections = corrections;
      }
    }
  }

  get observations(): number {
    return this.updates;
  }

  predict(features: DraftFeatures): number {
    return sigmoid(this.logit(this.featureVector(features), features));
  }

  private featureVector(f: DraftFeatures): number[] {
    const x = featureVector(f);
    if (this.options.extra) x.push(this.options.extra.logit(f));
    return x;
  }

  private logit(x: readonly number[], features: DraftFeatures): number {
    return x.reduce((acc, v, i) => acc + v * this.weights[i], 0) + this.corrections.offset(features.context, features.token);
  }

  /**
   * Only the candidate's probability and its offsets vary over q: the rest of the sum is
   * computed once. Without an extra logit only (a head's needs the candidate: its predictor
   * takes the expectation itself).
   */
  get expected(): ((before: PreDrawFeatures) => number) | undefined {
    if (this.options.extra) return undefined;
    return (before) => {
      const rest =
        featureVector({ ...before, chosen: 0.5, token: -1 }).reduce((acc, v, i) => (i === 1 ? acc : acc + v * this.weights[i]), 0) + this.corrections.contextOffset(before.context);
      return expectedOverTop(
        before,
        (chosen, token, other) => sigmoid(rest + this.weights[1] * logitOf(chosen) + (other ? 0 : this.corrections.candidateOffset(before.context, token))),
        Infinity,
      );
    };
  }

  observe(features: DraftFeatures, acceptance: number): void {
    const x = this.featureVector(features);
    const p = sigmoid(this.logit(x, features));
    const gradient = weightedLossGradient(p, acceptance, this.rejectionWeight);
    // A slowly decaying rate: fast adaptation first, stability later.
    const rate = (this.options.learningRate ?? 0.05) / Math.sqrt(1 + this.updates / 1000);
    for (let i = 0; i < x.length; i++) this.weights[i] -= rate * gradient * x[i];
    this.corrections.observe(features.context, features.token, gradient);
    this.updates++;
    this.dirty = true;
  }

  /** Writes the weights to the predictor's file (if it has one and learned something new). */
  save(): void {
    if (!this.options.file || !this.dirty) return;
    mkdirSync(dirname(this.options.file), { recursive: true });
    const saved: z.infer<typeof Saved> = { version: 1, weights: this.weights, updates: this.updates, corrections: this.corrections.serialize(), extra: this.options.extra?.fingerprint };
    writeFileSync(this.options.file, JSON.stringify(saved));
    this.dirty = false;
  }
}

/** P̂ = q(y): the draft's confidence, as a fixed (untrained) predictor for comparisons. */
export class DraftConfidencePredictor implements AcceptancePredictor {
  readonly name = "draft-confidence";
  readonly rejectionWeight = 1;
  predict(features: DraftFeatures): number {
    return features.chosen;
  }
  /** Σ q(y)²: the chance that two draws from q agree. */
  expected(before: PreDrawFeatures): number {
    return expectedOverTop(before, (chosen) => chosen, Infinity);
  }
  observe(): void {}
}
