// npm run bench:replicas [-- --replicas 1,2,3] [--seconds 20] [--tokens 64] [--load 1.2] [--json FILE]
//
// flock replicas behind a real load balancer: N flock processes on loopback (the forged demo
// model, one thread and two sequences each) behind HAProxy from Debian's archive, configured by
// deploy/haproxy/haproxy.cfg exactly as docs/scale-out.md tells users to (only the bind address
// and the server lines are replaced). An open-loop load (Poisson arrivals, half of them streams)
// at a fixed rate: `--load` times what one replica completes when kept busy, measured first.
// Rows: N = 1, 2, 3 steady; then, for N >= 2, one replica killed mid-run (SIGKILL: a crash) and
// one stopped (SIGTERM: a drain, as Kubernetes stops a pod).
//
// Each request ends as ok, rejected (429: a full queue, the server's back-pressure), error (a
// clean HTTP error or a stream cut short, which the client sees as an error) or lost (nothing
// before the client's timeout). The script exits 1 when a request is lost, when an error hits a
// request that was not in flight at the kill, or when the drain costs any request at all.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { forge } from "../forge/presets.js";
import { haproxyInstalled, haproxyVersion, type Outcome, request as send, type Result, startHaproxy, startReplica, stop } from "./replica-set.js";
import { jsonPathArg, printTable, writeReport, type BenchReport } from "./report.js";

const { values } = parseArgs({
  options: { replicas: { type: "string" }, seconds: { type: "string" }, tokens: { type: "string" }, load: { type: "string" }, json: { type: "string" } },
  strict: false,
});
const COUNTS = String(values.replicas ?? "1,2,3").split(",").map(Number);
const SECONDS = Number(values.seconds ?? 20);
const TOKENS = Number(values.tokens ?? 64);
const LOAD = Number(values.load ?? 1.2);
const out = jsonPathArg("replicas.json");

if (!haproxyInstalled()) {
  console.error("bench:replicas needs HAProxy: apt-get install haproxy (Debian's package)");
  process.exit(1);
}

const dir = mkdtempSync(join(tmpdir(), "flock-bench-replicas-"));
const manifest = forge({ outDir: dir, preset: "demo", seed: 1 });
const modelFile = join(dir, manifest.models["flock-demo"].file);
const request = (url: string, seed: number, stream: boolean, t0: number, progress?: { replica: string | null }) =>
  send(url, { model: "flock-demo", prompt: "The captain", max_tokens: TOKENS, temperature: 1, seed, logit_bias: { [String(manifest.vocab.eos)]: -100 } }, stream, t0, 60_000, progress);

/** Requests completed per second by one replica kept busy (closed loop, 2 at a time). */
async function capacity(url: string): Promise<number> {
  const until = performance.now() + 5_000;
  let done = 0;
  const worker = async () => {
    for (let seed = 0; performance.now() < until; seed++) if ((await request(url, seed, false, 0)).outcome === "ok") done++;
  };
  const t = performance.now();
  await Promise.all([worker(), worker()]);
  return done / ((performance.now() - t) / 1000);
}

/**
 * Poisson arrivals at `rate` for SECONDS. `fault` runs once, from the middle on, at the first
 * arrival that finds a stream of `victim` under way (so that a crash hits a request in flight).
 */
async function openLoop(url: string, rate: number, victim: string, fault?: () => void): Promise<{ results: Result[]; faultMs: number | null }> {
  const t0 = performance.now();
  const pending: Array<Promise<Result>> = [];
  let next = 0;
  let faultMs: number | null = null;
  let seed = 1;
  const active = new Set<{ replica: string | null; stream: boolean }>();
  // A fixed arrival sequence (seeded exponential gaps), the same for every row.
  let state = 12345;
  const uniform = () => ((state = (state * 1103515245 + 12345) % 2 ** 31) + 1) / (2 ** 31 + 1);
  while (next < SECONDS * 1000) {
    const now = performance.now() - t0;
    if (now < next) await new Promise((r) => setTimeout(r, next - now));
    if (fault && faultMs === null && next >= (SECONDS * 1000) / 2 && [...active].some((p) => p.stream && p.replica === victim)) {
      faultMs = performance.now() - t0;
      fault();
    }
    const progress = { replica: null as string | null, stream: seed % 2 === 0 };
    active.add(progress);
    pending.push(request(url, seed, progress.stream, t0, progress).finally(() => active.delete(progress)));
    seed++;
    next += (-Math.log(uniform()) / rate) * 1000;
  }
  return { results: await Promise.all(pending), faultMs };
}

const percentile = (xs: number[], p: number) => {
  if (xs.length === 0) return null;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)];
};

const rows: BenchReport["rows"] = [];
const failures: string[] = [];
let rate = 0;
try {
  for (const n of COUNTS) {
    const faults: Array<"none" | "SIGKILL" | "SIGTERM"> = n >= 2 ? ["none", "SIGKILL", "SIGTERM"] : ["none"];
    for (const fault of faults) {
      const replicas = await Promise.all(Array.from({ length: n }, (_, i) => startReplica(`flock-${i + 1}`, { model: modelFile, dir })));
      const lb = await startHaproxy(replicas, dir);
      try {
        if (rate === 0) {
          const perReplica = await capacity(lb.url);
          rate = LOAD * perReplica;
          console.error(`bench: one replica completes ${perReplica.toFixed(2)} requests/s; offered load ${rate.toFixed(2)}/s`);
        }
        const victim = replicas[replicas.length - 1];
        const { results, faultMs } = await openLoop(lb.url, rate, victim.name, fault === "none" ? undefined : () => victim.process.kill(fault));
        const count = (o: Outcome) => results.filter((r) => r.outcome === o).length;
        const ok = results.filter((r) => r.outcome === "ok");
        const latencies = ok.map((r) => r.endedMs - r.startedMs);
        const spanS = Math.max(...results.map((r) => r.endedMs)) / 1000;
        // Errors are allowed only for requests in flight on the crashed replica: begun before the
        // crash, ended after it, and not answered by another replica.
        const errors = results.filter((r) => r.outcome === "error");
        const inFlightOnVictim = (r: Result) => faultMs !== null && r.startedMs < faultMs && r.endedMs > faultMs && (r.replica === null || r.replica === victim.name);
        const outside = errors.filter((r) => fault !== "SIGKILL" || !inFlightOnVictim(r));
        const row = {
          replicas: n,
          fault,
          "offered/s": Number(rate.toFixed(2)),
          requests: results.length,
          ok: ok.length,
          "rejected (429)": count("rejected"),
          "in flight at fault": faultMs === null ? null : results.filter((r) => r.startedMs < faultMs && r.endedMs > faultMs).length,
          errors: errors.length,
          lost: count("lost"),
          "completed/s": Number((ok.length / spanS).toFixed(2)),
          "tokens/s": Number((ok.reduce((s, r) => s + r.tokens, 0) / spanS).toFixed(1)),
          "p50 ms": Math.round(percentile(latencies, 50) ?? 0),
          "p99 ms": Math.round(percentile(latencies, 99) ?? 0),
        };
        rows.push(row);
        console.error(`bench: ${JSON.stringify(row)}`);
        if (fault !== "none" && faultMs === null) failures.push(`${n} replicas, ${fault}: no stream of ${victim.name} was in flight in the second half; nothing was killed`);
        if (row.lost > 0) failures.push(`${n} replicas, ${fault}: ${row.lost} request(s) lost`);
        if (outside.length > 0) failures.push(`${n} replicas, ${fault}: ${outside.length} error(s) outside the crash (${outside.slice(0, 3).map((r) => r.detail).join("; ")})`);
        if (fault === "SIGTERM" && errors.length > 0) failures.push(`${n} replicas, SIGTERM: the drain cost ${errors.length} request(s) (${errors.slice(0, 3).map((r) => r.detail).join("; ")})`);
      } finally {
        await stop(lb.process);
        await Promise.all(replicas.map((r) => stop(r.process)));
      }
    }
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}

printTable(rows);
writeReport(out, {
  benchmark: "replicas",
  command: `npm run bench:replicas${process.argv.length > 2 ? ` -- ${process.argv.slice(2).join(" ")}` : ""}`,
  settings: { seconds: SECONDS, tokens: TOKENS, load: LOAD, threadsPerReplica: 1, parallelPerReplica: 2, haproxy: haproxyVersion() },
  rows,
});
if (failures.length > 0) {
  for (const f of failures) console.error(`bench:replicas: ${f}`);
  process.exit(1);
}
