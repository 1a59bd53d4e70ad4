// OpenAI response and chunk shapes, built from decode steps.
import { randomUUID } from "node:crypto";
import type { FinishReason, TokenLogprob } from "../decoding/types.js";

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

/** Accumulates one choice of a non-streamed response. */
export class ChoiceAccumulator {
  text = "";
  tokens = 0;
  logprobs: TokenLogprob[] = [];
  finishReason: FinishReason | null = null;

  add(step: { tokens: number[]; text: string; logprobs?: TokenLogprob[]; finishReason?: FinishReason }): void {
    this.text += step.text;
    this.tokens += step.tokens.length;
    if (step.logprobs) this.logprobs.push(...step.logprobs);
    if (step.finishReason) this.finishReason = step.finishReason;
  }
}
