// A reference forward pass for llama-architecture GGUF models in plain TypeScript: the test
// oracle that llama.cpp's logits (plain, with LoRA adapters, routed) are checked against.
// It follows llama.cpp's llama graph (src/models/llama.cpp) step for step, in f32 storage with
// f64 accumulation, and is meant for tiny models only (d ≤ 512, a few hundred tokens).
//
//   x = token_embd[token]
//   per block: x += attn_output · attention(rope(q), rope(k), v),  of h = rms_norm(x) · attn_norm
//              x += ffn_down · (silu(ffn_gate · h) ⊙ ffn_up · h),  h = rms_norm(x) · ffn_norm
//   hidden = rms_norm(x) · output_norm;  logits = output · hidden
//
// Every matrix product goes through `linear`, which adds each LoRA adapter's
// scale · (alpha / rank) · B(Ax) exactly as llama.cpp's build_lora_mm does.
import { metadataValue, readGgufTensors, type Tensor } from "../../engine/gguf/reader.js";
import { asDotOperand, roundToF16 } from "./rounding.js";

export interface LoraWeights {
  /** A: rank × in, row-major (ggml dims [in, rank]). */
  a: Float32Array;
  /** B: out × rank, row-major (ggml dims [rank, out]). */
  b: Float32Array;
  rank: number;
}

export interface LoraAdapter {
  /** Keyed by the adapted base tensor's name, e.g. "blk.0.attn_q.weight". */
  tensors: Map<string, LoraWeights>;
  /** adapter.lora.alpha; 0 (or absent) means the delta is scaled by `scale` alone, as in llama.cpp. */
  alpha: number;
}

/** An adapter as applied to one forward pass, with its user scale (llama.cpp's adapter scale). */
export type AppliedLora = LoraAdapter & { scale: number };

/**
 * Routed LoRA as flock's llama.cpp patch computes it, per token and per module (docs/native-engine.md):
 *   PHATGOOSE s_i = LN(x)·LN(v_i)/√d_in, ARROW s_i = |x·v_i|; w = softmax(s / T), keep the top k,
 *   renormalise; y += Σ w_i · scale_i · (alpha_i / rank_i) · B_i A_i x.
 */
export interface RoutedLora {
  adapters: readonly AppliedLora[];
  /** Per routed base tensor: one gate vector per adapter (each of the module's input width). */
  gates: ReadonlyMap<string, readonly Float32Array[]>;
  method: "phatgoose" | "arrow";
  topK: number;
  temperature: number;
  /** When given, receives each module's softmax over the adapters, position by position. */
  record?: Map<string, Float64Array[]>;
}

export interface ForwardResult {
  /** Next-token logits after each position. */
  logits: Float32Array[];
  /** The final hidden state after output_norm at each position (the input of output.weight). */
  hidden: Float32Array[];
}

/**
 * "f32": exact arithmetic on the stored weights (f32 values, f64 sums).
 * "ggml-cpu": also round where llama.cpp's CPU backend does without flash attention: matrix
 * inputs to the weight's dot type (f16 / q8_0), K and V to the f16 KV cache, and Q and the
 * attention weights to f16 where ggml_mul_mat meets that cache. Matches llama.cpp
 * (flashAttention: false) to ~3e-5 in probability on a model that amplifies rounding 10×.
 */
export type Numerics = "f32" | "ggml-cpu";

export interface LlamaHyperparameters {
  vocabSize: number;
  embeddingDim: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  ropeDims: number;
  ropeBase: number;
  rmsEps: number;
}

export class LlamaOracle {
  private constructor(
    readonly hparams: LlamaHyperparameters,
    private readonly tensors: Map<string, Tensor>,
    readonly numerics: Numerics,
  ) {}

  static async load(path: string, options: { numerics?: Numerics } = {}): Promise<LlamaOracle> {
    const { metadata, tensors } = await readGgufTensors(path);
    const arch = metadataValue(metadata, "general.architecture");
    if (arch !== "llama") throw new Error(`${path}: architecture ${String(arch)}, the oracle only knows llama`);
    const num = (key: string, fallback?: number): number => {
      const v = metadataValue(metadata, `llama.${key}`);
      if (typeof v === "number") return v;
      if (fallback !== undefined) return fallback;
      throw new Error(`${path}: missing llama.${key}`);
    };
    // Parts of the llama graph this oracle leaves out: refuse rather than be silently wrong.
    const scaling = metadataValue(metadata, "llama.rope.scaling.type");
    if (scaling !== undefined && scaling !== "none") throw new Error(`${path}: rope scaling ${String(scaling)} is not supported`);
    if (metadataValue(metadata, "llama.attention.scale") !== undefined || metadataValue(metadata, "llama.expert_count") !== undefined) {
      throw new Error(`${path}: custom attention scales and MoE are not supported`);
    }
    if ([...tensors.keys()].some((name) => name.includes("rope_freqs") || name.endsWith(".bias") || name.endsWith(".scale"))) {
      throw new Error(`${path}: rope frequency factors, biases and weight scales are not supported`);
    }

    const embeddingDim = num("embedding_length");
    const heads = num("attention.head_count");
    const headDim = num("attention.key_length", embeddingDim / heads);
    if (num("attention.value_length", headDim) !== headDim) throw new Error(`${path}: key and value head sizes differ`);
    const hparams: LlamaHyperparameters = {
      vocabSize: tensors.get("token_embd.weight")!.dims[1],
      embeddingDim,
      layers: num("block_count"),
      heads,
      kvHeads: num("attention.head_count_kv", heads),
      headDim,
      ropeDims: num("rope.dimension_count", headDim),
      ropeBase: num("rope.freq_base", 10000),
      rmsEps: num("attention.layer_norm_rms_epsilon"),
    };
    // Tied embeddings: llama.cpp then uses token_embd as the output projection.
    if (!tensors.has("output.weight")) tensors.set("output.weight", tensors.get("token_embd.weight")!);
    return new LlamaOracle(hparams, tensors, options.numerics ?? "f32");
  }

  forward(tokens: readonly number[], loras: readonly AppliedLora[] = [], routed?: RoutedLora): ForwardResult {
    const { embeddingDim: d, layers, heads, kvHeads, rmsEps } = this.hparams;
    for (const lora of loras) {
      for (const name of lora.tensors.keys()) {
        if (!this.tensors.has(name)) throw new Error(`LoRA adapts ${name}, which the model does not have`);
        // llama.cpp adds a token-embedding LoRA by row lookup, not as a matrix product.
        if (name === "token_embd.weight") throw new Error("token-embedding LoRA is not supported by the oracle");
      }
    }
    const linear = (name: string, x: Float32Array): Float32Array => {
      const y = this.linear(name, x, loras);
      const gates = routed?.gates.get(name);
      if (routed && gates) addRouted(y, x, routed, gates, name);
      return y;
    };
    const norm = (name: string, x: Float32Array): Float32Array => rmsNorm(x, this.weight(name).data, rmsEps);
    // The KV cache (and, where it is multiplied with Q, Q itself) is f16 in llama.cpp.
    const cached = (x: Float32Array): Float32Array => (this.numerics === "ggml-cpu" ? roundToF16(x) : x);

    const embd = this.weight("token_embd.weight").data;
    let x: Float32Array[] = tokens.map((t) => {
      if (!(Number.isInteger(t) && t >= 0 && t < this.hparams.vocabSize)) throw new Error(`token ${t} is outside the vocabulary`);
      return embd.slice(t * d, (t + 1) * d);
    });
    for (let l = 0; l < layers; l++) {
      const blk = (name: string): string => `blk.${l}.${name}.weight`;

      const h = x.map((xPos) => norm(blk("attn_norm"), xPos));
      const q = h.map((hPos, pos) => cached(this.rope(linear(blk("attn_q"), hPos), pos, heads)));
      const k = h.map((hPos, pos) => cached(this.rope(linear(blk("attn_k"), hPos), pos, kvHeads)));
      const v = h.map((hPos) => cached(linear(blk("attn_v"), hPos)));
      const attn = this.causalAttention(q, k, v);
      x = x.map((xPos, pos) => add(xPos, linear(blk("attn_output"), attn[pos])));

      const f = x.map((xPos) => norm(blk("ffn_norm"), xPos));
      x = x.map((xPos, pos) => {
        const gated = swiglu(linear(blk("ffn_gate"), f[pos]), linear(blk("ffn_up"), f[pos]));
        return add(xPos, linear(blk("ffn_down"), gated));
      });
    }
    const hidden = x.map((xPos) => norm("output_norm.weight", xPos));
    return { hidden, logits: hidden.map((hPos) => linear("output.weight", hPos)) };
  }

  private weight(name: string): Tensor {
    const t = this.tensors.get(name);
    if (!t) throw new Error(`model has no tensor ${name}`);
    return t;
  }

  /** y = W x + Σ scale · (alpha / rank) · B(A x) over the adapters that adapt W (build_lora_mm). */
  private linear(name: string, x: Float32Array, loras: readonly AppliedLora[]): Float32Array {
    const w = this.weight(name);
    const [inDim, outDim] = w.dims;
    if (x.length !== inDim) throw new Error(`${name}: input of ${x.length} values, expected ${inDim}`);
    const y = matVec(w.data, this.numerics === "ggml-cpu" ? asDotOperand(x, w.type) : x, outDim);
    for (const lora of loras) {
      const lw = lora.tensors.get(name);
      if (!lw) continue;
      if (lw.a.length !== lw.rank * inDim || lw.b.length !== outDim * lw.rank) {
        throw new Error(`LoRA for ${name}: A or B does not fit a ${outDim}×${inDim} matrix at rank ${lw.rank}`);
      }
      const scale = lora.alpha ? (lora.scale * lora.alpha) / lw.rank : lora.scale;
      const bax = matVec(lw.b, matVec(lw.a, x, lw.rank), outDim);
      for (let o = 0; o < outDim; o++) y[o] += scale * bax[o];
    }
    return y;
  }

  /**
   * RoPE as llama.cpp applies it to LLM_ARCH_LLAMA (rope type NORM, not NEOX): adjacent pairs
   * (x[2i], x[2i+1]) of each head's first `ropeDims` values rotate by pos · base^(-2i/ropeDims).
   * The angle is accumulated in f32 as ggml's rope cache does (theta *= theta_scale).
   */
  private rope(x: Float32Array, pos: number, heads: number): Float32Array {
    const { headDim, ropeDims, ropeBase } = this.hparams;
    const thetaScale = Math.fround(Math.pow(ropeBase, -2 / ropeDims));
    const out = Float32Array.from(x);
    let theta = Math.fround(pos);
    for (let i = 0; i < ropeDims; i += 2) {
      const cos = Math.cos(theta);
      const sin = Math.sin(theta);
      for (let h = 0; h < heads; h++) {
        const at = h * headDim + i;
        out[at] = x[at] * cos - x[at + 1] * sin;
        out[at + 1] = x[at] * sin + x[at + 1] * cos;
      }
      theta = Math.fround(theta * thetaScale);
    }
    return out;
  }

  /** Causal multi-head attention, query head h reading KV head h / (heads / kvHeads), scale 1/√headDim. */
  private causalAttention(q: Float32Array[], k: Float32Array[], v: Float32Array[]): Float32Array[] {
    const { heads, kvHeads, headDim } = this.hparams;
    const scale = 1 / Math.sqrt(headDim);
    const group = heads / kvHeads;
    return q.map((qPos, pos) => {
      const out = new Float32Array(heads * headDim);
      for (let h = 0; h < heads; h++) {
        const qh = h * headDim;
        const kh = Math.floor(h / group) * headDim;
        const scores = new Float64Array(pos + 1);
        for (let j = 0; j <= pos; j++) {
          let s = 0;
          for (let i = 0; i < headDim; i++) s += qPos[qh + i] * k[j][kh + i];
          scores[j] = s * scale;
        }
        // ggml multiplies the f32 attention weights with the f16 V cache as f16.
        const weights = this.numerics === "ggml-cpu" ? roundToF16(Float32Array.from(softmax(scores))) : softmax(scores);
        for (let j = 0; j <= pos; j++) {
          for (let i = 0; i < headDim; i++) out[qh + i] += weights[j] * v[j][kh + i];
        }
      }
      return out;
    });
  }
}

/** Adds the routed LoRA term of one module for input x to y (see RoutedLora). */
function addRouted(y: Float32Array, x: Float32Array, routed: RoutedLora, gates: readonly Float32Array[], name: string): void {
  const n = routed.adapters.length;
  const standardise = (v: ArrayLike<number>): Float64Array => {
    let mean = 0;
    for (let i = 0; i < v.length; i++) mean += v[i];
    mean /= v.length;
    let variance = 0;
    for (let i = 0; i < v.length; i++) variance += (v[i] - mean) ** 2;
    variance /= v.length;
    const inv = 1 / Math.sqrt(variance + 1e-5);
    return Float64Array.from(v, (e) => (e - mean) * inv);
  };
  const xn = routed.method === "phatgoose" ? standardise(x) : Float64Array.from(x);
  const scores = gates.map((gate) => {
    const v = routed.method === "phatgoose" ? standardise(gate) : Float64Array.from(gate);
    let dot = 0;
    for (let i = 0; i < x.length; i++) dot += xn[i] * v[i];
    return routed.method === "phatgoose" ? dot / Math.sqrt(x.length) : Math.abs(dot);
  });
  const probs = softmax(scores.map((s) => s / routed.temperature));
  if (routed.record) routed.record.set(name, [...(routed.record.get(name) ?? []), probs]);
  const top = [...probs.keys()].sort((a, b) => probs[b] - probs[a]).slice(0, Math.min(routed.topK, n));
  const mass = top.reduce((acc, i) => acc + probs[i], 0);
  for (const i of top) {
    const adapter = routed.adapters[i];
    const lw = adapter.tensors.get(name);
    if (!lw) continue;
    const scale = ((adapter.alpha ? (adapter.scale * adapter.alpha) / lw.rank : adapter.scale) * probs[i]) / mass;
    const bax = matVec(lw.b, matVec(lw.a, x, lw.rank), y.length);
    for (let o = 0; o < y.length; o++) y[o] += scale * bax[o];
  }
}

/** llama.cpp's LoRA adapter GGUF: `<name>.lora_a` (dims [in, rank]), `<name>.lora_b` (dims [rank, out]). */
export async function loadLoraAdapter(path: string): Promise<LoraAdapter> {
  const { metadata, tensors } = await readGgufTensors(path);
  if (metadataValue(metadata, "adapter.type") !== "lora") throw new Error(`${path} is not a LoRA adapter`);
  const alpha = metadataValue(metadata, "adapter.lora.alpha");
  const out = new Map<string, LoraWeights>();
  for (const [name, a] of tensors) {
    if (!name.endsWith(".lora_a")) continue;
    const base = name.slice(0, -".lora_a".length);
    const b = tensors.get(`${base}.lora_b`);
    if (!b) throw new Error(`${path}: ${name} has no matching lora_b`);
    const rank = a.dims[1];
    if (b.dims[0] !== rank) throw new Error(`${path}: ${base} has A of rank ${rank} but B of rank ${b.dims[0]}`);
    out.set(base, { a: a.data, b: b.data, rank });
  }
  return { tensors: out, alpha: typeof alpha === "number" ? alpha : 0 };
}

export function softmax(logits: ArrayLike<number>): Float64Array {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) max = Math.max(max, logits[i]);
  const e = Float64Array.from(logits, (v) => Math.exp(v - max));
  const z = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / z);
}

/** Row-major `rows × x.length` matrix times x (four partial sums: about twice as fast in V8). */
function matVec(m: Float32Array, x: Float32Array, rows: number): Float32Array {
  const n = x.length;
  const y = new Float32Array(rows);
  for (let r = 0; r < rows; r++) {
    const at = r * n;
    let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    let i = 0;
    for (; i + 3 < n; i += 4) {
      s0 += m[at + i] * x[i];
      s1 += m[at + i + 1] * x[i + 1];
      s2 += m[at + i + 2] * x[i + 2];
      s3 += m[at + i + 3] * x[i + 3];
    }
    for (; i < n; i++) s0 += m[at + i] * x[i];
    y[r] = s0 + s1 + s2 + s3;
  }
  return y;
}

function rmsNorm(x: Float32Array, w: Float32Array, eps: number): Float32Array {
  let sum = 0;
  for (const v of x) sum += v * v;
  const inv = 1 / Math.sqrt(sum / x.length + eps);
  return x.map((v, i) => v * inv * w[i]);
}

function swiglu(gate: Float32Array, up: Float32Array): Float32Array {
  return gate.map((g, i) => (g / (1 + Math.exp(-g))) * up[i]);
}

function add(a: Float32Array, b: Float32Array): Float32Array {
  return a.map((v, i) => v + b[i]);
}
