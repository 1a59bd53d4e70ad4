// POST /v1/chat/completions
import type { Hono } from "hono";
import type { ChatMessage } from "../../engine/model.js";
import { type ChoiceAccumulator, chatLogprobs, chunkFor, completionId, nowSeconds, responseExtension, streamedStep, type Usage } from "../format.js";
import { checkPromptBytes, choiceCount, conversationChoices, extensionOptions, maxTokensFor, predictionTokens, predictionUsage, promptWindow } from "../generation.js";
import { respond, type ResponseShape } from "../respond.js";
import { ChatCompletionRequest, contentText } from "../schemas.js";
import { parseRequest } from "../validation.js";
import type { AppEnv, ServerContext } from "../context.js";

function toChatMessages(body: ChatCompletionRequest): ChatMessage[] {
  return body.messages.map((m) => ({
    // The developer role is OpenAI's newer name for system instructions.
    role: m.role === "developer" ? "system" : m.role,
    content: contentText(m.content),
  }));
}

export function chatRoutes(app: Hono<AppEnv>, ctx: ServerContext): void {
  app.post("/v1/chat/completions", async (c) => {
    const body = await parseRequest(c, ChatCompletionRequest, "chat");
    const pipeline = ctx.registry().resolve(body.model);
    const extension = extensionOptions(body, pipeline);
    const n = choiceCount(body, ctx.limits);
    const messages = toChatMessages(body);
    checkPromptBytes(messages.map((m) => m.content), pipeline, promptWindow(pipeline, c.get("ops").serving.maxPromptTokens), "messages");
    const rendered = pipeline.model.renderChat(messages, body.chat_template_kwargs ?? undefined);
    const requestedMax = body.max_completion_tokens ?? body.max_tokens;
    const maxTokens = maxTokensFor(
      requestedMax,
      rendered.tokens.length,
      pipeline,
      ctx.limits,
      "messages",
      body.max_completion_tokens != null ? "max_completion_tokens" : "max_tokens",
    );
    const abort = new AbortController();
    const prediction = predictionTokens(body.prediction, pipeline);
    const requests = conversationChoices(body, pipeline, rendered, { n, maxTokens, topLogprobs: body.logprobs ? (body.top_logprobs ?? 0) : null, signal: abort.signal, prediction });
    // With a prediction, usage says how much of it was accepted (OpenAI's completion_tokens_details).
    const withDetails = (usage: Usage, choices: ChoiceAccumulator[]) =>
      prediction ? { ...usage, completion_tokens_details: { reasoning_tokens: 0, audio_tokens: 0, ...predictionUsage(choices) } } : usage;

    const id = completionId("chatcmpl");
    const created = nowSeconds();
    const envelope = { id, object: "chat.completion.chunk", created, model: pipeline.id };
    const includeUsage = body.stream_options?.include_usage === true;
    const usageField = includeUsage ? { usage: null } : {};
    const shape: ResponseShape = {
      opening: (index) => [chunkFor(envelope, usageField, index)({ delta: { role: "assistant", content: "" }, logprobs: null, finish_reason: null })],
      step: (index, step, choice) =>
        streamedStep(
          chunkFor(envelope, usageField, index),
          step,
          choice,
          extension,
          () => ({ delta: { content: step.text }, logprobs: body.logprobs ? { content: chatLogprobs(step.logprobs ?? []) } : null }),
          { delta: {}, logprobs: null },
        ),
      usage: (usage, choices) => ({ ...envelope, choices: [], usage: withDetails(usage, choices) }),
      response: (choices, usage) => ({
        id,
        object: "chat.completion",
        created,
        model: pipeline.id,
        choices: choices.map((ch, index) => ({
          index,
          message: { role: "assistant", content: ch.text, refusal: null },
          logprobs: body.logprobs ? { content: chatLogprobs(ch.logprobs) } : null,
          finish_reason: ch.finishReason,
        })),
        usage: withDetails(usage, choices),
        ...responseExtension(choices, extension),
      }),
    };
    return respond(c, { pipeline, requests, promptTokens: rendered.tokens.length, stream: body.stream === true, includeUsage, shape, abort, log: c.get("log"), promptParam: "messages" });
  });
}
