// Gate vectors: one per expert and per adapted module, read from a gate file (PHATGOOSE) or
// derived from the adapter itself (Arrow).
//
// Gate files: GGUF or safetensors, one F32/F16/BF16 vector per module, of the module's input
// width, named `<module>.gate` with the module's llama.cpp tensor name (`blk.3.attn_q.weight.gate`,
// `output.weight.gate`). Hugging Face module names are accepted too and mapped
// (`model.layers.3.self_attn.q_proj.gate` → `blk.3.attn_q.weight`, `lm_head.gate` →
// `output.weight`), so gates trained with the PHATGOOSE authors' code can be saved straight
// from the model's parameter names.
import { extname } from "node:path";
import { readGgufTensors } from "../engine/gguf/reader.js";
import { gguf, type GgufValue, TensorType, writeGguf } from "../engine/gguf/writer.js";
import { readSafetensors, writeSafetensors } from "../engine/safetensors.js";

/** Module (llama.cpp base tensor name) → gate vector. */
export type Gates = Map<string, Float32Array>;

const HF_MODULES: Record<string, string> = {
  "self_attn.q_proj": "attn_q",
  "self_attn.k_proj": "attn_k",
  "self_attn.v_proj": "attn_v",
  "self_attn.o_proj": "attn_output",
  "mlp.gate_proj": "ffn_gate",
  "mlp.up_proj": "ffn_up",
  "mlp.down_proj": "ffn_down",
};

/** The llama.cpp tensor name a gate tensor belongs to, or null when the name is not a gate. */
export function gateModule(tensorName: string): string | null {
  if (!tensorName.endsWith(".gate")) return null;
  const module = tensorName.slice(0, -".gate".length);
  if (module === "lm_head" || module === "lm_head.weight") return "output.weight";
  const hf = /^(?:base_model\.model\.)?model\.layers\.(\d+)\.(self_attn\.[qkvo]_proj|mlp\.(?:gate|up|down)_proj)(?:\.weight)?$/.exec(module);
  if (hf) return `blk.${hf[1]}.${HF_MODULES[hf[2]]}.weight`;
  return module;
}

export async function readGateFile(path: string): Promise<Gates> {
  const gates: Gates = new Map();
  const add = (name: string, data: Float32Array) => {
    const module = gateModule(name);
    if (module === null) return;
    if (gates.has(module)) throw new Error(`${path}: two gates for module ${module}`);
    gates.set(module, data);
  };
  const extension = extname(path).toLowerCase();
  if (extension === ".safetensors") {
    for (const [name, t] of readSafetensors(path)) add(name, t.data);
  } else if (extension === ".gguf") {
    const { tensors } = await readGgufTensors(path, (name) => name.endsWith(".gate"));
    for (const [name, t] of tensors) add(name, t.data);
  } else {
    throw new Error(`${path}: gate files are .gguf or .safetensors`);
  }
  if (gates.size === 0) throw new Error(`${path}: no gate tensors (named <module>.gate)`);
  return gates;
}

/**
 * Writes a gate file, GGUF or safetensors by the extension: one F32 vector per module, named
 * `<module>.gate`. `method` says how the gates were made (e.g. "phatgoose", "average-activation").
 */
export function writeGateFile(path: string, gates: ReadonlyArray<{ module: string; gate: Float32Array }>, method = "phatgoose"): void {
  const extension = extname(path).toLowerCase();
  if (extension === ".safetensors") {
    writeSafetensors(path, gates.map((g) => ({ name: `${g.module}.gate`, shape: [g.gate.length], data: g.gate })), { format: "flock.gates", method });
    return;
  }
  if (extension !== ".gguf") throw new Error(`${path}: gate files are .gguf or .safetensors`);
  const metadata: Array<[string, GgufValue]> = [
    ["general.architecture", gguf.str("llama")],
    ["general.type", gguf.str("flock.gates")],
    ["flock.gates.method", gguf.str(method)],
  ];
  const specs = gates.map((g) => ({ name: `${g.module}.gate`, dims: [g.gate.length], type: TensorType.F32 }));
  writeGguf(path, metadata, specs, (name) => gates.find((g) => `${g.module}.gate` === name)!.gate);
}

/**
 * Arrow: the top right singular vector of B·A. With M = BᵀB (r × r), the nonzero spectrum of
 * (BA)ᵀ(BA) = Aᵀ M A is that of M·(A Aᵀ) (r × r), whose top eigenvector z gives v = Aᵀ z.
 * A: rank × in (row-major), B: out × rank.
 */
export function arrowGate(a: Float32Array, b: Float32Array, rank: number, inDim: number, outDim: number): Float32Array {
  const m = new Float64Array(rank * rank);
  for (let o = 0; o < outDim; o++) for (let i = 0; i < rank; i++) for (let j = 0; j < rank; j++) m[i * rank + j] += b[o * rank + i] * b[o * rank + j];
  const aat = new Float64Array(rank * rank);
  for (let i = 0; i < rank; i++) {
    for (let j = 0; j < rank; j++) {
      let s = 0;
      for (let k = 0; k < inDim; k++) s += a[i * inDim + k] * a[j * inDim + k];
      aat[i * rank + j] = s;
    }
  }
  const n = new Float64Array(rank * rank);
  for (let i = 0; i < rank; i++) for (let j = 0; j < rank; j++) for (let k = 0; k < rank; k++) n[i * rank + j] += m[i * rank + k] * aat[k * rank + j];
  // Power iteration on the small matrix; deterministic start.
  let z = Float64Array.from({ length: rank }, (_, i) => 1 + i / rank);
  for (let iteration = 0; iteration < 500; iteration++) {
    const next = new Float64Array(rank);
    for (let i = 0; i < rank; i++) for (let j = 0; j < rank; j++) next[i] += n[i * rank + j] * z[j];
    const norm = Math.hypot(...next);
    if (!(norm > 0)) break;
    z = next.map((x) => x / norm);
  }
  const v = new Float32Array(inDim);
  for (let k = 0; k < inDim; k++) {
    let s = 0;
    for (let i = 0; i < rank; i++) s += a[i * inDim + k] * z[i];
    v[k] = s;
  }
  const norm = Math.hypot(...v);
  return norm > 0 ? v.map((x) => x / norm) : v;
}
