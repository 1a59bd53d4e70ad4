// An error nothing caught (issue: hardening): the process logs it as fatal with the ids of the
// requests it cuts short, and exits 70 for its supervisor to restart a clean one.
import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, inject, it } from "vitest";
import { readManifest } from "../../forge/manifest.js";
import { readSSE, until } from "../helpers/ops.js";
import { forgedPath } from "../helpers/server.js";

const root = join(import.meta.dirname, "..", "..");
const tsx = join(root, "node_modules", ".bin", "tsx");
const manifest = readManifest(inject("forgeDir"));
const cacheDir = mkdtempSync(join(tmpdir(), "flock-fatal-"));
afterAll(() => rmSync(cacheDir, { recursive: true, force: true }));

describe("an uncaught exception", () => {
  it("is logged fatal with the request ids in flight, and the process exits 70", async () => {
    const child = spawn(
      tsx,
      ["server/main.ts", "--port", "0", "--threads", "1", "--gpu", "off", "--cache-dir", cacheDir, "--model", `d=${forgedPath(manifest.models["flock-demo"].file)}`],
      {
        cwd: root,
        stdio: ["ignore", "pipe", "pipe"],
        env: { ...process.env, NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ""} --import=${join(import.meta.dirname, "fixtures", "throw-on-sigusr2.mjs")}`.trim() },
      },
    );
    let stdout = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stdout += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
    try {
      let url = "";
      expect(await until(() => (url = stdout.match(/"url":"(http:\/\/[^"]+)"[^\n]*"msg":"listening"/)?.[1] ?? "") !== "" || child.exitCode !== null, 30_000, 20)).toBe(true);
      expect(await until(async () => (await fetch(`${url}/health`).catch(() => null))?.status === 200, 30_000, 50)).toBe(true);
      const res = await fetch(`${url}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json", "x-request-id": "doomed-stream-1" },
        body: JSON.stringify({ model: "d", prompt: "The captain", max_tokens: 600, stream: true, logit_bias: { [String(manifest.vocab.eos)]: -100 } }),
      });
      expect(res.status).toBe(200);
      await readSSE(res, (text) => text.includes("data: {"), 10_000);
      // The server's own process: tsx runs it in a child of its own (and relays only SIGINT and SIGTERM).
      const pid = Number(execFileSync("pgrep", ["-P", String(child.pid)]).toString().trim().split("\n")[0]);
      expect(pid).toBeGreaterThan(0);
      process.kill(pid, "SIGUSR2");
      expect(await exited).toBe(70);
      const fatal = stdout
        .split("\n")
        .filter((line) => line.startsWith("{"))
        .map((line) => JSON.parse(line) as { level: number | string; msg: string; inFlight?: string[] })
        .find((line) => line.msg === "uncaught exception: exiting");
      expect(fatal, stdout.slice(-2000)).toBeDefined();
      expect(fatal!.inFlight).toEqual(["doomed-stream-1"]);
    } finally {
      if (child.exitCode === null) child.kill("SIGKILL");
    }
  });
});
