// npm run bench:fusion [-- --json FILE] [--tokens N]
// Dynamic logit fusion on the forged fusion set: per-domain NLL of the strong base, static
// fusion (α = 1), dynamic fusion and the strong domain expert, with the share of the gap closed;
// the same on mixed-domain text; then the cost of a fused step (model evaluation vs α solve)
// at 679, 32k, 128k and 151,936-token vocabularies, against the models' own evaluation times; and the error
// of the support-set solve against the exact one.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import type { FusionSettings } from "../decoding/fusion/config.js";
import { logitsAlong, negativeLogLikelihood, scoreFusion } from "../decoding/fusion/score.js";
import { AUTHORS_GRID, type GridKernel, type SolveOptions, solveFusion } from "../decoding/fusion/solver.js";
import { DEFAULT_SAMPLING } from "../decoding/sampler.js";
import type { GenerationRequest } from "../decoding/types.js";
import { Engine } from "../engine/engine.js";
import { trainLora } from "../experts/train-lora.js";
import { document, DOMAINS, renderText } from "../forge/language.js";
import { forge } from "../forge/presets.js";
import type { LoadedModel } from "../engine/model.js";
import { ModelEntry } from "../pipelines/model-entry.js";
import { createRng } from "../decoding/rng.js";
import { loadPipeline } from "../pipelines/load.js";
import type { FusionPipeline } from "../pipelines/pipeline.js";
import { jsonPathArg, printTable, writeReport, type BenchReport } from "./report.js";

const { values } = parseArgs({ options: { tokens: { type: "string" }, json: { type: "string" } }, strict: false });
const TOKENS = Number(values.tokens ?? 64);
// The small experts train:expert trains: documents of fresh domain text and epochs, at the
// tool's default learning rate.
const TRAIN_DOCUMENTS = 120;
const TRAIN_EPOCHS = 3;
const out = jsonPathArg("fusion.json");
const root = mkdtempSync(join(tmpdir(), "flock-bench-fusion-"));
const engine = await Engine.create({ gpu: "off", threads: 1 });
const dynamic: FusionSettings = { mode: "dynamic", alpha: 1, grid: AUTHORS_GRID, supportMargin: null };
const staticOne: FusionSettings = { ...dynamic, mode: "static" };

const load = (dir: string, id: string, file: string, adapter?: string) =>
  engine.load(ModelEntry.parse({ id, path: join(dir, file), contextSize: 1024, parallel: 1, lora: adapter ? [{ path: join(dir, adapter) }] : [] }));
const meanNll = (logits: Float32Array[], tokens: number[]) => {
  let total = 0;
  for (let p = 0; p + 1 < tokens.length; p++) total += negativeLogLikelihood(logits[p], tokens[p + 1]);
  return total / (tokens.length - 1);
};

// 1. Quality: teacher-forced NLL on held-out text, with the forge's small experts and with small
// experts trained by train:expert (experts/train-lora.ts) on fresh text of each domain.
const quality: BenchReport["rows"] = [];
{
  const dir = join(root, "quality");
  const m = forge({ outDir: dir, preset: "demo" });
  const domains = m.domains.map((d) => d.name);
  const strong = await load(dir, "strong", m.models["flock-demo"].file);
  const weak = await load(dir, "weak", m.models["flock-weak"].file);
  const strongExperts: LoadedModel[] = [];
  for (const d of domains) strongExperts.push(await load(dir, `strong-${d}`, m.models["flock-demo"].file, m.adapters[`flock-demo-${d}`].file));
  const forgedExperts: LoadedModel[] = [];
  for (const d of domains) forgedExperts.push(await load(dir, `weak-${d}`, m.models["flock-weak"].file, m.adapters[`flock-weak-${d}`].file));
  const trainedExperts: LoadedModel[] = [];
  for (const [i, d] of domains.entries()) {
    const domain = DOMAINS.find((x) => x.name === d)!;
    const texts = (seed: number, n: number) => {
      const rng = createRng(seed);
      return Array.from({ length: n }, () => renderText(document(rng, [domain], 6)));
    };
    const file = `trained-weak-${d}.gguf`;
    const result = trainLora(engine.llama, { modelPath: join(dir, m.models["flock-weak"].file), out: join(dir, file), train: texts(100 + i, TRAIN_DOCUMENTS), validation: texts(200 + i, 20), epochs: TRAIN_EPOCHS, contextSize: 256, threads: 2, seed: 1 + i });
    console.error(`bench:fusion: trained ${d}'s small expert: validation loss ${result.initialValidationLoss.toFixed(3)} → ${result.epochs.at(-1)!.validationLoss.toFixed(3)}`);
    trainedExperts.push(await load(dir, `trained-weak-${d}`, m.models["flock-weak"].file, file));
  }
  for (const [experts, weakExperts] of [["forged", forgedExperts], ["trained (train:expert)", trainedExperts]] as const) {
    for (const [i, d] of m.domains.entries()) {
      const tokens = strong.tokenizePrompt(d.heldOutText);
      const perModel = await logitsAlong([strong, weak, weakExperts[i]], tokens);
      const [expertLogits] = await logitsAlong([strongExperts[i]], tokens);
      const dyn = scoreFusion(perModel, [d.name], tokens, dynamic);
      const stat = scoreFusion(perModel, [d.name], tokens, staticOne);
      const expert = meanNll(expertLogits, tokens);
      const closed = (x: number) => (dyn.strong - x) / (dyn.strong - expert);
      quality.push({
        text: `${d.name} (held out)`,
        smallExperts: experts,
        tokens: tokens.length - 1,
        strongBase: dyn.strong,
        staticFusion: stat.fused,
        dynamicFusion: dyn.fused,
        strongExpert: expert,
        gapClosedStatic: closed(stat.fused),
        gapClosedDynamic: closed(dyn.fused),
      });
    }
    const tokens = strong.tokenizePrompt(m.mixedText!);
    const perModel = await logitsAlong([strong, weak, ...weakExperts], tokens);
    const dyn = scoreFusion(perModel, domains, tokens, dynamic);
    const staticAll = scoreFusion(perModel, domains, tokens, staticOne);
    const singles = domains.map((d, i) => scoreFusion([perModel[0], perModel[1], perModel[2 + i]], [d], tokens, staticOne).fused);
    for (const [text, staticFusion] of [["mixed domains", Math.min(...singles)], ["mixed domains, static α=1 with all four experts summed", staticAll.fused]] as const) {
      quality.push({ text, smallExperts: experts, tokens: tokens.length - 1, strongBase: dyn.strong, staticFusion, dynamicFusion: dyn.fused, strongExpert: null, gapClosedStatic: null, gapClosedDynamic: null });
    }
  }
}

// 2. Speed: fused decoding with 3 experts against each model's own evaluation.
const speed: BenchReport["rows"] = [];
let kernel: GridKernel | undefined;
for (const vocabSize of [0, 32000, 128000, 151936]) {
  const dir = join(root, `speed-${vocabSize}`);
  const m = forge({ outDir: dir, preset: "demo", vocabSize });
  const experts = m.domains.slice(0, 3).map((d) => ({ name: d.name, lora: join(dir, m.adapters[`flock-weak-${d.name}`].file) }));
  const entry = ModelEntry.parse({
    id: `fused-${vocabSize}`,
    path: join(dir, m.models["flock-demo"].file),
    contextSize: 512,
    parallel: 1,
    fusion: { base: join(dir, m.models["flock-weak"].file), experts },
  });
  const pipeline = (await loadPipeline(engine, entry, root)) as FusionPipeline;
  kernel = pipeline.model.fusionGridKernel;
  const request = (seed: number): GenerationRequest => ({
    prompt: [m.vocab.bos],
    maxTokens: TOKENS,
    sampling: DEFAULT_SAMPLING,
    seed,
    stopStrings: [],
    stopTokens: [m.vocab.eos],
    topLogprobs: null,
  });
  // Each model's own evaluation time per token (one sequence, one token at a time).
  const own = async (model: LoadedModel) => {
    const seq = await model.acquire([]);
    try {
      await seq.truncate(0);
      await seq.evaluate([m.vocab.bos], [0]);
      const started = performance.now();
      for (let i = 0; i < TOKENS; i++) await seq.evaluate([m.vocab.bos + 1 + (i % 100)], [0]);
      return (performance.now() - started) / TOKENS;
    } finally {
      seq.release();
    }
  };
  const ownMs = [await own(pipeline.model), await own(pipeline.base), ...(await Promise.all(pipeline.experts.map((e) => own(e.model))))];
  for (const mode of ["dynamic", "static"] as const) {
    const stats = pipeline.stats;
    const before = { steps: stats.steps, evaluate: stats.evaluateMs, solve: stats.solveMs };
    const started = performance.now();
    let steps = 0;
    for (let r = 0; r < 3; r++) for await (const step of pipeline.generate({ ...request(r), fusion: { mode } })) steps += step.tokens.length;
    const stepMs = (performance.now() - started) / steps;
    const n = stats.steps - before.steps;
    speed.push({
      vocabulary: m.vocab.tokens.length,
      mode,
      experts: 3,
      msPerFusedStep: stepMs,
      evaluateMs: (stats.evaluateMs - before.evaluate) / n,
      solveMs: (stats.solveMs - before.solve) / n,
      sumOfOwnEvaluations: ownMs.reduce((a, b) => a + b, 0),
      ratioToSum: stepMs / ownMs.reduce((a, b) => a + b, 0),
    });
  }
}

// 3. The α solve on dense logits (a Gaussian bulk, σ = 2.5, under a 50-token head: almost no
// token can be pruned), in TypeScript and in the compiled kernel, exact and on a support set.
const solver: BenchReport["rows"] = [];
{
  const rng = createRng(7);
  const dense = (n: number) => {
    const logits = Float32Array.from({ length: n }, () => 2.5 * Math.sqrt(-2 * Math.log(rng.next() + 1e-12)) * Math.cos(2 * Math.PI * rng.next()));
    for (let k = 0; k < 50; k++) logits[rng.int(n)] += 14 - 2.5 * Math.log(1 + k);
    return logits;
  };
  const variants: Array<{ name: string; options: SolveOptions }> = [
    { name: "TypeScript, exact", options: {} },
    ...(kernel ? [{ name: "compiled kernel, exact", options: { kernel } }, { name: "compiled kernel, support set (20 nats)", options: { kernel, supportMargin: 20 } }] : []),
    { name: "TypeScript, support set (12 nats)", options: { supportMargin: 12 } },
  ];
  for (const vocabulary of [32000, 128000, 151936]) {
    const trials = 20;
    const cases = Array.from({ length: trials }, () => {
      const strong = dense(vocabulary);
      const base = dense(vocabulary);
      return { strong, base, experts: [0, 1, 2].map(() => Float32Array.from(base, (x) => x + (rng.next() - 0.5) * 2)) };
    });
    const exact = cases.map((c) => solveFusion(c.strong, c.base, c.experts));
    for (const v of variants) {
      let ms = 0;
      let differing = 0;
      let worst = 0;
      cases.forEach((c, i) => {
        const started = performance.now();
        const choice = solveFusion(c.strong, c.base, c.experts, v.options);
        ms += performance.now() - started;
        if (choice.expert !== exact[i].expert || choice.alpha !== exact[i].alpha) differing++;
        worst = Math.max(worst, Math.abs(choice.objective - exact[i].objective));
      });
      solver.push({ vocabulary, experts: 3, solver: v.name, msPerSolve: ms / trials, choicesDifferingFromExact: `${differing}/${trials}`, maxObjectiveError: worst });
    }
  }
}

console.log("\nNLL per token (teacher-forced), strong = flock-demo, small = flock-weak + LoRA experts:");
printTable(quality);
console.log("\nCost of a fused step (3 experts), ms:");
printTable(speed);
console.log("\nα solve on dense logits (3 experts), per step:");
printTable(solver);
writeReport(out, { benchmark: "fusion", command: "npm run bench:fusion", settings: { tokens: TOKENS, grid: AUTHORS_GRID, threads: 1, trainedExperts: { documents: TRAIN_DOCUMENTS, epochs: TRAIN_EPOCHS, contextSize: 256, learningRate: "train:expert's default (1e-4)", rank: "default (8)" } }, rows: [...quality, ...speed, ...solver] });
await engine[Symbol.asyncDispose]();
rmSync(root, { recursive: true, force: true });
