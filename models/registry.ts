// The model registry's configuration: which GGUF files serve which model ids, and how.
import { z } from "zod";

export const LoraEntry = z.strictObject({
  path: z.string().min(1),
  scale: z.number().finite().default(1),
});

/** Speculative decoding for a model id: a draft GGUF and how candidate lengths are chosen. */
export const SpeculativeEntry = z.strictObject({
  /** Path to the draft model's GGUF (same vocabulary as the target). */
  draft: z.string().min(1),
  /** specdec++: adaptive (acceptance predictor); fixed: always k; confidence: stop below pMin. */
  policy: z.enum(["specdec++", "fixed", "confidence"]).default("specdec++"),
  k: z.int().min(1).max(32).default(4),
  /** SpecDec++ threshold h on P(at least one rejection); "auto" derives it from measured costs. */
  threshold: z.union([z.number().gt(0).lt(1), z.literal("auto")]).default("auto"),
  /** Confidence policy: the draft's top-1 probability below which drafting stops. */
  pMin: z.number().min(0).max(1).default(0.6),
  minCandidates: z.int().min(1).max(64).default(1),
  maxCandidates: z.int().min(1).max(64).default(20),
  /** online: logistic model trained from verification outcomes; draft-confidence: P̂ = q(y). */
  predictor: z.enum(["online", "draft-confidence"]).default("online"),
  /** Draft CPU threads; defaults to the model's. */
  threads: z.int().min(1).optional(),
});
export type SpeculativeEntry = z.infer<typeof SpeculativeEntry>;

export const ModelEntry = z.strictObject({
  /** The id clients put in `model`. */
  id: z.string().min(1).regex(/^[\w.:/+-]+$/, "use letters, digits and . _ : / + -"),
  /** Path to the GGUF file. */
  path: z.string().min(1),
  /** LoRA adapters applied to every request of this id (node-llama-cpp applies them per context). */
  lora: z.array(LoraEntry).default([]),
  /** Tokens per sequence; capped at the model's training context. */
  contextSize: z.number().int().min(64).default(4096),
  /** Concurrent sequences (requests or choices evaluated together in shared batches). */
  parallel: z.number().int().min(1).max(64).default(4),
  /** CPU threads for this model's context; defaults to the server-wide setting. */
  threads: z.number().int().min(1).optional(),
  /** Layers offloaded to the GPU: "auto" fits what memory allows. */
  gpuLayers: z.union([z.literal("auto"), z.literal("max"), z.number().int().min(0)]).default("auto"),
  /** Tokens evaluated per batch (prompt processing chunk). */
  batchSize: z.number().int().min(1).optional(),
  /** Serve this id with speculative decoding. */
  speculative: SpeculativeEntry.optional(),
});
export type ModelEntry = z.infer<typeof ModelEntry>;
export type ModelEntryInput = z.input<typeof ModelEntry>;
