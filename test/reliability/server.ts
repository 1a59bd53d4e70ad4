// flock as a separate process, the way it is deployed: `node --import tsx server/main.ts` with a
// config file, fault injection allowed (NODE_ENV=test, FLOCK_FAULTS=1) and an admin key for
// GET /admin/status. Its JSON log lines are counted as they arrive (errors classified), its
// RSS is read from its own /metrics, and its exit is watched (a crash is a failed run).
import { type ChildProcess, spawn } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { FAULT_HEADER } from "../../engine/faults.js";

export const ROOT = join(import.meta.dirname, "..", "..");

export interface ModelStatus {
  id: string;
  kind: string;
  parallel: number;
  running: number;
  waiting: number;
  /** Routed models: the base id of their expert library, and the contexts its variant cache holds. */
  base?: string;
  contexts?: number;
}

/** One loaded context (a served model, a draft, a fusion small model, …) and its sequences. */
export interface SequenceUsage {
  id: string;
  parallel: number;
  running: number;
  waiting: number;
  admitted?: number;
}

export interface AdminStatus {
  status: string;
  inFlight: number;
  models: ModelStatus[];
  /** Every context the engine holds (drafts, fusion's small models and routed variants too). */
  contexts?: SequenceUsage[];
}

export interface LogCounts {
  lines: number;
  byLevel: Record<string, number>;
  /** Error lines (level ≥ 50) caused by injected engine faults. */
  injectedErrors: number;
  /** Other error lines: each one is a finding. First few kept. */
  unexpectedErrors: number;
  unexpectedSamples: string[];
}

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface ServerProcess {
  url: string;
  pid: number;
  adminKey: string;
  logs: LogCounts;
  /** Last lines of stderr (native logs land there). */
  stderrTail(): string;
  exited: Promise<ExitInfo>;
  alive(): boolean;
  rss(): Promise<number>;
  status(): Promise<AdminStatus>;
  /** SIGTERM and wait (SIGKILL after `graceMs`). */
  stop(graceMs?: number): Promise<ExitInfo>;
}

export interface ServerOptions {
  /** Written as the config file (merged over the defaults below). */
  config: Record<string, unknown>;
  dir: string;
  /** Bound on the wait for "listening" and for /health to turn 200. */
  startTimeoutMs?: number;
}

const LEVELS: Record<number, string> = { 10: "trace", 20: "debug", 30: "info", 40: "warn", 50: "error", 60: "fatal" };

/** Spawns `node --import tsx server/main.ts --config FILE`; `env` is added to this process's. */
export function spawnFlock(configFile: string, env: Record<string, string> = {}): ChildProcess {
  // --expose-gc: the suite asks for a full collection before it reads the RSS (x-flock-fault: gc).
  return spawn(process.execPath, ["--expose-gc", "--import", "tsx", "server/main.ts", "--config", configFile], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
}

export async function startFlockProcess(options: ServerOptions): Promise<ServerProcess> {
  const adminKey = "reliability-admin";
  const configFile = join(options.dir, "flock.json");
  const config = { host: "127.0.0.1", port: 0, logLevel: "info", cacheDir: join(options.dir, "cache"), ...options.config };
  const auth = (config as { auth?: Record<string, unknown> }).auth ?? {};
  writeFileSync(configFile, JSON.stringify({ ...config, auth: { ...auth, adminKey } }, null, 2));
  const child = spawnFlock(configFile, { NODE_ENV: "test", FLOCK_FAULTS: "1" });

  const logs: LogCounts = { lines: 0, byLevel: {}, injectedErrors: 0, unexpectedErrors: 0, unexpectedSamples: [] };
  let stderr = "";
  child.stderr!.on("data", (d: Buffer) => {
    stderr = (stderr + d.toString()).slice(-8_000);
  });
  let exitInfo: ExitInfo | null = null;
  const exited = new Promise<ExitInfo>((resolve) =>
    child.once("exit", (code, signal) => {
      exitInfo = { code, signal };
      resolve(exitInfo);
    }),
  );

  let onListening: (url: string) => void = () => undefined;
  const listening = new Promise<string>((resolve) => (onListening = resolve));
  createInterface({ input: child.stdout! }).on("line", (line) => {
    let entry: { level?: number; msg?: string; url?: string; err?: { type?: string; message?: string } };
    try {
      entry = JSON.parse(line) as typeof entry;
    } catch {
      return; // not a log line
    }
    logs.lines++;
    const level = LEVELS[entry.level ?? 0] ?? String(entry.level);
    logs.byLevel[level] = (logs.byLevel[level] ?? 0) + 1;
    if (entry.msg === "listening" && entry.url) onListening(entry.url);
    if ((entry.level ?? 0) >= 50) {
      if (entry.err?.type === "InjectedEngineFault") logs.injectedErrors++;
      else {
        logs.unexpectedErrors++;
        if (logs.unexpectedSamples.length < 10) logs.unexpectedSamples.push(line.slice(0, 600));
      }
    }
  });

  const timeoutMs = options.startTimeoutMs ?? 120_000;
  const deadline = performance.now() + timeoutMs;
  const fail = async (why: string): Promise<never> => {
    child.kill("SIGKILL");
    await exited;
    throw new Error(`flock did not start: ${why}\nstderr: ${stderr.slice(-2000)}`);
  };
  const url = await Promise.race([
    listening,
    exited.then((e) => `exit:${e.code}:${e.signal}`),
    new Promise<string>((r) => setTimeout(() => r("timeout"), timeoutMs)),
  ]);
  if (!url.startsWith("http")) return fail(url);
  for (let i = 0; ; i++) {
    if (exitInfo) return fail(`exited with ${JSON.stringify(exitInfo)}`);
    const health = await fetch(`${url}/health`).catch(() => null);
    if (health?.status === 200) break;
    if (performance.now() > deadline || i > 10_000) return fail("models did not load in time");
    await new Promise((r) => setTimeout(r, 100));
  }

  const admin = { authorization: `Bearer ${adminKey}` };
  return {
    url,
    pid: child.pid!,
    adminKey,
    logs,
    stderrTail: () => stderr.slice(-2_000),
    exited,
    alive: () => exitInfo === null,
    async rss() {
      await fetch(`${url}/health`, { headers: { [FAULT_HEADER]: "gc" } });
      const text = await (await fetch(`${url}/metrics`)).text();
      const m = text.match(/^flock_process_resident_memory_bytes (\S+)$/m);
      if (!m) throw new Error("no flock_process_resident_memory_bytes in /metrics");
      return Number(m[1]);
    },
    async status() {
      const res = await fetch(`${url}/admin/status`, { headers: admin });
      if (res.status !== 200) throw new Error(`GET /admin/status: ${res.status}`);
      return (await res.json()) as AdminStatus;
    },
    async stop(graceMs = 10_000) {
      if (exitInfo) return exitInfo;
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
      const info = await exited;
      clearTimeout(timer);
      return info;
    },
  };
}
