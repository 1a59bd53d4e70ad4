// npm run bench:rpc [-- --tokens 64] [--prompts 6] [--json FILE]
//
// The forged demo model served three ways by a real flock server on loopback: locally, on one llama.cpp
// rpc-server, and split over two (each rpc-server built from the same llama.cpp source, one
// thread). Per variant: the load time (the weights travel to the servers), greedy decoding
// throughput over the same prompts, and whether the text equals the local model's. Variants run
// one after another, each in its own flock server, so none competes with another's load.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { llamaToolBinary } from "../engine/native/llama-tools.js";
import { forge } from "../forge/presets.js";
import { ServerConfig } from "../server/config.js";
import { createLogger } from "../server/logger.js";
import { startServer } from "../server/server.js";
import { startRpcServer } from "./rpc-server.js";
import { complete } from "./servers.js";
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

async function measure(rpc: string[]): Promise<{ loadSeconds: number; tokensPerSecond: number; texts: string[] }> {
  const started = performance.now();
  const server = await startServer(
    ServerConfig.parse({ port: 0, gpu: "off", threads: 1, logLevel: "silent", playground: false, models: [{ id: "m", path: modelFile, contextSize: 512, parallel: 1, ...(rpc.length > 0 ? { rpc } : {}) }] }),
    createLogger("silent"),
  );
  try {
    await server.ready;
    const loadSeconds = (performance.now() - started) / 1000;
    const body = (prompt: string, maxTokens: number) => ({ model: "m", prompt, max_tokens: maxTokens, temperature: 0, logit_bias: { [String(manifest.vocab.eos)]: -100 } });
    await complete(server.url, body(prompts[0], 4)); // warm-up
    let tokens = 0;
    const texts: string[] = [];
    const t = performance.now();
    for (const prompt of prompts) {
      const r = await complete(server.url, body(prompt, TOKENS));
      tokens += r.tokens;
      texts.push(r.text);
    }
    return { loadSeconds, tokensPerSecond: tokens / ((performance.now() - t) / 1000), texts };
  } finally {
    await server.close(0);
  }
}

const binary = llamaToolBinary("rpc-server");
const servers = [await startRpcServer(binary), await startRpcServer(binary)];
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
