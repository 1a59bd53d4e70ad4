// Dynamic logit fusion on the forged fusion set, through the engine and through the API:
// the strong base (flock-demo), a weak base (flock-weak), weak domain experts (LoRA adapters
// over flock-weak) and, for reference, the strong domain experts (adapters over flock-demo).
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { inject } from "vitest";
import { logitsAlong, negativeLogLikelihood, scoreFusion } from "../decoding/fusion/score.js";
import { AUTHORS_GRID } from "../decoding/fusion/solver.js";
import type { FusionSettings } from "../decoding/fusion/config.js";
import { Engine } from "../engine/engine.js";
import { readManifest, type Manifest } from "../forge/manifest.js";
import type { LoadedModel } from "../engine/model.js";
import { ModelEntry } from "../pipelines/model-entry.js";
import { expectGreedyStaticFusion } from "./helpers/chain.js";
import { forgedPath, startTestServer, type TestServer } from "./helpers/server.js";

let engine: Engine;
let manifest: Manifest;
let strong: LoadedModel;
let weak: LoadedModel;
const weakExperts: LoadedModel[] = [];
const strongExperts: LoadedModel[] = [];
let domains: string[];

const dynamic: FusionSettings = { mode: "dynamic", alpha: 1, grid: AUTHORS_GRID, supportMargin: null };
const staticOne: FusionSettings = { ...dynamic, mode: "static" };

beforeAll(async () => {
  manifest = readManifest(inject("forgeDir"));
  domains = manifest.domains.map((d) => d.name);
  engine = await Engine.create({ gpu: "off", threads: 1 });
  const load = (id: string, file: string, adapter?: string) =>
    engine.load(ModelEntry.parse({ id, path: forgedPath(file), contextSize: 1024, parallel: 1, lora: adapter ? [{ path: forgedPath(adapter) }] : [] }));
  strong = await load("strong", manifest.models["flock-demo"].file);
  weak = await load("weak", manifest.models["flock-weak"].file);
  for (const d of domains) {
    weakExperts.push(await load(`weak-${d}`, manifest.models["flock-weak"].file, manifest.adapters[`flock-weak-${d}`].file));
    strongExperts.push(await load(`strong-${d}`, manifest.models["flock-demo"].file, manifest.adapters[`flock-demo-${d}`].file));
  }
});
afterAll(() => engine?.[Symbol.asyncDispose]());

function meanNll(logits: Float32Array[], tokens: number[]): number {
  let total = 0;
  for (let pos = 0; pos + 1 < tokens.length; pos++) total += negativeLogLikelihood(logits[pos], tokens[pos + 1]);
  return total / (tokens.length - 1);
}

describe("fusion on forged domains", () => {
  it("closes at least 80% of the NLL gap between the strong base and the strong domain expert, on each domain's held-out text", async () => {
    for (const [i, domain] of manifest.domains.entries()) {
      const tokens = strong.tokenizePrompt(domain.heldOutText);
      const perModel = await logitsAlong([strong, weak, weakExperts[i]], tokens);
      const [expertLogits] = await logitsAlong([strongExperts[i]], tokens);
      const score = scoreFusion(perModel, [domain.name], tokens, dynamic);
      const expert = meanNll(expertLogits, tokens);
      expect(score.fused, domain.name).toBeLessThan(score.strong);
      const closed = (score.strong - score.fused) / (score.strong - expert);
      expect(closed, `${domain.name}: gap closed`).toBeGreaterThanOrEqual(0.8);
    }
  });

  it("on mixed-domain text dynamic α beats static α = 1 with any single expert", async () => {
    const tokens = strong.tokenizePrompt(manifest.mixedText!);
    const perModel = await logitsAlong([strong, weak, ...weakExperts], tokens);
    const dynamicScore = scoreFusion(perModel, domains, tokens, dynamic);
    // Every expert is active somewhere: the choice really is made per token.
    for (const d of domains) expect(dynamicScore.chosen.get(d) ?? 0, d).toBeGreaterThan(0);
    for (const [i, d] of domains.entries()) {
      const single = scoreFusion([perModel[0], perModel[1], perModel[2 + i]], [d], tokens, staticOne);
      expect(dynamicScore.fused, `static ${d}`).toBeLessThan(single.fused);
    }
  });

  it("α = 0 reproduces the strong model exactly", async () => {
    const tokens = strong.tokenizePrompt(manifest.domains[0].heldOutText).slice(0, 40);
    const perModel = await logitsAlong([strong, weak, weakExperts[0]], tokens);
    const zero = scoreFusion(perModel, [domains[0]], tokens, { ...staticOne, alpha: 0 });
    expect(zero.fused).toBe(zero.strong);
  });
});

describe("fused models through the API", () => {
  let t: TestServer;
  beforeAll(async () => {
    const fusionEntry = {
      id: "fused",
      path: forgedPath(manifest.models["flock-demo"].file),
      parallel: 2,
      fusion: {
        base: forgedPath(manifest.models["flock-weak"].file),
        experts: domains.map((d) => ({ name: d, lora: forgedPath(manifest.adapters[`flock-weak-${d}`].file) })),
      },
    };
    const base = { id: "flock-demo", path: forgedPath(manifest.models["flock-demo"].file), parallel: 2 };
    t = await startTestServer({ models: [base, fusionEntry] });
  });
  afterAll(() => t?.close());

  type FusionExtension = { flock?: { fusion: { steps: number; experts: Record<string, number>; mean_alpha: number; tokens?: Array<{ expert: string | null; alpha: number }> } } };

  it("static α with one expert samples from softmax(L_strong + α (L_expert − L_base)), computed from the chains", async () => {
    const alpha = 0.6;
    const res = await t.client.completions.create({
      model: "fused",
      prompt: "The cook",
      max_tokens: 6,
      temperature: 0,
      logprobs: 5,
      flock: { fusion: { mode: "static", alpha, experts: ["kitchen"] } },
    } as OpenAI.CompletionCreateParamsNonStreaming);
    const lp = res.choices[0].logprobs!;
    expect(lp.tokens!.length).toBeGreaterThan(0);
    // Greedy: each token is the fused argmax, and its logprob is the fused one.
    expectGreedyStaticFusion(manifest, lp, alpha);
    const ext = (res as unknown as FusionExtension).flock!.fusion;
    expect(ext.experts).toEqual({ kitchen: lp.tokens!.length + (res.choices[0].finish_reason === "stop" ? 1 : 0) });
    expect(ext.mean_alpha).toBeCloseTo(alpha, 10);
  });

  it("reports the chosen experts and α, per token on request, streamed too", async () => {
    const res = await t.client.chat.completions.create({
      model: "fused",
      messages: [{ role: "user", content: "Tell me about the sea." }],
      max_tokens: 20,
      seed: 4,
      flock: { fusion: { detail: true } },
    } as OpenAI.ChatCompletionCreateParamsNonStreaming);
    const ext = (res as unknown as FusionExtension).flock!.fusion;
    expect(ext.steps).toBe(res.usage!.completion_tokens);
    expect(ext.tokens).toHaveLength(ext.steps);
    expect(Object.values(ext.experts).reduce((a, b) => a + b, 0)).toBe(ext.steps);
    for (const tok of ext.tokens!) {
      expect(tok.alpha).toBeGreaterThanOrEqual(0);
      expect(tok.alpha).toBeLessThanOrEqual(2);
      if (tok.expert !== null) expect(domains).toContain(tok.expert);
    }
    const stream = await t.client.chat.completions.create({
      model: "fused",
      messages: [{ role: "user", content: "Again" }],
      max_tokens: 8,
      stream: true,
    });
    let last: FusionExtension | undefined;
    for await (const chunk of stream) {
      if (chunk.choices[0]?.finish_reason) last = chunk as unknown as FusionExtension;
      else expect((chunk as unknown as FusionExtension).flock).toBeUndefined();
    }
    expect(last!.flock!.fusion.steps).toBeGreaterThan(0);
    expect(last!.flock!.fusion.tokens).toBeUndefined();

    // With detail, each chunk carries its tokens' choices as they are made; the final chunk all of them.
    const detailed = await t.client.chat.completions.create({
      model: "fused",
      messages: [{ role: "user", content: "Again" }],
      max_tokens: 8,
      stream: true,
      flock: { fusion: { detail: true } },
    } as OpenAI.ChatCompletionCreateParamsStreaming);
    const perChunk: Array<{ expert: string | null; alpha: number }> = [];
    let final: FusionExtension | undefined;
    for await (const chunk of detailed) {
      if (chunk.choices[0]?.finish_reason) final = chunk as unknown as FusionExtension;
      else perChunk.push(...((chunk as unknown as FusionExtension).flock?.fusion.tokens ?? []));
    }
    expect(perChunk).toEqual(final!.flock!.fusion.tokens);
    expect(perChunk).toHaveLength(final!.flock!.fusion.steps);
  });

  it("rejects fusion settings for a model without fusion, and unknown experts", async () => {
    await expect(
      t.client.completions.create({ model: "flock-demo", prompt: "x", flock: { fusion: { alpha: 1 } } } as OpenAI.CompletionCreateParamsNonStreaming),
    ).rejects.toMatchObject({ status: 400, param: "flock.fusion" });
    await expect(
      t.client.completions.create({ model: "fused", prompt: "x", flock: { fusion: { experts: ["physics"] } } } as OpenAI.CompletionCreateParamsNonStreaming),
    ).rejects.toMatchObject({ status: 400, param: "flock.fusion.experts" });
  });
});
