// Constrained decoding: a grammar (a JSON schema, a GBNF grammar) decides which tokens may come
// next, and every decoder samples from the model's distribution with the others removed —
// renormalised over the allowed tokens, before temperature and truncation, as vLLM and
// llama-server mask. The grammar itself is the engine's (engine/grammar.ts); decoders see this
// interface only, so a unit test can constrain a fake engine with a fake grammar.
import { type TokenDraws, truncates } from "./noise.js";
import type { SamplingParams } from "./sampler.js";

/** One sequence's position in a grammar. */
export interface TokenConstraint {
  /** Whether `token` may come next. */
  allows(token: number): boolean;
  /** Sets the logit of every token that may not come next to −Infinity, in place. */
  mask(logits: Float32Array): void;
  /**
   * The only token that may come next, where that is known — or, with `computeMask`, found out
   * (a grammar pass over the vocabulary where the state's mask is not cached); else undefined.
   */
  forcedToken(computeMask: boolean): number | undefined;
  /** Advances past `token`, which must be allowed and must not end the generation. */
  accept(token: number): void;
  /** An independent copy at the same position (speculative candidates, choices of one request). */
  clone(): TokenConstraint;
  /** Frees what it holds now rather than at garbage collection; unusable after. Idempotent. */
  release(): void;
}

/** How many of the draw's preferred tokens are checked before the vocabulary is masked. */
const RANKED = 8;

/**
 * A token drawn from the masked distribution at `position`. Without truncation (or at
 * temperature 0) the draw's preferred tokens are checked first (TokenDraws.ranked): with keyed
 * noise or greedy, the first allowed of them is exactly what the draw gives on masked logits —
 * the argmax, or the Gumbel-max over the same noise, restricted to the allowed tokens; with a
 * sequential RNG they are independent draws x ~ p, and the first allowed one, or failing all a
 * draw from the masked distribution, comes out with probability p(x)/p(A) for x in the allowed
 * set A. So the mask (one grammar pass over the vocabulary) is paid only when the model strays
 * far. Truncation acts on the masked distribution, so with it the mask comes first. `adjusted`
 * may be masked in place.
 */
export function constrainedDraw(adjusted: Float32Array, params: SamplingParams, constraint: TokenConstraint, draws: TokenDraws, position: number): number {
  if (params.temperature === 0 || !truncates(params, adjusted.length)) {
    for (const token of draws.ranked(adjusted, params, position, RANKED)) if (constraint.allows(token)) return token;
  }
  constraint.mask(adjusted);
  return draws.sample(adjusted, params, position);
}
