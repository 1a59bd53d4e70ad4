// What a leaked admin key can make the server read (issue: hardening): expert files only from
// the configured admin directories, filesystem paths only (no URL, no hf: URI — the GGUF header
// reader would fetch them), answers that neither echo a file's bytes nor tell which files exist,
// and GGUF headers checked against the base and the file's size before anything is allocated.
import { copyFileSync, mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { inject } from "vitest";
import type { Manifest } from "../../forge/manifest.js";
import { readManifest } from "../../forge/manifest.js";
import { writeLoraAdapter } from "../../forge/compile.js";
import { forgedPath, startTestServer, type TestServer } from "../helpers/server.js";

let t: TestServer;
let manifest: Manifest;
let adminDir: string;
let outside: string;
let fetched = 0;
let bait: Server;
const ADMIN = "admin-secret";

beforeAll(async () => {
  manifest = readManifest(inject("forgeDir"));
  adminDir = mkdtempSync(join(tmpdir(), "flock-admin-"));
  outside = mkdtempSync(join(tmpdir(), "flock-outside-"));
  const routing = Object.values(manifest.adapters).filter((a) => a.base === "flock-routing-base");
  copyFileSync(forgedPath(routing[0].file), join(adminDir, "ok.gguf"));
  copyFileSync(forgedPath(routing[0].file), join(outside, "ok.gguf"));
  bait = createServer((_, res) => {
    fetched++;
    res.end("GGUF");
  });
  await new Promise<void>((resolve) => bait.listen(0, "127.0.0.1", () => resolve()));
  t = await startTestServer({
    auth: { apiKeys: [], adminKey: ADMIN, healthRequiresKey: false, metricsRequiresKey: false },
    adminDirs: [adminDir],
    models: [
      {
        id: "routing",
        path: forgedPath(manifest.models["flock-routing-base"].file),
        parallel: 1,
        experts: { library: [], methods: ["arrow"] },
      },
    ],
  });
});
afterAll(async () => {
  await t?.close();
  bait?.close();
  for (const dir of [adminDir, outside]) if (dir) rmSync(dir, { recursive: true, force: true });
});

async function addExpert(body: Record<string, unknown>): Promise<{ status: number; message: string }> {
  const res = await fetch(`${t.url}/admin/models/routing/experts`, {
    method: "POST",
    headers: { authorization: `Bearer ${ADMIN}`, "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  const json = (await res.json()) as { error?: { message: string } };
  return { status: res.status, message: json.error?.message ?? "" };
}

describe("admin file paths", () => {
  it("a file inside an admin directory is added", async () => {
    expect((await addExpert({ name: "ok", lora: join(adminDir, "ok.gguf") })).status).toBe(201);
  });

  it("URLs and hf: URIs are refused without being fetched", async () => {
    const { port } = bait.address() as { port: number };
    for (const lora of [`http://127.0.0.1:${port}/x.gguf`, `${t.url}/health`, "hf:someone/model/adapter.gguf", "file:///etc/passwd"]) {
      const res = await addExpert({ name: "url", lora });
      expect(res.status, lora).toBe(400);
      expect(res.message).toMatch(/inside the admin directories/);
    }
    expect(fetched).toBe(0);
  });

  it("files outside: /etc/passwd, a real adapter elsewhere, a missing file, a link out — one answer, no bytes echoed", async () => {
    const link = join(adminDir, "link.gguf");
    try {
      const { symlinkSync } = await import("node:fs");
      symlinkSync(join(outside, "ok.gguf"), link);
    } catch {
      // no symlinks here: the other cases still run
    }
    const answers = await Promise.all([
      addExpert({ name: "a", lora: "/etc/passwd" }),
      addExpert({ name: "b", lora: join(outside, "ok.gguf") }),
      addExpert({ name: "c", lora: join(outside, "missing.gguf") }),
      addExpert({ name: "d", lora: join(adminDir, "..", "..", "etc", "passwd") }),
      addExpert({ name: "e", lora: link }),
      addExpert({ name: "f", lora: join(adminDir, "ok.gguf"), gates: "/etc/passwd" }),
    ]);
    for (const a of answers) {
      expect(a.status).toBe(400);
      expect(a.message).toMatch(/must name a file inside the admin directories/);
      expect(a.message).not.toMatch(/root|GGUF|magic/);
    }
  });

  it("a file inside whose header lies is refused before its data is allocated", async () => {
    // A valid adapter on output.weight at rank 4, then its lora_a claimed to be rank 1,048,576.
    const base = manifest.models["flock-routing-base"].shape.embeddingDim;
    const V = manifest.vocab.tokens.length;
    const path = join(adminDir, "liar.gguf");
    writeLoraAdapter(path, "liar", [{ target: "output.weight", inDim: base, outDim: V, rank: 4, a: new Float32Array(base * 4), b: new Float32Array(4 * V) }]);
    const bytes = readFileSync(path);
    const name = Buffer.from("output.weight.lora_a");
    const at = bytes.indexOf(name) + name.length; // then: n_dims (u32), dims (u64 each)
    expect(bytes.readUInt32LE(at)).toBe(2);
    bytes.writeBigUInt64LE(1_048_576n, at + 4 + 8);
    writeFileSync(path, bytes);
    const before = process.memoryUsage().rss;
    const lying = await addExpert({ name: "liar", lora: path });
    expect(lying.status).toBe(400);
    expect(lying.message).toMatch(/shape|rank/);
    // A file cut short: the shapes are right, the data is not there.
    const cut = join(adminDir, "cut.gguf");
    writeLoraAdapter(cut, "cut", [{ target: "output.weight", inDim: base, outDim: V, rank: 512, a: new Float32Array(base * 512), b: new Float32Array(512 * V) }]);
    truncateSync(cut, 8192);
    const short = await addExpert({ name: "cut", lora: cut });
    expect(short.status).toBe(400);
    expect(short.message).toMatch(/past the end of the file/);
    // The answers name the file, never where the server keeps it.
    for (const message of [lying.message, short.message]) expect(message).not.toContain(adminDir);
    expect(short.message).toContain("cut.gguf");
    expect(process.memoryUsage().rss - before).toBeLessThan(64 * 2 ** 20);
    // The server serves on.
    expect((await fetch(`${t.url}/health`)).status).toBe(200);
  });

  it("a tiny file whose metadata lies (a 512 MiB string in 69 bytes) is refused before the header reader allocates it", async () => {
    // GGUF v3, no tensors, one key whose string value claims 536,870,000 bytes. node-llama-cpp's
    // reader alone would Buffer.alloc the claim (peak RSS +1 GiB) before flock checked anything.
    const key = Buffer.from("general.architecture");
    const bytes = Buffer.alloc(69);
    let at = bytes.write("GGUF", 0);
    at = bytes.writeUInt32LE(3, at);
    at = bytes.writeBigUInt64LE(0n, at);
    at = bytes.writeBigUInt64LE(1n, at);
    at = bytes.writeBigUInt64LE(BigInt(key.length), at);
    at += key.copy(bytes, at);
    at = bytes.writeUInt32LE(8, at); // string
    at = bytes.writeBigUInt64LE(536_870_000n, at);
    bytes.write("llama", at);
    const path = join(adminDir, "metadata-liar.gguf");
    writeFileSync(path, bytes);
    const before = process.resourceUsage().maxRSS; // kilobytes, the process's peak so far
    const adapter = await addExpert({ name: "metadata-liar", lora: path });
    const gates = await addExpert({ name: "gate-liar", lora: join(adminDir, "ok.gguf"), gates: path });
    expect((process.resourceUsage().maxRSS - before) * 1024).toBeLessThan(64 * 2 ** 20);
    for (const answer of [adapter, gates]) {
      expect(answer.status).toBe(400);
      expect(answer.message).toMatch(/past the end of the file/);
      expect(answer.message).not.toContain(adminDir);
    }
  });

  it("the caps: a 65th expert and an adapter of rank 1,025 (shapes consistent) are 400s", async () => {
    const base = manifest.models["flock-routing-base"].shape.embeddingDim;
    const V = manifest.vocab.tokens.length;
    const wide = join(adminDir, "rank1025.gguf");
    writeLoraAdapter(wide, "wide", [{ target: "output.weight", inDim: base, outDim: V, rank: 1025, a: new Float32Array(base * 1025), b: new Float32Array(1025 * V) }]);
    const rank = await addExpert({ name: "wide", lora: wide });
    expect(rank.status).toBe(400);
    expect(rank.message).toMatch(/rank 1025 is above the limit of 1024/);

    const listed = async () =>
      ((await (await fetch(`${t.url}/admin/models/routing/experts`, { headers: { authorization: `Bearer ${ADMIN}` } })).json()) as { experts: Array<{ name: string }> }).experts;
    const added: string[] = [];
    try {
      for (let i = (await listed()).length; i < 64; i++) {
        const res = await addExpert({ name: `cap-${i}`, lora: join(adminDir, "ok.gguf") });
        expect(res.status).toBe(201);
        added.push(`cap-${i}`);
      }
      expect(await listed()).toHaveLength(64);
      const over = await addExpert({ name: "cap-65th", lora: join(adminDir, "ok.gguf") });
      expect(over.status).toBe(400);
      expect(over.message).toMatch(/already has 64 experts/);
    } finally {
      for (const name of added) await fetch(`${t.url}/admin/models/routing/experts/${name}`, { method: "DELETE", headers: { authorization: `Bearer ${ADMIN}` } });
    }
  });

  it("without --admin-dir the admin API adds no files at all", async () => {
    const other = await startTestServer({
      auth: { apiKeys: [], adminKey: ADMIN, healthRequiresKey: false, metricsRequiresKey: false },
      models: [{ id: "routing", path: forgedPath(manifest.models["flock-routing-base"].file), parallel: 1, experts: { library: [], methods: ["arrow"] } }],
    });
    try {
      const res = await fetch(`${other.url}/admin/models/routing/experts`, {
        method: "POST",
        headers: { authorization: `Bearer ${ADMIN}`, "content-type": "application/json" },
        body: JSON.stringify({ name: "x", lora: join(adminDir, "ok.gguf") }),
      });
      expect(res.status).toBe(400);
      expect(((await res.json()) as { error: { message: string } }).error.message).toMatch(/needs --admin-dir/);
    } finally {
      await other.close();
    }
  });
});

describe("binding", () => {
  it("a non-loopback address without API keys refuses to start, unless asked to serve open", async () => {
    const { loadConfig } = await import("../../server/config.js");
    expect(() => loadConfig(["--host", "0.0.0.0"], {})).toThrow(/reachable from other machines, and no API key/);
    expect(loadConfig(["--host", "0.0.0.0", "--api-key", "k"], {})!.host).toBe("0.0.0.0");
    expect(loadConfig(["--host", "0.0.0.0"], { FLOCK_INSECURE_NO_AUTH: "1" })!.insecureNoAuth).toBe(true);
    for (const host of ["127.0.0.1", "::1", "localhost"]) expect(loadConfig(["--host", host], {})!.host).toBe(host);
  });

  it("with --allowed-host, a request naming another host (DNS rebinding) is a 403", async () => {
    const { request } = await import("node:http");
    const other = await startTestServer({ allowedHosts: ["flock.internal", "127.0.0.1"], models: [{ id: "flock-demo", path: forgedPath(manifest.models["flock-demo"].file), parallel: 1 }] });
    try {
      const status = (host: string) =>
        new Promise<number>((resolve, reject) => {
          const req = request(`${other.url}/v1/models`, { headers: { host } }, (res) => {
            res.resume();
            resolve(res.statusCode!);
          });
          req.on("error", reject);
          req.end();
        });
      expect(await status("attacker.example:8080")).toBe(403);
      expect(await status("flock.internal:8080")).toBe(200);
      expect(await status(new URL(other.url).host)).toBe(200);
    } finally {
      await other.close();
    }
  });
});
