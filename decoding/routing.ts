// Per-request routing settings (the `flock.routing` extension), shared by decoding and server.
/** How a routed module scores experts (see routing/score.ts). */
export type RoutingMethod = "phatgoose" | "arrow";

/**
 * routed: per token and module (PHATGOOSE or Arrow); single: one adapter for the whole request
 * (how vLLM and LoRAX serve LoRA); merge: every expert at scale 1/N; retrieval: the one expert
 * whose gate is most like the prompt, for the whole request.
 */
export type RoutingMode = "routed" | "single" | "merge" | "retrieval";

export interface RoutingOverrides {
  mode?: RoutingMode;
  topK?: number;
  temperature?: number;
  /** A subset of the library, by name. */
  experts?: string[];
  /** The adapter for mode "single". */
  expert?: string;
}
