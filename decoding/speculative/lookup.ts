// Prompt lookup (n-gram speculation, llama.cpp's ngram-simple and vLLM's n-gram proposer):
// candidates copied from what followed the latest earlier occurrence of the text's last n tokens
// in the prompt and the output (n from maxMatch down to minMatch). No draft model: the
// proposals are deterministic (one-hot q), verified exactly like a prediction's (prediction.ts).
// Its settings are declared once: the model entry's `lookup` (with defaults) and the request's
// `flock.lookup` overrides.
import { z } from "zod";
import { requestOverrides } from "../overrides.js";
import type { TextProposal, TextProposer } from "./text-proposals.js";

const settings = {
  /** Speculate from the text itself (default off). */
  enabled: z.boolean(),
  /** The shortest suffix looked up. */
  minMatch: z.int().min(1).max(16),
  /** The longest suffix looked up (longer matches are tried first). */
  maxMatch: z.int().min(1).max(32),
  /** Candidates offered per round at most (the cost rule proposes as many of them as pay). */
  maxCandidates: z.int().min(1).max(64),
  /** Price each offer with the cost rule (default); false proposes every offer whole, as llama.cpp's n-gram proposers do. */
  priced: z.boolean(),
};

/** A model entry's `lookup`: prompt lookup for every request of the id unless a request says otherwise. */
export const LookupEntry = z
  .strictObject({
    enabled: settings.enabled.default(true),
    minMatch: settings.minMatch.default(2),
    maxMatch: settings.maxMatch.default(8),
    maxCandidates: settings.maxCandidates.default(32),
    priced: settings.priced.default(true),
  })
  .refine((l) => l.minMatch <= l.maxMatch, { message: "minMatch must not exceed maxMatch", path: ["minMatch"] });
export type LookupSettings = z.infer<typeof LookupEntry>;

/** Off, unless a model entry or a request turns it on. */
export const LOOKUP_DEFAULTS: LookupSettings = { enabled: false, minMatch: 2, maxMatch: 8, maxCandidates: 32, priced: true };

/** The `flock.lookup` extension of a request. */
export const LookupRequest = requestOverrides(settings);
export type LookupOverrides = z.output<typeof LookupRequest>;

/**
 * Proposes the continuation of the latest earlier occurrence of the text's last tokens; after a
 * candidate was replaced, it goes on copying past the replaced token (an edit: a rewritten
 * passage that changes a word and then copies on matches no n-gram until n tokens later).
 */
export class PromptLookup implements TextProposer {
  readonly source = "lookup";
  readonly priced: boolean;
  /** Where last round's offer was copied from (its index in the text), and what it offered. */
  private offered: { from: number; tokens: number[] } | null = null;
  /** After a replaced candidate: the index past it in the text copied from, where copying resumes. */
  private resumeAt: number | null = null;

  constructor(private readonly settings: Pick<LookupSettings, "minMatch" | "maxMatch" | "maxCandidates"> & { priced?: boolean }) {
    this.priced = settings.priced !== false;
  }

  /**
   * Up to `max` (and maxCandidates) tokens that followed the longest (then latest) earlier match
   * of `text`'s suffix, and the match's length; without a match, the tokens past the one last
   * round replaced, with match 0.
   */
  propose(text: readonly number[], max: number): TextProposal {
    const take = Math.min(max, this.settings.maxCandidates);
    const copy = (from: number, match: number): TextProposal => {
      const tokens = text.slice(from, Math.min(from + take, text.length));
      this.offered = { from, tokens };
      return { tokens, match };
    };
    const found = this.latestMatch(text);
    if (found) return copy(found.from, found.length);
    if (this.resumeAt !== null && this.resumeAt < text.length) return copy(this.resumeAt, 0);
    this.offered = null;
    return { tokens: [], match: 0 };
  }

  /**
   * Tokens emitted after this round's offer: its candidates kept, then the target's own token in
   * place of the next. An offer speaks for its own round only (a round the lookup sat out, the
   * draft's, resumes nothing).
   */
  advance(emitted: readonly number[]): void {
    this.resumeAt = null;
    const offered = this.offered;
    this.offered = null;
    if (!offered || offered.tokens.length === 0) return;
    let kept = 0;
    while (kept < offered.tokens.length && kept < emitted.length - 1 && emitted[kept] === offered.tokens[kept]) kept++;
    // The target's token took the place of the source's token at from + kept.
    this.resumeAt = offered.from + kept + 1;
  }

  /** The longest (maxMatch down to minMatch), then latest, earlier occurrence of the text's suffix: where what followed it starts. */
  private latestMatch(text: readonly number[]): { from: number; length: number } | null {
    const { minMatch } = this.settings;
    const maxMatch = Math.max(minMatch, this.settings.maxMatch);
    for (let n = Math.min(maxMatch, text.length - 1); n >= minMatch; n--) {
      const start = text.length - n;
      // Latest occurrence first, ending before the suffix itself.
      for (let i = start - 1; i >= 0; i--) {
        let match = true;
        for (let j = 0; j < n && match; j++) match = text[i + j] === text[start + j];
        if (match) return { from: i + n, length: n };
      }
    }
    return null;
  }
}
