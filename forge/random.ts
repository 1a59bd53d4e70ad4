// Llama models with every weight random, in shapes the chain models never take (grouped
// KV heads, q8_0 blocks, a non-default RoPE base, a non-square FFN), plus random LoRA adapters
// on every matrix: the oracle's test subject where the structured models are too kind, and
// the routed-LoRA benchmark's models.
import { buildVocab, languagePieces } from "./vocab.js";
import { gguf, type GgufValue, TensorType, writeGguf } from "../engine/gguf/writer.js";
import { createRng } from "../decoding/rng.js";

export interface RandomModelShape {
  embeddingDim: number;
  layers: number;
  heads: number;
  kvHeads: number;
  ffnDim: number;
  ropeBase: number;
  blockWeights: TensorType;
}

export const RANDOM_SHAPE: RandomModelShape = {
  embeddingDim: 128,
  layers: 2,
  heads: 4,
  kvHeads: 2,
  ffnDim: 192,
  ropeBase: 50000,
  blockWeights: TensorType.Q8_0,
};

/** Every adaptable matrix of the model, with its ggml dims [in, out]. */
export function matrices(shape: RandomModelShape): Array<{ name: string; dims: [number, number] }> {
  const d = shape.embeddingDim;
  const kv = (d / shape.heads) * shape.kvHeads;
  const out: Array<{ name: string; dims: [number, number] }> = [];
  for (let i = 0; i < shape.layers; i++) {
    out.push(
      { name: `blk.${i}.attn_q.weight`, dims: [d, d] },
      { name: `blk.${i}.attn_k.weight`, dims: [d, kv] },
      { name: `blk.${i}.attn_v.weight`, dims: [d, kv] },
      { name: `blk.${i}.attn_output.weight`, dims: [d, d] },
      { name: `blk.${i}.ffn_gate.weight`, dims: [d, shape.ffnDim] },
      { name: `blk.${i}.ffn_up.weight`, dims: [d, shape.ffnDim] },
      { name: `blk.${i}.ffn_down.weight`, dims: [shape.ffnDim, d] },
    );
  }
  return out;
}

/**
 * Writes the model; returns its vocabulary size. Uses the forge's tokenizer so prompts tokenize
 * alike, padded to `vocabSize` tokens where given (a real model's output layer).
 */
export function writeRandomLlama(path: string, shape: RandomModelShape, seed: number, vocabSize = 0): number {
  const vocab = buildVocab(languagePieces(), vocabSize);
  const V = vocab.tokens.length;
  const d = shape.embeddingDim;
  const metadata: Array<[string, GgufValue]> = [
    ["general.architecture", gguf.str("llama")],
    ["general.name", gguf.str("oracle-random")],
    ["llama.context_length", gguf.u32(1024)],
    ["llama.embedding_length", gguf.u32(d)],
    ["llama.block_count", gguf.u32(shape.layers)],
    ["llama.feed_forward_length", gguf.u32(shape.ffnDim)],
    ["llama.attention.head_count", gguf.u32(shape.heads)],
    ["llama.attention.head_count_kv", gguf.u32(shape.kvHeads)],
    ["llama.attention.layer_norm_rms_epsilon", gguf.f32(1e-5)],
    ["llama.rope.dimension_count", gguf.u32(d / shape.heads)],
    ["llama.rope.freq_base", gguf.f32(shape.ropeBase)],
    ["llama.vocab_size", gguf.u32(V)],
    ...vocab.metadata,
  ];
  const tensors: Array<{ name: string; dims: number[]; type: TensorType }> = [
    { name: "token_embd.weight", dims: [d, V], type: TensorType.F16 },
  ];
  for (let i = 0; i < shape.layers; i++) {
    tensors.push({ name: `blk.${i}.attn_norm.weight`, dims: [d], type: TensorType.F32 });
    tensors.push({ name: `blk.${i}.ffn_norm.weight`, dims: [d], type: TensorType.F32 });
  }
  for (const m of matrices(shape)) tensors.push({ name: m.name, dims: m.dims, type: shape.blockWeights });
  tensors.push(
    { name: "output_norm.weight", dims: [d], type: TensorType.F32 },
    { name: "output.weight", dims: [d, V], type: TensorType.F32 },
  );

  const rng = createRng(seed);
  const uniform = (n: number, center: number, spread: number): Float32Array =>
    Float32Array.from({ length: n }, () => center + (rng.next() - 0.5) * 2 * spread);
  writeGguf(path, metadata, tensors, (name) => {
    const n = tensors.find((t) => t.name === name)!.dims.reduce((a, b) => a * b, 1);
    if (name.endsWith("norm.weight")) return uniform(n, 1, 0.3);
    // Logits of a few units: distributions spread over many tokens, so errors show.
    if (name === "output.weight") return uniform(n, 0, 0.25);
    if (name === "token_embd.weight") return uniform(n, 0, 1);
    return uniform(n, 0, 0.1);
  });
  return V;
}

/** A llama.cpp LoRA adapter GGUF with random A and B on `targets`, at one rank and an explicit alpha. */
export function writeRandomLora(
  path: string,
  targets: ReadonlyArray<{ name: string; dims: readonly [number, number] }>,
  rank: number,
  alpha: number,
  seed: number,
): void {
  const rng = createRng(seed);
  const specs = targets.flatMap((t) => [
    { name: `${t.name}.lora_a`, dims: [t.dims[0], rank], type: TensorType.F32 },
    { name: `${t.name}.lora_b`, dims: [rank, t.dims[1]], type: TensorType.F32 },
  ]);
  const metadata: Array<[string, GgufValue]> = [
    ["general.architecture", gguf.str("llama")],
    ["general.type", gguf.str("adapter")],
    ["adapter.type", gguf.str("lora")],
    ["adapter.lora.alpha", gguf.f32(alpha)],
  ];
  writeGguf(path, metadata, specs, (name) => {
    const n = specs.find((s) => s.name === name)!.dims.reduce((a, b) => a * b, 1);
    return Float32Array.from({ length: n }, () => (rng.next() - 0.5) * 0.2);
  });
}
