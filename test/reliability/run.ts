// npm run test:reliability [-- --json FILE] [--requests N] [--concurrency N] [--fuzz-runs N]
//                                [--seed N] [--threads N] [--quick] [--no-startup]
// The full reliability run (load with faults, fuzzing, leaks, startup faults) against flock's
// built-in demo in a child process. Prints a table of figures and the checks, writes JSON
// (default bench/results/reliability.json), exits 1 when a check failed. --quick is the CI size.
import { join } from "node:path";
import { parseArgs } from "node:util";
import { machine, writeReport } from "../../bench/report.js";
import { figureRows, printReport } from "./report.js";
import { CI, FULL, type ReliabilityOptions, runReliability } from "./suite.js";

const { values } = parseArgs({
  options: {
    json: { type: "string" },
    requests: { type: "string" },
    concurrency: { type: "string" },
    "fuzz-runs": { type: "string" },
    seed: { type: "string" },
    threads: { type: "string" },
    quick: { type: "boolean" },
    "no-startup": { type: "boolean" },
  },
  strict: true,
});

const base = values.quick ? CI : FULL;
const options: ReliabilityOptions = {
  ...base,
  ...(values.requests ? { requests: Number(values.requests) } : {}),
  ...(values.concurrency ? { concurrency: Number(values.concurrency) } : {}),
  ...(values["fuzz-runs"] ? { fuzzRuns: Number(values["fuzz-runs"]) } : {}),
  ...(values.seed ? { seed: Number(values.seed) } : {}),
  ...(values.threads ? { threads: Number(values.threads) } : {}),
  ...(values["no-startup"] ? { startupFaults: false } : {}),
  log: (line) => console.log(line),
};
const out = values.json ?? join(import.meta.dirname, "..", "..", "bench", "results", "reliability.json");

const started = performance.now();
const report = await runReliability(options);
const seconds = (performance.now() - started) / 1000;

printReport(report);
writeReport(out, {
  benchmark: "reliability",
  command: `npm run test:reliability -- ${process.argv.slice(2).join(" ")}`.trim(),
  settings: { ...report.options, seconds: Math.round(seconds), machine: machine() },
  rows: figureRows(report),
  ...{ report },
} as Parameters<typeof writeReport>[1]);
const failed = report.checks.filter((c) => !c.passed);
console.log(failed.length === 0 ? `\nall ${report.checks.length} checks passed in ${seconds.toFixed(0)} s` : `\n${failed.length} of ${report.checks.length} checks FAILED`);
process.exit(failed.length === 0 ? 0 : 1);
