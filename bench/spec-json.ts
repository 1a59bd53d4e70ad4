// npm run bench:spec:json [-- --json FILE] [--prompts N] [--tokens N] [--repeats N] [--tokenizer NAME]
// Speculative decoding under a JSON schema on the forge's `spec` pair (the pair bench:spec
// measures): constrained target-only decoding against constrained speculation (SpecDec++ with
// the online predictor, rejection and coupled verification; fixed K = 4), at temperature 0 and 1,
// every output held to the schema by llama.cpp's grammar (engine/grammar.ts). Variants take
// turns per prompt in a rotating order; medians over repetitions. `forced` is the share of the
// target-only outputs' positions at which the grammar allowed a single token; `from grammar` the
// share of a variant's tokens that were such tokens proposed without the draft (a variant
// without those proposals shows what they bring). Requests share one compiled start
// state per schema, as the server's do (engine/grammar.ts: masks cached per state).
// `--tokenizer NAME` forges the pair with a real tokenizer (npm run bench:spec:json:151936:
// Qwen 2's), where a grammar pass over the vocabulary costs what it costs on a real model.
import { existsSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import type { TokenConstraint } from "../decoding/constraint.js";
import { DEFAULT_SAMPLING, type SamplingParams } from "../decoding/sampler.js";
import type { SpeculativeOverrides } from "../decoding/speculative/config.js";
import { SpeculativeStats } from "../decoding/speculative/stats.js";
import type { GenerationRequest } from "../decoding/types.js";
import { Engine } from "../engine/engine.js";
import { FORGE_FORMAT, readManifest, tokenOfState } from "../forge/manifest.js";
import { forge } from "../forge/presets.js";
import { readTokenizer, type TokenizerName } from "../forge/tokenizers.js";
import { loadPipeline } from "../pipelines/load.js";
import { ModelEntry } from "../pipelines/model-entry.js";
import type { Pipeline } from "../pipelines/pipeline.js";
import { BOAT_SCHEMA } from "./json-workload.js";
import { jsonPathArg, printTable, writeReport, type BenchReport } from "./report.js";

const { values } = parseArgs({
  options: { prompts: { type: "string" }, tokens: { type: "string" }, repeats: { type: "string" }, json: { type: "string" }, tokenizer: { type: "string" } },
  strict: false,
});
const PROMPTS = Number(values.prompts ?? 12);
const TOKENS = Number(values.tokens ?? 160);
const REPEATS = Number(values.repeats ?? 3);
const TOKENIZER = values.tokenizer === undefined ? undefined : (String(values.tokenizer) as TokenizerName);
const suffix = TOKENIZER ? `-${TOKENIZER}` : "";
const out = jsonPathArg(`spec-json${suffix}.json`);
const SCHEMA = BOAT_SCHEMA;

const dir = join(import.meta.dirname, "..", ".cache", `bench-spec${suffix}-f${FORGE_FORMAT}`);
if (!existsSync(join(dir, "manifest.json"))) {
  const tokenizer = TOKENIZER ? await readTokenizer(TOKENIZER, join(import.meta.dirname, "..", ".cache")) : undefined;
  forge({ outDir: dir, preset: "spec", seed: 1, tokenizer });
}
const manifest = readManifest(dir);
const pair = manifest.pairs[0];
const target = join(dir, manifest.models[pair.target].file);
const draft = join(dir, manifest.models[pair.draft].file);
const engine = await Engine.create({ gpu: "off", threads: 1 });
const stateDir = mkdtempSync(join(tmpdir(), "flock-bench-spec-json-"));
const entry = (id: string, speculative: boolean) => ModelEntry.parse({ id, path: target, contextSize: 512, parallel: 1, ...(speculative ? { speculative: { draft } } : {}) });
const plain = await loadPipeline(engine, entry("target", false), stateDir);
const speculative = await loadPipeline(engine, entry("speculative", true), stateDir);
const compiler = plain.model.grammars;
if (!compiler) throw new Error("the native extension lacks the grammar kernels: npm run build:native");

const words = tokenOfState(manifest).slice(1);
const promptOf = (i: number) => [manifest.vocab.bos, words[i % words.length]];
const variants: Array<{ name: string; pipeline: Pipeline; speculative?: SpeculativeOverrides; forcedTokens?: false }> = [
  { name: "target only", pipeline: plain },
  { name: "specdec++, rejection", pipeline: speculative, speculative: { policy: "specdec++", verification: "rejection" } },
  { name: "specdec++, rejection, no forced tokens", pipeline: speculative, speculative: { policy: "specdec++", verification: "rejection" }, forcedTokens: false },
  { name: "specdec++, coupled", pipeline: speculative, speculative: { policy: "specdec++", verification: "coupled" } },
  { name: "fixed K = 4, rejection", pipeline: speculative, speculative: { policy: "fixed", k: 4, verification: "rejection" } },
];

/** The constraint with its forced tokens hidden: every candidate comes from the draft. */
function withoutForcedTokens(constraint: TokenConstraint): TokenConstraint {
  return {
    allows: (token) => constraint.allows(token),
    mask: (logits) => constraint.mask(logits),
    forcedToken: () => undefined,
    accept: (token) => constraint.accept(token),
    clone: () => withoutForcedTokens(constraint.clone()),
    release: () => constraint.release(),
  };
}

interface Run {
  seconds: number;
  tokens: number;
  /** Tokens the grammar forced, proposed without the draft. */
  fromGrammar: number;
  complete: number;
  stats: SpeculativeStats;
  outputs: number[][];
}

async function run(variant: (typeof variants)[number], sampling: SamplingParams, prompt: number, rep: number): Promise<Run> {
  const stats = new SpeculativeStats();
  const request: GenerationRequest = {
    prompt: promptOf(prompt),
    maxTokens: TOKENS,
    sampling,
    seed: 100 + prompt + 1000 * rep,
    stopStrings: [],
    stopTokens: [],
    topLogprobs: null,
    constraint: variant.forcedTokens === false ? withoutForcedTokens(compiler!.start({ jsonSchema: SCHEMA })) : compiler!.start({ jsonSchema: SCHEMA }),
    ...(variant.speculative ? { speculative: variant.speculative } : {}),
  };
  const tokens: number[] = [];
  let fromGrammar = 0;
  let text = "";
  let finish: string | undefined;
  const started = performance.now();
  for await (const step of variant.pipeline.generate(request)) {
    tokens.push(...step.tokens);
    text += step.text;
    finish = step.finishReason ?? finish;
    if (step.speculative) stats.recordRound(step.speculative.drafted, step.speculative.accepted);
    fromGrammar += step.speculative?.origins.filter((o) => o === "forced").length ?? 0;
  }
  const seconds = (performance.now() - started) / 1000;
  let complete = 0;
  if (finish === "stop") {
    JSON.parse(text);
    complete = 1;
  }
  return { seconds, tokens: tokens.length, fromGrammar, complete, stats, outputs: [tokens] };
}

/** The share of positions at which the grammar allowed one token, over the outputs. */
function forcedShare(outputs: number[][]): number {
  let forced = 0;
  let positions = 0;
  const vocabulary = plain.model.vocabularySize;
  for (const tokens of outputs) {
    const state = compiler!.compile({ jsonSchema: SCHEMA });
    for (const token of tokens) {
      const logits = new Float32Array(vocabulary);
      state.mask(logits);
      if (logits.reduce((n, l) => (l > -Infinity ? n + 1 : n), 0) === 1) forced++;
      positions++;
      if (plain.model.isEndOfGeneration(token)) break;
      state.accept(token);
    }
  }
  return forced / positions;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const rows: BenchReport["rows"] = [];
for (const temperature of [0, 1]) {
  const sampling: SamplingParams = { ...DEFAULT_SAMPLING, temperature };
  // Warm-up: the online predictor and the cost table see constrained traffic first.
  for (let p = PROMPTS; p < 2 * PROMPTS; p++) for (const v of variants.slice(1)) await run(v, sampling, p, 0);
  const ratios = new Map<string, number[]>();
  const speeds = new Map<string, number[]>();
  const totals = new Map<string, Run>();
  for (let rep = 0; rep < REPEATS; rep++) {
    const done = new Map<string, Run>();
    for (let p = 0; p < PROMPTS; p++) {
      for (let j = 0; j < variants.length; j++) {
        const v = variants[(j + p + rep) % variants.length];
        const r = await run(v, sampling, p, rep);
        const sum = done.get(v.name);
        if (sum) {
          sum.seconds += r.seconds;
          sum.tokens += r.tokens;
          sum.fromGrammar += r.fromGrammar;
          sum.complete += r.complete;
          sum.stats.merge(r.stats);
          sum.outputs.push(...r.outputs);
        } else done.set(v.name, r);
      }
    }
    const baseline = done.get("target only")!;
    for (const [name, r] of done) {
      speeds.set(name, [...(speeds.get(name) ?? []), r.tokens / r.seconds]);
      ratios.set(name, [...(ratios.get(name) ?? []), r.tokens / r.seconds / (baseline.tokens / baseline.seconds)]);
      const total = totals.get(name);
      if (total) {
        total.tokens += r.tokens;
        total.fromGrammar += r.fromGrammar;
        total.complete += r.complete;
        total.stats.merge(r.stats);
        total.outputs.push(...r.outputs);
      } else totals.set(name, r);
    }
  }
  for (const v of variants) {
    const total = totals.get(v.name)!;
    rows.push({
      temperature,
      variant: v.name,
      tokensPerSecond: median(speeds.get(v.name)!),
      vsTargetOnly: median(ratios.get(v.name)!),
      acceptance: v.speculative ? total.stats.acceptanceRate : null,
      meanCandidates: v.speculative ? total.stats.meanCandidateLength : null,
      completeJson: total.complete / total.outputs.length,
      forced: v.speculative ? null : forcedShare(total.outputs),
      fromGrammar: v.speculative ? total.fromGrammar / total.tokens : null,
    });
    console.error(`T ${temperature} ${v.name}: ${median(speeds.get(v.name)!).toFixed(1)} tokens/s (${median(ratios.get(v.name)!).toFixed(2)}× target only)`);
  }
}

printTable(rows);
writeReport(out, {
  benchmark: "spec-json",
  command: TOKENIZER ? `npm run bench:spec:json -- --tokenizer ${TOKENIZER} --prompts ${PROMPTS} --tokens ${TOKENS} --repeats ${REPEATS}` : "npm run bench:spec:json",
  settings: { vocabulary: manifest.vocab.tokens.length, tokenizer: TOKENIZER ?? "forge", prompts: PROMPTS, tokens: TOKENS, repeats: REPEATS, schema: SCHEMA, statistic: "median over repetitions of tokens per second; completeJson: share of outputs that ended by themselves and parse" },
  rows,
});
await engine[Symbol.asyncDispose]();
