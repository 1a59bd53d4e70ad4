// The engine against the forge's closed forms: exact distributions, LoRA, KV rollback, chat
// rendering, and the forge's own determinism.
import { createHash } from "node:crypto";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { readGgufFileInfo } from "node-llama-cpp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Engine } from "../engine/engine.js";
import { forge } from "../forge/presets.js";
import { readManifest, type Manifest } from "../forge/manifest.js";
import type { LoadedModel } from "../engine/model.js";
import { ModelEntry } from "../pipelines/model-entry.js";
import { ChainOracle } from "./helpers/chain.js";
import { forgedPath } from "./helpers/server.js";
import { inject } from "vitest";

let engine: Engine;
let manifest: Manifest;
beforeAll(async () => {
  manifest = readManifest(inject("forgeDir"));
  engine = await Engine.create({ gpu: "off", threads: 1 });
});
afterAll(() => engine?.[Symbol.asyncDispose]());

const load = (id: string, file: string, extra: Partial<ModelEntry> = {}) =>
  engine.load(ModelEntry.parse({ id, path: forgedPath(file), contextSize: 256, parallel: 2, ...extra }));

function softmax(logits: Float32Array): Float64Array {
  const max = Math.max(...logits);
  const e = Float64Array.from(logits, (x) => Math.exp(x - max));
  const z = e.reduce((a, b) => a + b, 0);
  return e.map((x) => x / z);
}

/** Largest difference between the distributions two logit vectors define. */
function probabilityGap(a: Float32Array, b: Float32Array): number {
  const pa = softmax(a);
  const pb = softmax(b);
  return Math.max(...pa.map((x, i) => Math.abs(x - pb[i])));
}

/** One token per chain state (the state's own piece; the start state via BOS). */
function representativeTokens(m: Manifest): number[] {
  const reps = new Map<number, number>();
  m.states.ofToken.forEach((state, token) => {
    if (!reps.has(state) || token === m.vocab.bos) reps.set(state, token);
  });
  return [...reps.values()];
}

async function maxErrorOverStates(model: LoadedModel, oracle: ChainOracle): Promise<number> {
  const seq = await model.acquire([]);
  let worst = 0;
  try {
    for (const token of representativeTokens(manifest)) {
      await seq.truncate(0);
      const [logits] = await seq.evaluate([manifest.vocab.bos, token], [1]);
      const p = softmax(logits);
      const exact = oracle.next(token);
      for (let i = 0; i < p.length; i++) worst = Math.max(worst, Math.abs(p[i] - exact[i]));
    }
  } finally {
    seq.release();
  }
  return worst;
}

describe("forged models through node-llama-cpp", () => {
  it("every state's next-token distribution equals the chain's (analytic models)", async () => {
    const model = await load("base", manifest.models["flock-demo"].file);
    expect(await maxErrorOverStates(model, new ChainOracle(manifest, "base"))).toBeLessThan(1e-5);
    const draft = await load("draft", manifest.models["flock-demo-draft"].file);
    expect(await maxErrorOverStates(draft, new ChainOracle(manifest, "draft"))).toBeLessThan(1e-5);
  });

  it("a LoRA adapter turns the base into its domain expert, exactly", async () => {
    const adapter = manifest.adapters["flock-demo-sky"];
    const model = await load("sky", manifest.models["flock-demo"].file, { lora: [{ path: forgedPath(adapter.file), scale: 1 }] });
    const expert = new ChainOracle(manifest, adapter.chain);
    expect(await maxErrorOverStates(model, expert)).toBeLessThan(1e-5);
    // And the expert really differs from the base somewhere.
    const sky = expert.tokenOf(" comet");
    expect(Math.max(...expert.next(sky).map((p, i) => Math.abs(p - new ChainOracle(manifest, "base").next(sky)[i])))).toBeGreaterThan(0.01);
  });

  it("after truncation the KV cache continues exactly like a fresh evaluation (contextual model)", async () => {
    const model = await load("ctx", manifest.models["flock-contextual"].file);
    const oracle = new ChainOracle(manifest, "base");
    const prefix = [manifest.vocab.bos, ...oracle.promptTokens("The sailor ties the")];
    const detour = oracle.promptTokens("A cook mixes");
    const continuation = oracle.promptTokens("She rows");

    const a = await model.acquire([]);
    const b = await model.acquire([]);
    try {
      await a.evaluate([...prefix, ...detour], []);
      await a.truncate(prefix.length);
      expect(a.tokens).toEqual(prefix);
      const [afterRollback] = await a.evaluate(continuation, [continuation.length - 1]);
      const [fresh] = await b.evaluate([...prefix, ...continuation], [prefix.length + continuation.length - 1]);
      const detourChanges = await (async () => {
        await b.truncate(0);
        const [other] = await b.evaluate([...prefix, ...detour, ...continuation], [prefix.length + detour.length + continuation.length - 1]);
        return probabilityGap(other, fresh);
      })();
      // The check can fail: context does change this model's logits...
      expect(detourChanges).toBeGreaterThan(1e-3);
      // ...and the rolled-back cache matches the fresh one.
      expect(probabilityGap(afterRollback, fresh)).toBeLessThan(1e-5);
    } finally {
      a.release();
      b.release();
    }
  });

  it("prefill reuses a cached prefix and gives the same logits as a fresh prefill", async () => {
    const model = await load("ctx2", manifest.models["flock-contextual"].file, { parallel: 1 });
    const oracle = new ChainOracle(manifest, "base");
    const first = [manifest.vocab.bos, ...oracle.promptTokens("The sailor ties the rope")];
    const second = [...first.slice(0, 4), ...oracle.promptTokens("The cook")];
    const seq = await model.acquire(first);
    const cold = await seq.prefill(second);
    seq.release();
    const again = await model.acquire(second);
    expect(again.tokens).toEqual(second); // the pool handed back the sequence holding this prefix
    const warm = await again.prefill(second);
    again.release();
    expect(probabilityGap(warm, cold)).toBeLessThan(1e-5);
  });

  it("renders chats with the GGUF's ChatML template, ready for the assistant's turn", async () => {
    const model = await load("chat", manifest.models["flock-demo"].file);
    const rendered = model.renderChat([
      { role: "system", content: "Be brief." },
      { role: "user", content: "Hello" },
    ]);
    expect(model.chatTemplateName).toBe("ChatML");
    expect(rendered.tokens[0]).toBe(manifest.vocab.bos);
    const text = model.detokenize(rendered.tokens);
    expect(text).toContain("system\nBe brief.");
    expect(model.weights.detokenize(rendered.tokens as never, true)).toMatch(/<\|im_start\|>user\nHello<\|im_end\|>\n<\|im_start\|>assistant\n$/);
    expect(model.isEndOfGeneration(manifest.vocab.eos)).toBe(true);
    expect(model.isEndOfGeneration(manifest.vocab.imEnd) || rendered.stopTokens.includes(manifest.vocab.imEnd)).toBe(true);
  });
});

describe("forge", () => {
  it("is deterministic: the same seed gives the same bytes, another seed other chains", () => {
    const a = mkdtempSync(join(tmpdir(), "forge-a-"));
    const b = mkdtempSync(join(tmpdir(), "forge-b-"));
    try {
      forge({ outDir: a, preset: "demo", seed: 1 });
      forge({ outDir: b, preset: "demo", seed: 2 });
      const digest = (dir: string, f: string) => createHash("sha256").update(readFileSync(join(dir, f))).digest("hex");
      const shared = inject("forgeDir");
      for (const f of readdirSync(a)) expect(digest(a, f), f).toBe(digest(shared, f));
      expect(digest(b, "flock-demo.gguf")).not.toBe(digest(a, "flock-demo.gguf"));
    } finally {
      rmSync(a, { recursive: true, force: true });
      rmSync(b, { recursive: true, force: true });
    }
  });

  it("writes GGUF v3 files with llama metadata and llama.cpp's LoRA adapter keys", async () => {
    const model = await readGgufFileInfo(forgedPath(manifest.models["flock-demo"].file));
    expect(model.version).toBe(3);
    expect(model.metadata.general.architecture).toBe("llama");
    expect(model.metadata.tokenizer.ggml.model).toBe("llama");
    const adapter = await readGgufFileInfo(forgedPath(manifest.adapters["flock-demo-kitchen"].file));
    const meta = adapter.metadata as unknown as { general: { type: string }; adapter: { type: string; lora: { alpha: number } } };
    expect(meta.general.type).toBe("adapter");
    expect(meta.adapter.type).toBe("lora");
    expect(adapter.tensorInfo?.some((t) => t.name === "output.weight.lora_a")).toBe(true);
  });

  it("every domain's held-out text uses that domain's words", () => {
    for (const d of manifest.domains) expect(d.heldOutText.length).toBeGreaterThan(100);
    expect(new Set(manifest.domains.map((d) => d.name)).size).toBe(4);
  });
});
