// `npm start` as a user runs it: the CLI entry point, the built-in demo forged into a fresh
// cache directory, an OpenAI client, and a clean exit on SIGTERM.
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import OpenAI from "openai";
import { afterAll, describe, expect, it } from "vitest";
import { readTokenizer } from "../forge/tokenizers.js";

const root = join(import.meta.dirname, "..");
const tsx = join(root, "node_modules", ".bin", "tsx");

function run(args: string[], env: Record<string, string> = {}): ChildProcess {
  return spawn(tsx, ["server/main.ts", ...args], { cwd: root, env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
}

function output(child: ChildProcess): Promise<{ code: number | null; stdout: string; stderr: string }> {
  let stdout = "";
  let stderr = "";
  child.stdout!.on("data", (d) => (stdout += d));
  child.stderr!.on("data", (d) => (stderr += d));
  return new Promise((resolve) => child.on("exit", (code) => resolve({ code, stdout, stderr })));
}

/** Resolves with the URL from the "listening" log line. */
function listeningUrl(child: ChildProcess): Promise<string> {
  return new Promise((resolve, reject) => {
    let buffer = "";
    child.stdout!.on("data", (d: Buffer) => {
      buffer += d.toString();
      for (const line of buffer.split("\n")) {
        if (!line.startsWith("{")) continue;
        try {
          const entry = JSON.parse(line) as { msg?: string; url?: string };
          if (entry.msg === "listening" && entry.url) resolve(entry.url);
        } catch {
          // a partial line; wait for the rest
        }
      }
    });
    child.on("exit", (code) => reject(new Error(`server exited with ${code} before listening`)));
  });
}

const cacheDir = mkdtempSync(join(tmpdir(), "flock-cli-"));
afterAll(() => rmSync(cacheDir, { recursive: true, force: true }));

describe("the flock command", () => {
  it("forges and serves the demo without configuration, and exits 0 on SIGTERM", async () => {
    // -c and -np without -m set every demo model, as llama-server's would set its one model.
    const child = run(["--port", "0", "--threads", "1", "--gpu", "off", "-c", "512", "-np", "1"], { FLOCK_CACHE_DIR: cacheDir });
    const exited = output(child);
    const url = await listeningUrl(child);
    let health = await fetch(`${url}/health`);
    // Forging the demo (151,936-token models) and loading it takes a while on 2 cores.
    for (let i = 0; i < 1200 && health.status !== 200; i++) {
      expect(health.status).toBe(503);
      await new Promise((r) => setTimeout(r, 100));
      health = await fetch(`${url}/health`);
    }
    expect(health.status).toBe(200);
    expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);

    const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: "none" });
    const models = await client.models.list();
    expect(models.data.map((m) => m.id)).toContain("flock-demo");
    const res = await client.chat.completions.create({ model: "flock-demo", messages: [{ role: "user", content: "Tell me a story." }], max_tokens: 30, seed: 3 });
    expect(res.choices[0].message.content).toMatch(/^[A-Z][a-z]* [a-z]+/); // words of the demo language
    // The demo speaks Qwen 2's vocabulary.
    const tokenized = await fetch(`${url}/tokenize`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ content: " cook" }) });
    const qwen2 = await readTokenizer("qwen2", cacheDir);
    const answer = (await tokenized.json()) as { tokens: number[]; max_model_len: number };
    expect(answer.tokens).toEqual([qwen2.tokens.indexOf("Ġcook")]);
    expect(answer.max_model_len).toBe(512);

    child.kill("SIGTERM");
    const { code, stdout } = await exited;
    expect(code).toBe(0);
    // Not a terminal: JSON lines, one of them saying every model is loaded.
    const lines = stdout.split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l) as { msg: string; models?: string[]; parallel?: number; contextSize?: number });
    expect(lines.find((l) => l.msg === "ready: every model is loaded")?.models).toContain("flock-demo");
    const loaded = lines.filter((l) => l.msg === "model loaded");
    expect(loaded.length).toBeGreaterThan(3);
    for (const l of loaded) expect([l.parallel, l.contextSize]).toEqual([1, 512]);
  }, 180_000);

  it("serves one file as llama-server does (-m PATH -c N -np N), its id the file name, logging text on request", async () => {
    const demo = readdirSync(cacheDir, { recursive: true, encoding: "utf8" }).find((f) => basename(f) === "flock-demo.gguf");
    expect(demo).toBeDefined();
    const child = run(["-m", join(cacheDir, demo!), "-c", "256", "-np", "1", "-t", "1", "--port", "0", "--gpu", "off", "--log-format", "text"], { FLOCK_CACHE_DIR: cacheDir });
    const exited = output(child);
    let stdout = "";
    child.stdout!.on("data", (d) => (stdout += d));
    for (let i = 0; i < 600 && !stdout.includes("ready: every model is loaded"); i++) await new Promise((r) => setTimeout(r, 100));
    const ready = stdout.split("\n").find((l) => l.includes("ready: every model is loaded"))!;
    expect(ready).toMatch(/INFO/);
    expect(ready.startsWith("{")).toBe(false);
    const url = stdout.match(/url: "(http:\/\/127\.0\.0\.1:\d+)"/)?.[1] ?? stdout.match(/(http:\/\/127\.0\.0\.1:\d+)/)![1];
    const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: "none" });
    expect((await client.models.list()).data.map((m) => m.id)).toEqual(["flock-demo"]);
    // -c 256: the window is 256 tokens.
    await expect(client.completions.create({ model: "flock-demo", prompt: "The", max_tokens: 300 })).rejects.toMatchObject({ status: 400, code: "context_length_exceeded", message: expect.stringContaining("256 tokens") });
    child.kill("SIGTERM");
    expect((await exited).code).toBe(0);
  });

  it("prints usage for --help and exits 0", async () => {
    const { code, stdout } = await output(run(["--help"]));
    expect(code).toBe(0);
    expect(stdout).toContain("--model PATH|ID=PATH");
    // Grouped by what the flags are about.
    for (const group of ["Models", "Server", "Limits", "Security", "Logs"]) expect(stdout).toMatch(new RegExp(`^${group}$`, "m"));
  });

  it("rejects bad flags with exit code 2 and a message naming the problem", async () => {
    const bad = await output(run(["--port", "banana"]));
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain("port");
    const unknown = await output(run(["--frobnicate"]));
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain("frobnicate");
  });

  it("exits 1 with the file named when a model file is missing", async () => {
    const { code, stdout } = await output(run(["--port", "0", "--gpu", "off", "--model", "m=/nonexistent/model.gguf"]));
    expect(code).toBe(1);
    expect(stdout).toContain("/nonexistent/model.gguf");
  });
});
