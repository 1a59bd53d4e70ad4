// The bounded reliability run CI makes (npm run test:reliability is the full one): flock as a
// child process on the built-in demo, every pipeline kind under concurrent load with clients
// that disconnect, reset, read slowly or cancel during prefill and engine failures injected
// mid-generation; fast-check bodies for both endpoints; no 5xx, no malformed stream, nothing
// left allocated, RSS bounded, a clean SIGTERM exit; and the startup faults. It asserts the
// correctness properties only — the figures it prints are not checked (shared, noisy machines).
import { describe, expect, it } from "vitest";
import { printReport } from "./reliability/report.js";
import { CI, runReliability } from "./reliability/suite.js";

describe("reliability (bounded)", () => {
  it(
    `${CI.requests} requests from ${CI.concurrency} clients with faults, ${CI.fuzzRuns} fuzzed bodies per endpoint, startup faults: every check passes`,
    async () => {
      const report = await runReliability(CI);
      printReport(report);
      const failed = report.checks.filter((c) => !c.passed).map((c) => `${c.name}: ${c.detail}`);
      expect(failed).toEqual([]);
      // The run really covered what it claims.
      for (const kind of ["plain", "speculative", "fusion"]) expect(report.load.byKind[kind] ?? 0).toBeGreaterThan(0);
      for (const fault of ["disconnect", "reset", "slow-reader", "cancel-prefill", "engine-error"]) expect(report.load.byFault[fault]?.requests ?? 0).toBeGreaterThan(0);
      expect(report.fuzz.map((f) => f.cases)).toEqual([CI.fuzzRuns, CI.fuzzRuns]);
      expect(report.startup.length).toBeGreaterThanOrEqual(4);
    },
    300_000,
  );
});
