// A model's chat template: conversations rendered to prompt tokens, with the stop triggers the
// template implies. node-llama-cpp picks the wrapper for the GGUF's template (a known family's,
// or its Jinja template as is); a request's chat_template_kwargs render the GGUF's Jinja
// template itself with those variables, as llama-server and vLLM pass them.
import {
  type ChatHistoryItem,
  type ChatModelFunctions,
  type ChatModelResponse,
  type ChatWrapper,
  JinjaTemplateChatWrapper,
  type LlamaModel,
  LlamaText,
  resolveChatWrapper,
} from "node-llama-cpp";
import { FlockError } from "./errors.js";

/** A call the assistant made, as OpenAI's tool_calls carry it (arguments: JSON text). */
export interface ToolCall {
  id: string;
  name: string;
  arguments: string;
}

export type ChatMessage =
  | { role: "system" | "user"; content: string }
  | { role: "assistant"; content: string; toolCalls?: readonly ToolCall[] }
  | { role: "tool"; content: string; toolCallId: string };

/** A function the model may call (OpenAI's tools[].function). */
export interface ToolDefinition {
  name: string;
  description?: string;
  /** A JSON schema of the arguments object. */
  parameters?: Record<string, unknown>;
}

/**
 * How the template writes a function call, as text: prefix, the function's name, paramsPrefix,
 * the arguments as JSON, suffix (`{{functionName}}` in paramsPrefix and suffix stands for the
 * name); and what starts a call's result (the model would go on to imagine one).
 */
export interface ToolCallSyntax {
  prefix: string;
  alternatePrefixes: string[];
  paramsPrefix: string;
  suffix: string;
  resultPrefix: string;
}

export interface RenderedPrompt {
  tokens: number[];
  /** Single tokens that end the assistant's turn (from the chat template). */
  stopTokens: number[];
  /** Text that ends the assistant's turn (from the chat template). */
  stopStrings: string[];
  /** How this template writes a function call. */
  toolSyntax: ToolCallSyntax;
}

/** Template variables a request may pass (chat_template_kwargs). */
export type TemplateKwargs = Record<string, unknown>;

/** Wrappers kept for distinct chat_template_kwargs (each parses the template once). */
const MAX_KWARG_WRAPPERS = 16;
/** The most JSON a request's chat_template_kwargs may take. */
const MAX_KWARGS_JSON = 16 * 1024;

export class ChatTemplate {
  private readonly wrapper: ChatWrapper;
  private readonly withKwargs = new Map<string, ChatWrapper>();

  /** `wrapper`: node-llama-cpp's for the GGUF's template unless given (tests render other families). */
  constructor(
    private readonly modelId: string,
    private readonly weights: LlamaModel,
    wrapper?: ChatWrapper,
  ) {
    this.wrapper = wrapper ?? resolveChatWrapper(weights);
  }

  /** The wrapper node-llama-cpp chose (ChatML, Llama3, JinjaTemplate, …). */
  get name(): string {
    return this.wrapper.wrapperName;
  }

  /**
   * A conversation, ready for the assistant's turn; with `tools`, the functions the template
   * documents to the model. Tool results (role "tool") must answer the calls of the assistant
   * message just before them, each call answered once.
   */
  render(messages: readonly ChatMessage[], kwargs?: TemplateKwargs, tools?: readonly ToolDefinition[]): RenderedPrompt {
    const history = chatHistory(messages);
    history.push({ type: "model", response: [] });
    const wrapper = kwargs && Object.keys(kwargs).length > 0 ? this.wrapperWith(kwargs) : this.wrapper;
    const availableFunctions: ChatModelFunctions | undefined =
      tools && tools.length > 0
        ? Object.fromEntries(tools.map((t) => [t.name, { ...(t.description ? { description: t.description } : {}), ...(t.parameters ? { params: t.parameters as never } : {}) }]))
        : undefined;
    let state: ReturnType<ChatWrapper["generateContextState"]>;
    try {
      state = wrapper.generateContextState({ chatHistory: history, ...(availableFunctions && { availableFunctions }) });
    } catch (cause) {
      if (wrapper === this.wrapper) throw cause;
      throw new FlockError("invalid_request", `the chat template of model ${this.modelId} failed with these chat_template_kwargs: ${(cause as Error).message}`, "chat_template_kwargs");
    }
    const tokenizer = this.weights.tokenizer;
    const stopTokens: number[] = [];
    const stopStrings: string[] = [];
    for (const trigger of state.stopGenerationTriggers) {
      const text = LlamaText(trigger);
      const tokens = text.tokenize(tokenizer);
      const plain = text.values.every((v) => typeof v === "string");
      if (plain) stopStrings.push(text.toString());
      else if (tokens.length === 1) stopTokens.push(tokens[0]);
    }
    const tokens = state.contextText.tokenize(tokenizer);
    // A Jinja template adds BOS only where it says {{ bos_token }}; llama.cpp's tokenizer adds it
    // for models that want it (llama-server renders the template, then tokenizes with BOS).
    const bos = this.weights.tokens.bos;
    if (wrapper !== this.wrapper && this.weights.tokens.shouldPrependBosToken && bos !== null && tokens[0] !== bos) tokens.unshift(bos);
    return { tokens, stopTokens, stopStrings: stopStrings.filter((s) => s.length > 0), toolSyntax: toolSyntaxOf(wrapper) };
  }

  private wrapperWith(kwargs: TemplateKwargs): ChatWrapper {
    const key = JSON.stringify(kwargs);
    if (key.length > MAX_KWARGS_JSON) throw new FlockError("invalid_request", `chat_template_kwargs may take at most ${MAX_KWARGS_JSON} bytes of JSON`, "chat_template_kwargs");
    const cached = this.withKwargs.get(key);
    if (cached) {
      this.withKwargs.delete(key); // most recently used last
      this.withKwargs.set(key, cached);
      return cached;
    }
    const template = this.weights.fileInfo.metadata.tokenizer?.chat_template;
    if (typeof template !== "string" || template.length === 0) {
      throw new FlockError("unsupported", `model ${this.modelId} has no Jinja chat template in its GGUF to pass chat_template_kwargs to`, "chat_template_kwargs");
    }
    let wrapper: ChatWrapper;
    try {
      wrapper = new JinjaTemplateChatWrapper({ template, additionalRenderParameters: kwargs, tokenizer: this.weights.tokenizer });
    } catch (cause) {
      throw new FlockError("invalid_request", `the chat template of model ${this.modelId} cannot be rendered with these chat_template_kwargs: ${(cause as Error).message}`, "chat_template_kwargs");
    }
    this.withKwargs.set(key, wrapper);
    if (this.withKwargs.size > MAX_KWARG_WRAPPERS) this.withKwargs.delete(this.withKwargs.keys().next().value!);
    return wrapper;
  }
}

const text = (value: string | LlamaText) => (typeof value === "string" ? value : LlamaText(value).toString());

/** How a wrapper writes function calls, as text. */
export function toolSyntaxOf(wrapper: ChatWrapper): ToolCallSyntax {
  const { call, result } = wrapper.settings.functions;
  return {
    prefix: text(call.prefix),
    alternatePrefixes: (call.prefixAlternateMatches ?? []).map(text),
    paramsPrefix: text(call.paramsPrefix),
    suffix: text(call.suffix),
    resultPrefix: text(result.prefix).replace(/\{\{functionName\}\}.*$/s, ""),
  };
}

/**
 * OpenAI messages as node-llama-cpp's chat history: an assistant message's tool calls become
 * function calls carrying the results the tool messages after it give (by tool_call_id).
 * Throws a 400 naming the message that breaks the pairing.
 */
function chatHistory(messages: readonly ChatMessage[]): ChatHistoryItem[] {
  const history: ChatHistoryItem[] = [];
  for (let i = 0; i < messages.length; i++) {
    const m = messages[i];
    if (m.role === "tool") throw new FlockError("invalid_request", `messages[${i}]: a tool message must answer a tool call of the assistant message before it (tool_call_id ${m.toolCallId})`, `messages[${i}]`);
    if (m.role !== "assistant") {
      history.push({ type: m.role, text: m.content });
      continue;
    }
    const calls = m.toolCalls ?? [];
    // The answer after a call's result continues the same model turn, as the templates render it.
    const previous = history.at(-1);
    if (previous?.type === "model" && typeof previous.response.at(-1) === "object" && calls.length === 0) {
      if (m.content.length > 0) previous.response.push(m.content);
      continue;
    }
    const response: ChatModelResponse["response"] = m.content.length > 0 ? [m.content] : [];
    const results = new Map<string, string>();
    while (i + 1 < messages.length && messages[i + 1].role === "tool") {
      const answer = messages[++i] as Extract<ChatMessage, { role: "tool" }>;
      if (!calls.some((call) => call.id === answer.toolCallId) || results.has(answer.toolCallId)) {
        throw new FlockError("invalid_request", `messages[${i}]: tool_call_id ${answer.toolCallId} answers no open call of the assistant message before it`, `messages[${i}].tool_call_id`);
      }
      results.set(answer.toolCallId, answer.content);
    }
    for (const call of calls) {
      if (!results.has(call.id)) {
        throw new FlockError("invalid_request", `an assistant message with tool_calls must be followed by tool messages answering each call; ${call.id} (${call.name}) has no answer`, "messages");
      }
      let params: unknown;
      try {
        params = call.arguments.trim() === "" ? undefined : JSON.parse(call.arguments);
      } catch {
        throw new FlockError("invalid_request", `tool call ${call.id}: function.arguments is not JSON`, "messages");
      }
      response.push({ type: "functionCall", name: call.name, params, result: jsonOrText(results.get(call.id)!) });
    }
    history.push({ type: "model", response });
  }
  return history;
}

/** A tool's answer: its JSON value where it is JSON, else its text. */
function jsonOrText(content: string): unknown {
  try {
    return JSON.parse(content);
  } catch {
    return content;
  }
}
