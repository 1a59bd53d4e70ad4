// The reliability report as tables: figures, then checks, then the first problems seen.
import { printTable } from "../../bench/report.js";
import type { ReliabilityReport } from "./suite.js";

export function figureRows(r: ReliabilityReport): Array<Record<string, string>> {
  const ms = (v: number) => (Number.isFinite(v) ? `${v.toFixed(1)} ms` : "–");
  const mib = (v: number) => (Number.isFinite(v) ? `${(v / 2 ** 20).toFixed(1)} MiB` : "–");
  const kv = (o: Record<string, number>) =>
    Object.entries(o)
      .sort(([a], [b]) => a.localeCompare(b))
      .map(([k, v]) => `${k} ${v}`)
      .join(", ") || "none";
  const rows: Array<Record<string, string>> = [];
  const row = (section: string, measure: string, value: string) => rows.push({ section, measure, value });
  const L = r.load;
  row("load", "requests (concurrent clients)", `${L.requests} (${r.options.concurrency}), ${L.streams} streamed, in ${(L.wallMs / 1000).toFixed(1)} s`);
  row("load", "by pipeline kind", kv(L.byKind));
  row("load", "by outcome", kv(L.byClass));
  row("load", "by HTTP status", kv(L.byStatus));
  row("load", "TTFT p50 / p99 (streams without faults)", `${ms(L.ttftMs.p50)} / ${ms(L.ttftMs.p99)} (n = ${L.ttftMs.n})`);
  row("load", "latency p50 / p99 (requests without faults)", `${ms(L.latencyMs.p50)} / ${ms(L.latencyMs.p99)} (n = ${L.latencyMs.n})`);
  for (const [fault, f] of Object.entries(L.byFault).sort()) {
    if (fault === "none") continue;
    const notes = [fault === "cancel-prefill" ? `${L.cancelledBeforeFirstToken} before the first token` : "", f.turnedAway > 0 ? `${f.turnedAway} turned away by a full queue (429)` : ""].filter(Boolean);
    row("faults", fault, `${f.handled}/${f.requests} handled${notes.length > 0 ? ` (${notes.join("; ")})` : ""}`);
  }
  row("server", "choices finished, by reason", kv(r.server.finishedByReason));
  row("server", "error log lines (injected / other)", `${r.server.errorLogLines.injected} / ${r.server.errorLogLines.unexpected}`);
  row("server", "RSS warm baseline → after load → end", `${mib(r.server.rssBytes.baseline)} → ${mib(r.server.rssBytes.afterLoad)} → ${mib(r.server.rssBytes.afterRun)} (${((r.server.rssBytes.afterRun / r.server.rssBytes.baseline - 1) * 100).toFixed(1)}%)`);
  const c = r.server.contexts;
  row("server", "contexts: loaded at startup, baseline → end; routed variants (cached)", `${c.baseline.fixed} → ${c.afterRun.fixed}; ${c.afterRun.variants} (${c.afterRun.cached})`);
  row("server", "sequences or requests left allocated", r.server.leftAllocated.afterRun.join("; ") || "none");
  row("server", "exit on SIGTERM", `${r.server.exit?.code ?? "–"}${r.server.exit?.signal ? ` (${r.server.exit.signal})` : ""}`);
  for (const f of r.fuzz) {
    row("fuzz", `${f.endpoint}: cases, statuses`, `${f.cases}: ${kv(f.statuses)}${Object.keys(f.errorEvents).length ? `; stream error events ${kv(f.errorEvents)}` : ""}`);
  }
  for (const s of r.startup) {
    row("startup", s.name, `${s.exit === "timeout" ? "no exit" : `exit ${s.exit.code}`} in ${(s.ms / 1000).toFixed(1)} s${s.namesFile ? ", names the file" : ""}${s.namesModel ? " and the model" : ""}`);
  }
  if (r.expertFault) {
    row("startup", "routed expert built for another base", `${r.expertFault.listedFailed ? "left out and listed as failed" : "NOT listed as failed"}, the model ${r.expertFault.serves ? "serves" : "does NOT serve"}`);
  }
  return rows;
}

/** Prints the figures, the checks and the first problems. */
export function printReport(report: ReliabilityReport): void {
  console.log("");
  printTable(figureRows(report));
  console.log("");
  printTable(report.checks.map((c) => ({ check: c.name, result: c.passed ? "pass" : "FAIL", detail: c.detail.slice(0, 160) })));
  if (report.load.problems.length > 0) {
    console.log("\nfirst problems:");
    for (const p of report.load.problems) console.log(`  #${p.index} ${p.model} ${p.endpoint} stream=${p.stream} fault=${p.fault}: ${p.status} ${p.class} ${p.detail ?? ""}`);
  }
}
