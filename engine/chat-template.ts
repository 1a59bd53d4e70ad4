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
  type LlamaTextInputValue,
  resolveChatWrapper,
  SpecialToken,
  SpecialTokensText,
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
  /**
   * How the template writes several calls in one turn (node-llama-cpp's
   * settings.functions.parallelism.call): a section prefix (with alternates: the same without its
   * special tokens' text, which a detokenizer may drop), the text between calls and a section
   * suffix, each cut where generation ends. null where the template writes one call per turn
   * (it has no parallel framing, or a call's suffix ends generation).
   */
  parallel: { sectionPrefix: string; sectionPrefixAlternates: string[]; betweenCalls: string; sectionSuffix: string } | null;
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
    return { tokens, stopTokens, stopStrings: stopStrings.filter((s) => s.length > 0), toolSyntax: toolSyntaxOf(wrapper, this.generationEnd(state.stopGenerationTriggers)) };
  }

  /**
   * Where generation ends in a template's special text: the earliest of the template's stop
   * triggers or of the model's end-of-generation tokens in it (-1: none).
   */
  private generationEnd(triggers: readonly LlamaTextInputValue[]): (special: string) => number {
    const byTemplate = templateEnds(triggers);
    const { tokenizer } = this.weights;
    return (special) => {
      let at = byTemplate(special);
      let from = 0;
      for (const token of LlamaText(new SpecialTokensText(special)).tokenize(tokenizer)) {
        const piece = this.weights.detokenize([token], true);
        const found = piece.length > 0 ? special.indexOf(piece, from) : -1;
        if (found < 0) continue;
        if (this.weights.isEogToken(token) && (at < 0 || found < at)) at = found;
        from = found + piece.length;
      }
      return at;
    };
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

/** Where generation ends in special text by a template's stop triggers (those written as special tokens). */
function templateEnds(triggers: readonly LlamaTextInputValue[]): (special: string) => number {
  const markers = triggers
    .map((trigger) => LlamaText(trigger).values)
    .filter((values) => values.length > 0 && values.every((v) => v instanceof SpecialTokensText))
    .map((values) => values.map((v) => (v as SpecialTokensText).value).join(""))
    .filter((marker) => marker.length > 0);
  return (special) => {
    let at = -1;
    for (const marker of markers) {
      const found = special.indexOf(marker);
      if (found >= 0 && (at < 0 || found < at)) at = found;
    }
    return at;
  };
}

/**
 * A template's text up to where generation ends (an end-of-sequence or end-of-turn special
 * token, or special text `endAt` finds one in): what a grammar writes before the model ends its
 * turn, and whether it ends there. `plain` leaves out special tokens' text.
 */
function untilEnd(value: LlamaTextInputValue, endAt: (special: string) => number, plain = false): { text: string; ends: boolean } {
  let out = "";
  for (const v of LlamaText(value).values) {
    if (typeof v === "string") out += v;
    else if (v instanceof SpecialToken) {
      if (v.value === "EOS" || v.value === "EOT") return { text: out, ends: true };
      if (!plain) out += v.toString();
    } else {
      const at = endAt(v.value);
      if (at >= 0) return { text: plain ? out : out + v.value.slice(0, at), ends: true };
      if (!plain) out += v.value;
    }
  }
  return { text: out, ends: false };
}

/** The stop triggers of a wrapper's prompt for a first answer (a wrapper that cannot render one: none). */
function wrapperStopTriggers(wrapper: ChatWrapper): LlamaTextInputValue[] {
  try {
    return wrapper.generateContextState({ chatHistory: [{ type: "user", text: "" }, { type: "model", response: [] }] }).stopGenerationTriggers;
  } catch {
    return [];
  }
}

/**
 * How a wrapper writes function calls, as text, each part cut where generation ends: `endAt`
 * finds the end of generation in special text (by default, the wrapper's own stop triggers).
 */
export function toolSyntaxOf(wrapper: ChatWrapper, endAt: (special: string) => number = templateEnds(wrapperStopTriggers(wrapper))): ToolCallSyntax {
  const { call, result, parallelism } = wrapper.settings.functions;
  const suffix = untilEnd(call.suffix, endAt);
  let parallel: ToolCallSyntax["parallel"] = null;
  if (parallelism && !suffix.ends) {
    const sectionPrefix = untilEnd(parallelism.call.sectionPrefix ?? "", endAt).text;
    const plainPrefix = untilEnd(parallelism.call.sectionPrefix ?? "", endAt, true).text;
    parallel = {
      sectionPrefix,
      sectionPrefixAlternates: plainPrefix !== sectionPrefix && plainPrefix.trim().length > 0 ? [plainPrefix] : [],
      betweenCalls: untilEnd(parallelism.call.betweenCalls ?? "", endAt).text,
      sectionSuffix: untilEnd(parallelism.call.sectionSuffix ?? "", endAt).text,
    };
  }
  return {
    prefix: text(call.prefix),
    alternatePrefixes: (call.prefixAlternateMatches ?? []).map(text),
    paramsPrefix: text(call.paramsPrefix),
    suffix: suffix.text,
    resultPrefix: text(result.prefix).replace(/\{\{functionName\}\}.*$/s, ""),
    parallel,
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
    const at = i;
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
    for (const [j, call] of calls.entries()) {
      const place = `messages[${at}].tool_calls[${j}]`;
      if (!results.has(call.id)) {
        throw new FlockError("invalid_request", `${place}: an assistant message with tool_calls must be followed by tool messages answering each call; ${call.id} (${call.name}) has no answer`, place);
      }
      let params: unknown;
      try {
        params = call.arguments.trim() === "" ? undefined : JSON.parse(call.arguments);
      } catch {
        throw new FlockError("invalid_request", `${place}.function.arguments: the arguments of tool call ${call.id} are not JSON`, `${place}.function.arguments`);
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
