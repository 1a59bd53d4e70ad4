// Token selection over a full next-token distribution, in TypeScript, so every decoder
// (plain, speculative, fusion) samples the same way from logits it may have modified.
//
// Order, as vLLM and llama.cpp apply them: logit_bias, the repetition penalty and
// presence/frequency penalties on the raw logits; then temperature; then top-k, top-p (nucleus) and min-p truncation; then a
// draw with the request's seeded RNG. Temperature 0 is greedy: the argmax after bias and
// penalties (ties go to the lowest token id).
import { nativeKernels, type SampleTokenKernel } from "../engine/native.js";
import type { TokenHistory } from "./history.js";
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
  /** llama.cpp's and vLLM's repetition penalty (1 disables it). */
  repetitionPenalty: number;
  /** Tokens the repetition penalty looks back over, prompt included (−1: the whole context). */
  repeatLastN: number;
  logitBias: ReadonlyMap<number, number>;
}

export const DEFAULT_SAMPLING: SamplingParams = {
  temperature: 1,
  topP: 1,
  topK: 0,
  minP: 0,
  presencePenalty: 0,
  frequencyPenalty: 0,
  repetitionPenalty: 1,
  repeatLastN: 64,
  logitBias: new Map(),
};

/**
 * Applies logit_bias, the repetition penalty and OpenAI's presence/frequency penalties; returns a
 * new array, or `into` (of the same length) overwritten: a decoder that is done with each
 * position's adjusted logits before the next reuses one buffer (no 600 KB allocation per token
 * at 151,936 tokens for the garbage collector to chase). `into` may be `logits` itself, adjusted
 * in place, where the caller reads the raw logits no more (no copy at all). The repetition penalty, as llama.cpp's
 * penalties sampler applies it to each distinct token in its window: a positive logit is divided
 * by it, a negative one multiplied.
 */
export function adjustLogits(logits: Float32Array, params: SamplingParams, history: TokenHistory, into?: Float32Array): Float32Array {
  const out = into && into.length === logits.length ? into : new Float32Array(logits.length);
  if (out !== logits) out.set(logits);
  for (const [token, bias] of params.logitBias) if (token < out.length) out[token] += bias;
  if (params.repetitionPenalty !== 1 && params.repeatLastN !== 0) {
    const penalty = params.repetitionPenalty;
    for (const token of history.distinctRecent(params.repeatLastN)) {
      if (token < out.length) out[token] = out[token] > 0 ? out[token] / penalty : out[token] * penalty;
    }
  }
  if (params.presencePenalty !== 0 || params.frequencyPenalty !== 0) {
    for (const [token, count] of history.generated) {
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
 * min-p, renormalised. In the addon when the engine installed its kernels (the code below is the
 * reference it is tested against). At temperature 0 it is one-hot on the argmax. With top-k, as in llama.cpp
 * and vLLM, the k largest logits are kept first and the softmax taken over them alone (no
 * exponential of the other tokens); top-p and min-p then act on that. Speculative decoding
 * applies this same function to both the target and the draft. Written into `into` where it is
 * given (of the vocabulary's length: a decoder's reused buffer).
 */
export function samplingDistribution(logits: Float32Array, params: SamplingParams, into?: Float64Array): Float64Array {
  const n = logits.length;
  const probs = into?.length === n ? into : new Float64Array(n);
  const kernel = nativeKernels().distribution;
  if (kernel) {
    if (!kernel(logits, params.temperature, params.topK, params.topP, params.minP, probs)) throw new Error("every token has probability zero");
    return probs;
  }
  if (params.temperature === 0) {
    probs.fill(0);
    probs[argmax(logits)] = 1;
    return probs;
  }
  if (params.topK > 0 && params.topK < n) {
    const top = topKDistribution(logits, params, largestLogits(logits, params.topK));
    if (probs !== into) return top;
    probs.set(top);
    return probs;
  }
  softmaxInto(logits, params.temperature, probs);

  if (params.topP >= 1 && params.minP <= 0) return probs;

  // In place: the kept tokens are those above the cut's value, and at it the first `ties` by id.
  const cut = truncationCut(probs, params.topP, params.minP);
  let ties = cut.ties;
  for (let i = 0; i < n; i++) {
    const p = probs[i];
    probs[i] = p > cut.last || (p === cut.last && ties-- > 0) ? p / cut.mass : 0;
  }
  return probs;
}

/**
 * The total of eight partial sums (term i added into sum i mod 8), combined pairwise: the order
 * the addon adds a vocabulary in, which its vector lanes follow.
 */
export function laneTotal(lanes: ArrayLike<number>): number {
  return lanes[0] + lanes[1] + (lanes[2] + lanes[3]) + (lanes[4] + lanes[5] + (lanes[6] + lanes[7]));
}

/**
 * probs = softmax(logits / T): exp((logit − max) / T) over the total. In the addon when the
 * engine installed it (one pass, about a third of this loop's cost); this code is the reference.
 */
export function softmaxInto(logits: Float32Array, temperature: number, probs: Float64Array): void {
  const kernel = nativeKernels().softmax;
  if (kernel) {
    if (kernel(logits, temperature, probs) === 0) throw new Error("every token has probability zero");
    return;
  }
  const n = logits.length;
  let max = -Infinity;
  for (let i = 0; i < n; i++) if (logits[i] > max) max = logits[i];
  if (max === -Infinity) throw new Error("every token has probability zero");
  // The total in laneTotal's order.
  const lanes = new Float64Array(8);
  for (let i = 0; i < n; i++) {
    const p = Math.exp((logits[i] - max) / temperature);
    probs[i] = p;
    lanes[i & 7] += p;
  }
  const total = laneTotal(lanes);
  for (let i = 0; i < n; i++) probs[i] /= total;
}

/**
 * softmax(logits / T) over `candidates` (the top-k tokens, largest logit first, ties by token id),
 * then top-p over their renormalised mass and min-p against the largest; zero elsewhere.
 */
export function topKDistribution(logits: Float32Array, params: SamplingParams, candidates: readonly number[]): Float64Array {
  if (candidates.length === 0) throw new Error("every token has probability zero");
  const max = logits[candidates[0]];
  const tokens: number[] = [];
  const weights: number[] = [];
  for (const token of candidates) {
    const w = Math.exp((logits[token] - max) / params.temperature);
    if (w > 0) {
      tokens.push(token);
      weights.push(w);
    }
  }
  let keep = tokens.length;
  if (params.topP < 1) {
    let survivors = 0;
    for (let r = 0; r < keep; r++) survivors += weights[r];
    let cumulative = 0;
    for (let r = 0; r < keep; r++) {
      cumulative += weights[r] / survivors;
      if (cumulative >= params.topP) {
        keep = r + 1;
        break;
      }
    }
  }
  if (params.minP > 0) {
    const threshold = params.minP * weights[0];
    let r = 1;
    while (r < keep && weights[r] >= threshold) r++;
    keep = r;
  }
  let mass = 0;
  for (let r = 0; r < keep; r++) mass += weights[r];
  const out = new Float64Array(logits.length);
  for (let r = 0; r < keep; r++) out[tokens[r]] = weights[r] / mass;
  return out;
}

/**
 * The k tokens with the largest finite logits, largest first, ties by token id: one pass that
 * keeps the best k in order, so a small k (40, the usual) costs about one comparison per token.
 * A large k sorts instead: only the tokens at or above the k-th largest logit, found by
 * selection.
 */
export function largestLogits(logits: Float32Array, k: number): number[] {
  if (k > 256) {
    const finite: number[] = [];
    for (let i = 0; i < logits.length; i++) if (logits[i] > -Infinity) finite.push(i);
    if (finite.length > k) {
      const values = Float32Array.from(finite, (i) => logits[i]).sort();
      const floor = values[values.length - k];
      const above = finite.filter((i) => logits[i] >= floor);
      return above.sort((a, b) => logits[b] - logits[a] || a - b).slice(0, k);
    }
    return finite.sort((a, b) => logits[b] - logits[a] || a - b);
  }
  const top: number[] = [];
  for (let i = 0; i < logits.length; i++) {
    const l = logits[i];
    if (!(l > -Infinity)) continue;
    if (top.length === k) {
      // An equal logit loses to the earlier token already kept.
      if (!(l > logits[top[k - 1]])) continue;
      top.pop();
    }
    let at = top.length;
    top.push(i);
    while (at > 0 && logits[top[at - 1]] < l) {
      top[at] = top[at - 1];
      at--;
    }
    top[at] = i;
  }
  return top;
}

/**
 * Where top-p and min-p cut the distribution, as a sort of the whole vocabulary (descending,
 * ties by token id) would: the `keep` most likely tokens are those above `last` and the first
 * `ties` at it by token id, `mass` their total. One pass files every probability into a
 * histogram of eighth-octaves (read off its exponent bits), from which the cut's floor follows;
 * only the probabilities above that floor are sorted (`sorted` says how many), as numbers,
 * natively. On a real model's distribution that is a few hundred values instead of 151,936.
 */
export function truncationCut(probs: Float64Array, topP: number, minP: number): { keep: number; last: number; ties: number; mass: number; sorted: number } {
  const histogram = octaves(probs);
  const { positives, max } = histogram;
  const cut: Cut = { positives, topP, minPFloor: minP > 0 ? minP * max : 0 };
  // The first bucket at which the cut is certainly reached; then lower, should rounding differ.
  let bucket = 0;
  let count = 0;
  for (let mass = 0; bucket < BUCKETS - 1; bucket++) {
    count += histogram.counts[bucket];
    mass += histogram.mass[bucket];
    if (topP < 1 ? mass >= topP * (1 + 1e-9) : histogram.floorOf(bucket) <= cut.minPFloor) break;
  }
  if (bucket === BUCKETS - 1) count = positives;
  for (;;) {
    // Every probability at or above the floor, that is, in the buckets down to this one.
    const floor = histogram.floorOf(bucket);
    const values = new Float64Array(count);
    for (let i = 0, at = 0; i < probs.length; i++) if (probs[i] > 0 && probs[i] >= floor) values[at++] = probs[i];
    values.sort().reverse();
    const keep = cutWithin(values, cut, floor);
    if (keep !== null) {
      let mass = 0;
      for (let r = 0; r < keep; r++) mass += values[r];
      const last = values[keep - 1];
      let ties = 0;
      for (let r = keep - 1; r >= 0 && values[r] === last; r--) ties++;
      return { keep, last, ties, mass, sorted: values.length };
    }
    bucket = bucket < BUCKETS - 2 ? bucket + 1 : BUCKETS - 1;
    count = bucket === BUCKETS - 1 ? positives : count + histogram.counts[bucket];
  }
}

/** Eighth-octave buckets below the largest probability; the last one takes everything lower. */
const BUCKETS = 8 * 64;

/** Counts and mass of the positive probabilities per bucket (0: the largest eighth-octave). */
function octaves(probs: Float64Array) {
  // A positive double's high word orders like its value: 11 exponent bits, then the mantissa,
  // whose first 3 bits split the octave into eighths.
  const words = new Uint32Array(probs.buffer, probs.byteOffset, probs.length * 2);
  let top = 0;
  let max = 0;
  for (let i = 0; i < probs.length; i++) {
    if (probs[i] > max) {
      max = probs[i];
      top = words[2 * i + 1] >>> 17;
    }
  }
  const counts = new Uint32Array(BUCKETS);
  const mass = new Float64Array(BUCKETS);
  let positives = 0;
  for (let i = 0; i < probs.length; i++) {
    const p = probs[i];
    if (!(p > 0)) continue;
    positives++;
    const b = Math.min(BUCKETS - 1, top - (words[2 * i + 1] >>> 17));
    counts[b]++;
    mass[b] += p;
  }
  const edge = new Float64Array(1);
  const edgeWords = new Uint32Array(edge.buffer);
  return {
    counts,
    mass,
    positives,
    max,
    /** The smallest value bucket b holds (0 for the last, which holds everything lower). */
    floorOf(b: number): number {
      if (b >= BUCKETS - 1) return 0;
      edgeWords[1] = (top - b) << 17;
      return edge[0];
    },
  };
}

interface Cut {
  positives: number;
  topP: number;
  minPFloor: number;
}

/**
 * How many of the largest probabilities (`values`, descending: every one at or above `floor`)
 * are kept, or null when the cut may lie below the floor. The full-sort rules, step by step.
 */
function cutWithin(values: Float64Array, cut: Cut, floor: number): number | null {
  const known = values.length;
  const complete = known === cut.positives;
  let keep = cut.positives;
  if (cut.topP < 1) {
    // Measured on the whole distribution, whose total is 1 (top-k has its own path).
    let cumulative = 0;
    for (let r = 0; r < keep; r++) {
      if (r === known) return null; // only when incomplete: otherwise keep <= positives = known
      cumulative += values[r];
      if (cumulative >= cut.topP) {
        keep = r + 1;
        break;
      }
    }
  }
  if (cut.minPFloor > 0) {
    let r = 1;
    while (r < keep) {
      if (r === known) {
        // What lies below the floor is below min-p's threshold too, if the floor is not under it.
        if (floor <= cut.minPFloor || complete) break;
        return null;
      }
      if (values[r] < cut.minPFloor) break;
      r++;
    }
    keep = r;
  }
  return keep <= known ? keep : null;
}


/** softmax(logits): the distribution at temperature 1, untruncated (into `into` where given). */
export function softmax(logits: Float32Array, into?: Float64Array): Float64Array {
  return samplingDistribution(logits, { ...DEFAULT_SAMPLING, temperature: 1 }, into);
}

/** Draws an index from a normalised distribution. */
export function drawFrom(probs: Float64Array, rng: Rng): number {
  const u = rng.next();
  const kernel = nativeKernels().drawFrom;
  if (kernel) return kernel(probs, u);
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
  const kernel = nativeKernels().sampleToken;
  // Temperature 0 draws no uniform: the argmax.
  if (kernel) return nativeDraw(kernel, logits, params, false, params.temperature === 0 ? 0 : rng.next());
  if (params.temperature === 0) return argmax(logits);
  return drawFrom(samplingDistribution(logits, params), rng);
}

/**
 * The addon's draw (engine/native.ts): the same token as this module's and noise.ts's code,
 * which stay the reference, in one call instead of several passes over the vocabulary.
 */
export function nativeDraw(kernel: SampleTokenKernel, logits: Float32Array, params: SamplingParams, keyed: boolean, value: number): number {
  const token = kernel(logits, params.temperature, params.topK, params.topP, params.minP, keyed, value);
  if (token < 0) throw new Error("every token has probability zero");
  return token;
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
