// Reads safetensors files (the format PyTorch/Hugging Face tools save): an 8-byte little-endian
// header length, a JSON header {name: {dtype, shape, data_offsets}}, then the raw data.
import { readFileSync, writeFileSync } from "node:fs";
import { float16BitsToFloat32 } from "./gguf/f16.js";

export interface SafetensorsTensor {
  /** Row-major (PyTorch order) shape. */
  shape: number[];
  data: Float32Array;
}

const BYTES: Record<string, number> = { F32: 4, F16: 2, BF16: 2 };

export function readSafetensors(path: string): Map<string, SafetensorsTensor> {
  const file = readFileSync(path);
  if (file.length < 8) throw new Error(`${path}: too short for a safetensors file`);
  const headerLength = Number(file.readBigUInt64LE(0));
  if (headerLength <= 0 || 8 + headerLength > file.length) throw new Error(`${path}: not a safetensors file (bad header length)`);
  let header: Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] } | Record<string, string>>;
  try {
    header = JSON.parse(file.subarray(8, 8 + headerLength).toString("utf8"));
  } catch {
    throw new Error(`${path}: not a safetensors file (the header is not JSON)`);
  }
  const data = file.subarray(8 + headerLength);
  const out = new Map<string, SafetensorsTensor>();
  for (const [name, entry] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const { dtype, shape, data_offsets: offsets } = entry as { dtype: string; shape: number[]; data_offsets: [number, number] };
    const width = BYTES[dtype];
    if (!width) throw new Error(`${path}: tensor ${name} has dtype ${dtype}; F32, F16 and BF16 can be read`);
    const count = shape.reduce((a, b) => a * b, 1);
    const [begin, end] = offsets;
    // A negative begin would let a claimed shape far past the file's bytes through to the allocation below.
    if (!Number.isSafeInteger(begin) || begin < 0 || end - begin !== count * width || end > data.length) throw new Error(`${path}: tensor ${name} has inconsistent offsets`);
    const bytes = data.subarray(begin, end);
    const values = new Float32Array(count);
    for (let i = 0; i < count; i++) {
      if (dtype === "F32") values[i] = bytes.readFloatLE(i * 4);
      else if (dtype === "F16") values[i] = float16BitsToFloat32(bytes.readUInt16LE(i * 2));
      else values[i] = new Float32Array(new Uint32Array([bytes.readUInt16LE(i * 2) << 16]).buffer)[0];
    }
    out.set(name, { shape, data: values });
  }
  return out;
}

/** Writes F32 tensors as a safetensors file (tests, fit:gates). */
export function writeSafetensors(path: string, tensors: ReadonlyArray<{ name: string; shape: number[]; data: Float32Array }>, metadata: Record<string, string> = {}): void {
  let offset = 0;
  const header: Record<string, unknown> = { __metadata__: metadata };
  for (const t of tensors) {
    header[t.name] = { dtype: "F32", shape: t.shape, data_offsets: [offset, offset + t.data.length * 4] };
    offset += t.data.length * 4;
  }
  let json = JSON.stringify(header);
  // Data starts 8-byte aligned, as the reference implementation pads the header with spaces.
  json += " ".repeat((8 - ((8 + Buffer.byteLength(json)) % 8)) % 8);
  const head = Buffer.alloc(8);
  head.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  const body = Buffer.concat(tensors.map((t) => Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength)));
  writeFileSync(path, Buffer.concat([head, Buffer.from(json, "utf8"), body]));
}
