// POST /v1/chat/completions
import type { Hono } from "hono";
import type { ChatMessage, ToolCall } from "../../engine/model.js";
import { type ChoiceAccumulator, chatLogprobs, choiceExtension, chunkFor, completionId, nowSeconds, responseExtension, streamedStep, type Usage } from "../format.js";
import { checkPromptBytes, choiceCount, conversationChoices, conversationTexts, extensionOptions, maxTokensFor, predictionTokens, predictionUsage, promptWindow } from "../generation.js";
import { respond, type ResponseShape } from "../respond.js";
import { ChatCompletionRequest, contentText } from "../schemas.js";
import { AutoCallStream, choiceMessage, RequiredCallStream, toolGeneration, toolPlan } from "../tools.js";
import { parseRequest } from "../validation.js";
import type { AppEnv, ServerContext } from "../context.js";

function toChatMessages(body: ChatCompletionRequest): ChatMessage[] {
  return body.messages.map((m): ChatMessage => {
    const content = contentText(m.content);
    if (m.role === "tool") return { role: "tool", content, toolCallId: m.tool_call_id };
    if (m.role === "assistant") return { role: "assistant", content, toolCalls: (m.tool_calls ?? []).map((call) => ({ id: call.id, name: call.function.name, arguments: call.function.arguments })) };
    // The developer role is OpenAI's newer name for system instructions.
    return { role: m.role === "developer" ? "system" : m.role, content };
  });
}

/** OpenAI's tool_calls entries; `index` for stream deltas. */
const toolCallsJSON = (calls: readonly ToolCall[]) => calls.map((call) => ({ id: call.id, type: "function", function: { name: call.name, arguments: call.arguments } }));

export function chatRoutes(app: Hono<AppEnv>, ctx: ServerContext): void {
  app.post("/v1/chat/completions", async (c) => {
    const body = await parseRequest(c, ChatCompletionRequest, "chat");
    const pipeline = ctx.registry().resolve(body.model);
    const extension = extensionOptions(body, pipeline);
    const n = choiceCount(body, ctx.limits);
    const messages = toChatMessages(body);
    // Tool definitions and earlier calls' arguments are rendered into the prompt too.
    checkPromptBytes(conversationTexts(messages, body.tools), pipeline, promptWindow(pipeline, c.get("ops").serving.maxPromptTokens), "messages");
    const tools = toolPlan(body);
    const { rendered, grammar: toolCallGrammar } = toolGeneration(tools, pipeline.model.renderChat(messages, body.chat_template_kwargs ?? undefined, tools?.tools), pipeline.model.grammars);
    const message = (ch: ChoiceAccumulator) => choiceMessage(ch.text, tools, rendered.toolSyntax, body.parallel_tool_calls);
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
    const requests = conversationChoices(body, pipeline, rendered, { n, maxTokens, topLogprobs: body.logprobs ? (body.top_logprobs ?? 0) : null, signal: abort.signal, prediction, toolCallGrammar });
    // With a prediction, usage says how much of it was accepted (OpenAI's completion_tokens_details).
    const withDetails = (usage: Usage, choices: ChoiceAccumulator[]) =>
      prediction ? { ...usage, completion_tokens_details: { reasoning_tokens: 0, audio_tokens: 0, ...predictionUsage(choices) } } : usage;

    const requiredStreams: RequiredCallStream[] = [];
    const autoStreams: AutoCallStream[] = [];
    const id = completionId("chatcmpl");
    const created = nowSeconds();
    const envelope = { id, object: "chat.completion.chunk", created, model: pipeline.id };
    const includeUsage = body.stream_options?.include_usage === true;
    const usageField = includeUsage ? { usage: null } : {};
    const shape: ResponseShape = {
      opening: (index) => [chunkFor(envelope, usageField, index)({ delta: { role: "assistant", content: "" }, logprobs: null, finish_reason: null })],
      step: (index, step, choice) => {
        const chunk = chunkFor(envelope, usageField, index);
        if (tools?.mode === "required") {
          // One call, by grammar: its name, then its arguments as they are written.
          const stream = (requiredStreams[index] ??= new RequiredCallStream(rendered.toolSyntax, tools.tools));
          const chunks = stream.deltas(choice.text).map((delta) => chunk({ delta: { tool_calls: [delta] }, logprobs: null, finish_reason: null }));
          if (step.finishReason) chunks.push(chunk({ delta: {}, logprobs: null, finish_reason: stream.started ? "tool_calls" : step.finishReason }, choiceExtension(choice, extension)));
          return chunks;
        }
        if (tools) {
          // Content as it is written, then any calls' names and arguments as they are written.
          const stream = (autoStreams[index] ??= new AutoCallStream(rendered.toolSyntax, tools.tools, body.parallel_tool_calls !== false));
          const { content, calls } = stream.step(choice.text);
          const chunks = [
            ...(content ? [chunk({ delta: { content }, logprobs: null, finish_reason: null })] : []),
            ...calls.map((delta) => chunk({ delta: { tool_calls: [delta] }, logprobs: null, finish_reason: null })),
          ];
          if (step.finishReason) {
            const parsed = message(choice);
            const rest = stream.finish(choice.text, parsed);
            if (rest) chunks.push(chunk({ delta: { content: rest }, logprobs: null, finish_reason: null }));
            const calling = stream.calling || parsed.calls.length > 0;
            chunks.push(chunk({ delta: {}, logprobs: null, finish_reason: calling ? "tool_calls" : step.finishReason }, choiceExtension(choice, extension)));
          }
          return chunks;
        }
        return streamedStep(
          chunk,
          step,
          choice,
          extension,
          () => ({ delta: { content: step.text }, logprobs: body.logprobs ? { content: chatLogprobs(step.logprobs ?? []) } : null }),
          { delta: {}, logprobs: null },
        );
      },
      usage: (usage, choices) => ({ ...envelope, choices: [], usage: withDetails(usage, choices) }),
      response: (choices, usage) => ({
        id,
        object: "chat.completion",
        created,
        model: pipeline.id,
        choices: choices.map((ch, index) => {
          const { content, calls } = message(ch);
          return {
            index,
            message: { role: "assistant", content, refusal: null, ...(calls.length > 0 ? { tool_calls: toolCallsJSON(calls) } : {}) },
            logprobs: body.logprobs ? { content: chatLogprobs(ch.logprobs) } : null,
            finish_reason: calls.length > 0 ? "tool_calls" : ch.finishReason,
          };
        }),
        usage: withDetails(usage, choices),
        ...responseExtension(choices, extension),
      }),
    };
    return respond(c, { pipeline, requests, promptTokens: rendered.tokens.length, stream: body.stream === true, includeUsage, shape, abort, log: c.get("log"), promptParam: "messages" });
  });
}
