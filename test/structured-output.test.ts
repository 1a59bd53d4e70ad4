// Structured output end to end: a real server over the forged models, the official openai
// client (its zod helpers and .parse), real node-llama-cpp and llama.cpp's grammar. The forged
// models are Markov chains whose exact next-token distributions the manifest gives, so the
// constrained distribution is known too: the chain's, with the tokens the grammar forbids
// removed.
import { zodResponseFormat } from "openai/helpers/zod";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { z } from "zod";
import { ChainOracle } from "./helpers/chain.js";
import { goodnessOfFit } from "./helpers/goodness.js";
import { startTestServer, type TestServer } from "./helpers/server.js";

let t: TestServer;
let base: ChainOracle;

beforeAll(async () => {
  t = await startTestServer();
  base = new ChainOracle(t.manifest, "base");
});
afterAll(() => t?.close());

const Boat = z.object({
  name: z.string().max(12),
  kind: z.enum(["sloop", "ketch", "dinghy"]),
  crew: z.int().min(1).max(9),
  moored: z.boolean(),
  ports: z.array(z.enum(["north", "south"])).max(3),
});

async function post(path: string, body: unknown) {
  const res = await fetch(`${t.url}${path}`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  return { status: res.status, body: (await res.json()) as { error?: { message: string; param: string | null; code: string | null } } & Record<string, unknown> };
}

describe("response_format json_schema", () => {
  it("chat.completions.parse with a zod schema: every sampled output parses and validates", async () => {
    for (const [model, seed] of [["flock-demo", 1], ["flock-demo", 2], ["spec", 3], ["kitchen", 4]] as const) {
      const res = await t.client.chat.completions.parse({
        model,
        messages: [{ role: "user", content: "Describe a boat as JSON." }],
        response_format: zodResponseFormat(Boat, "boat"),
        temperature: 1,
        seed,
        max_tokens: 200,
      });
      const choice = res.choices[0];
      expect(choice.finish_reason, `${model}: ${choice.message.content}`).toBe("stop");
      expect(Boat.parse(choice.message.parsed)).toEqual(JSON.parse(choice.message.content!));
    }
  });

  it("streams the same constrained text as the whole response, with n = 3 choices each valid", async () => {
    const request = {
      model: "flock-demo",
      messages: [{ role: "user" as const, content: "Another boat." }],
      response_format: zodResponseFormat(Boat, "boat"),
      seed: 7,
      n: 3,
      max_tokens: 200,
    };
    const whole = await t.client.chat.completions.create(request);
    const streamed = ["", "", ""];
    for await (const chunk of await t.client.chat.completions.create({ ...request, stream: true })) {
      for (const c of chunk.choices) streamed[c.index] += c.delta.content ?? "";
    }
    expect(streamed).toEqual(whole.choices.map((c) => c.message.content));
    for (const text of streamed) Boat.parse(JSON.parse(text));
    // Three seeded choices of a free-form name: not all the same object.
    expect(new Set(streamed).size).toBeGreaterThan(1);
  });

  it("json_object on completions and text.format json_schema on Responses", async () => {
    // Any object: an empty one, or one whose first key is a free string, which the demo model's
    // chain never closes by itself (its quote byte is impossible unless forced): cut short.
    for (const seed of [5, 6, 7, 8]) {
      const completion = await t.client.completions.create({ model: "flock-demo", prompt: "The sailor", max_tokens: 40, seed, response_format: { type: "json_object" } } as never);
      const choice = (completion as unknown as { choices: Array<{ text: string; finish_reason: string }> }).choices[0];
      if (choice.finish_reason === "stop") expect(JSON.parse(choice.text)).toEqual({});
      else expect(choice.text).toMatch(/^\{\s*"[^"\\]*$/);
      const free = await t.client.completions.create({ model: "flock-demo", prompt: "The sailor", max_tokens: 40, seed });
      expect(free.choices[0].text).not.toMatch(/^\s*\{/);
    }
    const response = await t.client.responses.create({
      model: "flock-demo",
      input: "A boat, please.",
      max_output_tokens: 200,
      seed: 6,
      text: { format: { type: "json_schema", name: "boat", schema: zodResponseFormat(Boat, "boat").json_schema.schema!, strict: true } },
    } as never);
    Boat.parse(JSON.parse((response as { output_text: string }).output_text));
  });

  it("a schema mistake is a 400 naming its path; the server keeps serving", async () => {
    const bad = async (schema: unknown) =>
      post("/v1/chat/completions", { model: "flock-demo", messages: [{ role: "user", content: "x" }], response_format: { type: "json_schema", json_schema: { name: "x", schema } } });
    const typo = await bad({ type: "object", properties: { age: { type: "integr" } } });
    expect(typo.status).toBe(400);
    expect(typo.body.error).toMatchObject({ param: "response_format" });
    expect(typo.body.error!.message).toContain("response_format.json_schema.schema.properties.age.type");
    const ref = await bad({ type: "object", properties: { a: { $ref: "#/$defs/missing" } } });
    expect(ref.body.error!.message).toContain("properties.a.$ref");
    const required = await bad({ type: "object", properties: { a: { type: "string" } }, required: ["b"] });
    expect(required.body.error!.message).toMatch(/required.*"b"/);
    const grammar = await post("/v1/completions", { model: "flock-demo", prompt: "x", grammar: "root ::= (" });
    expect(grammar.status).toBe(400);
    expect(grammar.body.error).toMatchObject({ param: "grammar" });
    const both = await post("/v1/completions", { model: "flock-demo", prompt: "x", grammar: 'root ::= "a"', response_format: { type: "json_object" } });
    expect(both.status).toBe(400);
    const ok = await t.client.chat.completions.create({ model: "flock-demo", messages: [{ role: "user", content: "still there?" }], max_tokens: 3 });
    expect(ok.choices[0].message.content).toBeTruthy();
  });
});

describe("exact under speculation", () => {
  /** A token's text as the grammar sees it: byte tokens are their byte, ▁ a space. */
  const grammarText = (token: number): string | null => {
    const piece = t.manifest.vocab.tokens[token];
    const byte = /^<0x([0-9A-F]{2})>$/.exec(piece);
    if (byte) return String.fromCharCode(parseInt(byte[1], 16));
    if (/^<.*>$/.test(piece)) return null;
    return piece.replaceAll("\u2581", " ");
  };

  it("T = 0: the speculative model's constrained text is target-only constrained decoding's", async () => {
    // Greedy, the demo model pads JSON with all the whitespace the grammar allows: a small schema.
    const Dinghy = z.object({ name: z.string().max(12), kind: z.enum(["sloop", "ketch"]) });
    const prompts = ["Tell me about boats.", "What grows in the garden?", "Describe the sky."];
    for (const content of prompts) {
      const request = { messages: [{ role: "user" as const, content }], response_format: zodResponseFormat(Dinghy, "dinghy"), temperature: 0, max_tokens: 400 };
      // The default policy (whether it drafts depends on the costs it measured on this machine),
      // and a fixed K, which always drafts.
      const spec = await t.client.chat.completions.create({ model: "spec", ...request } as never);
      const fixed = await t.client.chat.completions.create({ model: "spec", ...request, flock: { speculative: { policy: "fixed", k: 4 } } } as never);
      const alone = await t.client.chat.completions.create({ model: "spec", ...request, flock: { speculative: { enabled: false } } } as never);
      const plain = await t.client.chat.completions.create({ model: "flock-demo", ...request });
      const text = (r: unknown) => (r as { choices: Array<{ message: { content: string } }> }).choices[0].message.content;
      expect(text(spec)).toBe(text(alone));
      expect(text(fixed)).toBe(text(alone));
      expect(text(spec)).toBe(text(plain));
      Dinghy.parse(JSON.parse(text(spec)));
      type Speculative = { flock: { speculative: { drafted_tokens: number; forced_tokens: number } } };
      const detail = (fixed as unknown as Speculative).flock.speculative;
      expect(detail.drafted_tokens).toBeGreaterThan(0);
      // The keys the schema forces were proposed without the draft, on both policies.
      expect(detail.forced_tokens).toBeGreaterThan(0);
      expect(detail.forced_tokens).toBeLessThan(detail.drafted_tokens);
      expect((spec as unknown as Speculative).flock.speculative.forced_tokens).toBeGreaterThan(0);
    }
    // /metrics counts them, and the mask cache's lookups.
    const metrics = await (await fetch(`${t.url}/metrics`)).text();
    const value = (name: string) => Number(metrics.split("\n").find((l) => l.startsWith(name))?.split(" ").at(-1));
    expect(value('flock_spec_decode_num_forced_tokens_total{model_name="spec"}')).toBeGreaterThan(0);
    expect(value('flock_grammar_mask_lookups_total{model_name="spec",result="hit"}')).toBeGreaterThan(0);
    expect(value('flock_grammar_mask_lookups_total{model_name="spec",result="miss"}')).toBeGreaterThan(0);
    expect(value('flock_grammar_mask_cache_bytes{model_name="spec"}')).toBeGreaterThan(0);
  });

  it.for([
    ["the first token", false],
    ["the token after one the grammar forces (proposed without the draft)", true],
  ] as const)("T = 1: %s under a grammar follows the chain with the forbidden tokens removed (chi-square, speculation rejecting)", async ([, forcing]) => {
    // Words that start with a to f: half of the chain's favourites after "The" are forbidden.
    // Forcing: the grammar's first token is "The" itself (a token-level element, the only token
    // it allows), so the free token after it follows the chain after "The" as well.
    const the = base.tokenOf("The");
    const words = '" " [a-f] [a-z]* (" " [a-f] [a-z]*)*';
    const grammar = forcing ? `root ::= <[${the}]> ${words}` : `root ::= ${words}`;
    const allowed = (token: number) => {
      const text = grammarText(token);
      return text !== null && text.length > 0 && /^ ([a-f][a-z]*( [a-f][a-z]*)* ?)?$/.test(text);
    };
    // Tokens with the same text (a letter and its byte token) are one outcome: responses report text.
    const classes = new Map<string, number>();
    const classOf = (text: string) => classes.get(text) ?? classes.set(text, classes.size).get(text)!;
    const vocabulary = t.manifest.vocab.tokens.length;
    for (let token = 0; token < vocabulary; token++) if (allowed(token)) classOf(grammarText(token)!);
    const p = base.next(the);
    const expected = new Float64Array(classes.size);
    let mass = 0;
    p.forEach((x, i) => {
      if (!allowed(i)) return;
      expected[classOf(grammarText(i)!)] += x;
      mass += x;
    });
    expected.forEach((x, i) => (expected[i] = x / mass));
    expect(1 - mass).toBeGreaterThan(0.2);
    const N = 3000;
    const firsts = new Map<number, number>();
    let rejected = 0;
    let forced = 0;
    const spelled = (text: string) => {
      const byte = /^<0x([0-9A-F]{2})>$/.exec(text);
      return byte ? String.fromCharCode(parseInt(byte[1], 16)) : text;
    };
    const one = async (seed: number) => {
      const res = await post("/v1/completions", {
        model: "spec",
        prompt: [the],
        max_tokens: forcing ? 3 : 2,
        temperature: 1,
        seed,
        grammar,
        logprobs: 0,
      });
      const choice = (res.body.choices as Array<{ logprobs: { tokens: string[] } }>)[0];
      const rounds = (res.body.flock as { speculative: { drafted_tokens: number; forced_tokens: number; accepted_tokens: number } }).speculative;
      if (rounds.accepted_tokens < rounds.drafted_tokens) rejected++;
      if (rounds.forced_tokens > 0) forced++;
      const tokens = choice.logprobs.tokens.map(spelled);
      if (forcing) expect(tokens[0]).toBe("The");
      return forcing ? tokens.slice(1) : tokens;
    };
    for (let start = 0; start < N; start += 16) {
      const batch = await Promise.all(Array.from({ length: Math.min(16, N - start) }, (_, i) => one(9000 + start + i)));
      for (const [a] of batch) {
        expect(classes.has(a), `${a} breaks the grammar`).toBe(true);
        firsts.set(classOf(a), (firsts.get(classOf(a)) ?? 0) + 1);
      }
    }
    expect(classes.size).toBeGreaterThan(10);
    expect(goodnessOfFit(firsts, expected).pValue).toBeGreaterThan(1e-4);
    expect(rejected).toBeGreaterThan(N / 50);
    // The forced token went without the draft once its mask was cached (seeded: coupled rounds
    // use cached masks only); without forcing, nothing was.
    if (forcing) expect(forced).toBeGreaterThan(N * 0.9);
    else expect(forced).toBe(0);
  });
});
