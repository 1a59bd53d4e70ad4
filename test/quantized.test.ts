// Quantized bases through the server: the demo's chain models forged with q8_0 and with q4_0
// block matrices (the q4_0 ones live in llama.cpp's CPU_REPACK buffer type on AVX2 machines),
// served plain, with a LoRA adapter, speculatively, fused, and routed over a random quantized
// llama whose every matrix the experts adapt. The chain models' block outputs are exactly zero
// in any storage type, so their distributions stay the chains' own: the quantized kernels and
// buffer types are exercised and the results can still be checked exactly — but, their block
// matrices being all zero, a wrong quantized dot product would go unseen there. The arithmetic
// is checked on the random model: the routed case against the ggml-cpu oracle through the server
// here, and at engine level by test/oracle.test.ts (q8_0, with and without LoRA) and
// test/native-routed-lora.test.ts (q8_0, and q4_0 in CPU_REPACK, routed).
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { BlockWeights } from "../forge/compile.js";
import type { Manifest } from "../forge/manifest.js";
import { forge } from "../forge/presets.js";
import { matrices, RANDOM_SHAPE, writeRandomLlama, writeRandomLora } from "../forge/random.js";
import { TensorType } from "../engine/gguf/writer.js";
import { ServerConfig } from "../server/config.js";
import { createLogger } from "../server/logger.js";
import { type FlockServer, startServer } from "../server/server.js";
import { ChainOracle, expectGreedyStaticFusion } from "./helpers/chain.js";
import { buildVocab, languagePieces, SPACE } from "../forge/vocab.js";
import { type AppliedLora, LlamaOracle, loadLoraAdapter, type RoutedLora, softmax } from "./oracle/llama.js";
import { baseModuleShapes } from "../engine/adapter-check.js";
import { loadExpert } from "../experts/library.js";

const required = process.env.FLOCK_REQUIRE_NATIVE === "1";

describe.each([
  ["q8_0", TensorType.Q8_0, "Q8_0"],
  ["q4_0", TensorType.Q4_0, "Q4_0"],
] as const)("%s bases through the server", (blockWeights: BlockWeights, tensorType, ggmlName) => {
  let dir: string;
  let manifest: Manifest;
  let server: FlockServer;
  let client: OpenAI;
  const lines: Array<Record<string, unknown>> = [];
  const file = (name: string) => join(dir, name);

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), `flock-${blockWeights}-`));
    manifest = forge({ outDir: dir, preset: "demo", seed: 1, blockWeights });
    const shape = { ...RANDOM_SHAPE, blockWeights: tensorType };
    writeRandomLlama(file("random.gguf"), shape, 5);
    [0, 1, 2].forEach((i) => writeRandomLora(file(`expert-${i}.gguf`), matrices(shape), 4, 8, 50 + i));
    const demo = file(manifest.models["flock-demo"].file);
    const config = ServerConfig.parse({
      port: 0,
      gpu: "off",
      threads: 1,
      logLevel: "silent",
      cacheDir: file("state"),
      models: [
        { id: "plain", path: demo, parallel: 2 },
        { id: "kitchen", path: demo, lora: [{ path: file(manifest.adapters["flock-demo-kitchen"].file) }], parallel: 1 },
        { id: "spec", path: demo, parallel: 1, speculative: { draft: file(manifest.models["flock-demo-draft"].file), policy: "fixed", k: 4 } },
        {
          id: "spec-kitchen",
          path: demo,
          lora: [{ path: file(manifest.adapters["flock-demo-kitchen"].file) }],
          parallel: 1,
          speculative: { draft: file(manifest.models["flock-demo-draft"].file), policy: "fixed", k: 4 },
        },
        {
          id: "fused",
          path: demo,
          parallel: 1,
          fusion: { base: file(manifest.models["flock-weak"].file), experts: [{ name: "kitchen", lora: file(manifest.adapters["flock-weak-kitchen"].file) }] },
        },
        { id: "random", path: file("random.gguf"), parallel: 1, experts: { library: [0, 1, 2].map((i) => ({ name: `e${i}`, lora: file(`expert-${i}.gguf`) })), methods: ["arrow"] } },
      ],
    });
    server = await startServer(config, createLogger("info", { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) }));
    await server.ready;
    client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0 });
  });
  afterAll(async () => {
    await server?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("the startup weight check ran the type (and remembers it passed)", (ctx) => {
    const cache = file("state/weight-check.json");
    if (!required && !existsSync(cache)) ctx.skip(); // node-llama-cpp's prebuilt binary has no check
    const passed = Object.values(JSON.parse(readFileSync(cache, "utf8")) as Record<string, string[]>).flat();
    expect(passed).toContain(ggmlName);
  });

  it("the startup log names the CPU features compiled in and the buffer types each model's weights are in", () => {
    const ready = lines.find((l) => l.msg === "engine ready") as { cpu: { features: string[]; extraBufferTypes: string[] } };
    expect(ready.cpu.features.length).toBeGreaterThan(0);
    const loaded = (id: string) => (lines.find((l) => l.msg === "model loaded" && l.model === id) as { weightBuffers?: Record<string, number> }).weightBuffers;
    const plain = loaded("plain")!;
    // Every model holds some weights in a plain CPU buffer (token embeddings stay there).
    expect(Object.keys(plain).some((b) => /^CPU(_Mapped)?$/.test(b)), JSON.stringify(plain)).toBe(true);
    for (const size of Object.values(plain)) expect(size).toBeGreaterThan(0);
    expect(loaded("random")).toBeDefined();
    // q4_0 matrices are repacked where the build has the repack kernels for this CPU (AVX2, or
    // NEON), unless AMX takes them first.
    const extra = ready.cpu.extraBufferTypes;
    const repacks = extra.includes("CPU_REPACK") && ready.cpu.features.some((f) => /^(AVX2|NEON)$/.test(f));
    if (blockWeights === "q4_0" && repacks) expect(Object.keys(plain)).toContain(extra.includes("AMX") ? "AMX" : "CPU_REPACK");
  });

  it("plain, LoRA, speculative and fused greedy completions follow their chains' argmax paths", async () => {
    const base = new ChainOracle(manifest, "base");
    const start = base.tokenOf(" sailor");
    const expected = base.greedyPath(start, 8).filter((t) => t !== base.eos).map((t) => base.text(t)).join("");
    for (const model of ["plain", "spec"]) {
      const res = await client.completions.create({ model, prompt: "The sailor", max_tokens: 8, temperature: 0 });
      expect(expected.startsWith(res.choices[0].text), model).toBe(true);
      expect(res.choices[0].text.length, model).toBeGreaterThan(0);
    }
    const kitchen = new ChainOracle(manifest, "kitchen");
    const adapted = kitchen.greedyPath(kitchen.tokenOf(" cook"), 6).filter((t) => t !== kitchen.eos).map((t) => kitchen.text(t)).join("");
    const res = await client.completions.create({ model: "kitchen", prompt: "The cook", max_tokens: 6, temperature: 0 });
    expect(adapted.startsWith(res.choices[0].text) && res.choices[0].text.length > 0).toBe(true);
  });

  it("speculative decoding with a LoRA on the target follows the adapted chain, not the base's", async () => {
    const kitchen = new ChainOracle(manifest, "kitchen");
    const base = new ChainOracle(manifest, "base");
    const path = (chain: ChainOracle) => chain.greedyPath(chain.tokenOf(" cook"), 8).filter((t) => t !== chain.eos).map((t) => chain.text(t)).join("");
    const adapted = path(kitchen);
    // The prompt tells the two apart: an adapter left off (or applied to the draft only) fails.
    expect(adapted.slice(0, 12)).not.toBe(path(base).slice(0, 12));
    type Spec = { flock?: { speculative?: Record<string, unknown> } };
    const res = (await client.completions.create({ model: "spec-kitchen", prompt: "The cook", max_tokens: 8, temperature: 0 })) as OpenAI.Completion & Spec;
    expect(res.choices[0].text.length).toBeGreaterThan(0);
    expect(adapted.startsWith(res.choices[0].text), res.choices[0].text).toBe(true);
    // And it was decoded speculatively: the draft proposed tokens the adapted target checked.
    expect(res.flock?.speculative?.drafted_tokens).toBeGreaterThan(0);
  });

  it("fused: static α with one expert is greedy on softmax(L_strong + α (L_expert − L_base)) of the chains, logprobs too", async () => {
    const alpha = 0.6;
    const res = await client.completions.create({
      model: "fused",
      prompt: "The cook",
      max_tokens: 6,
      temperature: 0,
      logprobs: 5,
      flock: { fusion: { mode: "static", alpha, experts: ["kitchen"] } },
    } as OpenAI.CompletionCreateParamsNonStreaming);
    const lp = res.choices[0].logprobs!;
    expect(lp.tokens!.length).toBeGreaterThan(1);
    // Fusion moved something: the fused distribution is not the strong model's own.
    expect(expectGreedyStaticFusion(manifest, lp, alpha)).toBe(true);
  });

  it("the first position's logprobs equal the chain's to 1e-3", async () => {
    const base = new ChainOracle(manifest, "base");
    const res = await client.completions.create({ model: "plain", prompt: "The sailor", max_tokens: 1, temperature: 0, logprobs: 5 });
    const top = res.choices[0].logprobs!.top_logprobs![0];
    const p = base.next(base.tokenOf(" sailor"));
    for (const [text, logprob] of Object.entries(top)) expect(Math.abs(Math.exp(logprob) - p[base.tokenOf(text)])).toBeLessThan(1e-3);
  });

  it("routed LoRA (Arrow, top-2) over the quantized base: the first position's top-20 equal the ggml-cpu oracle's routed forward", async () => {
    type Routed = { flock?: { routing?: { experts: Record<string, unknown> } } };
    const path = file("random.gguf");
    const prompt = [1, 30, 200, 77, 260, 45, 133, 301];
    const ask = async (model: string) =>
      (await client.completions.create({ model, prompt, max_tokens: 1, temperature: 0, logprobs: 20 })) as OpenAI.Completion & Routed;
    const routed = await ask("random+arrow");
    expect(Object.keys(routed.flock?.routing?.experts ?? {}).length).toBeGreaterThan(1);
    // Top-20 by text, back to token ids; texts several tokens spell (control and byte tokens,
    // single characters) are left out.
    const idsOf = new Map<string, number[]>();
    buildVocab(languagePieces()).tokens.forEach((t, id) => {
      const text = /^<.*>$/.test(t) ? "" : t.replaceAll(SPACE, " ");
      idsOf.set(text, [...(idsOf.get(text) ?? []), id]);
    });
    const served = Object.entries(routed.choices[0].logprobs!.top_logprobs![0]).flatMap(([text, lp]) =>
      text.length > 1 && idsOf.get(text)?.length === 1 ? [[idsOf.get(text)![0], lp] as const] : [],
    );
    expect(served.length).toBeGreaterThanOrEqual(8);

    // The oracle, given the same adapters and the Arrow gates flock derives from them, with the
    // configured top-k 2 and temperature 1 (the q8_0 / q4_0 kernels, the LoRA products and the
    // routing all count).
    const shapes = await baseModuleShapes(path);
    const experts = await Promise.all([0, 1, 2].map((i) => loadExpert({ name: `e${i}`, lora: file(`expert-${i}.gguf`), scale: 1 }, shapes)));
    const adapters = await Promise.all([0, 1, 2].map(async (i) => ({ ...(await loadLoraAdapter(file(`expert-${i}.gguf`))), scale: 1 })));
    const gates = new Map(experts[0].modules.map((m) => [m, experts.map((e) => e.arrow.get(m)!)]));
    const oracle = await LlamaOracle.load(path, { numerics: "ggml-cpu" });
    const last = (loras: AppliedLora[], routedLora?: RoutedLora) => softmax(oracle.forward(prompt, loras, routedLora).logits.at(-1)!);
    const gap = (p: Float64Array) => Math.max(...served.map(([id, lp]) => Math.abs(lp - Math.log(p[id]))));
    // Measured: ≤ 0.027 in log-probability (the server's context uses flash attention, the
    // oracle models llama.cpp without it: the plain model alone is 0.017 off); the wrong
    // computations below are ≥ 0.27 off.
    expect(gap(last([], { adapters, gates, method: "arrow", topK: 2, temperature: 1 }))).toBeLessThan(0.05);
    expect(gap(last([]))).toBeGreaterThan(0.2); // no adapter
    expect(gap(last(adapters))).toBeGreaterThan(0.2); // every expert, unrouted
    expect(gap(last([], { adapters, gates, method: "arrow", topK: 1, temperature: 1 }))).toBeGreaterThan(0.2); // top-1
  });
});
