// The grammar engine on a real model (engine/grammar.ts over llama.cpp's grammar sampler, masked
// in flock's addon): masks agree with single-token checks, cached masks with llama.cpp's own
// pass, forced tokens with the masks, and a state cloned per speculative
// candidate and rolled back to an accepted prefix is the state a fresh grammar reaches by
// reading that prefix — over random accept/reject sequences; tool call grammars allow exactly the
// calls each template family writes.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { toolSyntaxOf } from "../engine/chat-template.js";
import { Engine } from "../engine/engine.js";
import type { GrammarState } from "../engine/grammar.js";
import type { LoadedModel } from "../engine/model.js";
import { createRng } from "../decoding/rng.js";
import { ModelEntry } from "../pipelines/model-entry.js";
import { toolCallGrammar } from "../server/tools.js";
import { advanced, allowedTokens } from "./helpers/grammar.js";
import { forgedManifest, forgedPath } from "./helpers/server.js";
import { FRAMING_FAMILIES, TEMPLATE_FAMILIES, writeCall, writeCalls } from "./helpers/tool-syntax.js";

let engine: Engine;
let model: LoadedModel;
beforeAll(async () => {
  engine = await Engine.create({ gpu: "off", threads: 1 });
  model = await engine.load(ModelEntry.parse({ id: "demo", path: forgedPath("flock-demo.gguf"), contextSize: 256, parallel: 1 }));
});
afterAll(() => engine?.[Symbol.asyncDispose]());

const SCHEMA = {
  type: "object",
  properties: { name: { type: "string", maxLength: 6 }, kind: { enum: ["sloop", "ketch"] }, crew: { type: "integer" }, ports: { type: "array", items: { type: "string" }, maxItems: 2 } },
  required: ["name", "kind", "crew", "ports"],
  additionalProperties: false,
};

/** The tokens the state allows next. */
const allowedSet = (state: GrammarState) => allowedTokens(state, model.vocabularySize);

describe("grammar states", () => {
  it("the mask allows exactly the tokens single checks allow, and the end of generation only once the object is complete", () => {
    // Uncached: llama.cpp's pass over the vocabulary against its check of each token.
    const start = model.grammars!.compile({ jsonSchema: SCHEMA }, { maskCache: false });
    const allowed = allowedSet(start);
    expect(allowed.length).toBeGreaterThan(0);
    expect(allowed.length).toBeLessThan(model.vocabularySize / 10);
    for (let t = 0; t < model.vocabularySize; t++) expect(start.allows(t), `token ${t}`).toBe(allowed.includes(t));
    const eos = model.weights.tokens.eos!;
    expect(start.allows(eos)).toBe(false);
    let state = start;
    for (const token of model.tokenize('{"name": "Ada", "kind": "ketch", "crew": 3, "ports": []}', { addSpecial: false, parseSpecial: false })) {
      expect(state.allows(token), model.detokenize([token])).toBe(true);
      state = advanced(state, token);
    }
    const ends = [...Array(model.vocabularySize).keys()].filter((t) => model.isEndOfGeneration(t));
    expect(ends).toContain(eos);
    expect(allowedSet(state)).toEqual(ends);
    // The start state was never advanced: clones are independent.
    expect(allowedSet(start)).toEqual(allowed);
  });

  it("cached masks and checks equal llama.cpp's own grammar pass at every state, on a walk's first visit and on later ones", () => {
    const rng = createRng(23);
    const walks = Array.from({ length: 6 }, () => {
      // A random walk through the grammar, chosen on uncached states.
      let state = model.grammars!.compile({ jsonSchema: SCHEMA }, { maskCache: false });
      const tokens: number[] = [];
      for (let i = 0; i < 30; i++) {
        const choices = allowedSet(state).filter((t) => !model.isEndOfGeneration(t));
        if (choices.length === 0) break;
        tokens.push(rng.pick(choices));
        state = advanced(state, tokens[tokens.length - 1]);
      }
      return tokens;
    });
    const start = model.grammars!.compile({ jsonSchema: SCHEMA });
    const before = model.grammars!.maskCacheStats();
    let compared = 0;
    for (const pass of [1, 2]) {
      for (const tokens of walks) {
        let cached = start.clone();
        let uncached = model.grammars!.compile({ jsonSchema: SCHEMA }, { maskCache: false });
        for (const token of [...tokens, -1]) {
          const allowed = allowedSet(uncached);
          expect(allowedSet(cached), `pass ${pass}`).toEqual(allowed);
          // Checks read the cached mask now; compare them with llama.cpp's check of one token.
          for (const t of [...allowed.slice(0, 20), ...Array.from({ length: 20 }, () => rng.int(model.vocabularySize))]) {
            expect(cached.allows(t), `token ${t}`).toBe(uncached.allows(t));
          }
          compared++;
          if (token < 0) break;
          cached = advanced(cached, token);
          uncached = advanced(uncached, token);
        }
      }
    }
    const stats = model.grammars!.maskCacheStats();
    // Every state of the second pass, and the first pass's revisits, were found in the cache.
    expect(stats.hits - before.hits).toBeGreaterThanOrEqual(compared / 2);
    expect(stats.misses - before.misses).toBeGreaterThan(10);
    expect(stats.unkeyed - before.unkeyed).toBe(0);
    expect(compared).toBeGreaterThan(100);
  });

  it("grammars of one shape keep their own masks: the cache key names the grammar", () => {
    const digits = (letter: string) => model.grammars!.compile({ gbnf: `root ::= "${letter}" [0-9]*` });
    const [a, b] = [digits("a"), digits("b")];
    const tokenOf = (text: string) => model.tokenize(text, { addSpecial: false, parseSpecial: false });
    expect(tokenOf("a")).toHaveLength(1);
    expect(tokenOf("b")).toHaveLength(1);
    expect(allowedSet(a)).toContain(tokenOf("a")[0]);
    expect(allowedSet(b)).toContain(tokenOf("b")[0]);
    expect(allowedSet(b)).not.toContain(tokenOf("a")[0]);
  });

  it("a forced token is the only one the mask allows; without computing, only a cached mask says so", () => {
    const instance = '{"name": "Ada", "kind": "ketch", "crew": 3, "ports": []}';
    let state = model.grammars!.compile({ jsonSchema: SCHEMA });
    const prefix: number[] = [];
    let forced = 0;
    let free = 0;
    for (const token of model.tokenize(instance, { addSpecial: false, parseSpecial: false })) {
      // The same state in another compilation has no cached mask: nothing is known until computed.
      let fresh = model.grammars!.compile({ jsonSchema: SCHEMA });
      for (const t of prefix) fresh = advanced(fresh, t);
      expect(fresh.forcedToken(false)).toBeUndefined();
      const allowed = allowedSet(state);
      const only = allowed.length === 1 ? allowed[0] : undefined;
      expect(state.forcedToken(false)).toBe(only);
      expect(fresh.forcedToken(true)).toBe(only);
      if (only === undefined) free++;
      else forced++;
      state = advanced(state, token);
      prefix.push(token);
    }
    expect(forced).toBeGreaterThan(0);
    expect(free).toBeGreaterThan(0);
    expect(model.grammars!.compile({ jsonSchema: SCHEMA }, { maskCache: false }).forcedToken(true)).toBeUndefined();
  });

  it("a released state is freed at once and refuses use (it would otherwise allow nothing); its clones live on", () => {
    const state = model.grammars!.compile({ jsonSchema: SCHEMA });
    const copy = state.clone();
    state.release();
    state.release();
    expect(() => state.allows(0)).toThrow(/after release/);
    expect(() => state.mask(new Float32Array(model.vocabularySize))).toThrow(/after release/);
    expect(() => state.clone()).toThrow(/after release/);
    expect(allowedSet(copy).length).toBeGreaterThan(0);
    copy.release();
    // Requests' start states are compiled once per distinct source and shared.
    const source = { jsonSchema: SCHEMA };
    expect(model.grammars!.start(source)).toBe(model.grammars!.start({ jsonSchema: { ...SCHEMA } }));
    expect(model.grammars!.start(source)).not.toBe(model.grammars!.start({ gbnf: 'root ::= "a"' }));
  });

  it("rollback: random rounds of candidates, a random accepted prefix and a next token leave the state a fresh grammar reaches from the committed text", () => {
    const rng = createRng(17);
    let rejections = 0;
    let compared = 0;
    for (let walk = 0; walk < 20; walk++) {
      let committed = model.grammars!.compile({ jsonSchema: SCHEMA });
      const text: number[] = [];
      for (let round = 0; round < 12; round++) {
        // Candidates drawn from the allowed tokens, each from the state after the previous.
        const states = [committed];
        const candidates: number[] = [];
        const wanted = 1 + rng.int(4);
        while (candidates.length < wanted) {
          const choices = allowedSet(states[states.length - 1]).filter((t) => !model.isEndOfGeneration(t));
          if (choices.length === 0) break;
          const y = rng.pick(choices);
          candidates.push(y);
          states.push(advanced(states[states.length - 1], y));
        }
        if (candidates.length === 0) break;
        const accepted = rng.int(candidates.length + 1);
        if (accepted < candidates.length) rejections++;
        const choices = allowedSet(states[accepted]).filter((t) => !model.isEndOfGeneration(t));
        if (choices.length === 0) break;
        const next = rng.pick(choices);
        committed = advanced(states[accepted], next);
        text.push(...candidates.slice(0, accepted), next);
        let replay = model.grammars!.compile({ jsonSchema: SCHEMA });
        for (const token of text) replay = advanced(replay, token);
        expect(allowedSet(committed), `walk ${walk}, round ${round}`).toEqual(allowedSet(replay));
        compared++;
      }
    }
    expect(compared).toBeGreaterThan(100);
    expect(rejections).toBeGreaterThan(50);
  });
});

describe("well-formed UTF-8 under a grammar", () => {
  // llama.cpp's grammar takes any bytes shaped like a UTF-8 sequence; flock's masks and checks
  // also require well-formed UTF-8, so a string rule cannot be met with bytes that print as U+FFFD.
  const byte = (b: number) => forgedManifest().vocab.tokens.indexOf(`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`);
  const text = { gbnf: 'root ::= "\\"" [^"]* "\\""' };

  it.for([true, false])("allows a byte token only where the bytes so far stay well-formed (mask cache %s)", (cached) => {
    const start = advanced(model.grammars!.compile(text, { maskCache: cached }), model.tokenize('"', { addSpecial: false, parseSpecial: false })[0]);
    const allows = (state: GrammarState, b: number) => {
      const token = byte(b);
      const check = state.allows(token);
      expect(allowedSet(state).includes(token), `mask and check agree on 0x${b.toString(16)}`).toBe(check);
      return check;
    };
    // Where no character is under way: ASCII and lead bytes; not continuations, C0/C1 (overlong) or F5-FF.
    for (const [b, ok] of [[0x41, true], [0xc3, true], [0xe0, true], [0xf0, true], [0xf4, true], [0x80, false], [0xbf, false], [0xc0, false], [0xc1, false], [0xf5, false], [0xf8, false], [0xff, false]] as const) {
      expect(allows(start, b), `0x${b.toString(16)} first`).toBe(ok);
    }
    // The byte after a lead: E0 needs A0-BF (else overlong), ED 80-9F (else a surrogate),
    // F0 90-BF, F4 80-8F (else past U+10FFFF); C3 any continuation but no new lead or ASCII.
    const after = (lead: number, b: number) => allows(advanced(start, byte(lead)), b);
    for (const [lead, b, ok] of [
      [0xc3, 0xa9, true], [0xc3, 0x41, false], [0xc3, 0xc3, false],
      [0xe0, 0xa0, true], [0xe0, 0x9f, false], [0xed, 0x9f, true], [0xed, 0xa0, false],
      [0xf0, 0x90, true], [0xf0, 0x8f, false], [0xf4, 0x8f, true], [0xf4, 0x90, false], [0xf1, 0x80, true],
    ] as const) {
      expect(after(lead, b), `0x${lead.toString(16)} then 0x${b.toString(16)}`).toBe(ok);
    }
    // Past the first continuation, any continuation and nothing else: F0 9F then 98 80 (U+1F600).
    const smile = advanced(advanced(start, byte(0xf0)), byte(0x9f));
    expect(allows(smile, 0x98)).toBe(true);
    expect(allows(smile, 0x41)).toBe(false);
    expect(allows(advanced(smile, byte(0x98)), 0x80)).toBe(true);
  });
});

describe("tool call grammars", () => {
  /**
   * The tokens of a text the model writes. The forged vocabulary is SentencePiece's, where "▁"
   * reads as a space; a vocabulary with DeepSeek's special text in it spells "▁" itself, as the
   * byte tokens of its UTF-8 (E2 96 81) do here.
   */
  const byte = (b: number) => forgedManifest().vocab.tokens.indexOf(`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`);
  const textTokens = (text: string) =>
    text.split("▁").flatMap((part, i) => [...(i > 0 ? [0xe2, 0x96, 0x81].map(byte) : []), ...(part ? model.tokenize(part, { addSpecial: false, parseSpecial: false }) : [])]);

  it.for(TEMPLATE_FAMILIES)("%s: a call in the template's syntax to a declared function with valid arguments is what the grammar allows, and nothing else", ([, wrapper]) => {
    const syntax = toolSyntaxOf(wrapper);
    // One call (parallel_tool_calls false; several are the next test's).
    const plan = { mode: "required" as const, parallel: false, tools: [{ name: "get_weather", parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"], additionalProperties: false } }, { name: "get_time" }] };
    const gbnf = toolCallGrammar(plan, syntax, model.grammars!);
    // One call, in the template's framing of parallel calls where it has one.
    const write = (name: string, args: string) => writeCalls(syntax, [[name, args]]);
    /** How far a text gets under the grammar: the tokens accepted, and whether it may end there. */
    const walk = (text: string) => {
      let state = model.grammars!.compile({ gbnf });
      const tokens = textTokens(text);
      for (const [i, token] of tokens.entries()) {
        if (!state.allows(token)) return { accepted: i, complete: false, of: tokens.length };
        state = advanced(state, token);
      }
      return { accepted: tokens.length, complete: allowedSet(state).every((t) => model.isEndOfGeneration(t)), of: tokens.length };
    };
    for (const text of [write("get_weather", '{"city": "Paris"}'), write("get_time", "{}")]) expect(walk(text), text).toMatchObject({ complete: true });
    for (const text of [write("get_wether", '{"city": "Paris"}'), write("get_weather", '{"town": "Paris"}'), write("get_time", '{"zone": 1}')]) {
      const result = walk(text);
      expect(result.accepted, text).toBeLessThan(result.of);
    }
    // The named function alone.
    const named = toolCallGrammar({ ...plan, named: "get_time" }, syntax, model.grammars!);
    expect(writeCall(syntax, "get_time", "{}").length).toBeGreaterThan(0);
    let state = model.grammars!.compile({ gbnf: named });
    const text = write("get_weather", "{}");
    const tokens = textTokens(text);
    expect(tokens.some((token) => {
      if (!state.allows(token)) return true;
      state = advanced(state, token);
      return false;
    })).toBe(true);
  });

  const tools = [{ name: "get_weather", parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"], additionalProperties: false } }, { name: "get_time" }];
  /** How far a text gets under a grammar: whether all of it is allowed, and whether generation may end there. */
  function walk(gbnf: string, text: string) {
    let state = model.grammars!.compile({ gbnf });
    for (const token of textTokens(text)) {
      if (!state.allows(token)) return { allowed: false, complete: false };
      state = advanced(state, token);
    }
    return { allowed: true, complete: allowedSet(state).every((t) => model.isEndOfGeneration(t)) };
  }

  it.for(FRAMING_FAMILIES)("%s: required with parallel calls allows several calls in the template's framing; parallel_tool_calls false and a named function exactly one", ([, wrapper]) => {
    const syntax = toolSyntaxOf(wrapper);
    const two = writeCalls(syntax, [["get_weather", '{"city": "Paris"}'], ["get_time", "{}"]]);
    const one = writeCalls(syntax, [["get_time", "{}"]]);
    const parallel = toolCallGrammar({ mode: "required", tools, parallel: true }, syntax, model.grammars!);
    expect(walk(parallel, two), two).toEqual({ allowed: true, complete: true });
    expect(walk(parallel, one), one).toEqual({ allowed: true, complete: true });
    expect(walk(parallel, writeCalls(syntax, [["get_time", "{}"], ["get_time", "{}"], ["get_weather", '{"city": "Rome"}']]))).toEqual({ allowed: true, complete: true });
    // Not without the framing, not with a call that is not declared.
    expect(walk(parallel, writeCall(syntax, "get_time", "{}")).allowed).toBe(false);
    expect(walk(parallel, writeCalls(syntax, [["get_time", "{}"], ["get_wether", "{}"]])).allowed).toBe(false);
    // After the section suffix the model may only end its turn (the suffix's end of generation).
    const afterSuffix = two.length - syntax.parallel!.sectionSuffix.length;
    expect(walk(parallel, two.slice(0, afterSuffix)).complete).toBe(false);
    for (const single of [toolCallGrammar({ mode: "required", tools, parallel: false }, syntax, model.grammars!), toolCallGrammar({ mode: "required", tools, parallel: true, named: "get_time" }, syntax, model.grammars!)]) {
      expect(walk(single, one), one).toEqual({ allowed: true, complete: true });
      expect(walk(single, two).allowed, two).toBe(false);
      expect(walk(single, writeCalls(syntax, [["get_time", "{}"], ["get_time", "{}"]])).allowed).toBe(false);
    }
  });
});
