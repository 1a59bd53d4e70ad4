// npm run bench:native [-- --json FILE]
// (also: routed LoRA cost per token against the base model and one plain LoRA)
// Cost per generated position of getting the next-token distribution out of llama.cpp:
// a token sampled inside llama.cpp (the floor), node-llama-cpp's public probabilities Map, and
// flock's native raw logits (a Float32Array copy), on the forged demo model at 679, 32k and
// 128k vocabularies; plus the thread-count comparison that sets flock's default.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { getLlama, LlamaLogLevel, type Token } from "node-llama-cpp";
import { forge } from "../forge/presets.js";
import { matrices, type RandomModelShape, writeRandomLlama, writeRandomLora } from "../forge/random.js";
import { TensorType } from "../engine/gguf/writer.js";
import { enableRawLogits, hasFlockAddon, setRoutedLoras } from "../engine/native.js";
import { createRng } from "../decoding/rng.js";
import { jsonPathArg, printTable, writeReport, type BenchReport } from "./report.js";

const POSITIONS = 100;
const out = jsonPathArg("native.json");
const dir = mkdtempSync(join(tmpdir(), "flock-bench-native-"));
const llama = await getLlama({ gpu: false, maxThreads: 0, logLevel: LlamaLogLevel.error });
if (!hasFlockAddon(llama)) console.warn("the native addon is not built (npm run build:native): raw-logits rows are skipped");
const rows: BenchReport["rows"] = [];

type Path = "sampled token" | "probabilities Map" | "raw logits (flock addon)";
const ask: Record<Path, { token?: boolean; probabilities?: boolean; confidence?: boolean }> = {
  "sampled token": { token: true },
  "probabilities Map": { probabilities: true },
  "raw logits (flock addon)": { confidence: true },
};

try {
  for (const [vocabSize, threadCounts] of [[0, [1, 2]], [32000, [1]], [128000, [1]]] as const) {
    const vdir = join(dir, String(vocabSize));
    const manifest = forge({ outDir: vdir, preset: "demo", vocabSize });
    const model = await llama.loadModel({ modelPath: join(vdir, manifest.models["flock-demo"].file) });
    for (const threads of threadCounts) {
      const context = await model.createContext({ contextSize: 512, threads: { ideal: threads, min: threads } });
      if (hasFlockAddon(llama)) enableRawLogits(context);
      const seq = context.getSequence();
      const measure = async (what: (typeof ask)[Path]) => {
        await seq.clearHistory();
        await seq.controlledEvaluate([manifest.vocab.bos as Token]);
        const started = performance.now();
        for (let i = 0; i < POSITIONS; i++) await seq.controlledEvaluate([[(300 + (i % 50)) as Token, { generateNext: what }]]);
        return (performance.now() - started) / POSITIONS;
      };
      const floor = await measure(ask["sampled token"]);
      for (const path of Object.keys(ask) as Path[]) {
        if (path === "raw logits (flock addon)" && !hasFlockAddon(llama)) continue;
        const ms = path === "sampled token" ? floor : await measure(ask[path]);
        rows.push({ vocabulary: manifest.vocab.tokens.length, threads, path, msPerPosition: ms, overMs: ms - floor, ratioToSampled: ms / floor });
      }
      await context.dispose();
    }
    await model.dispose();
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}

// Routed LoRA: time per generated token against the base model and one plain LoRA, for 2, 8
// and 32 experts (top-2), every expert rank 8 on all seven matrices of every layer.
const routed: BenchReport["rows"] = [];
if (hasFlockAddon(llama)) {
  const rdir = mkdtempSync(join(tmpdir(), "flock-bench-routed-"));
  try {
    const shape: RandomModelShape = { embeddingDim: 512, layers: 4, heads: 8, kvHeads: 8, ffnDim: 1536, ropeBase: 10000, blockWeights: TensorType.Q8_0 };
    const modelPath = join(rdir, "model.gguf");
    writeRandomLlama(modelPath, shape, 1);
    const targets = matrices(shape);
    const experts = Array.from({ length: 32 }, (_, i) => {
      const path = join(rdir, `expert-${i}.gguf`);
      writeRandomLora(path, targets, 8, 8, 1000 + i);
      return path;
    });
    const rng = createRng(5);
    const model = await llama.loadModel({ modelPath });
    const timePerToken = async (setup: { lora?: string; routedExperts?: number }) => {
      const context = await model.createContext({ contextSize: 512, threads: { ideal: 1, min: 1 }, lora: setup.lora ? { adapters: [{ filePath: setup.lora }] } : undefined });
      if (setup.routedExperts) {
        const n = setup.routedExperts;
        setRoutedLoras(context, {
          adapters: experts.slice(0, n).map((path) => ({ path, scale: 1 })),
          modules: targets.map((t) => ({ name: t.name, gates: Float32Array.from({ length: n * t.dims[0] }, () => rng.next() - 0.5) })),
          method: "phatgoose",
          topK: 2,
          temperature: 1,
        });
      }
      const seq = context.getSequence();
      await seq.controlledEvaluate([1 as Token, 5 as Token]);
      const started = performance.now();
      for (let i = 0; i < POSITIONS; i++) await seq.controlledEvaluate([[(300 + (i % 50)) as Token, { generateNext: { token: true } }]]);
      const ms = (performance.now() - started) / POSITIONS;
      await context.dispose();
      return ms;
    };
    const base = await timePerToken({});
    const plain = await timePerToken({ lora: experts[0] });
    routed.push({ variant: "base model", msPerToken: base, vsPlainLora: base / plain });
    routed.push({ variant: "one plain LoRA", msPerToken: plain, vsPlainLora: 1 });
    for (const n of [2, 8, 32]) {
      const ms = await timePerToken({ routedExperts: n });
      routed.push({ variant: `routed, ${n} experts, top-2`, msPerToken: ms, vsPlainLora: ms / plain });
    }
    await model.dispose();
  } finally {
    rmSync(rdir, { recursive: true, force: true });
  }
}

printTable(rows);
const overhead = (vocabulary: number, path: Path) => rows.find((r) => r.vocabulary === vocabulary && r.path === path && r.threads === 1)?.overMs as number | undefined;
for (const v of new Set(rows.map((r) => r.vocabulary as number))) {
  const map = overhead(v, "probabilities Map");
  const raw = overhead(v, "raw logits (flock addon)");
  if (map === undefined || raw === undefined) continue;
  // Below ~0.05 ms the difference to a sampled token is within run-to-run noise.
  const rawText = raw < 0.05 ? "no more than sampling a token" : `${raw.toFixed(2)} ms (${(map / raw).toFixed(0)}× less)`;
  console.log(`vocabulary ${v}: full distribution over a sampled token — Map ${map.toFixed(2)} ms, raw logits ${rawText}`);
}
if (routed.length > 0) {
  console.log("\nRouted LoRA, per generated token (random llama, d=512, 4 layers, q8_0; experts rank 8 on q, k, v, o, gate, up, down):");
  printTable(routed);
}
writeReport(out, {
  benchmark: "native",
  command: "npm run bench:native",
  settings: { positions: POSITIONS, model: "flock-demo (4 layers, d=128)", routedModel: "random llama d=512, 4 layers, q8_0", build: llama.buildType },
  rows: [...rows, ...routed],
});
