// A bounded walk over a GGUF header, run before node-llama-cpp's readGgufFileInfo on files an
// admin or a configuration names. That reader allocates whatever a string or array length
// claims (Buffer.alloc(length), then a copy), and loops over whatever an array, key or tensor
// count claims: a 69-byte file could take half a gigabyte, a larger claim the whole process.
// Here every length and count is checked against the bytes left in the file before it is
// followed, and the file is read in small chunks, so a header costs what the file holds.
import { closeSync, fstatSync, openSync, readSync } from "node:fs";

/** A header that claims more than its file holds. The message names no path (clients see it). */
export class GgufHeaderError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "GgufHeaderError";
  }
}

const CHUNK = 64 * 1024;
/** ggml's GGML_MAX_DIMS. */
const MAX_DIMS = 4;
/** Arrays of arrays: llama.cpp writes none; a bound keeps the walk's recursion shallow. */
const MAX_NESTING = 4;
const STRING = 8;
const ARRAY = 9;
/** Bytes of each fixed-size GGUF value type. */
const FIXED: Record<number, number> = { 0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8 };

/** The least bytes one value of `type` takes (a string its length, an array its type and count). */
function leastBytes(type: number): number {
  if (type === STRING) return 8;
  if (type === ARRAY) return 12;
  const size = FIXED[type];
  if (size === undefined) throw new GgufHeaderError(`the GGUF header has a value of unknown type ${type}`);
  return size;
}

class ChunkedReader {
  private readonly chunk = Buffer.alloc(CHUNK);
  private chunkStart = 0;
  private chunkLength = 0;
  position = 0;

  constructor(
    private readonly fd: number,
    readonly size: number,
  ) {}

  get left(): number {
    return this.size - this.position;
  }

  /** Moves past `bytes` the header claims, refusing a claim past the end of the file. */
  skip(bytes: number | bigint, what: string): void {
    if (BigInt(bytes) > BigInt(this.left)) throw new GgufHeaderError(`the GGUF header claims ${what} of ${bytes} bytes, past the end of the file (${this.left} bytes left)`);
    this.position += Number(bytes);
  }

  /** Refuses `count` items of at least `least` bytes each when the rest of the file cannot hold them. */
  bound(count: bigint, least: number, what: string): number {
    if (count * BigInt(least) > BigInt(this.left)) throw new GgufHeaderError(`the GGUF header claims ${count} ${what}, past the end of the file (${this.left} bytes left)`);
    return Number(count);
  }

  private bytes(n: number): Buffer {
    this.skip(n, "a value");
    const at = this.position - n;
    if (at < this.chunkStart || at + n > this.chunkStart + this.chunkLength) {
      this.chunkStart = at;
      this.chunkLength = readSync(this.fd, this.chunk, 0, Math.min(CHUNK, this.size - at), at);
      if (this.chunkLength < n) throw new GgufHeaderError("the GGUF header is cut short");
    }
    return this.chunk.subarray(at - this.chunkStart, at - this.chunkStart + n);
  }

  u32(): number {
    return this.bytes(4).readUInt32LE(0);
  }

  u64(): bigint {
    return this.bytes(8).readBigUInt64LE(0);
  }

  magic(): string {
    return this.bytes(4).toString("latin1");
  }
}

function walkValue(reader: ChunkedReader, type: number, depth: number): void {
  if (type === STRING) {
    reader.skip(reader.u64(), "a string");
  } else if (type === ARRAY) {
    if (depth >= MAX_NESTING) throw new GgufHeaderError("the GGUF header nests arrays too deeply");
    const elementType = reader.u32();
    const least = leastBytes(elementType);
    const count = reader.bound(reader.u64(), least, "array elements");
    if (elementType === STRING || elementType === ARRAY) {
      for (let i = 0; i < count; i++) walkValue(reader, elementType, depth + 1);
    } else {
      reader.skip(count * least, "an array");
    }
  } else {
    reader.skip(leastBytes(type), "a value");
  }
}

/**
 * Walks the header (metadata and tensor infos) of the GGUF file at `path`; throws a
 * GgufHeaderError where a length or count claims more than the rest of the file holds, a plain
 * Error where the file is not GGUF, and the file system's error where it cannot be read.
 */
export function checkGgufHeader(path: string): void {
  const fd = openSync(path, "r");
  try {
    const reader = new ChunkedReader(fd, fstatSync(fd).size);
    if (reader.size < 24 || reader.magic() !== "GGUF") throw new Error("not a GGUF file");
    const version = reader.u32();
    if (version < 2) throw new Error(`GGUF version ${version} is not supported`);
    // Each tensor info: a name's length, n_dims, a type and an offset at least.
    const tensors = reader.bound(reader.u64(), 8 + 4 + 4 + 8, "tensors");
    // Each key-value pair: a key's length, a type and a value of one byte at least.
    const pairs = reader.bound(reader.u64(), 8 + 4 + 1, "metadata entries");
    for (let i = 0; i < pairs; i++) {
      reader.skip(reader.u64(), "a metadata key");
      walkValue(reader, reader.u32(), 0);
    }
    for (let i = 0; i < tensors; i++) {
      reader.skip(reader.u64(), "a tensor name");
      const dims = reader.u32();
      if (dims > MAX_DIMS) throw new GgufHeaderError(`the GGUF header claims a tensor of ${dims} dimensions (ggml has at most ${MAX_DIMS})`);
      reader.skip(dims * 8 + 4 + 8, "a tensor info");
    }
  } finally {
    closeSync(fd);
  }
}
