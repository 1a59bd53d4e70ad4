// OpenAI response and chunk shapes, built from decode steps.
import { randomUUID } from "node:crypto";
import type { DecodeStep, FinishReason, FusionToken, TokenLogprob } from "../decoding/types.js";

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

export function usageOf(promptTokens: number, completionTokens: number): Usage {
  return { prompt_tokens: promptTokens, completion_tokens: completionTokens, total_tokens: promptTokens + completionTokens };
}

export function completionId(kind: "chatcmpl" | "cmpl"): string {
  return `${kind}-${randomUUID().replaceAll("-", "")}`;
}

export const nowSeconds = (): number => Math.floor(Date.now() / 1000);

const bytesOf = (text: string): number[] => [...Buffer.from(text, "utf8")];

/** Chat `logprobs.content` entries. */
export function chatLogprobs(entries: readonly TokenLogprob[]) {
  return entries.map((e) => ({
    token: e.text,
    logprob: e.logprob,
    bytes: bytesOf(e.text),
    top_logprobs: e.top.map((t) => ({ token: t.text, logprob: t.logprob, bytes: bytesOf(t.text) })),
  }));
}

/** Legacy completions `logprobs` object; `offset` is where this text starts in the choice. */
export function completionLogprobs(entries: readonly TokenLogprob[], offset: number) {
  const text_offset: number[] = [];
  let at = offset;
  for (const e of entries) {
    text_offset.push(at);
    at += e.text.length;
  }
  return {
    tokens: entries.map((e) => e.text),
    token_logprobs: entries.map((e) => e.logprob),
    top_logprobs: entries.map((e) => Object.fromEntries(e.top.map((t) => [t.text, t.logprob]))),
    text_offset,
  };
}

/** Speculative counters of one choice or a whole response. */
export class SpeculativeTally {
  rounds = 0;
  drafted = 0;
  accepted = 0;

  add(other: { drafted: number; accepted: number; rounds?: number }): void {
    this.rounds += other.rounds ?? 1;
    this.drafted += other.drafted;
    this.accepted += other.accepted;
  }

  /** The `flock.speculative` response extension. */
  toJSON() {
    return {
      rounds: this.rounds,
      drafted_tokens: this.drafted,
      accepted_tokens: this.accepted,
      acceptance_rate: this.drafted === 0 ? 0 : this.accepted / this.drafted,
      mean_candidate_length: this.rounds === 0 ? 0 : this.drafted / this.rounds,
    };
  }
}

/** Fusion summary of one choice or a whole response: steps per active expert, mean α. */
export class FusionTally {
  readonly tokens: FusionToken[] = [];

  add(tokens: readonly FusionToken[]): void {
    this.tokens.push(...tokens);
  }

  /** The `flock.fusion` response extension; per-token detail when asked for. */
  summary(detail: boolean) {
    const experts: Record<string, number> = {};
    for (const t of this.tokens) experts[t.expert ?? "none"] = (experts[t.expert ?? "none"] ?? 0) + 1;
    const meanAlpha = this.tokens.length === 0 ? 0 : this.tokens.reduce((a, t) => a + t.alpha, 0) / this.tokens.length;
    return { steps: this.tokens.length, experts, mean_alpha: meanAlpha, ...(detail ? { tokens: this.tokens } : {}) };
  }
}

/** Accumulates one choice. */
export class ChoiceAccumulator {
  text = "";
  tokens = 0;
  logprobs: TokenLogprob[] = [];
  finishReason: FinishReason | null = null;
  speculative: SpeculativeTally | null = null;
  fusion: FusionTally | null = null;

  add(step: DecodeStep): void {
    this.text += step.text;
    this.tokens += step.tokens.length;
    if (step.logprobs) this.logprobs.push(...step.logprobs);
    if (step.finishReason) this.finishReason = step.finishReason;
    if (step.speculative) (this.speculative ??= new SpeculativeTally()).add(step.speculative);
    if (step.fusion) (this.fusion ??= new FusionTally()).add(step.fusion);
  }
}

export interface ExtensionOptions {
  /** flock.fusion.detail: per-token fusion choices. */
  fusionDetail?: boolean;
}

/** The response-level `flock` extension, or nothing when no feature reported anything. */
export function responseExtension(choices: readonly ChoiceAccumulator[], options: ExtensionOptions = {}): { flock?: object } {
  const flock: Record<string, object> = {};
  const speculative = choices.filter((c) => c.speculative);
  if (speculative.length > 0) {
    const total = new SpeculativeTally();
    for (const c of speculative) total.add(c.speculative!);
    flock.speculative = total;
  }
  const fused = choices.filter((c) => c.fusion);
  if (fused.length > 0) {
    if (choices.length === 1) flock.fusion = fused[0].fusion!.summary(options.fusionDetail === true);
    else flock.fusion = { ...mergeFusion(fused).summary(false), ...(options.fusionDetail ? { choices: fused.map((c) => c.fusion!.summary(true)) } : {}) };
  }
  return Object.keys(flock).length > 0 ? { flock } : {};
}

function mergeFusion(choices: readonly ChoiceAccumulator[]): FusionTally {
  const total = new FusionTally();
  for (const c of choices) total.add(c.fusion!.tokens);
  return total;
}

/** The `flock` extension on a choice's final stream chunk. */
export function choiceExtension(choice: ChoiceAccumulator, options: ExtensionOptions = {}): { flock?: object } {
  const flock: Record<string, object> = {};
  if (choice.speculative) flock.speculative = choice.speculative;
  if (choice.fusion) flock.fusion = choice.fusion.summary(options.fusionDetail === true);
  return Object.keys(flock).length > 0 ? { flock } : {};
}
