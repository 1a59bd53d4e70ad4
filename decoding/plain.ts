// The plain autoregressive decoder: one model, one token per step.
import { constrainedDraw } from "./constraint.js";
import { TokenHistory } from "./history.js";
import { tokenDraws } from "./noise.js";
import { OutputAssembler } from "./output.js";
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
      const endOfGeneration = model.isEndOfGeneration(token) || stopTokens.has(token);
      if (!endOfGeneration) constraint?.accept(token);
      const limitReached = generated >= request.maxTokens || seq.length + 1 > seq.contextSize;
      // The next position's decode starts before this token is detokenized, checked against the
      // stop strings and streamed: llama.cpp computes while JavaScript does that work. A stop
      // string found meanwhile leaves one token in the cache that the next request drops.
      const next = endOfGeneration || limitReached ? undefined : evaluate([token]);
      next?.catch(() => undefined); // awaited below, unless the consumer stops first
      const logprob = endOfGeneration || request.topLogprobs === null ? undefined : describeLogprobs(model, logits, token, request.topLogprobs);
      const { text, logprobs, finishReason } = output.emit(token, logprob, { endOfGeneration, limitReached });
      // This position's logits are read (the decode started above writes its own when it ends,
      // after this synchronous stretch): the next evaluation may write into them.
      seq.recycle?.([logits]);
      yield { tokens: [token], text, logprobs, ...(finishReason && { finishReason }) };
      if (finishReason || !next) return;
      logits = await next;
    }
  } finally {
    constraint?.release();
    seq.release();
  }
}
