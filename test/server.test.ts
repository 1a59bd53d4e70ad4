// The OpenAI API end to end: a real server on an ephemeral port, the official openai client,
// forged GGUF files whose next-token distributions are known exactly, real node-llama-cpp.
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ChainOracle } from "./helpers/chain.js";
import { goodnessOfFit } from "./helpers/goodness.js";
import { startTestServer, type TestServer } from "./helpers/server.js";

let t: TestServer;
let base: ChainOracle;
let kitchen: ChainOracle;

beforeAll(async () => {
  t = await startTestServer();
  base = new ChainOracle(t.manifest, "base");
  kitchen = new ChainOracle(t.manifest, "kitchen");
});
afterAll(() => t?.close());

const textOf = (oracle: ChainOracle, tokens: number[]) => tokens.filter((x) => x !== oracle.eos).map((x) => oracle.text(x)).join("");

/** The greedy answer to any chat: the template ends in "\n", which the chain treats as a text start. */
const greedyChat = (oracle: ChainOracle, max: number) => oracle.greedyPath(t.manifest.vocab.bos, max);

async function post(path: string, body: unknown, headers: Record<string, string> = { "content-type": "application/json" }) {
  const res = await fetch(`${t.url}${path}`, { method: "POST", headers, body: typeof body === "string" ? body : JSON.stringify(body) });
  return { status: res.status, body: (await res.json()) as { error?: { message: string; type: string; param: string | null; code: string | null } } };
}

describe("models", () => {
  it("lists the configured model ids and describes one", async () => {
    const list = await t.client.models.list();
    expect(list.data.map((m) => m.id)).toEqual(["flock-demo", "kitchen", "small", "spec"]);
    const one = await t.client.models.retrieve("kitchen");
    expect(one).toMatchObject({ id: "kitchen", object: "model", owned_by: "flock" });
  });

  it("answers 404 model_not_found for an unknown id", async () => {
    await expect(t.client.models.retrieve("nope")).rejects.toMatchObject({ status: 404, code: "model_not_found" });
  });
});

describe("chat completions", () => {
  it("greedy output follows the forged chain's argmax path, non-streamed", async () => {
    const res = await t.client.chat.completions.create({
      model: "flock-demo",
      messages: [{ role: "user", content: "Tell me about boats." }],
      temperature: 0,
      max_tokens: 30,
    });
    const path = greedyChat(base, 30);
    expect(res.choices[0].message.content).toBe(textOf(base, path));
    expect(res.choices[0].finish_reason).toBe(path.at(-1) === base.eos ? "stop" : "length");
    expect(res.usage?.completion_tokens).toBe(path.length);
    expect(res.object).toBe("chat.completion");
    expect(res.id).toMatch(/^chatcmpl-/);
  });

  it("streams the same answer, announcing the role first and usage last", async () => {
    const stream = await t.client.chat.completions.create({
      model: "flock-demo",
      messages: [{ role: "system", content: "Be brief." }, { role: "user", content: "Hello" }],
      temperature: 0,
      max_tokens: 30,
      stream: true,
      stream_options: { include_usage: true },
    });
    const chunks: OpenAI.ChatCompletionChunk[] = [];
    for await (const chunk of stream) chunks.push(chunk);
    const path = greedyChat(base, 30);
    expect(chunks[0].choices[0].delta.role).toBe("assistant");
    expect(chunks.map((c) => c.choices[0]?.delta.content ?? "").join("")).toBe(textOf(base, path));
    const finish = chunks.filter((c) => c.choices[0]?.finish_reason);
    expect(finish).toHaveLength(1);
    const last = chunks.at(-1)!;
    expect(last.choices).toEqual([]);
    expect(last.usage?.completion_tokens).toBe(path.length);
    expect(last.usage?.total_tokens).toBe(last.usage!.prompt_tokens + path.length);
    expect(chunks.every((c) => c.object === "chat.completion.chunk" && c.id === chunks[0].id)).toBe(true);
  });

  it("a LoRA-adapted model id follows its expert's chain", async () => {
    const res = await t.client.chat.completions.create({ model: "kitchen", messages: [{ role: "user", content: "Cook!" }], temperature: 0, max_tokens: 25 });
    expect(res.choices[0].message.content).toBe(textOf(kitchen, greedyChat(kitchen, 25)));
  });

  it("reports logprobs equal to the analytic log-probabilities, with the analytic top alternatives", async () => {
    const res = await t.client.chat.completions.create({
      model: "flock-demo",
      messages: [{ role: "user", content: "Go on" }],
      temperature: 0,
      max_tokens: 12,
      logprobs: true,
      top_logprobs: 3,
    });
    const path = greedyChat(base, 12).filter((x) => x !== base.eos);
    const content = res.choices[0].logprobs!.content!;
    expect(content.map((c) => c.token)).toEqual(path.map((x) => base.text(x)));
    let prev = t.manifest.vocab.bos;
    for (const [i, entry] of content.entries()) {
      const p = base.next(prev);
      expect(entry.logprob).toBeCloseTo(Math.log(p[path[i]]), 4);
      expect(entry.bytes).toEqual([...Buffer.from(entry.token)]);
      const expectedTop = [...p.keys()].sort((a, b) => p[b] - p[a] || a - b).slice(0, 3);
      expect(entry.top_logprobs.map((x) => x.token)).toEqual(expectedTop.map((x) => base.text(x)));
      // OpenAI's convention for a token the model rules out entirely: -9999.
      entry.top_logprobs.forEach((x, j) => expect(x.logprob).toBeCloseTo(p[expectedTop[j]] > 0 ? Math.log(p[expectedTop[j]]) : -9999, 4));
      prev = path[i];
    }
  });

  it("returns n choices, each numbered", async () => {
    const res = await t.client.chat.completions.create({
      model: "flock-demo",
      messages: [{ role: "user", content: "x" }],
      n: 3,
      max_tokens: 5,
      seed: 7,
      logit_bias: { [String(t.manifest.vocab.eos)]: -100 },
    });
    expect(res.choices.map((c) => c.index)).toEqual([0, 1, 2]);
    expect(res.choices.every((c) => c.finish_reason === "length")).toBe(true);
    expect(res.usage?.completion_tokens).toBe(15);
  });

  it("accepts text content parts and the developer role", async () => {
    const res = await t.client.chat.completions.create({
      model: "flock-demo",
      messages: [
        { role: "developer", content: "Answer." },
        { role: "user", content: [{ type: "text", text: "Part one, " }, { type: "text", text: "part two." }] },
      ],
      max_tokens: 3,
    });
    expect(res.choices[0].message.role).toBe("assistant");
  });
});

describe("speculative decoding through the API", () => {
  type WithExtension = { flock?: { speculative: { rounds: number; drafted_tokens: number; accepted_tokens: number; acceptance_rate: number; mean_candidate_length: number } } };

  it("greedy output equals the plain model's, and the response reports drafted and accepted tokens", async () => {
    const ask = (model: string) => t.client.chat.completions.create({ model, messages: [{ role: "user", content: "Boats?" }], temperature: 0, max_tokens: 30 });
    const [spec, plainRes] = await Promise.all([ask("spec"), ask("flock-demo")]);
    expect(spec.choices[0].message.content).toBe(plainRes.choices[0].message.content);
    const ext = (spec as unknown as WithExtension).flock!.speculative;
    expect(ext.rounds).toBeGreaterThan(0);
    expect(ext.accepted_tokens).toBeLessThanOrEqual(ext.drafted_tokens);
    // Each round emits its accepted tokens and one more, unless EOS or max_tokens ends it early.
    expect(spec.usage!.completion_tokens).toBeLessThanOrEqual(ext.rounds + ext.accepted_tokens);
    expect(spec.usage!.completion_tokens).toBeGreaterThan(ext.rounds + ext.accepted_tokens - 20);
    expect(ext.mean_candidate_length).toBeCloseTo(ext.drafted_tokens / ext.rounds, 10);
    expect((plainRes as unknown as WithExtension).flock).toBeUndefined();
  });

  it("streams report the choice's speculative counters on its final chunk; per-request settings apply", async () => {
    const stream = await t.client.completions.create({
      model: "spec",
      prompt: "The cook",
      max_tokens: 24,
      stream: true,
      logit_bias: { [String(t.manifest.vocab.eos)]: -100 },
      flock: { speculative: { policy: "fixed", k: 2 } },
    } as OpenAI.CompletionCreateParamsStreaming);
    let last: WithExtension | undefined;
    for await (const chunk of stream) if (chunk.choices[0]?.finish_reason) last = chunk as unknown as WithExtension;
    const ext = last!.flock!.speculative;
    expect(ext.drafted_tokens).toBeLessThanOrEqual(2 * ext.rounds);
    expect(ext.mean_candidate_length).toBeLessThanOrEqual(2);
  });

  it("flock.speculative.detail: every token's origin and round, in the response, per chunk when streaming, per choice with n > 1", async () => {
    type Token = { origin: string; round: number; drafted: number; draft_probability?: number; acceptance_probability?: number; rejected?: { text: string; acceptance_probability: number } };
    type Detailed = { flock: { speculative: NonNullable<WithExtension["flock"]>["speculative"] & { tokens?: Token[]; choices?: Array<{ tokens: Token[] }> } } };
    const body = {
      model: "spec",
      messages: [{ role: "user", content: "Boats?" }],
      max_tokens: 40,
      seed: 4,
      logit_bias: { [String(t.manifest.vocab.eos)]: -100 },
      flock: { speculative: { policy: "fixed", k: 4, detail: true } },
    };
    const res = (await t.client.chat.completions.create(body as OpenAI.ChatCompletionCreateParamsNonStreaming)) as unknown as OpenAI.ChatCompletion & Detailed;
    const ext = res.flock.speculative;
    const tokens = ext.tokens!;
    expect(tokens).toHaveLength(res.usage!.completion_tokens);
    const rounds = [...new Set(tokens.map((d) => d.round))];
    expect(rounds).toEqual(Array.from({ length: ext.rounds }, (_, i) => i));
    const drafted = rounds.map((r) => tokens.find((d) => d.round === r)!.drafted);
    expect(drafted.reduce((a, b) => a + b, 0)).toBe(ext.drafted_tokens);
    // max_tokens may cut the last round after accepted tokens that are then not emitted.
    expect(tokens.filter((d) => d.origin === "accepted").length).toBeLessThanOrEqual(ext.accepted_tokens);
    for (const d of tokens) {
      if (d.origin === "accepted") expect(d.acceptance_probability).toBeGreaterThan(0);
      if (d.origin === "recovered") expect(typeof d.rejected!.text).toBe("string");
    }
    expect(tokens.some((d) => d.origin === "recovered")).toBe(true);

    const stream = await t.client.chat.completions.create({ ...body, stream: true } as OpenAI.ChatCompletionCreateParamsStreaming);
    const perChunk: Token[] = [];
    let final: Token[] | undefined;
    for await (const chunk of stream) {
      const detail = (chunk as unknown as Detailed).flock?.speculative?.tokens;
      if (chunk.choices[0]?.finish_reason) final = detail;
      else perChunk.push(...(detail ?? []));
    }
    expect(perChunk).toEqual(final);
    expect(final).toEqual(tokens); // same seed, fixed k: the same rounds

    const two = (await t.client.chat.completions.create({ ...body, n: 2 } as OpenAI.ChatCompletionCreateParamsNonStreaming)) as unknown as OpenAI.ChatCompletion & Detailed;
    expect(two.flock.speculative.tokens).toBeUndefined();
    expect(two.flock.speculative.choices!.map((c) => c.tokens.length)).toEqual([40, 40]);
    const plain = (await t.client.chat.completions.create({ ...body, flock: { speculative: { policy: "fixed", k: 4 } } } as OpenAI.ChatCompletionCreateParamsNonStreaming)) as unknown as Detailed;
    expect(plain.flock.speculative.tokens).toBeUndefined();
  });

  it("enabled: false serves the target alone; speculative settings on a model without a draft are a 400", async () => {
    const off = await t.client.completions.create({ model: "spec", prompt: "The cook", max_tokens: 5, flock: { speculative: { enabled: false } } } as OpenAI.CompletionCreateParamsNonStreaming);
    expect((off as unknown as WithExtension).flock).toBeUndefined();
    const res = await post("/v1/completions", { model: "flock-demo", prompt: "x", flock: { speculative: { k: 2 } } });
    expect(res).toMatchObject({ status: 400, body: { error: { param: "flock.speculative", code: "unsupported_parameter" } } });
    const bad = await post("/v1/completions", { model: "spec", prompt: "x", flock: { speculative: { policy: "magic" } } });
    expect(bad).toMatchObject({ status: 400, body: { error: { param: "flock.speculative.policy" } } });
  });
});

describe("completions", () => {
  it("greedy output follows the argmax path after the prompt's last token, streamed and not", async () => {
    const prompt = "The sailor ties the";
    const last = base.promptTokens(prompt).at(-1)!;
    const path = base.greedyPath(last, 20);
    const res = await t.client.completions.create({ model: "flock-demo", prompt, temperature: 0, max_tokens: 20 });
    expect(res.choices[0].text).toBe(textOf(base, path));
    expect(res.usage?.prompt_tokens).toBe(1 + base.promptTokens(prompt).length); // BOS + words

    const stream = await t.client.completions.create({ model: "flock-demo", prompt, temperature: 0, max_tokens: 20, stream: true });
    let text = "";
    let finish: string | null = null;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.text ?? "";
      finish = chunk.choices[0]?.finish_reason ?? finish;
    }
    expect(text).toBe(textOf(base, path));
    expect(finish).toBe(path.at(-1) === base.eos ? "stop" : "length");
  });

  it("max_tokens ends with finish_reason length after exactly that many tokens", async () => {
    // A state whose greedy path is long: forbid EOS so the chain cannot end early.
    const res = await t.client.completions.create({
      model: "flock-demo",
      prompt: "The cook",
      max_tokens: 7,
      logit_bias: { [String(base.eos)]: -100 },
    });
    expect(res.choices[0].finish_reason).toBe("length");
    expect(res.usage?.completion_tokens).toBe(7);
  });

  it("stop sequences end the text before the match, also across token boundaries, and are never emitted", async () => {
    // The word whose greedy continuation is longest, so the stop lands mid-text.
    const words = base.manifest.states.names.filter((piece) => /^\u2581[a-z]+$/.test(piece)).map((piece) => piece.replace("\u2581", " "));
    const lastWord = words.reduce((best, w) => (base.greedyPath(base.tokenOf(w), 30).length > base.greedyPath(base.tokenOf(best), 30).length ? w : best));
    const prompt = `The${lastWord}`;
    const full = textOf(base, base.greedyPath(base.tokenOf(lastWord), 30));
    // A stop that starts inside one token and ends inside the next.
    const spoken = full.split(" ").filter(Boolean);
    const stop = `${spoken[1].slice(1)} ${spoken[2].slice(0, 2)}`;
    const expected = full.slice(0, full.indexOf(stop));
    const res = await t.client.completions.create({ model: "flock-demo", prompt, temperature: 0, max_tokens: 30, stop: [stop, "zzz"] });
    expect(res.choices[0].text).toBe(expected);
    expect(res.choices[0].finish_reason).toBe("stop");

    const stream = await t.client.completions.create({ model: "flock-demo", prompt, temperature: 0, max_tokens: 30, stop, stream: true });
    let text = "";
    for await (const chunk of stream) text += chunk.choices[0]?.text ?? "";
    expect(text).toBe(expected);
  });

  it("logprobs (legacy format) match the analytic distribution", async () => {
    const prompt = "A captain";
    const res = await t.client.completions.create({ model: "flock-demo", prompt, temperature: 0, max_tokens: 6, logprobs: 2 });
    const lp = res.choices[0].logprobs!;
    let prev = base.promptTokens(prompt).at(-1)!;
    let offset = 0;
    lp.tokens!.forEach((tokenText, i) => {
      const token = base.tokenOf(tokenText);
      const p = base.next(prev);
      expect(lp.token_logprobs![i]).toBeCloseTo(Math.log(p[token]), 4);
      const top = Object.entries(lp.top_logprobs![i]);
      expect(top).toHaveLength(2);
      for (const [alt, value] of top) expect(value).toBeCloseTo(Math.log(p[base.tokenOf(alt)]), 4);
      expect(lp.text_offset![i]).toBe(offset);
      offset += tokenText.length;
      prev = token;
    });
  });

  it("a batch of prompts gives n choices per prompt, numbered prompt-major", async () => {
    const res = await t.client.completions.create({ model: "flock-demo", prompt: ["The cook", "A pilot"], n: 2, max_tokens: 3, temperature: 0 });
    expect(res.choices.map((c) => c.index)).toEqual([0, 1, 2, 3]);
    expect(res.choices[0].text).toBe(res.choices[1].text);
    expect(res.choices[2].text).toBe(textOf(base, base.greedyPath(base.tokenOf(" pilot"), 3)));
  });

  it("accepts token-id prompts and echo", async () => {
    const tokens = [t.manifest.vocab.bos, ...base.promptTokens("The baker")];
    const res = await t.client.completions.create({ model: "flock-demo", prompt: tokens, temperature: 0, max_tokens: 4, echo: true });
    expect(res.choices[0].text).toBe(`The baker${textOf(base, base.greedyPath(tokens.at(-1)!, 4))}`);
  });
});

describe("sampling", () => {
  /** Collects first tokens after a prompt: `requests` requests of n=8 with consecutive seeds. */
  async function sampleNext(prompt: string, requests: number, params: Partial<OpenAI.CompletionCreateParamsNonStreaming> & Record<string, unknown>) {
    const counts = new Map<number, number>();
    for (let i = 0; i < requests; i++) {
      const res = await t.client.completions.create({ model: "flock-demo", prompt, max_tokens: 1, n: 8, seed: 1000 + i * 8, ...params });
      for (const choice of res.choices) {
        const token = choice.finish_reason === "stop" && choice.text === "" ? base.eos : base.tokenOf(choice.text);
        counts.set(token, (counts.get(token) ?? 0) + 1);
      }
    }
    return counts;
  }

  it("token frequencies at temperature 1 match the analytic distribution (chi-square)", async () => {
    const prompt = "The sailor ties the";
    const counts = await sampleNext(prompt, 250, { temperature: 1 });
    const p = base.next(base.promptTokens(prompt).at(-1)!);
    const fit = goodnessOfFit(counts, p);
    expect(fit.pValue).toBeGreaterThan(1e-4);
    expect(fit.outsideSupport).toBe(0);
  });

  it("frequencies with temperature, top_k and top_p match the truncated distribution", async () => {
    const prompt = "She heats";
    const temperature = 0.8;
    const topP = 0.6;
    const topK = 4;
    const counts = await sampleNext(prompt, 200, { temperature, top_p: topP, flock: { top_k: topK } });
    // Independent computation: p^(1/T), keep the top-k and renormalise, then the nucleus.
    const p = base.next(base.promptTokens(prompt).at(-1)!);
    const scaled = [...p].map((x) => x ** (1 / temperature));
    const topKMass = [...scaled].sort((a, b) => b - a).slice(0, topK).reduce((a, b) => a + b, 0);
    const order = scaled.map((x, i) => [x / topKMass, i] as const).filter(([x]) => x > 0).sort((a, b) => b[0] - a[0]).slice(0, topK);
    const kept: Array<readonly [number, number]> = [];
    let mass = 0;
    for (const entry of order) {
      kept.push(entry);
      mass += entry[0];
      if (mass >= topP) break;
    }
    const expected = new Float64Array(p.length);
    for (const [x, i] of kept) expected[i] = x / mass;
    const fit = goodnessOfFit(counts, expected);
    expect(kept.length).toBeGreaterThan(1);
    expect(fit.outsideSupport).toBe(0);
    expect(fit.pValue).toBeGreaterThan(1e-4);
  });

  it("the same seed reproduces the same text; different seeds give different texts", async () => {
    const ask = (seed: number) => t.client.chat.completions.create({ model: "flock-demo", messages: [{ role: "user", content: "Story?" }], seed, max_tokens: 40 });
    const a = await ask(42);
    const b = await ask(42);
    expect(b.choices[0].message.content).toBe(a.choices[0].message.content);
    const others = await Promise.all([1, 2, 3, 4].map(ask));
    const distinct = new Set([a, ...others].map((r) => r.choices[0].message.content));
    expect(distinct.size).toBeGreaterThan(1);
  });
});

describe("errors", () => {
  const chat = { model: "flock-demo", messages: [{ role: "user", content: "hi" }] };

  it.each([
    [{ ...chat, temperature: 3 }, "temperature"],
    [{ ...chat, top_p: 0 }, "top_p"],
    [{ ...chat, n: 0 }, "n"],
    [{ ...chat, max_tokens: -1 }, "max_tokens"],
    [{ ...chat, messages: [] }, "messages"],
    [{ ...chat, messages: [{ role: "wizard", content: "x" }] }, "messages[0].role"],
    [{ ...chat, logit_bias: { abc: 1 } }, "logit_bias.abc"],
    [{ ...chat, stop: ["a", 3] }, "stop"],
    [{ ...chat, tools: [{ type: "function", function: { name: "not a name" } }] }, "tools[0].function.name"],
    [{ ...chat, messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: "x" } }] }] }, "messages[0].content[0]"],
    [{ messages: chat.messages }, "model"],
  ])("400 names the offending parameter (%#: %s)", async (body, param) => {
    const res = await post("/v1/chat/completions", body);
    expect(res.status).toBe(400);
    expect(res.body.error).toMatchObject({ type: "invalid_request_error", param });
    expect(res.body.error!.message.length).toBeGreaterThan(10);
  });

  it("400 for a body that is not JSON or not an object", async () => {
    for (const body of ["{not json", "[1,2]", "42"]) {
      const res = await post("/v1/completions", body);
      expect(res.status).toBe(400);
      expect(res.body.error?.type).toBe("invalid_request_error");
    }
  });

  it("400 for token ids outside the vocabulary and n beyond the limit", async () => {
    const bad = await post("/v1/completions", { model: "flock-demo", prompt: [1, 999999] });
    expect(bad).toMatchObject({ status: 400, body: { error: { param: "prompt" } } });
    const many = await post("/v1/completions", { model: "flock-demo", prompt: "x", n: 9 });
    expect(many).toMatchObject({ status: 400, body: { error: { param: "n" } } });
  });

  it("404 model_not_found for an unknown model, through the SDK", async () => {
    await expect(t.client.chat.completions.create({ model: "gpt-5", messages: [{ role: "user", content: "x" }] })).rejects.toMatchObject({
      status: 404,
      code: "model_not_found",
      param: "model",
    });
  });

  it("400 context_length_exceeded states the prompt's token count and the limit", async () => {
    const words = `The${" cook the".repeat(400)}`;
    const res = await post("/v1/completions", { model: "small", prompt: words });
    expect(res.status).toBe(400);
    expect(res.body.error).toMatchObject({ code: "context_length_exceeded", param: "prompt" });
    const expectedPromptTokens = 1 + 1 + 800; // BOS, "The", 400 × (" cook", " the")
    expect(res.body.error!.message).toContain(`${expectedPromptTokens} in the prompt`);
    expect(res.body.error!.message).toMatch(/maximum context length is \d+ tokens/);

    const tooLong = await post("/v1/chat/completions", { model: "small", messages: [{ role: "user", content: "hi" }], max_tokens: 100_000 });
    expect(tooLong.body.error).toMatchObject({ code: "context_length_exceeded", param: "messages" });
  });

  it("404 in OpenAI's shape for an unknown route", async () => {
    const res = await fetch(`${t.url}/v1/nothing-here`);
    expect(res.status).toBe(404);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe("unknown_url");
  });

  it("keeps serving after bad requests", async () => {
    await post("/v1/chat/completions", "garbage");
    const res = await t.client.chat.completions.create({ model: "flock-demo", messages: [{ role: "user", content: "x" }], max_tokens: 2 });
    expect(res.choices).toHaveLength(1);
  });
});

describe("limits", () => {
  let small: TestServer;
  beforeAll(async () => {
    small = await startTestServer({ limits: { maxBodyBytes: 4096, maxN: 2, maxTokens: 8 } });
  });
  afterAll(() => small?.close());

  it("413 for an oversized body", async () => {
    const res = await fetch(`${small.url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: "flock-demo", prompt: "x".repeat(10_000) }),
    });
    expect(res.status).toBe(413);
    expect(((await res.json()) as { error: { type: string } }).error.type).toBe("invalid_request_error");
  });

  it("caps n and max_tokens as configured", async () => {
    await expect(small.client.completions.create({ model: "flock-demo", prompt: "x", n: 3 })).rejects.toMatchObject({ status: 400, param: "n" });
    await expect(small.client.completions.create({ model: "flock-demo", prompt: "x", max_tokens: 9 })).rejects.toMatchObject({ status: 400, param: "max_tokens" });
    const res = await small.client.chat.completions.create({ model: "flock-demo", messages: [{ role: "user", content: "x" }], logit_bias: { [String(t.manifest.vocab.eos)]: -100 } });
    expect(res.usage?.completion_tokens).toBe(8);
  });
});
