// Incremental detokenization that never splits a UTF-8 character: while the tokens since the
// last clean boundary end mid-character (byte-fallback tokens, byte-level BPE), only the text
// before that unfinished character is released.

export interface Detokenize {
  /** Text of `tokens`, given the tokens that precede them (for leading-space rules). */
  (tokens: readonly number[], context: readonly number[]): string;
}

/** What a decoder makes of bytes that end mid-character. */
const REPLACEMENT = "\uFFFD";
/** A safety valve: bytes that never form a character are released after this many tokens. */
const MAX_PENDING = 64;
/** Context for leading-space rules; a few tokens are enough. */
const CONTEXT_TOKENS = 8;

export class IncrementalDetokenizer {
  private readonly done: number[] = [];
  private pending: number[] = [];
  /** Characters of the pending tokens' text already released. */
  private released = 0;

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
    if (text.endsWith(REPLACEMENT) && this.pending.length < MAX_PENDING) {
      // Bytes decode to a prefix of the final text, so what precedes the unfinished character is final.
      return this.take(text.slice(0, -REPLACEMENT.length));
    }
    return this.commit(text);
  }

  /** Text of tokens still held (an unfinished character at the very end). */
  flush(): string {
    if (this.pending.length === 0) return "";
    return this.commit(this.detokenize(this.pending, this.done.slice(-CONTEXT_TOKENS)));
  }

  private take(complete: string): string {
    const fresh = complete.slice(this.released);
    this.released = Math.max(this.released, complete.length);
    return fresh;
  }

  private commit(text: string): string {
    const fresh = this.take(text);
    this.done.push(...this.pending);
    if (this.done.length > CONTEXT_TOKENS) this.done.splice(0, this.done.length - CONTEXT_TOKENS);
    this.pending = [];
    this.released = 0;
    return fresh;
  }
}
