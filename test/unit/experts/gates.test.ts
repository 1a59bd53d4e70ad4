// Routing math and files: Arrow gates against a brute-force singular vector, the scoring
// formulas, top-k renormalisation, safetensors round trips and the variant cache's eviction.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import type { LoadedModel } from "../../../engine/model.js";
import { readSafetensors, writeSafetensors } from "../../../engine/safetensors.js";
import { createRng } from "../../../decoding/rng.js";
import { arrowGate, gateModule } from "../../../experts/gates.js";
import { moduleGroup, summariseTrace, VariantCache } from "../../../experts/routed.js";
import { routingScores, standardise, topWeights } from "../../../experts/score.js";

const dir = mkdtempSync(join(tmpdir(), "flock-routing-unit-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Top eigenvector of Mᵀ M for M (out × in, row-major) by power iteration in the full input space. */
function bruteTopRightSingular(m: Float64Array, out: number, inDim: number): Float64Array {
  let v = Float64Array.from({ length: inDim }, (_, i) => Math.sin(i + 1));
  for (let it = 0; it < 2000; it++) {
    const mv = new Float64Array(out);
    for (let o = 0; o < out; o++) for (let i = 0; i < inDim; i++) mv[o] += m[o * inDim + i] * v[i];
    const next = new Float64Array(inDim);
    for (let o = 0; o < out; o++) for (let i = 0; i < inDim; i++) next[i] += m[o * inDim + i] * mv[o];
    const norm = Math.hypot(...next);
    v = next.map((x) => x / norm);
  }
  return v;
}

describe("Arrow gates", () => {
  it("equal the top right singular vector of B·A (up to sign), for several ranks", () => {
    const rng = createRng(5);
    for (const [rank, inDim, outDim] of [
      [1, 6, 5],
      [3, 10, 7],
      [8, 24, 16],
    ]) {
      const a = Float32Array.from({ length: rank * inDim }, () => rng.next() - 0.5);
      const b = Float32Array.from({ length: outDim * rank }, () => rng.next() - 0.5);
      const ba = new Float64Array(outDim * inDim);
      for (let o = 0; o < outDim; o++) for (let i = 0; i < inDim; i++) for (let r = 0; r < rank; r++) ba[o * inDim + i] += b[o * rank + r] * a[r * inDim + i];
      const expected = bruteTopRightSingular(ba, outDim, inDim);
      const gate = arrowGate(a, b, rank, inDim, outDim);
      expect(Math.hypot(...gate)).toBeCloseTo(1, 5);
      const cosine = gate.reduce((acc, g, i) => acc + g * expected[i], 0);
      expect(Math.abs(cosine)).toBeCloseTo(1, 4);
    }
  });
});

describe("scores and weights", () => {
  it("PHATGOOSE: LN(x)·LN(v)/√d; Arrow: |x·v|", () => {
    const x = [0.5, -1, 2, 0.25];
    const v = [1, 0, -1, 3];
    const lx = standardise(x);
    const lv = standardise(v);
    const expected = lx.reduce((acc, xi, i) => acc + xi * lv[i], 0) / 2;
    expect(routingScores("phatgoose", x, [v])[0]).toBeCloseTo(expected, 12);
    expect(routingScores("arrow", x, [v])[0]).toBeCloseTo(Math.abs(0.5 - 2 + 0.75), 12);
    // Standardisation: mean 0, variance 1 (up to eps).
    expect(lx.reduce((a, b) => a + b, 0)).toBeCloseTo(0, 12);
    expect(lx.reduce((a, b) => a + b * b, 0) / 4).toBeCloseTo(1, 4);
  });

  it("topWeights: the k largest of a module's softmax kept and renormalised, most weight first", () => {
    const probabilities = [0.1, 0.5, 0.3, 0.1];
    const w = topWeights(probabilities, 2);
    expect(w.map((e) => e.expert)).toEqual([1, 2]);
    expect(w[0].weight).toBeCloseTo(0.5 / 0.8, 12);
    expect(w[1].weight).toBeCloseTo(0.3 / 0.8, 12);
    expect(topWeights(probabilities, 10)).toHaveLength(4);
    expect(topWeights(probabilities, 1)).toEqual([{ expert: 1, weight: 1 }]);
  });

  it("summariseTrace: per token, each expert's mean top-k weight over the modules and per module group", () => {
    // Three modules × three experts; top-2 per module.
    const trace = Float32Array.from([0.6, 0.3, 0.1, 0.2, 0.2, 0.6, 0.1, 0.8, 0.1]);
    const modules = ["blk.0.attn_q.weight", "blk.1.attn_q.weight", "output.weight"];
    const token = summariseTrace(trace, modules, ["a", "b", "c"], 2);
    // attn_q (2 modules): a .6/.9 + .2/.8 (tie b/c at .2: the lower index wins) → a (2/3 + 1/4)/2, b (1/3 + 0)/2, c (0 + 3/4)/2
    const q = Object.fromEntries(token.groups!.attn_q.map((e) => [e.expert, e.weight]));
    expect(q.a).toBeCloseTo((2 / 3 + 1 / 4) / 2, 6);
    expect(q.b).toBeCloseTo(1 / 3 / 2, 6);
    expect(q.c).toBeCloseTo(3 / 4 / 2, 6);
    expect(token.groups!.output.map((e) => e.expert)).toEqual(["b", "a"]);
    expect(token.experts.reduce((acc, e) => acc + e.weight, 0)).toBeCloseTo(1, 6);
    expect(token.experts[0].weight).toBeGreaterThanOrEqual(token.experts[1].weight);
    expect(moduleGroup("blk.12.ffn_down.weight")).toBe("ffn_down");
  });
});

describe("gate files", () => {
  it("map llama.cpp and Hugging Face names to base tensors", () => {
    expect(gateModule("blk.2.ffn_up.weight.gate")).toBe("blk.2.ffn_up.weight");
    expect(gateModule("model.layers.7.self_attn.o_proj.gate")).toBe("blk.7.attn_output.weight");
    expect(gateModule("lm_head.gate")).toBe("output.weight");
    expect(gateModule("model.layers.7.self_attn.o_proj.weight")).toBeNull();
  });

  it("safetensors: F32 round trip, F16 and BF16 read, malformed files named", () => {
    const path = join(dir, "t.safetensors");
    const data = Float32Array.from([1.5, -2, 0.25, 1e-3]);
    writeSafetensors(path, [{ name: "lm_head.gate", shape: [4], data }]);
    expect(readSafetensors(path).get("lm_head.gate")).toEqual({ shape: [4], data });

    // Half precision, written by hand: 1.0 = 0x3c00 (F16), 0x3f80 (BF16).
    const header = JSON.stringify({ h: { dtype: "F16", shape: [1], data_offsets: [0, 2] }, b: { dtype: "BF16", shape: [1], data_offsets: [2, 4] } });
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(header.length));
    const body = Buffer.alloc(4);
    body.writeUInt16LE(0x3c00, 0);
    body.writeUInt16LE(0x3f80, 2);
    writeFileSync(path, Buffer.concat([len, Buffer.from(header), body]));
    const halves = readSafetensors(path);
    expect(halves.get("h")!.data[0]).toBe(1);
    expect(halves.get("b")!.data[0]).toBe(1);

    writeFileSync(path, Buffer.from("nonsense"));
    expect(() => readSafetensors(path)).toThrow("not a safetensors file");
  });
});

describe("variant cache", () => {
  const fake = (id: string) => {
    const model = { id, retired: false, retire: () => (model.retired = true) };
    return model;
  };

  it("keeps the most recently used configurations and retires the oldest past its size", async () => {
    const made: Array<ReturnType<typeof fake>> = [];
    const cache = new VariantCache(async () => {
      const m = fake(`v${made.length}`);
      made.push(m);
      return m as unknown as LoadedModel;
    }, 2);
    const spec = { adapters: [], hiddenStates: false };
    const a = await cache.get("a", spec);
    await cache.get("b", spec);
    expect(await cache.get("a", spec)).toBe(a); // reused, now most recent
    await cache.get("c", spec); // evicts b
    await Promise.resolve();
    expect(made.map((m) => m.retired)).toEqual([false, true, false]);
    expect(cache.size).toBe(2);
    cache.clear();
    await Promise.resolve();
    expect(made.map((m) => m.retired)).toEqual([true, true, true]);
    expect(cache.size).toBe(0);
  });

  it("forgets a configuration whose load failed, so the next request tries again", async () => {
    let calls = 0;
    const cache = new VariantCache(async () => {
      calls++;
      if (calls === 1) throw new Error("boom");
      return fake("ok") as unknown as LoadedModel;
    }, 2);
    const spec = { adapters: [], hiddenStates: false };
    await expect(cache.get("x", spec)).rejects.toThrow("boom");
    await expect(cache.get("x", spec)).resolves.toMatchObject({ id: "ok" });
  });
});
