// Helpers for the operations suites: reading the Prometheus exposition, raw SSE, and waiting
// for a condition with a bound on both count and time.

import { readFileSync } from "node:fs";
import { join } from "node:path";

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

export interface Exposition {
  /** # TYPE per metric family. */
  types: Map<string, string>;
  /** # HELP per metric family. */
  help: Map<string, string>;
  samples: Sample[];
}

function parseLabels(text: string): Record<string, string> {
  const labels: Record<string, string> = {};
  const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?/g;
  let m: RegExpExecArray | null;
  while ((m = re.exec(text)) !== null) labels[m[1]] = m[2].replace(/\\n/g, "\n").replace(/\\"/g, '"').replace(/\\\\/g, "\\");
  return labels;
}

/** Parses the Prometheus text format (0.0.4); throws on a line it cannot read. */
export function parseExposition(text: string): Exposition {
  const types = new Map<string, string>();
  const help = new Map<string, string>();
  const samples: Sample[] = [];
  for (const line of text.split("\n")) {
    if (line.trim() === "") continue;
    let m = line.match(/^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)$/);
    if (m) {
      types.set(m[1], m[2]);
      continue;
    }
    m = line.match(/^# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)$/);
    if (m) {
      help.set(m[1], m[2]);
      continue;
    }
    m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)(?: \d+)?$/);
    if (!m) throw new Error(`unparsable exposition line: ${line}`);
    // Prometheus parses values with Go's ParseFloat: NaN and Inf in any case.
    const raw = m[3].toLowerCase();
    const value = raw === "+inf" || raw === "inf" ? Infinity : raw === "-inf" ? -Infinity : raw === "nan" ? NaN : Number(m[3]);
    if (Number.isNaN(value) && raw !== "nan") throw new Error(`bad value in: ${line}`);
    samples.push({ name: m[1], labels: m[2] ? parseLabels(m[2]) : {}, value });
  }
  return { types, help, samples };
}

/** The value of the one sample matching `name` and `labels` (a subset), or 0 when absent. */
export function valueOf(exposition: Exposition, name: string, labels: Record<string, string> = {}): number {
  const matching = exposition.samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  return matching.reduce((sum, s) => sum + s.value, 0);
}

export async function scrape(url: string, headers: Record<string, string> = {}): Promise<Exposition> {
  const res = await fetch(`${url}/metrics`, { headers });
  if (res.status !== 200) throw new Error(`GET /metrics: ${res.status}`);
  return parseExposition(await res.text());
}

/** Polls `check` every `everyMs` until it returns true; false after `timeoutMs` (bounded). */
export async function until(check: () => Promise<boolean> | boolean, timeoutMs: number, everyMs = 5): Promise<boolean> {
  const deadline = performance.now() + timeoutMs;
  for (let i = 0; i < 100_000 && performance.now() < deadline; i++) {
    if (await check()) return true;
    await new Promise((r) => setTimeout(r, everyMs));
  }
  return check();
}

/**
 * Reads a raw SSE response until `stop` says so (given everything read so far) or the stream
 * ends; returns the text read. Bounded by `timeoutMs`.
 */
export async function readSSE(res: Response, stop: (text: string) => boolean = () => false, timeoutMs = 30_000): Promise<string> {
  const reader = res.body!.getReader();
  const decoder = new TextDecoder();
  let text = "";
  const deadline = performance.now() + timeoutMs;
  while (performance.now() < deadline) {
    const timer = new Promise<null>((r) => setTimeout(() => r(null), Math.max(1, deadline - performance.now())));
    const result = await Promise.race([reader.read(), timer]);
    if (result === null || result.done) break;
    text += decoder.decode(result.value, { stream: true });
    if (stop(text)) break;
  }
  reader.releaseLock();
  return text;
}

/** The JSON payloads of an SSE text's `data:` events (without [DONE]). */
export function sseEvents(text: string): unknown[] {
  return text
    .split("\n\n")
    .map((event) => event.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n"))
    .filter((data) => data.length > 0 && data !== "[DONE]")
    .map((data) => JSON.parse(data) as unknown);
}

/** The metric names the shipped Grafana dashboard's queries and variables use (deploy/grafana-dashboard.json). */
export function dashboardMetrics(): string[] {
  const dashboard = readFileSync(join(import.meta.dirname, "..", "..", "deploy", "grafana-dashboard.json"), "utf8");
  const exprs = [...dashboard.matchAll(/"(?:expr|definition)": "((?:[^"\\]|\\.)*)"/g)].map((m) => m[1]);
  return [...new Set(exprs.flatMap((e) => [...e.matchAll(/\bflock_[a-z0-9_]+/g)].map((m) => m[0])))].sort();
}
