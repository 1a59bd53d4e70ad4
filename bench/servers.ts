// Shared by the benchmarks that put flock beside llama-server: llama-server built from the
// llama.cpp source node-llama-cpp ships, and both servers started as their own processes on
// loopback with one thread and one sequence.
//
// llama-server is built once from llama/gitRelease.bundle (engine/native/llama-tools.ts).
import { type ChildProcess, spawn } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { llamaToolBinary } from "../engine/native/llama-tools.js";

const root = join(import.meta.dirname, "..");

export interface ServerProcess {
  url: string;
  process: ChildProcess;
}

/** llama-server built from node-llama-cpp's bundled llama.cpp, once per commit. */
export function llamaServerBinary(): string {
  return llamaToolBinary("llama-server");
}

export async function waitForHealth(url: string, child: ChildProcess): Promise<void> {
  for (let i = 0; i < 600; i++) {
    if (child.exitCode !== null) throw new Error(`${url}: the server exited (${child.exitCode})`);
    const ok = await fetch(`${url}/health`).then(
      (r) => r.ok,
      () => false,
    );
    if (ok) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${url}: not healthy after 60 s`);
}

/** llama-server on `model` with one thread and one sequence; `extra` adds flags (speculation). */
export async function startLlamaServer(binary: string, model: string, port: number, extra: string[] = []): Promise<ServerProcess> {
  const args = ["-m", model, "-c", "512", "-np", "1", "-t", "1", "-tb", "1", "-ngl", "0", "--host", "127.0.0.1", "--port", String(port), "--no-webui", ...extra];
  const child = spawn(binary, args, { stdio: ["ignore", "ignore", "ignore"] });
  const url = `http://127.0.0.1:${port}`;
  await waitForHealth(url, child);
  return { url, process: child };
}

/** flock on an ephemeral port with these model entries (one thread; the config is written to `dir`). */
export async function startFlock(models: object[], dir: string): Promise<ServerProcess> {
  const config = join(dir, "flock.json");
  writeFileSync(config, JSON.stringify({ host: "127.0.0.1", port: 0, threads: 1, gpu: "off", logLevel: "info", playground: false, models }));
  const child = spawn(process.execPath, ["--import", "tsx", "server/main.ts", "--config", config], { cwd: root, stdio: ["ignore", "pipe", "inherit"] });
  const url = await new Promise<string>((resolve, reject) => {
    child.once("exit", (code) => reject(new Error(`flock exited (${code})`)));
    createInterface({ input: child.stdout! }).on("line", (line) => {
      const entry = JSON.parse(line) as { msg?: string; url?: string };
      if (entry.msg === "listening" && entry.url) resolve(entry.url);
    });
  });
  await waitForHealth(url, child);
  return { url, process: child };
}

/** What a completion generated: its text, tokens, and the candidates proposed and accepted (either server's counts). */
export async function complete(url: string, body: Record<string, unknown>): Promise<{ text: string; tokens: number; drafted: number; accepted: number }> {
  const res = await fetch(`${url}/v1/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  if (!res.ok) throw new Error(`${url}: ${res.status} ${await res.text()}`);
  const json = (await res.json()) as {
    choices: Array<{ text: string }>;
    usage: { completion_tokens: number };
    timings?: { draft_n?: number; draft_n_accepted?: number };
    flock?: { speculative?: { drafted_tokens: number; accepted_tokens: number } };
  };
  const drafted = json.flock?.speculative?.drafted_tokens ?? json.timings?.draft_n ?? 0;
  const accepted = json.flock?.speculative?.accepted_tokens ?? json.timings?.draft_n_accepted ?? 0;
  return { text: json.choices[0].text, tokens: json.usage.completion_tokens, drafted, accepted };
}

/** One timed completion: wall seconds, generated tokens, candidates proposed and accepted. */
export interface Sample {
  seconds: number;
  tokens: number;
  drafted: number;
  accepted: number;
}

/**
 * A completion of `tokens` tokens, timed after a one-token request with the same body (the
 * server then holds the prompt's cache), so that its wall time is decoding.
 */
export async function timedCompletion(url: string, body: Record<string, unknown>, tokens: number): Promise<Sample> {
  await complete(url, { ...body, max_tokens: 1 });
  const started = performance.now();
  const r = await complete(url, { ...body, max_tokens: tokens });
  return { seconds: (performance.now() - started) / 1000, tokens: r.tokens, drafted: r.drafted, accepted: r.accepted };
}

/** How the side-by-side benchmarks run each server, as their reports state it. */
export const SIDE_BY_SIDE = {
  threads: 1,
  contextSize: 512,
  sequences: 1,
  statistic: "total completion tokens over total wall seconds per variant, after a one-token request with the same prompt; variants rotate per prompt",
};

/** Stops every server that was started. */
export function stopServers(servers: ReadonlyArray<ServerProcess | null | undefined>): void {
  for (const s of servers) s?.process.kill("SIGTERM");
}
