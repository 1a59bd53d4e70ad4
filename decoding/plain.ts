// The plain autoregressive decoder: one model, one token per step.
import type { NativeGeneration, NativeGenerationJob } from "../engine/sequence.js";
import { nativeKernels } from "../engine/native.js";
import { constrainedDraw } from "./constraint.js";
import { TokenHistory } from "./history.js";
import { type TokenDraws, tokenDraws } from "./noise.js";
import { type Emitted, OutputAssembler } from "./output.js";
import { adjustLogits, logSoftmax, topTokens, ZERO_PROBABILITY_LOGPROB } from "./sampler.js";
import type { DecodeStep, DecodingModel, GenerationRequest, TokenLogprob } from "./types.js";

export interface LogprobModel extends DecodingModel {
  tokenText(token: number): string;
  /** The token's raw bytes (`text`: its tokenText), which differ from text's UTF-8 for part of a character. */
  tokenBytes?(token: number, text: string): number[];
}

export function describeLogprobs(model: LogprobModel, logits: Float32Array, token: number, top: number): TokenLogprob {
  const logprobs = logSoftmax(logits);
  const finite = (lp: number) => Math.max(lp, ZERO_PROBABILITY_LOGPROB);
  const described = (t: number) => {
    const text = model.tokenText(t);
    return model.tokenBytes ? { text, bytes: model.tokenBytes(t, text) } : { text };
  };
  return {
    token,
    ...described(token),
    logprob: finite(logprobs[token]),
    top: topTokens(logprobs, top).map((t) => ({ token: t.token, logprob: finite(t.logprob), ...described(t.token) })),
  };
}

export async function* plainDecode(model: LogprobModel, request: GenerationRequest): AsyncGenerator<DecodeStep> {
  const seq = await model.acquire(request.prompt, request.signal);
  const constraint = request.constraint?.clone();
  let generation: NativeGeneration | null = null;
  try {
    const draws = tokenDraws(request);
    const output = new OutputAssembler(model, request.prompt, request.stopStrings);
    const stopTokens = new Set(request.stopTokens);
    const history = TokenHistory.after(request.prompt);
    // With an observer, every step also reads what the engine reports about its position.
    const observe = request.observePosition;
    const evaluate = async (tokens: readonly number[]): Promise<Float32Array> => {
      if (!observe) return (await seq.evaluate(tokens, [tokens.length - 1]))[0];
      const { logits, hidden, routing } = await seq.evaluateWithHidden(tokens, [tokens.length - 1]);
      observe({ hidden: hidden[0], routing: routing[0] });
      return logits[0];
    };
    // Whether the addon's generation loop may draw this request's tokens: nothing but the
    // sampled token is read per position (no logprobs, grammar or observer).
    const loopable = !constraint && !observe && request.topLogprobs === null && seq.generate !== undefined && nativeKernels().sampleToken !== null;
    // Whether the `generated`-th output token ends the text; the cache holds prompt + (g − 1) tokens before it is decoded.
    const ends = (token: number, generated: number) => ({
      endOfGeneration: model.isEndOfGeneration(token) || stopTokens.has(token),
      limitReached: generated >= request.maxTokens || request.prompt.length + generated > seq.contextSize,
    });
    await seq.syncTo(request.prompt.slice(0, -1));
    let logits = await evaluate(request.prompt.slice(-1));
    let adjustBuffer: Float32Array | undefined;

    for (let generated = 1; ; generated++) {
      if (request.signal?.aborted) return;
      // The token's position in prompt + output keys its noise.
      const position = request.prompt.length + generated - 1;
      // Used up within the iteration: one buffer serves every position. Without logprobs the raw
      // logits are read no more, and are adjusted in place (a vocabulary-sized copy saved per token).
      const adjusted = request.topLogprobs === null ? adjustLogits(logits, request.sampling, history, logits) : (adjustBuffer = adjustLogits(logits, request.sampling, history, adjustBuffer));
      const token = constraint ? constrainedDraw(adjusted, request.sampling, constraint, draws, position) : draws.sample(adjusted, request.sampling, position);
      history.push(token);
      const { endOfGeneration, limitReached } = ends(token, generated);
      if (!endOfGeneration) constraint?.accept(token);
      const more = !endOfGeneration && !limitReached;
      // From here on the addon may decode and draw by itself (docs/native-engine.md).
      const drawn = more && loopable ? new DrawnTokens() : null;
      generation = drawn && (seq.generate?.(token, loopJob(request, draws, history, stopTokens, generated, seq.contextSize), (t) => drawn.push(t)) ?? null);
      if (generation && drawn) {
        generation.done.then(() => drawn.end(), (err: unknown) => drawn.fail(err));
        // A request cancelled while the loop waits for its consumer: the loop stops, and with it the wait.
        request.signal?.addEventListener("abort", generation.stop, { once: true });
      }
      // Otherwise the next position's decode starts before this token is detokenized, checked
      // against the stop strings and streamed: llama.cpp computes while JavaScript does that
      // work. A stop string found meanwhile leaves one token in the cache that the next request drops.
      const next = more && !generation ? evaluate([token]) : undefined;
      next?.catch(() => undefined); // awaited below, unless the consumer stops first
      const logprob = endOfGeneration || request.topLogprobs === null ? undefined : describeLogprobs(model, logits, token, request.topLogprobs);
      const emitted = output.emit(token, logprob, { endOfGeneration, limitReached });
      // This position's logits are read (the decode started above writes its own when it ends,
      // after this synchronous stretch): the next evaluation may write into them.
      seq.recycle?.([logits]);
      yield step(token, emitted);
      if (emitted.finishReason) return;
      if (generation && drawn) {
        // The loop's tokens, each handled as the lines above handle a token drawn here.
        let last = token;
        for (let t = await drawn.next(); t !== null; t = await drawn.next()) {
          generation.consumed();
          generated++;
          if (request.signal?.aborted) return;
          history.push(t);
          const emittedByLoop = output.emit(t, undefined, ends(t, generated));
          yield step(t, emittedByLoop);
          if (emittedByLoop.finishReason) return;
          last = t;
        }
        // The loop gave the context up (another sequence asked for it): its last token drawn is
        // not decoded yet; this loop goes on from there.
        request.signal?.removeEventListener("abort", generation.stop);
        generation = null;
        if (request.signal?.aborted) return;
        logits = await evaluate([last]);
        continue;
      }
      if (!next) return;
      logits = await next;
    }
  } finally {
    if (generation) {
      request.signal?.removeEventListener("abort", generation.stop);
      generation.stop();
    }
    constraint?.release();
    seq.release();
  }
}

/** The step a token makes of what the output assembler emitted for it. */
function step(token: number, emitted: Emitted): DecodeStep {
  return { tokens: [token], text: emitted.text, logprobs: emitted.logprobs, ...(emitted.finishReason && { finishReason: emitted.finishReason }) };
}

/**
 * The generation loop's job after the `generated`-th token: the draws' values for the tokens
 * after it up to the one that reaches the length or context limit (its budget), the logit bias
 * and penalties with what they read, the stop tokens.
 */
function loopJob(request: GenerationRequest, draws: TokenDraws, history: TokenHistory, stopTokens: ReadonlySet<number>, generated: number, contextSize: number): NativeGenerationJob {
  const { sampling } = request;
  const budget = Math.min(request.maxTokens - generated, contextSize - request.prompt.length - generated + 1);
  const values = new Float64Array(budget);
  for (let k = 0; k < budget; k++) values[k] = draws.nativeValue(sampling, request.prompt.length + generated + k);
  return {
    temperature: sampling.temperature,
    topK: sampling.topK,
    topP: sampling.topP,
    minP: sampling.minP,
    keyed: draws.keyed,
    values,
    biasTokens: Int32Array.from(sampling.logitBias.keys()),
    biasValues: Float64Array.from(sampling.logitBias.values()),
    stopTokens: Int32Array.from(stopTokens),
    window: LOOP_WINDOW,
    repetitionPenalty: sampling.repetitionPenalty,
    repeatLastN: sampling.repeatLastN,
    presencePenalty: sampling.presencePenalty,
    frequencyPenalty: sampling.frequencyPenalty,
    history: Int32Array.from(history.recent(sampling.repeatLastN)),
    generatedTokens: Int32Array.from(history.generated.keys()),
    generatedCounts: Int32Array.from(history.generated.values()),
  };
}

/** Tokens the loop may draw ahead of the consumer: enough to never wait on a streaming client. */
const LOOP_WINDOW = 4;

/** The tokens a generation loop posts, read one at a time; null once it has ended. */
class DrawnTokens {
  private readonly queue: number[] = [];
  private ended = false;
  private failure: unknown = undefined;
  private waiter: (() => void) | null = null;

  push(token: number): void {
    this.queue.push(token);
    this.wake();
  }
  end(): void {
    this.ended = true;
    this.wake();
  }
  fail(err: unknown): void {
    this.failure = err ?? new Error("the generation loop failed");
    this.wake();
  }

  async next(): Promise<number | null> {
    while (this.queue.length === 0 && !this.ended && this.failure === undefined) await new Promise<void>((resolve) => (this.waiter = resolve));
    if (this.queue.length > 0) return this.queue.shift()!;
    if (this.failure !== undefined) throw this.failure;
    return null;
  }

  private wake(): void {
    const waiter = this.waiter;
    this.waiter = null;
    waiter?.();
  }
}
