// The native LoRA adapter cache (engine/adapter-cache.ts), through the admin API: adapters are
// shared per file version, counted per context, freed when an expert's last context goes, and
// a file replaced at the same path is read afresh (issue: hardening, finding 8).
import { copyFileSync, mkdtempSync, realpathSync, renameSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import type { AdapterUsage } from "../engine/adapter-cache.js";
import { type Manifest, readManifest } from "../forge/manifest.js";
import { forgedPath, startTestServer, type TestServer } from "./helpers/server.js";

const ADMIN = "admin-secret";
let t: TestServer;
let manifest: Manifest;
let dir: string;
let path: string;
let domains: Array<{ domain: string; file: string }>;

/** An adapter as GET /admin/status lists it. */
type Loaded = AdapterUsage;
interface AdapterStatus {
  loaded: Loaded[];
  loads: number;
  frees: number;
}

beforeAll(async () => {
  manifest = readManifest(inject("forgeDir"));
  domains = Object.values(manifest.adapters)
    .filter((a) => a.base === "flock-routing-base")
    .map((a) => ({ domain: a.domain!, file: forgedPath(a.file) }));
  dir = mkdtempSync(join(tmpdir(), "flock-adapters-"));
  path = join(dir, "expert.gguf");
  copyFileSync(domains[0].file, path);
  path = realpathSync(path);
  const base = forgedPath(manifest.models["flock-routing-base"].file);
  t = await startTestServer({
    auth: { apiKeys: [], adminKey: ADMIN, healthRequiresKey: false, metricsRequiresKey: false },
    adminDirs: [dir],
    models: [
      { id: "routing", path: base, parallel: 1, experts: { library: [], methods: ["arrow"] } },
      // A plain `lora` entry over the same file: its context holds the first version for good.
      { id: "pinned", path: base, lora: [{ path }], parallel: 1 },
    ],
  });
});
afterAll(async () => {
  await t?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

async function admin(method: string, route: string, body?: object): Promise<Response> {
  return fetch(`${t.url}${route}`, {
    method,
    headers: { authorization: `Bearer ${ADMIN}`, "content-type": "application/json" },
    ...(body ? { body: JSON.stringify(body) } : {}),
  });
}

async function adapters(): Promise<AdapterStatus> {
  const status = (await (await admin("GET", "/admin/status")).json()) as { adapters: AdapterStatus };
  return status.adapters;
}

/** The adapters loaded from `path`, oldest first, once `done` holds (retired contexts are freed asynchronously). */
async function settled(done: (loaded: Loaded[]) => boolean): Promise<Loaded[]> {
  for (let i = 0; i < 100; i++) {
    const loaded = (await adapters()).loaded.filter((a) => a.path === path);
    if (done(loaded)) return loaded;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`adapters never settled: ${JSON.stringify(await adapters())}`);
}

/** A greedy completion and its per-token logprobs: what the adapter in use does to the base. */
async function complete(model: string, routing?: object): Promise<string> {
  const res = await fetch(`${t.url}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model, prompt: "the cook mixes the soup", max_tokens: 8, temperature: 0, logprobs: 3, ...(routing ? { flock: { routing } } : {}) }),
  });
  const json = (await res.json()) as { choices: Array<{ text: string; logprobs: unknown }> };
  expect(res.status, JSON.stringify(json)).toBe(200);
  return JSON.stringify([json.choices[0].text, json.choices[0].logprobs]);
}

describe("native adapter cache", () => {
  it("shares a file version between contexts, frees a deleted expert's adapter, and reads a replaced file afresh", async () => {
    const pinnedBefore = await complete("pinned");
    let [first] = await settled((l) => l.length === 1);
    expect(first).toMatchObject({ refs: 1, current: true });
    const start = await adapters();

    // The expert's context shares the pinned entry's adapter: same file version, no second load.
    expect((await admin("POST", "/admin/models/routing/experts", { name: "x", lora: path })).status).toBe(201);
    const shared = await complete("routing+arrow", { mode: "single", expert: "x" });
    [first] = await settled((l) => l.length === 1 && l[0].refs === 2);
    expect((await adapters()).loads).toBe(start.loads);

    // Deleted: its context retires, and its reference goes with it.
    expect((await admin("DELETE", "/admin/models/routing/experts/x")).status).toBe(200);
    await settled((l) => l.length === 1 && l[0].refs === 1);

    // Another adapter written over the same path (atomically, as deployments do).
    const next = join(dir, "next.gguf");
    copyFileSync(domains[1].file, next);
    renameSync(next, path);
    await settled((l) => l.length === 1 && !l[0].current);

    expect((await admin("POST", "/admin/models/routing/experts", { name: "x", lora: path })).status).toBe(201);
    const replaced = await complete("routing+arrow", { mode: "single", expert: "x" });
    expect(replaced).not.toBe(shared);
    // Two versions of one path: the pinned context's (stale), the expert's (current).
    const both = await settled((l) => l.length === 2);
    expect(both.map((a) => [a.refs, a.current])).toEqual([
      [1, false],
      [1, true],
    ]);
    expect((await adapters()).loads).toBe(start.loads + 1);

    // Deleted again: the new version has no context left and is freed; the pinned one stays.
    const freesBefore = (await adapters()).frees;
    expect((await admin("DELETE", "/admin/models/routing/experts/x")).status).toBe(200);
    const after = await settled((l) => l.length === 1);
    expect(after[0]).toMatchObject({ refs: 1, current: false });
    expect((await adapters()).frees).toBe(freesBefore + 1);
    // The pinned model serves on with the version it loaded.
    expect(await complete("pinned")).toBe(pinnedBefore);
    expect(shared).toBe(pinnedBefore);
  });
});
