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
  /**
   * online: logistic model trained from verification outcomes; draft-confidence: P̂ = q(y);
   * head: the SpecDec++ authors' head on the draft's hidden states (file from npm run train:acceptance).
   */
  predictor: z.enum(["online", "draft-confidence", "head"]).default("online"),
  /** The trained head (predictor "head"). */
  head: z.string().min(1).optional(),
  /**
   * How requests without a seed are verified: rejection sampling (the highest acceptance) or
   * coupled keyed noise. Requests with a seed are always coupled (their text then depends on the
   * request alone).
   */
  verification: z.enum(["rejection", "coupled"]).default("rejection"),
  /** Draft CPU threads; defaults to the model's. */
  threads: z.int().min(1).optional(),
});
export type SpeculativeEntry = z.infer<typeof SpeculativeEntry>;

/** A small model of the fusion set: its own GGUF, or a LoRA adapter over the small base. */
export const FusionExpertEntry = z
  .strictObject({
    name: z.string().min(1).regex(/^[\w.-]+$/, "use letters, digits and . _ -"),
    path: z.string().min(1).optional(),
    lora: z.string().min(1).optional(),
    scale: z.number().finite().default(1),
  })
  .refine((e) => (e.path === undefined) !== (e.lora === undefined), { message: "give an expert either path (a GGUF) or lora (an adapter over the small base)" });

/** Dynamic logit fusion for a model id: the entry's own model is the strong one. */
export const FusionEntry = z.strictObject({
  /** Path to the small base model's GGUF (same vocabulary as the strong model). */
  base: z.string().min(1),
  experts: z.array(FusionExpertEntry).min(1),
  /** dynamic: α re-solved every step; static: proxy tuning with a fixed α. */
  mode: z.enum(["dynamic", "static"]).default("dynamic"),
  alpha: z.number().min(0).max(10).default(1),
  grid: z
    .strictObject({ max: z.number().gt(0).max(10), step: z.number().gt(0) })
    .refine((g) => g.max / g.step <= 255, { message: "at most 255 grid steps" })
    .default({ max: 2, step: 0.1 }),
  /** Nats below each model's top token that the α solve still considers; null: the whole vocabulary (exact). */
  supportMargin: z.number().gt(0).nullable().default(null),
  /** Small models' CPU threads; defaults to the entry's. */
  threads: z.int().min(1).optional(),
});
export type FusionEntry = z.infer<typeof FusionEntry>;

/** One LoRA expert of a routed library. */
export const ExpertEntry = z.strictObject({
  name: z.string().min(1).max(64).regex(/^[\w.-]+$/, "use letters, digits and . _ -"),
  /** The adapter (llama.cpp LoRA GGUF) over this entry's model. */
  lora: z.string().min(1),
  scale: z.number().finite().default(1),
  /** PHATGOOSE gate file (.gguf or .safetensors); without one the expert routes by Arrow gates only. */
  gates: z.string().min(1).optional(),
});
export type ExpertEntry = z.infer<typeof ExpertEntry>;

/** A library of LoRA experts over this entry's model, served routed as `<id>+phatgoose` / `<id>+arrow`. */
export const ExpertsEntry = z.strictObject({
  library: z.array(ExpertEntry).default([]),
  /** Which routed ids to serve. */
  methods: z.array(z.enum(["phatgoose", "arrow"])).min(1).default(["phatgoose", "arrow"]),
  /** Experts per token and module (top-k of the softmax, renormalised). */
  topK: z.int().min(1).max(64).default(2),
  temperature: z.number().min(0.01).max(100).default(1),
  /** Routing configurations (expert subsets, modes, top-k) kept as live contexts at once. */
  maxContexts: z.int().min(1).max(64).default(4),
});
export type ExpertsEntry = z.infer<typeof ExpertsEntry>;

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
  /** Choices that may wait for a free sequence of this id; beyond, requests are refused (429). Defaults to limits.maxQueue. */
  maxQueue: z.number().int().min(0).optional(),
  /** Serve this id with speculative decoding. */
  speculative: SpeculativeEntry.optional(),
  /** Serve this id with dynamic logit fusion (not together with speculative). */
  fusion: FusionEntry.optional(),
  /** Also serve this model with a library of routed LoRA experts (`<id>+phatgoose`, `<id>+arrow`). */
  experts: ExpertsEntry.optional(),
});
export type ModelEntry = z.infer<typeof ModelEntry>;

/** Every GGUF file an entry loads: its model, LoRA adapters, draft, fusion models and experts. */
export function entryFiles(entry: ModelEntry): string[] {
  return [
    entry.path,
    ...entry.lora.map((l) => l.path),
    ...(entry.speculative ? [entry.speculative.draft] : []),
    ...(entry.fusion ? [entry.fusion.base, ...entry.fusion.experts.flatMap((e) => [e.path ?? e.lora!])] : []),
    ...(entry.experts?.library.map((e) => e.lora) ?? []),
  ];
}
export type ModelEntryInput = z.input<typeof ModelEntry>;
