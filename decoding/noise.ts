// Keyed sampling noise: the randomness of token i of choice c of a seeded request is a function
// of (seed, c, i, token id) alone — a counter-based generator, no sequential stream. Sampling is
// Gumbel-max: x_i = argmax_j log p_i(j) + g_i(j), g = −log(−log u), which is an exact draw from
// p_i. Whatever else happens (a draft proposing, a policy drafting more or less, other requests
// sharing the batch), the same request picks the same tokens; and a speculative draft that
// proposes argmax_j log q_i(j) + g_i(j) with the same noise is kept exactly when it equals the
// target's own choice (coupled verification, speculative/verifier.ts).
import { createRng, type Rng } from "./rng.js";
import { argmax, samplingDistribution, type SamplingParams, sampleToken } from "./sampler.js";

/** murmur3's 32-bit finalizer: a bijection that mixes every input bit into every output bit. */
function mix32(x: number): number {
  x = Math.imul(x ^ (x >>> 16), 0x85ebca6b);
  x = Math.imul(x ^ (x >>> 13), 0xc2b2ae35);
  return (x ^ (x >>> 16)) >>> 0;
}

const GOLDEN = 0x9e3779b9;
const TWO_POW_32 = 4294967296;

/** Where a request's noise comes from: its seed and the choice (0-based, per n). */
export interface NoiseKey {
  seed: number;
  choice: number;
}

/** The 32-bit key of one position's noise. */
export function positionKey(key: NoiseKey, position: number): number {
  // Seeds are 64-bit integers in OpenAI's API: both 32-bit halves count.
  let h = mix32((key.seed >>> 0) ^ GOLDEN);
  h = mix32(h ^ (Math.floor(key.seed / TWO_POW_32) >>> 0));
  h = mix32(h ^ Math.imul(key.choice + 1, 0x27d4eb2f));
  return mix32(h ^ Math.imul(position + 1, 0x165667b1));
}

/**
 * A uniform in (0, 1) for one token at one position, with 53 random bits: the largest noise
 * values decide Gumbel-max, and they come from u near 1, which 32 bits would resolve coarsely.
 */
export function tokenUniform(positionKeyValue: number, token: number): number {
  const a = mix32(positionKeyValue ^ Math.imul(token + 1, GOLDEN));
  const b = mix32(a ^ 0x5bd1e995);
  return ((a >>> 5) * 67108864 + (b >>> 6) + 0.5) / 9007199254740992;
}

/** Gumbel(0, 1) noise of one token at one position. */
export function gumbel(positionKeyValue: number, token: number): number {
  return -Math.log(-Math.log(tokenUniform(positionKeyValue, token)));
}

/**
 * One position's noise, computed per token when first asked for and kept: in coupled
 * verification the draft and the target draw at the same positions, so each token's noise is
 * hashed once per position.
 */
export class PositionNoise {
  private values: Float64Array = new Float64Array(0);

  constructor(readonly key: number) {}

  /** g(token); NaN marks a value not computed yet. */
  at(token: number): number {
    if (token >= this.values.length) {
      const grown = new Float64Array(Math.max(token + 1, 2 * this.values.length)).fill(Number.NaN);
      grown.set(this.values);
      this.values = grown;
    }
    let g = this.values[token];
    if (g !== g) g = this.values[token] = gumbel(this.key, token);
    return g;
  }
}

/** argmax_j scores_j + g(j), over the tokens whose score is finite. */
function noisyArgmax(scores: ArrayLike<number>, noise: PositionNoise): number {
  let best = -1;
  let bestValue = -Infinity;
  for (let j = 0; j < scores.length; j++) {
    const s = scores[j];
    if (s === -Infinity || s !== s) continue;
    const v = s + noise.at(j);
    if (v > bestValue) {
      bestValue = v;
      best = j;
    }
  }
  if (best < 0) throw new Error("every token has probability zero");
  return best;
}

const truncates = (params: SamplingParams, vocabulary: number) => (params.topK > 0 && params.topK < vocabulary) || params.topP < 1 || params.minP > 0;

/**
 * The token keyed noise picks at one position from adjusted logits (after bias and penalties):
 * an exact draw from samplingDistribution(adjusted, params). Temperature 0 is the argmax (no
 * noise). Without truncation the scores are the logits / T, less their maximum (softmax's
 * normaliser does not move the argmax); with it, log p over the tokens it keeps.
 */
export function keyedSample(adjusted: Float32Array, params: SamplingParams, noise: PositionNoise): number {
  if (params.temperature === 0) return argmax(adjusted);
  const scores = new Float64Array(adjusted.length);
  if (truncates(params, adjusted.length)) {
    const probs = samplingDistribution(adjusted, params);
    for (let j = 0; j < probs.length; j++) scores[j] = probs[j] > 0 ? Math.log(probs[j]) : -Infinity;
    return noisyArgmax(scores, noise);
  }
  // As samplingDistribution computes softmax: (logit − max) / T, which a tiny T sends to 0 for
  // the most likely tokens and −∞ for the rest (logit / T would overflow to ±∞ or NaN).
  let max = -Infinity;
  for (let j = 0; j < adjusted.length; j++) if (adjusted[j] > max) max = adjusted[j];
  for (let j = 0; j < adjusted.length; j++) scores[j] = (adjusted[j] - max) / params.temperature;
  return noisyArgmax(scores, noise);
}

/** Positions whose noise a choice keeps (a round's candidates and the one after them). */
const KEPT_POSITIONS = 64;

/** How one choice draws its tokens: keyed noise (seeded requests) or a sequential RNG. */
export interface TokenDraws {
  readonly keyed: boolean;
  /** The token at absolute position `position` (its index in prompt + output), from adjusted logits. */
  sample(adjusted: Float32Array, params: SamplingParams, position: number): number;
  /** The choice's sequential RNG (rejection sampling's uniforms; unused with keyed noise). */
  readonly rng: Rng;
}

/**
 * Keyed noise for requests that asked for it (`keyedNoise`: a client seed); otherwise a
 * sequential RNG seeded with seed + choice, which draws by inverse CDF (no logarithm per token).
 */
export function tokenDraws(request: { seed: number; choice?: number; keyedNoise?: boolean }): TokenDraws {
  const choice = request.choice ?? 0;
  const rng = createRng((request.seed + choice) >>> 0);
  if (!request.keyedNoise) return { keyed: false, rng, sample: (adjusted, params) => sampleToken(adjusted, params, rng) };
  const key = { seed: request.seed, choice };
  const kept = new Map<number, PositionNoise>();
  const noiseAt = (position: number): PositionNoise => {
    let noise = kept.get(position);
    if (!noise) {
      noise = new PositionNoise(positionKey(key, position));
      kept.set(position, noise);
      if (kept.size > KEPT_POSITIONS) kept.delete(kept.keys().next().value!);
    }
    return noise;
  };
  return { keyed: true, rng, sample: (adjusted, params, position) => keyedSample(adjusted, params, noiseAt(position)) };
}
