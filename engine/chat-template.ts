// A model's chat template: conversations rendered to prompt tokens, with the stop triggers the
// template implies. node-llama-cpp picks the wrapper for the GGUF's template (a known family's,
// or its Jinja template as is); a request's chat_template_kwargs render the GGUF's Jinja
// template itself with those variables, as llama-server and vLLM pass them.
import { type ChatHistoryItem, type ChatWrapper, JinjaTemplateChatWrapper, type LlamaModel, LlamaText, resolveChatWrapper } from "node-llama-cpp";
import { FlockError } from "./errors.js";

export interface ChatMessage {
  role: "system" | "user" | "assistant";
  content: string;
}

export interface RenderedPrompt {
  tokens: number[];
  /** Single tokens that end the assistant's turn (from the chat template). */
  stopTokens: number[];
  /** Text that ends the assistant's turn (from the chat template). */
  stopStrings: string[];
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

  constructor(
    private readonly modelId: string,
    private readonly weights: LlamaModel,
  ) {
    this.wrapper = resolveChatWrapper(weights);
  }

  /** The wrapper node-llama-cpp chose (ChatML, Llama3, JinjaTemplate, …). */
  get name(): string {
    return this.wrapper.wrapperName;
  }

  /** A conversation, ready for the assistant's turn. */
  render(messages: readonly ChatMessage[], kwargs?: TemplateKwargs): RenderedPrompt {
    const history: ChatHistoryItem[] = messages.map((m) =>
      m.role === "assistant" ? { type: "model", response: [m.content] } : { type: m.role, text: m.content },
    );
    history.push({ type: "model", response: [] });
    const wrapper = kwargs && Object.keys(kwargs).length > 0 ? this.wrapperWith(kwargs) : this.wrapper;
    let state: ReturnType<ChatWrapper["generateContextState"]>;
    try {
      state = wrapper.generateContextState({ chatHistory: history });
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
    return { tokens, stopTokens, stopStrings: stopStrings.filter((s) => s.length > 0) };
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
