// "Average activation" gates — the PHATGOOSE paper's forward-only baseline: an expert's gate
// for a module is the mean input that module sees over the expert's domain text. flock can
// read one module's input, the output layer's (the final hidden state); other modules' inputs
// stay inside llama.cpp, so adapters of those need gates trained with the authors' code.
import { FlockError } from "../engine/errors.js";
import type { LoadedModel } from "../engine/model.js";
import { OUTPUT_MODULE } from "./routed.js";

/** The modules whose inputs this fit can observe. */
export const FITTABLE_MODULES = [OUTPUT_MODULE] as const;

/**
 * The mean final hidden state over `texts` under `base` (loaded with hidden states), reading
 * each text in windows of the context size.
 */
export async function averageActivation(base: LoadedModel, texts: readonly string[]): Promise<{ gate: Float32Array; tokens: number }> {
  if (!base.hasHiddenStates) throw new FlockError("unsupported", "fitting gates needs hidden states, which this build lacks (run npm run build:native)");
  const sum = new Float64Array(base.embeddingSize);
  let count = 0;
  const window = base.contextSize;
  const seq = await base.acquire([]);
  try {
    for (const text of texts) {
      const tokens = base.tokenizePrompt(text);
      for (let start = 0; start < tokens.length; start += window) {
        const chunk = tokens.slice(start, start + window);
        await seq.truncate(0);
        const { hidden } = await seq.evaluateWithHidden(chunk, chunk.map((_, i) => i));
        for (const h of hidden) for (let i = 0; i < h.length; i++) sum[i] += h[i];
        count += hidden.length;
      }
    }
  } finally {
    seq.release();
  }
  if (count === 0) throw new FlockError("invalid_request", "the domain text is empty");
  return { gate: Float32Array.from(sum, (s) => s / count), tokens: count };
}
