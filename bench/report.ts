// Shared by the benchmark scripts: machine and version facts, a printed table, a JSON file.
import { spawnSync } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { cpus, totalmem } from "node:os";
import { dirname, join } from "node:path";
import { parseArgs } from "node:util";

export interface BenchReport {
  benchmark: string;
  command: string;
  settings: Record<string, unknown>;
  rows: Array<Record<string, string | number | boolean | null>>;
}

export function machine() {
  const root = join(import.meta.dirname, "..");
  const version = (pkg: string) => (JSON.parse(readFileSync(join(root, "node_modules", pkg, "package.json"), "utf8")) as { version: string }).version;
  return {
    cpu: cpus()[0]?.model ?? "unknown",
    cores: cpus().length,
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    node: process.version,
    nodeLlamaCpp: version("node-llama-cpp"),
    date: new Date().toISOString(),
    commit: commit(root),
  };
}

/** The commit the code was at, `+` when the working tree had changes; null outside a git checkout. */
function commit(root: string): string | null {
  const head = spawnSync("git", ["rev-parse", "--short", "HEAD"], { cwd: root, encoding: "utf8" });
  if (head.status !== 0) return null;
  const dirty = spawnSync("git", ["status", "--porcelain", "--untracked-files=no"], { cwd: root, encoding: "utf8" }).stdout.trim() !== "";
  return `${head.stdout.trim()}${dirty ? "+" : ""}`;
}

/** `--json FILE` from the command line (after `npm run bench:x --`). */
export function jsonPathArg(defaultName: string): string {
  const { values } = parseArgs({ options: { json: { type: "string" } }, strict: false });
  return typeof values.json === "string" ? values.json : join(import.meta.dirname, "results", defaultName);
}

export function printTable(rows: BenchReport["rows"]): void {
  const columns = Object.keys(rows[0] ?? {});
  const cell = (v: unknown) => (typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toFixed(3)) : String(v));
  const widths = columns.map((c) => Math.max(c.length, ...rows.map((r) => cell(r[c]).length)));
  const line = (values: string[]) => `| ${values.map((v, i) => v.padEnd(widths[i])).join(" | ")} |`;
  console.log(line(columns));
  console.log(`|${widths.map((w) => "-".repeat(w + 2)).join("|")}|`);
  for (const r of rows) console.log(line(columns.map((c) => cell(r[c]))));
}

export function writeReport(path: string, report: BenchReport): void {
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, `${JSON.stringify({ ...report, machine: machine() }, null, 2)}\n`);
  console.log(`\nwrote ${path}`);
}
