// A GGUF v3 writer: just enough of the format for the forge (metadata of every scalar and
// array type llama.cpp reads, F32/F16 tensors), written sequentially so large files never sit
// in memory whole. Spec: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
import { closeSync, openSync, writeSync } from "node:fs";
import { float32ToFloat16Bits } from "./f16.js";

const GGUF_MAGIC = 0x46554747; // "GGUF" little-endian
const GGUF_VERSION = 3;
const ALIGNMENT = 32;

enum ValueType {
  UINT8 = 0,
  INT8 = 1,
  UINT16 = 2,
  INT16 = 3,
  UINT32 = 4,
  INT32 = 5,
  FLOAT32 = 6,
  BOOL = 7,
  STRING = 8,
  ARRAY = 9,
  UINT64 = 10,
  INT64 = 11,
  FLOAT64 = 12,
}

export enum TensorType {
  F32 = 0,
  F16 = 1,
  /** Blocks of 32 weights: an f16 scale, then 16 bytes of 4-bit values (llama.cpp's q4_0). */
  Q4_0 = 2,
  /** Blocks of 32 weights: an f16 scale, then 32 int8 values (llama.cpp's q8_0). */
  Q8_0 = 8,
}

/** Both block types hold 32 weights. */
const BLOCK = 32;

function byteSize(type: TensorType, n: number): number {
  switch (type) {
    case TensorType.F32:
      return n * 4;
    case TensorType.F16:
      return n * 2;
    case TensorType.Q4_0:
    case TensorType.Q8_0:
      if (n % BLOCK !== 0) throw new Error(`${TensorType[type].toLowerCase()} needs a multiple of ${BLOCK} values, got ${n}`);
      return (n / BLOCK) * (2 + (type === TensorType.Q8_0 ? BLOCK : BLOCK / 2));
  }
}

type Scalar =
  | { type: "u32"; value: number }
  | { type: "i32"; value: number }
  | { type: "f32"; value: number }
  | { type: "bool"; value: boolean }
  | { type: "string"; value: string };

type ArrayValue =
  | { type: "array"; of: "string"; value: readonly string[] }
  | { type: "array"; of: "f32"; value: ArrayLike<number> }
  | { type: "array"; of: "i32"; value: ArrayLike<number> };

export type GgufValue = Scalar | ArrayValue;

export const gguf = {
  u32: (value: number): GgufValue => ({ type: "u32", value }),
  i32: (value: number): GgufValue => ({ type: "i32", value }),
  f32: (value: number): GgufValue => ({ type: "f32", value }),
  bool: (value: boolean): GgufValue => ({ type: "bool", value }),
  str: (value: string): GgufValue => ({ type: "string", value }),
  strings: (value: readonly string[]): GgufValue => ({ type: "array", of: "string", value }),
  f32s: (value: ArrayLike<number>): GgufValue => ({ type: "array", of: "f32", value }),
  i32s: (value: ArrayLike<number>): GgufValue => ({ type: "array", of: "i32", value }),
};

export interface TensorSpec {
  name: string;
  /** ggml order: dims[0] is the contiguous (input) dimension. */
  dims: readonly number[];
  type: TensorType;
  /** Row-major in ggml order, length = product of dims. */
  data: Float32Array;
}

/** Grows a byte buffer for the header (metadata + tensor infos). */
class ByteSink {
  private buf = Buffer.alloc(1 << 16);
  length = 0;

  private reserve(n: number): void {
    if (this.length + n <= this.buf.length) return;
    const next = Buffer.alloc(Math.max(this.buf.length * 2, this.length + n));
    this.buf.copy(next, 0, 0, this.length);
    this.buf = next;
  }
  u8(v: number): void {
    this.reserve(1);
    this.buf.writeUInt8(v, this.length);
    this.length += 1;
  }
  u32(v: number): void {
    this.reserve(4);
    this.buf.writeUInt32LE(v, this.length);
    this.length += 4;
  }
  i32(v: number): void {
    this.reserve(4);
    this.buf.writeInt32LE(v, this.length);
    this.length += 4;
  }
  u64(v: number): void {
    this.reserve(8);
    this.buf.writeBigUInt64LE(BigInt(v), this.length);
    this.length += 8;
  }
  f32(v: number): void {
    this.reserve(4);
    this.buf.writeFloatLE(v, this.length);
    this.length += 4;
  }
  string(s: string): void {
    const bytes = Buffer.from(s, "utf8");
    this.u64(bytes.length);
    this.reserve(bytes.length);
    bytes.copy(this.buf, this.length);
    this.length += bytes.length;
  }
  padTo(alignment: number): void {
    while (this.length % alignment !== 0) this.u8(0);
  }
  bytes(): Buffer {
    return this.buf.subarray(0, this.length);
  }
}

function writeValue(sink: ByteSink, value: GgufValue): void {
  switch (value.type) {
    case "u32":
      sink.u32(ValueType.UINT32);
      sink.u32(value.value);
      return;
    case "i32":
      sink.u32(ValueType.INT32);
      sink.i32(value.value);
      return;
    case "f32":
      sink.u32(ValueType.FLOAT32);
      sink.f32(value.value);
      return;
    case "bool":
      sink.u32(ValueType.BOOL);
      sink.u8(value.value ? 1 : 0);
      return;
    case "string":
      sink.u32(ValueType.STRING);
      sink.string(value.value);
      return;
    case "array": {
      sink.u32(ValueType.ARRAY);
      if (value.of === "string") {
        sink.u32(ValueType.STRING);
        sink.u64(value.value.length);
        for (const s of value.value) sink.string(s);
      } else if (value.of === "f32") {
        sink.u32(ValueType.FLOAT32);
        sink.u64(value.value.length);
        for (let i = 0; i < value.value.length; i++) sink.f32(value.value[i]);
      } else {
        sink.u32(ValueType.INT32);
        sink.u64(value.value.length);
        for (let i = 0; i < value.value.length; i++) sink.i32(value.value[i]);
      }
      return;
    }
  }
}

function tensorByteSize(t: TensorSpec): number {
  const n = t.dims.reduce((a, b) => a * b, 1);
  if (n !== t.data.length) {
    throw new Error(`tensor ${t.name}: dims ${t.dims.join("x")} hold ${n} values, data has ${t.data.length}`);
  }
  return byteSize(t.type, n);
}

function encodeTensor(t: TensorSpec): Buffer {
  if (t.type === TensorType.F32) {
    return Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength);
  }
  if (t.type === TensorType.F16) {
    const out = Buffer.alloc(t.data.length * 2);
    for (let i = 0; i < t.data.length; i++) out.writeUInt16LE(float32ToFloat16Bits(t.data[i]), i * 2);
    return out;
  }
  return t.type === TensorType.Q8_0 ? encodeQ8_0(t.data) : encodeQ4_0(t.data);
}

/** q8_0 as ggml quantizes it: scale = max|x| / 127, values rounded to nearest. */
function encodeQ8_0(data: Float32Array): Buffer {
  const out = Buffer.alloc(byteSize(TensorType.Q8_0, data.length));
  for (let b = 0; b < data.length / BLOCK; b++) {
    let amax = 0;
    for (let i = 0; i < BLOCK; i++) amax = Math.max(amax, Math.abs(data[b * BLOCK + i]));
    const scale = amax / 127;
    const inv = scale > 0 ? 1 / scale : 0;
    const at = b * (2 + BLOCK);
    out.writeUInt16LE(float32ToFloat16Bits(scale), at);
    for (let i = 0; i < BLOCK; i++) out.writeInt8(Math.round(data[b * BLOCK + i] * inv), at + 2 + i);
  }
  return out;
}

/**
 * q4_0 as ggml's quantize_row_q4_0_ref: scale = (the value of largest magnitude) / −8, codes
 * min(15, trunc(x / scale + 8.5)) stored as x = (code − 8)·scale; byte j holds value j in its
 * low nibble and value j + 16 in its high one.
 */
function encodeQ4_0(data: Float32Array): Buffer {
  const out = Buffer.alloc(byteSize(TensorType.Q4_0, data.length));
  for (let b = 0; b < data.length / BLOCK; b++) {
    let max = 0;
    for (let i = 0; i < BLOCK; i++) {
      const v = data[b * BLOCK + i];
      if (Math.abs(v) > Math.abs(max)) max = v;
    }
    const scale = Math.fround(max / -8);
    const inv = scale !== 0 ? Math.fround(1 / scale) : 0;
    const at = b * (2 + BLOCK / 2);
    out.writeUInt16LE(float32ToFloat16Bits(scale), at);
    const code = (i: number) => Math.min(15, Math.trunc(Math.fround(Math.fround(data[b * BLOCK + i] * inv) + 8.5)));
    for (let j = 0; j < BLOCK / 2; j++) out.writeUInt8(code(j) | (code(j + BLOCK / 2) << 4), at + 2 + j);
  }
  return out;
}

/**
 * Writes a GGUF v3 file. Tensors are produced lazily (one at a time) so a forge can build a
 * large model without holding every tensor at once; `describe` gives their shapes up front
 * because the header precedes the data.
 */
export function writeGguf(
  path: string,
  metadata: ReadonlyArray<readonly [string, GgufValue]>,
  tensors: ReadonlyArray<Omit<TensorSpec, "data">>,
  produce: (name: string) => Float32Array,
): void {
  const header = new ByteSink();
  header.u32(GGUF_MAGIC);
  header.u32(GGUF_VERSION);
  header.u64(tensors.length);
  header.u64(metadata.length);
  for (const [key, value] of metadata) {
    header.string(key);
    writeValue(header, value);
  }
  let offset = 0;
  const offsets: number[] = [];
  for (const t of tensors) {
    header.string(t.name);
    header.u32(t.dims.length);
    for (const d of t.dims) header.u64(d);
    header.u32(t.type);
    header.u64(offset);
    offsets.push(offset);
    offset += alignUp(byteSize(t.type, t.dims.reduce((a, b) => a * b, 1)), ALIGNMENT);
  }
  header.padTo(ALIGNMENT);

  const fd = openSync(path, "w");
  try {
    writeSync(fd, header.bytes());
    for (const t of tensors) {
      const spec: TensorSpec = { ...t, data: produce(t.name) };
      const size = tensorByteSize(spec);
      writeSync(fd, encodeTensor(spec));
      const pad = alignUp(size, ALIGNMENT) - size;
      if (pad > 0) writeSync(fd, Buffer.alloc(pad));
    }
  } finally {
    closeSync(fd);
  }
}

function alignUp(n: number, alignment: number): number {
  return Math.ceil(n / alignment) * alignment;
}
