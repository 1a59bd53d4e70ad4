// Grammar masks at real vocabularies (llama.cpp's tokenizer files, no weights: Qwen 2's 151,936
// byte-level BPE tokens and Llama 2's 32,000 SentencePiece ones with byte fallback). A state's
// first mask is flock's walk over the vocabulary's trie (AddonFlockGrammarTrie.cpp); it must equal
// llama.cpp's own pass over every token at every state random walks reach: through JSON strings
// with and without maxLength, enums, integer ranges, multi-byte character classes, `.`, negated
// classes, and alternatives that leave several stacks at once.
import { tmpdir } from "node:os";
import { join } from "node:path";
import { getLlama, type Llama, LlamaLogLevel, type LlamaModel, type Token } from "node-llama-cpp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createRng } from "../decoding/rng.js";
import { GrammarCompiler, type GrammarSource, type GrammarState } from "../engine/grammar.js";
import { grammarKernels } from "../engine/native.js";
import { vocabFile } from "../forge/tokenizers.js";
import { advanced, allowedTokens } from "./helpers/grammar.js";

const GRAMMARS: Record<string, GrammarSource> = {
  json: {
    jsonSchema: {
      type: "object",
      properties: {
        name: { type: "string", maxLength: 8 },
        note: { type: "string" },
        kind: { enum: ["sloop", "ketch", "ñandú", "帆船"] },
        crew: { type: "integer", minimum: 1, maximum: 40 },
        ports: { type: "array", items: { type: "string", maxLength: 5 }, maxItems: 2 },
      },
      required: ["name", "note", "kind", "crew", "ports"],
      additionalProperties: false,
    },
  },
  // Chinese characters (three-byte UTF-8: tokens that end mid-character), any character, a
  // negated class.
  cjk: { gbnf: 'root ::= [一-龥]+ ("。" | "！") [ \\t]* ("x" . "y")? [^a-z0-9]{0,4}' },
  // Alternatives that overlap: after "a" several stacks are live.
  alternatives: { gbnf: 'root ::= ("ab" | "a" [b-d]+ | [^x\\n]{0,5}) "z" | "é"+ [^a-z]* "!"' },
};

/** What kind of text a token is: the walks pick a kind first. */
function kindOf(text: string): string {
  if (text.endsWith("\uFFFD")) return "ends mid-character";
  const first = text.codePointAt(0) ?? 0;
  if (first >= 0x4e00 && first <= 0x9fff) return "Chinese";
  if (first >= 0x80) return "other non-ASCII";
  if (/[0-9]/.test(text[0])) return "digit";
  if (/[A-Za-z]/.test(text[0])) return "letter";
  return "other ASCII";
}

let llama: Llama;
beforeAll(async () => {
  llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error, progressLogs: false });
});
afterAll(() => llama?.dispose());

describe.each(["qwen2", "llama-spm"] as const)("grammar masks at the %s vocabulary", (name) => {
  let model: LlamaModel;
  let compiler: GrammarCompiler;
  let vocabulary: number;
  let pieces: string[];
  let kinds: string[];
  beforeAll(async () => {
    model = await llama.loadModel({ modelPath: vocabFile(name, join(tmpdir(), "flock-vocab")), vocabOnly: true });
    compiler = new GrammarCompiler(model, grammarKernels(llama)!);
    vocabulary = model.fileInfo.metadata.tokenizer!.ggml!.tokens!.length;
    // Each token's text as it reads after another (SentencePiece drops a leading space at the start).
    const after = model.tokenize("a");
    pieces = Array.from({ length: vocabulary }, (_, t) => model.detokenize([t as Token], true, after));
    kinds = pieces.map(kindOf);
  });
  afterAll(() => model?.dispose());

  const allowedSet = (state: GrammarState) => allowedTokens(state, vocabulary);

  it.each(Object.keys(GRAMMARS))("%s: the first mask of every state walked equals llama.cpp's pass", (grammar) => {
    const source = GRAMMARS[grammar];
    const rng = createRng(7);
    const before = compiler.maskCacheStats();
    let states = 0;
    let partialEndings = 0;
    const sizes: number[] = [];
    for (let walk = 0; walk < 3; walk++) {
      // A fresh compilation per walk: no state of it has a cached mask yet.
      let cached = compiler.compile(source);
      let uncached = compiler.compile(source, { maskCache: false });
      for (let step = 0; step < 16; step++) {
        const allowed = allowedSet(uncached);
        expect(allowedSet(cached), `${grammar}, walk ${walk}, step ${step}`).toEqual(allowed);
        states++;
        sizes.push(allowed.length);
        const text = allowed.filter((t) => !model.isEogToken(t as Token));
        if (text.length === 0) break;
        // Tokens that end inside a character print a replacement character: the walk checked
        // that one of the tops can still complete it.
        if (text.some((t) => kinds[t] === "ends mid-character")) partialEndings++;
        // A random kind of token, then a random token of that kind: rare branches (the end of a
        // run of Chinese characters, a digit after a string) are taken as often as common ones.
        const byKind = new Map<string, number[]>();
        for (const t of text) {
          if (!byKind.has(kinds[t])) byKind.set(kinds[t], []);
          byKind.get(kinds[t])!.push(t);
        }
        const pool = [...byKind.values()][rng.int(byKind.size)];
        const token = pool[rng.int(pool.length)];
        cached = advanced(cached, token);
        uncached = advanced(uncached, token);
      }
    }
    const stats = compiler.maskCacheStats();
    // Computed on first visits, not found in the cache, and on states of several sizes: a
    // handful of tokens between fields, nearly the vocabulary inside a string.
    expect(stats.misses - before.misses).toBeGreaterThanOrEqual(states / 2);
    expect(Math.min(...sizes)).toBeLessThan(vocabulary / 100);
    expect(Math.max(...sizes)).toBeGreaterThan(grammar === "alternatives" ? vocabulary / 2 : vocabulary / 20);
    if (grammar !== "alternatives") expect(partialEndings).toBeGreaterThan(0);
  });

  it("checks at a state's first visit agree with llama.cpp's, and the second computes the mask where a few characters may come next", () => {
    const instance = '{"name": "Ada", "note": "a long note", "kind": "ketch", "crew": 3, "ports": ["Vigo"]}';
    // The instance as a model following the grammar writes it: the longest allowed token that
    // the rest of the text starts with, at each position.
    const tokens: number[] = [];
    for (let state = compiler.compile(GRAMMARS.json, { maskCache: false }), at = 0; at < instance.length; ) {
      const fits = pieces.map((piece, t) => t).filter((t) => pieces[t].length > 0 && instance.startsWith(pieces[t], at) && state.allows(t));
      const token = fits.reduce((best, t) => (pieces[t].length > pieces[best].length ? t : best));
      tokens.push(token);
      state = advanced(state, token);
      at += pieces[token].length;
    }
    const rng = createRng(11);
    let computed = 0;
    let notComputed = 0;
    for (let at = 0; at < tokens.length; at++) {
      // A fresh compilation: the state at this position has no cached mask.
      let cached = compiler.compile(GRAMMARS.json);
      let uncached = compiler.compile(GRAMMARS.json, { maskCache: false });
      for (const token of tokens.slice(0, at)) {
        cached = advanced(cached, token);
        uncached = advanced(uncached, token);
      }
      // A refused token first where one is found (inside a string nearly every token is allowed).
      const refused = Array.from({ length: 200 }, () => rng.int(vocabulary)).filter((t) => !uncached.allows(t)).slice(0, 1);
      const before = compiler.maskCacheStats().misses;
      for (const t of [...refused, tokens[at], ...Array.from({ length: 30 }, () => rng.int(vocabulary))]) {
        expect(cached.allows(t), `position ${at}, token ${t}`).toBe(uncached.allows(t));
      }
      if (compiler.maskCacheStats().misses > before) computed++;
      else notComputed++;
    }
    // Between fields the second check computed the mask; inside strings it did not.
    expect(computed).toBeGreaterThan(5);
    expect(notComputed).toBeGreaterThan(5);
  });
});
