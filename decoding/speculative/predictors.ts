// Acceptance predictors: P̂(drafted token survives verification | prefix). SpecDec++ stops
// drafting when the predicted chance of at least one rejection crosses its threshold.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import { z } from "zod";
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
 * (every other token is at most that likely).
 */
export function expectedOverTop(before: PreDrawFeatures, predict: (chosen: number, token: number) => number, count: number): number {
  const top = before.top ?? [];
  const n = Math.min(count, top.length);
  if (n === 0) return NaN;
  let mass = 0;
  let sum = 0;
  for (let i = 0; i < n; i++) {
    sum += top[i].p * predict(top[i].p, top[i].token);
    mass += top[i].p;
  }
  const rest = 1 - mass;
  if (rest > 1e-12) sum += rest * predict(Math.min(top[n - 1].p, rest), top[n - 1].token);
  return sum;
}

const FEATURE_COUNT = 7;

const logitOf = (p: number) => Math.log(Math.max(p, 1e-6) / Math.max(1 - p, 1e-6));

function featureVector(f: DraftFeatures): number[] {
  return [1, logitOf(f.chosen), logitOf(f.top1), f.margin, f.entropy, Math.log(f.position), logitOf(f.recentAcceptance)];
}

export const sigmoid = (z: number) => 1 / (1 + Math.exp(-z));

const Saved = z.object({ version: z.literal(1), weights: z.array(z.number().finite()).length(FEATURE_COUNT), updates: z.int().min(0) });

/**
 * Logistic regression over the draft's own statistics, trained online from every verified
 * position with the authors' weighted soft-label loss:
 *   L = w(1 − a)(−log(1 − P̂)) + a(−log P̂),   a = min(1, p(y)/q(y)), w = rejectionWeight.
 * The prior (before any label) is P̂ = q(y): the draft's confidence in its own token.
 */
export class OnlineLogisticPredictor implements AcceptancePredictor {
  readonly name = "online-logistic";
  readonly rejectionWeight: number;
  private weights: number[];
  private updates = 0;
  private dirty = false;

  constructor(
    private readonly options: { learningRate?: number; rejectionWeight?: number; file?: string } = {},
  ) {
    this.weights = [0, 1, 0, 0, 0, 0, 0];
    this.rejectionWeight = options.rejectionWeight ?? 1;
    if (options.file && existsSync(options.file)) {
      const saved = Saved.safeParse(JSON.parse(readFileSync(options.file, "utf8")));
      if (saved.success) {
        this.weights = saved.data.weights;
        this.updates = saved.data.updates;
      }
    }
  }

  get observations(): number {
    return this.updates;
  }

  predict(features: DraftFeatures): number {
    const x = featureVector(features);
    return sigmoid(x.reduce((acc, v, i) => acc + v * this.weights[i], 0));
  }

  /** Only the candidate's own probability varies over q: the rest of the sum is computed once. */
  expected(before: PreDrawFeatures): number {
    const rest = featureVector({ ...before, chosen: 0.5, token: -1 }).reduce((acc, v, i) => (i === 1 ? acc : acc + v * this.weights[i]), 0);
    return expectedOverTop(before, (chosen) => sigmoid(rest + this.weights[1] * logitOf(chosen)), Infinity);
  }

  observe(features: DraftFeatures, acceptance: number): void {
    const x = featureVector(features);
    const p = sigmoid(x.reduce((acc, v, i) => acc + v * this.weights[i], 0));
    const w = this.rejectionWeight;
    // d/dz of the weighted loss: w(1 − a)·P̂ − a·(1 − P̂), normalised by the sample's weight.
    const scale = w * (1 - acceptance) + acceptance;
    const gradient = (w * (1 - acceptance) * p - acceptance * (1 - p)) / scale;
    // A slowly decaying rate: fast adaptation first, stability later.
    const rate = (this.options.learningRate ?? 0.05) / Math.sqrt(1 + this.updates / 1000);
    for (let i = 0; i < FEATURE_COUNT; i++) this.weights[i] -= rate * gradient * x[i];
    this.updates++;
    this.dirty = true;
  }

  /** Writes the weights to the predictor's file (if it has one and learned something new). */
  save(): void {
    if (!this.options.file || !this.dirty) return;
    mkdirSync(dirname(this.options.file), { recursive: true });
    writeFileSync(this.options.file, JSON.stringify({ version: 1, weights: this.weights, updates: this.updates }));
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
