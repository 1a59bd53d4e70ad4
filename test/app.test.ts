// HTTP shapes that need no engine: loading state, and internal errors that must not leak.
import { describe, expect, it } from "vitest";
import { createApp } from "../server/app.js";
import { notReady, type ServerContext } from "../server/context.js";
import { createLogger } from "../server/logger.js";

function context(overrides: Partial<ServerContext>): ServerContext {
  return {
    registry: notReady,
    health: () => ({ status: "loading" }),
    limits: { maxN: 8, maxTokens: null },
    maxBodyBytes: 1 << 20,
    log: createLogger("silent"),
    ...overrides,
  };
}

const chat = { model: "m", messages: [{ role: "user", content: "hi" }] };
const post = (app: ReturnType<typeof createApp>, body: unknown) =>
  app.request("/v1/chat/completions", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });

describe("while models load", () => {
  it("GET /health is 503, completions are 503 in OpenAI's shape", async () => {
    const app = createApp(context({}));
    const health = await app.request("/health");
    expect(health.status).toBe(503);
    expect(await health.json()).toEqual({ status: "loading" });
    const res = await post(app, chat);
    expect(res.status).toBe(503);
    expect(((await res.json()) as { error: { type: string } }).error.type).toBe("service_unavailable");
  });
});

describe("unexpected failures", () => {
  it("answer 500 without leaking the internal message, and carry a request id", async () => {
    const app = createApp(
      context({
        registry: () => {
          throw new Error("secret internal detail at /home/x");
        },
      }),
    );
    const res = await post(app, chat);
    expect(res.status).toBe(500);
    const text = await res.text();
    expect(text).not.toContain("secret");
    expect(JSON.parse(text)).toEqual({
      error: { message: "The server had an error while processing your request.", type: "server_error", param: null, code: null },
    });
    expect(res.headers.get("x-request-id")).toMatch(/^[0-9a-f-]{36}$/);
  });
});
