// Prompt lookup (n-gram speculation, llama.cpp's ngram-simple and vLLM's n-gram proposer):
// candidates copied from what followed the latest earlier occurrence of the text's last n tokens
// in the prompt and the output (n from maxMatch down to minMatch). No draft model: the
// proposals are deterministic (one-hot q), verified exactly like a prediction's (prediction.ts).
// Its settings are declared once: the model entry's `lookup` (with defaults) and the request's
// `flock.lookup` overrides.
import { z } from "zod";
import { requestOverrides } from "../overrides.js";

const settings = {
  /** Speculate from the text itself (default off). */
  enabled: z.boolean(),
  /** The shortest suffix looked up. */
  minMatch: z.int().min(1).max(16),
  /** The longest suffix looked up (longer matches are tried first). */
  maxMatch: z.int().min(1).max(32),
  /** Candidates proposed per round at most. */
  maxCandidates: z.int().min(1).max(64),
};

/** A model entry's `lookup`: prompt lookup for every request of the id unless a request says otherwise. */
export const LookupEntry = z
  .strictObject({
    enabled: settings.enabled.default(true),
    minMatch: settings.minMatch.default(2),
    maxMatch: settings.maxMatch.default(8),
    maxCandidates: settings.maxCandidates.default(8),
  })
  .refine((l) => l.minMatch <= l.maxMatch, { message: "minMatch must not exceed maxMatch", path: ["minMatch"] });
export type LookupSettings = z.infer<typeof LookupEntry>;

/** Off, unless a model entry or a request turns it on. */
export const LOOKUP_DEFAULTS: LookupSettings = { enabled: false, minMatch: 2, maxMatch: 8, maxCandidates: 8 };

/** The `flock.lookup` extension of a request. */
export const LookupRequest = requestOverrides(settings);
export type LookupOverrides = z.output<typeof LookupRequest>;

/** Proposes the continuation of the latest earlier occurrence of the text's last tokens. */
export class PromptLookup {
  constructor(private readonly settings: Pick<LookupSettings, "minMatch" | "maxMatch" | "maxCandidates">) {}

  /** Up to `max` (and maxCandidates) tokens that followed the longest (then latest) earlier match of `text`'s suffix. */
  propose(text: readonly number[], max: number): number[] {
    const { minMatch } = this.settings;
    const take = Math.min(max, this.settings.maxCandidates);
    const maxMatch = Math.max(minMatch, this.settings.maxMatch);
    for (let n = Math.min(maxMatch, text.length - 1); n >= minMatch; n--) {
      const start = text.length - n;
      // Latest occurrence first, ending before the suffix itself.
      for (let i = start - 1; i >= 0; i--) {
        let match = true;
        for (let j = 0; j < n && match; j++) match = text[i + j] === text[start + j];
        if (match) return text.slice(i + n, Math.min(i + n + take, text.length));
      }
    }
    return [];
  }
}
