// A chain model whose residual stream also carries which domain the recent text is in — the
// base model for routed-expert (PHATGOOSE) tests. A first-order chain's logits depend on the
// last token only, so on words every domain shares ("the", "she") nothing in them says which
// domain a sentence is about; routing per token needs module inputs that do.
//
// Construction (one block, the chain compiled as in compile.ts otherwise):
// - residual = [one-hot state | domain mix (one dim per domain) | zeros];
// - attention head 0 attends by recency alone: q = k = a constant vector in the lowest-frequency
//   RoPE pair, so q·k = c² cos(θ(t − j)) ≈ c² − c²θ²(t − j)²/2 — Gaussian weights over the last
//   few tokens (σ ≈ RECENCY_TOKENS); its values are the domain indicator of each domain word
//   (zero for shared words); its output adds the recency-weighted mix of domains to the
//   residual, scaled by DOMAIN_GAIN;
// - the output layer reads only the state part; the small domain mix flattens the logits by at
//   most 1/sqrt(1 + DOMAIN_GAIN²) (a temperature ≤ 1.03), so the model is close to its chain
//   but not exactly analytic.
import { gguf, type GgufValue, TensorType, writeGguf } from "../engine/gguf/writer.js";
import type { Chain } from "./chain.js";
import { compiledLogit, IMPOSSIBLE_LOGIT, RMS_EPS } from "./compile.js";
import type { Vocab } from "./vocab.js";

const HEAD_DIM = 32;
/** Standard deviation, in tokens, of the recency window. */
const RECENCY_TOKENS = 4;
/** Rotation of the lowest-frequency RoPE pair, radians per token. */
const THETA = 0.05;
const DOMAIN_GAIN = 0.25;

export interface DomainContextModel {
  /** Residual width. */
  embeddingDim: number;
  /** Index of each domain's dimension in the residual. */
  domainDims: number[];
}

/**
 * Writes the model. `domainOfState[s]` is the domain index of chain state s, or -1 for states
 * shared by all domains.
 */
export function writeDomainContextModel(
  path: string,
  name: string,
  vocab: Vocab,
  chain: Chain,
  domainOfState: readonly number[],
  domains: number,
  options: { meanPooling?: boolean } = {},
): DomainContextModel {
  const V = vocab.tokens.length;
  const S = chain.stateNames.length;
  const d = Math.ceil((S + domains) / HEAD_DIM) * HEAD_DIM;
  const heads = d / HEAD_DIM;
  const pair = HEAD_DIM / 2 - 1;
  // θ_pair = base^(-2·pair / HEAD_DIM) = THETA.
  const ropeBase = THETA ** (-HEAD_DIM / (2 * pair));
  // Weights ∝ exp(kq_scale · c² · cos(θΔ)) ≈ exp(-kq_scale · c² θ² Δ² / 2): Gaussian with σ.
  const c = Math.sqrt(Math.sqrt(HEAD_DIM) / (THETA ** 2 * RECENCY_TOKENS ** 2));
  // RMSNorm of a one-hot residual multiplies it by 1/sqrt(1/d + eps).
  const normGain = 1 / Math.sqrt(1 / d + RMS_EPS);
  const domainDims = Array.from({ length: domains }, (_, k) => S + k);
  const ffn = HEAD_DIM;

  const metadata: Array<[string, GgufValue]> = [
    ["general.architecture", gguf.str("llama")],
    ["general.name", gguf.str(name)],
    ["general.file_type", gguf.u32(0)],
    ["llama.context_length", gguf.u32(4096)],
    ["llama.embedding_length", gguf.u32(d)],
    ["llama.block_count", gguf.u32(1)],
    ["llama.feed_forward_length", gguf.u32(ffn)],
    ["llama.attention.head_count", gguf.u32(heads)],
    ["llama.attention.head_count_kv", gguf.u32(heads)],
    ["llama.attention.layer_norm_rms_epsilon", gguf.f32(RMS_EPS)],
    ["llama.rope.dimension_count", gguf.u32(HEAD_DIM)],
    ["llama.rope.freq_base", gguf.f32(ropeBase)],
    ["llama.vocab_size", gguf.u32(V)],
    // An embedding model: llama.cpp averages the final hidden states over the input.
    ...(options.meanPooling ? ([["llama.pooling_type", gguf.u32(1)]] as Array<[string, GgufValue]>) : []),
    ...vocab.metadata,
  ];
  const tensors: Array<{ name: string; dims: number[]; type: TensorType }> = [
    { name: "token_embd.weight", dims: [d, V], type: TensorType.F32 },
    { name: "blk.0.attn_norm.weight", dims: [d], type: TensorType.F32 },
    { name: "blk.0.attn_q.weight", dims: [d, d], type: TensorType.F32 },
    { name: "blk.0.attn_k.weight", dims: [d, d], type: TensorType.F32 },
    { name: "blk.0.attn_v.weight", dims: [d, d], type: TensorType.F32 },
    { name: "blk.0.attn_output.weight", dims: [d, d], type: TensorType.F32 },
    { name: "blk.0.ffn_norm.weight", dims: [d], type: TensorType.F32 },
    { name: "blk.0.ffn_gate.weight", dims: [d, ffn], type: TensorType.F32 },
    { name: "blk.0.ffn_up.weight", dims: [d, ffn], type: TensorType.F32 },
    { name: "blk.0.ffn_down.weight", dims: [ffn, d], type: TensorType.F32 },
    { name: "output_norm.weight", dims: [d], type: TensorType.F32 },
    { name: "output.weight", dims: [d, V], type: TensorType.F32 },
  ];

  writeGguf(path, metadata, tensors, (tensorName) => {
    const t = tensors.find((x) => x.name === tensorName)!;
    const data = new Float32Array(t.dims.reduce((a, b) => a * b, 1));
    // ggml dims [in, out]: row `out` holds the weights of output unit `out`.
    const at = (out: number, input: number) => out * d + input;
    switch (tensorName) {
      case "token_embd.weight":
        for (let tok = 0; tok < V; tok++) data[tok * d + chain.stateOfToken[tok]] = 1;
        break;
      case "blk.0.attn_norm.weight":
      case "blk.0.ffn_norm.weight":
        data.fill(1);
        break;
      case "blk.0.attn_q.weight":
      case "blk.0.attn_k.weight":
        // Head 0, the first dimension of the lowest-frequency pair: c for every state.
        for (let s = 0; s < S; s++) data[at(2 * pair, s)] = c / normGain;
        break;
      case "blk.0.attn_v.weight":
        for (let s = 0; s < S; s++) if (domainOfState[s] >= 0) data[at(domainOfState[s], s)] = 1 / normGain;
        break;
      case "blk.0.attn_output.weight":
        for (let k = 0; k < domains; k++) data[at(domainDims[k], k)] = DOMAIN_GAIN;
        break;
      case "output_norm.weight":
        data.fill(1 / normGain);
        break;
      case "output.weight":
        data.fill(0);
        for (let tok = 0; tok < V; tok++) for (let s = 0; s < S; s++) data[tok * d + s] = IMPOSSIBLE_LOGIT;
        chain.rows.forEach((row, state) => row.tokens.forEach((tok, i) => (data[tok * d + state] = compiledLogit(row.probs[i]))));
        break;
      default:
        break; // FFN: zero, it leaves the residual alone
    }
    return data;
  });
  return { embeddingDim: d, domainDims };
}
