// Routed experts' settings, declared once: the config file's `experts` entry (a library of
// LoRA experts, with defaults), the request's `flock.routing` overrides and the settings a
// routed pipeline resolves.
import { z } from "zod";
import { requestOverrides } from "../decoding/overrides.js";

/** How a routed module scores experts (score.ts). */
const RoutingMethod = z.enum(["phatgoose", "arrow"]);
export type RoutingMethod = z.infer<typeof RoutingMethod>;

/**
 * routed: per token and module (PHATGOOSE or Arrow); single: one adapter for the whole request
 * (how vLLM and LoRAX serve LoRA); merge: every expert at scale 1/N; retrieval: the one expert
 * whose gate is most like the prompt, for the whole request.
 */
const RoutingMode = z.enum(["routed", "single", "merge", "retrieval"]);
export type RoutingMode = z.infer<typeof RoutingMode>;

const settings = {
  /** Experts per token and module (top-k of the softmax, renormalised). */
  topK: z.int().min(1).max(64),
  temperature: z.number().min(0.01).max(100),
};

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
  methods: z.array(RoutingMethod).min(1).default(["phatgoose", "arrow"]),
  topK: settings.topK.default(2),
  temperature: settings.temperature.default(1),
  /** Routing configurations (expert subsets, modes, top-k) kept as live contexts at once. */
  maxContexts: z.int().min(1).max(64).default(4),
});
export type ExpertsEntry = z.infer<typeof ExpertsEntry>;

/** What a routed pipeline routes with; a request may override it. */
export type RoutingSettings = Pick<ExpertsEntry, keyof typeof settings>;

/** The `flock.routing` extension of a request. */
export const RoutingRequest = requestOverrides({
  mode: RoutingMode,
  ...settings,
  /** A subset of the library, by name. */
  experts: z.array(z.string().min(1)).min(1).max(64),
  /** The adapter for mode "single". */
  expert: z.string().min(1),
  /** Report the experts of every token. */
  detail: z.boolean(),
});
export type RoutingOverrides = z.output<typeof RoutingRequest>;

