// Routed LoRA inside llama.cpp (flock's patch) against the TypeScript oracle: a random 2-layer
// llama with grouped KV heads and q8_0 weights, three random adapters on q, k, v, o, gate, up,
// down and the output, random gate vectors; per-token, per-module routing with both scorings.
// The same model with q4_0 weights puts them in an extra buffer type (CPU_REPACK on AVX2), where
// the stacked adapters cannot live: the routed ops must still run, and agree with the oracle.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { getLlama, type Llama, type LlamaModel, type Token } from "node-llama-cpp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { enableRawLogits, hasFlockAddon, type LogitsWithHidden, type RoutedLoraConfig, setRoutedLoras } from "../engine/native.js";
import { createRng } from "../decoding/rng.js";
import { type AppliedLora, LlamaOracle, loadLoraAdapter, type RoutedLora, softmax } from "./oracle/llama.js";
import { matrices, RANDOM_SHAPE, writeRandomLlama, writeRandomLora } from "../forge/random.js";
import { TensorType } from "../engine/gguf/writer.js";

const required = process.env.FLOCK_REQUIRE_NATIVE === "1";
let dir: string;
let llama: Llama;
let model: LlamaModel;
let modelPath: string;
let q4Model: LlamaModel;
let q4Path: string;
let adapterPaths: string[];
let adapters: AppliedLora[];
let targets: Array<{ name: string; dims: [number, number] }>;
let vocabSize: number;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "flock-routed-"));
  modelPath = join(dir, "random.gguf");
  vocabSize = writeRandomLlama(modelPath, RANDOM_SHAPE, 11);
  q4Path = join(dir, "random-q4.gguf");
  writeRandomLlama(q4Path, { ...RANDOM_SHAPE, blockWeights: TensorType.Q4_0 }, 11);
  targets = [...matrices(RANDOM_SHAPE), { name: "output.weight", dims: [RANDOM_SHAPE.embeddingDim, vocabSize] }];
  // Three experts with different ranks and alphas, adapting every matrix.
  adapterPaths = [0, 1, 2].map((i) => join(dir, `expert-${i}.gguf`));
  adapterPaths.forEach((p, i) => writeRandomLora(p, targets, [4, 8, 2][i], [8, 4, 0][i], 100 + i));
  adapters = await Promise.all(adapterPaths.map(async (p) => ({ ...(await loadLoraAdapter(p)), scale: 1 })));
  llama = await getLlama({ gpu: false });
  model = await llama.loadModel({ modelPath });
  q4Model = await llama.loadModel({ modelPath: q4Path });
});
afterAll(async () => {
  await model?.dispose();
  await q4Model?.dispose();
  rmSync(dir, { recursive: true, force: true });
});

/** Random gate vectors per module and adapter (shared by the engine and the oracle). */
function randomGates(seed: number, scale: number): Map<string, Float32Array[]> {
  const rng = createRng(seed);
  return new Map(targets.map((t) => [t.name, adapterPaths.map(() => Float32Array.from({ length: t.dims[0] }, () => (rng.next() - 0.5) * scale))]));
}

function engineConfig(gates: Map<string, Float32Array[]>, method: "phatgoose" | "arrow", topK: number, temperature: number, which = [0, 1, 2]): RoutedLoraConfig {
  return {
    adapters: which.map((i) => ({ path: adapterPaths[i], scale: 1 })),
    modules: [...gates].map(([name, perAdapter]) => ({ name, gates: Float32Array.from(which.flatMap((i) => [...perAdapter[i]])) })),
    method,
    topK,
    temperature,
  };
}

const prompt = [1, 30, 400, 512, 77, 260, 600, 301, 45, 333];

/** Next-token distributions after every prompt position, from llama.cpp (flash attention off, as the oracle). */
async function engine(setup: (context: Parameters<typeof setRoutedLoras>[0]) => void, tokenByToken = false, lora?: string, base = model): Promise<Float64Array[]> {
  const context = await base.createContext({ contextSize: 256, threads: 1, flashAttention: false, lora: lora ? { adapters: [{ filePath: lora }] } : undefined });
  setup(context);
  const seq = context.getSequence();
  const out: Float64Array[] = [];
  if (tokenByToken) {
    for (const t of prompt) {
      const [r] = await seq.controlledEvaluate([[t as Token, { generateNext: { probabilities: true } }]]);
      out.push(dense(r!.next!.probabilities!));
    }
  } else {
    const results = await seq.controlledEvaluate(prompt.map((t) => [t as Token, { generateNext: { probabilities: true } }]));
    for (const r of results) out.push(dense(r!.next!.probabilities!));
  }
  await context.dispose();
  return out;
}

function dense(p: Map<Token, number>): Float64Array {
  const out = new Float64Array(vocabSize);
  for (const [t, v] of p) out[t] = v;
  return out;
}

const gap = (a: Float64Array, b: Float64Array) => Math.max(...a.map((x, i) => Math.abs(x - b[i])));

/** As the oracle tests: rounding ties may move one position, none may move far. */
function expectClose(native: Float64Array[], reference: Float64Array[]): void {
  const gaps = native.map((p, i) => gap(p, reference[i])).sort((a, b) => a - b);
  expect(gaps[Math.floor(gaps.length / 2)]).toBeLessThan(2e-5);
  expect(gaps.filter((g) => g >= 1e-4).length).toBeLessThanOrEqual(1);
  expect(gaps.at(-1)!).toBeLessThan(1e-3);
}

describe("routed LoRA in llama.cpp", () => {
  const available = () => hasFlockAddon(llama);

  it.for([
    ["phatgoose", 2, 1],
    ["arrow", 2, 0.5],
    ["phatgoose", 3, 2],
  ] as const)("matches the oracle's per-token, per-module routing (%s, top-%d, T=%d), in one batch and token by token", async ([method, topK, temperature], ctx) => {
    if (!required && !available()) ctx.skip();
    const gates = randomGates(7, method === "arrow" ? 4 : 1);
    const oracle = await LlamaOracle.load(modelPath, { numerics: "ggml-cpu" });
    const routed: RoutedLora = { adapters, gates, method, topK, temperature };
    const reference = oracle.forward(prompt, [], routed).logits.map((l) => softmax(l));
    const config = engineConfig(gates, method, topK, temperature);
    expectClose(await engine((c) => setRoutedLoras(c, config)), reference);
    expectClose(await engine((c) => setRoutedLoras(c, config), true), reference);
    // Routing matters: the base model differs from the routed one.
    const base = oracle.forward(prompt).logits.map((l) => softmax(l));
    expect(Math.max(...base.map((p, i) => gap(p, reference[i])))).toBeGreaterThan(1e-3);
  });

  it("over q4_0 weights (an extra buffer type where llama.cpp repacks them) matches the oracle", async (ctx) => {
    if (!required && !available()) ctx.skip();
    const gates = randomGates(7, 1);
    const oracle = await LlamaOracle.load(q4Path, { numerics: "ggml-cpu" });
    const reference = oracle.forward(prompt, [], { adapters, gates, method: "phatgoose", topK: 2, temperature: 1 }).logits.map((l) => softmax(l));
    const config = engineConfig(gates, "phatgoose", 2, 1);
    expectClose(await engine((c) => setRoutedLoras(c, config), false, undefined, q4Model), reference);
    expectClose(await engine((c) => setRoutedLoras(c, config), true, undefined, q4Model), reference);
  });

  it("top-1 with one expert is exactly plain LoRA with that expert; no experts is the base model", async (ctx) => {
    if (!required && !available()) ctx.skip();
    const gates = randomGates(3, 1);
    const routedOne = await engine((c) => setRoutedLoras(c, engineConfig(gates, "phatgoose", 1, 1, [1])));
    const plain = await engine(() => {}, false, adapterPaths[1]);
    routedOne.forEach((p, i) => expect(gap(p, plain[i])).toBeLessThan(1e-6));
    const cleared = await engine((c) => {
      setRoutedLoras(c, engineConfig(gates, "phatgoose", 2, 1));
      setRoutedLoras(c, null);
    });
    const base = await engine(() => {});
    cleared.forEach((p, i) => expect(gap(p, base[i])).toBeLessThan(1e-6));
  });

  it("traces each output token's per-module routing, equal to the oracle's softmax over the adapters", async (ctx) => {
    if (!required && !available()) ctx.skip();
    const gates = randomGates(9, 1);
    const record = new Map<string, Float64Array[]>();
    const oracle = await LlamaOracle.load(modelPath, { numerics: "ggml-cpu" });
    oracle.forward(prompt, [], { adapters, gates, method: "phatgoose", topK: 2, temperature: 1, record });
    const context = await model.createContext({ contextSize: 256, threads: 1, flashAttention: false });
    setRoutedLoras(context, { ...engineConfig(gates, "phatgoose", 2, 1), trace: true });
    enableRawLogits(context, { hiddenStates: true, routedAdapters: 3 });
    const seq = context.getSequence();
    const gaps: number[] = [];
    // Every position an output, then (after a rollback) only two: the last layer's FFN and the
    // output layer then see only the output rows.
    for (const outputs of [prompt.map((_, i) => i), [3, prompt.length - 1]]) {
      await seq.eraseContextTokenRanges([{ start: 0, end: seq.nextTokenIndex }]);
      const results = await seq.controlledEvaluate(prompt.map((t, i) => (outputs.includes(i) ? [t as Token, { generateNext: { confidence: true } }] : (t as Token))));
      for (const pos of outputs) {
        const { probabilities: trace, modules } = (results[pos]!.next!.confidence as unknown as LogitsWithHidden).routing!;
        expect([...modules].sort()).toEqual([...gates.keys()].sort());
        expect(trace.length).toBe(modules.length * 3);
        modules.forEach((module, m) => {
          const expected = record.get(module)![pos];
          for (let i = 0; i < 3; i++) gaps.push(Math.abs(trace[m * 3 + i] - expected[i]));
        });
      }
    }
    // The module inputs carry llama.cpp's rounding from the layers before (the oracle emulates
    // it closely, not exactly): most probabilities agree to 1e-6, a few drift by up to ~8e-3.
    // A wrong row or module would be off by tenths.
    gaps.sort((a, b) => a - b);
    expect(gaps[Math.floor(gaps.length / 2)]).toBeLessThan(1e-5);
    expect(gaps.at(-1)!).toBeLessThan(2e-2);
    await context.dispose();
  });

  it("refuses a module the model does not have, saying why", async (ctx) => {
    if (!required && !available()) ctx.skip();
    const context = await model.createContext({ contextSize: 256, threads: 1 });
    const config: RoutedLoraConfig = { ...engineConfig(randomGates(1, 1), "arrow", 1, 1), modules: [{ name: "blk.9.attn_q.weight", gates: new Float32Array(3 * 128) }] };
    expect(() => setRoutedLoras(context, config)).toThrow("routed LoRA: the model has no tensor blk.9.attn_q.weight");
    await context.dispose();
  });

  it("refuses, by name, an op the adapters' device cannot run, and the context serves on without routing", async (ctx) => {
    if (!required && !available()) ctx.skip();
    const context = await model.createContext({ contextSize: 256, threads: 1, flashAttention: false });
    // A device without MUL_MAT_ID (the test hook reports it so): the scheduler would abort at
    // the first decode; the configuration is refused instead.
    process.env.FLOCK_TEST_ROUTED_UNSUPPORTED_OP = "MUL_MAT_ID";
    try {
      expect(() => setRoutedLoras(context, engineConfig(randomGates(1, 1), "phatgoose", 2, 1))).toThrow(
        /^routed LoRA: the CPU device cannot run MUL_MAT_ID for [\w.]+\.weight, so this model cannot be routed there$/,
      );
    } finally {
      delete process.env.FLOCK_TEST_ROUTED_UNSUPPORTED_OP;
    }
    const seq = context.getSequence();
    const [r] = await seq.controlledEvaluate([[prompt[0] as Token, { generateNext: { probabilities: true } }]]);
    const base = await engine(() => {});
    expect(gap(dense(r!.next!.probabilities!), base[0])).toBeLessThan(1e-6);
    await context.dispose();
  });
});
