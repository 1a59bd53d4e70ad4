// The model registry's configuration: which GGUF files serve which model ids, and how.
import { z } from "zod";

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
});
export type ModelEntry = z.infer<typeof ModelEntry>;
export type ModelEntryInput = z.input<typeof ModelEntry>;
