// POST /v1/responses: OpenAI's Responses API for text and function calls. `input` (a string,
// messages, function_call and function_call_output items) and `instructions` are rendered with
// the model's chat template, as chat completions are; one output message comes back, streamed as
// the Responses events (response.created, response.output_text.delta, …, response.completed);
// with function tools, a message and function_call items, each streamed as it is written (tools.ts
// decides what may be called and reads calls as they are written). Nothing is stored:
// previous_response_id is refused and store is answered false.
import { randomUUID } from "node:crypto";
import type { Hono } from "hono";
import { FlockError } from "../../engine/errors.js";
import type { ChatMessage, RenderedPrompt, ToolCall } from "../../engine/model.js";
import type { AppEnv, ServerContext } from "../context.js";
import type { OpenAIErrorBody } from "../errors.js";
import { type ChoiceAccumulator, chatLogprobs, nowSeconds, responseExtension, type Usage } from "../format.js";
import { checkPromptBytes, conversationChoices, conversationTexts, extensionOptions, maxTokensFor, promptWindow } from "../generation.js";
import { respond, type ResponseShape } from "../respond.js";
import { contentText, ResponsesRequest } from "../schemas.js";
import { AutoCallStream, choiceMessage, toolGeneration, toolPlan } from "../tools.js";
import { parseRequest } from "../validation.js";

const LOGPROBS_INCLUDE = "message.output_text.logprobs";

const textOf = (content: string | Array<{ text: string }>) => (typeof content === "string" ? content : contentText(content.map((part) => ({ type: "text" as const, text: part.text }))));

/**
 * Input items as chat messages: function_call items join the assistant turn before them (or
 * start one), function_call_output items answer them as tool messages.
 */
function toChatMessages(body: ResponsesRequest): ChatMessage[] {
  const messages: ChatMessage[] = [];
  if (body.instructions) messages.push({ role: "system", content: body.instructions });
  if (typeof body.input === "string") return [...messages, { role: "user", content: body.input }];
  for (const item of body.input) {
    if (item.type === "function_call") {
      const call = { id: item.call_id, name: item.name, arguments: item.arguments };
      const last = messages.at(-1);
      if (last?.role === "assistant") messages[messages.length - 1] = { ...last, toolCalls: [...(last.toolCalls ?? []), call] };
      else messages.push({ role: "assistant", content: "", toolCalls: [call] });
    } else if (item.type === "function_call_output") {
      messages.push({ role: "tool", toolCallId: item.call_id, content: textOf(item.output) });
    } else {
      messages.push({ role: item.role === "developer" ? "system" : item.role, content: textOf(item.content) });
    }
  }
  return messages;
}

/**
 * The rendered input; a history the template cannot pair (a function_call_output that answers no
 * call, a call left unanswered) is a 400 on `input`, as the chat messages it became are not the
 * client's items one for one.
 */
function renderInput(render: () => RenderedPrompt): RenderedPrompt {
  try {
    return render();
  } catch (err) {
    if (err instanceof FlockError && err.param?.startsWith("messages")) {
      const message = err.message.replace(/^messages\[\d+\](\.tool_calls\[\d+\](\.function\.arguments)?)?: /, "").replace("a tool message", "a function_call_output").replace("tool_call_id", "call_id");
      throw new FlockError(err.kind, `input: ${message}`, "input");
    }
    throw err;
  }
}

/** Responses' tools and tool_choice in chat completions' shape (tools.ts reads that). */
function chatTools(body: ResponsesRequest) {
  const choice = body.tool_choice;
  return {
    tools: (body.tools ?? []).map((t) => ({ type: "function" as const, function: { name: t.name, description: t.description, parameters: t.parameters, strict: t.strict } })),
    tool_choice: choice && typeof choice === "object" ? { type: "function" as const, function: { name: choice.name } } : choice,
    parallel_tool_calls: body.parallel_tool_calls,
  };
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
    checkPromptBytes(conversationTexts(messages, body.tools), pipeline, promptWindow(pipeline, c.get("ops").serving.maxPromptTokens), "input");
    const tools = toolPlan(chatTools(body));
    const { rendered, grammar: toolCallGrammar } = toolGeneration(tools, renderInput(() => pipeline.model.renderChat(messages, undefined, tools?.tools)), pipeline.model.grammars);
    const maxTokens = maxTokensFor(body.max_output_tokens, rendered.tokens.length, pipeline, ctx.limits, "input", "max_output_tokens");
    const logprobs = body.top_logprobs != null || (body.include ?? []).includes(LOGPROBS_INCLUDE);
    const abort = new AbortController();
    const requests = conversationChoices(body, pipeline, rendered, { n: 1, maxTokens, topLogprobs: logprobs ? (body.top_logprobs ?? 0) : null, signal: abort.signal, toolCallGrammar });

    const id = responseId();
    const itemId = messageId();
    const created = nowSeconds();
    /** The choice's text and calls, parsed once (call ids stay the same in events and the response). */
    const parsed = new WeakMap<ChoiceAccumulator, { content: string | null; calls: ToolCall[] }>();
    const parsedOf = (choice: ChoiceAccumulator) => {
      let p = parsed.get(choice);
      if (!p) {
        p = choiceMessage(choice.text, tools, rendered.toolSyntax, body.parallel_tool_calls);
        parsed.set(choice, p);
      }
      return p;
    };
    const callItem = (call: ToolCall, status: "in_progress" | "completed") => ({
      id: `fc_${call.id.replace(/^call_/, "")}`,
      type: "function_call",
      status,
      call_id: call.id,
      name: call.name,
      arguments: status === "completed" ? call.arguments : "",
    });
    /** The output items of a finished choice: its message (unless it only calls), then its calls. */
    const outputItems = (choice: ChoiceAccumulator) => {
      const { content, calls } = parsedOf(choice);
      return [...(content !== null || calls.length === 0 ? [outputMessage("completed", choice, content ?? "")] : []), ...calls.map((call) => callItem(call, "completed"))];
    };
    /** The response object; `choice` absent while it is in progress; `output` as streamed, when it was. */
    const responseObject = (status: "in_progress" | "completed" | "incomplete", choice?: ChoiceAccumulator, usage?: Usage, output?: object[]) => ({
      id,
      object: "response",
      created_at: created,
      status,
      error: null,
      incomplete_details: status === "incomplete" ? { reason: "max_output_tokens" } : null,
      instructions: body.instructions ?? null,
      max_output_tokens: body.max_output_tokens ?? null,
      model: pipeline.id,
      output: output ?? (choice ? outputItems(choice) : []),
      parallel_tool_calls: body.parallel_tool_calls ?? true,
      previous_response_id: null,
      reasoning: { effort: null, summary: null },
      store: false,
      temperature: body.temperature ?? 1,
      text: { format: { type: "text" } },
      tool_choice: body.tool_choice ?? "auto",
      tools: body.tools ?? [],
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
    const outputMessage = (status: "in_progress" | "completed", choice?: ChoiceAccumulator, text = choice?.text ?? "") => ({
      id: itemId,
      type: "message",
      status,
      role: "assistant",
      content: choice ? [textPart(text, choice)] : [],
    });
    const statusOf = (choice: ChoiceAccumulator) => (choice.finishReason === "length" ? "incomplete" : "completed");
    let sequence = 0;
    const event = <T extends object>(type: string, fields: T) => ({ type, sequence_number: sequence++, ...fields });
    const at = { item_id: itemId, output_index: 0, content_index: 0 };

    /**
     * With tools, the items as they are written: the message while the model writes text, each
     * call once its name is written, its arguments as they come (AutoCallStream, both for auto
     * and for required calls, which the grammar makes the whole output). An item is done when
     * the next begins, or at the end; the completed response lists the items as streamed.
     */
    function toolEvents() {
      const calls = new AutoCallStream(rendered.toolSyntax, tools!.tools, body.parallel_tool_calls !== false);
      type Item = { kind: "message"; text: string } | { kind: "call"; call: ToolCall };
      const items: Item[] = [];
      let open = false;
      const finished = (item: Item, choice: ChoiceAccumulator) => (item.kind === "message" ? outputMessage("completed", choice, item.text) : callItem(item.call, "completed"));
      const close = (choice: ChoiceAccumulator): object[] => {
        if (!open) return [];
        open = false;
        const output_index = items.length - 1;
        const item = items[output_index];
        if (item.kind === "call") {
          const atCall = { item_id: callItem(item.call, "completed").id, output_index };
          return [event("response.function_call_arguments.done", { ...atCall, arguments: item.call.arguments }), event("response.output_item.done", { output_index, item: finished(item, choice) })];
        }
        const atText = { item_id: itemId, output_index, content_index: 0 };
        return [
          event("response.output_text.done", { ...atText, text: item.text, logprobs: [] }),
          event("response.content_part.done", { ...atText, part: textPart(item.text, choice) }),
          event("response.output_item.done", { output_index, item: finished(item, choice) }),
        ];
      };
      const text = (delta: string, choice: ChoiceAccumulator): object[] => {
        const out: object[] = [];
        const last = items.at(-1);
        if (!open || last?.kind !== "message") {
          out.push(...close(choice));
          items.push({ kind: "message", text: "" });
          open = true;
          const atText = { item_id: itemId, output_index: items.length - 1, content_index: 0 };
          out.push(event("response.output_item.added", { output_index: items.length - 1, item: outputMessage("in_progress") }), event("response.content_part.added", { ...atText, part: textPart("") }));
        }
        const message = items.at(-1) as Extract<Item, { kind: "message" }>;
        message.text += delta;
        if (delta) out.push(event("response.output_text.delta", { item_id: itemId, output_index: items.length - 1, content_index: 0, delta, logprobs: [] }));
        return out;
      };
      return {
        step(choice: ChoiceAccumulator): object[] {
          const { content, calls: deltas } = calls.step(choice.text);
          const out = content ? text(content, choice) : [];
          for (const delta of deltas) {
            if (delta.id !== undefined) {
              out.push(...close(choice));
              const call: ToolCall = { id: delta.id, name: delta.function.name ?? "", arguments: "" };
              items.push({ kind: "call", call });
              open = true;
              out.push(event("response.output_item.added", { output_index: items.length - 1, item: callItem(call, "in_progress") }));
            } else {
              const item = items.at(-1) as Extract<Item, { kind: "call" }>;
              item.call.arguments += delta.function.arguments;
              out.push(event("response.function_call_arguments.delta", { item_id: callItem(item.call, "completed").id, output_index: items.length - 1, delta: delta.function.arguments }));
            }
          }
          return out;
        },
        /** The last events, and the output as streamed. */
        finish(choice: ChoiceAccumulator): { events: object[]; output: object[] } {
          const rest = calls.finish(choice.text, parsedOf(choice));
          const out = rest || items.length === 0 ? text(rest, choice) : [];
          out.push(...close(choice));
          return { events: out, output: items.map((item) => finished(item, choice)) };
        },
      };
    }

    const error = (failure: OpenAIErrorBody) => event("error", { code: failure.error.code, message: failure.error.message, param: failure.error.param });
    const shape: ResponseShape = tools ? toolShape() : textShape();
    function toolShape(): ResponseShape {
      const streamed = toolEvents();
      return {
        opening: () => [event("response.created", { response: responseObject("in_progress") }), event("response.in_progress", { response: responseObject("in_progress") })],
        step: (_, __, choice) => streamed.step(choice),
        usage: () => ({}),
        response: ([choice], usage) => responseObject(statusOf(choice), choice, usage),
        events: {
          closing: ([choice], usage) => {
            const status = statusOf(choice);
            const { events, output } = streamed.finish(choice);
            return [...events, event(status === "completed" ? "response.completed" : "response.incomplete", { response: responseObject(status, choice, usage, output) })];
          },
          error,
        },
      };
    }
    // The closing events repeat the whole text's logprobs.
    function textShape(): ResponseShape {
      return {
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
          error,
        },
      };
    }
    return respond(c, { pipeline, requests, promptTokens: rendered.tokens.length, stream: body.stream === true, includeUsage: false, shape, abort, log: c.get("log"), promptParam: "input", streamKeepsLogprobs: logprobs });
  });
}
