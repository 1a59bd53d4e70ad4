// Training the SpecDec++ acceptance head from target/draft rollouts: the speculative decoder
// itself produces the data — every drafted position's head input (headInput) and its soft label
// min(1, p(y)/q(y)) — and the head is fitted with the authors' weighted soft-label loss.
import { DEFAULT_SAMPLING } from "../sampler.js";
import { createRng } from "../rng.js";
import type { DecodeStep, GenerationRequest } from "../types.js";
import type { LogprobModel } from "../plain.js";
import type { DecodingModel } from "../types.js";
import type { TokenEmbeddings } from "./embeddings.js";
import { AcceptanceHead, type CandidateView, headInput } from "./head.js";
import { RoundCosts } from "./costs.js";
import { speculativeDecode } from "./decoder.js";
import type { DraftFeatures } from "./features.js";
import { FixedLengthPolicy } from "./policies.js";
import { type AcceptancePredictor, sigmoid } from "./predictors.js";
import { SpeculativeStats } from "./stats.js";

export interface Sample {
  /** The head's input (headInput). */
  input: Float32Array;
  /** min(1, p(y)/q(y)). */
  label: number;
}

/** Records every verified position; predicts nothing useful (rollouts use a fixed K). */
class Recorder implements AcceptancePredictor {
  readonly name = "recorder";
  readonly needsHidden = true;
  readonly rejectionWeight = 1;
  readonly samples: Sample[] = [];
  readonly needsCandidateHidden: boolean;
  constructor(private readonly embeddings: TokenEmbeddings | null) {
    this.needsCandidateHidden = embeddings === null;
  }
  predict(): number {
    return 0.5;
  }
  observe(features: DraftFeatures, acceptance: number): void {
    this.samples.push({ input: headInput(features, this.embeddings), label: acceptance });
  }
}

export async function collectSamples(
  target: LogprobModel,
  draft: DecodingModel,
  prompts: readonly number[][],
  options: {
    candidates: number;
    tokensPerPrompt: number;
    temperature: number;
    seed: number;
    /** The draft's token embeddings, for a head whose candidate view is "embedding". */
    embeddings?: TokenEmbeddings;
  },
): Promise<Sample[]> {
  const recorder = new Recorder(options.embeddings ?? null);
  const setup = {
    target,
    draft,
    policy: new FixedLengthPolicy(options.candidates),
    predictor: recorder,
    maxCandidates: options.candidates,
    stats: new SpeculativeStats(),
    costs: new RoundCosts(),
    // Rejection sampling labels every position min(1, p(y)/q(y)): the authors' soft labels.
    verification: "rejection" as const,
  };
  for (const [i, prompt] of prompts.entries()) {
    const request: GenerationRequest = {
      prompt,
      maxTokens: options.tokensPerPrompt,
      sampling: { ...DEFAULT_SAMPLING, temperature: options.temperature },
      seed: options.seed + i,
      stopStrings: [],
      stopTokens: [],
      topLogprobs: null,
    };
    const steps: DecodeStep[] = [];
    for await (const step of speculativeDecode(setup, request)) steps.push(step);
  }
  return recorder.samples;
}

/** The authors' weighted soft-label BCE over a set of samples (w weights the rejections). */
export function weightedLoss(predict: (input: Float32Array) => number, samples: readonly Sample[], rejectionWeight = 6): number {
  let loss = 0;
  let norm = 0;
  for (const s of samples) {
    const p = Math.min(1 - 1e-9, Math.max(1e-9, predict(s.input)));
    loss += rejectionWeight * (1 - s.label) * -Math.log(1 - p) + s.label * -Math.log(p);
    norm += rejectionWeight * (1 - s.label) + s.label;
  }
  return loss / norm;
}

export interface TrainOptions {
  blocks: number;
  epochs: number;
  batchSize: number;
  learningRate: number;
  rejectionWeight: number;
  seed: number;
  /** The view of the candidate the samples' inputs hold (default "hidden"). */
  candidate?: CandidateView;
}

/** Fits a head with Adam on mini-batches; returns it and the loss after each epoch. */
export function trainHead(samples: readonly Sample[], options: TrainOptions): { head: AcceptanceHead; losses: number[] } {
  const d = samples[0].input.length;
  const rng = createRng(options.seed);
  const head = new AcceptanceHead(d, options.blocks, undefined, options.rejectionWeight, options.candidate);
  const params = [head.weight, head.bias, head.out, head.outBias];
  const m = params.map((p) => new Float64Array(p.length));
  const v = params.map((p) => new Float64Array(p.length));
  const grads = params.map((p) => new Float64Array(p.length));
  const [beta1, beta2, eps] = [0.9, 0.999, 1e-8];
  let t = 0;
  const order = samples.map((_, i) => i);
  const losses: number[] = [];
  const w = options.rejectionWeight;

  for (let epoch = 0; epoch < options.epochs; epoch++) {
    for (let i = order.length - 1; i > 0; i--) {
      const j = rng.int(i + 1);
      [order[i], order[j]] = [order[j], order[i]];
    }
    for (let start = 0; start < order.length; start += options.batchSize) {
      const batch = order.slice(start, start + options.batchSize).map((i) => samples[i]);
      for (const g of grads) g.fill(0);
      const norm = batch.reduce((acc, s) => acc + w * (1 - s.label) + s.label, 0);
      for (const s of batch) backward(head, s, w, norm, grads);
      t++;
      const lr = options.learningRate;
      const [mCorrection, vCorrection] = [1 - beta1 ** t, 1 - beta2 ** t];
      for (let k = 0; k < params.length; k++) {
        const [p, mk, vk, gk] = [params[k], m[k], v[k], grads[k]];
        for (let i = 0; i < p.length; i++) {
          const g = gk[i];
          mk[i] = beta1 * mk[i] + (1 - beta1) * g;
          vk[i] = beta2 * vk[i] + (1 - beta2) * g * g;
          p[i] -= (lr * (mk[i] / mCorrection)) / (Math.sqrt(vk[i] / vCorrection) + eps);
        }
      }
    }
    losses.push(weightedLoss((h) => head.predict(h), samples, w));
  }
  return { head, losses };
}

/**
 * Accumulates one sample's gradient into grads (weight, bias, out, outBias). The loss's
 * derivative in the logit is [w(1 − a)P̂ − a(1 − P̂)], divided by the batch's total weight.
 */
function backward(head: AcceptanceHead, s: Sample, w: number, norm: number, grads: Float64Array[]): void {
  const d = head.d;
  const [gWeight, gBias, gOut, gOutBias] = grads;
  const { states, preActivations, logit } = head.forward(s.input);
  const p = sigmoid(logit);
  const scale = (w * (1 - s.label) * p - s.label * (1 - p)) / norm;
  const top = states[states.length - 1];
  // logit = (out_acc − out_rej) · x + (b_acc − b_rej)
  const dx = new Float64Array(d);
  for (let j = 0; j < d; j++) {
    gOut[j] -= scale * top[j];
    gOut[d + j] += scale * top[j];
    dx[j] = scale * (head.out[d + j] - head.out[j]);
  }
  gOutBias[0] -= scale;
  gOutBias[1] += scale;
  // Blocks, last first: x_{t+1} = x_t + silu(W x_t + b).
  for (let block = head.blocks - 1; block >= 0; block--) {
    const x = states[block];
    const pre = preActivations[block];
    const dPre = new Float64Array(d);
    for (let i = 0; i < d; i++) {
      const sg = sigmoid(pre[i]);
      dPre[i] = dx[i] * sg * (1 + pre[i] * (1 - sg));
    }
    for (let i = 0; i < d; i++) gBias[i] += dPre[i];
    // Zero inputs add nothing to W's gradient (hidden states can be sparse).
    for (let j = 0; j < d; j++) {
      const xj = x[j];
      if (xj === 0) continue;
      for (let i = 0, at = j; i < d; i++, at += d) gWeight[at] += dPre[i] * xj;
    }
    // The input's own gradient is not needed.
    if (block === 0) break;
    const dxPrev = Float64Array.from(dx);
    for (let i = 0; i < d; i++) {
      if (dPre[i] === 0) continue;
      const row = i * d;
      for (let j = 0; j < d; j++) dxPrev[j] += head.weight[row + j] * dPre[i];
    }
    dx.set(dxPrev);
  }
}
