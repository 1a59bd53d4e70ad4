// Quantized bases through the server: the demo's chain models forged with q8_0 and with q4_0
// block matrices (the q4_0 ones live in llama.cpp's CPU_REPACK buffer type on AVX2 machines),
// served plain, with a LoRA adapter, speculatively, fused, and routed over a random quantized
// llama whose every matrix the experts adapt. The chain models' block outputs are exactly zero
// in any storage type, so their distributions stay the chains' own: the quantized kernels and
// buffer types are exercised and the results can still be checked exactly.
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
import { ChainOracle } from "./helpers/chain.js";

const required = process.env.FLOCK_REQUIRE_NATIVE === "1";

describe.each([
  ["q8_0", TensorType.Q8_0, "Q8_0"],
  ["q4_0", TensorType.Q4_0, "Q4_0"],
] as const)("%s bases through the server", (blockWeights: BlockWeights, tensorType, ggmlName) => {
  let dir: string;
  let manifest: Manifest;
  let server: FlockServer;
  let client: OpenAI;
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
          id: "fused",
          path: demo,
          parallel: 1,
          fusion: { base: file(manifest.models["flock-weak"].file), experts: [{ name: "kitchen", lora: file(manifest.adapters["flock-weak-kitchen"].file) }] },
        },
        { id: "random", path: file("random.gguf"), parallel: 1, experts: { library: [0, 1, 2].map((i) => ({ name: `e${i}`, lora: file(`expert-${i}.gguf`) })), methods: ["arrow"] } },
      ],
    });
    server = await startServer(config, createLogger("silent"));
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
    const fused = await client.completions.create({ model: "fused", prompt: "The cook", max_tokens: 6, temperature: 0 });
    expect(fused.choices[0].text.length).toBeGreaterThan(0);
  });

  it("the first position's logprobs equal the chain's to 1e-3", async () => {
    const base = new ChainOracle(manifest, "base");
    const res = await client.completions.create({ model: "plain", prompt: "The sailor", max_tokens: 1, temperature: 0, logprobs: 5 });
    const top = res.choices[0].logprobs!.top_logprobs![0];
    const p = base.next(base.tokenOf(" sailor"));
    for (const [text, logprob] of Object.entries(top)) expect(Math.abs(Math.exp(logprob) - p[base.tokenOf(text)])).toBeLessThan(1e-3);
  });

  it("routed LoRA over the quantized base serves, and routing changes the output", async () => {
    type Routed = { flock?: { routing?: { experts: Record<string, number> } } };
    const routed = (await client.completions.create({ model: "random+arrow", prompt: "The sailor ties the", max_tokens: 4, temperature: 0, logprobs: 1 })) as OpenAI.Completion & Routed;
    const usage = routed.flock?.routing?.experts ?? {};
    expect(Object.keys(usage).length).toBeGreaterThan(1);
    const plain = await client.completions.create({ model: "random", prompt: "The sailor ties the", max_tokens: 4, temperature: 0, logprobs: 1 });
    const first = (r: OpenAI.Completion) => Object.values(r.choices[0].logprobs!.top_logprobs![0])[0];
    expect(Math.abs(first(routed) - first(plain))).toBeGreaterThan(1e-4);
  });
});
