// Reads a GGUF file's tensors as Float32Arrays (LoRA adapters, gate files, and the test
// oracle's models). node-llama-cpp parses the header; the bytes are read here and decoded for
// F32, F16, BF16 and Q8_0.
import { closeSync, openSync, readSync } from "node:fs";
import { readGgufFileInfo } from "node-llama-cpp";
import { float16BitsToFloat32 } from "./f16.js";

export const F32 = 0;
export const F16 = 1;
export const Q8_0 = 8;
export const BF16 = 30;
export type GgmlStorage = typeof F32 | typeof F16 | typeof Q8_0 | typeof BF16;
export const Q8_BLOCK = 32;
const Q8_BLOCK_BYTES = 2 + Q8_BLOCK;

export interface Tensor {
  /** ggml order: dims[0] is contiguous, so a [in, out] matrix is `out` rows of `in` values. */
  dims: number[];
  /** The ggml type it was stored as (0 F32, 1 F16, 8 Q8_0); `data` is always decoded. */
  type: GgmlStorage;
  data: Float32Array;
}

export interface GgufContents {
  /** node-llama-cpp's nested metadata object ("llama.block_count" → metadata.llama.block_count). */
  metadata: unknown;
  tensors: Map<string, Tensor>;
}

/** `only`: read just the tensors this accepts (the others are skipped unread). */
export async function readGgufTensors(path: string, only: (name: string) => boolean = () => true): Promise<GgufContents> {
  const info = await readGgufFileInfo(path, { logWarnings: false });
  const tensors = new Map<string, Tensor>();
  const fd = openSync(path, "r");
  try {
    for (const t of info.fullTensorInfo ?? []) {
      if (!only(t.name)) continue;
      const dims = t.dimensions.map(Number);
      const count = dims.reduce((a, b) => a * b, 1);
      const type = storageOf(t.ggmlType, t.name);
      const bytes = Buffer.alloc(byteSize(type, count));
      readSync(fd, bytes, 0, bytes.length, Number(t.fileOffset));
      tensors.set(t.name, { dims, type, data: decode(type, bytes, count) });
    }
  } finally {
    closeSync(fd);
  }
  return { metadata: info.metadata, tensors };
}

/** A metadata value by its dotted GGUF key, or undefined. */
export function metadataValue(metadata: unknown, key: string): unknown {
  let node: unknown = metadata;
  for (const part of key.split(".")) {
    if (node === null || typeof node !== "object") return undefined;
    node = (node as Record<string, unknown>)[part];
  }
  return node;
}

function storageOf(ggmlType: number, name: string): GgmlStorage {
  if (ggmlType === F32 || ggmlType === F16 || ggmlType === Q8_0 || ggmlType === BF16) return ggmlType;
  throw new Error(`tensor ${name}: ggml type ${ggmlType} cannot be read here (F32, F16, BF16 and Q8_0 can)`);
}

function byteSize(type: GgmlStorage, count: number): number {
  if (type === F32) return count * 4;
  if (type === F16 || type === BF16) return count * 2;
  return (count / Q8_BLOCK) * Q8_BLOCK_BYTES;
}

function decode(type: GgmlStorage, bytes: Buffer, count: number): Float32Array {
  const out = new Float32Array(count);
  if (type === F32) {
    for (let i = 0; i < count; i++) out[i] = bytes.readFloatLE(i * 4);
  } else if (type === F16) {
    for (let i = 0; i < count; i++) out[i] = float16BitsToFloat32(bytes.readUInt16LE(i * 2));
  } else if (type === BF16) {
    // bfloat16 is the top half of a float32.
    const bits = new Uint32Array(1);
    const asFloat = new Float32Array(bits.buffer);
    for (let i = 0; i < count; i++) {
      bits[0] = bytes.readUInt16LE(i * 2) << 16;
      out[i] = asFloat[0];
    }
  } else {
    for (let b = 0; b < count / Q8_BLOCK; b++) {
      const at = b * Q8_BLOCK_BYTES;
      const scale = float16BitsToFloat32(bytes.readUInt16LE(at));
      for (let i = 0; i < Q8_BLOCK; i++) out[b * Q8_BLOCK + i] = scale * bytes.readInt8(at + 2 + i);
    }
  }
  return out;
}
