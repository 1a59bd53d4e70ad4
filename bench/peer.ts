// npm run bench:peer [-- --json FILE] [--rounds N] [--tokens N] [--tokenizer NAME …]
// flock against llama-server on the same GGUF files, threads and sampling settings: plain
// decoding of the forged demo model with real tokenizers (Llama 3's 128,256 tokens, Qwen 2's
// 151,936) and with the forge's own vocabulary padded to Llama 2's 32,000 (whose SentencePiece
// vocabulary lacks single tokens for the forged language's words: docs/development.md), at T = 0, T = 1, T = 1 with top_p 0.95, and llama-server's own defaults; and
// constrained decoding at T = 1, held to a JSON schema (an array of at least three of
// bench:grammar's objects, longer than the budget: no end of text before it) by each server's
// grammar — llama-server's `json_schema`, flock's `response_format`; both masks are llama.cpp's
// grammar over the vocabulary, flock's cached per grammar state, after warm-up.
//
// llama-server is built from the llama.cpp source node-llama-cpp ships (bench/servers.ts).
// flock runs twice: as configured by default (plain requests decoded and drawn in the addon's
// generation loop) and with models[].generationLoop false (every token through its JavaScript
// loop), so the loop's effect is measured in the same run.
// The servers run as their own processes with one thread and one sequence;
// the same client streams 96 tokens from each in turn through /v1/completions (end-of-text
// ruled out: ignore_eos for llama-server, a logit bias for flock) and measures the decode rate
// between the first and the last streamed token, so prompt processing and start-up stay out.
import type { ChildProcess } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { forge } from "../forge/presets.js";
import { readTokenizer, type TokenizerName } from "../forge/tokenizers.js";
import { BOAT_SCHEMA } from "./json-workload.js";
import { jsonPathArg, printTable, writeReport, type BenchReport } from "./report.js";
import { llamaServerBinary, startFlock as startFlockProcess, startLlamaServer as startLlamaProcess } from "./servers.js";

const { values: flags } = parseArgs({ options: { json: { type: "string" }, rounds: { type: "string" }, tokens: { type: "string" }, tokenizer: { type: "string", multiple: true } }, strict: true });
const ROUNDS = Number(flags.rounds ?? 9);
const TOKENS = Number(flags.tokens ?? 96);
// --tokenizer picks some of them (forge, llama-bpe, qwen2).
const VOCABULARIES = (
  [
    { tokenizer: "forge (padded)", size: 32_000 },
    { tokenizer: "llama-bpe" },
    { tokenizer: "qwen2" },
  ] as Array<{ tokenizer: "forge (padded)" | TokenizerName; size?: number }>
).filter((v) => !flags.tokenizer || flags.tokenizer.includes(v.tokenizer.split(" ")[0]));
const out = jsonPathArg("peer.json");

interface Sampling {
  temperature: number;
  topP: number;
  topK: number;
  minP: number;
  /** A JSON schema the output is held to. */
  schema?: unknown;
}
const BOATS = { type: "array", items: BOAT_SCHEMA, minItems: 3 };
const SETTINGS: Array<[string, Sampling]> = [
  ["T = 0", { temperature: 0, topP: 1, topK: 0, minP: 0 }],
  ["T = 1", { temperature: 1, topP: 1, topK: 0, minP: 0 }],
  ["T = 1, top_p 0.95", { temperature: 1, topP: 0.95, topK: 0, minP: 0 }],
  ["llama-server defaults (T 0.8, top_k 40, top_p 0.95, min_p 0.05)", { temperature: 0.8, topP: 0.95, topK: 40, minP: 0.05 }],
  ["T = 1, JSON schema", { temperature: 1, topP: 1, topK: 0, minP: 0, schema: BOATS }],
];

interface Server {
  name: string;
  url: string;
  process: ChildProcess;
  /** The body fields that ask this server for fixed-length output with these settings. */
  body(sampling: Sampling, seed: number): Record<string, unknown>;
}

async function startLlamaServer(binary: string, model: string, port: number): Promise<Server> {
  return {
    name: "llama-server",
    ...(await startLlamaProcess(binary, model, port)),
    body: (s, seed) => ({ temperature: s.temperature, top_p: s.topP, top_k: s.topK, min_p: s.minP, seed, ...(s.schema ? { json_schema: s.schema } : { ignore_eos: true }) }),
  };
}

/** flock; `generationLoop` false: every token through its JavaScript loop instead of the addon's (models[].generationLoop). */
async function startFlock(model: string, eos: number, dir: string, generationLoop = true): Promise<Server> {
  mkdirSync(dir, { recursive: true });
  return {
    name: generationLoop ? "flock" : "flock, JavaScript loop",
    ...(await startFlockProcess([{ id: "m", path: model, contextSize: 512, parallel: 1, generationLoop }], dir)),
    body: (s, seed) => ({
      temperature: s.temperature,
      top_p: s.topP,
      seed,
      flock: { top_k: s.topK, min_p: s.minP },
      ...(s.schema ? { response_format: { type: "json_schema", json_schema: { name: "boats", schema: s.schema } } } : { logit_bias: { [eos]: -100 } }),
    }),
  };
}

/** Streams one completion; tokens per second between the first and the last streamed token. */
async function decodeRate(server: Server, sampling: Sampling, seed: number): Promise<number> {
  const res = await fetch(`${server.url}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: "m", prompt: "The", max_tokens: TOKENS, stream: true, ...server.body(sampling, seed) }),
  });
  if (!res.ok || !res.body) throw new Error(`${server.name}: ${res.status} ${await res.text()}`);
  let first = 0;
  let last = 0;
  let tokens = 0;
  let buffered = "";
  const decoder = new TextDecoder();
  for await (const bytes of res.body) {
    buffered += decoder.decode(bytes as Uint8Array, { stream: true });
    const events = buffered.split("\n\n");
    buffered = events.pop()!;
    for (const event of events) {
      const data = event.replace(/^data: /, "");
      if (!data.startsWith("{")) continue;
      const chunk = JSON.parse(data) as { choices?: Array<{ text?: string }> };
      if (!chunk.choices?.[0]?.text) continue;
      const now = performance.now();
      if (first === 0) first = now;
      last = now;
      tokens++;
    }
  }
  // A chunk per token (the forge's tokens are whole characters).
  if (tokens !== TOKENS) console.error(`bench:peer: ${server.name} streamed ${tokens} chunks for ${TOKENS} tokens`);
  return ((tokens - 1) * 1000) / (last - first);
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const binary = llamaServerBinary();
const dir = mkdtempSync(join(tmpdir(), "flock-bench-peer-"));
const rows: BenchReport["rows"] = [];
try {
  for (const { tokenizer, size } of VOCABULARIES) {
    const forged = join(dir, tokenizer);
    const real = size === undefined ? await readTokenizer(tokenizer as TokenizerName, join(dir, "cache")) : undefined;
    const manifest = forge({ outDir: forged, preset: "demo", vocabSize: size, tokenizer: real });
    const vocabulary = manifest.vocab.tokens.length;
    const model = join(forged, manifest.models["flock-demo"].file);
    const servers = [
      await startLlamaServer(binary, model, 18_000 + (vocabulary % 1000)),
      await startFlock(model, manifest.vocab.eos, forged),
      await startFlock(model, manifest.vocab.eos, join(forged, "js-loop"), false),
    ];
    try {
      for (const server of servers) for (const [, sampling] of SETTINGS) await decodeRate(server, sampling, 1); // warm-up
      for (const [setting, sampling] of SETTINGS) {
        const rates: Record<string, number[]> = Object.fromEntries(servers.map((s) => [s.name, []]));
        for (let round = 0; round < ROUNDS; round++) {
          // Take turns, the order alternating, so that the machine's slow phases fall on all.
          for (const server of round % 2 === 0 ? servers : [...servers].reverse()) rates[server.name].push(await decodeRate(server, sampling, 100 + round));
        }
        const peer = median(rates["llama-server"]);
        const flock = median(rates.flock);
        const jsLoop = median(rates["flock, JavaScript loop"]);
        rows.push({
          vocabulary,
          tokenizer,
          sampling: setting,
          llamaServerTokensPerSecond: peer,
          flockTokensPerSecond: flock,
          ratio: flock / peer,
          flockJsLoopTokensPerSecond: jsLoop,
          jsLoopRatio: jsLoop / peer,
          // What flock spends per token beyond what llama-server spends: sampling in TypeScript,
          // the copy of the logits, the HTTP and SSE layers.
          flockExtraMsPerToken: 1000 / flock - 1000 / peer,
        });
        console.error(`${vocabulary} ${setting}: llama-server ${peer.toFixed(1)} tok/s, flock ${flock.toFixed(1)} tok/s (${(flock / peer).toFixed(2)}×), JavaScript loop ${jsLoop.toFixed(1)} tok/s (${(jsLoop / peer).toFixed(2)}×)`);
      }
    } finally {
      for (const server of servers) server.process.kill("SIGTERM");
    }
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}

printTable(rows);
// A partial run leaves the published report alone unless --json names a file.
if (flags.tokenizer && !flags.json) process.exit(0);
writeReport(out, {
  benchmark: "peer",
  command: "npm run bench:peer",
  settings: { rounds: ROUNDS, tokens: TOKENS, threads: 1, contextSize: 512, sequences: 1, statistic: "median over rounds of streamed decode tokens/s", model: "forged demo (4 layers, d = 128): the forge's vocabulary padded to 32,000; Llama 3's and Qwen 2's tokenizers" },
  rows,
});
