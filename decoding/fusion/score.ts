// Teacher-forced scoring of a token sequence under each model and under fusion: the per-token
// negative log-likelihoods that tests and benchmarks compare.
import { logSoftmax } from "../sampler.js";
import type { DecodingModel } from "../types.js";
import { chooseFusion } from "./decoder.js";
import type { FusionSettings } from "./config.js";
import { fuseLogits } from "./solver.js";

/** Each model's next-token logits at every position of `tokens` (one batch per model). */
export async function logitsAlong(models: readonly DecodingModel[], tokens: readonly number[]): Promise<Float32Array[][]> {
  return Promise.all(
    models.map(async (model) => {
      const seq = await model.acquire([]);
      try {
        await seq.truncate(0);
        return await seq.evaluate(tokens, tokens.map((_, i) => i));
      } finally {
        seq.release();
      }
    }),
  );
}

export function negativeLogLikelihood(logits: Float32Array, token: number): number {
  return -logSoftmax(logits)[token];
}

export interface FusionScore {
  /** Mean NLL per predicted token. */
  strong: number;
  fused: number;
  /** Steps per active expert name, or "none". */
  chosen: Map<string, number>;
}

/**
 * Mean NLL of tokens[1..] under the strong model and under fusion with the given settings
 * (models: strong, base, experts…, expert names in the same order).
 */
export function scoreFusion(
  perModel: readonly Float32Array[][],
  expertNames: readonly string[],
  tokens: readonly number[],
  settings: FusionSettings,
): FusionScore {
  const [strong, base, ...experts] = perModel;
  let strongNll = 0;
  let fusedNll = 0;
  const chosen = new Map<string, number>();
  for (let pos = 0; pos + 1 < tokens.length; pos++) {
    const next = tokens[pos + 1];
    const expertLogits = experts.map((e) => e[pos]);
    const choice = chooseFusion(settings, strong[pos], base[pos], expertLogits);
    const fused = fuseLogits(strong[pos], base[pos], choice.active.map(({ index, alpha }) => ({ logits: expertLogits[index], alpha })));
    strongNll += negativeLogLikelihood(strong[pos], next);
    fusedNll += negativeLogLikelihood(fused, next);
    const name = choice.active.length === 0 ? "none" : choice.active.map(({ index }) => expertNames[index]).join("+");
    chosen.set(name, (chosen.get(name) ?? 0) + 1);
  }
  const n = tokens.length - 1;
  return { strong: strongNll / n, fused: fusedNll / n, chosen };
}
