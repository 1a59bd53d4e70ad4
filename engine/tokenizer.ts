// A model's text side: tokenizer, detokenizer, vocabulary facts and its chat template. Separate
// from the sequence pool (sequence-pool.ts) so each can be tested without loading weights.
import type { LlamaModel, Token } from "node-llama-cpp";
import type { ChatMessage, ChatTemplate, RenderedPrompt, TemplateKwargs, ToolDefinition } from "./chat-template.js";

/** What the tokenizer reads of the weights (a fake in unit tests). */
export type TokenizerWeights = Pick<LlamaModel, "tokenize" | "detokenize" | "tokens" | "isEogToken" | "fileInfo">;

/** GPT-2's byte-level BPE alphabet, reversed: the byte each character of a token's text spells. */
const BYTE_OF_CHAR: ReadonlyMap<string, number> = (() => {
  const printable = (b: number) => (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
  const map = new Map<string, number>();
  let shifted = 0;
  for (let b = 0; b < 256; b++) map.set(String.fromCodePoint(printable(b) ? b : 256 + shifted++), b);
  return map;
})();

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

  /**
   * A token's bytes (logprobs' `bytes`, /tokenize's pieces): its text's UTF-8, except for a token
   * that holds part of a character, whose text decodes to U+FFFD: there the raw bytes, read from
   * the vocabulary (byte-level BPE spells each byte with one character, SentencePiece a lone byte
   * as <0xXX>); the replacement character's bytes where the vocabulary is of another kind.
   */
  tokenBytes(token: number, text = this.tokenText(token)): number[] {
    if (text.includes("\uFFFD")) {
      const ggml = this.weights.fileInfo.metadata.tokenizer?.ggml;
      const spelled = ggml?.tokens?.[token];
      if (spelled !== undefined && ggml?.model === "gpt2") {
        const bytes = [...spelled].map((ch) => BYTE_OF_CHAR.get(ch));
        if (bytes.every((b) => b !== undefined)) return bytes as number[];
      }
      const byte = spelled === undefined ? null : /^<0x([0-9A-Fa-f]{2})>$/.exec(spelled);
      if (ggml?.model === "llama" && byte) return [parseInt(byte[1], 16)];
    }
    return [...Buffer.from(text, "utf8")];
  }

  /** A token's own text, special tokens spelled out (for logprobs). */
  tokenText(token: number): string {
    return this.weights.detokenize([token as Token], true);
  }

  isEndOfGeneration(token: number): boolean {
    return this.weights.isEogToken(token as Token);
  }
}
