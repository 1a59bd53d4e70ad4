// The tokens a choice has seen — its prompt, then what it generated — as the logit penalties
// read them: OpenAI's presence and frequency penalties count generated tokens only; llama.cpp's
// repetition penalty looks at the last `repeat_last_n` tokens, prompt included.

export class TokenHistory {
  private constructor(
    private readonly tokens: number[],
    private readonly counts: Map<number, number>,
  ) {}

  /** A history that starts with `prompt` and has generated nothing. */
  static after(prompt: readonly number[]): TokenHistory {
    return new TokenHistory([...prompt], new Map());
  }

  /** A history with `prompt`, then `generated` in order. */
  static of(prompt: readonly number[], generated: readonly number[]): TokenHistory {
    const history = TokenHistory.after(prompt);
    for (const token of generated) history.push(token);
    return history;
  }

  /** A generated token. */
  push(token: number): void {
    this.tokens.push(token);
    this.counts.set(token, (this.counts.get(token) ?? 0) + 1);
  }

  /** An independent copy (a speculative round extends it with candidates it may throw away). */
  clone(): TokenHistory {
    return new TokenHistory([...this.tokens], new Map(this.counts));
  }

  /** The last token (the prompt's, before anything is generated). */
  get last(): number | undefined {
    return this.tokens.at(-1);
  }

  /** How often each token was generated. */
  get generated(): ReadonlyMap<number, number> {
    return this.counts;
  }

  /** The last `n` tokens (prompt included); n < 0: all of them. */
  recent(n: number): number[] {
    return n < 0 ? [...this.tokens] : this.tokens.slice(Math.max(0, this.tokens.length - n));
  }

  /** The distinct tokens among the last `n` (prompt included); n < 0: all of them. */
  distinctRecent(n: number): Set<number> {
    const from = n < 0 ? 0 : Math.max(0, this.tokens.length - n);
    const seen = new Set<number>();
    for (let i = from; i < this.tokens.length; i++) seen.add(this.tokens[i]);
    return seen;
  }
}
