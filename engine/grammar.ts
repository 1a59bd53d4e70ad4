// Grammars for constrained decoding on one model: GBNF text, or a JSON schema turned into GBNF by
// llama.cpp's converter (the one llama-server uses), evaluated by llama.cpp's grammar sampler
// over the model's vocabulary. Each generation holds a GrammarState (what decoding/constraint.ts
// calls a TokenConstraint); the mask over the whole vocabulary runs in the addon (engine/native.ts),
// which keeps each grammar state's mask in the model's cache: a generation revisits a few states
// (every position inside a string is one), and clients send the same schema again.
import { LlamaGrammar, LlamaGrammarEvaluationState, type LlamaModel, type Token } from "node-llama-cpp";
import type { GrammarKernels, MaskCache, MaskCacheKey, MaskCacheStats } from "./native.js";
import { translatePatterns } from "./schema-patterns.js";

/** A grammar that does not compile: `reason` says why, for a 400 naming the field. */
export class GrammarError extends Error {
  constructor(readonly reason: string) {
    super(reason);
    this.name = "GrammarError";
  }
}

/** What a constrained generation is held to. */
export type GrammarSource = { gbnf: string; root?: string } | { jsonSchema: unknown };

/** Distinct grammars kept compiled per model (clients tend to send the same schema again). */
const CACHED_GRAMMARS = 64;
/** Bytes of masks kept per model: 3,400 states at 151,936 tokens (a bit per token). */
const MASK_CACHE_BYTES = 64 * 2 ** 20;

/** Compiles grammars for one model. */
export class GrammarCompiler {
  /** Start states by source, least recently used first. */
  private readonly compiled = new Map<string, GrammarState>();
  private readonly masks: MaskCache;
  private compilations = 0;

  constructor(
    private readonly model: LlamaModel,
    private readonly kernels: GrammarKernels,
  ) {
    this.masks = kernels.maskCache(MASK_CACHE_BYTES);
  }

  /** How the model's mask cache has served. */
  maskCacheStats(): MaskCacheStats {
    return this.kernels.maskCacheStats(this.masks);
  }

  /** GBNF for a JSON schema; throws GrammarError with the converter's reasons. */
  jsonSchemaGrammar(schema: unknown): string {
    try {
      // Patterns first spelled in the regular expressions the converter translates.
      return this.kernels.jsonSchemaToGrammar(JSON.stringify(translatePatterns(schema)));
    } catch (err) {
      throw new GrammarError((err as Error).message.replace(/^JSON schema conversion failed:\n/, ""));
    }
  }

  /**
   * The start of a generation held to `source`, shared: decoders clone it and never advance it.
   * Compiled once per distinct source (a conversion and a parse, and native memory V8 does not
   * see, saved per request); throws GrammarError when it does not compile.
   */
  start(source: GrammarSource): GrammarState {
    const key = JSON.stringify(source);
    const cached = this.compiled.get(key);
    if (cached) {
      this.compiled.delete(key);
      this.compiled.set(key, cached);
      return cached;
    }
    const state = this.compile(source);
    this.compiled.set(key, state);
    // An evicted start state may still be about to be cloned by a queued request: the garbage
    // collector frees it once nothing holds it.
    if (this.compiled.size > CACHED_GRAMMARS) this.compiled.delete(this.compiled.keys().next().value!);
    return state;
  }

  /**
   * A fresh start of a generation held to `source`; throws GrammarError when it does not compile.
   * `maskCache: false` masks and checks with a grammar pass every time (what the cache must equal).
   */
  compile(source: GrammarSource, options: { maskCache?: boolean } = {}): GrammarState {
    const gbnf = "gbnf" in source ? source.gbnf : this.jsonSchemaGrammar(source.jsonSchema);
    const root = "gbnf" in source ? (source.root ?? "root") : "root";
    // llama.cpp's parser logs its complaint (the server's log has it) and answers nothing more.
    const invalid = () => new GrammarError(`the grammar is not valid GBNF or has no rule "${root}" (llama.cpp's parser refused it)`);
    let grammar: LlamaGrammar;
    try {
      grammar = new LlamaGrammar(this.model.llama, { grammar: gbnf, rootRuleName: root });
    } catch {
      throw invalid();
    }
    const state = new LlamaGrammarEvaluationState({ model: this.model, grammar });
    if (!this.kernels.valid(state)) throw invalid();
    // Each compilation its own id in the mask cache: the key names rules by index, which only
    // means something within one grammar.
    return new GrammarState(state, {
      kernels: this.kernels,
      masks: options.maskCache === false ? undefined : { cache: this.masks, grammarId: this.compilations++ },
      endsGeneration: (token) => this.model.isEogToken(token as Token),
    });
  }
}

/** What the states of one compiled grammar share. */
interface GrammarContext {
  kernels: GrammarKernels;
  masks: MaskCacheKey | undefined;
  endsGeneration: (token: number) => boolean;
}

/** One generation's position in a grammar. */
export class GrammarState {
  private released = false;
  /** Checks since the state last moved. */
  private checks = 0;

  constructor(
    private readonly state: LlamaGrammarEvaluationState,
    private readonly context: GrammarContext,
  ) {}

  /**
   * Whether `token` may come next. A second check at one position means the first token was
   * refused and more are coming (decoding/constraint.ts), so where only a few characters may come
   * next the state's mask is computed then (a short walk) and answers the rest.
   */
  allows(token: number): boolean {
    return this.context.kernels.allows(this.live(), token, this.context.masks, ++this.checks === 2);
  }

  /** Sets the logit of every token that may not come next to −Infinity, in place. */
  mask(logits: Float32Array): void {
    this.context.kernels.mask(this.live(), logits, this.context.masks);
  }

  /**
   * The only token the grammar allows next, where the state's mask says so: looked up in the
   * cache, or with `computeMask` computed there (a grammar pass over the vocabulary at a state's
   * first visit); undefined where several may come or the mask is not known.
   */
  forcedToken(computeMask: boolean): number | undefined {
    const masks = this.context.masks;
    return masks ? this.context.kernels.forcedToken(this.live(), masks, computeMask) : undefined;
  }

  /** Advances past `token` (which the grammar allows). */
  accept(token: number): void {
    // llama.cpp aborts the process on an end-of-generation token its grammar does not allow;
    // nothing follows one anyway.
    if (this.context.endsGeneration(token)) return;
    this.context.kernels.accept(this.live(), token);
    this.checks = 0;
  }

  clone(): GrammarState {
    this.live();
    return new GrammarState(this.state.clone(), this.context);
  }

  /**
   * Frees the grammar now: V8 does not see its native memory, and would let the states of
   * thousands of speculative candidates pile up before collecting them. Idempotent.
   */
  release(): void {
    if (this.released) return;
    this.released = true;
    this.context.kernels.free(this.state);
  }

  /** The native state; a released one would silently allow nothing. */
  private live(): LlamaGrammarEvaluationState {
    if (this.released) throw new Error("grammar state used after release");
    return this.state;
  }
}
