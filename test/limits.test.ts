// Admission, limits and timeouts on a real server: the bounded queue (429 + Retry-After, for
// streams before any byte of the stream), keep-alive comments while a stream waits, every
// request limit answered in OpenAI's shape, and the request timeout.
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { inject } from "vitest";
import { readManifest } from "../forge/manifest.js";
import { readSSE, scrape, sseEvents, until, valueOf } from "./helpers/ops.js";
import { forgedPath, startTestServer, type TestServer } from "./helpers/server.js";

const manifest = readManifest(inject("forgeDir"));
const demo = forgedPath(manifest.models["flock-demo"].file);
const EOS = manifest.vocab.eos;
/** Generation runs to max_tokens: the end-of-text token is suppressed. */
const endless = { logit_bias: { [String(EOS)]: -100 } };

type ErrorBody = { error: { message: string; type: string; param: string | null; code: string | null } };

let t: TestServer;
beforeAll(async () => {
  t = await startTestServer({
    models: [
      { id: "one", path: demo, parallel: 1, maxQueue: 1, contextSize: 1024 },
      { id: "flock-demo", path: demo, parallel: 2 },
    ],
    limits: { maxN: 3, maxTokens: 2000, maxBodyBytes: 4096, maxPromptTokens: 50, retryAfter: 7 },
    keepAlive: 0.05,
  });
});
afterAll(() => t?.close());

/** A raw streaming completion (fetch), cancellable. */
function rawStream(model: string, maxTokens: number, controller = new AbortController()) {
  const response = fetch(`${t.url}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model, prompt: "The captain", max_tokens: maxTokens, stream: true, ...endless }),
    signal: controller.signal,
  });
  return { response, controller };
}

const gauge = async (name: string, model: string) => valueOf(await scrape(t.url), name, { model_name: model });

describe("the bounded queue", () => {
  it("runs parallel requests, queues maxQueue more, refuses the rest with 429 and Retry-After; the waiting stream gets keep-alives", async () => {
    const before = await scrape(t.url);
    // A holds the only sequence; B waits in the only queue place.
    const a = rawStream("one", 1000);
    const aRes = await a.response;
    expect(aRes.status).toBe(200);
    await readSSE(aRes, (text) => text.includes("data: {"));
    const b = rawStream("one", 5);
    const bRes = await b.response;
    expect(bRes.status).toBe(200);
    expect(await until(async () => (await gauge("flock_num_requests_waiting", "one")) === 1, 5_000)).toBe(true);
    expect(await gauge("flock_num_requests_running", "one")).toBe(1);

    // C: full. Streaming or not, the answer is a 429 before any stream starts.
    const c = await fetch(`${t.url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: "one", prompt: "The cook", max_tokens: 5, stream: true }),
    });
    expect(c.status).toBe(429);
    expect(c.headers.get("retry-after")).toBe("7");
    expect(c.headers.get("content-type")).toMatch(/application\/json/);
    const body = (await c.json()) as ErrorBody;
    expect(body.error).toMatchObject({ type: "rate_limit_error", code: "overloaded", param: null });
    expect(body.error.message).toContain("one");
    const viaClient = t.client.chat.completions.create({ model: "one", messages: [{ role: "user", content: "hi" }], max_tokens: 5 });
    await expect(viaClient).rejects.toBeInstanceOf(OpenAI.RateLimitError);
    await expect(viaClient).rejects.toMatchObject({ status: 429, code: "overloaded" });
    // Another model is unaffected.
    expect((await t.client.completions.create({ model: "flock-demo", prompt: "The cook", max_tokens: 3 })).choices).toHaveLength(1);

    // While B waits it hears only keep-alive comments (every 50 ms here).
    const waiting = await readSSE(bRes, (text) => (text.match(/: keep-alive\n\n/g)?.length ?? 0) >= 2, 5_000);
    expect(waiting).toMatch(/^(: keep-alive\n\n)+$/);

    // A goes away: B gets the sequence and completes.
    const waitStarted = performance.now();
    a.controller.abort();
    const rest = await readSSE(bRes, (text) => text.includes("data: [DONE]"), 10_000);
    expect(rest).toContain("data: [DONE]");
    const chunks = sseEvents(rest) as Array<{ choices: Array<{ text: string; finish_reason: string | null }> }>;
    expect(chunks.at(-1)!.choices[0].finish_reason).toBe("length");
    expect(performance.now() - waitStarted).toBeLessThan(5_000);

    const after = await scrape(t.url);
    const delta = (name: string, labels: Record<string, string>) => valueOf(after, name, labels) - valueOf(before, name, labels);
    expect(delta("flock_requests_total", { route: "/v1/completions", model_name: "one", status: "429" })).toBe(1);
    expect(delta("flock_requests_total", { route: "/v1/chat/completions", model_name: "one", status: "429" })).toBe(1);
    // B's wait is in the queue-time histogram (A's was 0).
    expect(delta("flock_request_queue_time_seconds_count", { model_name: "one" })).toBe(2);
    expect(delta("flock_request_queue_time_seconds_sum", { model_name: "one" })).toBeGreaterThan(0.05);
    expect(await until(async () => (await gauge("flock_num_requests_running", "one")) === 0, 2_000)).toBe(true);
    expect(await gauge("flock_num_requests_waiting", "one")).toBe(0);
  });

  it("the official client reads a stream interleaved with keep-alive comments", async () => {
    const a = rawStream("one", 1000);
    await readSSE(await a.response, (text) => text.includes("data: {"));
    const queued = t.client.completions.create({ model: "one", prompt: "The gull", max_tokens: 6, temperature: 0, stream: true });
    const stream = await queued; // headers arrive at once; the body waits for the sequence
    setTimeout(() => a.controller.abort(), 200); // ~4 keep-alives first
    let text = "";
    let finish: string | null = null;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.text ?? "";
      finish = chunk.choices[0]?.finish_reason ?? finish;
    }
    const plain = await t.client.completions.create({ model: "one", prompt: "The gull", max_tokens: 6, temperature: 0 });
    expect(text).toBe(plain.choices[0].text);
    expect(finish).toBe(plain.choices[0].finish_reason);
  });

  it("a request needing more sequences than the model can ever run or queue is a 400 naming n", async () => {
    // "one" holds 1 sequence + 1 queue place; n = 3 is within limits.maxN.
    const res = await fetch(`${t.url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: "one", prompt: "The cook", max_tokens: 2, n: 3 }),
    });
    expect(res.status).toBe(400);
    expect(((await res.json()) as ErrorBody).error).toMatchObject({ type: "invalid_request_error", param: "n" });
  });
});

describe("request limits", () => {
  const post = async (path: string, body: unknown) => {
    const res = await fetch(`${t.url}${path}`, { method: "POST", headers: { "content-type": "application/json" }, body: typeof body === "string" ? body : JSON.stringify(body) });
    return { status: res.status, body: (await res.json()) as ErrorBody };
  };
  const word = manifest.vocab.tokens.indexOf(manifest.states.names[1]);

  it("max prompt tokens: exactly the limit passes, one more is a 400 naming the prompt or the messages", async () => {
    const prompt = (n: number) => [manifest.vocab.bos, ...Array.from({ length: n - 1 }, () => word)];
    const ok = await t.client.completions.create({ model: "flock-demo", prompt: prompt(50), max_tokens: 1 });
    expect(ok.usage?.prompt_tokens).toBe(50);
    const over = await post("/v1/completions", { model: "flock-demo", prompt: prompt(51), max_tokens: 1 });
    expect(over.status).toBe(400);
    expect(over.body.error).toMatchObject({ type: "invalid_request_error", code: "context_length_exceeded", param: "prompt" });
    expect(over.body.error.message).toContain("at most 50 prompt tokens");
    expect(over.body.error.message).toContain("51");
    // Batched prompts: each prompt is checked.
    const batch = await post("/v1/completions", { model: "flock-demo", prompt: [prompt(3), prompt(51)], max_tokens: 1 });
    expect(batch.status).toBe(400);
    const chat = await post("/v1/chat/completions", { model: "flock-demo", messages: [{ role: "user", content: "the cook ".repeat(40) }], max_tokens: 1 });
    expect(chat.status).toBe(400);
    expect(chat.body.error).toMatchObject({ code: "context_length_exceeded", param: "messages" });
    await expect(t.client.chat.completions.create({ model: "flock-demo", messages: [{ role: "user", content: "the cook ".repeat(40) }] })).rejects.toBeInstanceOf(OpenAI.BadRequestError);
  });

  it("max_tokens cap, n cap and body size", async () => {
    const tokens = await post("/v1/completions", { model: "flock-demo", prompt: "The", max_tokens: 2001 });
    expect(tokens.status).toBe(400);
    expect(tokens.body.error).toMatchObject({ type: "invalid_request_error", param: "max_tokens" });
    const completion = await post("/v1/chat/completions", { model: "flock-demo", messages: [{ role: "user", content: "hi" }], max_completion_tokens: 2001 });
    expect(completion.body.error).toMatchObject({ param: "max_completion_tokens" });
    const n = await post("/v1/completions", { model: "flock-demo", prompt: "The", max_tokens: 1, n: 4 });
    expect(n.status).toBe(400);
    expect(n.body.error).toMatchObject({ type: "invalid_request_error", param: "n" });
    const big = await post("/v1/completions", { model: "flock-demo", prompt: "x".repeat(5000), max_tokens: 1 });
    expect(big.status).toBe(413);
    expect(big.body.error).toMatchObject({ type: "invalid_request_error", code: "request_too_large" });
  });
});

describe("the request timeout", () => {
  let slow: TestServer;
  beforeAll(async () => {
    slow = await startTestServer({
      models: [{ id: "one", path: demo, parallel: 1, contextSize: 2048 }],
      limits: { requestTimeout: 0.4 },
    });
  });
  afterAll(() => slow?.close());

  it("cancels a non-streamed generation with a 408, a stream with a final error event, a queued request too, and frees the sequence", async () => {
    const before = await scrape(slow.url);
    const body = (stream: boolean) => ({ model: "one", prompt: "The captain", max_tokens: 2000, stream, ...endless });
    const post = (stream: boolean) => fetch(`${slow.url}/v1/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body(stream)) });

    const started = performance.now();
    const [streamed, queued] = [post(true), post(false)]; // the second waits for the only sequence
    const res = await streamed;
    expect(res.status).toBe(200);
    const text = await readSSE(res, () => false, 10_000);
    const elapsed = performance.now() - started;
    const events = sseEvents(text) as Array<{ choices?: Array<{ text: string }>; error?: ErrorBody["error"] }>;
    expect(events.length).toBeGreaterThan(1);
    expect(events.at(-1)!.error).toMatchObject({ type: "timeout_error", code: "request_timeout" });
    expect(text).not.toContain("[DONE]");
    expect(elapsed).toBeGreaterThan(350);
    expect(elapsed).toBeLessThan(3_000);

    const late = await queued;
    expect(late.status).toBe(408);
    expect(((await late.json()) as ErrorBody).error).toMatchObject({ type: "timeout_error", code: "request_timeout" });

    const client = new OpenAI({ baseURL: `${slow.url}/v1`, apiKey: "x", maxRetries: 0 });
    await expect(client.completions.create(body(false) as OpenAI.CompletionCreateParamsNonStreaming)).rejects.toMatchObject({ status: 408 });

    const after = await scrape(slow.url);
    expect(valueOf(after, "flock_request_finished_total", { model_name: "one", reason: "timeout" }) - valueOf(before, "flock_request_finished_total", { model_name: "one", reason: "timeout" })).toBe(3);
    expect(await until(async () => valueOf(await scrape(slow.url), "flock_num_requests_running", { model_name: "one" }) === 0, 2_000)).toBe(true);
    // The sequence serves again.
    const ok = await client.completions.create({ model: "one", prompt: "The cook", max_tokens: 3 });
    expect(ok.choices[0].finish_reason).not.toBeNull();
  });
});
