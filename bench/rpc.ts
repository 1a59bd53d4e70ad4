// npm run bench:rpc [-- --tokens 64] [--prompts 6] [--json FILE]
//
// The forged demo model served three ways by a real flock server on loopback: locally, on one llama.cpp
// rpc-server, and split over two (each rpc-server built from the same llama.cpp source, one
// thread). Per variant: the load time (the weights travel to the servers), greedy decoding
// throughput over the same prompts, and whether the text equals the local model's. Variants run
// one after another, each in its own flock server, so none competes with another's load.
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { llamaToolBinary } from "../engine/native/llama-tools.js";
import { forge } from "../forge/presets.js";
import { ServerConfig } from "../server/config.js";
import { createLogger } from "../server/logger.js";
import { startServer } from "../server/server.js";
import { freePort } from "./replica-set.js";
import { jsonPathArg, printTable, writeReport, type BenchReport } from "./report.js";

const { values } = parseArgs({
  options: { tokens: { type: "string" }, prompts: { type: "string" }, json: { type: "string" } },
  strict: false,
});
const TOKENS = Number(values.tokens ?? 64);
const PROMPTS = Number(values.prompts ?? 6);
const out = jsonPathArg("rpc.json");

const dir = mkdtempSync(join(tmpdir(), "flock-bench-rpc-"));
const manifest = forge({ outDir: dir, preset: "demo", seed: 1 });
const modelFile = join(dir, manifest.models["flock-demo"].file);
const prompts = ["The cook", "The diver", "The scientist", "The worker", "The captain", "The pilot", "The farmer", "The gull"].slice(0, PROMPTS);

/** An rpc-server on a free loopback port, once its port listens. */
async function rpcServer(binary: string): Promise<{ endpoint: string; process: ChildProcess }> {
  const port = await freePort();
  const child = spawn(binary, ["-H", "127.0.0.1", "-p", String(port), "-t", "1"], { stdio: "ignore" });
  const local = `:${port.toString(16).toUpperCase().padStart(4, "0")}`;
  for (let i = 0; i < 300; i++) {
    const listening = readFileSync("/proc/net/tcp", "utf8").split("\n").some((l) => l.split(/\s+/)[2]?.endsWith(local) && l.split(/\s+/)[4] === "0A");
    if (listening) return { endpoint: `127.0.0.1:${port}`, process: child };
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error("rpc-server did not listen");
}

async function measure(rpc: string[]): Promise<{ loadSeconds: number; tokensPerSecond: number; texts: string[] }> {
  const started = performance.now();
  const server = await startServer(
    ServerConfig.parse({ port: 0, gpu: "off", threads: 1, logLevel: "silent", playground: false, models: [{ id: "m", path: modelFile, contextSize: 512, parallel: 1, ...(rpc.length > 0 ? { rpc } : {}) }] }),
    createLogger("silent"),
  );
  try {
    await server.ready;
    const loadSeconds = (performance.now() - started) / 1000;
    const complete = async (prompt: string, maxTokens: number) => {
      const res = await fetch(`${server.url}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ model: "m", prompt, max_tokens: maxTokens, temperature: 0, logit_bias: { [String(manifest.vocab.eos)]: -100 } }),
      });
      if (!res.ok) throw new Error(`${res.status} ${await res.text()}`);
      return (await res.json()) as { choices: Array<{ text: string }>; usage: { completion_tokens: number } };
    };
    await complete(prompts[0], 4); // warm-up
    let tokens = 0;
    const texts: string[] = [];
    const t = performance.now();
    for (const prompt of prompts) {
      const r = await complete(prompt, TOKENS);
      tokens += r.usage.completion_tokens;
      texts.push(r.choices[0].text);
    }
    return { loadSeconds, tokensPerSecond: tokens / ((performance.now() - t) / 1000), texts };
  } finally {
    await server.close(0);
  }
}

const binary = llamaToolBinary("rpc-server");
const servers = [await rpcServer(binary), await rpcServer(binary)];
const rows: BenchReport["rows"] = [];
try {
  const local = await measure([]);
  const variants: Array<[string, string[]]> = [
    ["local", []],
    ["1 rpc-server", [servers[0].endpoint]],
    ["2 rpc-servers", servers.map((s) => s.endpoint)],
  ];
  for (const [variant, rpc] of variants) {
    const r = rpc.length === 0 ? local : await measure(rpc);
    rows.push({
      variant,
      "load s": Number(r.loadSeconds.toFixed(2)),
      "tokens/s": Number(r.tokensPerSecond.toFixed(1)),
      "× local": Number((r.tokensPerSecond / local.tokensPerSecond).toFixed(3)),
      "same text as local": r.texts.every((text, i) => text === local.texts[i]),
    });
    console.error(`bench: ${JSON.stringify(rows.at(-1))}`);
  }
} finally {
  for (const s of servers) s.process.kill("SIGTERM");
  rmSync(dir, { recursive: true, force: true });
}

printTable(rows);
writeReport(out, {
  benchmark: "rpc",
  command: `npm run bench:rpc${process.argv.length > 2 ? ` -- ${process.argv.slice(2).join(" ")}` : ""}`,
  settings: { model: "flock-demo", tokens: TOKENS, prompts: prompts.length, threads: 1, rpcServerThreads: 1, greedy: true },
  rows,
});
if (rows.some((r) => r["same text as local"] !== true)) {
  console.error("bench:rpc: a variant's greedy text differs from the local model's");
  process.exit(1);
}
