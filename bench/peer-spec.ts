// npm run bench:peer:spec [-- --json FILE] [--prompts N] [--tokens N] [--vocab-size N]
// Speculative decoding with a draft model, flock beside llama-server (built from the same
// bundled llama.cpp, bench/servers.ts) on the same GGUF files: the forge's `spec` pair with its
// vocabulary padded to a real size (32,000 by default), one thread and one sequence per server,
// at temperature 0 and 1. llama-server's `draft-simple` at its defaults and at
// `--spec-draft-n-max` 3, 8 and 16; flock's default configuration (SpecDec++ with the cost-aware
// rule and the online predictor) and fixed K = 2, 4 and 8; each server's target alone.
//
// Prompts are the beginning of text and one word, as bench:spec's. Each measured request
// follows a one-token request with the same prompt (both servers then hold the prompt's cache),
// so its wall time is decoding; variants take turns per prompt in a rotating order; rates are
// total tokens over total seconds.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { jsonPathArg, printTable, writeReport, type BenchReport } from "./report.js";
import { llamaServerBinary, type Sample, type ServerProcess, SIDE_BY_SIDE, startFlock, startLlamaServer, stopServers, timedCompletion } from "./servers.js";
import { tokenOfState } from "../forge/manifest.js";
import { forgedSpecPair, SPEC_PAIR_MODELS } from "./spec-files.js";

const { values } = parseArgs({ options: { json: { type: "string" }, prompts: { type: "string" }, tokens: { type: "string" }, "vocab-size": { type: "string" } }, strict: true });
const PROMPTS = Number(values.prompts ?? 6);
const TOKENS = Number(values.tokens ?? 96);
const VOCABULARY = Number(values["vocab-size"] ?? 32_000);
const out = jsonPathArg("peer-spec.json");

const { manifest, target, draft } = forgedSpecPair(VOCABULARY);
const words = tokenOfState(manifest).slice(1);
// One prompt more than measured: the first warms every variant up.
const prompts = Array.from({ length: PROMPTS + 1 }, (_, i) => [manifest.vocab.bos, words[(i * 17) % words.length]]);

interface Variant {
  name: string;
  server: "llama-server" | "flock";
  process: () => ServerProcess;
  body(prompt: number[], temperature: number, seed: number): Record<string, unknown>;
}

const binary = llamaServerBinary();
const stateDir = mkdtempSync(join(tmpdir(), "flock-bench-peer-spec-"));
const draftFlags = ["-md", draft, "--spec-type", "draft-simple", "-td", "1", "-tbd", "1", "-ngld", "0"];
const llamaServers = [
  { name: "llama-server, target only", port: 18_201, flags: [] as string[] },
  { name: "llama-server, draft (defaults)", port: 18_202, flags: draftFlags },
  ...[3, 8, 16].map((n, i) => ({ name: `llama-server, draft (n-max ${n})`, port: 18_203 + i, flags: [...draftFlags, "--spec-draft-n-max", String(n)] })),
].map((s) => ({ ...s, process: null as ServerProcess | null }));
let flock: ServerProcess | null = null;
const llamaBody = (prompt: number[], temperature: number, seed: number) => ({ model: "m", prompt, temperature, seed, top_k: 0, top_p: 1, min_p: 0, ignore_eos: true });
const flockBody = (speculative: Record<string, unknown>) => (prompt: number[], temperature: number, seed: number) => ({ model: "spec", prompt, temperature, seed, flock: { speculative } });
const variants: Variant[] = [
  ...llamaServers.map((s): Variant => ({ name: s.name, server: "llama-server", process: () => s.process!, body: llamaBody })),
  { name: "flock, target only", server: "flock", process: () => flock!, body: flockBody({ enabled: false }) },
  { name: "flock, default (specdec++)", server: "flock", process: () => flock!, body: flockBody({}) },
  ...[2, 4, 8].map((k): Variant => ({ name: `flock, fixed K = ${k}`, server: "flock", process: () => flock!, body: flockBody({ policy: "fixed", k }) })),
];

const table: BenchReport["rows"] = [];
const checks: string[] = [];
try {
  for (const s of llamaServers) s.process = await startLlamaServer(binary, target, s.port, s.flags);
  flock = await startFlock([{ id: "spec", path: target, contextSize: 512, parallel: 1, speculative: { draft } }], stateDir);
  for (const temperature of [0, 1]) {
    // Warm-up on a prompt not measured: the online predictor and the cost table see this workload first.
    for (const v of variants) await timedCompletion(v.process().url, v.body(prompts[0], temperature, 99), TOKENS);
    const totals = new Map<string, Sample>();
    for (let p = 1; p < prompts.length; p++) {
      for (let j = 0; j < variants.length; j++) {
        const v = variants[(j + p) % variants.length];
        const sample = await timedCompletion(v.process().url, v.body(prompts[p], temperature, 100 + p), TOKENS);
        const total = totals.get(v.name) ?? { seconds: 0, tokens: 0, drafted: 0, accepted: 0 };
        totals.set(v.name, { seconds: total.seconds + sample.seconds, tokens: total.tokens + sample.tokens, drafted: total.drafted + sample.drafted, accepted: total.accepted + sample.accepted });
      }
    }
    const rate = (name: string) => totals.get(name)!.tokens / totals.get(name)!.seconds;
    const bestDraft = Math.max(...variants.filter((v) => v.name.startsWith("llama-server, draft")).map((v) => rate(v.name)));
    for (const v of variants) {
      const t = totals.get(v.name)!;
      table.push({
        temperature,
        variant: v.name,
        tokensPerSecond: rate(v.name),
        vsLlamaServerTargetOnly: rate(v.name) / rate("llama-server, target only"),
        vsLlamaServerBestDraft: rate(v.name) / bestDraft,
        proposedPerToken: t.drafted / t.tokens,
        acceptance: t.drafted > 0 ? t.accepted / t.drafted : null,
      });
      console.error(`T ${temperature} ${v.name}: ${rate(v.name).toFixed(1)} tokens/s (${(rate(v.name) / bestDraft).toFixed(2)}× llama-server's best draft setting)`);
    }
    const bestFixed = Math.max(...[2, 4, 8].map((k) => rate(`flock, fixed K = ${k}`)));
    checks.push(
      `T = ${temperature}: flock's default ${(rate("flock, default (specdec++)") / bestDraft).toFixed(2)}× llama-server's best draft setting; ` +
        `its best fixed K ${(bestFixed / bestDraft).toFixed(2)}×; target only ${(rate("flock, target only") / rate("llama-server, target only")).toFixed(2)}× llama-server's`,
    );
  }
} finally {
  stopServers([...llamaServers.map((s) => s.process), flock]);
  rmSync(stateDir, { recursive: true, force: true });
}

printTable(table);
for (const line of checks) console.log(line);
writeReport(out, {
  benchmark: "peer-spec",
  command: "npm run bench:peer:spec",
  settings: {
    prompts: PROMPTS,
    tokens: TOKENS,
    vocabulary: manifest.vocab.tokens.length,
    ...SIDE_BY_SIDE,
    model: SPEC_PAIR_MODELS,
  },
  rows: table,
});
