// Structured logs: every line a request writes carries its request id (the x-request-id header's),
// mid-stream errors included; prompt and completion text appear only with logPrompts.
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { join } from "node:path";
import type { DecodeStep } from "../decoding/types.js";
import { readManifest } from "../forge/manifest.js";
import type { Pipeline, PipelineRegistry } from "../pipelines/pipeline.js";
import { createApp } from "../server/app.js";
import { ServerConfig, type ServerConfigInput } from "../server/config.js";
import { createLogger } from "../server/logger.js";
import { type FlockServer, startServer } from "../server/server.js";
import { readSSE, sseEvents } from "./helpers/ops.js";
import { forgedPath } from "./helpers/server.js";

const manifest = readManifest(inject("forgeDir"));
/** A word no log line may contain unless prompts are logged (byte-fallback tokens spell it). */
const SECRET = "zebraquartz";

interface Captured {
  server: FlockServer;
  lines: Array<Record<string, unknown>>;
}

async function capturedServer(overrides: Partial<ServerConfigInput>): Promise<Captured> {
  const lines: Array<Record<string, unknown>> = [];
  const log = createLogger("info", { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) });
  const config = ServerConfig.parse({
    port: 0,
    gpu: "off",
    threads: 1,
    cacheDir: join(inject("forgeDir"), "state"),
    models: [{ id: "one", path: forgedPath(manifest.models["flock-demo"].file), parallel: 1, contextSize: 2048 }],
    ...overrides,
  });
  const server = await startServer(config, log);
  await server.ready;
  return { server, lines };
}

const post = (url: string, path: string, body: unknown, requestId: string) =>
  fetch(`${url}${path}`, { method: "POST", headers: { "content-type": "application/json", "x-request-id": requestId }, body: JSON.stringify(body) });

describe("request logs", () => {
  let quiet: Captured;
  let verbose: Captured;
  beforeAll(async () => {
    quiet = await capturedServer({ limits: { requestTimeout: 0.3 } });
    verbose = await capturedServer({ logPrompts: true });
  });
  afterAll(async () => {
    await quiet?.server.close();
    await verbose?.server.close();
  });

  it("every line of a request has its id, the response echoes it, and no prompt text is logged by default", async () => {
    const res = await post(quiet.server.url, "/v1/chat/completions", { model: "one", messages: [{ role: "user", content: `Tell me about ${SECRET}.` }], max_tokens: 8, stream: true }, "req-chat-1");
    expect(res.headers.get("x-request-id")).toBe("req-chat-1");
    await readSSE(res, (text) => text.includes("[DONE]"));
    const ok = await post(quiet.server.url, "/v1/completions", { model: "one", prompt: `The ${SECRET}`, max_tokens: 4 }, "req-comp-1");
    expect(ok.status).toBe(200);
    const bad = await post(quiet.server.url, "/v1/completions", { model: "one", prompt: SECRET, max_tokens: 0 }, "req-bad-1");
    expect(bad.status).toBe(400);

    for (const id of ["req-chat-1", "req-comp-1"]) {
      const mine = quiet.lines.filter((l) => l.requestId === id);
      expect(mine.map((l) => l.msg).sort()).toEqual(["generation finished", "request"]);
      const finished = mine.find((l) => l.msg === "generation finished")!;
      expect(finished).toMatchObject({ model: "one", outcome: "ok", choices: 1 });
      expect(finished.completionTokens).toBeGreaterThan(0);
      expect(finished).not.toHaveProperty("prompts");
    }
    expect(quiet.lines.filter((l) => l.requestId === "req-bad-1").map((l) => l.msg)).toEqual(["request"]);
    // Lines without a request id are the server's own (startup), never a request's.
    for (const line of quiet.lines.filter((l) => l.requestId === undefined)) {
      expect(["request", "generation finished", "request failed", "generation failed mid-stream"]).not.toContain(line.msg);
    }
    expect(JSON.stringify(quiet.lines)).not.toContain(SECRET);
  });

  it("a generation cut short mid-stream logs under the request's id", async () => {
    const res = await post(
      quiet.server.url,
      "/v1/completions",
      { model: "one", prompt: "The captain", max_tokens: 1500, stream: true, logit_bias: { [String(manifest.vocab.eos)]: -100 } },
      "req-timeout-1",
    );
    const text = await readSSE(res);
    expect((sseEvents(text).at(-1) as { error?: { code: string } }).error?.code).toBe("request_timeout");
    const mine = quiet.lines.filter((l) => l.requestId === "req-timeout-1");
    expect(mine.find((l) => l.msg === "generation finished")).toMatchObject({ outcome: "timeout" });
    expect(mine.find((l) => l.msg === "request")).toMatchObject({ status: 200, path: "/v1/completions" });
  });

  it("with logPrompts, the summary line carries the prompt and the completion", async () => {
    const res = await post(verbose.server.url, "/v1/completions", { model: "one", prompt: `The ${SECRET}`, max_tokens: 4, temperature: 0 }, "req-verbose-1");
    const body = (await res.json()) as { choices: Array<{ text: string }> };
    const finished = verbose.lines.find((l) => l.requestId === "req-verbose-1" && l.msg === "generation finished")!;
    expect((finished.prompts as string[])[0]).toContain(SECRET);
    expect(finished.completions).toEqual([body.choices[0].text]);
  });
});

describe("warnings", () => {
  let s: Captured;
  beforeAll(async () => {
    // More context than the forged model was trained for.
    s = await capturedServer({ models: [{ id: "one", path: forgedPath(manifest.models["flock-demo"].file), parallel: 1, contextSize: 65_536 }] });
  });
  afterAll(async () => {
    await s?.server.close();
  });

  it("-c beyond the model's training context: capped, and the log says so naming the flag", () => {
    const loaded = s.lines.find((l) => l.msg === "model loaded" && l.model === "one")!;
    const capped = s.lines.filter((l) => l.level === 40 && l.model === "one" && String(l.msg).includes("larger than the model's training context"));
    expect(capped).toHaveLength(1);
    expect(capped[0]).toMatchObject({ contextSize: 65_536, trainContextSize: loaded.contextSize });
    expect(loaded.contextSize).toBeLessThan(65_536);
    expect(capped[0].msg).toContain("-c/--ctx-size");
  });

  it("names an ignored field once per client (User-Agent and key), and lists it in the header of every response", async () => {
    const chat = (userAgent: string, requestId: string, key?: string) =>
      fetch(`${s.server.url}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json", "user-agent": userAgent, "x-request-id": requestId, ...(key ? { authorization: `Bearer ${key}` } : {}) },
        body: JSON.stringify({ model: "one", messages: [{ role: "user", content: "Hi" }], max_tokens: 1, service_tier: "auto", frobnicate: 1 }),
      });
    const warned = () => s.lines.filter((l) => l.level === 40 && String(l.msg).startsWith("request fields ignored"));
    const sent: Array<[string, string, string?]> = [
      ["client-a", "req-ignored-1"],
      ["client-a", "req-ignored-2"],
      ["client-b", "req-ignored-3"],
      ["client-a", "req-ignored-4", "another-key"],
      ["client-b", "req-ignored-5"],
    ];
    for (const [userAgent, requestId, key] of sent) {
      const res = await chat(userAgent, requestId, key);
      expect(res.status).toBe(200);
      expect(res.headers.get("x-flock-ignored-fields")).toBe("service_tier, frobnicate");
      await res.body?.cancel();
    }
    // One warning for each client's first request: client-a, client-b, client-a with another key.
    expect(warned().map((l) => l.requestId)).toEqual(["req-ignored-1", "req-ignored-3", "req-ignored-4"]);
    for (const line of warned()) expect(line.fields).toEqual(["service_tier", "frobnicate"]);
    expect(warned()[1].userAgent).toBe("client-b");
  });
});

describe("an unexpected error mid-stream (HTTP shape, fake pipeline)", () => {
  it("is logged with the request id and the stack, while the client gets a generic error event", async () => {
    const lines: Array<Record<string, unknown>> = [];
    const log = createLogger("info", { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) });
    let released = 0;
    const model = {
      id: "fake",
      contextSize: 64,
      vocabularySize: 100,
      parallel: 1,
      maxQueue: 0,
      capacity: 1,
      runningSequences: 0,
      waitingSequences: 0,
      admit: () => () => void released++,
      detokenize: () => "",
    };
    const pipeline = {
      id: "fake",
      kind: "plain",
      model,
      async *generate(): AsyncGenerator<DecodeStep> {
        yield { tokens: [5], text: "Hello" };
        throw new Error(`engine exploded near ${SECRET}`);
      },
    } as unknown as Pipeline;
    const registry = { resolve: () => pipeline, list: () => [{ id: "fake", created: 0, pipeline }] } as unknown as PipelineRegistry;
    const app = createApp({ registry: () => registry, health: () => ({ status: "ok" }), limits: { maxN: 1, maxTokens: null }, maxBodyBytes: 1 << 16, log });

    const res = await app.request("/v1/completions", {
      method: "POST",
      headers: { "content-type": "application/json", "x-request-id": "req-boom-1" },
      body: JSON.stringify({ model: "fake", prompt: [1, 2, 3], max_tokens: 5, stream: true }),
    });
    const text = await res.text();
    const events = sseEvents(text) as Array<{ choices?: Array<{ text: string }>; error?: { message: string; type: string } }>;
    expect(events[0].choices?.[0].text).toBe("Hello");
    expect(events.at(-1)!.error).toEqual({ message: "The server had an error while processing your request.", type: "server_error", param: null, code: null });
    expect(text).not.toContain(SECRET);

    const failure = lines.find((l) => l.msg === "generation failed mid-stream")!;
    expect(failure.requestId).toBe("req-boom-1");
    expect(JSON.stringify(failure.err)).toContain("engine exploded");
    expect(lines.find((l) => l.msg === "generation finished")).toMatchObject({ requestId: "req-boom-1", outcome: "error" });
    expect(released).toBe(1); // the admission was given back
  });
});
