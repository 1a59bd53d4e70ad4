// npm run bench:peer [-- --json FILE] [--rounds N] [--tokens N]
// flock against llama-server on the same GGUF files, threads and sampling settings: plain
// decoding of the forged demo model padded to real vocabulary sizes (32,000, 128,256 and
// 151,936 tokens), at T = 0, T = 1, T = 1 with top_p 0.95, and llama-server's own defaults; and
// constrained decoding at T = 1, held to a JSON schema (an array of at least three of
// bench:grammar's objects, longer than the budget: no end of text before it) by each server's
// grammar — llama-server's `json_schema`, flock's `response_format`; both masks are llama.cpp's
// grammar over the vocabulary, flock's cached per grammar state, after warm-up.
//
// llama-server is built once from the llama.cpp source node-llama-cpp ships
// (llama/gitRelease.bundle, the commit flock's native build patches), with the same CPU flags
// flock's build uses (-march=native less the extensions that trap here), and cached in
// ~/.cache/flock. Both servers run as their own processes with one thread and one sequence;
// the same client streams 96 tokens from each in turn through /v1/completions (end-of-text
// ruled out: ignore_eos for llama-server, a logit bias for flock) and measures the decode rate
// between the first and the last streamed token, so prompt processing and start-up stay out.
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { homedir, tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { parseArgs } from "node:util";
import { probeCpu } from "../engine/native/cpu-probe.js";
import { bundledLlamaCpp } from "../engine/native/surface.js";
import { forge } from "../forge/presets.js";
import { BOAT_SCHEMA } from "./json-workload.js";
import { jsonPathArg, printTable, writeReport, type BenchReport } from "./report.js";

const { values: flags } = parseArgs({ options: { json: { type: "string" }, rounds: { type: "string" }, tokens: { type: "string" } }, strict: true });
const ROUNDS = Number(flags.rounds ?? 5);
const TOKENS = Number(flags.tokens ?? 96);
const VOCABULARIES = [32_000, 128_256, 151_936];
const out = jsonPathArg("peer.json");
const root = join(import.meta.dirname, "..");
const llamaDir = join(dirname(dirname(createRequire(import.meta.url).resolve("node-llama-cpp"))), "llama");

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

function run(command: string, args: string[], options: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): void {
  console.error(`bench:peer: ${command} ${args.join(" ")}`);
  const result = spawnSync(command, args, { stdio: ["ignore", "inherit", "inherit"], ...options });
  if (result.status !== 0) throw new Error(`${command} ${args.join(" ")} failed (${result.status ?? result.signal})`);
}

/** llama-server built from node-llama-cpp's bundled llama.cpp, once per commit. */
function llamaServer(): string {
  const { commit } = bundledLlamaCpp(llamaDir);
  const dir = join(homedir(), ".cache", "flock", `llama-server-${commit.slice(0, 12)}`);
  const binary = join(dir, "build", "bin", "llama-server");
  if (existsSync(binary)) return binary;
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  run("git", ["clone", "--quiet", join(llamaDir, "gitRelease.bundle"), join(dir, "src")]);
  // The CPU flags of flock's own build: -march=native less what traps on this machine.
  run("git", ["apply", join(root, "engine", "native", "patches", "llama-cpp-native-flags.diff")], { cwd: join(dir, "src") });
  const disabled = probeCpu().flags;
  const env = { ...process.env, ...(disabled.length > 0 ? { FLOCK_NATIVE_DISABLE_FLAGS: disabled.join(" ") } : {}) };
  const options = ["-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF"];
  run("cmake", ["-S", join(dir, "src"), "-B", join(dir, "build"), "-G", "Ninja", ...options], { env });
  run("cmake", ["--build", join(dir, "build"), "--target", "llama-server", "--parallel", "2"], { env });
  return binary;
}

interface Server {
  name: string;
  url: string;
  process: ChildProcess;
  /** The body fields that ask this server for fixed-length output with these settings. */
  body(sampling: Sampling, seed: number): Record<string, unknown>;
}

async function waitForHealth(url: string, child: ChildProcess): Promise<void> {
  for (let i = 0; i < 600; i++) {
    if (child.exitCode !== null) throw new Error(`${url}: the server exited (${child.exitCode})`);
    const ok = await fetch(`${url}/health`).then((r) => r.ok, () => false);
    if (ok) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${url}: not healthy after 60 s`);
}

async function startLlamaServer(binary: string, model: string, port: number): Promise<Server> {
  const child = spawn(binary, ["-m", model, "-c", "512", "-np", "1", "-t", "1", "-tb", "1", "-ngl", "0", "--host", "127.0.0.1", "--port", String(port), "--no-webui"], {
    stdio: ["ignore", "ignore", "ignore"],
  });
  const url = `http://127.0.0.1:${port}`;
  await waitForHealth(url, child);
  return {
    name: "llama-server",
    url,
    process: child,
    body: (s, seed) => ({ temperature: s.temperature, top_p: s.topP, top_k: s.topK, min_p: s.minP, seed, ...(s.schema ? { json_schema: s.schema } : { ignore_eos: true }) }),
  };
}

async function startFlock(model: string, eos: number, dir: string): Promise<Server> {
  const config = join(dir, "flock.json");
  writeFileSync(config, JSON.stringify({ host: "127.0.0.1", port: 0, threads: 1, gpu: "off", logLevel: "info", playground: false, models: [{ id: "m", path: model, contextSize: 512, parallel: 1 }] }));
  const child = spawn(process.execPath, ["--import", "tsx", "server/main.ts", "--config", config], { cwd: root, stdio: ["ignore", "pipe", "inherit"] });
  const url = await new Promise<string>((resolve, reject) => {
    child.once("exit", (code) => reject(new Error(`flock exited (${code})`)));
    createInterface({ input: child.stdout! }).on("line", (line) => {
      const entry = JSON.parse(line) as { msg?: string; url?: string };
      if (entry.msg === "listening" && entry.url) resolve(entry.url);
    });
  });
  await waitForHealth(url, child);
  return {
    name: "flock",
    url,
    process: child,
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

const binary = llamaServer();
const dir = mkdtempSync(join(tmpdir(), "flock-bench-peer-"));
const rows: BenchReport["rows"] = [];
try {
  for (const vocabulary of VOCABULARIES) {
    const forged = join(dir, String(vocabulary));
    const manifest = forge({ outDir: forged, preset: "demo", vocabSize: vocabulary });
    const model = join(forged, manifest.models["flock-demo"].file);
    const servers = [await startLlamaServer(binary, model, 18_000 + (vocabulary % 1000)), await startFlock(model, manifest.vocab.eos, forged)];
    try {
      for (const server of servers) for (const [, sampling] of SETTINGS) await decodeRate(server, sampling, 1); // warm-up
      for (const [setting, sampling] of SETTINGS) {
        const rates: Record<string, number[]> = { "llama-server": [], flock: [] };
        for (let round = 0; round < ROUNDS; round++) {
          // Take turns, the first alternating, so that the machine's slow phases fall on both.
          for (const server of round % 2 === 0 ? servers : [...servers].reverse()) rates[server.name].push(await decodeRate(server, sampling, 100 + round));
        }
        const peer = median(rates["llama-server"]);
        const flock = median(rates.flock);
        rows.push({
          vocabulary: manifest.vocab.tokens.length,
          sampling: setting,
          llamaServerTokensPerSecond: peer,
          flockTokensPerSecond: flock,
          ratio: flock / peer,
          // What flock spends per token beyond what llama-server spends: sampling in TypeScript,
          // the copy of the logits, the HTTP and SSE layers.
          flockExtraMsPerToken: 1000 / flock - 1000 / peer,
        });
        console.error(`${vocabulary} ${setting}: llama-server ${peer.toFixed(1)} tok/s, flock ${flock.toFixed(1)} tok/s (${(flock / peer).toFixed(2)}×)`);
      }
    } finally {
      for (const server of servers) server.process.kill("SIGTERM");
    }
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}

printTable(rows);
writeReport(out, {
  benchmark: "peer",
  command: "npm run bench:peer",
  settings: { rounds: ROUNDS, tokens: TOKENS, threads: 1, contextSize: 512, sequences: 1, statistic: "median over rounds of streamed decode tokens/s", model: "forged demo (4 layers, d = 128), padded vocabularies" },
  rows,
});
