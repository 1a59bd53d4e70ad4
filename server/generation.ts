// From a validated OpenAI request to the decoder's PipelineRequests (one per choice), and
// running the choices together.
import { randomInt } from "node:crypto";
import { DEFAULT_SAMPLING, type SamplingParams } from "../decoding/sampler.js";
import type { FusionOverrides } from "../decoding/fusion/config.js";
import type { SpeculativeOverrides } from "../decoding/speculative/config.js";
import type { LookupOverrides } from "../decoding/speculative/lookup.js";
import type { RoutingOverrides } from "../experts/config.js";
import { planRouting } from "../experts/routed.js";
import type { DecodeStep } from "../decoding/types.js";
import { FlockError } from "../engine/errors.js";
import type { ChatMessage, RenderedPrompt } from "../engine/model.js";
import type { Pipeline, PipelineRequest } from "../pipelines/pipeline.js";
import type { ChoiceAccumulator, ExtensionOptions } from "./format.js";
import { outputConstraint } from "./output-format.js";
import { type ChatCompletionRequest, type CompletionRequest, EXTENSION_KEY, type ResponsesRequest } from "./schemas.js";

export interface Limits {
  /** Largest `n` accepted. */
  maxN: number;
  /** Largest `max_tokens` accepted; null: bounded by the context window only. */
  maxTokens: number | null;
}

type CommonRequest = ChatCompletionRequest | CompletionRequest | ResponsesRequest;

export function samplingParams(body: CommonRequest, pipeline: Pipeline): SamplingParams {
  const ext = body[EXTENSION_KEY];
  const vocabularySize = pipeline.model.vocabularySize;
  const outside = Object.keys(body.logit_bias ?? {}).find((token) => Number(token) >= vocabularySize);
  if (outside !== undefined) throw new FlockError("invalid_request", `logit_bias names token id ${outside}, outside the vocabulary (size ${vocabularySize})`, "logit_bias");
  return {
    temperature: body.temperature ?? 1,
    topP: body.top_p ?? 1,
    topK: Math.max(0, body.top_k ?? ext?.top_k ?? 0),
    minP: body.min_p ?? ext?.min_p ?? 0,
    presencePenalty: body.presence_penalty ?? 0,
    frequencyPenalty: body.frequency_penalty ?? 0,
    repetitionPenalty: body.repetition_penalty ?? body.repeat_penalty ?? 1,
    repeatLastN: body.repeat_last_n ?? DEFAULT_SAMPLING.repeatLastN,
    logitBias: new Map(Object.entries(body.logit_bias ?? {}).map(([token, bias]) => [Number(token), bias])),
  };
}

/** `flock.speculative`, checked against the pipeline: only models served with a draft take it. */
export function speculativeOverrides(body: CommonRequest, pipeline: Pipeline): SpeculativeOverrides | undefined {
  const overrides = body[EXTENSION_KEY]?.speculative;
  if (overrides && pipeline.kind !== "speculative" && overrides.enabled !== false) {
    throw new FlockError("unsupported", `model ${pipeline.id} is not served with a draft model; remove ${EXTENSION_KEY}.speculative`, `${EXTENSION_KEY}.speculative`);
  }
  return overrides;
}

/** `flock.lookup`, checked against the pipeline: plain and speculative models speculate from the text. */
export function lookupOverrides(body: CommonRequest, pipeline: Pipeline): LookupOverrides | undefined {
  const overrides = body[EXTENSION_KEY]?.lookup;
  if (overrides?.enabled) refuseTextProposals(pipeline, `${EXTENSION_KEY}.lookup`);
  return overrides;
}

/** Fused and routed models have no speculative verification: a prediction or lookup is refused, not ignored. */
function refuseTextProposals(pipeline: Pipeline, param: string): void {
  if (pipeline.kind === "fusion" || pipeline.kind === "routed") {
    const how = pipeline.kind === "fusion" ? "logit fusion" : "routed experts";
    throw new FlockError("unsupported", `model ${pipeline.id} is served with ${how}, which cannot verify proposed tokens; remove ${param}`, param);
  }
}

/** `flock.fusion`, checked against the pipeline: only fused models take it, and only their experts. */
export function fusionOverrides(body: CommonRequest, pipeline: Pipeline): FusionOverrides | undefined {
  const overrides = body[EXTENSION_KEY]?.fusion;
  if (!overrides) return undefined;
  const param = `${EXTENSION_KEY}.fusion`;
  if (pipeline.kind !== "fusion") throw new FlockError("unsupported", `model ${pipeline.id} is not served with logit fusion; remove ${param}`, param);
  const known = pipeline.experts.map((e) => e.name);
  const unknown = overrides.experts?.find((name) => !known.includes(name));
  if (unknown !== undefined) {
    throw new FlockError("invalid_request", `unknown fusion expert "${unknown}"; model ${pipeline.id} has ${known.join(", ")}`, `${param}.experts`);
  }
  return overrides;
}

/**
 * `flock.routing`, checked against the pipeline and its library now, so a bad expert name is a
 * 400 rather than an error event in the middle of a stream.
 */
export function routingOverrides(body: CommonRequest, pipeline: Pipeline): RoutingOverrides | undefined {
  const overrides = body[EXTENSION_KEY]?.routing;
  if (!overrides) return undefined;
  const param = `${EXTENSION_KEY}.routing`;
  if (pipeline.kind !== "routed") {
    throw new FlockError("unsupported", `model ${pipeline.id} is not served with routed experts (those ids end in +phatgoose or +arrow); remove ${param}`, param);
  }
  planRouting(pipeline, overrides);
  return overrides;
}

/** What the response extension reports, from the request's `flock` options. */
export function extensionOptions(body: CommonRequest, pipeline: Pipeline): ExtensionOptions {
  const ext = body[EXTENSION_KEY];
  return {
    speculativeDetail: ext?.speculative?.detail === true,
    fusionDetail: ext?.fusion?.detail === true,
    routing: pipeline.kind === "routed" ? { mode: ext?.routing?.mode ?? "routed", method: pipeline.method } : undefined,
    routingDetail: ext?.routing?.detail === true,
  };
}

export function stopSequences(body: CommonRequest): string[] {
  if (body.stop == null) return [];
  return (typeof body.stop === "string" ? [body.stop] : body.stop).filter((s) => s.length > 0);
}

export function choiceCount(body: CommonRequest, limits: Limits): number {
  const n = body.n ?? 1;
  if (n > limits.maxN) throw new FlockError("unsupported", `n is ${n}; this server allows at most ${limits.maxN}`, "n");
  return n;
}

const PRECISE_BELOW_BYTES = 256 * 1024;

/** The field a request's prompt comes in: chat's messages, completions' prompt, Responses' input. */
export type PromptParam = "messages" | "prompt" | "input";

/** The most prompt tokens a request may bring: the context window, or the server's cap if lower. */
export function promptWindow(pipeline: Pipeline, maxPromptTokens: number | null): number {
  return Math.min(pipeline.model.contextSize, maxPromptTokens ?? Infinity);
}

/**
 * Refuses, before tokenizing it, prompt text too long for `window` tokens whatever its
 * tokenization: no token stands for more than the model's longest token text, so bytes / that
 * is a lower bound on the token count. Tokenizing megabytes would hold the event loop for
 * seconds; this costs one pass over the string. Prompts under 256 KiB are left to the exact
 * check after tokenizing.
 */
export function checkPromptBytes(texts: readonly string[], pipeline: { readonly model: { readonly maxTokenBytes: number } }, window: number, promptParam: PromptParam): void {
  const bytes = texts.reduce((n, t) => n + Buffer.byteLength(t), 0);
  // Below this, tokenizing takes milliseconds and the refusal can state the exact token count.
  if (bytes < PRECISE_BELOW_BYTES) return;
  const perToken = pipeline.model.maxTokenBytes;
  const atLeast = Math.ceil(bytes / perToken);
  if (atLeast > window) {
    throw new FlockError(
      "context_length_exceeded",
      `This model accepts at most ${window} prompt tokens. However, your ${promptParam} holds ${bytes} bytes, at least ${atLeast} tokens. Please reduce the length of the ${promptParam}.`,
      promptParam,
    );
  }
}

/**
 * The text of a conversation the chat template renders into the prompt: every message, the
 * names and arguments of earlier tool calls, and the tool definitions (as JSON, about the size
 * they render to), for checkPromptBytes.
 */
export function conversationTexts(messages: readonly ChatMessage[], tools: unknown): string[] {
  const texts = messages.flatMap((m) => [m.content, ...(m.role === "assistant" ? (m.toolCalls ?? []).flatMap((call) => [call.name, call.arguments]) : [])]);
  if (tools != null) texts.push(JSON.stringify(tools));
  return texts;
}

/**
 * How many tokens a choice may generate: what was asked, checked against the context window
 * (OpenAI's context_length_exceeded) and the server's cap; when nothing was asked, what the
 * window leaves.
 */
export function maxTokensFor(
  requested: number | null | undefined,
  promptTokens: number,
  pipeline: Pipeline,
  limits: Limits,
  promptParam: PromptParam,
  requestedParam: "max_tokens" | "max_completion_tokens" | "max_output_tokens",
): number {
  const window = pipeline.model.contextSize;
  if (requested != null && limits.maxTokens !== null && requested > limits.maxTokens) {
    throw new FlockError("invalid_request", `${requestedParam} is ${requested}; this server allows at most ${limits.maxTokens}`, requestedParam);
  }
  const completion = requested ?? 1;
  if (promptTokens + completion > window) {
    const what = `in the ${promptParam === "input" ? "input" : promptParam}`;
    throw new FlockError(
      "context_length_exceeded",
      `This model's maximum context length is ${window} tokens. However, you requested ${promptTokens + completion} tokens ` +
        `(${promptTokens} ${what}, ${completion} in the completion). Please reduce the length of the ${promptParam} or completion.`,
      promptParam,
    );
  }
  const left = window - promptTokens;
  return Math.min(requested ?? left, left, limits.maxTokens ?? Infinity);
}

/**
 * The n choices of one prompt, numbered from `firstChoice` (OpenAI numbers the choices of batched
 * prompts on). A seed makes them draw with keyed noise, keyed by (seed, choice), so each choice
 * of a seeded request reproduces whatever serves it; without one, a random seed and the faster
 * sequential draws.
 */
export function choiceRequests(
  n: number,
  base: Omit<PipelineRequest, "seed" | "choice" | "keyedNoise">,
  seed: number | null | undefined,
  firstChoice = 0,
): PipelineRequest[] {
  const keyedNoise = seed != null;
  // The whole seed keys the noise (both 32-bit halves, noise.ts); JSON numbers hold integers
  // exactly up to 2^53, which the schema enforces.
  const shared = keyedNoise ? seed : randomInt(0, 2 ** 31);
  return Array.from({ length: n }, (_, i) => ({ ...base, seed: shared, choice: firstChoice + i, keyedNoise }));
}

/** The n choices of a rendered conversation (chat completions, Responses), with the request's sampling and extensions. */
export function conversationChoices(
  body: CommonRequest,
  pipeline: Pipeline,
  rendered: RenderedPrompt,
  options: { n: number; maxTokens: number; topLogprobs: number | null; signal: AbortSignal; prediction?: readonly number[]; toolCallGrammar?: string },
): PipelineRequest[] {
  return choiceRequests(
    options.n,
    {
      prompt: rendered.tokens,
      maxTokens: options.maxTokens,
      sampling: samplingParams(body, pipeline),
      stopStrings: [...stopSequences(body), ...rendered.stopStrings],
      stopTokens: rendered.stopTokens,
      topLogprobs: options.topLogprobs,
      signal: options.signal,
      speculative: speculativeOverrides(body, pipeline),
      fusion: fusionOverrides(body, pipeline),
      routing: routingOverrides(body, pipeline),
      lookup: lookupOverrides(body, pipeline),
      constraint: outputConstraint(body, pipeline, options.toolCallGrammar),
      ...(options.prediction ? { prediction: options.prediction } : {}),
    },
    body.seed,
  );
}

/**
 * Predicted Outputs' tokens (chat's `prediction`), for models that can verify them: plain and
 * speculative ones; fused and routed ones refuse it rather than ignore it.
 */
export function predictionTokens(prediction: { content: string | Array<{ text: string }> } | null | undefined, pipeline: Pipeline): number[] | undefined {
  if (!prediction) return undefined;
  refuseTextProposals(pipeline, "prediction");
  const text = typeof prediction.content === "string" ? prediction.content : prediction.content.map((p) => p.text).join("");
  return pipeline.model.tokenize(text, { addSpecial: false, parseSpecial: false });
}

/** OpenAI's completion_tokens_details for a request with a prediction: its tokens accepted and rejected. */
export function predictionUsage(choices: readonly ChoiceAccumulator[]): { accepted_prediction_tokens: number; rejected_prediction_tokens: number } {
  const drafted = choices.reduce((n, ch) => n + (ch.speculative?.drafted ?? 0), 0);
  const accepted = choices.reduce((n, ch) => n + (ch.speculative?.accepted ?? 0), 0);
  return { accepted_prediction_tokens: accepted, rejected_prediction_tokens: drafted - accepted };
}

/** Runs the choices concurrently, yielding each step as soon as it is produced. */
export async function* mergeChoices(pipeline: Pipeline, requests: readonly PipelineRequest[]): AsyncGenerator<{ index: number; step: DecodeStep }> {
  const generators = requests.map((r) => pipeline.generate(r));
  const next = (index: number) => generators[index].next().then((result) => ({ index, result }));
  const inFlight = new Map(generators.map((_, i) => [i, next(i)]));
  try {
    while (inFlight.size > 0) {
      const { index, result } = await Promise.race(inFlight.values());
      if (result.done) {
        inFlight.delete(index);
        continue;
      }
      inFlight.set(index, next(index));
      yield { index, step: result.value };
    }
  } finally {
    // Stop choices still running (client gone, or another choice failed): frees their sequences.
    for (const pending of inFlight.values()) pending.catch(() => undefined);
    await Promise.allSettled(generators.map((g) => g.return(undefined)));
  }
}
