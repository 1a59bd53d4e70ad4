// Graceful shutdown of `npm start` as a child process: on SIGTERM it stops accepting, lets a
// long stream in flight finish, and exits 0; past the deadline it cancels what is still
// running (the client gets a shutting_down error event) and still exits 0.
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, inject, it } from "vitest";
import { readManifest } from "../forge/manifest.js";
import { readSSE, sseEvents, until } from "./helpers/ops.js";
import { forgedPath } from "./helpers/server.js";

const root = join(import.meta.dirname, "..");
const tsx = join(root, "node_modules", ".bin", "tsx");
const manifest = readManifest(inject("forgeDir"));
const cacheDir = mkdtempSync(join(tmpdir(), "flock-shutdown-"));
afterAll(() => rmSync(cacheDir, { recursive: true, force: true }));

interface Child {
  child: ChildProcess;
  url: string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string }>;
}

async function startChild(args: string[]): Promise<Child> {
  const child = spawn(
    tsx,
    ["server/main.ts", "--port", "0", "--threads", "1", "--gpu", "off", "--cache-dir", cacheDir, "--model", `d=${forgedPath(manifest.models["flock-demo"].file)}`, ...args],
    { cwd: root, stdio: ["ignore", "pipe", "pipe"] },
  );
  let stdout = "";
  child.stdout!.on("data", (d: Buffer) => (stdout += d.toString()));
  child.stderr!.on("data", (d: Buffer) => (stdout += d.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string }>((resolve) =>
    child.on("exit", (code, signal) => resolve({ code, signal, stdout })),
  );
  let url = "";
  const listening = await until(() => {
    url = stdout.match(/"url":"(http:\/\/[^"]+)"[^\n]*"msg":"listening"/)?.[1] ?? "";
    return url !== "" || child.exitCode !== null;
  }, 30_000, 20);
  if (!listening || !url) throw new Error(`no listening line:\n${stdout}`);
  const ready = await until(async () => (await fetch(`${url}/health`).catch(() => null))?.status === 200, 30_000, 50);
  if (!ready) throw new Error(`never healthy:\n${stdout}`);
  return { child, url, exited };
}

function longStream(url: string, maxTokens: number) {
  return fetch(`${url}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      model: "d",
      prompt: "The captain",
      max_tokens: maxTokens,
      stream: true,
      stream_options: { include_usage: true },
      logit_bias: { [String(manifest.vocab.eos)]: -100 },
    }),
  });
}

/** A request after SIGTERM: refused at the socket, or answered 503 on a kept-alive connection. */
async function refused(url: string): Promise<boolean> {
  try {
    const res = await fetch(`${url}/v1/models`, { signal: AbortSignal.timeout(5_000) });
    return res.status === 503;
  } catch {
    return true;
  }
}

describe("SIGTERM", () => {
  it("drains: a long stream in flight finishes completely, new requests are refused, exit code 0", async () => {
    const { child, url, exited } = await startChild(["--shutdown-timeout", "30"]);
    const res = await longStream(url, 600);
    expect(res.status).toBe(200);
    const head = await readSSE(res, (text) => text.includes("data: {"), 10_000);
    const signalled = performance.now();
    child.kill("SIGTERM");

    expect(await until(() => refused(url), 5_000, 20)).toBe(true);
    const rest = await readSSE(res, (text) => text.includes("data: [DONE]"), 30_000);
    const events = sseEvents(head + rest) as Array<{ choices: Array<{ text: string; finish_reason: string | null }>; usage?: { completion_tokens: number } | null }>;
    expect(rest).toContain("data: [DONE]");
    expect(events.some((e) => "error" in e)).toBe(false);
    expect(events.at(-1)!.usage?.completion_tokens).toBe(600);
    expect(events.filter((e) => e.choices[0]?.finish_reason === "length")).toHaveLength(1);

    const { code, stdout } = await exited;
    expect(code).toBe(0);
    expect(stdout).toContain('"msg":"waiting for requests in flight"');
    expect(stdout).toContain('"msg":"shut down"');
    expect(stdout).not.toContain("cancelled requests");
    expect(performance.now() - signalled).toBeLessThan(30_000);
  });

  it("past the deadline cancels the rest: the stream ends with a shutting_down error event, exit code 0", async () => {
    const { child, url, exited } = await startChild(["--shutdown-timeout", "0.5", "--context-size", "4096"]);
    const res = await longStream(url, 4000); // several seconds of generation
    await readSSE(res, (text) => text.includes("data: {"), 10_000);
    const signalled = performance.now();
    child.kill("SIGTERM");
    const rest = await readSSE(res, () => false, 20_000);
    const cancelledAfter = performance.now() - signalled;
    const last = sseEvents(rest).at(-1) as { error?: { type: string; code: string } };
    expect(last.error).toMatchObject({ type: "service_unavailable", code: "shutting_down" });
    expect(rest).not.toContain("[DONE]");
    expect(cancelledAfter).toBeGreaterThan(400);
    expect(cancelledAfter).toBeLessThan(4_000);

    const { code, stdout } = await exited;
    expect(code).toBe(0);
    expect(stdout).toMatch(/"cancelled":1[,}][^\n]*"msg":"cancelled requests still running at the shutdown deadline"/);
    expect(performance.now() - signalled).toBeLessThan(10_000);
  });
});
