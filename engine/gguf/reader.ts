// Reads a GGUF file's tensors as Float32Arrays (LoRA adapters, gate files, and the test
// oracle's models). node-llama-cpp parses the header; the bytes are read here and decoded for
// F32, F16, BF16, Q8_0 and Q4_0.
import { closeSync, fstatSync, openSync, readSync } from "node:fs";
import { readGgufFileInfo } from "node-llama-cpp";
import { float16BitsToFloat32 } from "./f16.js";
import { checkGgufHeader } from "./header-check.js";

export const F32 = 0;
export const F16 = 1;
export const Q4_0 = 2;
export const Q8_0 = 8;
export const BF16 = 30;
export type GgmlStorage = typeof F32 | typeof F16 | typeof Q4_0 | typeof Q8_0 | typeof BF16;
/** Q8_0 and Q4_0 blocks hold 32 values behind an f16 scale. */
export const Q8_BLOCK = 32;
const BLOCK_BYTES = { [Q8_0]: 2 + Q8_BLOCK, [Q4_0]: 2 + Q8_BLOCK / 2 };

export interface Tensor {
  /** ggml order: dims[0] is contiguous, so a [in, out] matrix is `out` rows of `in` values. */
  dims: number[];
  /** The ggml type it was stored as (0 F32, 1 F16, 2 Q4_0, 8 Q8_0, 30 BF16); `data` is always decoded. */
  type: GgmlStorage;
  data: Float32Array;
}

export interface GgufContents {
  /** node-llama-cpp's nested metadata object ("llama.block_count" → metadata.llama.block_count). */
  metadata: unknown;
  tensors: Map<string, Tensor>;
}

/** A tensor's bytes as the file stores them (decodeInto reads values out of them). */
export interface StoredTensor {
  dims: number[];
  type: GgmlStorage;
  bytes: Buffer;
}

/** `only`: read just the tensors this accepts (the others are skipped unread). */
export async function readGgufTensors(path: string, only: (name: string) => boolean = () => true): Promise<GgufContents> {
  const tensors = new Map<string, Tensor>();
  const metadata = await readStored(path, only, (name, { dims, type, bytes }) => {
    const count = dims.reduce((a, b) => a * b, 1);
    tensors.set(name, { dims, type, data: decodeInto(type, bytes, 0, count, new Float32Array(count)) });
  });
  return { metadata, tensors };
}

/** One tensor as stored, undecoded (for tensors read a slice at a time), or undefined. */
export async function readStoredTensor(path: string, name: string): Promise<StoredTensor | undefined> {
  let found: StoredTensor | undefined;
  await readStored(path, (n) => n === name, (_, tensor) => (found = tensor));
  return found;
}

async function readStored(path: string, only: (name: string) => boolean, use: (name: string, tensor: StoredTensor) => void): Promise<unknown> {
  // Lengths checked against the file before node-llama-cpp allocates what they claim.
  checkGgufHeader(path);
  const info = await readGgufFileInfo(path, { logWarnings: false, spliceSplitFiles: false });
  const fd = openSync(path, "r");
  try {
    const fileSize = fstatSync(fd).size;
    for (const t of info.fullTensorInfo ?? []) {
      if (!only(t.name)) continue;
      const dims = t.dimensions.map(Number);
      const type = storageOf(t.ggmlType, t.name);
      // A header may claim anything: nothing is allocated for data the file does not hold.
      const size = byteSize(type, dims.reduce((a, b) => a * b, 1));
      if (!(Number.isSafeInteger(size) && size >= 0 && Number(t.fileOffset) + size <= fileSize)) {
        throw new Error(`tensor ${t.name} claims ${dims.join("×")} values past the end of the file (${fileSize} bytes)`);
      }
      const bytes = Buffer.alloc(size);
      readSync(fd, bytes, 0, bytes.length, Number(t.fileOffset));
      use(t.name, { dims, type, bytes });
    }
  } finally {
    closeSync(fd);
  }
  return info.metadata;
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
  if (ggmlType === F32 || ggmlType === F16 || ggmlType === Q4_0 || ggmlType === Q8_0 || ggmlType === BF16) return ggmlType;
  throw new Error(`tensor ${name}: ggml type ${ggmlType} cannot be read here (F32, F16, BF16, Q8_0 and Q4_0 can)`);
}

function byteSize(type: GgmlStorage, count: number): number {
  if (type === F32) return count * 4;
  if (type === F16 || type === BF16) return count * 2;
  return (count / Q8_BLOCK) * BLOCK_BYTES[type];
}

/**
 * Decodes `count` values from element `first` of a stored tensor into out (from outOffset);
 * returns out. For Q8_0 and Q4_0, `first` and `count` are whole blocks (multiples of 32).
 */
export function decodeInto(type: GgmlStorage, bytes: Buffer, first: number, count: number, out: Float32Array, outOffset = 0): Float32Array {
  if (type === F32) {
    for (let i = 0; i < count; i++) out[outOffset + i] = bytes.readFloatLE((first + i) * 4);
  } else if (type === F16) {
    for (let i = 0; i < count; i++) out[outOffset + i] = float16BitsToFloat32(bytes.readUInt16LE((first + i) * 2));
  } else if (type === BF16) {
    // bfloat16 is the top half of a float32.
    const bits = new Uint32Array(1);
    const asFloat = new Float32Array(bits.buffer);
    for (let i = 0; i < count; i++) {
      bits[0] = bytes.readUInt16LE((first + i) * 2) << 16;
      out[outOffset + i] = asFloat[0];
    }
  } else {
    if (first % Q8_BLOCK !== 0 || count % Q8_BLOCK !== 0) throw new RangeError("Q8_0 and Q4_0 values are decoded in whole blocks of 32");
    const blockBytes = BLOCK_BYTES[type];
    for (let b = 0; b < count / Q8_BLOCK; b++) {
      const at = (first / Q8_BLOCK + b) * blockBytes;
      const scale = float16BitsToFloat32(bytes.readUInt16LE(at));
      const o = outOffset + b * Q8_BLOCK;
      if (type === Q8_0) {
        for (let i = 0; i < Q8_BLOCK; i++) out[o + i] = scale * bytes.readInt8(at + 2 + i);
      } else {
        // Byte j: value j in the low nibble, value j + 16 in the high one, both offset by 8.
        for (let j = 0; j < Q8_BLOCK / 2; j++) {
          const byte = bytes.readUInt8(at + 2 + j);
          out[o + j] = scale * ((byte & 0x0f) - 8);
          out[o + j + Q8_BLOCK / 2] = scale * ((byte >> 4) - 8);
        }
      }
    }
  }
  return out;
}
