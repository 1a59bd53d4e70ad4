// What decoders consume and produce. Steps flow as an AsyncGenerator<DecodeStep> to server/,
// which only formats them.
import type { TokenConstraint } from "./constraint.js";
import type { LookupOverrides } from "./speculative/lookup.js";
import type { RoutingTrace } from "../engine/native.js";
import type { Sequence } from "../engine/sequence.js";
import type { SamplingParams } from "./sampler.js";
import type { FusionOverrides } from "./fusion/config.js";
import type { SpeculativeOverrides } from "./speculative/config.js";
import type { TextSource } from "./speculative/text-proposals.js";

/** The slice of a served model a decoder needs. */
export interface DecodingModel {
  readonly id: string;
  readonly contextSize: number;
  acquire(prompt: readonly number[], signal?: AbortSignal): Promise<Sequence>;
  detokenize(tokens: readonly number[], context?: readonly number[]): string;
  isEndOfGeneration(token: number): boolean;
}

export interface TokenLogprob {
  token: number;
  text: string;
  /** The token's raw bytes (they differ from text's UTF-8 for part of a character); absent: text's. */
  bytes?: number[];
  logprob: number;
  top: Array<{ token: number; text: string; bytes?: number[]; logprob: number }>;
}

export interface GenerationRequest {
  prompt: readonly number[];
  maxTokens: number;
  sampling: SamplingParams;
  /** The request's seed; its choices share it. */
  seed: number;
  /** This choice's index among the request's n (default 0). */
  choice?: number;
  /**
   * Draw with keyed noise (noise.ts): every token a function of (seed, choice, position, token),
   * so the text depends on the request alone — the same with or without a draft, under any
   * candidate-length policy, alone or under load. Set for requests that carry a seed; without
   * it, a sequential RNG seeded with seed + choice.
   */
  keyedNoise?: boolean;
  /** User stop sequences plus the chat template's plain-text terminators. */
  stopStrings: readonly string[];
  /** Tokens that end the turn besides the model's end-of-generation tokens. */
  stopTokens: readonly number[];
  /** Number of alternatives per token to report, or null for no logprobs. */
  topLogprobs: number | null;
  signal?: AbortSignal;
  /** Per-request speculative settings (ignored by pipelines without a draft). */
  speculative?: SpeculativeOverrides;
  /** Per-request prompt lookup settings (plain and speculative pipelines). */
  lookup?: LookupOverrides;
  /** Predicted Outputs: tokens the answer is expected to repeat, proposed for verification. */
  prediction?: readonly number[];
  /**
   * The grammar the output is held to (response_format, tools, grammar), at its start; decoders
   * clone it, so the choices of one request can share it.
   */
  constraint?: TokenConstraint;
  /** Per-request fusion settings (ignored by pipelines without fusion). */
  fusion?: FusionOverrides;
  /**
   * Called with what the engine reports about the position behind each generated token's
   * logits — its final hidden state and, on traced routed contexts, its routing — before the
   * token is chosen (plain decoding on a model loaded with hidden states).
   */
  observePosition?: (position: { hidden: Float32Array; routing?: RoutingTrace }) => void;
}

/**
 * Which experts served a token: each expert's mean weight over the routed modules (the weights
 * sum to 1), most first; for routed LoRA also per module group (attn_q, ffn_down, output, …).
 */
export interface RoutingToken {
  experts: Array<{ expert: string; weight: number }>;
  groups?: Record<string, Array<{ expert: string; weight: number }>>;
}

export type FinishReason = "stop" | "length";

export interface DecodeStep {
  /** Tokens generated in this step (all of them count as completion tokens). */
  tokens: number[];
  /** Text released by this step, after stop-sequence hold-back. */
  text: string;
  /** Log-probabilities of the released tokens, when requested. */
  logprobs?: TokenLogprob[];
  /** Present on the last step. */
  finishReason?: FinishReason;
  /** Speculative decoding: what this step's verification round did. */
  speculative?: SpeculativeRound;
  /** Logit fusion: the active expert and α for each token of the step. */
  fusion?: FusionToken[];
  /** Routed experts: who served each token of the step (where it is known). */
  routing?: Array<RoutingToken | null>;
}

export interface FusionToken {
  /** The active expert (several joined by "+" in static mode), or null when α = 0. */
  expert: string | null;
  alpha: number;
}

/**
 * How each token of a verified round came to be (see decoding/speculative/verifier.ts): a
 * candidate accepted — the draft's (or a prediction's, or lookup's), or the only token a
 * grammar allowed (proposed without the draft) — or the target's own token after a rejection
 * or after every candidate.
 */
export type TokenOrigin = "accepted" | "forced" | "recovered" | "bonus";

export interface SpeculativeRound {
  /** Candidates proposed this round (by the draft, a prediction, lookup or the grammar). */
  drafted: number;
  /** Of them, tokens a grammar forced (the only one it allowed, proposed without the draft). */
  forced: number;
  /** Candidates the target accepted. */
  accepted: number;
  /** Origin of each token in `tokens`. */
  origins: TokenOrigin[];
  /** How the round was verified: rejection sampling, or coupled keyed noise. */
  verification: "rejection" | "coupled";
  /** Where the candidates came from when text proposed them (else the draft, and the grammar). */
  source?: TextSource;
  /** Per token of `tokens`, when the request asked for it (flock.speculative.detail). */
  detail?: SpeculativeTokenDetail[];
}

/** How one emitted token of a speculative round came to be. */
export interface SpeculativeTokenDetail {
  origin: TokenOrigin;
  /** The verification round (0-based, per choice); a new round starts a new candidate. */
  round: number;
  /** Candidates the draft proposed in that round (0: the target decoded alone). */
  drafted: number;
  /** Accepted tokens: the draft's probability of the token, as the acceptance predictor saw it. */
  draftProbability?: number;
  /**
   * Accepted tokens: min(1, p(y)/q(y)), the chance rejection sampling had to accept it; in
   * coupled verification, 1 (it equalled the target's keyed draw).
   */
  acceptanceProbability?: number;
  /** Accepted tokens: the acceptance predictor's P̂, when the round's policy used one. */
  predictedAcceptance?: number;
  /** Recovered tokens: the drafted candidate the target rejected at this position. */
  rejected?: { token: number; text: string; draftProbability: number; acceptanceProbability: number; predictedAcceptance?: number };
}
