// npm run bench:spec:lookup [-- --json FILE] [--prompts N] [--tokens N] [--document N] [--vocab-size N]
// Speculation from text on a repetition-heavy workload, flock beside llama-server on the same
// GGUF files (the forge's `spec` pair, its vocabulary padded to a real size, 32,000 by default):
// target only; llama-server's n-gram proposers (`ngram-simple`, `ngram-mod` at their defaults,
// and ngram-simple with a short n-gram) and its draft model; flock's prompt lookup (priced by the
// cost rule, and every offer whole), its draft model, both (each round to the one that promises
// more), and the expected text as a Predicted Output.
//
// The workload: each prompt holds a document — a passage the target itself would write, its
// greedy continuation from a word — and then that word again, so the answer quotes the document
// ("quote"); or the document with every 10th word replaced ("rewrite"), so the answer departs
// from it at each edit and must find its place again. At temperature 1 the answer strays from
// the document wherever the target is unsure. The prediction is the answer at temperature 0.
//
// Every server runs as its own process with one thread and one sequence. Each measured request
// follows a one-token request with the same prompt (both servers then hold the prompt's cache),
// so its wall time is decoding: rate = completion tokens / seconds. Variants take turns per
// prompt in a rotating order; rates are total tokens over total seconds. The documents are all
// stretches of the target's one greedy cycle, so ngram-mod, which keeps the n-grams of every
// request it served, would know each answer from the second request on: its server is
// restarted before each measured request (each answer new to it, as answers about new
// documents would be).
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { createRng } from "../decoding/rng.js";
import { tokenOfState } from "../forge/manifest.js";
import { forgedSpecPair, SPEC_PAIR_MODELS } from "./spec-files.js";
import { jsonPathArg, printTable, writeReport, type BenchReport } from "./report.js";
import { complete, llamaServerBinary, type Sample, type ServerProcess, SIDE_BY_SIDE, startFlock, startLlamaServer, stopServers, timedCompletion } from "./servers.js";

const { values } = parseArgs({
  options: { json: { type: "string" }, prompts: { type: "string" }, tokens: { type: "string" }, document: { type: "string" }, "vocab-size": { type: "string" } },
  strict: true,
});
const PROMPTS = Number(values.prompts ?? 4);
const TOKENS = Number(values.tokens ?? 96);
// Shorter than the target's greedy cycle through its words (124), so a document never repeats itself.
const DOCUMENT = Number(values.document ?? 100);
const VOCABULARY = Number(values["vocab-size"] ?? 32_000);
const EDIT_EVERY = 10;
const out = jsonPathArg("spec-lookup.json");

const { manifest, target, draft } = forgedSpecPair(VOCABULARY);
const pair = manifest.pairs[0];

// The target's greedy successor of each word (its chain's most likely next token).
const rows = manifest.chains[manifest.models[pair.target].chain];
const successor = (token: number) => rows[manifest.states.ofToken[token]].reduce((best, entry) => (entry[1] > best[1] ? entry : best))[0];
const words = tokenOfState(manifest).slice(1);

interface Workload {
  name: string;
  prompts: number[][];
}
function workloads(): Workload[] {
  const rng = createRng(7);
  const quote: number[][] = [];
  const rewrite: number[][] = [];
  // One more prompt than measured: the first warms every variant up.
  for (let i = 0; i <= PROMPTS; i++) {
    const start = words[(i * 37) % words.length];
    const document = [start];
    while (document.length < DOCUMENT) document.push(successor(document.at(-1)!));
    quote.push([manifest.vocab.bos, ...document, start]);
    const edited = document.map((token, j) => (j % EDIT_EVERY === EDIT_EVERY / 2 ? words.filter((w) => w !== token)[rng.int(words.length - 1)] : token));
    rewrite.push([manifest.vocab.bos, ...edited, start]);
  }
  return [
    { name: "quote", prompts: quote },
    { name: `rewrite (every ${EDIT_EVERY}th word edited)`, prompts: rewrite },
  ];
}

interface Variant {
  name: string;
  server: "llama-server" | "flock";
  /** The server process this variant's requests go to. */
  process: () => ServerProcess;
  /** Starts its server afresh (forgetting earlier requests), where it would remember them. */
  restart?: () => Promise<void>;
  body(prompt: number[], temperature: number, seed: number, expected: string): Record<string, unknown>;
}

async function measure(v: Variant, prompt: number[], temperature: number, seed: number, expected: string): Promise<Sample> {
  return timedCompletion(v.process().url, v.body(prompt, temperature, seed, expected), TOKENS);
}

const binary = llamaServerBinary();
const stateDir = mkdtempSync(join(tmpdir(), "flock-bench-spec-lookup-"));
/** `fresh`: restarted before each measured request (ngram-mod keeps what it saw across requests). */
const llama = (name: string, port: number, flags: string[], fresh = false) => ({ name, port, flags, fresh, process: null as ServerProcess | null });
const llamaServers = [
  llama("llama-server, target only", 18_101, []),
  llama("llama-server, ngram-simple (defaults: n 12, m 48)", 18_102, ["--spec-type", "ngram-simple"]),
  llama("llama-server, ngram-simple (n 3, m 16)", 18_103, ["--spec-type", "ngram-simple", "--spec-ngram-simple-size-n", "3", "--spec-ngram-simple-size-m", "16"]),
  llama("llama-server, ngram-mod (defaults)", 18_104, ["--spec-type", "ngram-mod"], true),
  llama("llama-server, draft model", 18_105, ["-md", draft, "--spec-type", "draft-simple", "-td", "1", "-tbd", "1", "-ngld", "0"]),
];
let flock: ServerProcess | null = null;
const llamaBody = (prompt: number[], temperature: number, seed: number) => ({ model: "m", prompt, temperature, seed, top_k: 0, top_p: 1, min_p: 0, ignore_eos: true });
const flockBody = (model: string, extra: Record<string, unknown>) => (prompt: number[], temperature: number, seed: number) => ({ model, prompt, temperature, seed, ...extra });
const variants: Variant[] = [
  ...llamaServers.map(
    (s): Variant => ({
      name: s.name,
      server: "llama-server",
      process: () => s.process!,
      body: llamaBody,
      ...(s.fresh && {
        restart: async () => {
          s.process!.process.kill("SIGTERM");
          await new Promise((resolve) => s.process!.process.once("exit", resolve));
          s.process = await startLlamaServer(binary, target, s.port, s.flags);
        },
      }),
    }),
  ),
  { name: "flock, target only", server: "flock", process: () => flock!, body: flockBody("target", {}) },
  { name: "flock, prompt lookup", server: "flock", process: () => flock!, body: flockBody("lookup", {}) },
  { name: "flock, prompt lookup, every offer whole (priced: false)", server: "flock", process: () => flock!, body: flockBody("lookup", { flock: { lookup: { priced: false } } }) },
  { name: "flock, draft model (specdec++)", server: "flock", process: () => flock!, body: flockBody("spec", {}) },
  { name: "flock, draft model + prompt lookup", server: "flock", process: () => flock!, body: flockBody("spec+lookup", {}) },
  {
    name: "flock, Predicted Output (the T = 0 answer)",
    server: "flock",
    process: () => flock!,
    body: (prompt, temperature, seed, expected) => ({ ...flockBody("target", {})(prompt, temperature, seed), prediction: { type: "content", content: expected } }),
  },
];

const table: BenchReport["rows"] = [];
const checks: string[] = [];
try {
  for (const s of llamaServers) s.process = await startLlamaServer(binary, target, s.port, s.flags);
  flock = await startFlock(
    [
      { id: "target", path: target, contextSize: 512, parallel: 1 },
      { id: "lookup", path: target, contextSize: 512, parallel: 1, lookup: {} },
      { id: "spec", path: target, contextSize: 512, parallel: 1, speculative: { draft } },
      { id: "spec+lookup", path: target, contextSize: 512, parallel: 1, speculative: { draft }, lookup: {} },
    ],
    stateDir,
  );
  for (const workload of workloads()) {
    // The answers at temperature 0 (the predictions), from flock's target alone.
    const expected: string[] = [];
    for (const prompt of workload.prompts) expected.push((await complete(flock.url, { model: "target", prompt, temperature: 0, max_tokens: TOKENS })).text);
    for (const temperature of [0, 1]) {
      // Warm-up: every variant once, on a prompt not measured (the online predictor and the
      // cost tables see this workload first, as a serving model would have; llama-server's
      // ngram-mod keeps what it saw, so the measured answers must be new to it).
      for (const v of variants) await measure(v, workload.prompts[0], temperature, 99, expected[0]);
      const totals = new Map<string, Sample>();
      for (let p = 1; p < workload.prompts.length; p++) {
        for (let j = 0; j < variants.length; j++) {
          const v = variants[(j + p) % variants.length];
          await v.restart?.();
          const sample = await measure(v, workload.prompts[p], temperature, 100 + p, expected[p]);
          const total = totals.get(v.name) ?? { seconds: 0, tokens: 0, drafted: 0, accepted: 0 };
          totals.set(v.name, { seconds: total.seconds + sample.seconds, tokens: total.tokens + sample.tokens, drafted: total.drafted + sample.drafted, accepted: total.accepted + sample.accepted });
        }
      }
      const rate = (name: string) => totals.get(name)!.tokens / totals.get(name)!.seconds;
      for (const v of variants) {
        const t = totals.get(v.name)!;
        const own = v.server === "flock" ? "flock, target only" : "llama-server, target only";
        table.push({
          workload: workload.name,
          temperature,
          variant: v.name,
          tokensPerSecond: rate(v.name),
          vsOwnTargetOnly: rate(v.name) / rate(own),
          vsLlamaServerTargetOnly: rate(v.name) / rate("llama-server, target only"),
          proposedPerToken: t.drafted / t.tokens,
          acceptance: t.drafted > 0 ? t.accepted / t.drafted : null,
        });
        console.error(`${workload.name} T ${temperature} ${v.name}: ${rate(v.name).toFixed(1)} tokens/s (${(rate(v.name) / rate(own)).toFixed(2)}× its target only)`);
      }
      const ngram = variants.filter((v) => v.name.includes("ngram")).map((v) => rate(v.name));
      checks.push(
        `${workload.name}, T = ${temperature}: flock prompt lookup ${(rate("flock, prompt lookup") / Math.max(...ngram)).toFixed(2)}× llama-server's best n-gram setting; ` +
          `Predicted Output ${(rate("flock, Predicted Output (the T = 0 answer)") / rate("flock, target only")).toFixed(2)}× flock's target only`,
      );
    }
  }
} finally {
  stopServers([...llamaServers.map((s) => s.process), flock]);
  rmSync(stateDir, { recursive: true, force: true });
}

printTable(table);
for (const line of checks) console.log(line);
writeReport(out, {
  benchmark: "spec-lookup",
  command: "npm run bench:spec:lookup",
  settings: {
    prompts: PROMPTS,
    tokens: TOKENS,
    document: DOCUMENT,
    editEvery: EDIT_EVERY,
    vocabulary: manifest.vocab.tokens.length,
    ...SIDE_BY_SIDE,
    model: SPEC_PAIR_MODELS,
  },
  rows: table,
});
