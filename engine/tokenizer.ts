// A model's text side: tokenizer, detokenizer, vocabulary facts and its chat template. Separate
// from the sequence pool (sequence-pool.ts) so each can be tested without loading weights.
import type { LlamaModel, Token } from "node-llama-cpp";
import type { ChatMessage, ChatTemplate, RenderedPrompt, TemplateKwargs, ToolDefinition } from "./chat-template.js";

/** What the tokenizer reads of the weights (a fake in unit tests). */
export type TokenizerWeights = Pick<LlamaModel, "tokenize" | "detokenize" | "tokens" | "isEogToken" | "fileInfo">;

export class Tokenizer {
  private longestTokenBytes: number | undefined;

  constructor(
    private readonly weights: TokenizerWeights,
    private readonly chatTemplate: Pick<ChatTemplate, "name" | "render">,
  ) {}

  /** The vocabulary's token texts, in id order (GGUF metadata); undefined when the file lacks them. */
  private get vocabulary(): readonly string[] | undefined {
    return this.weights.fileInfo.metadata.tokenizer?.ggml?.tokens;
  }

  get vocabularySize(): number {
    return this.vocabulary?.length ?? 0;
  }

  get chatTemplateName(): string {
    return this.chatTemplate.name;
  }

  /** Whether `other` tokenizes identically (same token texts in the same order). */
  sameVocabulary(other: Tokenizer): boolean {
    const mine = this.vocabulary;
    const theirs = other.vocabulary;
    return mine !== undefined && theirs !== undefined && mine.length === theirs.length && mine.every((t, i) => t === theirs[i]);
  }

  /**
   * An upper bound on the bytes of text one token stands for: the UTF-8 length of the longest
   * token text in the vocabulary, plus one for a leading space a tokenizer may add (byte-level
   * BPE spells each byte with one character, SentencePiece spells a space as three bytes, byte
   * tokens as six: none is shorter than what it decodes to). Infinity without the token list.
   */
  get maxTokenBytes(): number {
    if (this.longestTokenBytes === undefined) {
      const tokens = this.vocabulary;
      this.longestTokenBytes = tokens && tokens.length > 0 ? tokens.reduce((m, t) => Math.max(m, Buffer.byteLength(t)), 0) + 1 : Infinity;
    }
    return this.longestTokenBytes;
  }

  /** Tokenizes user text; special-token text in it stays plain text. Adds BOS as the model wants. */
  tokenizePrompt(text: string): number[] {
    return this.tokenize(text, { addSpecial: true, parseSpecial: false });
  }

  /**
   * Tokenizes text as llama-server's /tokenize does: BOS only with `addSpecial` (and when the
   * model wants one), special-token text parsed as those tokens with `parseSpecial`.
   */
  tokenize(text: string, options: { addSpecial: boolean; parseSpecial: boolean }): number[] {
    const tokens: number[] = this.weights.tokenize(text, options.parseSpecial);
    const bos = this.weights.tokens.bos;
    return options.addSpecial && this.weights.tokens.shouldPrependBosToken && bos !== null ? [bos, ...tokens] : tokens;
  }

  /** Renders a conversation with the model's own chat template, ready for the assistant's turn. */
  renderChat(messages: readonly ChatMessage[], kwargs?: TemplateKwargs, tools?: readonly ToolDefinition[]): RenderedPrompt {
    return this.chatTemplate.render(messages, kwargs, tools);
  }

  detokenize(tokens: readonly number[], context?: readonly number[]): string {
    return this.weights.detokenize(tokens as Token[], false, context as Token[] | undefined);
  }

  /** A token's own text, special tokens spelled out (for logprobs). */
  tokenText(token: number): string {
    return this.weights.detokenize([token as Token], true);
  }

  isEndOfGeneration(token: number): boolean {
    return this.weights.isEogToken(token as Token);
  }
}
