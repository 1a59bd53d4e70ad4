// LoRA training inside llama.cpp (issue #23; experts/train-lora.ts, AddonFlockTrain.cpp): a
// random llama (q8_0 blocks, frozen) learns one forged domain's text through an adapter that
// llama.cpp's optimizer trains. The held-out loss must fall; the written file must load through
// node-llama-cpp as an ordinary LoRA, reproduce the trainer's validation loss on the same
// window, and lower that domain's NLL — more than another domain's.
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { getLlama, type Llama, type LlamaModel, type Token } from "node-llama-cpp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createRng } from "../decoding/rng.js";
import { readGgufTensors } from "../engine/gguf/reader.js";
import { document, DOMAINS, renderText } from "../forge/language.js";
import { RANDOM_SHAPE, writeRandomLlama } from "../forge/random.js";
import { hasTrainLora, type TrainLoraResult, trainLora } from "../experts/train-lora.js";

const required = process.env.FLOCK_REQUIRE_NATIVE === "1";
const WINDOW = 256;
let dir: string;
let llama: Llama;
let model: LlamaModel;
let modelPath: string;
let adapterPath: string;
let heldOut: Uint32Array; // one window (+1) of the trained domain's held-out text
let otherDomain: Uint32Array; // the same of another domain
let result: TrainLoraResult | undefined;

const texts = (seed: number, domain: number, n: number) => {
  const rng = createRng(seed);
  return Array.from({ length: n }, () => renderText(document(rng, [DOMAINS[domain]], 6)));
};

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "flock-train-"));
  modelPath = join(dir, "base.gguf");
  adapterPath = join(dir, "expert.gguf");
  writeRandomLlama(modelPath, RANDOM_SHAPE, 5);
  llama = await getLlama({ gpu: false });
  model = await llama.loadModel({ modelPath });
  const tokens = (docs: string[]) => Uint32Array.from(docs.flatMap((d) => model.tokenize(d)));
  heldOut = tokens(texts(2, 0, 30)).slice(0, WINDOW + 1);
  otherDomain = tokens(texts(3, 1, 30)).slice(0, WINDOW + 1);
  if (!hasTrainLora(llama)) return;
  result = trainLora(llama, {
    modelPath,
    out: adapterPath,
    train: texts(1, 0, 120).map((d) => Uint32Array.from(model.tokenize(d))),
    validation: [heldOut],
    rank: 8,
    alpha: 16,
    epochs: 2,
    learningRate: 1e-2,
    contextSize: WINDOW,
    threads: 2,
    seed: 7,
  });
}, 120_000);

afterAll(async () => {
  await model?.dispose();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** Mean NLL (nats) of tokens[1..] given their prefixes, through an ordinary context. */
async function nll(tokens: Uint32Array, lora?: string): Promise<number> {
  const context = await model.createContext({ contextSize: 512, threads: 2, flashAttention: false, lora: lora ? { adapters: [{ filePath: lora }] } : undefined });
  try {
    const seq = context.getSequence();
    const input = [...tokens.subarray(0, -1)] as Token[];
    const results = await seq.controlledEvaluate(input.map((t) => [t, { generateNext: { probabilities: true } }]));
    let sum = 0;
    results.forEach((r, i) => (sum -= Math.log(r!.next!.probabilities!.get(tokens[i + 1] as Token) ?? 1e-30)));
    return sum / input.length;
  } finally {
    await context.dispose();
  }
}

describe("LoRA training with llama.cpp's optimizer", () => {
  const available = () => result !== undefined;

  it("lowers the validation loss on held-out text of the training domain", (ctx) => {
    if (!required && !available()) ctx.skip();
    const r = result!;
    expect(r.validationWindows).toBe(1);
    expect(r.tensors).toBe(RANDOM_SHAPE.layers * 5 * 2); // attn_q, attn_output, ffn_gate, ffn_up, ffn_down: A and B
    expect(r.epochs).toHaveLength(2);
    // An untrained adapter (B = 0) is the base: a random model, near-uniform over the vocabulary.
    expect(r.initialValidationLoss).toBeGreaterThan(6);
    // One epoch takes it most of the way (2.2 nats here); were each step's gradient the sum of
    // all before it (ggml-opt without flock's reset), it would stay near 5.
    expect(r.epochs[0].validationLoss).toBeLessThan(3);
    expect(r.epochs[1].validationLoss).toBeLessThan(r.epochs[0].validationLoss);
    expect(r.epochs[1].trainLoss).toBeLessThan(r.epochs[0].trainLoss);
  });

  it("writes an ordinary llama.cpp LoRA that lowers that domain's NLL as the trainer measured", async (ctx) => {
    if (!required && !available()) ctx.skip();
    const { metadata, tensors } = await readGgufTensors(adapterPath);
    const meta = metadata as { general: { type: string; architecture: string }; adapter: { type: string; lora: { alpha: number } } };
    expect(meta.general).toMatchObject({ type: "adapter", architecture: "llama" });
    expect(meta.adapter.type).toBe("lora");
    expect(meta.adapter.lora.alpha).toBe(16);
    const d = RANDOM_SHAPE.embeddingDim;
    expect(tensors.get("blk.0.attn_q.weight.lora_a")?.dims).toEqual([d, 8]);
    expect(tensors.get("blk.0.attn_q.weight.lora_b")?.dims).toEqual([8, d]);
    expect(tensors.get("blk.1.ffn_down.weight.lora_a")?.dims).toEqual([RANDOM_SHAPE.ffnDim, 8]);
    expect(tensors.get("blk.1.ffn_down.weight.lora_b")?.dims).toEqual([8, d]);
    expect([...tensors.get("blk.0.ffn_up.weight.lora_b")!.data].some((x) => x !== 0)).toBe(true);

    const base = await nll(heldOut);
    const adapted = await nll(heldOut, adapterPath);
    // The same window the trainer validated on, through node-llama-cpp's ordinary LoRA path
    // (f16 KV cache there, f32 in training): the same loss.
    expect(base).toBeCloseTo(result!.initialValidationLoss, 2);
    expect(adapted).toBeCloseTo(result!.epochs.at(-1)!.validationLoss, 2);
    expect(adapted).toBeLessThan(base - 4.5);
    // Shared words and structure carry over to another domain, but less than the trained one's.
    const otherBase = await nll(otherDomain);
    const otherAdapted = await nll(otherDomain, adapterPath);
    expect(base - adapted).toBeGreaterThan(2 * (otherBase - otherAdapted));
  });

  it("stops at an epoch, keeping its checkpoint and AdamW's state, and resumes there exactly as the run would have gone on", async (ctx) => {
    if (!required && !available()) ctx.skip();
    const train = texts(1, 0, 120).map((d) => Uint32Array.from(model.tokenize(d)));
    const common = { modelPath, train, validation: [heldOut], rank: 4, alpha: 8, epochs: 2, learningRate: 1e-2, learningRateMin: 1e-3, contextSize: WINDOW, threads: 2, seed: 11 };
    const whole = trainLora(llama, { ...common, out: join(dir, "whole.gguf") });
    // Stopped after the first epoch, as Ctrl-C between epochs leaves it: the checkpoint is written.
    const checkpoint = join(dir, "stopped.checkpoint.gguf");
    const optimizerCheckpoint = join(dir, "stopped.checkpoint.optimizer.gguf");
    expect(() =>
      trainLora(llama, {
        ...common,
        out: join(dir, "stopped.gguf"),
        checkpoint,
        optimizerCheckpoint,
        onEpoch: () => {
          throw new Error("stop");
        },
      }),
    ).toThrow("stop");
    expect(existsSync(join(dir, "stopped.gguf"))).toBe(false);
    const resumed = trainLora(llama, { ...common, out: join(dir, "resumed.gguf"), init: checkpoint, startEpoch: 1, initOptimizer: optimizerCheckpoint });
    // Without AdamW's state the moments start at zero again: the same schedule, other steps.
    const fresh = trainLora(llama, { ...common, out: join(dir, "fresh-moments.gguf"), init: checkpoint, startEpoch: 1 });
    // The checkpoint is the adapter after epoch 1 (the same run up to there as the whole one).
    expect(resumed.initialValidationLoss).toBeCloseTo(whole.epochs[0].validationLoss, 3);
    expect(resumed.epochs.map((e) => e.epoch)).toEqual([1]);
    // The cosine schedule goes on at its second epoch, not from its start.
    expect(resumed.epochs[0].learningRate!).toBeCloseTo(whole.epochs[1].learningRate!, 9);
    expect(whole.epochs[1].learningRate!).toBeLessThan(whole.epochs[0].learningRate!);
    expect(resumed.epochs[0].validationLoss).toBeLessThan(resumed.initialValidationLoss);
    // With AdamW's state the resumed epoch is the uninterrupted run's second epoch, step for step.
    expect(resumed.epochs[0].trainLoss).toBeCloseTo(whole.epochs[1].trainLoss, 5);
    expect(resumed.epochs[0].validationLoss).toBeCloseTo(whole.epochs[1].validationLoss, 5);
    expect(Math.abs(fresh.epochs[0].trainLoss - whole.epochs[1].trainLoss)).toBeGreaterThan(1e-3);
  });

  it("packs text documents as BOS doc EOS doc EOS, and an untrained adapter is the base", async (ctx) => {
    if (!required && !available()) ctx.skip();
    const train = texts(4, 0, 40);
    const validation = texts(5, 0, 30);
    const r = trainLora(llama, { modelPath, out: join(dir, "untrained.gguf"), train, validation, epochs: 0, contextSize: WINDOW, threads: 2 });
    // The forge's vocabulary adds BOS: one before the first document, an EOS after each.
    expect(r.trainTokens).toBe(1 + train.reduce((n, d) => n + model.tokenize(d).length + 1, 0));
    expect(r.epochs).toEqual([]);
    const packed = Uint32Array.from([model.tokens.bos!, ...validation.flatMap((d) => [...model.tokenize(d), model.tokens.eos!])]).slice(0, WINDOW + 1);
    const first = await nll(packed);
    const withUntrained = await nll(packed, join(dir, "untrained.gguf"));
    expect(withUntrained).toBeCloseTo(first, 4);
  });
});
