// A replica set on loopback for bench:replicas and test/haproxy.test.ts: flock processes (the
// real server, `node --import tsx server/main.ts`) behind HAProxy from Debian's archive, run with
// deploy/haproxy/haproxy.cfg as docs/scale-out.md gives it (only the bind address and the server
// lines are replaced), and a client that records what each request ended as.
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { waitForHealth } from "./servers.js";

const root = join(import.meta.dirname, "..");

export const haproxyInstalled = () => !spawnSync("haproxy", ["-v"], { stdio: "ignore" }).error;
export const haproxyVersion = () => spawnSync("haproxy", ["-v"], { encoding: "utf8" }).stdout.split("\n")[0];

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address() as { port: number };
      probe.close(() => resolve(port));
    });
  });
}

export interface Replica {
  name: string;
  port: number;
  process: ChildProcess;
}

export interface ReplicaOptions {
  /** The GGUF the replica serves as flock-demo. */
  model: string;
  /** A writable directory for the replicas' caches and HAProxy's config. */
  dir: string;
  parallel?: number;
  contextSize?: number;
}

export async function startReplica(name: string, options: ReplicaOptions): Promise<Replica> {
  const port = await freePort();
  const args = ["--import", "tsx", "server/main.ts", "--model", `flock-demo=${options.model}`, "--port", String(port), "--threads", "1", "--parallel", String(options.parallel ?? 2), "-c", String(options.contextSize ?? 512)];
  args.push("--gpu", "off", "--shutdown-timeout", "10", "--cache-dir", join(options.dir, `cache-${name}`), "--log-level", "warn", "--log-format", "json");
  const child = spawn(process.execPath, args, { cwd: root, stdio: ["ignore", "ignore", "inherit"] });
  await waitForHealth(`http://127.0.0.1:${port}`, child);
  return { name, port, process: child };
}

/** deploy/haproxy/haproxy.cfg with its bind address and servers replaced by these. */
export function haproxyConfig(port: number, replicas: Replica[]): string {
  const documented = readFileSync(join(root, "deploy", "haproxy", "haproxy.cfg"), "utf8");
  const lines = documented.split("\n");
  const firstServer = lines.findIndex((l) => /^\s+server\s/.test(l));
  if (firstServer < 0 || !/^\s+bind\s/m.test(documented)) throw new Error("deploy/haproxy/haproxy.cfg: no bind or server lines");
  const kept = lines.filter((l) => !/^\s+server\s/.test(l)).map((l) => (/^\s+bind\s/.test(l) ? `    bind 127.0.0.1:${port}` : l));
  kept.splice(firstServer, 0, ...replicas.map((r) => `    server ${r.name} 127.0.0.1:${r.port}`));
  return kept.join("\n");
}

export async function startHaproxy(replicas: Replica[], dir: string): Promise<{ url: string; process: ChildProcess }> {
  const port = await freePort();
  const file = join(dir, `haproxy-${port}.cfg`);
  writeFileSync(file, haproxyConfig(port, replicas));
  const child = spawn("haproxy", ["-db", "-f", file], { stdio: ["ignore", "ignore", "inherit"] });
  const url = `http://127.0.0.1:${port}`;
  await waitForHealth(url, child);
  return { url, process: child };
}

export async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once("exit", r));
  child.kill("SIGTERM");
  await Promise.race([exited, new Promise((r) => setTimeout(r, 15_000))]);
  if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
}

export type Outcome = "ok" | "rejected" | "error" | "lost";
export interface Result {
  startedMs: number;
  endedMs: number;
  outcome: Outcome;
  stream: boolean;
  replica: string | null;
  tokens: number;
  detail?: string;
}

export interface RequestBody {
  model: string;
  prompt: string;
  max_tokens: number;
  [field: string]: unknown;
}

/**
 * One completion through the balancer; never throws: what the client saw is the outcome.
 * `progress.replica` names the replica once the response's headers arrive (a stream's at once).
 */
export async function request(url: string, body: RequestBody, stream: boolean, t0: number, timeoutMs = 60_000, progress: { replica: string | null } = { replica: null }): Promise<Result> {
  const startedMs = performance.now() - t0;
  const result = (outcome: Outcome, replica: string | null, tokens = 0, detail?: string): Result => ({
    startedMs,
    endedMs: performance.now() - t0,
    outcome,
    stream,
    replica,
    tokens,
    detail,
  });
  let replica: string | null = null;
  try {
    const res = await fetch(`${url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(stream ? { ...body, stream: true, stream_options: { include_usage: true } } : body),
      signal: AbortSignal.timeout(timeoutMs),
    });
    replica = progress.replica = res.headers.get("x-flock-replica");
    if (res.status === 429) return (await res.text(), result("rejected", replica));
    if (res.status !== 200) return result("error", replica, 0, `HTTP ${res.status}`);
    const text = await res.text();
    if (!stream) return result("ok", replica, (JSON.parse(text) as { usage: { completion_tokens: number } }).usage.completion_tokens);
    // A stream is whole when it ends with its usage chunk and [DONE].
    const events = text.split("\n\n").filter((e) => e.startsWith("data: ")).map((e) => e.slice(6));
    const usage = events.length >= 2 && events.at(-1) === "[DONE]" ? (JSON.parse(events.at(-2)!) as { usage?: { completion_tokens: number } }).usage : undefined;
    return usage ? result("ok", replica, usage.completion_tokens) : result("error", replica, 0, "stream ended early");
  } catch (err) {
    const e = err as Error;
    return result(e.name === "TimeoutError" ? "lost" : "error", replica, 0, e.message);
  }
}

