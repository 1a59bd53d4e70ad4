// Structured output end to end: a real server over the forged models, the official openai
// client (its zod helpers and .parse), real node-llama-cpp and llama.cpp's grammar. The forged
// models are Markov chains whose exact next-token distributions the manifest gives, so the
// constrained distribution is known too: the chain's, with the tokens the grammar forbids
// removed.
import { zodFunction, zodResponseFormat } from "openai/helpers/zod";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { DeepSeekChatWrapper, JinjaTemplateChatWrapper, Llama3_2LightweightChatWrapper, Llama3ChatWrapper, type ChatWrapper, type Token } from "node-llama-cpp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { z } from "zod";
import { ChatTemplate } from "../engine/chat-template.js";
import { FlockError } from "../engine/errors.js";
import { parseToolCalls } from "../server/tools.js";
import { ChainOracle } from "./helpers/chain.js";
import { goodnessOfFit } from "./helpers/goodness.js";
import { forgedPath, startTestServer, type TestServer } from "./helpers/server.js";
import { WEATHER_DEFINITIONS, WEATHER_HISTORY } from "./helpers/tool-syntax.js";

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

describe("strict schemas: keywords the grammar would not enforce", () => {
  const chat = (schema: unknown, strict: boolean) =>
    post("/v1/chat/completions", { model: "flock-demo", messages: [{ role: "user", content: "x" }], max_tokens: 1, response_format: { type: "json_schema", json_schema: { name: "x", schema, strict } } });
  /** Each family the converter ignores, the path the 400 must name, and a close schema it enforces. */
  const families: Array<[string, unknown, string, unknown]> = [
    ["number bounds", { type: "object", properties: { w: { type: "number", minimum: 0 } } }, "properties.w.minimum", { type: "object", properties: { w: { type: "integer", minimum: 0 } } }],
    ["exclusive bounds", { type: "object", properties: { w: { type: "number", exclusiveMaximum: 3 } } }, "properties.w.exclusiveMaximum", { type: "object", properties: { w: { type: "integer", exclusiveMaximum: 3 } } }],
    ["multipleOf", { type: "integer", multipleOf: 5 }, "schema.multipleOf", { type: "integer", multipleOf: 1 }],
    ["uniqueItems", { type: "array", items: { type: "integer" }, uniqueItems: true }, "schema.uniqueItems", { type: "array", items: { type: "integer" }, maxItems: 1, uniqueItems: true }],
    ["not", { type: "object", properties: { a: { not: { type: "null" } } } }, "properties.a.not", { type: "object", properties: { a: { type: "string" } } }],
    ["contains", { type: "array", items: { type: "integer" }, contains: { const: 1 } }, "schema.contains", { type: "array", items: { type: "integer" } }],
    ["minProperties", { type: "object", properties: { a: { type: "string" } }, minProperties: 1 }, "schema.minProperties", { type: "object", properties: { a: { type: "string" } }, required: ["a"], minProperties: 1 }],
    ["maxProperties", { type: "object", additionalProperties: { type: "string" }, maxProperties: 2 }, "schema.maxProperties", { type: "object", properties: { a: { type: "string" }, b: { type: "string" } }, maxProperties: 2 }],
    ["format email", { type: "string", format: "email" }, "schema.format", { type: "string", format: "date" }],
    ["format hostname", { type: "object", properties: { h: { type: "string", format: "hostname" } } }, "properties.h.format", { type: "object", properties: { h: { type: "string", format: "uuid" } } }],
    ["format ipv4", { type: "string", format: "ipv4" }, "schema.format", { type: "string", pattern: "^[0-9]{1,3}([.][0-9]{1,3}){3}$" }],
    ["format duration", { type: "string", format: "duration", maxLength: 9 }, "schema.format", { type: "string", maxLength: 9 }],
    ["a pattern the converter cannot translate", { type: "string", pattern: "^\\S+$" }, "schema.pattern", { type: "string", pattern: "^\\d+$" }],
    ["a pattern that writes a quote", { type: "string", pattern: '^a"b$' }, "schema.pattern", { type: "string", pattern: '^[^"]{1,3}$' }],
    ["a length beside a pattern", { type: "string", pattern: "^[a-z]+$", maxLength: 4 }, "schema.maxLength", { type: "string", pattern: "^[a-z]{1,4}$" }],
    ["an unanchored pattern", { type: "string", pattern: "[a-z]+" }, "schema.pattern", { type: "string", pattern: "^[a-z]+$" }],
    ["minItems without items", { type: "array", minItems: 2 }, "schema.minItems", { type: "array", items: {}, minItems: 2 }],
    ["a keyword beside anyOf", { type: "string", maxLength: 3, anyOf: [{ type: "string" }, { type: "null" }] }, "schema.maxLength", { anyOf: [{ type: "string", maxLength: 3 }, { type: "null" }] }],
  ];

  it.for(families)("%s: strict is a 400 naming the keyword's path; strict false is accepted; the enforced variant passes", async ([, schema, at, enforced]) => {
    const refused = await chat(schema, true);
    expect(refused.status).toBe(400);
    expect(refused.body.error).toMatchObject({ param: "response_format" });
    expect(refused.body.error!.message).toContain(`response_format.json_schema.${at.startsWith("schema") ? at : `schema.${at}`}:`);
    expect(refused.body.error!.message).toMatch(/not enforced/);
    expect((await chat(schema, false)).status).toBe(200);
    const ok = await chat(enforced, true);
    expect(ok.status, JSON.stringify(ok.body.error)).toBe(200);
  });

  it("the same on text.format, and on a strict tool's parameters (param tools[i].function.parameters); zod's own schemas pass", async () => {
    const numberBound = { type: "object", properties: { w: { type: "number", maximum: 9 } }, required: ["w"], additionalProperties: false };
    const responses = await post("/v1/responses", { model: "flock-demo", input: "x", max_output_tokens: 1, text: { format: { type: "json_schema", name: "x", schema: numberBound, strict: true } } });
    expect(responses.status).toBe(400);
    expect(responses.body.error).toMatchObject({ param: "text.format" });
    expect(responses.body.error!.message).toContain("text.format.schema.properties.w.maximum");
    const tool = (strict: boolean) => ({ type: "function", function: { name: "weigh", parameters: numberBound, strict } });
    const tools = await post("/v1/chat/completions", { model: "flock-demo", messages: [{ role: "user", content: "x" }], max_tokens: 1, tools: [zodFunction({ name: "ok", parameters: Boat }), tool(true)] });
    expect(tools.status).toBe(400);
    expect(tools.body.error).toMatchObject({ param: "tools[1].function.parameters" });
    expect(tools.body.error!.message).toContain("tools[1].function.parameters.properties.w.maximum");
    const responsesTool = await post("/v1/responses", { model: "flock-demo", input: "x", max_output_tokens: 1, tools: [{ type: "function", name: "weigh", parameters: numberBound, strict: true }] });
    expect(responsesTool.status).toBe(400);
    expect(responsesTool.body.error!.message).toContain("tools[0].function.parameters.properties.w.maximum");
    expect((await post("/v1/chat/completions", { model: "flock-demo", messages: [{ role: "user", content: "x" }], max_tokens: 1, tools: [tool(false)] })).status).toBe(200);
    // The helpers' strict schemas (bounded integers, lengths, enums, nullable, arrays) are all enforced.
    const Everything = Boat.extend({ note: z.string().max(5).nullable(), id: z.uuid(), tags: z.array(z.string().max(3)).min(1).max(2), either: z.union([z.int().min(0).max(3), z.literal("none")]) });
    expect((await chat(zodResponseFormat(Everything, "e").json_schema.schema, true)).status).toBe(200);
  });
});

describe("patterns: spelled in the regular expressions the converter translates", () => {
  it("zod's date, ipv4 and regex strings with \\d, \\w, \\s and . are held to their patterns (strict); email and date-time are accepted", async () => {
    const Codes = z.object({
      day: z.iso.date(),
      ip: z.ipv4(),
      code: z.string().regex(/^\w{2}\s\d{3}$/),
      any: z.string().regex(/^.{2,5}$/),
      plain: z.string().regex(/^[^@]{1,4}$/),
    });
    let stopped = 0;
    for (const seed of [1, 2, 3, 4, 5, 6]) {
      const res = await t.client.chat.completions.create({ model: "flock-demo", messages: [{ role: "user", content: "Codes." }], response_format: zodResponseFormat(Codes, "codes"), seed, max_tokens: 300 });
      const choice = res.choices[0];
      if (choice.finish_reason !== "stop") continue;
      stopped++;
      // Parses as JSON (no raw quote or control character from . or [^@]) and validates.
      Codes.parse(JSON.parse(choice.message.content!));
    }
    expect(stopped).toBeGreaterThan(3);
    for (const schema of [z.object({ e: z.email() }), z.object({ at: z.iso.datetime() })]) {
      const res = await post("/v1/chat/completions", { model: "flock-demo", messages: [{ role: "user", content: "x" }], max_tokens: 1, response_format: zodResponseFormat(schema, "x") });
      expect(res.status, JSON.stringify(res.body.error)).toBe(200);
    }
  });
});

describe("tool_choice required, streamed through the SDK", () => {
  const Weather = z.object({ city: z.string().max(10), unit: z.enum(["c", "f"]) });
  const Time = z.object({ zone: z.string().max(6) });
  const tools = [zodFunction({ name: "get_weather", parameters: Weather }), zodFunction({ name: "get_time", parameters: Time })];

  it("the SDK's stream helper sees the call's id and name, then argument deltas, and its final completion parses and equals the unstreamed call", async () => {
    for (const seed of [11, 12, 13]) {
      const request = { model: "flock-demo", messages: [{ role: "user" as const, content: "Weather or time?" }], tools, tool_choice: "required" as const, seed, max_tokens: 200 };
      const whole = await t.client.chat.completions.create(request);
      const stream = t.client.chat.completions.stream(request);
      const deltas: string[] = [];
      stream.on("tool_calls.function.arguments.delta", (e) => deltas.push(e.arguments_delta));
      let first: unknown;
      for await (const chunk of stream) first ??= chunk.choices[0]?.delta?.tool_calls?.[0];
      const final = await stream.finalChatCompletion();
      expect(first).toMatchObject({ index: 0, id: expect.stringMatching(/^call_/), type: "function", function: { name: expect.stringMatching(/^get_(weather|time)$/), arguments: "" } });
      const choice = final.choices[0];
      expect(choice.finish_reason).toBe("tool_calls");
      const [call] = choice.message.tool_calls ?? [];
      if (call?.type !== "function") throw new Error("not a function call");
      expect(deltas.length, "arguments stream in fragments").toBeGreaterThan(3);
      expect(deltas.join("")).toBe(call.function.arguments);
      const schema = call.function.name === "get_weather" ? Weather : Time;
      expect(schema.parse(call.function.parsed_arguments)).toEqual(JSON.parse(call.function.arguments));
      const unstreamed = whole.choices[0].message.tool_calls![0];
      expect(unstreamed.type === "function" && [unstreamed.function.name, unstreamed.function.arguments]).toEqual([call.function.name, call.function.arguments]);
    }
  });
});

describe("under logit fusion and routed experts", () => {
  let m: TestServer;
  beforeAll(async () => {
    const manifest = t.manifest;
    const domains = manifest.domains.map((d) => d.name);
    m = await startTestServer({
      models: [
        {
          id: "fused",
          path: forgedPath(manifest.models["flock-demo"].file),
          parallel: 2,
          fusion: { base: forgedPath(manifest.models["flock-weak"].file), experts: domains.map((d) => ({ name: d, lora: forgedPath(manifest.adapters[`flock-weak-${d}`].file) })) },
        },
        {
          id: "routing",
          path: forgedPath(manifest.models["flock-routing-base"].file),
          parallel: 2,
          experts: {
            library: Object.values(manifest.adapters)
              .filter((a) => a.base === "flock-routing-base")
              .map((a) => ({ name: a.domain!, lora: forgedPath(a.file), scale: 1, gates: forgedPath(a.gates!) })),
          },
        },
      ],
    });
  });
  afterAll(() => m?.close());

  type Extension = {
    flock?: {
      fusion?: { steps: number; tokens?: Array<{ expert: string | null; alpha: number }> };
      routing?: { mode: string; method: string; tokens?: Array<{ experts: Array<{ expert: string; weight: number }> } | null> };
    };
  };
  /** The extension proves the path: a fusion step, or a routing decision, for every generated token. */
  function expectPath(model: string, res: Extension & { usage?: { completion_tokens: number } | null }) {
    const tokens = res.usage!.completion_tokens;
    expect(tokens).toBeGreaterThan(5);
    if (model === "fused") {
      expect(res.flock!.fusion!.steps).toBe(tokens);
      expect(res.flock!.fusion!.tokens).toHaveLength(tokens);
    } else {
      expect(res.flock!.routing).toMatchObject({ mode: "routed", method: "phatgoose" });
      expect(res.flock!.routing!.tokens).toHaveLength(tokens);
      for (const r of res.flock!.routing!.tokens!) expect(r!.experts.length).toBeGreaterThan(0);
    }
  }
  const detail = (model: string) => ({ flock: model === "fused" ? { fusion: { detail: true } } : { routing: { detail: true } } });

  it.for(["fused", "routing+phatgoose"])("%s: zod response_format output parses and validates, every seed", async (model) => {
    for (const seed of [1, 2, 3, 4]) {
      const res = (await m.client.chat.completions.create({
        model,
        messages: [{ role: "user", content: "Describe a boat as JSON." }],
        response_format: zodResponseFormat(Boat, "boat"),
        temperature: 1,
        seed,
        max_tokens: 200,
        ...detail(model),
      } as never)) as unknown as OpenAIChat & Extension;
      const choice = res.choices[0];
      expect(choice.finish_reason, `${model} seed ${seed}: ${choice.message.content}`).toBe("stop");
      Boat.parse(JSON.parse(choice.message.content!));
      expectPath(model, res);
    }
  });

  it.for(["fused", "routing+phatgoose"])("%s: tool_choice required makes a declared call whose arguments validate, every seed", async (model) => {
    const Weather = z.object({ city: z.string().max(10), unit: z.enum(["c", "f"]) });
    const Time = z.object({ zone: z.string().max(6) });
    for (const seed of [1, 2, 3]) {
      const res = (await m.client.chat.completions.create({
        model,
        messages: [{ role: "user", content: "What is the weather in Paris?" }],
        tools: [zodFunction({ name: "get_weather", parameters: Weather }), zodFunction({ name: "get_time", parameters: Time })],
        tool_choice: "required",
        seed,
        max_tokens: 200,
        ...detail(model),
      } as never)) as unknown as OpenAIChat & Extension;
      const choice = res.choices[0];
      expect(choice.finish_reason).toBe("tool_calls");
      const call = choice.message.tool_calls![0] as { function: { name: string; arguments: string } };
      (call.function.name === "get_weather" ? Weather : Time).parse(JSON.parse(call.function.arguments));
      expect(["get_weather", "get_time"]).toContain(call.function.name);
      expectPath(model, res);
    }
  });
});

describe("tool history through more template families (golden prompts)", () => {
  // The families test/tool-calls.test.ts renders (ChatML, Llama 3.1, Qwen, Mistral, Functionary), and
  // these: a GGUF's own Jinja template (Qwen 2.5's, with tools), Llama 3.2 lightweight, Llama 3
  // and DeepSeek, each of which node-llama-cpp's resolveChatWrapper can pick for a model.
  const messages = WEATHER_HISTORY;
  const definitions = WEATHER_DEFINITIONS;

  it("renders the call, its arguments and its result in each family's syntax, in order; a broken pairing is a 400 naming the element", async () => {
    const { Engine } = await import("../engine/engine.js");
    const { ModelEntry } = await import("../pipelines/model-entry.js");
    const engine = await Engine.create({ gpu: "off", threads: 1 });
    const model = await engine.load(ModelEntry.parse({ id: "golden", path: forgedPath("flock-demo.gguf"), contextSize: 2048, parallel: 1 }));
    const qwenTemplate = readFileSync(join(import.meta.dirname, "fixtures", "chat-templates", "qwen2.5-template.jinja"), "utf8");
    const today = new Date("2026-12-06T12:00:00Z");
    const families: Array<[string, ChatWrapper, RegExp]> = [
      ["jinja-qwen2.5", new JinjaTemplateChatWrapper({ template: qwenTemplate, tokenizer: model.weights.tokenizer }), /<tool_call>\s*\{"name": "get_weather", "arguments": \{"city": ?"Paris", ?"unit": ?"c"\}\}\s*<\/tool_call>[\s\S]*<tool_response>\s*\{"temperature": ?21\}\s*<\/tool_response>/],
      ["llama-3.2-lightweight", new Llama3_2LightweightChatWrapper({ todayDate: today }), /\{"name": "get_weather", "parameters": \{"city": "Paris", "unit": "c"\}\}[\s\S]*ipython<\|end_header_id\|>\s*\{"temperature": 21\}/],
      ["llama-3", new Llama3ChatWrapper(), /\|\|call: get_weather\(\{"city": "Paris", "unit": "c"\}\)<\|eot_id\|><\|start_header_id\|>function_call_result<\|end_header_id\|>\s*\{"temperature": 21\}/],
      ["deepseek", new DeepSeekChatWrapper(), /<function=get_weather>\{"city": "Paris", "unit": "c"\}<\/function><｜tool output begin｜>\{"temperature": 21\}<｜tool output end｜>/],
    ];
    for (const [family, wrapper, call] of families) {
      const template = new ChatTemplate("golden", model.weights, wrapper);
      const rendered = template.render(messages, undefined, definitions);
      const text = model.weights.detokenize(rendered.tokens as Token[], true);
      // The function is documented before the conversation, and the history keeps call and result.
      expect(text.indexOf("The weather in a city"), family).toBeGreaterThanOrEqual(0);
      expect(text.indexOf("The weather in a city"), family).toBeLessThan(text.indexOf("What is the weather in Paris?"));
      expect(text, family).toMatch(call);
      expect(text.indexOf("temperature"), family).toBeGreaterThan(text.indexOf("What is the weather in Paris?"));
      expect(text.indexOf("temperature"), family).toBeLessThan(text.indexOf("It is 21 °C."));
      expect(text.indexOf("It is 21 °C."), family).toBeLessThan(text.indexOf("And the time?"));
      // Without the call, the prompt is shorter: nothing of it was dropped.
      const plain = template.render(messages.filter((m) => m.role !== "tool" && !(m.role === "assistant" && m.toolCalls)), undefined, definitions);
      expect(rendered.tokens.length, family).toBeGreaterThan(plain.tokens.length + 10);
      await expect(text).toMatchFileSnapshot(`fixtures/chat-templates/${family}-tools.txt`);
      // The call in the history is written as flock constrains and parses new calls for this family.
      const syntax = rendered.toolSyntax;
      const written = `${syntax.prefix}get_weather${syntax.paramsPrefix.replaceAll("{{functionName}}", "get_weather")}`;
      expect(syntax.prefix.trim().length, family).toBeGreaterThan(0);
      expect(text, `${family}: ${JSON.stringify(syntax)}`).toContain(written.trim());
      const parsed = parseToolCalls(`${written}{"city": "Rome", "unit": "f"}${syntax.suffix.replaceAll("{{functionName}}", "get_weather")}`, syntax, definitions);
      expect(parsed.calls.map((c) => [c.name, JSON.parse(c.arguments)]), family).toEqual([["get_weather", { city: "Rome", unit: "f" }]]);
      // A history the template cannot pair is refused with the element's path.
      const unanswered = () => template.render(messages.slice(0, 3), undefined, definitions);
      expect(unanswered, family).toThrow(FlockError);
      expect(unanswered, family).toThrow(/^messages\[2\]\.tool_calls\[0\]: /);
    }
    await engine[Symbol.asyncDispose]();
  });
});

type OpenAIChat = { choices: Array<{ finish_reason: string; message: { content: string | null; tool_calls?: unknown[] } }>; usage?: { completion_tokens: number } | null };
