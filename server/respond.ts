// Serves a generation either as one JSON response or as an SSE stream of OpenAI chunks; the
// two share the decode loop, so they cannot drift apart.
import type { Context } from "hono";
import { streamSSE } from "hono/streaming";
import type { DecodeStep, GenerationRequest } from "../decoding/types.js";
import type { Pipeline } from "../routing/pipeline.js";
import { ChoiceAccumulator, type Usage, usageOf } from "./format.js";
import { mergeChoices } from "./generation.js";
import { toOpenAIError } from "./errors.js";
import type { Logger } from "./logger.js";

/** Builds the endpoint's shapes (chat and legacy completions differ only here). */
export interface ResponseShape {
  /** Chunks to send when a choice starts (chat announces the assistant role). */
  opening(index: number): object[];
  /** Chunks for one decode step of a choice. */
  step(index: number, step: DecodeStep, choice: ChoiceAccumulator): object[];
  /** Usage-only chunk (stream_options.include_usage). */
  usage(usage: Usage): object;
  /** The whole non-streamed response. */
  response(choices: ChoiceAccumulator[], usage: Usage): object;
}

export interface Generation {
  pipeline: Pipeline;
  requests: GenerationRequest[];
  promptTokens: number;
  stream: boolean;
  includeUsage: boolean;
  shape: ResponseShape;
  abort: AbortController;
  log: Logger;
}

export async function respond(c: Context, g: Generation): Promise<Response> {
  const choices = g.requests.map(() => new ChoiceAccumulator());
  const completionTokens = () => choices.reduce((n, ch) => n + ch.tokens, 0);

  if (!g.stream) {
    c.req.raw.signal.addEventListener("abort", () => g.abort.abort(), { once: true });
    for await (const { index, step } of mergeChoices(g.pipeline, g.requests)) choices[index].add(step);
    return c.json(g.shape.response(choices, usageOf(g.promptTokens, completionTokens())));
  }

  return streamSSE(c, async (stream) => {
    stream.onAbort(() => g.abort.abort());
    const send = (chunk: object) => stream.writeSSE({ data: JSON.stringify(chunk) });
    try {
      for (let i = 0; i < g.requests.length; i++) for (const chunk of g.shape.opening(i)) await send(chunk);
      for await (const { index, step } of mergeChoices(g.pipeline, g.requests)) {
        choices[index].add(step);
        for (const chunk of g.shape.step(index, step, choices[index])) await send(chunk);
        if (g.abort.signal.aborted) return;
      }
      if (g.includeUsage) await send(g.shape.usage(usageOf(g.promptTokens, completionTokens())));
      await stream.writeSSE({ data: "[DONE]" });
    } catch (err) {
      const { body, internal } = toOpenAIError(err);
      if (internal) g.log.error({ err }, "generation failed mid-stream");
      await send(body);
    }
  });
}
