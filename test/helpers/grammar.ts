// Grammar states read as the tests compare them: the tokens a mask allows, and a state advanced
// without touching the one it came from.
import type { GrammarState } from "../../engine/grammar.js";

/** The tokens the state allows next, ascending. */
export function allowedTokens(state: GrammarState, vocabularySize: number): number[] {
  const logits = new Float32Array(vocabularySize);
  state.mask(logits);
  const allowed: number[] = [];
  for (let t = 0; t < vocabularySize; t++) if (logits[t] > -Infinity) allowed.push(t);
  return allowed;
}

/** A copy of the state advanced past `token`. */
export function advanced(state: GrammarState, token: number): GrammarState {
  const next = state.clone();
  next.accept(token);
  return next;
}
