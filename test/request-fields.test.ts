// Request fields from other servers' clients (issue: drop-in): the table in request-fields.ts
// decides each field's fate, and a real server on the forged models honours, ignores or refuses
// each as the table says. Sampling fields are checked against the chain's exact argmax path.
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CHATML_TEMPLATE } from "../forge/vocab.js";
import { compiledLogit } from "../forge/compile.js";
import { type Endpoint, fieldRules, IGNORED_FIELDS_HEADER, IgnoredFieldLog, REQUEST_FIELDS, renderFieldTable } from "../server/request-fields.js";
import { EmbeddingsRequest } from "../server/routes/embeddings.js";
import { ChatCompletionRequest, CompletionRequest, ResponsesRequest } from "../server/schemas.js";
import { ChainOracle } from "./helpers/chain.js";
import { startTestServer, type TestServer } from "./helpers/server.js";

let t: TestServer;
let base: ChainOracle;
/** Request bodies as LiteLLM, Open WebUI and LangChain send them. */
const FIXTURES = join(import.meta.dirname, "fixtures", "clients");

/**
 * The demo model with another chat template of the same byte length (so no offset in the file
 * moves): ChatML with the template variable `opening` printed before the conversation.
 */
function templatedCopy(source: string, target: string): void {
  const bytes = readFileSync(source);
  const old = Buffer.from(CHATML_TEMPLATE);
  const template =
    "{% if opening %}{{opening}}{% endif %}{% for m in messages %}<|im_start|>{{m.role}}\n{{m.content}}<|im_end|>\n{% endfor %}" +
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
  const padded = Buffer.from(`${template}{#${"-".repeat(old.length - Buffer.byteLength(template) - 4)}#}`);
  expect(padded.length).toBe(old.length);
  const at = bytes.indexOf(old);
  expect(at).toBeGreaterThan(0);
  padded.copy(bytes, at);
  writeFileSync(target, bytes);
}

beforeAll(async () => {
  const { inject } = await import("vitest");
  const forgeDir = inject("forgeDir");
  const { readManifest } = await import("../forge/manifest.js");
  const manifest = readManifest(forgeDir);
  const demo = join(forgeDir, manifest.models["flock-demo"].file);
  const templated = join(forgeDir, "state", "templated-demo.gguf");
  const { mkdirSync } = await import("node:fs");
  mkdirSync(join(forgeDir, "state"), { recursive: true });
  templatedCopy(demo, templated);
  t = await startTestServer({
    models: [
      { id: "flock-demo", path: demo, parallel: 2 },
      { id: "templated", path: templated, parallel: 1 },
      { id: "spec", path: demo, parallel: 1, speculative: { draft: join(forgeDir, manifest.models["flock-demo-draft"].file) } },
    ],
  });
  base = new ChainOracle(t.manifest, "base");
});
afterAll(() => t?.close());

async function post(path: string, body: unknown) {
  const res = await fetch(`${t.url}${path}`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  return { status: res.status, headers: res.headers, body: (await res.json()) as Record<string, any> };
}

/**
 * The greedy path after `prompt` under llama.cpp's repetition penalty, from the chain's exact
 * logits, `bias` added first (as logit_bias is).
 */
function penalisedGreedy(prompt: readonly number[], max: number, penalty: number, lastN: number, bias: ReadonlyMap<number, number>): number[] {
  const seen = [...prompt];
  const out: number[] = [];
  while (out.length < max) {
    const p = base.next(seen.at(-1)!);
    const window = new Set(lastN < 0 ? seen : seen.slice(-lastN));
    let best = -1;
    let bestLogit = -Infinity;
    for (let token = 0; token < p.length; token++) {
      let logit = compiledLogit(p[token]) + (bias.get(token) ?? 0);
      if (window.has(token)) logit = logit > 0 ? logit / penalty : logit * penalty;
      if (logit > bestLogit) [best, bestLogit] = [token, logit];
    }
    out.push(best);
    seen.push(best);
    if (best === base.eos) break;
  }
  return out;
}

const textOf = (tokens: number[]) => tokens.filter((x) => x !== base.eos).map((x) => base.text(x)).join("");

describe("the field table", () => {
  it("names each field once per endpoint, and the docs print it as it is", () => {
    const seen = new Set<string>();
    for (const rule of REQUEST_FIELDS) {
      for (const endpoint of rule.endpoints) {
        expect(seen.has(`${endpoint}:${rule.name}`), rule.name).toBe(false);
        seen.add(`${endpoint}:${rule.name}`);
      }
    }
    expect(readFileSync(join(import.meta.dirname, "..", "docs", "api.md"), "utf8")).toContain(renderFieldTable());
  });

  it("governs the schemas: each endpoint validates exactly its honoured and refused fields, never an ignored one", () => {
    const schemas: Record<Endpoint, { shape: Record<string, unknown> }> = {
      chat: ChatCompletionRequest,
      completions: CompletionRequest,
      responses: ResponsesRequest,
      embeddings: EmbeddingsRequest,
    };
    for (const [endpoint, schema] of Object.entries(schemas) as Array<[Endpoint, { shape: Record<string, unknown> }]>) {
      const rules = [...fieldRules(endpoint).values()];
      const validated = rules.filter((r) => r.fate !== "ignored").map((r) => r.name);
      expect(Object.keys(schema.shape).sort(), endpoint).toEqual(validated.sort());
      // Ignored fields are dropped unvalidated: any value passes.
      for (const rule of rules.filter((r) => r.fate === "ignored")) expect(Object.keys(schema.shape), `${endpoint}: ${rule.name}`).not.toContain(rule.name);
    }
    // Responses answers with usage in its final event: stream_options of any shape is ignored there.
    const responses = ResponsesRequest.safeParse({ model: "m", input: "hi", stream_options: { include_usage: "yes" } });
    expect(responses.success && !("stream_options" in responses.data)).toBe(true);
    expect(ChatCompletionRequest.safeParse({ model: "m", messages: [{ role: "user", content: "hi" }], stream_options: { include_usage: "yes" } }).success).toBe(false);
  });

  it("logs an ignored field once per client", () => {
    const log = new IgnoredFieldLog(4);
    expect(log.firstTime("a", ["x", "y"])).toEqual(["x", "y"]);
    expect(log.firstTime("a", ["x", "z"])).toEqual(["z"]);
    expect(log.firstTime("b", ["x"])).toEqual(["x"]);
    // Bounded: past its size it starts over.
    expect(log.firstTime("c", ["x", "y"])).toEqual(["x", "y"]);
    expect(log.firstTime("a", ["x"])).toEqual(["x"]);
  });
});

describe("ignored fields", () => {
  const ignored = (endpoint: "chat" | "completions" | "responses") => REQUEST_FIELDS.filter((r) => r.fate === "ignored" && r.endpoints.includes(endpoint)).map((r) => r.name);
  const sample: Record<string, unknown> = {
    user: "u-1",
    safety_identifier: "s-1",
    metadata: { app: "webui" },
    store: false,
    service_tier: "auto",
    prompt_cache_key: "k",
    prompt_cache_retention: "24h",
    cache_prompt: true,
    reasoning_effort: "low",
    verbosity: "low",
    parallel_tool_calls: false,
  };

  it("a chat through the SDK carrying every ignored field and an unknown one: the same answer, the fields listed in a header", async () => {
    const names = ignored("chat");
    expect(names.every((n) => n in sample)).toBe(true);
    const params = { model: "flock-demo", messages: [{ role: "user" as const, content: "Tell me about boats." }], temperature: 0, max_tokens: 12 };
    const plain = await t.client.chat.completions.create(params);
    const extra = Object.fromEntries(names.map((n) => [n, sample[n]]));
    const { data, response } = await t.client.chat.completions
      .create({ ...params, ...extra, frobnicate: { deep: [1, 2] } } as OpenAI.ChatCompletionCreateParamsNonStreaming)
      .withResponse();
    expect(data.choices[0].message.content).toBe(plain.choices[0].message.content);
    expect(response.headers.get(IGNORED_FIELDS_HEADER)!.split(", ").sort()).toEqual([...names, "frobnicate"].sort());
    // A body with nothing to ignore gets no header.
    const clean = await t.client.chat.completions.create(params).withResponse();
    expect(clean.response.headers.get(IGNORED_FIELDS_HEADER)).toBeNull();
  });

  it.each(readdirSync(FIXTURES).filter((f) => f.endsWith(".json")))("recorded client body %s: served, its extra fields listed", async (file) => {
    const fixture = JSON.parse(readFileSync(join(FIXTURES, file), "utf8")) as { endpoint: string; body: Record<string, unknown>; ignored: string[] };
    const res = await fetch(`${t.url}${fixture.endpoint}`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(fixture.body) });
    const text = await res.text();
    expect(res.status, text).toBe(200);
    expect(res.headers.get(IGNORED_FIELDS_HEADER)!.split(", ").sort()).toEqual([...fixture.ignored].sort());
    if (fixture.body.stream) expect(text).toContain("data: [DONE]");
  });
});

describe("honoured top-level sampling fields", () => {
  it("top_k 1 and min_p 1 leave only the argmax: every seed gives the greedy text", async () => {
    const greedy = await t.client.completions.create({ model: "flock-demo", prompt: "The", max_tokens: 16, temperature: 0 });
    for (const [field, value] of [["top_k", 1], ["min_p", 1]] as const) {
      for (const seed of [1, 2, 3]) {
        const res = await post("/v1/completions", { model: "flock-demo", prompt: "The", max_tokens: 16, temperature: 1, seed, [field]: value });
        expect(res.body.choices[0].text, `${field} seed ${seed}`).toBe(greedy.choices[0].text);
      }
    }
    // Without them, some seed leaves the greedy path (so the check above could fail).
    const free = await Promise.all([1, 2, 3].map((seed) => post("/v1/completions", { model: "flock-demo", prompt: "The", max_tokens: 16, temperature: 1, seed })));
    expect(free.some((r) => r.body.choices[0].text !== greedy.choices[0].text)).toBe(true);
  });

  it("repetition_penalty (and repeat_penalty, repeat_last_n) follow llama.cpp's formula on the exact logits, with or without a draft", async () => {
    // The end of text ruled out: 40 tokens of the chain's few words repeat within any window.
    const bias = new Map([[t.manifest.vocab.eos, -100], [t.manifest.vocab.imEnd, -100]]);
    const logit_bias = Object.fromEntries([...bias].map(([token, b]) => [String(token), b]));
    const ask = (model: string, extra: Record<string, unknown>) => post("/v1/completions", { model, prompt: "The", max_tokens: 40, temperature: 0, logit_bias, ...extra });
    const plain = await ask("flock-demo", {});
    const promptTokens = plain.body.usage.prompt_tokens as number;
    const prompt = promptTokens === 2 ? [t.manifest.vocab.bos, base.tokenOf("The")] : [base.tokenOf("The")];
    expect(prompt).toHaveLength(promptTokens);
    const unpenalised = textOf(penalisedGreedy(prompt, 40, 1, 64, bias));
    expect(plain.body.choices[0].text).toBe(unpenalised);
    for (const [penalty, lastN] of [[1.5, 64], [3, 8], [1.3, -1]] as const) {
      const expected = textOf(penalisedGreedy(prompt, 40, penalty, lastN, bias));
      expect(expected, "the penalty changes the greedy path").not.toBe(unpenalised);
      const named = await ask("flock-demo", { repetition_penalty: penalty, repeat_last_n: lastN });
      expect(named.body.choices[0].text, `penalty ${penalty}, last ${lastN}`).toBe(expected);
      const alias = await ask("flock-demo", { repeat_penalty: penalty, repeat_last_n: lastN });
      expect(alias.body.choices[0].text).toBe(expected);
      const drafted = await ask("spec", { repetition_penalty: penalty, repeat_last_n: lastN });
      expect(drafted.body.choices[0].text, "speculation keeps the penalty's window").toBe(expected);
    }
    const off = await ask("flock-demo", { repetition_penalty: 2, repeat_last_n: 0 });
    expect(off.body.choices[0].text).toBe(unpenalised);
  });
});

describe("refused fields", () => {
  const chat = { model: "flock-demo", messages: [{ role: "user", content: "hi" }] };
  const refusals: Array<[string, "chat" | "completions" | "responses", Record<string, unknown>]> = [
    ["functions", "chat", { functions: [{ name: "f" }] }],
    ["function_call", "chat", { function_call: { name: "f" } }],
    ["modalities", "chat", { modalities: ["text", "audio"] }],
    ["audio", "chat", { audio: { voice: "alloy", format: "wav" } }],
    ["web_search_options", "chat", { web_search_options: {} }],
    ["suffix", "completions", { suffix: "end" }],
    ["n", "responses", { n: 3 }],
    ["previous_response_id", "responses", { previous_response_id: "resp_1" }],
    ["conversation", "responses", { conversation: { id: "conv_1" } }],
    ["background", "responses", { background: true }],
    ["prompt", "responses", { prompt: { id: "pmpt_1" } }],
  ];

  it("the table's every refused field is refused here", () => {
    const tested = new Set(refusals.map(([name]) => name));
    expect(REQUEST_FIELDS.filter((r) => r.fate === "refused").map((r) => r.name).filter((n) => !tested.has(n))).toEqual([]);
  });

  it.each(refusals)("%s: 400 unsupported_parameter naming it", async (name, endpoint, extra) => {
    const res =
      endpoint === "chat"
        ? await post("/v1/chat/completions", { ...chat, ...extra })
        : endpoint === "responses"
          ? await post("/v1/responses", { model: "flock-demo", input: "x", ...extra })
          : await post("/v1/completions", { model: "flock-demo", prompt: "x", ...extra });
    expect(res.status).toBe(400);
    expect(res.body.error).toMatchObject({ type: "invalid_request_error", code: "unsupported_parameter" });
    expect(res.body.error.param.split(".")[0]).toBe(name);
  });

  it("accepts the harmless values of the same fields", async () => {
    const res = await post("/v1/chat/completions", {
      ...chat,
      max_tokens: 2,
      response_format: { type: "text" },
      tools: [],
      tool_choice: "none",
      functions: [],
      function_call: "auto",
      modalities: ["text"],
      audio: null,
    });
    expect(res.status).toBe(200);
  });

  it("history it cannot render is refused, never dropped: unanswered tool calls, stray tool results, images; n past the limit", async () => {
    const cases: Array<[unknown[], string, string | null]> = [
      [[{ role: "user", content: "hi" }, { role: "assistant", content: null, tool_calls: [{ id: "c1", type: "function", function: { name: "f", arguments: "{}" } }] }], "messages[1].tool_calls[0]", null],
      [[{ role: "user", content: "hi" }, { role: "assistant", content: null, tool_calls: [{ id: "c1", type: "function", function: { name: "f", arguments: "{}" } }, { id: "c2", type: "function", function: { name: "f", arguments: "{not json" } }] }, { role: "tool", tool_call_id: "c1", content: "1" }, { role: "tool", tool_call_id: "c2", content: "2" }], "messages[1].tool_calls[1].function.arguments", null],
      [[{ role: "user", content: "hi" }, { role: "tool", tool_call_id: "c1", content: "42" }], "messages[1]", null],
      [[{ role: "user", content: [{ type: "image_url", image_url: { url: "data:," } }] }], "messages[0].content[0]", "unsupported_parameter"],
      [[{ role: "user", content: [{ type: "text", text: "hear" }, { type: "input_audio", input_audio: { data: "UklGRg==", format: "wav" } }] }], "messages[0].content[1]", "unsupported_parameter"],
      [[{ role: "user", content: [{ type: "file", file: { file_data: "data:application/pdf;base64,JVBERg==", filename: "a.pdf" } }] }], "messages[0].content[0]", "unsupported_parameter"],
    ];
    for (const [messages, param, code] of cases) {
      const res = await post("/v1/chat/completions", { model: "flock-demo", messages });
      expect(res.status).toBe(400);
      expect(res.body.error).toMatchObject({ code, param });
      if (code) expect(res.body.error.message).toMatch(/content parts of type "(image_url|input_audio|file)" are not supported: the model accepts text only/);
    }
    // OpenAI's deprecated function-calling names are refused with a pointer to their tools forms.
    const legacy: Array<[object, string, RegExp]> = [
      [{ functions: [{ name: "f", parameters: {} }] }, "functions", /deprecated form of tools/],
      [{ function_call: { name: "f" } }, "function_call", /deprecated form of tool_choice/],
      [{ messages: [{ role: "user", content: "hi" }, { role: "assistant", content: null, function_call: { name: "f", arguments: "{}" } }] }, "messages[1].function_call", /deprecated form of tool_calls/],
      [{ messages: [{ role: "user", content: "hi" }, { role: "function", name: "f", content: "1" }] }, "messages[1].role", /deprecated form of role "tool"/],
    ];
    for (const [extra, param, message] of legacy) {
      const res = await post("/v1/chat/completions", { model: "flock-demo", messages: [{ role: "user", content: "hi" }], ...extra });
      expect(res.status).toBe(400);
      expect(res.body.error.param).toBe(param);
      expect(res.body.error.message).toMatch(message);
    }
    const many = await post("/v1/completions", { model: "flock-demo", prompt: "x", n: 99 });
    expect(many.body.error).toMatchObject({ code: "unsupported_parameter", param: "n" });
  });
});

describe("chat_template_kwargs", () => {
  it("reach the model's Jinja template: a variable the template prints is in the prompt", async () => {
    const messages = [{ role: "user", content: "Hello" }];
    const ask = (chat_template_kwargs?: Record<string, unknown>) => post("/v1/chat/completions", { model: "templated", messages, max_tokens: 1, temperature: 0, chat_template_kwargs });
    const without = await ask();
    expect(without.status).toBe(200);
    // " The" and " captain" are one token each in the forged language; BOS stays where it was.
    for (const [opening, tokens] of [[" The captain", 2], [" The", 1]] as const) {
      const withKwargs = await ask({ opening });
      expect(withKwargs.status).toBe(200);
      expect(withKwargs.body.usage.prompt_tokens, opening).toBe(without.body.usage.prompt_tokens + tokens);
    }
    // Empty kwargs render as without.
    const empty = await post("/v1/chat/completions", { model: "templated", messages, max_tokens: 1, temperature: 0, chat_template_kwargs: {} });
    expect(empty.body.usage.prompt_tokens).toBe(without.body.usage.prompt_tokens);
  });

  it("a wrong type is a 400 naming the field", async () => {
    const res = await post("/v1/chat/completions", { model: "templated", messages: [{ role: "user", content: "x" }], chat_template_kwargs: "enable_thinking" });
    expect(res.status).toBe(400);
    expect(res.body.error.param).toBe("chat_template_kwargs");
  });
});

describe("/tokenize and /detokenize", () => {
  it("llama-server's shapes: the prompt's tokens, pieces on request, and back to the text", async () => {
    const text = "The captain pulls a wet net";
    const plain = await post("/tokenize", { content: text });
    expect(plain.status).toBe(200);
    expect(plain.body.tokens).toEqual(base.promptTokens(text));
    expect(plain.body).toMatchObject({ count: plain.body.tokens.length, max_model_len: 4096 });
    // add_special puts BOS first; vLLM's names work too.
    const special = await post("/tokenize", { model: "flock-demo", prompt: text, add_special_tokens: true });
    expect(special.body.tokens).toEqual([t.manifest.vocab.bos, ...plain.body.tokens]);
    const pieces = await post("/tokenize", { content: text, with_pieces: true });
    expect(pieces.body.tokens.map((p: { piece: string }) => p.piece).join("")).toBe(text);
    expect(pieces.body.tokens.map((p: { id: number }) => p.id)).toEqual(plain.body.tokens);
    // Special-token text is that token unless parse_special is false.
    const imEnd = t.manifest.vocab.tokens[t.manifest.vocab.imEnd];
    expect((await post("/tokenize", { content: imEnd })).body.tokens).toEqual([t.manifest.vocab.imEnd]);
    expect((await post("/tokenize", { content: imEnd, parse_special: false })).body.tokens).not.toEqual([t.manifest.vocab.imEnd]);
    const back = await post("/detokenize", { tokens: plain.body.tokens });
    expect(back.body).toEqual({ content: text, prompt: text });
  });

  it("refuses unknown models, ids outside the vocabulary and bodies without text", async () => {
    expect((await post("/tokenize", { model: "nope", content: "x" })).body.error.code).toBe("model_not_found");
    expect((await post("/detokenize", { tokens: [1, 10_000_000] })).body.error).toMatchObject({ param: "tokens" });
    expect((await post("/tokenize", {})).body.error).toMatchObject({ param: "content" });
  });
});
