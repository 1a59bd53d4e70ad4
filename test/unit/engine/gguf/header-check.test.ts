// The bounded GGUF header walk that runs before node-llama-cpp's reader (issue: hardening):
// honest files pass, every length or count that claims more than the file holds is refused;
// and the safetensors gate reader's offsets.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { inject } from "vitest";
import { readManifest } from "../../../../forge/manifest.js";
import { checkGgufHeader, GgufHeaderError } from "../../../../engine/gguf/header-check.js";
import { gguf, TensorType, writeGguf } from "../../../../engine/gguf/writer.js";
import { readSafetensors } from "../../../../engine/safetensors.js";

const dir = mkdtempSync(join(tmpdir(), "flock-header-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A small honest GGUF: a string, a string array, an i32 array, one 2-D tensor. */
function honest(): Buffer {
  const path = join(dir, "honest.gguf");
  writeGguf(
    path,
    [
      ["general.architecture", gguf.str("llama")],
      ["tokenizer.ggml.tokens", gguf.strings(["a", "bb", "ccc"])],
      ["tokenizer.ggml.token_type", gguf.i32s([1, 1, 1])],
    ],
    [{ name: "output.weight", dims: [4, 3], type: TensorType.F32 }],
    () => new Float32Array(12),
  );
  return readFileSync(path);
}

function check(bytes: Buffer): void {
  const path = join(dir, "case.gguf");
  writeFileSync(path, bytes);
  checkGgufHeader(path);
}

/** The offset just past the first occurrence of `text` in `bytes`. */
const after = (bytes: Buffer, text: string) => bytes.indexOf(Buffer.from(text)) + text.length;

describe("checkGgufHeader", () => {
  it("passes honest files, the forged models and adapters included", () => {
    expect(() => check(honest())).not.toThrow();
    const forgeDir = inject("forgeDir");
    const manifest = readManifest(forgeDir);
    for (const file of [...Object.values(manifest.models), ...Object.values(manifest.adapters)].map((m) => m.file)) {
      expect(() => checkGgufHeader(join(forgeDir, file)), file).not.toThrow();
    }
  });

  it("refuses a tensor count, a key-value count, a string length or an array length past the end of the file", () => {
    const lies: Array<[string, (b: Buffer) => void]> = [
      ["tensor count", (b) => b.writeBigUInt64LE(1n << 40n, 8)],
      ["key-value count", (b) => b.writeBigUInt64LE(1n << 40n, 16)],
      ["key length", (b) => b.writeBigUInt64LE(1n << 30n, 24)],
      ["string value", (b) => b.writeBigUInt64LE(536_870_000n, after(b, "general.architecture") + 4)],
      ["string array count", (b) => b.writeBigUInt64LE(1n << 40n, after(b, "tokenizer.ggml.tokens") + 8)],
      ["i32 array count", (b) => b.writeBigUInt64LE(1n << 32n, after(b, "tokenizer.ggml.token_type") + 8)],
      ["tensor name", (b) => b.writeBigUInt64LE(1n << 30n, after(b, "output.weight") - "output.weight".length - 8)],
    ];
    for (const [what, lie] of lies) {
      const bytes = honest();
      lie(bytes);
      expect(() => check(bytes), what).toThrow(GgufHeaderError);
      expect(() => check(bytes), what).toThrow(/past the end of the file/);
    }
  });

  it("refuses more than 4 dimensions, an unknown value type, a cut header and a file that is not GGUF", () => {
    const dims = honest();
    dims.writeUInt32LE(5, after(dims, "output.weight"));
    expect(() => check(dims)).toThrow(/5 dimensions/);
    const type = honest();
    type.writeUInt32LE(99, after(type, "general.architecture"));
    expect(() => check(type)).toThrow(/unknown type 99/);
    const cut = honest().subarray(0, after(honest(), "tokenizer.ggml.tokens") + 10);
    expect(() => check(cut)).toThrow(GgufHeaderError);
    expect(() => check(Buffer.from("root:x:0:0:root:/root:/bin/bash\n"))).toThrow(/not a GGUF file/);
    expect(() => checkGgufHeader(join(dir, "missing.gguf"))).toThrow(expect.objectContaining({ code: "ENOENT" }));
  });

  it("safetensors gate files: a negative data offset cannot smuggle a shape past the file's bytes", () => {
    // 2^28 F32 values (1 GiB) claimed over offsets [-2^30, 0]: end − begin matches the shape.
    const header = Buffer.from(JSON.stringify({ "lm_head.gate": { dtype: "F32", shape: [2 ** 28], data_offsets: [-(2 ** 30), 0] } }));
    const bytes = Buffer.alloc(8 + header.length + 16);
    bytes.writeBigUInt64LE(BigInt(header.length), 0);
    header.copy(bytes, 8);
    const path = join(dir, "liar.safetensors");
    writeFileSync(path, bytes);
    const before = process.resourceUsage().maxRSS;
    expect(() => readSafetensors(path)).toThrow(/inconsistent offsets/);
    expect((process.resourceUsage().maxRSS - before) * 1024).toBeLessThan(64 * 2 ** 20);
  });
});
