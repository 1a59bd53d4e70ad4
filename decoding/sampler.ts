// Token selection over a full next-token distribution, in TypeScript, so every decoder
// (plain, speculative, fusion) samples the same way from logits it may have modified.
//
// Order, as vLLM and llama.cpp apply them: logit_bias and presence/frequency penalties on the
// raw logits; then temperature; then top-k, top-p (nucleus) and min-p truncation; then a
// draw with the request's seeded RNG. Temperature 0 is greedy: the argmax after bias and
// penalties (ties go to the lowest token id).
import type { Rng } from "./rng.js";

export interface SamplingParams {
  temperature: number;
  topP: number;
  /** 0 disables top-k. */
  topK: number;
  /** 0 disables min-p. */
  minP: number;
  presencePenalty: number;
  frequencyPenalty: number;
  logitBias: ReadonlyMap<number, number>;
}

export const DEFAULT_SAMPLING: SamplingParams = {
  temperature: 1,
  topP: 1,
  topK: 0,
  minP: 0,
  presencePenalty: 0,
  frequencyPenalty: 0,
  logitBias: new Map(),
};

/** Applies logit_bias and OpenAI's presence/frequency penalties; returns a new array. */
export function adjustLogits(logits: Float32Array, params: SamplingParams, counts: ReadonlyMap<number, number>): Float32Array {
  const out = new Float32Array(logits);
  for (const [token, bias] of params.logitBias) if (token < out.length) out[token] += bias;
  if (params.presencePenalty !== 0 || params.frequencyPenalty !== 0) {
    for (const [token, count] of counts) {
      if (count > 0) out[token] -= params.presencePenalty + params.frequencyPenalty * count;
    }
  }
  return out;
}

export function argmax(values: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

/**
 * The distribution a token is drawn from: softmax(logits / T) truncated by top-k, top-p and
 * min-p, renormalised. At temperature 0 it is one-hot on the argmax. Speculative decoding
 * applies this same function to both the target and the draft.
 */
export function samplingDistribution(logits: Float32Array, params: SamplingParams): Float64Array {
  const n = logits.length;
  const probs = new Float64Array(n);
  if (params.temperature === 0) {
    probs[argmax(logits)] = 1;
    return probs;
  }
  let max = -Infinity;
  for (let i = 0; i < n; i++) if (logits[i] > max) max = logits[i];
  if (max === -Infinity) throw new Error("every token has probability zero");
  let total = 0;
  for (let i = 0; i < n; i++) {
    const p = Math.exp((logits[i] - max) / params.temperature);
    probs[i] = p;
    total += p;
  }
  for (let i = 0; i < n; i++) probs[i] /= total;

  const truncating = (params.topK > 0 && params.topK < n) || params.topP < 1 || params.minP > 0;
  if (!truncating) return probs;

  // Candidates in descending probability (ties by token id, so results are reproducible).
  const order = Array.from({ length: n }, (_, i) => i).filter((i) => probs[i] > 0);
  order.sort((a, b) => probs[b] - probs[a] || a - b);
  let keep = order.length;
  if (params.topK > 0) keep = Math.min(keep, params.topK);
  if (params.topP < 1) {
    // The nucleus is measured on the top-k survivors renormalised (vLLM, llama.cpp).
    let survivors = 0;
    for (let r = 0; r < keep; r++) survivors += probs[order[r]];
    let cumulative = 0;
    for (let r = 0; r < keep; r++) {
      cumulative += probs[order[r]] / survivors;
      if (cumulative >= params.topP) {
        keep = r + 1;
        break;
      }
    }
  }
  if (params.minP > 0) {
    const threshold = params.minP * probs[order[0]];
    let r = 1;
    while (r < keep && probs[order[r]] >= threshold) r++;
    keep = r;
  }
  const truncated = new Float64Array(n);
  let kept = 0;
  for (let r = 0; r < keep; r++) kept += probs[order[r]];
  for (let r = 0; r < keep; r++) truncated[order[r]] = probs[order[r]] / kept;
  return truncated;
}

/** softmax(logits): the distribution at temperature 1, untruncated. */
export function softmax(logits: Float32Array): Float64Array {
  return samplingDistribution(logits, { ...DEFAULT_SAMPLING, temperature: 1 });
}

/** Draws an index from a normalised distribution. */
export function drawFrom(probs: Float64Array, rng: Rng): number {
  const u = rng.next();
  let cumulative = 0;
  let last = 0;
  for (let i = 0; i < probs.length; i++) {
    if (probs[i] <= 0) continue;
    cumulative += probs[i];
    last = i;
    if (u < cumulative) return i;
  }
  return last; // u landed in the rounding gap at the very top
}

export function sampleToken(logits: Float32Array, params: SamplingParams, rng: Rng): number {
  if (params.temperature === 0) return argmax(logits);
  return drawFrom(samplingDistribution(logits, params), rng);
}

/**
 * OpenAI reports -9999.0 for tokens the model gives no probability at all (JSON has no -Infinity).
 */
export const ZERO_PROBABILITY_LOGPROB = -9999;

/** log-softmax of raw logits: the model's own log-probabilities (reported as logprobs). */
export function logSoftmax(logits: Float32Array): Float64Array {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
  let total = 0;
  for (let i = 0; i < logits.length; i++) total += Math.exp(logits[i] - max);
  const lse = max + Math.log(total);
  const out = new Float64Array(logits.length);
  for (let i = 0; i < logits.length; i++) out[i] = logits[i] - lse;
  return out;
}

/** The `count` most likely tokens, most likely first (ties by token id). */
export function topTokens(logprobs: Float64Array, count: number): Array<{ token: number; logprob: number }> {
  const best: Array<{ token: number; logprob: number }> = [];
  if (count <= 0) return best;
  for (let t = 0; t < logprobs.length; t++) {
    const lp = logprobs[t];
    if (best.length === count && lp <= best[best.length - 1].logprob) continue;
    let at = best.length;
    while (at > 0 && best[at - 1].logprob < lp) at--;
    best.splice(at, 0, { token: t, logprob: lp });
    if (best.length > count) best.pop();
  }
  return best;
}
