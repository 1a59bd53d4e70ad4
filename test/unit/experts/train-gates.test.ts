// PHATGOOSE gate training's TypeScript side (experts/train-gates.ts) against a stand-in for the
// native binding; the native training and its gradient checks are test/train-gates.test.ts.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Llama } from "node-llama-cpp";
import { afterAll, describe, expect, it } from "vitest";
import { readGgufTensors } from "../../../engine/gguf/reader.js";
import { readGateFile } from "../../../experts/gates.js";
import { gradientCheck, hasTrainGates, trainGates } from "../../../experts/train-gates.js";

const dir = mkdtempSync(join(tmpdir(), "flock-gates-unit-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const llamaWith = (bindings: Record<string, unknown>) => ({ _bindings: bindings }) as unknown as Llama;

describe("trainGates", () => {
  it("says the build cannot train gates when the binding is missing", () => {
    const llama = llamaWith({});
    expect(hasTrainGates(llama)).toBe(false);
    expect(() => trainGates(llama, { modelPath: "m", adapterPath: "a", out: join(dir, "x.gguf"), train: ["t"] })).toThrow("cannot train gates");
    expect(() => gradientCheck(llama, { modelPath: "m", adapterPath: "a", params: "gates", tokens: new Uint32Array(1) })).toThrow("cannot train gates");
  });

  it("passes the options on, writes a PHATGOOSE gate file and names the gates no gradient reached", async () => {
    const seen: unknown[] = [];
    const steps: unknown[] = [];
    const native = (options: Record<string, unknown>, onStep?: (...args: unknown[]) => void) => {
      seen.push(options);
      onStep?.(0, true, 1, 2, 3.5, 0.1);
      return {
        gates: { "blk.1.attn_q.weight": Float32Array.of(0.5, -1), "blk.0.attn_k.weight": Float32Array.of(0, 0) },
        steps: 2,
        contextSize: 256,
        trainWindows: 3,
        trainTokens: 900,
        parameters: 4,
        trainLoss: 3.25,
        initialValidationLoss: 3.5,
        validationLoss: 3.0,
        seconds: 0.2,
      };
    };
    const llama = llamaWith({ flockTrainGates: native });
    expect(hasTrainGates(llama)).toBe(true);
    const out = join(dir, "expert.gates.gguf");
    const train = [Uint32Array.of(1, 2, 3), "text"];
    const r = trainGates(llama, { modelPath: "m.gguf", adapterPath: "a.gguf", out, train, steps: 2, learningRate: 0.5, optimizer: "sgd", onStep: (s) => steps.push(s) });
    expect(seen).toEqual([{ modelPath: "m.gguf", adapterPath: "a.gguf", out, train, validation: undefined, steps: 2, learningRate: 0.5, optimizer: "sgd" }]);
    expect(steps).toEqual([{ epoch: 0, train: true, step: 1, steps: 2, loss: 3.5, seconds: 0.1 }]);
    expect([...r.gates.keys()]).toEqual(["blk.0.attn_k.weight", "blk.1.attn_q.weight"]);
    expect(r.untrained).toEqual(["blk.0.attn_k.weight"]);
    expect(r.validationLoss).toBe(3.0);
    const file = await readGateFile(out);
    expect([...file.get("blk.1.attn_q.weight")!]).toEqual([0.5, -1]);
    const { metadata } = await readGgufTensors(out, () => false);
    expect((metadata as { flock: { gates: { method: string } } }).flock.gates.method).toBe("phatgoose");
  });
});
