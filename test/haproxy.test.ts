// flock replicas behind a real HAProxy (Debian's package) run with deploy/haproxy/haproxy.cfg as
// docs/scale-out.md gives it: streams pass through unbuffered, a draining replica (SIGTERM) costs
// no request, a crashed one (SIGKILL) costs only the streams it was serving. Skipped where
// haproxy is missing, unless FLOCK_REQUIRE_HAPROXY=1 (set by .ci/run once it installed it).
import type { ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { haproxyInstalled, type Replica, request, type Result, startHaproxy, startReplica, stop } from "../bench/replica-set.js";
import { forgedManifest, forgedPath } from "./helpers/server.js";

const available = haproxyInstalled();
const required = process.env.FLOCK_REQUIRE_HAPROXY === "1";

describe("HAProxy", () => {
  it.runIf(!available && required)("is installed (FLOCK_REQUIRE_HAPROXY=1)", () => {
    expect(available, "haproxy on PATH").toBe(true);
  });
});

describe.runIf(available)("flock replicas behind HAProxy", { timeout: 120_000 }, () => {
  const dir = mkdtempSync(join(tmpdir(), "flock-haproxy-"));
  let replicas: Replica[] = [];
  let lb: { url: string; process: ChildProcess };
  const manifest = forgedManifest();
  const body = (maxTokens: number, seed: number) => ({
    model: "flock-demo",
    prompt: "The captain",
    max_tokens: maxTokens,
    temperature: 1,
    seed,
    logit_bias: { [String(manifest.vocab.eos)]: -100 },
  });

  beforeAll(async () => {
    const model = forgedPath(manifest.models["flock-demo"].file);
    replicas = await Promise.all(["flock-1", "flock-2", "flock-3"].map((name) => startReplica(name, { model, dir, parallel: 4, contextSize: 4096 })));
    lb = await startHaproxy(replicas, dir);
  }, 120_000);

  afterAll(async () => {
    if (lb) await stop(lb.process);
    await Promise.all(replicas.map((r) => stop(r.process)));
    rmSync(dir, { recursive: true, force: true });
  });

  /** The backends HAProxy counts as up, from its own view: a request per replica name seen. */
  const servedBy = async (count: number) => {
    const names = new Set<string>();
    for (let i = 0; i < count; i++) {
      const r = await request(lb.url, body(1, i), false, 0);
      expect(r.outcome).toBe("ok");
      names.add(r.replica!);
    }
    return names;
  };

  it("balances over every ready replica and passes a stream through as it is written", async () => {
    expect(await servedBy(9)).toEqual(new Set(["flock-1", "flock-2", "flock-3"]));

    const started = performance.now();
    const res = await fetch(`${lb.url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ ...body(2000, 1), stream: true }),
    });
    expect(res.status).toBe(200);
    expect(res.headers.get("x-accel-buffering")).toBe("no");
    expect(res.headers.get("content-type")).toMatch(/^text\/event-stream/);
    const reader = res.body!.getReader();
    let firstMs = -1;
    let text = "";
    const decoder = new TextDecoder();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      text += decoder.decode(value, { stream: true });
      if (firstMs < 0 && text.includes("data: ")) firstMs = performance.now() - started;
    }
    const totalMs = performance.now() - started;
    expect(text.trimEnd().endsWith("data: [DONE]")).toBe(true);
    // 2,000 tokens take a while; a buffered response would arrive all at once at the end.
    expect(firstMs).toBeGreaterThan(0);
    expect(firstMs, `first event at ${firstMs} ms of ${totalMs} ms`).toBeLessThan(totalMs / 4);
  });

  /**
   * `count` requests, `spread` ms apart, streams and not in pairs (so that alternating replicas
   * get both kinds); `fault` runs once they are all under way.
   */
  async function load(count: number, spread: number, fault: () => void, maxTokens = 400) {
    const t0 = performance.now();
    const pending: Array<Promise<Result>> = [];
    for (let i = 0; i < count; i++) {
      pending.push(request(lb.url, body(maxTokens, 100 + i), i % 4 < 2, t0, 60_000));
      await new Promise((r) => setTimeout(r, spread));
    }
    const faultMs = performance.now() - t0;
    fault();
    // And more after the fault, which must all succeed.
    const after: Array<Promise<Result>> = [];
    for (let i = 0; i < count; i++) {
      await new Promise((r) => setTimeout(r, spread));
      after.push(request(lb.url, body(maxTokens, 200 + i), i % 4 < 2, t0, 60_000));
    }
    return { before: await Promise.all(pending), after: await Promise.all(after), faultMs };
  }

  it("a draining replica (SIGTERM) costs no request, and HAProxy stops sending it work", async () => {
    const victim = replicas[2];
    const exited = new Promise((r) => victim.process.once("exit", r));
    const { before, after } = await load(12, 20, () => victim.process.kill("SIGTERM"));
    expect([...before, ...after].filter((r) => r.outcome !== "ok").map((r) => `${r.outcome} ${r.detail}`)).toEqual([]);
    // The drained replica finished what it had: some of the first requests were its.
    expect(before.filter((r) => r.replica === victim.name).length).toBeGreaterThan(0);
    expect(after.filter((r) => r.replica === victim.name && r.startedMs > 0).length).toBe(0);
    await exited;
    expect(victim.process.exitCode).toBe(0);
    expect(await servedBy(4)).toEqual(new Set(["flock-1", "flock-2"]));
  });

  it("a crashed replica (SIGKILL) costs only the streams it was serving; the rest go elsewhere", async () => {
    const victim = replicas[1];
    const { before, after, faultMs } = await load(12, 20, () => victim.process.kill("SIGKILL"));
    const failed = before.filter((r) => r.outcome !== "ok");
    // The crash hit requests in flight (proving the path), and only those: streams whose
    // headers named the victim, begun before the crash and unfinished at it.
    expect(failed.length).toBeGreaterThan(0);
    for (const r of failed) {
      expect(r.outcome).toBe("error");
      expect(r.stream).toBe(true);
      expect(r.replica).toBe(victim.name);
      expect(r.startedMs).toBeLessThan(faultMs);
      expect(r.endedMs).toBeGreaterThan(faultMs);
    }
    // Requests without a stream that were on the victim were retried on another replica
    // (retry-on empty-response) and succeeded.
    expect(before.filter((r) => !r.stream).every((r) => r.outcome === "ok" && r.replica !== victim.name)).toBe(true);
    expect(after.map((r) => r.outcome)).toEqual(after.map(() => "ok"));
    expect(new Set(after.map((r) => r.replica))).toEqual(new Set(["flock-1"]));
  });
});
