// Where ggml's CPU backend rounds inside a llama forward pass, for the oracle's "ggml-cpu"
// numerics. ggml_mul_mat converts its f32 operand to the other operand's "vec_dot_type" before
// the dot products: f16 for F16 weights (and for the f16 KV cache), q8_0 blocks for Q8_0
// weights, nothing for F32. These roundings are tiny, but a model with random weights can
// amplify them past 1e-4 in probability, so a tight comparison has to reproduce them.
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { NODE_LLAMA_CPP_LLAMA_DIR } from "../../engine/native/surface.js";
import { float16BitsToFloat32, float32ToFloat16Bits } from "../../engine/gguf/f16.js";
import { F16, F32, type GgmlStorage, Q8_BLOCK } from "../../engine/gguf/reader.js";

export function roundToF16(x: Float32Array): Float32Array {
  return x.map((v) => float16BitsToFloat32(float32ToFloat16Bits(v)));
}

/** What ggml_mul_mat multiplies with weights of type `type`: x in that type's vec_dot_type. */
export function asDotOperand(x: Float32Array, type: GgmlStorage): Float32Array {
  if (type === F32) return x;
  if (type === F16) return roundToF16(x);
  return quantizeQ8_0(x);
}

/**
 * ggml's quantize_row_q8_0 (its x86 form): per block of 32, d = max|x| / 127 (stored as f16),
 * q = round-half-even(x · 127 / max|x|).
 */
function quantizeQ8_0(x: Float32Array): Float32Array {
  if (x.length % Q8_BLOCK !== 0) throw new Error(`q8_0 needs a multiple of ${Q8_BLOCK} values, got ${x.length}`);
  const out = new Float32Array(x.length);
  for (let at = 0; at < x.length; at += Q8_BLOCK) {
    let amax = 0;
    for (let i = 0; i < Q8_BLOCK; i++) amax = Math.max(amax, Math.abs(x[at + i]));
    const d = float16BitsToFloat32(float32ToFloat16Bits(Math.fround(amax / 127)));
    const inv = amax ? Math.fround(127 / amax) : 0;
    for (let i = 0; i < Q8_BLOCK; i++) out[at + i] = d * roundHalfEven(Math.fround(x[at + i] * inv));
  }
  return out;
}

function roundHalfEven(v: number): number {
  const r = Math.round(v);
  return r - v === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/**
 * Whether the native build's F16 vector kernels accumulate in f16 rather than f32: ggml's
 * GGML_F16_VEC uses the CPU's half-precision arithmetic where the build targets it (x86
 * AVX512-FP16, _mm512_fmadd_ph; ARM's FP16 vector arithmetic), with a unit roundoff of 2^-11
 * instead of f32's 2^-24. The build is -march=native unless its CPU probe turned the extension
 * off (engine/native/cpu-probe.ts records that in the build stamp).
 */
export function f16AccumulatingKernels(): boolean {
  let cpuinfo = "";
  try {
    cpuinfo = readFileSync("/proc/cpuinfo", "utf8");
  } catch {
    return false;
  }
  const flags = new Set((cpuinfo.split("\n").find((l) => /^(flags|Features)\s*:/.test(l)) ?? "").replace(/^[^:]*:/, "").trim().split(/\s+/));
  if (flags.has("asimdhp")) return true;
  if (!flags.has("avx512_fp16")) return false;
  const stamp = join(NODE_LLAMA_CPP_LLAMA_DIR, "localBuilds", "flock-native.json");
  if (!existsSync(stamp)) return false; // node-llama-cpp's prebuilt binaries are not native builds
  const { cpu } = JSON.parse(readFileSync(stamp, "utf8")) as { cpu?: { disabled: string[] } };
  return !(cpu?.disabled ?? []).includes("AVX512_FP16");
}
