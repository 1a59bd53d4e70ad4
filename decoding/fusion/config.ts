// Logit fusion's settings, declared once: the config file's `fusion` entry (with defaults), the
// request's `flock.fusion` overrides and the settings the decoder runs with.
import { z } from "zod";
import { requestOverrides } from "../overrides.js";
import type { GridKernel } from "./solver.js";

const settings = {
  /** dynamic: α re-solved every step (one expert active); static: a fixed α for every selected expert (proxy tuning). */
  mode: z.enum(["dynamic", "static"]),
  /** The static α. */
  alpha: z.number().min(0).max(10),
  grid: z
    .strictObject({ max: z.number().gt(0).max(10), step: z.number().gt(0) })
    .refine((g) => g.max / g.step <= 255, { message: "at most 255 grid steps" }),
  /** Nats below each model's top token that the α solve still considers; null: the whole vocabulary (exact). */
  supportMargin: z.number().gt(0).nullable(),
};

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
  mode: settings.mode.default("dynamic"),
  alpha: settings.alpha.default(1),
  grid: settings.grid.default({ max: 2, step: 0.1 }),
  supportMargin: settings.supportMargin.default(null),
  /** Small models' CPU threads; defaults to the entry's. */
  threads: z.int().min(1).optional(),
});
export type FusionEntry = z.infer<typeof FusionEntry>;

/** What the decoder runs with: the entry's settings, and the native grid search when loaded (same results). */
export type FusionSettings = Pick<FusionEntry, keyof typeof settings> & { kernel?: GridKernel };

/** The `flock.fusion` extension of a request. */
export const FusionRequest = requestOverrides({
  mode: settings.mode,
  alpha: settings.alpha,
  /** Names of the experts to use (default: all). */
  experts: z.array(z.string()).min(1),
  /** Report the active expert and α for every token. */
  detail: z.boolean(),
});
export type FusionOverrides = z.output<typeof FusionRequest>;
