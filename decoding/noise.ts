// Keyed sampling noise: the randomness of token i of choice c of a seeded request is a function
// of (seed, c, i, token id) alone — a counter-based generator, no sequential stream. Sampling is
// Gumbel-max, x_i = argmax_j log p_i(j) + g_i(j) with g = −log(−log u), which is an exact draw
// from p_i; it is computed as the equivalent exponential race, x_i = argmin_j E_i(j) / p_i(j)
// with E = −log u, which needs a logarithm only for the few tokens that can still win.
// Whatever else happens (a draft proposing, a policy drafting more or less, other requests
// sharing the batch), the same request picks the same tokens; and a speculative draft that
// proposes argmin_j E_i(j) / q_i(j) with the same noise is kept exactly when it equals the
// target's own choice (coupled verification, speculative/verifier.ts).
import { createRng, type Rng } from "./rng.js";
import { nativeKernels } from "../engine/native.js";
import { argmax, drawFrom, largestLogits, nativeDraw, samplingDistribution, type SamplingParams, sampleToken, softmaxInto } from "./sampler.js";

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

/** One position's noise: a uniform per token, from the position's key. */
export class PositionNoise {
  constructor(readonly key: number) {}

  uniform(token: number): number {
    return tokenUniform(this.key, token);
  }
}

/**
 * argmin_j E(j) / w_j over the tokens with w_j > 0, E(j) = −log u(j): an exact draw from
 * w / Σw (the exponential race; −log E is Gumbel noise, so this is Gumbel-max on log w). A token
 * can beat the best ratio R only if u(j) > exp(−w_j R), and exp(−x) ≥ 1 − x: a token whose
 * uniform is at most 1 − w_j R (less a margin for rounding) cannot win, and costs one hash and
 * no logarithm. Ties go to the lowest token id.
 */
function exponentialRace(weights: Float64Array, noise: PositionNoise): number {
  const [best] = exponentialRaceOrder(weights, noise, 1);
  if (best === undefined) throw new Error("every token has probability zero");
  return best;
}

/**
 * The `count` tokens with the smallest E(j) / w_j, smallest first (ties by token id): the race's
 * winner, then the winner were it excluded, and so on. The pruning above, against the count-th
 * best ratio so far.
 */
function exponentialRaceOrder(weights: Float64Array, noise: PositionNoise, count: number): number[] {
  const tokens: number[] = [];
  const ratios: number[] = [];
  let bound = Infinity;
  for (let j = 0; j < weights.length; j++) {
    const w = weights[j];
    if (!(w > 0)) continue;
    const u = noise.uniform(j);
    const x = w * bound;
    if (x < 1 && u <= 1 - x * (1 + 1e-9) - 1e-15) continue;
    const ratio = -Math.log(u) / w;
    if (!(ratio < bound)) continue;
    // After the equal ratios already kept: an earlier token wins a tie.
    let at = ratios.length;
    while (at > 0 && ratios[at - 1] > ratio) at--;
    ratios.splice(at, 0, ratio);
    tokens.splice(at, 0, j);
    if (tokens.length > count) {
      tokens.pop();
      ratios.pop();
    }
    if (tokens.length === count) bound = ratios[count - 1];
  }
  return tokens;
}

/** Whether top-k, top-p or min-p cut the distribution. */
export const truncates = (params: SamplingParams, vocabulary: number) => (params.topK > 0 && params.topK < vocabulary) || params.topP < 1 || params.minP > 0;

/**
 * The token keyed noise picks at one position from adjusted logits (after bias and penalties):
 * an exact draw from samplingDistribution(adjusted, params). Temperature 0 is the argmax (no
 * noise). Without truncation the weights are softmax(logits / T); with it, the truncated
 * distribution.
 */
export function keyedSample(adjusted: Float32Array, params: SamplingParams, noise: PositionNoise): number {
  const kernel = nativeKernels().sampleToken;
  if (kernel) return nativeDraw(kernel, adjusted, params, true, noise.key);
  if (params.temperature === 0) return argmax(adjusted);
  return exponentialRace(raceWeights(adjusted, params), noise);
}

/** keyedSample's winner and runners-up: the first `count` tokens of its race (logit order at T = 0). */
export function keyedOrder(adjusted: Float32Array, params: SamplingParams, noise: PositionNoise, count: number): number[] {
  if (params.temperature === 0) return largestLogits(adjusted, count);
  return exponentialRaceOrder(raceWeights(adjusted, params), noise, count);
}

/** What the race runs on at T > 0: the truncated distribution, or without truncation softmax(logits / T). */
function raceWeights(adjusted: Float32Array, params: SamplingParams): Float64Array {
  if (truncates(params, adjusted.length)) return samplingDistribution(adjusted, params);
  const weights = new Float64Array(adjusted.length);
  softmaxInto(adjusted, params.temperature, weights);
  return weights;
}

/** How one choice draws its tokens: keyed noise (seeded requests) or a sequential RNG. */
export interface TokenDraws {
  readonly keyed: boolean;
  /** The token at absolute position `position` (its index in prompt + output), from adjusted logits. */
  sample(adjusted: Float32Array, params: SamplingParams, position: number): number;
  /**
   * Up to `count` tokens such that the first of them in any allowed set A is an exact draw from
   * the distribution restricted to A (when one is in A): with keyed noise or at temperature 0,
   * the draw's own order (the winner, then the winner were it excluded, …), so the first allowed
   * is what `sample` gives on logits masked to A; with a sequential RNG, independent draws
   * (rejection sampling). Constrained decoding (constraint.ts) reads them.
   */
  ranked(adjusted: Float32Array, params: SamplingParams, position: number, count: number): number[];
  /** The choice's sequential RNG (rejection sampling's uniforms; unused with keyed noise). */
  readonly rng: Rng;
  /**
   * The value the native draw (flockSampleToken) takes for the token at `position`, which
   * `sample` would pass it: keyed noise's position key, or the RNG's next uniform (none at
   * temperature 0, where the draw is the argmax). The addon's generation loop is handed these.
   */
  nativeValue(params: SamplingParams, position: number): number;
}

/**
 * Keyed noise for requests that asked for it (`keyedNoise`: a client seed); otherwise a
 * sequential RNG seeded with seed + choice, which draws by inverse CDF (no logarithm per token).
 */
export function tokenDraws(request: { seed: number; choice?: number; keyedNoise?: boolean }): TokenDraws {
  const choice = request.choice ?? 0;
  const rng = createRng((request.seed + choice) >>> 0);
  if (!request.keyedNoise) {
    return {
      keyed: false,
      rng,
      sample: (adjusted, params) => sampleToken(adjusted, params, rng),
      nativeValue: (params) => (params.temperature === 0 ? 0 : rng.next()),
      ranked: (adjusted, params, _position, count) => {
        if (params.temperature === 0) return largestLogits(adjusted, count);
        const probs = samplingDistribution(adjusted, params);
        return Array.from({ length: count }, () => drawFrom(probs, rng));
      },
    };
  }
  const key = { seed: request.seed, choice };
  const noiseAt = (position: number) => new PositionNoise(positionKey(key, position));
  return {
    keyed: true,
    rng,
    sample: (adjusted, params, position) => keyedSample(adjusted, params, noiseAt(position)),
    nativeValue: (_params, position) => positionKey(key, position),
    ranked: (adjusted, params, position, count) => keyedOrder(adjusted, params, noiseAt(position), count),
  };
}
