// API keys, the admin key, the /health and /metrics switches and CORS on a real server, with
// the official client where a client would be used.
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { readManifest } from "../forge/manifest.js";
import { bearerToken, KeySet } from "../server/auth.js";
import { forgedPath, startTestServer, type TestServer } from "./helpers/server.js";

type ErrorBody = { error: { message: string; type: string; param: string | null; code: string | null } };

let t: TestServer;
beforeAll(async () => {
  t = await startTestServer({
    auth: { apiKeys: ["key-one", "key-two"], adminKey: "admin-secret", metricsRequiresKey: true, healthRequiresKey: false },
    corsOrigins: ["https://app.example"],
  });
});
afterAll(() => t?.close());

const client = (apiKey: string) => new OpenAI({ baseURL: `${t.url}/v1`, apiKey, maxRetries: 0 });
const get = (path: string, key?: string, headers: Record<string, string> = {}) =>
  fetch(`${t.url}${path}`, { headers: { ...headers, ...(key === undefined ? {} : { authorization: `Bearer ${key}` }) } });

describe("API keys on /v1/*", () => {
  it("a missing key is a 401 invalid_api_key in OpenAI's shape", async () => {
    const res = await get("/v1/models");
    expect(res.status).toBe(401);
    expect(res.headers.get("www-authenticate")).toMatch(/^Bearer/);
    expect(res.headers.get("x-request-id")).toBeTruthy();
    const body = (await res.json()) as ErrorBody;
    expect(body.error).toMatchObject({ type: "invalid_request_error", code: "invalid_api_key", param: null });
    expect(body.error.message).toContain("didn't provide an API key");
    // Not Bearer: the same.
    expect((await fetch(`${t.url}/v1/models`, { headers: { authorization: "Basic a2V5LW9uZTo=" } })).status).toBe(401);
  });

  it("a wrong key is a 401 for the official client; a prefix or extension of a right key is wrong too", async () => {
    for (const wrong of ["nope", "key-on", "key-one-", "KEY-ONE", "admin"]) {
      await expect(client(wrong).models.list()).rejects.toMatchObject({ status: 401, code: "invalid_api_key" });
    }
    await expect(client("nope").chat.completions.create({ model: "flock-demo", messages: [{ role: "user", content: "hi" }] })).rejects.toBeInstanceOf(
      OpenAI.AuthenticationError,
    );
  });

  it("every configured key works, and so does the admin key", async () => {
    for (const key of ["key-one", "key-two", "admin-secret"]) {
      const res = await client(key).completions.create({ model: "flock-demo", prompt: "The cook", max_tokens: 2 });
      expect(res.choices).toHaveLength(1);
    }
    const stream = await client("key-two").chat.completions.create({ model: "flock-demo", messages: [{ role: "user", content: "hi" }], max_tokens: 3, stream: true });
    let chunks = 0;
    for await (const _ of stream) chunks++;
    expect(chunks).toBeGreaterThan(1);
  });
});

describe("the admin key on /admin/*", () => {
  it("only the admin key opens GET /admin/status, which shows the models and capabilities", async () => {
    expect((await get("/admin/status")).status).toBe(401);
    expect((await get("/admin/status", "key-one")).status).toBe(401);
    expect((await get("/admin/status", "admin-secre")).status).toBe(401);
    const res = await get("/admin/status", "admin-secret");
    expect(res.status).toBe(200);
    const status = (await res.json()) as {
      status: string;
      draining: boolean;
      engine: { capabilities: Record<string, boolean> };
      models: Array<{ id: string; kind: string; parallel: number; running: number; waiting: number; maxQueue: number | null; draft?: string }>;
    };
    expect(status.status).toBe("ok");
    expect(status.draining).toBe(false);
    expect(Object.keys(status.engine.capabilities)).toContain("rawLogits");
    expect(status.models.map((m) => m.id)).toEqual(["flock-demo", "kitchen", "small", "spec"]);
    expect(status.models.find((m) => m.id === "spec")).toMatchObject({ kind: "speculative", parallel: 2, running: 0, waiting: 0, maxQueue: 64 });
    expect(status.models.find((m) => m.id === "spec")!.draft).toBe("spec:draft");
  });
});

describe("/health and /metrics", () => {
  it("/health is open (healthRequiresKey off); /metrics needs a key (metricsRequiresKey on)", async () => {
    expect((await get("/health")).status).toBe(200);
    expect((await get("/metrics")).status).toBe(401);
    expect((await get("/metrics", "wrong")).status).toBe(401);
    const res = await get("/metrics", "key-one");
    expect(res.status).toBe(200);
    expect(await res.text()).toContain("flock_requests_total");
  });

  it("with healthRequiresKey, /health needs a key too (and /metrics, not switched, stays open)", async () => {
    const model = { id: "m", path: forgedPath(readManifest(inject("forgeDir")).models["flock-demo"].file), parallel: 1 };
    const closed = await startTestServer({ models: [model], auth: { apiKeys: ["k"], healthRequiresKey: true } });
    try {
      expect((await fetch(`${closed.url}/health`)).status).toBe(401);
      expect((await fetch(`${closed.url}/health`, { headers: { authorization: "Bearer k" } })).status).toBe(200);
      expect((await fetch(`${closed.url}/metrics`)).status).toBe(200);
    } finally {
      await closed.close();
    }
  });
});

describe("CORS", () => {
  it("answers preflights from an allowed origin without a key, and names no other origin", async () => {
    const preflight = await fetch(`${t.url}/v1/chat/completions`, {
      method: "OPTIONS",
      headers: { origin: "https://app.example", "access-control-request-method": "POST", "access-control-request-headers": "authorization, content-type" },
    });
    expect(preflight.status).toBe(204);
    expect(preflight.headers.get("access-control-allow-origin")).toBe("https://app.example");
    expect(preflight.headers.get("access-control-allow-headers")?.toLowerCase()).toContain("authorization");
    expect(preflight.headers.get("access-control-allow-methods")).toContain("POST");

    const actual = await get("/v1/models", "key-one", { origin: "https://app.example" });
    expect(actual.status).toBe(200);
    expect(actual.headers.get("access-control-allow-origin")).toBe("https://app.example");
    expect(actual.headers.get("access-control-expose-headers")?.toLowerCase()).toContain("x-request-id");
    // Errors carry the header too, so the page can read them.
    const denied = await get("/v1/models", undefined, { origin: "https://app.example" });
    expect(denied.status).toBe(401);
    expect(denied.headers.get("access-control-allow-origin")).toBe("https://app.example");

    const other = await get("/v1/models", "key-one", { origin: "https://evil.example" });
    expect(other.headers.get("access-control-allow-origin")).toBeNull();
  });
});

describe("a server without keys or CORS", () => {
  let open: TestServer;
  beforeAll(async () => {
    open = await startTestServer();
  });
  afterAll(() => open?.close());

  it("serves /v1/* to anyone, sends no CORS headers, and disables /admin/* (403)", async () => {
    expect((await fetch(`${open.url}/v1/models`)).status).toBe(200);
    const cross = await fetch(`${open.url}/v1/models`, { headers: { origin: "https://app.example" } });
    expect(cross.headers.get("access-control-allow-origin")).toBeNull();
    const preflight = await fetch(`${open.url}/v1/models`, { method: "OPTIONS", headers: { origin: "https://app.example", "access-control-request-method": "GET" } });
    expect(preflight.headers.get("access-control-allow-origin")).toBeNull();
    const admin = await fetch(`${open.url}/admin/status`, { headers: { authorization: "Bearer anything" } });
    expect(admin.status).toBe(403);
    expect(((await admin.json()) as ErrorBody).error).toMatchObject({ type: "permission_error", code: "admin_disabled" });
  });
});

describe("key comparison", () => {
  it("matches exactly one of the configured keys, whatever the length", () => {
    const keys = new KeySet(["alpha", "beta-longer-key"]);
    expect(keys.size).toBe(2);
    expect(keys.matches("alpha")).toBe(true);
    expect(keys.matches("beta-longer-key")).toBe(true);
    for (const wrong of ["", "alph", "alphaa", "Alpha", "beta", "x".repeat(10_000)]) expect(keys.matches(wrong)).toBe(false);
    expect(new KeySet([]).matches("")).toBe(false);
  });

  it("reads Bearer tokens case-insensitively and nothing else", () => {
    expect(bearerToken("Bearer abc")).toBe("abc");
    expect(bearerToken("bearer   abc ")).toBe("abc");
    expect(bearerToken("Basic abc")).toBeNull();
    expect(bearerToken("Bearer")).toBeNull();
    expect(bearerToken("Bearer a b")).toBeNull();
    expect(bearerToken(undefined)).toBeNull();
  });
});
