// Compiles a Markov chain into llama-architecture GGUF weights.
//
// The residual stream carries a one-hot vector for the current token's state. Every block's
// attention-output and FFN-down weights are zero, so blocks cost compute (their other weights
// are random) but leave the residual unchanged. The final RMSNorm's weight undoes the norm
// exactly (including epsilon), so the normalised hidden state is the one-hot vector itself,
// and output.weight's column for a state holds that state's next-token log-probabilities.
// Hence logits = log P(next | state) up to float32 rounding, for any prompt.
import { createRng } from "../decoding/rng.js";
import { gguf, type GgufValue, TensorType, writeGguf } from "../engine/gguf/writer.js";
import type { Chain } from "./chain.js";
import type { Vocab } from "./vocab.js";

/** Logit of a token a state can never emit: exp underflows to exactly 0 in float32. */
export const IMPOSSIBLE_LOGIT = -1e4;
export const RMS_EPS = 1e-5;
const CONTEXTUAL_FLOOR_LOGIT = -12;

export interface ModelShape {
  /** Residual width; at least the number of chain states, a multiple of headDim. */
  embeddingDim: number;
  layers: number;
  ffnDim: number;
  headDim: number;
  contextLength: number;
  /** Storage of the blocks' matrices (they only cost compute, so any type serves). */
  blockWeights: BlockWeights;
}

/** Storage types the forge writes for block matrices (zeros stay exactly zero in each). */
export const BLOCK_WEIGHTS = ["f32", "f16", "q8_0", "q4_0"] as const;
export type BlockWeights = (typeof BLOCK_WEIGHTS)[number];

export function shapeFor(states: number, overrides: Partial<ModelShape> = {}): ModelShape {
  const headDim = overrides.headDim ?? 32;
  const minDim = Math.ceil(states / headDim) * headDim;
  const embeddingDim = Math.max(minDim, overrides.embeddingDim ?? minDim);
  if (embeddingDim % headDim !== 0) throw new Error(`embeddingDim ${embeddingDim} is not a multiple of headDim ${headDim}`);
  return {
    embeddingDim,
    layers: overrides.layers ?? 1,
    ffnDim: overrides.ffnDim ?? embeddingDim * 2,
    headDim,
    contextLength: overrides.contextLength ?? 4096,
    blockWeights: overrides.blockWeights ?? "f16",
  };
}

/** The float32 logit the compiled model produces for a probability. */
export function compiledLogit(p: number): number {
  return p > 0 ? Math.fround(Math.log(p)) : IMPOSSIBLE_LOGIT;
}

/**
 * `contextual`: also randomise the attention-output and FFN-down weights, so the residual (and
 * the logits) depend on every earlier token — no longer analytic, but a model whose KV cache
 * matters, for cache-consistency tests.
 */
export function writeChainModel(
  path: string,
  name: string,
  vocab: Vocab,
  chain: Chain,
  shape: ModelShape,
  seed: number,
  contextual = false,
): void {
  const V = vocab.tokens.length;
  const d = shape.embeddingDim;
  const states = chain.stateNames.length;
  if (states > d) throw new Error(`${states} states do not fit a residual of width ${d}`);
  if (chain.vocabSize !== V) throw new Error(`chain is over ${chain.vocabSize} tokens, vocabulary has ${V}`);
  const heads = d / shape.headDim;
  const rng = createRng(seed);

  const metadata: Array<[string, GgufValue]> = [
    ["general.architecture", gguf.str("llama")],
    ["general.name", gguf.str(name)],
    ["general.file_type", gguf.u32(1)],
    ["llama.context_length", gguf.u32(shape.contextLength)],
    ["llama.embedding_length", gguf.u32(d)],
    ["llama.block_count", gguf.u32(shape.layers)],
    ["llama.feed_forward_length", gguf.u32(shape.ffnDim)],
    ["llama.attention.head_count", gguf.u32(heads)],
    ["llama.attention.head_count_kv", gguf.u32(heads)],
    ["llama.attention.layer_norm_rms_epsilon", gguf.f32(RMS_EPS)],
    ["llama.rope.dimension_count", gguf.u32(shape.headDim)],
    ["llama.rope.freq_base", gguf.f32(10000)],
    ["llama.vocab_size", gguf.u32(V)],
    ...vocab.metadata,
  ];

  const block = { f32: TensorType.F32, f16: TensorType.F16, q8_0: TensorType.Q8_0, q4_0: TensorType.Q4_0 }[shape.blockWeights];
  const tensors: Array<{ name: string; dims: number[]; type: TensorType }> = [
    { name: "token_embd.weight", dims: [d, V], type: TensorType.F16 },
  ];
  for (let i = 0; i < shape.layers; i++) {
    tensors.push(
      { name: `blk.${i}.attn_norm.weight`, dims: [d], type: TensorType.F32 },
      { name: `blk.${i}.attn_q.weight`, dims: [d, d], type: block },
      { name: `blk.${i}.attn_k.weight`, dims: [d, d], type: block },
      { name: `blk.${i}.attn_v.weight`, dims: [d, d], type: block },
      { name: `blk.${i}.attn_output.weight`, dims: [d, d], type: block },
      { name: `blk.${i}.ffn_norm.weight`, dims: [d], type: TensorType.F32 },
      { name: `blk.${i}.ffn_gate.weight`, dims: [d, shape.ffnDim], type: block },
      { name: `blk.${i}.ffn_up.weight`, dims: [d, shape.ffnDim], type: block },
      { name: `blk.${i}.ffn_down.weight`, dims: [shape.ffnDim, d], type: block },
    );
  }
  tensors.push(
    { name: "output_norm.weight", dims: [d], type: TensorType.F32 },
    { name: "output.weight", dims: [d, V], type: TensorType.F32 },
  );

  // x = e_state (rms = sqrt(1/d + eps)), so a weight of sqrt(1/d + eps) makes norm(x) = e_state.
  const outputNorm = Math.sqrt(1 / d + RMS_EPS);

  writeGguf(path, metadata, tensors, (tensorName) => {
    const t = tensors.find((x) => x.name === tensorName)!;
    const n = t.dims.reduce((a, b) => a * b, 1);
    const data = new Float32Array(n);
    if (tensorName === "token_embd.weight") {
      for (let tok = 0; tok < V; tok++) data[tok * d + chain.stateOfToken[tok]] = 1;
    } else if (tensorName === "output_norm.weight") {
      data.fill(outputNorm);
    } else if (tensorName === "output.weight") {
      // A contextual model's residual is no longer one-hot: a -1e4 floor would turn its small
      // perturbations into huge logit swings, so it gets a moderate floor instead.
      data.fill(contextual ? CONTEXTUAL_FLOOR_LOGIT : IMPOSSIBLE_LOGIT);
      // Columns past the last state are never read by a one-hot input; zero keeps them inert.
      for (let tok = 0; tok < V; tok++) data.fill(0, tok * d + states, (tok + 1) * d);
      chain.rows.forEach((row, state) => {
        row.tokens.forEach((tok, i) => (data[tok * d + state] = Math.max(compiledLogit(row.probs[i]), contextual ? CONTEXTUAL_FLOOR_LOGIT : -Infinity)));
      });
    } else if (tensorName.endsWith("_norm.weight")) {
      data.fill(1);
    } else if (contextual || (!tensorName.endsWith("attn_output.weight") && !tensorName.endsWith("ffn_down.weight"))) {
      // Random weights: the compute is real even though its result is discarded.
      for (let i = 0; i < n; i++) data[i] = (rng.next() - 0.5) * 0.1;
    }
    return data;
  });
}

export interface LoraTensor {
  /** The base tensor this adapts, e.g. "output.weight". */
  target: string;
  inDim: number;
  outDim: number;
  rank: number;
  /** A: rank × inDim, row-major (ggml dims [inDim, rank]). */
  a: Float32Array;
  /** B: outDim × rank, row-major (ggml dims [rank, outDim]). */
  b: Float32Array;
}

/** llama.cpp's LoRA adapter GGUF. alpha = rank per tensor set, so scale 1 applies B·A as is. */
export function writeLoraAdapter(path: string, name: string, tensors: readonly LoraTensor[]): void {
  const rank = tensors[0]?.rank ?? 1;
  if (tensors.some((t) => t.rank !== rank)) throw new Error("all LoRA tensors of an adapter must share one rank");
  const metadata: Array<[string, GgufValue]> = [
    ["general.architecture", gguf.str("llama")],
    ["general.type", gguf.str("adapter")],
    ["general.name", gguf.str(name)],
    ["adapter.type", gguf.str("lora")],
    ["adapter.lora.alpha", gguf.f32(rank)],
  ];
  const specs = tensors.flatMap((t) => [
    { name: `${t.target}.lora_a`, dims: [t.inDim, t.rank], type: TensorType.F32 },
    { name: `${t.target}.lora_b`, dims: [t.rank, t.outDim], type: TensorType.F32 },
  ]);
  writeGguf(path, metadata, specs, (tensorName) => {
    const t = tensors.find((x) => tensorName.startsWith(`${x.target}.lora_`))!;
    return tensorName.endsWith(".lora_a") ? t.a : t.b;
  });
}

/**
 * A LoRA on output.weight that turns `base` into `expert`: for every state whose rows differ,
 * A selects that state's one-hot coordinate and B holds the logit difference. Exact, with
 * rank = number of differing states.
 */
export function chainDeltaLora(base: Chain, expert: Chain, embeddingDim: number): LoraTensor {
  const V = base.vocabSize;
  const changed = base.rows.map((_, s) => s).filter((s) => !sameRow(base.rows[s], expert.rows[s]));
  const rank = Math.max(1, changed.length);
  const a = new Float32Array(rank * embeddingDim);
  const b = new Float32Array(V * rank);
  changed.forEach((state, j) => {
    a[j * embeddingDim + state] = 1;
    const baseRow = new Map(base.rows[state].tokens.map((t, i) => [t, base.rows[state].probs[i]]));
    const expertRow = new Map(expert.rows[state].tokens.map((t, i) => [t, expert.rows[state].probs[i]]));
    for (const tok of new Set([...baseRow.keys(), ...expertRow.keys()])) {
      const delta = compiledLogit(expertRow.get(tok) ?? 0) - compiledLogit(baseRow.get(tok) ?? 0);
      b[tok * rank + j] = delta;
    }
  });
  return { target: "output.weight", inDim: embeddingDim, outDim: V, rank, a, b };
}

function sameRow(x: Chain["rows"][number], y: Chain["rows"][number]): boolean {
  return x.tokens.length === y.tokens.length && x.tokens.every((t, i) => t === y.tokens[i] && x.probs[i] === y.probs[i]);
}
