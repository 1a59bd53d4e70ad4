// npm run bench:serve [-- --json FILE] [--tokens N] [--repeats N] [--threads N] [--concurrency 1,2,4,8]
// Serving throughput: a real flock server in this process on the forged demo model, driven
// through the official openai client with 1, 2, 4 and 8 concurrent streams. Two variants of the
// same model side by side: `batched` (8 sequences: concurrent requests are evaluated together
// in shared batches) and `one-sequence` (parallel 1: requests wait in the queue and run one after
// another), so the table shows what batching buys on this machine.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import OpenAI from "openai";
import { forge } from "../forge/presets.js";
import { ServerConfig } from "../server/config.js";
import { createLogger } from "../server/logger.js";
import { startServer } from "../server/server.js";
import { jsonPathArg, printTable, writeReport, type BenchReport } from "./report.js";

const { values } = parseArgs({
  options: { tokens: { type: "string" }, repeats: { type: "string" }, threads: { type: "string" }, concurrency: { type: "string" }, json: { type: "string" } },
  strict: false,
});
const TOKENS = Number(values.tokens ?? 128);
const REPEATS = Number(values.repeats ?? 3);
const THREADS = Number(values.threads ?? 1);
const LEVELS = String(values.concurrency ?? "1,2,4,8").split(",").map(Number);
const out = jsonPathArg("serve.json");

const dir = mkdtempSync(join(tmpdir(), "flock-bench-serve-"));
const manifest = forge({ outDir: dir, preset: "demo", seed: 1 });
const file = join(dir, manifest.models["flock-demo"].file);
const VARIANTS = [
  { id: "batched", parallel: Math.max(...LEVELS) },
  { id: "one-sequence", parallel: 1 },
];
const config = ServerConfig.parse({
  port: 0,
  gpu: "off",
  threads: THREADS,
  logLevel: "silent",
  cacheDir: join(dir, "state"),
  // Short contexts: llama.cpp's unified KV cache makes every token of a batch attend over all
  // cells in use, so long windows would measure attention rather than serving.
  models: VARIANTS.map((v) => ({ id: v.id, path: file, parallel: v.parallel, contextSize: 512 })),
  limits: { maxQueue: 64 },
});
const server = await startServer(config, createLogger("silent"));
await server.ready;
const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "bench", maxRetries: 0 });

interface StreamResult {
  tokens: number;
  ttftMs: number;
  /** Gaps between successive content chunks, ms. */
  gaps: number[];
}

/** One stream of exactly TOKENS tokens (the end-of-text token is suppressed). */
async function oneStream(model: string, seed: number): Promise<StreamResult> {
  const started = performance.now();
  const stream = await client.completions.create({
    model,
    prompt: "The captain",
    max_tokens: TOKENS,
    temperature: 1,
    seed,
    logit_bias: { [String(manifest.vocab.eos)]: -100 },
    stream: true,
    stream_options: { include_usage: true },
  });
  let ttftMs = -1;
  let last = 0;
  let tokens = 0;
  const gaps: number[] = [];
  for await (const chunk of stream) {
    const now = performance.now();
    if (chunk.usage) tokens = chunk.usage.completion_tokens;
    if (!chunk.choices[0]?.text) continue;
    if (ttftMs < 0) ttftMs = now - started;
    else gaps.push(now - last);
    last = now;
  }
  if (tokens !== TOKENS) throw new Error(`expected ${TOKENS} tokens, got ${tokens}`);
  return { tokens, ttftMs, gaps };
}

interface Measurement {
  seconds: number;
  tokens: number;
  ttftMs: number[];
  gaps: number[];
}

async function measure(model: string, concurrency: number, round: number): Promise<Measurement> {
  const started = performance.now();
  const results = await Promise.all(Array.from({ length: concurrency }, (_, i) => oneStream(model, round * 100 + i)));
  return {
    seconds: (performance.now() - started) / 1000,
    tokens: results.reduce((n, r) => n + r.tokens, 0),
    ttftMs: results.map((r) => r.ttftMs),
    gaps: results.flatMap((r) => r.gaps),
  };
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const percentile = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s[Math.min(s.length - 1, Math.floor(p * s.length))];
};

// Warm-up (first contexts use, JIT), not measured.
for (const v of VARIANTS) await measure(v.id, 2, 999);

// Rounds interleave every variant and level, so drifts in machine load hit all of them alike.
const runs = new Map<string, Measurement[]>();
for (let round = 0; round < REPEATS; round++) {
  for (const level of LEVELS) {
    for (const v of VARIANTS) {
      const key = `${v.id}|${level}`;
      const m = await measure(v.id, level, round);
      runs.set(key, [...(runs.get(key) ?? []), m]);
    }
  }
}

const rows: BenchReport["rows"] = [];
const throughputOf = (id: string, level: number) => median(runs.get(`${id}|${level}`)?.map((m) => m.tokens / m.seconds) ?? []);
for (const v of VARIANTS) {
  const single = throughputOf(v.id, 1);
  for (const level of LEVELS) {
    const ms = runs.get(`${v.id}|${level}`)!;
    const throughput = throughputOf(v.id, level);
    rows.push({
      variant: `${v.id} (parallel ${v.parallel})`,
      streams: level,
      "tokens/s": Math.round(throughput),
      "× 1 stream": Number((throughput / single).toFixed(2)),
      "× one-sequence": Number((throughput / throughputOf("one-sequence", level)).toFixed(2)),
      "TTFT median ms": Number(median(ms.flatMap((m) => m.ttftMs)).toFixed(1)),
      "TTFT max ms": Number(Math.max(...ms.flatMap((m) => m.ttftMs)).toFixed(1)),
      "ITL median ms": Number(median(ms.flatMap((m) => m.gaps)).toFixed(2)),
      "ITL p99 ms": Number(percentile(ms.flatMap((m) => m.gaps), 0.99).toFixed(2)),
    });
  }
}

printTable(rows);
writeReport(out, {
  benchmark: "serve",
  command: "npm run bench:serve",
  settings: { model: "flock-demo (forged, seed 1)", tokensPerStream: TOKENS, repeats: REPEATS, threads: THREADS, contextSize: 512, temperature: 1, client: "openai (official), streaming, same process" },
  rows,
});

await server.close();
rmSync(dir, { recursive: true, force: true });
