// POST /v1/responses: OpenAI's Responses API for text. `input` (a string or messages) and
// `instructions` are rendered with the model's chat template, as chat completions are; one
// output message comes back, streamed as the Responses events (response.created,
// response.output_text.delta, …, response.completed). Nothing is stored: previous_response_id
// is refused and store is answered false.
import { randomUUID } from "node:crypto";
import type { Hono } from "hono";
import { FlockError } from "../../engine/errors.js";
import type { ChatMessage } from "../../engine/model.js";
import type { AppEnv, ServerContext } from "../context.js";
import type { OpenAIErrorBody } from "../errors.js";
import { type ChoiceAccumulator, chatLogprobs, nowSeconds, responseExtension, type Usage } from "../format.js";
import { checkPromptBytes, conversationChoices, extensionOptions, maxTokensFor, promptWindow } from "../generation.js";
import { respond, type ResponseShape } from "../respond.js";
import { contentText, ResponsesRequest } from "../schemas.js";
import { parseRequest } from "../validation.js";

const LOGPROBS_INCLUDE = "message.output_text.logprobs";

function toChatMessages(body: ResponsesRequest): ChatMessage[] {
  const messages: ChatMessage[] = [];
  if (body.instructions) messages.push({ role: "system", content: body.instructions });
  if (typeof body.input === "string") return [...messages, { role: "user", content: body.input }];
  for (const item of body.input) {
    const content = typeof item.content === "string" ? item.content : contentText(item.content.map((part) => ({ type: "text" as const, text: part.text })));
    messages.push({ role: item.role === "developer" ? "system" : item.role, content });
  }
  return messages;
}

const responseId = () => `resp_${randomUUID().replaceAll("-", "")}`;
const messageId = () => `msg_${randomUUID().replaceAll("-", "")}`;

export function responsesRoutes(app: Hono<AppEnv>, ctx: ServerContext): void {
  app.post("/v1/responses", async (c) => {
    const body = await parseRequest(c, ResponsesRequest, "responses");
    if (body.n != null && body.n > 1) throw new FlockError("unsupported", `n is ${body.n}; a response has one output`, "n");
    const pipeline = ctx.registry().resolve(body.model);
    const extension = extensionOptions(body, pipeline);
    const messages = toChatMessages(body);
    checkPromptBytes(messages.map((m) => m.content), pipeline, promptWindow(pipeline, c.get("ops").serving.maxPromptTokens), "input");
    const rendered = pipeline.model.renderChat(messages);
    const maxTokens = maxTokensFor(body.max_output_tokens, rendered.tokens.length, pipeline, ctx.limits, "input", "max_output_tokens");
    const logprobs = body.top_logprobs != null || (body.include ?? []).includes(LOGPROBS_INCLUDE);
    const abort = new AbortController();
    const requests = conversationChoices(body, pipeline, rendered, { n: 1, maxTokens, topLogprobs: logprobs ? (body.top_logprobs ?? 0) : null, signal: abort.signal });

    const id = responseId();
    const itemId = messageId();
    const created = nowSeconds();
    /** The response object; `choice` absent while it is in progress. */
    const responseObject = (status: "in_progress" | "completed" | "incomplete", choice?: ChoiceAccumulator, usage?: Usage) => ({
      id,
      object: "response",
      created_at: created,
      status,
      error: null,
      incomplete_details: status === "incomplete" ? { reason: "max_output_tokens" } : null,
      instructions: body.instructions ?? null,
      max_output_tokens: body.max_output_tokens ?? null,
      model: pipeline.id,
      output: choice ? [outputMessage("completed", choice)] : [],
      parallel_tool_calls: true,
      previous_response_id: null,
      reasoning: { effort: null, summary: null },
      store: false,
      temperature: body.temperature ?? 1,
      text: { format: { type: "text" } },
      tool_choice: "auto",
      tools: [],
      top_p: body.top_p ?? 1,
      truncation: "disabled",
      usage: usage
        ? { input_tokens: usage.prompt_tokens, input_tokens_details: { cached_tokens: 0 }, output_tokens: usage.completion_tokens, output_tokens_details: { reasoning_tokens: 0 }, total_tokens: usage.total_tokens }
        : null,
      user: null,
      metadata: {},
      ...(choice ? responseExtension([choice], extension) : {}),
    });
    const textPart = (text: string, choice?: ChoiceAccumulator) => ({ type: "output_text", text, annotations: [], ...(logprobs ? { logprobs: chatLogprobs(choice?.logprobs ?? []) } : {}) });
    const outputMessage = (status: "in_progress" | "completed", choice?: ChoiceAccumulator) => ({
      id: itemId,
      type: "message",
      status,
      role: "assistant",
      content: choice ? [textPart(choice.text, choice)] : [],
    });
    const statusOf = (choice: ChoiceAccumulator) => (choice.finishReason === "length" ? "incomplete" : "completed");
    let sequence = 0;
    const event = <T extends object>(type: string, fields: T) => ({ type, sequence_number: sequence++, ...fields });
    const at = { item_id: itemId, output_index: 0, content_index: 0 };

    const shape: ResponseShape = {
      opening: () => [
        event("response.created", { response: responseObject("in_progress") }),
        event("response.in_progress", { response: responseObject("in_progress") }),
        event("response.output_item.added", { output_index: 0, item: outputMessage("in_progress") }),
        event("response.content_part.added", { ...at, part: textPart("") }),
      ],
      step: (_, step) =>
        step.text.length > 0 || (logprobs && (step.logprobs?.length ?? 0) > 0)
          ? [event("response.output_text.delta", { ...at, delta: step.text, logprobs: logprobs ? chatLogprobs(step.logprobs ?? []) : [] })]
          : [],
      usage: () => ({}),
      response: ([choice], usage) => responseObject(statusOf(choice), choice, usage),
      events: {
        closing: ([choice], usage) => {
          const status = statusOf(choice);
          return [
            event("response.output_text.done", { ...at, text: choice.text, logprobs: logprobs ? chatLogprobs(choice.logprobs) : [] }),
            event("response.content_part.done", { ...at, part: textPart(choice.text, choice) }),
            event("response.output_item.done", { output_index: 0, item: outputMessage("completed", choice) }),
            event(status === "completed" ? "response.completed" : "response.incomplete", { response: responseObject(status, choice, usage) }),
          ];
        },
        error: (failure: OpenAIErrorBody) => event("error", { code: failure.error.code, message: failure.error.message, param: failure.error.param }),
      },
    };
    // The closing events repeat the whole text's logprobs.
    return respond(c, { pipeline, requests, promptTokens: rendered.tokens.length, stream: body.stream === true, includeUsage: false, shape, abort, log: c.get("log"), promptParam: "input", streamKeepsLogprobs: logprobs });
  });
}
