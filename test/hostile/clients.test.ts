// What one client that misbehaves on purpose can do to everyone else (issue: hardening): a
// stream it never reads, routing configurations invented per request, a huge logit_bias, a
// near-zero routing temperature, a cross-origin "simple" POST. Each test fails on a server that
// does not defend against it.
import { connect } from "node:net";
import { monitorEventLoopDelay } from "node:perf_hooks";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { inject } from "vitest";
import type { Manifest } from "../../forge/manifest.js";
import { readManifest } from "../../forge/manifest.js";
import { EmbeddingModel } from "../../engine/embedding.js";
import { LoadedModel } from "../../engine/model.js";
import { EngineSequence } from "../../engine/sequence.js";
import { forgedPath, startTestServer, type TestServer } from "../helpers/server.js";

let t: TestServer;
let manifest: Manifest;
const ADMIN = "admin-secret";

beforeAll(async () => {
  manifest = readManifest(inject("forgeDir"));
  const routing = Object.values(manifest.adapters).filter((a) => a.base === "flock-routing-base");
  t = await startTestServer({
    writeTimeout: 1,
    auth: { apiKeys: [], adminKey: ADMIN, healthRequiresKey: false, metricsRequiresKey: false },
    models: [
      { id: "flock-demo", path: forgedPath(manifest.models["flock-demo"].file), parallel: 8 },
      { id: "flock-embed", path: forgedPath(manifest.models["flock-embed"].file), embeddings: true },
      {
        id: "routing",
        path: forgedPath(manifest.models["flock-routing-base"].file),
        parallel: 1,
        experts: { library: routing.map((a) => ({ name: a.domain, lora: forgedPath(a.file), gates: forgedPath(a.gates!) })), methods: ["phatgoose"], maxContexts: 2 },
      },
    ],
  });
});
afterAll(() => t?.close());

const status = async () =>
  (await (await fetch(`${t.url}/admin/status`, { headers: { authorization: `Bearer ${ADMIN}` } })).json()) as {
    models: Array<{ id: string; running: number; contexts?: number }>;
    contexts: Array<{ id: string; ramBytes: number; vramBytes: number }>;
  };
const running = async (id: string) => (await status()).models.find((m) => m.id === id)!.running;
const post = (path: string, body: unknown, headers: Record<string, string> = { "content-type": "application/json" }) =>
  fetch(`${t.url}${path}`, { method: "POST", headers, body: typeof body === "string" ? body : JSON.stringify(body) });

describe("a client that misbehaves", () => {
  it("a stream it never reads frees its sequences soon after the write timeout", async () => {
    // Eight long choices whose end-of-text is ruled out, 20 alternatives per token: megabytes a
    // second, far more than the socket buffers hold.
    const body = JSON.stringify({
      model: "flock-demo",
      messages: [{ role: "user", content: "The" }],
      max_tokens: 3000,
      n: 8,
      stream: true,
      logprobs: true,
      top_logprobs: 20,
      logit_bias: { [manifest.vocab.eos]: -100, [manifest.vocab.imEnd]: -100 },
    });
    const url = new URL(t.url);
    const socket = connect(Number(url.port), url.hostname);
    await new Promise<void>((resolve) => socket.once("connect", () => resolve()));
    socket.write(`POST /v1/chat/completions HTTP/1.1\r\nHost: ${url.host}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
    socket.pause(); // read nothing: the kernel's buffers fill, then the server's writes block
    try {
      let busy = false;
      for (let i = 0; i < 100 && !busy; i++) {
        busy = (await running("flock-demo")) > 0;
        if (!busy) await new Promise((r) => setTimeout(r, 50));
      }
      expect(busy).toBe(true);
      // Generation fills the buffers within seconds, then 1 s of stalled writes ends the stream.
      const started = Date.now();
      while ((await running("flock-demo")) > 0 && Date.now() - started < 20_000) await new Promise((r) => setTimeout(r, 100));
      expect(await running("flock-demo")).toBe(0);
      const metrics = await (await fetch(`${t.url}/metrics`)).text();
      expect(metrics).toMatch(/flock_request_finished_total\{model_name="flock-demo",reason="stalled"\} [1-9]/);
    } finally {
      socket.destroy();
    }
    // Everyone else is served.
    const ok = await post("/v1/completions", { model: "flock-demo", prompt: "The", max_tokens: 4 });
    expect(ok.status).toBe(200);
  });

  it("routing temperatures that differ past two digits share one context; past maxContexts, new configurations wait or get a 429", async () => {
    for (const temperature of [1.01, 1.02, 1.03, 1.04]) {
      const res = await post("/v1/completions", { model: "routing+phatgoose", prompt: "The cook", max_tokens: 2, flock: { routing: { temperature } } });
      expect(res.status).toBe(200);
    }
    const routed = () => status().then((s) => s.models.find((m) => m.id === "routing+phatgoose")!.contexts!);
    expect(await routed()).toBe(1);
    // Configurations held busy at once: never more contexts than maxContexts.
    const subsets = [["kitchen"], ["garden"], ["harbor"], ["kitchen", "garden"]].filter((s) => s.every((d) => manifest.domains.some((x) => x.name === d)));
    const answers = await Promise.all(
      subsets.map((experts) => post("/v1/completions", { model: "routing+phatgoose", prompt: "The cook", max_tokens: 200, flock: { routing: { experts } } })),
    );
    expect(answers.map((a) => a.status).every((s) => s === 200 || s === 429)).toBe(true);
    const contexts = (await status()).contexts.filter((c) => c.id === "routing" || c.id.startsWith("routing:variant"));
    const live = contexts.length - 1;
    expect(live).toBeLessThanOrEqual(2 + 1); // the cached two, and the retrieval/base context at most
    // Each context's memory is accounted, and the metrics sum it per configured model.
    expect(contexts.every((c) => c.ramBytes + c.vramBytes > 0)).toBe(true);
    const metrics = await (await fetch(`${t.url}/metrics`)).text();
    const gauge = (name: string) => Number(metrics.match(new RegExp(`^${name.replace(/[{}]/g, "\\$&")} (\\S+)$`, "m"))?.[1]);
    expect(gauge('flock_contexts{model_name="routing"}')).toBe(contexts.length);
    const ram = contexts.reduce((sum, c) => sum + c.ramBytes, 0);
    expect(gauge('flock_context_memory_bytes{model_name="routing",memory="ram"}')).toBe(ram);
  });

  it("routed requests with many temperatures at once: never more than maxContexts (2) routed contexts live, and 429s past them", async () => {
    const variants = async () => (await status()).contexts.filter((c) => c.id.includes(":variant-")).length;
    let most = 0;
    let polling = true;
    const poller = (async () => {
      while (polling) {
        most = Math.max(most, await variants());
        await new Promise((r) => setTimeout(r, 10));
      }
    })();
    // Ten configurations, each held busy for a while, all asked for at once.
    const temperatures = [1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9, 2.0];
    const answers = await Promise.all(
      temperatures.map((temperature) => post("/v1/completions", { model: "routing+phatgoose", prompt: "The cook", max_tokens: 100, flock: { routing: { temperature } } })),
    );
    polling = false;
    await poller;
    most = Math.max(most, await variants());
    const statuses = answers.map((a) => a.status);
    expect(statuses.every((s) => s === 200 || s === 429)).toBe(true);
    expect(statuses.filter((s) => s === 429).length).toBeGreaterThanOrEqual(1);
    expect(statuses.filter((s) => s === 200).length).toBeGreaterThanOrEqual(1);
    const refused = answers.find((a) => a.status === 429)!;
    expect(((await refused.json()) as { error: { message: string } }).error.message).toMatch(/routing contexts of this model are in use/);
    expect(most).toBeGreaterThanOrEqual(1);
    expect(most).toBeLessThanOrEqual(2);
  });

  it("a logit_bias beyond 1,024 entries, or naming a token outside the vocabulary, is a 400 at once", async () => {
    // The 690k entries: 8.2 MB, just under the default 8 MiB body limit.
    const body = JSON.stringify({ model: "flock-demo", prompt: "The", max_tokens: 256, logit_bias: Object.fromEntries(Array.from({ length: 690_000 }, (_, i) => [String(i), -1])) });
    expect(Buffer.byteLength(body)).toBeLessThan(8 * 2 ** 20);
    // The server runs in this process: the longest event-loop stall while it answers is the cost
    // of refusing the map. Reading the body is unavoidable, so the bound is relative to a body of
    // the same size that is refused without looking at the map (an unknown field, and
    // max_tokens -1). Validating 690k entries before counting them added about 700 ms to that.
    const longestStall = async (text: string) => {
      const delay = monitorEventLoopDelay({ resolution: 10 });
      delay.enable();
      const res = await post("/v1/completions", text);
      delay.disable();
      return { res, ms: delay.max / 1e6 };
    };
    const baseline = await longestStall(body.replace('"max_tokens":256,"logit_bias"', '"max_tokens":-1,"unknown_map"'));
    expect(baseline.res.status).toBe(400);
    const { res, ms } = await longestStall(body);
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error: { message: string; param: string } }).error.message).toMatch(/at most 1024 entries/);
    expect(ms).toBeLessThan(1.5 * baseline.ms + 250);
    const outside = await post("/v1/completions", { model: "flock-demo", prompt: "The", max_tokens: 2, logit_bias: { "999999": 5 } });
    expect(outside.status).toBe(400);
    expect(((await outside.json()) as { error: { param: string } }).error.param).toBe("logit_bias");
  });

  it("a routing temperature of 1e-40 is a 400, not a 500", async () => {
    const res = await post("/v1/completions", { model: "routing+phatgoose", prompt: "The cook", max_tokens: 2, flock: { routing: { temperature: 1e-40 } } });
    expect(res.status).toBe(400);
  });

  it("a body refused before it is read still gets its answer, and the connection serves the next request", async () => {
    // 3 MB the server never parses: without reading it out, the Node adapter drops the
    // connection 500 ms after answering, and the client sees "other side closed" instead of a 415.
    for (let i = 0; i < 3; i++) {
      const refused = await post("/v1/completions", "x".repeat(3_000_000), { "content-type": "text/plain" });
      expect(refused.status).toBe(415);
      expect(((await refused.json()) as { error: { code: string } }).error.code).toBe("unsupported_media_type");
      const next = await post("/v1/completions", { model: "flock-demo", prompt: "The", max_tokens: 2 });
      expect(next.status).toBe(200);
    }
  });

  it("a prompt of megabytes is refused before it is tokenized, with a bound no real prompt crosses", async () => {
    const tokenize = vi.spyOn(LoadedModel.prototype, "tokenizePrompt");
    const render = vi.spyOn(LoadedModel.prototype, "renderChat");
    const embedTokenize = vi.spyOn(EmbeddingModel.prototype, "tokenize");
    try {
      const text = "the cook ties the rope ".repeat(200_000); // 4.6 MB
      const completion = await post("/v1/completions", { model: "flock-demo", prompt: text, max_tokens: 1 });
      expect(completion.status).toBe(400);
      expect(((await completion.json()) as { error: { code: string; param: string } }).error).toMatchObject({ code: "context_length_exceeded", param: "prompt" });
      const chat = await post("/v1/chat/completions", { model: "flock-demo", messages: [{ role: "user", content: text }], max_tokens: 1 });
      expect(chat.status).toBe(400);
      expect(((await chat.json()) as { error: { code: string; param: string } }).error).toMatchObject({ code: "context_length_exceeded", param: "messages" });
      // What the template renders besides message text: tool definitions, earlier calls' arguments.
      const tools = [{ type: "function", function: { name: "lookup", description: text, parameters: { type: "object", properties: {} } } }];
      const withTools = await post("/v1/chat/completions", { model: "flock-demo", messages: [{ role: "user", content: "hi" }], tools, max_tokens: 1 });
      expect(withTools.status).toBe(400);
      expect(((await withTools.json()) as { error: { code: string; param: string } }).error).toMatchObject({ code: "context_length_exceeded", param: "messages" });
      const call = { id: "call_1", type: "function", function: { name: "lookup", arguments: JSON.stringify({ q: text }) } };
      const withCall = await post("/v1/chat/completions", {
        model: "flock-demo",
        messages: [
          { role: "user", content: "hi" },
          { role: "assistant", content: null, tool_calls: [call] },
          { role: "tool", tool_call_id: "call_1", content: "ok" },
        ],
        max_tokens: 1,
      });
      expect(withCall.status).toBe(400);
      expect(((await withCall.json()) as { error: { code: string; param: string } }).error).toMatchObject({ code: "context_length_exceeded", param: "messages" });
      expect(tokenize).not.toHaveBeenCalled();
      expect(render).not.toHaveBeenCalled();
      // Embeddings: each text is one sequence of the embedding model's context.
      for (const input of [text, ["short", text]]) {
        const embedding = await post("/v1/embeddings", { model: "flock-embed", input });
        expect(embedding.status).toBe(400);
        expect(((await embedding.json()) as { error: { code: string; param: string } }).error).toMatchObject({ code: "context_length_exceeded", param: "input" });
      }
      expect(embedTokenize).not.toHaveBeenCalled();
      expect((await post("/v1/embeddings", { model: "flock-embed", input: ["the cook", "ties the rope"] })).status).toBe(200);
      // The bound is a lower bound: real text has at least bytes / maxTokenBytes tokens.
      const ok = await post("/v1/completions", { model: "flock-demo", prompt: "The cook", max_tokens: 1 });
      expect(ok.status).toBe(200);
      expect(tokenize).toHaveBeenCalled();
      const model = tokenize.mock.contexts[0] as LoadedModel;
      for (const sample of [text.slice(0, 5_000), "ü€𝄞 mixed scripts 漢字 and spaces   ", manifest.vocab.tokens.slice(0, 300).join("")]) {
        expect(model.tokenizePrompt(sample).length).toBeGreaterThanOrEqual(Buffer.byteLength(sample) / model.maxTokenBytes);
      }
    } finally {
      tokenize.mockRestore();
      render.mockRestore();
      embedTokenize.mockRestore();
    }
  });

  it("a cross-origin 'simple' POST (text/plain, no preflight) starts nothing: 415", async () => {
    const res = await post("/v1/completions", { model: "flock-demo", prompt: "The", max_tokens: 2 }, { "content-type": "text/plain;charset=UTF-8", origin: "https://evil.example" });
    expect(res.status).toBe(415);
    const body = (await res.json()) as { error: { code: string } };
    expect(body.error.code).toBe("unsupported_media_type");
    const form = await post("/v1/chat/completions", "model=flock-demo", { "content-type": "application/x-www-form-urlencoded" });
    expect(form.status).toBe(415);
  });

  it("retrieval reads the prompt's hidden states 32 positions at a time, and no logits", async () => {
    const evaluate = vi.spyOn(EngineSequence.prototype, "evaluateWithHidden");
    try {
      const prompt = "the cook ties the rope and the gardener waters the beds ".repeat(20);
      const res = await post("/v1/completions", { model: "routing+phatgoose", prompt, max_tokens: 2, flock: { routing: { mode: "retrieval" } } });
      expect(res.status).toBe(200);
      const { usage } = (await res.json()) as { usage: { prompt_tokens: number } };
      expect(usage.prompt_tokens).toBeGreaterThanOrEqual(150);
      const calls = evaluate.mock.calls.map(([tokens, , options], i) => ({ tokens: tokens.length, options, result: evaluate.mock.results[i] }));
      expect(calls.length).toBeGreaterThan(0);
      // Every prompt position once, in chunks of at most 32.
      expect(calls.reduce((n, call) => n + call.tokens, 0)).toBe(usage.prompt_tokens);
      expect(Math.max(...calls.map((call) => call.tokens))).toBeLessThanOrEqual(32);
      // Hidden states only: no vocabulary of logits copied out per position.
      for (const call of calls) {
        expect(call.options).toEqual({ logits: false });
        const { logits, hidden } = await (call.result.value as ReturnType<EngineSequence["evaluateWithHidden"]>);
        expect(logits).toHaveLength(0);
        expect(hidden).toHaveLength(call.tokens);
      }
    } finally {
      evaluate.mockRestore();
    }
  });
});
