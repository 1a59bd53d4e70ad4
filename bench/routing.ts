// npm run bench:routing [-- --json FILE] [--tokens N]
// Routed LoRA experts. Quality on the forged routing set (a base whose residual tracks the
// text's domain, four domain LoRAs): mean NLL per token of token-wise routing (PHATGOOSE with
// the forged gates, with gates fitted by fit:gates' average-activation method and trained by its
// phatgoose method, Arrow)
// against each baseline (the base, each single expert, the uniform merge, retrieval) on mixed
// and on domain-pure text, and how often the routed output layer picks the text's own domain.
// Speed: tokens/s of routed decoding through the pipeline against the base model and one plain
// LoRA, for 2, 8 and 32 experts on a random llama (d=512, 4 layers, q8_0, rank-8 experts on
// every matrix) with the forge's vocabulary and padded to 151,936 tokens, all variants timed in
// rounds, interleaved, medians.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { negativeLogLikelihood } from "../decoding/fusion/score.js";
import type { RoutingOverrides } from "../experts/config.js";
import { DEFAULT_SAMPLING } from "../decoding/sampler.js";
import { Engine } from "../engine/engine.js";
import { TensorType } from "../engine/gguf/writer.js";
import { DOMAINS, document, renderText } from "../forge/language.js";
import { readManifest } from "../forge/manifest.js";
import { forge } from "../forge/presets.js";
import { matrices, type RandomModelShape, writeRandomLlama, writeRandomLora } from "../forge/random.js";
import { ModelEntry } from "../pipelines/model-entry.js";
import { createRng } from "../decoding/rng.js";
import { averageActivation } from "../experts/fit-gates.js";
import { trainGates } from "../experts/train-gates.js";
import { writeGateFile } from "../experts/gates.js";
import { loadPipelines } from "../pipelines/load.js";
import type { Pipeline, PipelineRequest, RoutedPipeline } from "../pipelines/pipeline.js";
import { scoreRouted } from "../experts/routed.js";
import { jsonPathArg, printTable, writeReport, type BenchReport } from "./report.js";

const { values } = parseArgs({ options: { tokens: { type: "string" }, rounds: { type: "string" }, json: { type: "string" } }, strict: false });
const TOKENS = Number(values.tokens ?? 64);
const ROUNDS = Number(values.rounds ?? 5);
const out = jsonPathArg("routing.json");
const root = mkdtempSync(join(tmpdir(), "flock-bench-routing-"));
const engine = await Engine.create({ gpu: "off", threads: 1 });
if (!engine.capabilities.routedLora) {
  console.error("bench:routing needs flock's native build (routed LoRA); run npm run build:native");
  process.exit(1);
}

try {
  // ---- Quality on the forged routing set ----
  const dir = join(root, "forge");
  forge({ outDir: dir, preset: "demo", seed: 1 });
  const m = readManifest(dir);
  const basePath = join(dir, m.models["flock-routing-base"].file);
  const experts = Object.entries(m.adapters)
    .filter(([, a]) => a.base === "flock-routing-base")
    .map(([, a]) => ({ name: a.domain, lora: join(dir, a.file), gates: join(dir, a.gates!) }));

  // Gates fitted by npm run fit:gates' two methods on the same fresh domain text (never the
  // held-out text): average activation, and PHATGOOSE's gate training (the expert frozen, its
  // gates trained from zeros in llama.cpp's optimizer, the tool's defaults).
  const fitBase = await engine.load(ModelEntry.parse({ id: "fit", path: basePath, contextSize: 2048, parallel: 1 }), { hiddenStates: true });
  const fitRng = createRng(0xf17);
  const fitted = [];
  const gateTrained = [];
  for (const [i, e] of experts.entries()) {
    const domain = DOMAINS.find((d) => d.name === e.name)!;
    const fitTexts = Array.from({ length: 8 }, () => renderText(document(fitRng, [domain], 30)));
    const { gate } = await averageActivation(fitBase, fitTexts);
    const gates = join(root, `${e.name}.avg.gates.gguf`);
    writeGateFile(gates, [{ module: "output.weight", gate }], "average-activation");
    fitted.push({ ...e, gates });
    const trainedGates = join(root, `${e.name}.phatgoose.gates.gguf`);
    trainGates(engine.llama, { modelPath: basePath, adapterPath: e.lora, out: trainedGates, train: fitTexts, threads: 1, seed: 1 + i });
    gateTrained.push({ ...e, gates: trainedGates });
  }

  const routedSet = async (id: string, library: typeof experts) => {
    const pipelines = await loadPipelines(engine, ModelEntry.parse({ id, path: basePath, contextSize: 2048, parallel: 1, experts: { library, maxContexts: 16 } }), root);
    return pipelines as [Pipeline, RoutedPipeline, RoutedPipeline];
  };
  const [, phatgoose, arrow] = await routedSet("trained", experts);
  const [, averaged] = await routedSet("average", fitted);
  const [, gateTraining] = await routedSet("gate-trained", gateTrained);

  const nll = async (pipeline: RoutedPipeline, overrides: RoutingOverrides, tokens: number[]) => {
    const { logits, routing } = await scoreRouted(pipeline, overrides, tokens);
    let total = 0;
    for (let p = 0; p + 1 < tokens.length; p++) total += negativeLogLikelihood(logits[p], tokens[p + 1]);
    return { nll: total / (tokens.length - 1), routing };
  };
  const texts = [{ name: "mixed", text: m.mixedText!, domain: null as string | null }, ...m.domains.map((d) => ({ name: d.name, text: d.heldOutText, domain: d.name }))];
  const variants: Array<{ name: string; pipeline: RoutedPipeline; overrides: RoutingOverrides }> = [
    { name: "routed: PHATGOOSE (forged gates)", pipeline: phatgoose, overrides: {} },
    { name: "routed: PHATGOOSE (average-activation gates)", pipeline: averaged, overrides: {} },
    { name: "routed: PHATGOOSE (trained gates)", pipeline: gateTraining, overrides: {} },
    { name: "routed: Arrow", pipeline: arrow, overrides: {} },
    { name: "uniform merge", pipeline: phatgoose, overrides: { mode: "merge" } },
    { name: "retrieval (whole text)", pipeline: phatgoose, overrides: { mode: "retrieval" } },
    ...experts.map((e) => ({ name: `single: ${e.name}`, pipeline: phatgoose, overrides: { mode: "single" as const, expert: e.name } })),
  ];
  const quality: BenchReport["rows"] = [];
  const tokensOf = (text: string) => phatgoose.model.tokenizePrompt(text).slice(0, 600);
  // The base alone (no adapter), for reference.
  const baseRow: Record<string, string | number> = { variant: "base (no expert)" };
  for (const t of texts) {
    const tokens = tokensOf(t.text);
    const seq = await phatgoose.model.acquire([]);
    try {
      await seq.truncate(0);
      const logits = await seq.evaluate(tokens, tokens.map((_, i) => i));
      let total = 0;
      for (let p = 0; p + 1 < tokens.length; p++) total += negativeLogLikelihood(logits[p], tokens[p + 1]);
      baseRow[t.name] = total / (tokens.length - 1);
    } finally {
      seq.release();
    }
  }
  baseRow["pure: own expert top-1"] = "–";
  quality.push(baseRow);
  for (const v of variants) {
    const row: Record<string, string | number> = { variant: v.name };
    const own: number[] = [];
    for (const t of texts) {
      const tokens = tokensOf(t.text);
      const { nll: value, routing } = await nll(v.pipeline, v.overrides, tokens);
      row[t.name] = value;
      if (t.domain && v.overrides.mode === undefined) own.push(routing.filter((r) => r?.experts[0].expert === t.domain).length / routing.length);
    }
    row["pure: own expert top-1"] = own.length > 0 ? `${((own.reduce((a, b) => a + b, 0) / own.length) * 100).toFixed(1)}%` : "–";
    quality.push(row);
  }

  // ---- Speed: routed decoding through the pipeline, at the forge's vocabulary and a real one ----
  const shape: RandomModelShape = { embeddingDim: 512, layers: 4, heads: 8, kvHeads: 8, ffnDim: 1536, ropeBase: 10000, blockWeights: TensorType.Q8_0 };
  const targets = matrices(shape);
  const rng = createRng(5);
  const library = Array.from({ length: 32 }, (_, i) => {
    const lora = join(root, `random-expert-${i}.gguf`);
    writeRandomLora(lora, targets, 8, 8, 1000 + i);
    const gates = join(root, `random-expert-${i}.gates.gguf`);
    writeGateFile(gates, targets.map((t) => ({ module: t.name, gate: Float32Array.from({ length: t.dims[0] }, () => rng.next() - 0.5) })));
    return { name: `e${i}`, lora, gates };
  });
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const speed: BenchReport["rows"] = [];
  for (const vocabSize of [0, 151936]) {
    const modelPath = join(root, `random-${vocabSize}.gguf`);
    const vocabulary = writeRandomLlama(modelPath, shape, 1, vocabSize);
    const [base, randomRouted] = (await loadPipelines(
      engine,
      ModelEntry.parse({ id: `random-${vocabulary}`, path: modelPath, contextSize: 512, parallel: 1, experts: { library, methods: ["phatgoose"], maxContexts: 8 } }),
      root,
    )) as [Pipeline, RoutedPipeline];
    const request = (routing?: RoutingOverrides): PipelineRequest => ({
      prompt: [1, 5, 300, 301],
      maxTokens: TOKENS,
      sampling: { ...DEFAULT_SAMPLING, temperature: 0 },
      seed: 1,
      stopStrings: [],
      stopTokens: [],
      topLogprobs: null,
      routing,
    });
    const speedVariants: Array<{ name: string; run: () => AsyncGenerator<unknown> }> = [
      { name: "base model", run: () => base.generate(request()) },
      { name: "one plain LoRA (single)", run: () => randomRouted.generate(request({ mode: "single", expert: "e0" })) },
      ...[2, 8, 32].map((n) => ({
        name: `routed PHATGOOSE, ${n} experts, top-2`,
        run: () => randomRouted.generate(request({ experts: library.slice(0, n).map((e) => e.name) })),
      })),
    ];
    const timings = new Map(speedVariants.map((v) => [v.name, [] as number[]]));
    for (let round = 0; round <= ROUNDS; round++) {
      for (const v of speedVariants) {
        const started = performance.now();
        let tokens = 0;
        for await (const step of v.run()) tokens += (step as { tokens: number[] }).tokens.length;
        // Round 0 warms up (contexts are created on first use).
        if (round > 0) timings.get(v.name)!.push(tokens / ((performance.now() - started) / 1000));
      }
    }
    const plain = median(timings.get("one plain LoRA (single)")!);
    const baseSpeed = median(timings.get("base model")!);
    for (const v of speedVariants) {
      const tps = median(timings.get(v.name)!);
      speed.push({ vocabulary, variant: v.name, tokensPerSecond: tps, vsBase: tps / baseSpeed, vsPlainLora: tps / plain });
    }
  }

  console.log(`Mean NLL per token (nats; lower is better), first 600 tokens of each text; forged routing set, top-2, temperature 1:`);
  printTable(quality);
  console.log(`\nDecoding speed, ${TOKENS} tokens greedy, medians of ${ROUNDS} interleaved rounds (random llama d=512, 4 layers, q8_0, at the forge's vocabulary and at 151,936 tokens; experts rank 8 on q, k, v, o, gate, up, down), 1 thread:`);
  printTable(speed);
  writeReport(out, {
    benchmark: "routing",
    command: "npm run bench:routing",
    settings: { tokens: TOKENS, rounds: ROUNDS, qualityTokens: 600, topK: 2, temperature: 1, speedModel: "random llama d=512, 4 layers, q8_0; vocabularies of the forge and 151,936", build: engine.llama.buildType },
    rows: [...quality.map((r) => ({ table: "quality", ...r })), ...speed.map((r) => ({ table: "speed", ...r }))],
  });
} finally {
  await engine[Symbol.asyncDispose]();
  rmSync(root, { recursive: true, force: true });
}
