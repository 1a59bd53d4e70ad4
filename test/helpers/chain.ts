// The exact distributions of forged models, from the manifest (independent of the server).
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
