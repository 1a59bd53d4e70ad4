// A fake engine for decoder unit tests: models that are Markov chains over a few tokens, so a
// decode costs microseconds and every next-token distribution is known exactly. They implement
// what decoders use of a served model (decoding/types.ts) and of a sequence (engine/sequence.ts).
import type { TokenConstraint } from "../../decoding/constraint.js";
import { DEFAULT_SAMPLING, type SamplingParams } from "../../decoding/sampler.js";
import type { LogprobModel } from "../../decoding/plain.js";
import type { GenerationRequest } from "../../decoding/types.js";
import type { RoutingTrace } from "../../engine/native.js";
import type { Sequence } from "../../engine/sequence.js";

/** A model whose next-token logits are log rows[last token] (rows: probabilities). */
export class ChainModel implements LogprobModel {
  readonly contextSize = 1024;
  /** Sequences acquired and not yet released (decoders must give every one back). */
  held = 0;
  private readonly logits: Float32Array[];
  constructor(
    readonly id: string,
    readonly rows: number[][],
    /** With it the model has hidden states: the hidden state is [last token], the trace this returns. */
    private readonly trace?: (token: number) => RoutingTrace | undefined,
  ) {
    this.logits = rows.map((row) => Float32Array.from(row, Math.log));
  }
  get hasHiddenStates(): boolean {
    return this.trace !== undefined;
  }
  async acquire(): Promise<Sequence> {
    const logits = this.logits;
    const trace = this.trace;
    const cached: number[] = [];
    this.held++;
    let released = false;
    const evaluate = async (tokens: readonly number[], at: readonly number[]) => {
      cached.push(...tokens);
      // Copies: the caller owns what evaluate returns (a decoder may adjust it in place).
      return at.map((i) => logits[tokens[i]].slice());
    };
    return {
      get tokens() {
        return cached;
      },
      get length() {
        return cached.length;
      },
      contextSize: this.contextSize,
      prefill: async (prompt) => {
        cached.length = 0;
        return (await evaluate(prompt, [prompt.length - 1]))[0];
      },
      sharedPrefix: (tokens) => {
        let i = 0;
        while (i < tokens.length && i < cached.length && tokens[i] === cached[i]) i++;
        return i;
      },
      syncTo: async (tokens) => {
        cached.length = 0;
        cached.push(...tokens);
      },
      evaluate,
      evaluateWithHidden: async (tokens, at) => {
        if (!trace) throw new Error("no hidden states here");
        const logits = await evaluate(tokens, at);
        return { logits, hidden: at.map((i) => Float32Array.of(tokens[i])), routing: at.map((i) => trace(tokens[i])) };
      },
      truncate: async (length) => {
        cached.length = length;
      },
      release: () => {
        if (!released) this.held--;
        released = true;
      },
      recycle: () => {},
    };
  }
  detokenize(tokens: readonly number[]): string {
    return tokens.map((t) => `<${t}>`).join("");
  }
  tokenText(token: number): string {
    return `<${token}>`;
  }
  isEndOfGeneration(): boolean {
    return false;
  }
  // What VariantCache (experts/routed.ts) reads of a cached context.
  runningSequences = 0;
  waitingSequences = 0;
  isDisposed = false;
  retire(): void {
    this.isDisposed = true;
  }
}

/** A plain request over the chain's tokens: no stops, no logprobs unless asked. */
export function chainRequest(prompt: readonly number[], maxTokens: number, sampling: Partial<SamplingParams> = {}, extra: Partial<GenerationRequest> = {}): GenerationRequest {
  return {
    prompt,
    maxTokens,
    sampling: { ...DEFAULT_SAMPLING, ...sampling },
    seed: 1,
    stopStrings: [],
    stopTokens: [],
    topLogprobs: null,
    ...extra,
  };
}

/** The index of the largest entry. */
export function argmax(row: readonly number[]): number {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i] > row[best]) best = i;
  return best;
}

/** What a test's LastTokenGrammar states were asked, across all of them. */
export interface GrammarCalls {
  masks: number;
  allows: number;
  created: number;
  released: number;
}

/**
 * A grammar whose allowed set depends only on the last token (`allowedAfter[last]`; a lone
 * allowed token is forced), so a state not rolled back to the accepted prefix masks the wrong
 * tokens. Throws when used after its release, as the engine's states do, and counts its calls.
 */
export class LastTokenGrammar implements TokenConstraint {
  private released = false;
  constructor(
    private readonly allowedAfter: ReadonlyArray<readonly number[]>,
    private last: number,
    private readonly calls: GrammarCalls,
  ) {
    calls.created++;
  }
  private live(): void {
    if (this.released) throw new Error("grammar state used after release");
  }
  allows(token: number): boolean {
    this.live();
    this.calls.allows++;
    return this.allowedAfter[this.last].includes(token);
  }
  mask(logits: Float32Array): void {
    this.live();
    this.calls.masks++;
    for (let t = 0; t < logits.length; t++) if (!this.allowedAfter[this.last].includes(t)) logits[t] = -Infinity;
  }
  forcedToken(): number | undefined {
    this.live();
    return this.allowedAfter[this.last].length === 1 ? this.allowedAfter[this.last][0] : undefined;
  }
  accept(token: number): void {
    if (!this.allows(token)) throw new Error(`token ${token} is not allowed after ${this.last}`);
    this.last = token;
  }
  clone(): TokenConstraint {
    this.live();
    return new LastTokenGrammar(this.allowedAfter, this.last, this.calls);
  }
  release(): void {
    if (!this.released) this.calls.released++;
    this.released = true;
  }
}
