// Sampling computed the plain way, as references for the fast paths: the whole vocabulary
// sorted per position (decoding/sampler.ts sorts only the head of the distribution), and keyed
// draws by Gumbel-max over every token (decoding/noise.ts races and prunes). Tests hold the fast
// paths to these; bench/sampler.ts measures the difference.
import { tokenUniform } from "../../decoding/noise.js";
import { argmax, laneTotal, type SamplingParams, topKDistribution } from "../../decoding/sampler.js";

export function fullSortDistribution(logits: Float32Array, params: SamplingParams): Float64Array {
  const n = logits.length;
  if (params.topK > 0 && params.topK < n) {
    // The k largest logits by a sort of all of them; the softmax over those alone.
    const order = Array.from({ length: n }, (_, i) => i).filter((i) => logits[i] > -Infinity);
    order.sort((a, b) => logits[b] - logits[a] || a - b);
    return topKDistribution(logits, params, order.slice(0, params.topK));
  }
  const probs = new Float64Array(n);
  let max = -Infinity;
  for (let i = 0; i < n; i++) if (logits[i] > max) max = logits[i];
  // The total in sampler.ts's order (laneTotal).
  const lanes = [0, 0, 0, 0, 0, 0, 0, 0];
  for (let i = 0; i < n; i++) {
    probs[i] = Math.exp((logits[i] - max) / params.temperature);
    lanes[i % 8] += probs[i];
  }
  const total = laneTotal(lanes);
  for (let i = 0; i < n; i++) probs[i] /= total;
  if (params.topP >= 1 && params.minP <= 0) return probs;
  const order = Array.from({ length: n }, (_, i) => i).filter((i) => probs[i] > 0);
  order.sort((a, b) => probs[b] - probs[a] || a - b);
  let keep = order.length;
  if (params.topP < 1) {
    let cumulative = 0;
    for (let r = 0; r < keep; r++) {
      cumulative += probs[order[r]];
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


/**
 * The keyed draw computed the plain way: Gumbel-max over every token, g = −log(−log u), with
 * the uniforms of decoding/noise.ts. keyedSample must pick the same token (it runs the
 * equivalent exponential race and skips the logarithms of tokens that cannot win).
 */
export function gumbelMaxSample(adjusted: Float32Array, params: SamplingParams, positionKeyValue: number): number {
  if (params.temperature === 0) return argmax(adjusted);
  const truncating = (params.topK > 0 && params.topK < adjusted.length) || params.topP < 1 || params.minP > 0;
  const scores = new Float64Array(adjusted.length);
  if (truncating) {
    const probs = fullSortDistribution(adjusted, params);
    for (let j = 0; j < probs.length; j++) scores[j] = probs[j] > 0 ? Math.log(probs[j]) : -Infinity;
  } else {
    let max = -Infinity;
    for (let j = 0; j < adjusted.length; j++) if (adjusted[j] > max) max = adjusted[j];
    for (let j = 0; j < adjusted.length; j++) scores[j] = (adjusted[j] - max) / params.temperature;
  }
  let best = -1;
  let bestValue = -Infinity;
  for (let j = 0; j < scores.length; j++) {
    if (scores[j] === -Infinity || scores[j] !== scores[j]) continue;
    const v = scores[j] - Math.log(-Math.log(tokenUniform(positionKeyValue, j)));
    if (v > bestValue) {
      bestValue = v;
      best = j;
    }
  }
  return best;
}
