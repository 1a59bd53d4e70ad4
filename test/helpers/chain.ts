// The exact distributions of forged models, from the manifest (independent of the server).
import { expect } from "vitest";
import { type Manifest, nextTokenProbabilities } from "../../forge/manifest.js";

const SPACE = "\u2581";

export class ChainOracle {
  constructor(
    readonly manifest: Manifest,
    readonly chain: string,
  ) {}

  get eos(): number {
    return this.manifest.vocab.eos;
  }

  /** Text a token detokenizes to (▁ is a space). */
  text(token: number): string {
    return this.manifest.vocab.tokens[token].replaceAll(SPACE, " ");
  }

  /** Token whose text this is (chain pieces have unique texts). */
  tokenOf(text: string): number {
    const id = this.manifest.vocab.tokens.indexOf(text.replaceAll(" ", SPACE));
    if (id < 0) throw new Error(`no token for ${JSON.stringify(text)}`);
    return id;
  }

  /** Token ids of a prompt written in the language's words ("The sailor ties the"). */
  promptTokens(prompt: string): number[] {
    return prompt.split(" ").map((w, i) => this.tokenOf(i === 0 ? w : ` ${w}`));
  }

  next(token: number): Float64Array {
    return nextTokenProbabilities(this.manifest, this.chain, token);
  }

  argmax(token: number): number {
    const p = this.next(token);
    let best = 0;
    for (let i = 1; i < p.length; i++) if (p[i] > p[best]) best = i;
    return best;
  }

  /** The greedy continuation after `token`: up to `max` tokens, EOS included when reached. */
  greedyPath(token: number, max: number): number[] {
    const path: number[] = [];
    let last = token;
    while (path.length < max) {
      last = this.argmax(last);
      path.push(last);
      if (last === this.eos) break;
    }
    return path;
  }
}

/**
 * Checks a greedy static-fusion completion of "The cook" (strong "base", small base "weak", the
 * expert "weak-kitchen", legacy `logprobs`) against softmax(L_strong + α (L_expert − L_base)) of
 * the chains: each token is the fused argmax, its logprob and top logprobs the fused ones (to 4
 * digits, OpenAI's -9999 for none). Returns whether fusion moved some token's probability more
 * than 0.01 off the strong model's own.
 */
export function expectGreedyStaticFusion(manifest: Manifest, logprobs: { tokens?: string[]; token_logprobs?: number[]; top_logprobs?: Array<Record<string, number>> }, alpha: number): boolean {
  const [s, b, e] = ["base", "weak", "weak-kitchen"].map((name) => new ChainOracle(manifest, name));
  let prev = s.tokenOf(" cook");
  let differs = false;
  logprobs.tokens!.forEach((text, i) => {
    const [ps, pb, pe] = [s.next(prev), b.next(prev), e.next(prev)];
    const logits = ps.map((p, v) => (p > 0 ? Math.log(p) + alpha * (Math.log(pe[v]) - Math.log(pb[v])) : -Infinity));
    const max = Math.max(...logits);
    const z = logits.reduce((acc, l) => acc + Math.exp(l - max), 0);
    const expected = (token: number) => Math.max(logits[token] - max - Math.log(z), -9999);
    const argmax = logits.indexOf(max);
    expect(text).toBe(s.text(argmax));
    expect(logprobs.token_logprobs![i]).toBeCloseTo(expected(argmax), 4);
    for (const [alt, value] of Object.entries(logprobs.top_logprobs![i])) expect(value).toBeCloseTo(expected(s.tokenOf(alt)), 4);
    if (Math.abs(Math.exp(expected(argmax)) - ps[argmax]) > 1e-2) differs = true;
    prev = argmax;
  });
  return differs;
}
