// The reliability suite: starts flock as its own process on the built-in demo (every pipeline
// kind it serves), warms it up, measures a baseline, runs the load phase with faults mixed in,
// fuzzes both generation endpoints, checks that nothing leaked and that the server still shuts
// down cleanly, then tries the startup faults. Returns figures and pass/fail checks; run.ts
// prints them, the CI test asserts them.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { readManifest, type Manifest } from "../../forge/manifest.js";
import { type DemoTokenizer, demoDir } from "../../server/demo.js";
import { START_STATE } from "../../forge/chain.js";
import { fuzzEndpoint, type FuzzResult } from "./fuzz.js";
import { type ClientFault, type Outcome, percentile, runLoad } from "./load.js";
import { type AdminStatus, type ServerProcess, startFlockProcess } from "./server.js";
import { type ExpertFaultResult, runExpertFault, runStartupFaults, type StartupResult } from "./startup.js";

export interface ReliabilityOptions {
  requests: number;
  concurrency: number;
  warmupRequests: number;
  fuzzRuns: number;
  fuzzMaxDepth: number;
  seed: number;
  /** Share of load requests per fault. */
  faultRates: Partial<Record<Exclude<ClientFault, "none">, number>>;
  /** Streams nobody reads, in a phase before the warm-up (0: none). */
  neverReaders: number;
  /** Server-side limits the fuzz probes (limits.maxN, limits.maxTokens). */
  maxN: number;
  maxTokens: number;
  /** The built-in demo's tokenizer (--demo-tokenizer). */
  demoTokenizer: DemoTokenizer;
  /** CPU threads per context (null: flock's default). */
  threads: number | null;
  /** Bound on the load phase and on each fuzzed endpoint, ms. */
  loadBudgetMs: number;
  fuzzBudgetMs: number;
  startupFaults: boolean;
  /** RSS after the run may exceed the warm baseline by this fraction. */
  rssTolerance: number;
  log?: (line: string) => void;
}

export const FULL: ReliabilityOptions = {
  requests: 2000,
  concurrency: 64,
  warmupRequests: 400,
  fuzzRuns: 1000,
  fuzzMaxDepth: 100_000,
  seed: 8,
  faultRates: { disconnect: 0.05, reset: 0.05, "slow-reader": 0.03, "cancel-prefill": 0.02, "engine-error": 0.03 },
  neverReaders: 12,
  maxN: 8,
  maxTokens: 64,
  demoTokenizer: "qwen2",
  threads: null,
  loadBudgetMs: 20 * 60_000,
  fuzzBudgetMs: 10 * 60_000,
  startupFaults: true,
  rssTolerance: 0.1,
};

/** The bounded version CI runs (test/reliability.test.ts): same phases, smaller counts. */
export const CI: ReliabilityOptions = {
  ...FULL,
  requests: 300,
  concurrency: 32,
  warmupRequests: 80,
  fuzzRuns: 150,
  fuzzMaxDepth: 20_000,
  loadBudgetMs: 120_000,
  fuzzBudgetMs: 60_000,
  // A short run's RSS settles less: the bound still catches a leak per request.
  rssTolerance: 0.15,
  // Each never-reader holds a client for the write timeout and more; test/hostile covers it in CI.
  neverReaders: 0,
  // What this run checks (faults, leaks, malformed streams) does not depend on the vocabulary,
  // and at 151,936 tokens a 2-core machine needs four times as long for it; the full run and
  // test/cli.test.ts serve the default Qwen 2 demo.
  demoTokenizer: "forge",
};

export interface Check {
  name: string;
  passed: boolean;
  detail: string;
}

export interface ReliabilityReport {
  options: Omit<ReliabilityOptions, "log">;
  models: Record<string, string[]>;
  load: {
    requests: number;
    notSent: number;
    wallMs: number;
    byClass: Record<string, number>;
    byStatus: Record<string, number>;
    /** Per fault: requests, those whose fault ran its course as it should, those a full queue turned away (429) before it could. */
    byFault: Record<string, { requests: number; handled: number; turnedAway: number }>;
    byKind: Record<string, number>;
    streams: number;
    ttftMs: { p50: number; p99: number; n: number };
    latencyMs: { p50: number; p99: number; n: number };
    cancelledBeforeFirstToken: number;
    problems: Array<Pick<Outcome, "index" | "model" | "endpoint" | "stream" | "fault" | "status" | "class" | "detail">>;
  };
  server: {
    finishedByReason: Record<string, number>;
    requestsByStatus: Record<string, number>;
    errorLogLines: { injected: number; unexpected: number; samples: string[] };
    rssBytes: { baseline: number; afterLoad: number; afterRun: number };
    contexts: { baseline: { fixed: number; variants: number; cached: number }; afterRun: { fixed: number; variants: number; cached: number } };
    leftAllocated: { afterLoad: string[]; afterRun: string[] };
    exit: { code: number | null; signal: string | null } | null;
  };
  fuzz: FuzzResult[];
  startup: StartupResult[];
  expertFault: ExpertFaultResult | null;
  checks: Check[];
}

/** The server's --write-timeout in the run, seconds. */
const WRITE_TIMEOUT_S = 5;
/**
 * max_tokens of a never-reader's choices: with n = maxN and 20 alternatives per token, megabytes,
 * more than loopback socket buffers take in (a few hundred kilobytes fit and never stall).
 */
const NEVER_READER_TOKENS = 1024;
/** Never-readers at once in their phase. */
const NEVER_READER_CONCURRENCY = 4;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Contexts and their sequences still in use; empty when everything is free. */
function allocated(status: AdminStatus): string[] {
  const busy: string[] = [];
  if (status.inFlight !== 0) busy.push(`${status.inFlight} requests in flight`);
  const contexts = status.contexts ?? status.models;
  for (const c of contexts) {
    if (c.running !== 0 || c.waiting !== 0) busy.push(`${c.id}: ${c.running} running, ${c.waiting} waiting`);
    if ("admitted" in c && c.admitted !== undefined && c.admitted !== 0) busy.push(`${c.id}: ${c.admitted} admitted`);
  }
  return busy;
}

/**
 * The engine's contexts: those it loaded at startup, and routed variants (made on demand, at
 * most a bounded number per expert library, retired ones disposed once idle). `cached` is what
 * the libraries say they hold: more variant contexts than that means retired ones were kept.
 */
function census(status: AdminStatus): { fixed: number; variants: number; cached: number } {
  const contexts = status.contexts ?? [];
  const variants = contexts.filter((c) => /:variant-\d+$/.test(c.id)).length;
  const libraries = new Map(status.models.filter((m) => m.kind === "routed" && m.base !== undefined).map((m) => [m.base!, m.contexts ?? 0]));
  return { fixed: contexts.length - variants, variants, cached: [...libraries.values()].reduce((a, b) => a + b, 0) };
}

/** Waits (bounded) for the server to be idle; returns what is still allocated then. */
async function settle(server: ServerProcess, timeoutMs = 15_000): Promise<string[]> {
  const deadline = performance.now() + timeoutMs;
  let busy: string[] = [];
  for (let i = 0; i < 1_000 && performance.now() < deadline; i++) {
    busy = allocated(await server.status());
    if (busy.length === 0) return busy;
    await sleep(50);
  }
  return busy;
}

async function medianRss(server: ServerProcess): Promise<number> {
  const samples: number[] = [];
  for (let i = 0; i < 5; i++) {
    samples.push(await server.rss());
    await sleep(200);
  }
  return percentile(samples, 50);
}

async function sumByLabel(url: string, metric: string, label: string): Promise<Record<string, number>> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const out: Record<string, number> = {};
  const re = new RegExp(`^${metric}\\{([^}]*)\\} (\\S+)$`, "gm");
  for (const m of text.matchAll(re)) {
    const value = m[1].match(new RegExp(`${label}="([^"]*)"`))?.[1] ?? "";
    out[value] = (out[value] ?? 0) + Number(m[2]);
  }
  return out;
}

function vocabularyFacts(manifest: Manifest): { endTokens: number[]; wordTokens: number[] } {
  // The language's words: the tokens with a chain state of their own (whatever the tokenizer).
  const wordTokens = manifest.states.ofToken.flatMap((state, token) => (state !== START_STATE ? [token] : []));
  return { endTokens: [manifest.vocab.eos, manifest.vocab.imEnd], wordTokens };
}

function count<T>(items: readonly T[], key: (item: T) => string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const item of items) out[key(item)] = (out[key(item)] ?? 0) + 1;
  return out;
}

export async function runReliability(options: ReliabilityOptions): Promise<ReliabilityReport> {
  const log = options.log ?? (() => undefined);
  const dir = mkdtempSync(join(tmpdir(), "flock-reliability-"));
  const { log: _log, ...settings } = options;
  const checks: Check[] = [];
  const check = (name: string, passed: boolean, detail: string) => checks.push({ name, passed, detail });
  let server: ServerProcess | null = null;
  try {
    log(`starting flock (built-in demo, ${options.demoTokenizer} tokenizer) as a child process…`);
    server = await startFlockProcess({
      dir,
      config: {
        ...(options.threads ? { threads: options.threads } : {}),
        demoTokenizer: options.demoTokenizer,
        // Limits the fuzz runs into; a request timeout bounds any case that would run long.
        // Never-readers ask for more (NEVER_READER_TOKENS): output past what socket buffers hold.
        limits: { maxN: options.maxN, maxTokens: Math.max(options.maxTokens, NEVER_READER_TOKENS), requestTimeout: 120 },
        // Keep-alive comments appear in long queue waits: the stream checker must accept them.
        keepAlive: 1,
        // Streams nobody reads are given up on after this (never-reader clients).
        writeTimeout: WRITE_TIMEOUT_S,
      },
    });
    const srv = server;
    const forgeDir = demoDir(join(dir, "cache"), options.demoTokenizer);
    const manifest = readManifest(forgeDir);
    const status = await srv.status();
    const modelsByKind: Record<string, string[]> = {};
    for (const m of status.models) (modelsByKind[m.kind] ??= []).push(m.id);
    log(`serving ${status.models.length} model ids: ${Object.entries(modelsByKind).map(([k, ids]) => `${k} ${ids.length}`).join(", ")}`);
    const vocab = vocabularyFacts(manifest);
    const load = (requests: number, seed: number, budgetMs: number, faultRates = options.faultRates, concurrency = options.concurrency) =>
      runLoad(
        {
          url: srv.url,
          requests,
          concurrency,
          seed,
          modelsByKind,
          ...vocab,
          faultRates,
          maxTokens: Math.min(48, options.maxTokens),
          requestTimeoutMs: 120_000,
          writeTimeoutMs: WRITE_TIMEOUT_S * 1000,
          maxN: options.maxN,
          neverReaderTokens: NEVER_READER_TOKENS,
          budgetMs,
        },
        (done) => {
          if (done % 250 === 0) log(`  ${done}/${requests}`);
        },
      );

    // Streams nobody reads: a phase of their own, first — megabytes of output each, more memory
    // than anything else a client can make the server hold, so the warm-up and the baseline come
    // after their high-water mark and the RSS check sees leaks, not it. A few at a time: one
    // queued behind others for a model's sequences is waiting, not stalled, and its client's
    // patience is bounded.
    const faultRates = options.faultRates;
    let neverReaders: Outcome[] = [];
    let stalledChoices = 0;
    if (options.neverReaders > 0) {
      log(`never-readers: ${options.neverReaders} streams nobody reads, ${NEVER_READER_CONCURRENCY} at a time`);
      const before = await sumByLabel(srv.url, "flock_request_finished_total", "reason");
      neverReaders = (await load(options.neverReaders, options.seed + 2, options.loadBudgetMs, { "never-reader": 1 }, NEVER_READER_CONCURRENCY)).outcomes;
      await settle(srv);
      stalledChoices = ((await sumByLabel(srv.url, "flock_request_finished_total", "reason")).stalled ?? 0) - (before.stalled ?? 0);
    }

    // Warm-up: every code path once (faults included), so the baseline is a warm process.
    log(`warm-up: ${options.warmupRequests} requests`);
    await load(options.warmupRequests, options.seed + 1, options.loadBudgetMs, faultRates);
    await settle(srv);
    await sleep(1_000);
    const baselineRss = await medianRss(srv);
    const baselineContexts = census(await srv.status());
    const injectedBefore = srv.logs.injectedErrors;
    const unexpectedBefore = srv.logs.unexpectedErrors;
    const finishedBefore = await sumByLabel(srv.url, "flock_request_finished_total", "reason");
    const statusBefore = await sumByLabel(srv.url, "flock_requests_total", "status");

    log(`load: ${options.requests} requests, ${options.concurrency} concurrent clients`);
    const run = await load(options.requests, options.seed, options.loadBudgetMs, faultRates);
    // The never-readers' outcomes count with the load's (figures, transport failures, problems).
    const outcomes = [...neverReaders, ...run.outcomes];
    const leftAfterLoad = await settle(srv);
    await sleep(1_000);
    const afterLoadRss = await medianRss(srv);
    const finishedAfter = await sumByLabel(srv.url, "flock_request_finished_total", "reason");
    const statusAfter = await sumByLabel(srv.url, "flock_requests_total", "status");
    const delta = (after: Record<string, number>, before: Record<string, number>) =>
      Object.fromEntries(Object.entries(after).map(([k, v]) => [k, v - (before[k] ?? 0)]).filter(([, v]) => (v as number) > 0));
    const injectedDuringLoad = srv.logs.injectedErrors - injectedBefore;

    const fuzz: FuzzResult[] = [];
    if (options.fuzzRuns > 0) {
      const experts = Object.values(manifest.adapters).filter((a) => a.base === "flock-weak").map((a) => a.domain);
      for (const endpoint of ["chat", "completions"] as const) {
        log(`fuzz: ${options.fuzzRuns} bodies for ${endpoint}`);
        fuzz.push(
          await fuzzEndpoint(
            {
              url: srv.url,
              models: status.models.map((m) => m.id),
              kinds: Object.fromEntries(status.models.map((m) => [m.id, m.kind])),
              experts,
              maxN: options.maxN,
              maxTokens: options.maxTokens,
              runs: options.fuzzRuns,
              seed: options.seed + (endpoint === "chat" ? 11 : 12),
              budgetMs: options.fuzzBudgetMs,
              maxDepth: options.fuzzMaxDepth,
              alive: srv.alive,
            },
            endpoint,
          ),
        );
      }
    }

    const leftAfterRun = srv.alive() ? await settle(srv) : ["the server exited"];
    await sleep(1_000);
    const afterRunRss = srv.alive() ? await medianRss(srv) : Number.NaN;
    const contextsAfter = srv.alive() ? census(await srv.status()) : { fixed: Number.NaN, variants: Number.NaN, cached: Number.NaN };
    const alive = srv.alive();
    const exit = await srv.stop(30_000);
    server = null;

    let startup: StartupResult[] = [];
    let expertFault: ExpertFaultResult | null = null;
    if (options.startupFaults) {
      log("startup faults…");
      [startup, expertFault] = await Promise.all([runStartupFaults(forgeDir, manifest, dir), runExpertFault(forgeDir, manifest, dir)]);
    }

    // --- figures
    const normal = outcomes.filter((o) => o.fault === "none" && o.class === "ok");
    const ttft = normal.filter((o) => o.stream && o.ttftMs !== undefined).map((o) => o.ttftMs!);
    const latency = normal.map((o) => o.latencyMs);
    const byFault: Record<string, { requests: number; handled: number; turnedAway: number }> = {};
    for (const o of outcomes) {
      const f = (byFault[o.fault] ??= { requests: 0, handled: 0, turnedAway: 0 });
      f.requests++;
      if (o.status === 429) f.turnedAway++;
      if (o.class === (o.fault === "none" ? "ok" : "fault-handled") || (o.fault === "none" && o.class === "4xx" && o.status === 429)) f.handled++;
    }
    const problems = outcomes
      .filter((o) => o.class !== "ok" && o.class !== "fault-handled" && !(o.class === "4xx" && o.status === 429))
      .slice(0, 20)
      .map(({ index, model, endpoint, stream, fault, status: st, class: cls, detail }) => ({ index, model, endpoint, stream, fault, status: st, class: cls, detail }));
    const byClass = count(outcomes, (o) => o.class);
    const report: ReliabilityReport = {
      options: settings,
      models: modelsByKind,
      load: {
        requests: outcomes.length,
        notSent: run.notSent,
        wallMs: run.wallMs,
        byClass,
        byStatus: count(outcomes, (o) => String(o.status)),
        byFault,
        byKind: count(outcomes, (o) => o.kind),
        streams: outcomes.filter((o) => o.stream).length,
        ttftMs: { p50: percentile(ttft, 50), p99: percentile(ttft, 99), n: ttft.length },
        latencyMs: { p50: percentile(latency, 50), p99: percentile(latency, 99), n: latency.length },
        cancelledBeforeFirstToken: outcomes.filter((o) => o.fault === "cancel-prefill" && o.beforeFirstToken).length,
        problems,
      },
      server: {
        finishedByReason: delta(finishedAfter, finishedBefore),
        requestsByStatus: delta(statusAfter, statusBefore),
        errorLogLines: { injected: srv.logs.injectedErrors, unexpected: srv.logs.unexpectedErrors, samples: srv.logs.unexpectedSamples },
        rssBytes: { baseline: baselineRss, afterLoad: afterLoadRss, afterRun: afterRunRss },
        contexts: { baseline: baselineContexts, afterRun: contextsAfter },
        leftAllocated: { afterLoad: leftAfterLoad, afterRun: leftAfterRun },
        exit: { code: exit.code, signal: exit.signal },
      },
      fuzz,
      startup,
      expertFault,
      checks,
    };

    // --- checks
    const n = (cls: string) => byClass[cls] ?? 0;
    check("every planned request was sent", run.notSent === 0, `${run.notSent} not sent within the load budget`);
    check("no 5xx", n("5xx") === 0, `${n("5xx")} unexplained 5xx (injected engine faults on non-streamed requests answer 500 and are counted as handled)`);
    check("no malformed response or SSE stream", n("malformed") === 0, `${n("malformed")} malformed`);
    check("every stream ended with [DONE] or an error event, no unexpected error event", n("error-event") === 0, `${n("error-event")} unexpected error events or faults that did not fire`);
    check("no transport failure or client timeout", n("transport") === 0, `${n("transport")} transport failures`);
    // A request turned away by a full queue (429) never reached the engine: no fault could fire.
    const engineFaults = outcomes.filter((o) => o.fault === "engine-error" && o.status !== 429);
    const engineHandled = engineFaults.filter((o) => o.class === "fault-handled").length;
    check("injected engine failures reached the client as OpenAI-shaped errors", engineHandled === engineFaults.length, `${engineHandled}/${engineFaults.length}`);
    check("server logged one error per injected fault and no other error", srv.logs.unexpectedErrors === unexpectedBefore && srv.logs.unexpectedErrors === 0 && injectedDuringLoad === engineFaults.length, `${injectedDuringLoad} injected-fault error lines for ${engineFaults.length} faults; ${srv.logs.unexpectedErrors} other error lines`);
    const neverRead = neverReaders.filter((o) => o.status === 200);
    if (neverReaders.length > 0) {
      check(
        "streams nobody read were ended by the write timeout",
        neverRead.length > 0 && neverRead.every((o) => o.class === "fault-handled") && stalledChoices > 0,
        `${neverRead.filter((o) => o.class === "fault-handled").length}/${neverRead.length} ended (${neverReaders.length - neverRead.length} turned away); ${stalledChoices} choices finished as stalled`,
      );
    }
    check("no sequence or request left allocated after the load", leftAfterLoad.length === 0, leftAfterLoad.join("; ") || "all free");
    check("no sequence or request left allocated at the end", leftAfterRun.length === 0, leftAfterRun.join("; ") || "all free");
    check(
      "no context leaked",
      contextsAfter.fixed === baselineContexts.fixed && contextsAfter.variants === contextsAfter.cached,
      `${baselineContexts.fixed} → ${contextsAfter.fixed} contexts loaded at startup; ${contextsAfter.variants} routed variant contexts, ${contextsAfter.cached} in the libraries' caches`,
    );
    const growth = afterRunRss / baselineRss - 1;
    check(`RSS at the end within ${Math.round(options.rssTolerance * 100)}% of the warm baseline`, growth <= options.rssTolerance, `${(baselineRss / 2 ** 20).toFixed(0)} MiB → ${(afterRunRss / 2 ** 20).toFixed(0)} MiB (${(growth * 100).toFixed(1)}%)`);
    for (const f of fuzz) {
      check(`fuzz ${f.endpoint}: only 2xx or OpenAI-shaped 4xx`, !f.failed, f.failed ? `${f.error} — body: ${f.counterexample}` : `${f.cases} cases`);
    }
    check("the server stayed up and shut down cleanly (SIGTERM → exit 0)", alive && exit.code === 0 && exit.signal === null, `exit ${exit.code} ${exit.signal ?? ""}`.trim());
    for (const s of startup) {
      check(`startup fault: ${s.name} → exit 1 naming the model and the file`, s.passed, s.exit === "timeout" ? "no exit in time" : `exit ${s.exit.code}${s.exit.signal ? ` (${s.exit.signal})` : ""}: ${s.message}`);
    }
    if (expertFault) {
      check("a routed expert built for another base is left out, listed as failed, and the model serves", expertFault.passed, expertFault.reason || "not listed as failed");
    }
    return report;
  } finally {
    if (server) await server.stop(5_000).catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  }
}
