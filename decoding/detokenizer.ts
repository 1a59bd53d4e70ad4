// Incremental detokenization that never splits a UTF-8 character: a token whose bytes end
// mid-character (byte-fallback tokens, byte-level BPE) is held until the character completes.

export interface Detokenize {
  /** Text of `tokens`, given the tokens that precede them (for leading-space rules). */
  (tokens: readonly number[], context: readonly number[]): string;
}

const REPLACEMENT = "\uFFFD";
/** UTF-8 characters are at most 4 bytes; a byte-fallback token carries one byte. */
const MAX_PENDING = 4;
/** Context for leading-space rules; a few tokens are enough. */
const CONTEXT_TOKENS = 8;

export class IncrementalDetokenizer {
  private readonly done: number[] = [];
  private pending: number[] = [];

  constructor(
    private readonly detokenize: Detokenize,
    context: readonly number[] = [],
  ) {
    this.done.push(...context.slice(-CONTEXT_TOKENS));
  }

  /** Adds a token; returns the text that is now complete ("" while a character is unfinished). */
  push(token: number): string {
    this.pending.push(token);
    const text = this.detokenize(this.pending, this.done.slice(-CONTEXT_TOKENS));
    if (text.endsWith(REPLACEMENT) && this.pending.length < MAX_PENDING) return "";
    return this.commit(text);
  }

  /** Text of tokens still held (an unfinished character at the very end). */
  flush(): string {
    if (this.pending.length === 0) return "";
    return this.commit(this.detokenize(this.pending, this.done.slice(-CONTEXT_TOKENS)));
  }

  private commit(text: string): string {
    this.done.push(...this.pending);
    if (this.done.length > CONTEXT_TOKENS) this.done.splice(0, this.done.length - CONTEXT_TOKENS);
    this.pending = [];
    return text;
  }
}
