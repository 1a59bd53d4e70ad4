// A model entry of the configuration: which GGUF files serve a model id, and how. Each
// feature declares its own entry (speculative, fusion, experts); this one puts them together.
import { z } from "zod";
import { FusionEntry } from "../decoding/fusion/config.js";
import { SpeculativeEntry } from "../decoding/speculative/config.js";
import { LookupEntry } from "../decoding/speculative/lookup.js";
import { ExpertsEntry } from "../experts/config.js";

export const LoraEntry = z.strictObject({
  path: z.string().min(1),
  scale: z.number().finite().default(1),
});

export const ModelEntry = z.strictObject({
  /** The id clients put in `model`. */
  id: z.string().min(1).regex(/^[\w.:/+-]+$/, "use letters, digits and . _ : / + -"),
  /** Path to the GGUF file. */
  path: z.string().min(1),
  /** LoRA adapters applied to every request of this id (node-llama-cpp applies them per context). */
  lora: z.array(LoraEntry).default([]),
  /**
   * Tokens per sequence, capped at the model's training context; "auto": the training context,
   * reduced to what fits in memory for `parallel` sequences (a warning says so).
   */
  contextSize: z.union([z.number().int().min(64), z.literal("auto")]).default("auto"),
  /** Concurrent sequences (requests or choices evaluated together in shared batches). */
  parallel: z.number().int().min(1).max(64).default(4),
  /** CPU threads for this model's context; defaults to the server-wide setting. */
  threads: z.number().int().min(1).optional(),
  /** Layers offloaded to the GPU: "auto" fits what memory allows. */
  gpuLayers: z.union([z.literal("auto"), z.literal("max"), z.number().int().min(0)]).default("auto"),
  /**
   * llama.cpp RPC servers ("host:port", started with `npm run rpc-server`) that hold this model's
   * layers, spread by their free memory; the model's own draft, fusion and expert files stay local.
   */
  rpc: z
    .array(z.string().regex(/^(\[[0-9A-Fa-f:.]+\]|[\w.-]+):\d{1,5}$/, "an RPC server is host:port"))
    .min(1)
    .max(16)
    .refine((servers) => new Set(servers).size === servers.length, "an RPC server is listed twice")
    .optional(),
  /** Tokens evaluated per batch (prompt processing chunk). */
  batchSize: z.number().int().min(1).optional(),
  /**
   * Plain requests decode and draw inside the native addon while their sequence has the context
   * to itself (engine/batch.ts); false: every token through JavaScript's loop (a diagnostic switch).
   */
  generationLoop: z.boolean().optional(),
  /** Choices that may wait for a free sequence of this id; beyond, requests are refused (429). Defaults to limits.maxQueue. */
  maxQueue: z.number().int().min(0).optional(),
  /**
   * Serve this id for embeddings only (POST /v1/embeddings), pooled as the GGUF says; chat and
   * completions refuse it. Not together with speculative, fusion or experts.
   */
  embeddings: z.boolean().default(false),
  /** Prompt lookup: speculate from the prompt and the output themselves (no draft model). */
  lookup: LookupEntry.optional(),
  /** Serve this id with speculative decoding. */
  speculative: SpeculativeEntry.optional(),
  /** Serve this id with dynamic logit fusion (not together with speculative). */
  fusion: FusionEntry.optional(),
  /** Also serve this model with a library of routed LoRA experts (`<id>+phatgoose`, `<id>+arrow`). */
  experts: ExpertsEntry.optional(),
})
  .refine((e) => !(e.embeddings && (e.speculative || e.fusion || e.experts || e.lookup)), {
    message: "an embeddings entry serves embeddings only; speculative, fusion, experts and lookup are for generation",
    path: ["embeddings"],
  })
  .refine((e) => !(e.rpc && (e.experts || e.embeddings)), {
    message: "a model on RPC servers serves generation without routed experts (its variants would load the whole model locally)",
    path: ["rpc"],
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
