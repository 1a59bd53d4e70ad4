// npm run bench:spec [-- --json FILE] [--prompts N] [--warmup N] [--tokens N] [--repeats N] [--chunk N] [--thresholds auto,0.7] [--only NAME,NAME…] [--preset spec|spec-compute] [--verification rejection,coupled] [--tokenizer NAME | --vocab-size N]
// Speculative decoding on the forge's `spec` pair (target ≥ 8× the draft's cost), at
// temperature 1 and 0: target only, fixed K = 1..8, the draft-confidence rule, node-llama-cpp's
// own DraftSequenceTokenPredictor on the same models, and SpecDec++ with each predictor — each
// verified by rejection sampling and (rows marked [coupled]) by coupled keyed noise, the mode of
// requests with a seed. `--preset spec-compute` swaps in a target that is compute-bound on CPUs.
// `--tokenizer NAME` forges the pair with a real tokenizer (npm run bench:spec:151936: Qwen 2's),
// `--vocab-size N` pads the forge's own vocabulary; the trained heads are left out there (their
// training set needs the target's distributions).
import { existsSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { DraftSequenceTokenPredictor, type Token } from "node-llama-cpp";
import { DEFAULT_SAMPLING, type SamplingParams, softmax } from "../decoding/sampler.js";
import type { SpeculativeOverrides } from "../decoding/speculative/config.js";
import { TokenEmbeddings } from "../decoding/speculative/embeddings.js";
import { draftFeatures } from "../decoding/speculative/features.js";
import { collectSamples, trainHead } from "../decoding/speculative/train-head.js";
import { SpeculativeStats } from "../decoding/speculative/stats.js";
import type { GenerationRequest } from "../decoding/types.js";
import { Engine } from "../engine/engine.js";
import { FORGE_FORMAT, readManifest, tokenOfState } from "../forge/manifest.js";
import { forge } from "../forge/presets.js";
import { readTokenizer, type TokenizerName } from "../forge/tokenizers.js";
import { ModelEntry } from "../pipelines/model-entry.js";
import { loadPipeline } from "../pipelines/load.js";
import type { Pipeline, SpeculativePipeline } from "../pipelines/pipeline.js";
import { jsonPathArg, printTable, writeReport, type BenchReport } from "./report.js";

const { values } = parseArgs({
  options: {
    prompts: { type: "string" },
    warmup: { type: "string" },
    tokens: { type: "string" },
    repeats: { type: "string" },
    json: { type: "string" },
    thresholds: { type: "string" },
    only: { type: "string" },
    chunk: { type: "string" },
    preset: { type: "string" },
    verification: { type: "string" },
    "vocab-size": { type: "string" },
    tokenizer: { type: "string" },
  },
  strict: false,
});
const THRESHOLDS = String(values.thresholds ?? "auto,0.7")
  .split(",")
  .map((h) => (h === "auto" ? ("auto" as const) : Number(h)));
const PROMPTS = Number(values.prompts ?? 24);
/** Prompts each SpecDec++ pipeline serves before the measured ones: its online state (predictor, costs, calibration) learns there. */
const WARMUP = Number(values.warmup ?? 72);
const VERIFICATIONS = String(values.verification ?? "rejection,coupled").split(",") as Array<"rejection" | "coupled">;
const TOKENS = Number(values.tokens ?? 48);

const PRESET = String(values.preset ?? "spec");
if (PRESET !== "spec" && PRESET !== "spec-compute") throw new Error(`--preset: spec or spec-compute, not ${PRESET}`);
const TOKENIZER = values.tokenizer === undefined ? undefined : (String(values.tokenizer) as TokenizerName);
const VOCABULARY = values["vocab-size"] === undefined ? undefined : Number(values["vocab-size"]);
const LARGE = TOKENIZER !== undefined || VOCABULARY !== undefined;
const suffix = TOKENIZER ? `-${TOKENIZER}` : VOCABULARY === undefined ? "" : `-${VOCABULARY}`;
const out = jsonPathArg(`${PRESET}${suffix}.json`);
const dir = join(import.meta.dirname, "..", ".cache", `bench-${PRESET}${suffix}-f${FORGE_FORMAT}`);
if (!existsSync(join(dir, "manifest.json"))) {
  const tokenizer = TOKENIZER ? await readTokenizer(TOKENIZER, join(import.meta.dirname, "..", ".cache")) : undefined;
  forge({ outDir: dir, preset: PRESET, seed: 1, vocabSize: VOCABULARY, tokenizer });
}
const manifest = readManifest(dir);
const pair = manifest.pairs[0];
const target = join(dir, manifest.models[pair.target].file);
const draft = join(dir, manifest.models[pair.draft].file);

const engine = await Engine.create({ gpu: "off", threads: 1 });
// A fresh state directory: the online predictor starts from its prior in every run.
const stateDir = mkdtempSync(join(tmpdir(), "flock-bench-spec-"));
const entry = (id: string, predictor?: "online" | "draft-confidence" | "head", head?: string) =>
  ModelEntry.parse({ id, path: target, contextSize: 512, parallel: 1, ...(predictor ? { speculative: { draft, predictor, head } } : {}) });
const plain = await loadPipeline(engine, entry("target"), stateDir);
const online = (await loadPipeline(engine, entry("online", "online"), stateDir)) as SpeculativePipeline;
const confidence = (await loadPipeline(engine, entry("confidence", "draft-confidence"), stateDir)) as SpeculativePipeline;

// Prompts: BOS and one word, starting in different states; warm-up prompts are separate.
const words = tokenOfState(manifest).slice(1);
const promptOf = (i: number) => [manifest.vocab.bos, words[i % words.length]];

// The authors' head (reading the draft's hidden state at the candidate) and the head that reads
// the candidate's token embedding instead, each trained offline (as npm run train:acceptance
// does) on prompts the measurement does not use, then loaded from its file.
const heads: Array<{ name: string; pipeline: SpeculativePipeline }> = [];
/** One real hidden state of the draft, to time the heads. */
let draftHidden: Float32Array | null = null;
if (engine.capabilities.hiddenStates && !LARGE) {
  const trainingDraft = await engine.load(ModelEntry.parse({ id: "training-draft", path: draft, contextSize: 512, parallel: 1 }), { hiddenStates: true });
  // Start words after those of the measured and warm-up prompts (disjoint at the default 24 prompts).
  const trainingPrompts = Array.from({ length: Math.max(24, words.length - 2 * PROMPTS) }, (_, i) => promptOf(2 * PROMPTS + i));
  for (const [candidate, name] of [
    ["hidden", "authors' head"],
    ["embedding", "head, candidate embedding"],
  ] as const) {
    const embeddings = candidate === "embedding" ? await TokenEmbeddings.load(draft) : undefined;
    const samples = await collectSamples(plain.model, trainingDraft, trainingPrompts, { candidates: 8, tokensPerPrompt: 48, temperature: 1, seed: 500, embeddings });
    const { head } = trainHead(samples, { blocks: 1, epochs: 15, batchSize: 32, learningRate: 3e-3, rejectionWeight: 6, seed: 1, candidate });
    draftHidden = samples[0].input.slice(0, trainingDraft.embeddingSize);
    const headFile = join(stateDir, `head-${candidate}.json`);
    head.save(headFile, { samples: samples.length });
    heads.push({ name, pipeline: (await loadPipeline(engine, entry(`head-${candidate}`, "head", headFile), stateDir)) as SpeculativePipeline });
  }
}

const stateOf = (token: number) => manifest.states.ofToken[token];

interface Run {
  seconds: number;
  tokens: number;
  stats: SpeculativeStats;
  /** Closed-form acceptance expected over the positions that were verified. */
  expectedAcceptance: number;
  /** Accepted / verified positions (comparable with the closed form). */
  verifiedAcceptance: number;
  /** Share of generated tokens produced after the run's state sequence first repeated. */
  cyclic: number;
  /** Positions verified (the weight of the two acceptances when runs are merged). */
  verified: number;
}

/** Two runs over different prompts as one. */
function mergeRuns(a: Run, b: Run): Run {
  const stats = new SpeculativeStats();
  stats.merge(a.stats);
  stats.merge(b.stats);
  const byVerified = (f: (r: Run) => number) => (a.verified + b.verified > 0 ? (f(a) * a.verified + f(b) * b.verified) / (a.verified + b.verified) : 0);
  return {
    seconds: a.seconds + b.seconds,
    tokens: a.tokens + b.tokens,
    stats,
    expectedAcceptance: byVerified((r) => r.expectedAcceptance),
    verifiedAcceptance: byVerified((r) => r.verifiedAcceptance),
    cyclic: (a.cyclic * a.tokens + b.cyclic * b.tokens) / (a.tokens + b.tokens),
    verified: a.verified + b.verified,
  };
}

function cyclicShare(prompt: number[], tokens: number[]): number {
  const seen = new Set<number>([stateOf(prompt.at(-1)!)]);
  for (let i = 0; i < tokens.length; i++) {
    const s = stateOf(tokens[i]);
    if (seen.has(s)) return (tokens.length - i) / tokens.length;
    seen.add(s);
  }
  return 0;
}

/**
 * Prompt p's sampling seed in repetition rep: every repetition samples fresh trajectories (the
 * variants of one repetition share them), so the table averages over REPEATS × PROMPTS
 * generations instead of timing the same ones again.
 */
const seedOf = (p: number, rep: number) => 100 + p + 1000 * rep;

async function runFlock(pipeline: Pipeline, sampling: SamplingParams, speculative: SpeculativeOverrides | undefined, first: number, count: number, rep: number): Promise<Run> {
  const stats = new SpeculativeStats();
  let tokens = 0;
  let expected = 0;
  let verified = 0;
  let cyclic = 0;
  const alpha = sampling.temperature === 0 ? pair.greedyAgreementPerState.map(Number) : pair.acceptancePerState;
  const started = performance.now();
  for (let p = first; p < first + count; p++) {
    const prompt = promptOf(p);
    const request: GenerationRequest = { prompt, maxTokens: TOKENS, sampling, seed: seedOf(p, rep), stopStrings: [], stopTokens: [], topLogprobs: null, speculative };
    let last = prompt.at(-1)!;
    const generated: number[] = [];
    for await (const step of pipeline.generate(request)) {
      generated.push(...step.tokens);
      if (step.speculative) {
        const round = step.speculative;
        stats.recordRound(round.drafted, round.accepted);
        let state = stateOf(last);
        for (let i = 0; i < Math.min(round.drafted, round.accepted + 1); i++) {
          expected += alpha[state];
          verified++;
          if (i < round.accepted) state = stateOf(step.tokens[i]);
        }
      }
      last = step.tokens.at(-1)!;
    }
    tokens += generated.length;
    cyclic += cyclicShare(prompt, generated) * generated.length;
  }
  const seconds = (performance.now() - started) / 1000;
  return {
    seconds,
    tokens,
    stats,
    expectedAcceptance: verified ? expected / verified : 0,
    verifiedAcceptance: verified ? stats.acceptedTokens / verified : 0,
    cyclic: cyclic / tokens,
    verified,
  };
}

/** node-llama-cpp's own speculative decoding: a DraftSequenceTokenPredictor on the same models. */
async function runDraftSequencePredictor(temperature: number, first: number, count: number, rep: number): Promise<Run & { validated: number; refuted: number }> {
  const targetContext = await plain.model.weights.createContext({ contextSize: 512, threads: { ideal: 1, min: 1 } });
  const draftContext = await online.draft.weights.createContext({ contextSize: 512, threads: { ideal: 1, min: 1 } });
  const sequence = targetContext.getSequence({ tokenPredictor: new DraftSequenceTokenPredictor(draftContext.getSequence()) });
  let tokens = 0;
  let cyclic = 0;
  const started = performance.now();
  for (let p = first; p < first + count; p++) {
    await sequence.clearHistory();
    const prompt = promptOf(p);
    const generated: number[] = [];
    for await (const token of sequence.evaluate(prompt as Token[], { temperature, seed: seedOf(p, rep) })) {
      generated.push(token);
      if (generated.length >= TOKENS) break;
    }
    tokens += generated.length;
    cyclic += cyclicShare(prompt, generated) * generated.length;
  }
  const seconds = (performance.now() - started) / 1000;
  const { validated, refuted } = sequence.tokenPredictions;
  await targetContext.dispose();
  await draftContext.dispose();
  return { seconds, tokens, stats: new SpeculativeStats(), expectedAcceptance: 0, verifiedAcceptance: 0, cyclic: cyclic / tokens, verified: 0, validated, refuted };
}

interface Variant {
  name: string;
  pipeline: Pipeline;
  speculative?: SpeculativeOverrides;
}
const speculativeVariants: Variant[] = [
  ...[1, 2, 3, 4, 5, 6, 7, 8].map((k): Variant => ({ name: `fixed K=${k}`, pipeline: online, speculative: { policy: "fixed", k } })),
  { name: "confidence p_min=0.6", pipeline: online, speculative: { policy: "confidence", pMin: 0.6, maxCandidates: 16 } },
  ...THRESHOLDS.flatMap((threshold): Variant[] => [
    { name: `SpecDec++ h=${threshold} (online logistic)`, pipeline: online, speculative: { policy: "specdec++", threshold } },
    { name: `SpecDec++ h=${threshold} (draft confidence)`, pipeline: confidence, speculative: { policy: "specdec++", threshold } },
    ...heads.map((head): Variant => ({ name: `SpecDec++ h=${threshold} (${head.name})`, pipeline: head.pipeline, speculative: { policy: "specdec++", threshold } })),
  ]),
];
const allVariants: Variant[] = [
  { name: "target only", pipeline: plain },
  ...VERIFICATIONS.flatMap((verification) =>
    speculativeVariants.map((v): Variant => ({ ...v, name: verification === "coupled" ? `${v.name} [coupled]` : v.name, speculative: { ...v.speculative, verification } })),
  ),
];
// --only: variants whose names contain any of the comma-separated parts (target only is always run).
const only = values.only ? String(values.only).split(",") : null;
const variants = allVariants.filter((v) => !only || v.name === "target only" || only.some((part) => v.name.includes(part)));

const REPEATS = Number(values.repeats ?? 3);
const CHUNK = Number(values.chunk ?? 2);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const rows: BenchReport["rows"] = [];
for (const temperature of [1, 0]) {
  const sampling: SamplingParams = { ...DEFAULT_SAMPLING, temperature };
  // Steady state: every SpecDec++ pipeline (its online predictor and offsets, its cost table,
  // its calibration of P̂ for this temperature) has served WARMUP prompts — other start words
  // than the measured ones — as a server has before the traffic it is judged on.
  for (const pipeline of [online, confidence, ...heads.map((h) => h.pipeline)]) {
    for (const verification of VERIFICATIONS) await runFlock(pipeline, sampling, { policy: "specdec++", verification }, PROMPTS, WARMUP, 0);
  }
  // Every repetition runs every variant once, interleaved, so slow phases of a shared machine
  // hit all of them; the table reports medians over repetitions.
  const runs = new Map<string, Run[]>();
  const speeds = new Map<string, number[]>();
  const ratios = new Map<string, number[]>();
  const record = (name: string, run: Run, baseline: Run) => {
    runs.set(name, [...(runs.get(name) ?? []), run]);
    speeds.set(name, [...(speeds.get(name) ?? []), run.tokens / run.seconds]);
    ratios.set(name, [...(ratios.get(name) ?? []), run.tokens / run.seconds / (baseline.tokens / baseline.seconds)]);
  };
  const external = "node-llama-cpp DraftSequenceTokenPredictor";
  let validated = 0;
  let refuted = 0;
  // Variants take turns every CHUNK prompts (in a rotating order), so that the slow and fast
  // phases of a shared machine, which last seconds, fall on all of them alike.
  for (let rep = 0; rep < REPEATS; rep++) {
    const done = new Map<string, Run>();
    const add = (name: string, run: Run): void => {
      done.set(name, done.has(name) ? mergeRuns(done.get(name)!, run) : run);
    };
    for (let first = 0, turn = 0; first < PROMPTS; first += CHUNK, turn++) {
      const count = Math.min(CHUNK, PROMPTS - first);
      const jobs: Array<() => Promise<void>> = [
        ...variants.map((v) => async () => add(v.name, await runFlock(v.pipeline, sampling, v.speculative, first, count, rep))),
        async () => {
          const nl = await runDraftSequencePredictor(temperature, first, count, rep);
          validated += nl.validated;
          refuted += nl.refuted;
          add(external, nl);
        },
      ];
      for (let j = 0; j < jobs.length; j++) await jobs[(j + turn) % jobs.length]();
    }
    const baseline = done.get("target only")!;
    for (const [name, run] of done) record(name, run, baseline);
  }
  for (const name of [...variants.map((v) => v.name), external]) {
    const v = variants.find((x) => x.name === name);
    const all = runs.get(name)!;
    const stats = new SpeculativeStats();
    for (const r of all) stats.merge(r.stats);
    const mean = (f: (r: Run) => number) => all.reduce((acc, r) => acc + f(r), 0) / all.length;
    const speculative = v?.speculative !== undefined;
    rows.push({
      temperature,
      variant: name,
      verification: v?.speculative?.verification ?? null,
      tokensPerSecond: median(speeds.get(name)!),
      vsTargetOnly: median(ratios.get(name)!),
      acceptance: speculative ? stats.acceptanceRate : name === external ? validated / Math.max(1, validated + refuted) : null,
      verifiedAcceptance: speculative ? mean((r) => r.verifiedAcceptance) : null,
      closedForm: speculative ? mean((r) => r.expectedAcceptance) : null,
      meanCandidates: speculative ? stats.meanCandidateLength : null,
      targetCallsPerToken: speculative ? stats.targetCalls / all.reduce((a, r) => a + r.tokens, 0) : name === external ? null : 1,
      // A round the policy ended before a draw paid a draft step for a position it did not draft.
      declinedPerRound: speculative ? stats.declinedBeforeDraw / Math.max(1, stats.targetCalls) : null,
      // Only greedy runs can sit in a cycle of the chain.
      cyclicShare: temperature === 0 ? mean((r) => r.cyclic) : null,
    });
  }
}
/**
 * What stopping after a draw can gain on this machine's cost table: rounds of REPLAY_K
 * candidates are recorded with every candidate's acceptance a = min(1, p(y)/q(y)) (or 0/1 at
 * T = 0), then replayed: fixed K, the cost-aware rule (costs.ts) fed the true a as P̂ after each
 * draw (a perfect predictor), and the best length per round in hindsight (no rule can see
 * later candidates' a). Each as a ratio to the best fixed K on the same rounds. Declining a
 * position before its draw (at T = 0 the draw is known) is not modelled: it can gain more.
 */
const REPLAY_K = 8;
async function stoppingReplay(sampling: SamplingParams): Promise<{ perfectPredictor: number; hindsight: number; bestFixedK: number; rounds: number }> {
  const rounds: number[][] = [];
  const observe = online.predictor.observe.bind(online.predictor);
  online.predictor.observe = (f, a) => {
    if (f.position === 1) rounds.push([]);
    rounds.at(-1)!.push(a);
    observe(f, a);
  };
  try {
    await runFlock(online, sampling, { policy: "fixed", k: REPLAY_K, verification: "rejection" }, 0, PROMPTS, 0);
  } finally {
    online.predictor.observe = observe;
  }
  const costs = online.costs;
  const draftStep = costs.describe().draftStepMs!;
  const rate = (choose: (a: number[]) => number) => {
    let tokens = 0;
    let ms = 0;
    for (const a of rounds) {
      const k = choose(a);
      let survival = 1;
      tokens += 1;
      for (let i = 0; i < k; i++) tokens += survival *= a[i];
      ms += k * draftStep + costs.targetPass(k + 1);
    }
    return tokens / ms;
  };
  const perfect = (a: number[]) => {
    const survivals: number[] = [];
    for (let k = 1; k <= a.length; k++) {
      survivals.push((survivals.at(-1) ?? 1) * a[k - 1]);
      if (k === a.length || costs.draftAnother(k, survivals, a[k - 1], REPLAY_K) === "stop") return k;
    }
    return a.length;
  };
  const hindsight = (a: number[]) => {
    let best = { k: 1, rate: -Infinity };
    let survival = 1;
    let tokens = 1;
    a.forEach((x, i) => {
      tokens += survival *= x;
      const r = tokens / ((i + 1) * draftStep + costs.targetPass(i + 2));
      if (r > best.rate) best = { k: i + 1, rate: r };
    });
    return best.k;
  };
  const fixed = Array.from({ length: REPLAY_K }, (_, i) => rate((a) => Math.min(i + 1, a.length)));
  const best = Math.max(...fixed);
  return { perfectPredictor: rate(perfect) / best, hindsight: rate(hindsight) / best, bestFixedK: fixed.indexOf(best) + 1, rounds: rounds.length };
}
const replays: Record<number, Awaited<ReturnType<typeof stoppingReplay>>> = {};
for (const temperature of [1, 0]) replays[temperature] = await stoppingReplay({ ...DEFAULT_SAMPLING, temperature });
for (const [temperature, c] of Object.entries(replays)) {
  console.log(
    `T = ${temperature}, ${c.rounds} rounds of ${REPLAY_K} replayed on this cost table: a perfect predictor under the cost-aware rule ${c.perfectPredictor.toFixed(3)}× ` +
      `the best fixed K (${c.bestFixedK}); the best length per round in hindsight ${c.hindsight.toFixed(3)}×`,
  );
}

// A predictor must pay for itself: its cost per drafted token against a draft step.
function headCost(head: SpeculativePipeline): number {
  const f = { ...draftFeatures(softmax(Float32Array.from([0, 1])), Float32Array.from([0, 1]), 1, 1, 1, 0.7), hidden: draftHidden!, candidateHidden: draftHidden! };
  const N = 2000;
  const started = performance.now();
  for (let i = 0; i < N; i++) head.predictor.predict(f);
  return (performance.now() - started) / N;
}
function predictorCost(vocabulary: number): number {
  const logits = Float32Array.from({ length: vocabulary }, (_, i) => -((i * 7919) % 101) / 10);
  const q = softmax(logits);
  const N = 2000;
  const started = performance.now();
  for (let i = 0; i < N; i++) online.predictor.predict(draftFeatures(q, logits, 1, i % vocabulary, 1 + (i % 8), 0.7));
  return (performance.now() - started) / N;
}
const predictorMs = Object.fromEntries([manifest.vocab.tokens.length, 32000, 128000, 151936].map((n) => [n, predictorCost(n)]));
const costs = online.costs.describe();
console.log(
  `online predictor, ms per drafted token (features + prediction): ${JSON.stringify(predictorMs)}; ` +
    `${((100 * predictorMs[manifest.vocab.tokens.length]) / (costs.draftStepMs ?? NaN)).toFixed(1)}% of this pair's draft step`,
);
const headMs = Object.fromEntries(heads.map((h) => [h.name, headCost(h.pipeline)]));
for (const [name, ms] of Object.entries(headMs)) console.log(`${name}, ms per drafted token: ${ms.toFixed(4)}; ${((100 * ms) / (costs.draftStepMs ?? NaN)).toFixed(1)}% of this pair's draft step`);
console.log(`measured round costs (ms): draft step ${costs.draftStepMs?.toFixed(2)}; target pass over n tokens ${JSON.stringify(costs.targetPassMs)}`);
for (const h of heads) console.log(`the ${h.name} pipeline's (ms): ${JSON.stringify(h.pipeline.costs.describe())}`);

printTable(rows);
writeReport(out, {
  benchmark: "spec",
  command: ["npm run bench:spec", ...(process.argv.length > 2 ? ["--", ...process.argv.slice(2)] : [])].join(" "),
  settings: {
    preset: PRESET,
    vocabulary: manifest.vocab.tokens.length,
    prompts: PROMPTS,
    warmupPrompts: WARMUP,
    tokensPerPrompt: TOKENS,
    repeats: REPEATS,
    target: manifest.models[pair.target].shape,
    draft: manifest.models[pair.draft].shape,
    threads: 1,
    costs,
    predictorMsPerDraftToken: predictorMs,
    headMsPerDraftToken: headMs,
    stoppingReplayOverBestFixedK: replays,
  },
  rows,
});
await engine[Symbol.asyncDispose]();
