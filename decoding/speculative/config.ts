// Speculative decoding's settings, declared once: the fields below give the config file's
// `speculative` entry (with defaults), the request's `flock.speculative` overrides (snake_case,
// all optional) and the settings a pipeline resolves.
import { z } from "zod";
import { requestOverrides } from "../overrides.js";

const settings = {
  /** specdec++: adaptive (acceptance predictor); fixed: always k; confidence: stop below pMin. */
  policy: z.enum(["specdec++", "fixed", "confidence"]),
  k: z.int().min(1).max(32),
  /** SpecDec++ threshold h on P(at least one rejection); "auto" derives it from measured costs (costs.ts). */
  threshold: z.union([z.number().gt(0).lt(1), z.literal("auto")]),
  /** Confidence policy: the draft's top-1 probability below which drafting stops. */
  pMin: z.number().min(0).max(1),
  minCandidates: z.int().min(1).max(64),
  maxCandidates: z.int().min(1).max(64),
  /**
   * How requests without a seed are verified: rejection sampling (the highest acceptance) or
   * coupled keyed noise. Requests with a seed are coupled unless they ask otherwise (their text
   * then depends on the request alone).
   */
  verification: z.enum(["rejection", "coupled"]),
};

/** Speculative decoding for a model id: a draft GGUF and how candidate lengths are chosen. */
export const SpeculativeEntry = z.strictObject({
  /** Path to the draft model's GGUF (same vocabulary as the target). */
  draft: z.string().min(1),
  policy: settings.policy.default("specdec++"),
  k: settings.k.default(4),
  threshold: settings.threshold.default("auto"),
  pMin: settings.pMin.default(0.6),
  minCandidates: settings.minCandidates.default(1),
  maxCandidates: settings.maxCandidates.default(20),
  /**
   * online: logistic model trained from verification outcomes; draft-confidence: P̂ = q(y);
   * head: the SpecDec++ authors' head on the draft's hidden states (file from npm run train:acceptance).
   */
  predictor: z.enum(["online", "draft-confidence", "head"]).default("online"),
  /** The trained head (predictor "head"). */
  head: z.string().min(1).optional(),
  verification: settings.verification.default("rejection"),
  /** Draft CPU threads; defaults to the model's. */
  threads: z.int().min(1).optional(),
});
export type SpeculativeEntry = z.infer<typeof SpeculativeEntry>;

/** What a pipeline decodes with; a request may override any of it. */
export type SpeculativeSettings = Pick<SpeculativeEntry, keyof typeof settings>;

/** The `flock.speculative` extension of a request. */
export const SpeculativeRequest = requestOverrides({
  ...settings,
  /** false: decode without the draft (plain sampling from the target). */
  enabled: z.boolean(),
  /** Report how every token came to be (origin, round, draft probability, acceptance, P̂). */
  detail: z.boolean(),
});
export type SpeculativeOverrides = z.output<typeof SpeculativeRequest>;
