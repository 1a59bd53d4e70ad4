// Serves a generation either as one JSON response or as an SSE stream of OpenAI chunks; the
// two share the decode loop, so they cannot drift apart. Around the loop: the prompt-length
// limit, admission to the model's bounded queue, the request timeout, cancellation when the
// client goes away or the server shuts down, keep-alive comments, metrics and the log line.
import type { Context } from "hono";
import { streamSSE } from "hono/streaming";
import type { DecodeStep } from "../decoding/types.js";
import { FlockError } from "../engine/errors.js";
import type { Pipeline, PipelineRequest } from "../pipelines/pipeline.js";
import { type AppEnv, shuttingDown } from "./context.js";
import { HttpError, type OpenAIErrorBody, toOpenAIError } from "./errors.js";
import { ChoiceAccumulator, type Usage, usageOf } from "./format.js";
import { mergeChoices, type PromptParam } from "./generation.js";
import type { Logger } from "./logger.js";
import type { FinishedReason, GenerationMetrics } from "./metrics.js";

/** Builds the endpoint's shapes (chat, legacy completions and Responses differ only here). */
export interface ResponseShape {
  /** Chunks to send when a choice starts (chat announces the assistant role). */
  opening(index: number): object[];
  /** Chunks for one decode step of a choice. */
  step(index: number, step: DecodeStep, choice: ChoiceAccumulator): object[];
  /** Usage-only chunk (stream_options.include_usage). */
  usage(usage: Usage, choices: ChoiceAccumulator[]): object;
  /** The whole non-streamed response. */
  response(choices: ChoiceAccumulator[], usage: Usage): object;
  /**
   * Responses-style streams: each chunk goes out as an event named by its `type`, the stream
   * ends with these chunks instead of usage and [DONE], and an error is this chunk.
   */
  events?: {
    closing(choices: ChoiceAccumulator[], usage: Usage): object[];
    error(body: OpenAIErrorBody): object;
  };
}

export interface Generation {
  pipeline: Pipeline;
  requests: PipelineRequest[];
  promptTokens: number;
  stream: boolean;
  includeUsage: boolean;
  shape: ResponseShape;
  abort: AbortController;
  log: Logger;
  /** The field the prompt came in (named by errors about its length). */
  promptParam: PromptParam;
  /** Whether the end of a stream needs every token's logprobs (default: only non-streamed responses do). */
  streamKeepsLogprobs?: boolean;
}

/** The abort reason when the client went away (nobody is left to tell). */
class ClientDisconnected extends Error {
  constructor() {
    super("the client disconnected");
  }
}

/** The abort reason when a stream's client stopped reading (its socket buffer stayed full). */
class ClientStalled extends Error {
  constructor(seconds: number) {
    super(`the client read nothing for ${seconds} s`);
  }
}

export function requestTimedOut(seconds: number): HttpError {
  return new HttpError(408, "timeout_error", "request_timeout", `The request did not finish within this server's limit of ${seconds} s; it was cancelled.`);
}

function finishedReason(reason: unknown): FinishedReason {
  if (reason instanceof ClientDisconnected) return "disconnected";
  if (reason instanceof ClientStalled) return "stalled";
  if (reason instanceof HttpError && reason.code === "request_timeout") return "timeout";
  if (reason instanceof HttpError && reason.code === "shutting_down") return "shutdown";
  return "error";
}

/** Refuses what must be refused before anything is generated (or any stream header sent). */
function admit(c: Context<AppEnv>, g: Generation): () => void {
  const { serving, inflight } = c.get("ops");
  if (inflight.isDraining) throw shuttingDown();
  const longest = Math.max(...g.requests.map((r) => r.prompt.length));
  if (serving.maxPromptTokens !== null && longest > serving.maxPromptTokens) {
    const param = g.promptParam;
    throw new FlockError(
      "context_length_exceeded",
      `This server accepts at most ${serving.maxPromptTokens} prompt tokens. However, your ${param} resulted in ${longest} tokens. Please reduce the length of the ${param}.`,
      param,
    );
  }
  const model = g.pipeline.model;
  if (g.requests.length > model.capacity) {
    throw new FlockError(
      "invalid_request",
      `this request needs ${g.requests.length} sequences at once, more than model ${g.pipeline.id} can run or queue (${model.parallel} + ${model.maxQueue}); lower n or the number of prompts`,
      "n",
    );
  }
  const release = model.admit(g.requests.length);
  if (!release) {
    throw new FlockError(
      "overloaded",
      `Model ${g.pipeline.id} is at capacity (${model.runningSequences} running, ${model.waitingSequences} waiting); retry after the time in the Retry-After header.`,
    );
  }
  return release;
}

export async function respond(c: Context<AppEnv>, g: Generation): Promise<Response> {
  const { metrics, inflight, serving } = c.get("ops");
  const model = g.pipeline.id;
  c.set("model", model);
  const releaseAdmission = admit(c, g);

  // From here on every exit path must run `cleanup` exactly once.
  const timer =
    serving.requestTimeoutMs === null
      ? undefined
      : setTimeout(() => g.abort.abort(requestTimedOut(serving.requestTimeoutMs! / 1000)), Math.max(0, serving.requestTimeoutMs - (performance.now() - c.get("arrival"))));
  const untrack = inflight.track({ id: c.get("requestId"), cancel: (reason) => g.abort.abort(reason) });
  const onDisconnect = () => g.abort.abort(new ClientDisconnected());
  c.req.raw.signal.addEventListener("abort", onDisconnect, { once: true });
  let cleaned = false;
  const cleanup = () => {
    if (cleaned) return;
    cleaned = true;
    clearTimeout(timer);
    c.req.raw.signal.removeEventListener("abort", onDisconnect);
    untrack();
    releaseAdmission();
  };

  const observed = metrics.generation(model, c.get("arrival"), g.promptTokens, g.abort.signal);
  const choices = g.requests.map(() => new ChoiceAccumulator(!g.stream || g.streamKeepsLogprobs === true));
  const completionTokens = () => choices.reduce((n, ch) => n + ch.tokens, 0);
  const record = (index: number, step: DecodeStep) => {
    choices[index].add(step);
    observed.step(index, step.tokens.length);
    for (const token of step.fusion ?? []) metrics.observeFusion(model, token.alpha);
    for (const token of step.routing ?? []) if (token && token.experts.length > 0) metrics.observeRouting(model, token.experts[0].expert, 1);
    if (step.finishReason) observed.finish(index, step.finishReason);
  };
  /** Why generation stopped early, if it did (the abort reason). */
  const stoppedBy = (): unknown => (g.abort.signal.aborted ? (g.abort.signal.reason ?? new ClientDisconnected()) : null);
  const done = (outcome: FinishedReason | "ok") =>
    finished(c, g, choices, observed, outcome, serving.logPrompts, completionTokens());

  if (!g.stream) {
    try {
      for await (const { index, step } of mergeChoices(g.pipeline, g.requests)) record(index, step);
      const stopped = stoppedBy();
      if (stopped) throw stopped;
      done("ok");
      return c.json(g.shape.response(choices, usageOf(g.promptTokens, completionTokens())));
    } catch (err) {
      const reason = finishedReason(stoppedBy() ?? err);
      observed.finishRest(choices.length, reason);
      done(reason);
      // Nobody is left to answer; 499 (nginx's "client closed request") is what the request
      // log line and flock_requests_total show.
      if (reason === "disconnected") return new Response(null, { status: 499 });
      throw err;
    } finally {
      cleanup();
    }
  }

  // Proxies that buffer responses (nginx, ingress-nginx) pass a stream on as it is written when
  // told so; HAProxy never buffers (docs/scale-out.md).
  c.header("X-Accel-Buffering", "no");
  return streamSSE(c, async (stream) => {
    stream.onAbort(onDisconnect);
    let lastWrite = performance.now();
    /**
     * A write blocks while the client's socket buffer is full. It may wait `writeTimeoutMs`, and
     * no longer than the request is alive (a timeout or shutdown aborts it); then the stream and
     * its connection are dropped, and generation stops, freeing the sequences.
     */
    const drop = (reason: unknown) => {
      if (!g.abort.signal.aborted) g.abort.abort(reason);
      stream.abort();
      (c.env as { outgoing?: { destroy(): void } } | undefined)?.outgoing?.destroy();
    };
    const write = async (text: string, final = false) => {
      lastWrite = performance.now();
      let timer: NodeJS.Timeout | undefined;
      let onAbort: (() => void) | undefined;
      const stalled = new Promise<never>((_, reject) => {
        const ms = final ? Math.min(serving.writeTimeoutMs, 1_000) : serving.writeTimeoutMs;
        timer = setTimeout(() => reject(new ClientStalled(ms / 1000)), ms);
        // A final write (the error event of an aborted request) still gets its short chance.
        if (!final) {
          onAbort = () => reject(g.abort.signal.reason);
          g.abort.signal.addEventListener("abort", onAbort, { once: true });
        }
      });
      try {
        await Promise.race([stream.write(text), stalled]);
      } catch (err) {
        drop(err);
        throw err;
      } finally {
        clearTimeout(timer);
        if (onAbort) g.abort.signal.removeEventListener("abort", onAbort);
      }
    };
    const events = g.shape.events;
    const send = (chunk: object, final = false) =>
      write(`${events ? `event: ${(chunk as { type: string }).type}\n` : ""}data: ${JSON.stringify(chunk)}\n\n`, final);
    // SSE comments keep proxies and clients from timing out while a long prefill (or the
    // queue) produces nothing; clients ignore them.
    const keepAlive =
      serving.keepAliveMs > 0
        ? setInterval(() => {
            if (performance.now() - lastWrite >= serving.keepAliveMs * 0.9) write(": keep-alive\n\n").catch(() => undefined);
          }, serving.keepAliveMs)
        : undefined;
    try {
      for (let i = 0; i < g.requests.length; i++) for (const chunk of g.shape.opening(i)) await send(chunk);
      for await (const { index, step } of mergeChoices(g.pipeline, g.requests)) {
        record(index, step);
        for (const chunk of g.shape.step(index, step, choices[index])) await send(chunk);
        if (g.abort.signal.aborted) break;
      }
      const stopped = stoppedBy();
      if (stopped) throw stopped;
      if (events) {
        for (const chunk of events.closing(choices, usageOf(g.promptTokens, completionTokens()))) await send(chunk);
      } else {
        if (g.includeUsage) await send(g.shape.usage(usageOf(g.promptTokens, completionTokens()), choices));
        await write("data: [DONE]\n\n");
      }
      done("ok");
    } catch (err) {
      const cause = stoppedBy() ?? err;
      const reason = finishedReason(cause);
      observed.finishRest(choices.length, reason);
      done(reason);
      if (reason === "disconnected") return;
      if (reason === "stalled") {
        g.log.warn({ reason: (cause as Error).message }, "stream dropped: the client stopped reading");
        return;
      }
      // The status line is long gone: the error travels as the stream's last event.
      const { body, internal } = toOpenAIError(cause);
      if (internal) g.log.error({ err: cause }, "generation failed mid-stream");
      await send(events ? events.error(body) : body, true).catch(() => undefined);
    } finally {
      clearInterval(keepAlive);
      cleanup();
    }
  });
}

/** The request's summary log line; prompt and completion text only when logPrompts is on. */
function finished(
  c: Context<AppEnv>,
  g: Generation,
  choices: readonly ChoiceAccumulator[],
  observed: GenerationMetrics,
  outcome: FinishedReason | "ok",
  logPrompts: boolean,
  completionTokens: number,
): void {
  const summary: Record<string, unknown> = {
    model: g.pipeline.id,
    stream: g.stream,
    choices: choices.length,
    promptTokens: g.promptTokens,
    completionTokens,
    finishReasons: choices.map((ch) => ch.finishReason),
    outcome,
    ttftMs: observed.firstTokenSeconds === null ? null : Math.round(observed.firstTokenSeconds * 1000),
    ms: Math.round(performance.now() - c.get("arrival")),
  };
  if (logPrompts) {
    const prompts = [...new Set(g.requests.map((r) => r.prompt))];
    summary.prompts = prompts.map((p) => g.pipeline.model.detokenize(p));
    summary.completions = choices.map((ch) => ch.text);
  }
  const level = outcome === "error" ? "warn" : "info";
  g.log[level](summary, "generation finished");
}
