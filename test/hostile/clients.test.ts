// What one client that misbehaves on purpose can do to everyone else (issue: hardening): a
// stream it never reads, routing configurations invented per request, a huge logit_bias, a
// near-zero routing temperature, a cross-origin "simple" POST. Each test fails on a server that
// does not defend against it.
import { connect } from "node:net";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { inject } from "vitest";
import type { Manifest } from "../../forge/manifest.js";
import { readManifest } from "../../forge/manifest.js";
import { LoadedModel } from "../../engine/model.js";
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

  it("a logit_bias beyond 1,024 entries, or naming a token outside the vocabulary, is a 400 at once", async () => {
    const huge = Object.fromEntries(Array.from({ length: 50_000 }, (_, i) => [String(i), -1]));
    const started = performance.now();
    const res = await post("/v1/completions", { model: "flock-demo", prompt: "The", max_tokens: 256, logit_bias: huge });
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error: { message: string; param: string } }).error.message).toMatch(/at most 1024 entries/);
    expect(performance.now() - started).toBeLessThan(2_000);
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
    try {
      const text = "the cook ties the rope ".repeat(200_000); // 4.6 MB
      const completion = await post("/v1/completions", { model: "flock-demo", prompt: text, max_tokens: 1 });
      expect(completion.status).toBe(400);
      expect(((await completion.json()) as { error: { code: string; param: string } }).error).toMatchObject({ code: "context_length_exceeded", param: "prompt" });
      const chat = await post("/v1/chat/completions", { model: "flock-demo", messages: [{ role: "user", content: text }], max_tokens: 1 });
      expect(chat.status).toBe(400);
      expect(((await chat.json()) as { error: { code: string; param: string } }).error).toMatchObject({ code: "context_length_exceeded", param: "messages" });
      expect(tokenize).not.toHaveBeenCalled();
      expect(render).not.toHaveBeenCalled();
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
});
