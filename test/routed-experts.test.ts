// Routed LoRA experts (PHATGOOSE, Arrow) on the forged routing set: a base whose residual
// tracks the text's domain, four domain LoRAs over it with PHATGOOSE gate files. Quality
// against the baselines through the engine; the API, the extension, metrics and the admin
// endpoints through a real server and the official client.
import { execFile } from "node:child_process";
import { copyFileSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { negativeLogLikelihood } from "../decoding/fusion/score.js";
import type { RoutingOverrides } from "../experts/config.js";
import { Engine } from "../engine/engine.js";
import { type Manifest, readManifest } from "../forge/manifest.js";
import { ModelEntry } from "../pipelines/model-entry.js";
import { writeSafetensors } from "../engine/safetensors.js";
import { baseModuleShapes } from "../engine/adapter-check.js";
import { loadExpert } from "../experts/library.js";
import { readGateFile, writeGateFile } from "../experts/gates.js";
import { loadPipelines } from "../pipelines/load.js";
import type { RoutedPipeline } from "../pipelines/pipeline.js";
import { scoreRouted } from "../experts/routed.js";
import { matrices, RANDOM_SHAPE, writeRandomLlama, writeRandomLora } from "../forge/random.js";
import { forgedPath, startTestServer, type TestServer } from "./helpers/server.js";

const required = process.env.FLOCK_REQUIRE_NATIVE === "1";
let manifest: Manifest;
let phatgoose: RoutedPipeline;
let arrow: RoutedPipeline;
let domains: string[];
// Routed LoRA needs flock's native build; with the prebuilt binary only the baselines run.
const engine = await Engine.create({ gpu: "off", threads: 1 });
const native = engine.capabilities.routedLora;

const expertsOf = (m: Manifest) =>
  Object.entries(m.adapters)
    .filter(([, a]) => a.base === "flock-routing-base")
    .map(([, a]) => ({ name: a.domain, lora: forgedPath(a.file), scale: 1, gates: forgedPath(a.gates!) }));

beforeAll(async () => {
  manifest = readManifest(inject("forgeDir"));
  domains = manifest.domains.map((d) => d.name);
  if (required) expect(native).toBe(true);
  const entry = ModelEntry.parse({
    id: "routing",
    path: forgedPath(manifest.models["flock-routing-base"].file),
    contextSize: 2048,
    parallel: 1,
    experts: { library: expertsOf(manifest), maxContexts: 16 },
  });
  const pipelines = await loadPipelines(engine, entry, join(inject("forgeDir"), "state"));
  expect(pipelines.map((p) => p.id)).toEqual(["routing", "routing+phatgoose", "routing+arrow"]);
  [phatgoose, arrow] = pipelines.slice(1) as RoutedPipeline[];
});
afterAll(() => engine?.[Symbol.asyncDispose]());

/** Mean NLL of tokens[1..] served the way `overrides` asks. */
async function meanNll(pipeline: RoutedPipeline, overrides: RoutingOverrides, tokens: number[]): Promise<number> {
  const { logits } = await scoreRouted(pipeline, overrides, tokens);
  let total = 0;
  for (let pos = 0; pos + 1 < tokens.length; pos++) total += negativeLogLikelihood(logits[pos], tokens[pos + 1]);
  return total / (tokens.length - 1);
}

describe.runIf(native || required)("routing quality on forged domains", () => {
  it("on mixed documents, token-wise PHATGOOSE routing has lower NLL than every single expert, the uniform merge and retrieval", async () => {
    const tokens = phatgoose.model.tokenizePrompt(manifest.mixedText!).slice(0, 600);
    const routed = await meanNll(phatgoose, {}, tokens);
    const baselines: Record<string, number> = {
      merge: await meanNll(phatgoose, { mode: "merge" }, tokens),
      retrieval: await meanNll(phatgoose, { mode: "retrieval" }, tokens),
    };
    for (const d of domains) baselines[`single ${d}`] = await meanNll(phatgoose, { mode: "single", expert: d }, tokens);
    for (const [name, nll] of Object.entries(baselines)) expect(routed, `routed vs ${name}`).toBeLessThan(nll);
    // And by a margin that is not noise: at least 0.02 nats per token below the best baseline.
    expect(routed).toBeLessThan(Math.min(...Object.values(baselines)) - 0.02);
  });

  it("on domain-pure text, the routed modules give that domain's expert the most weight on at least 90% of tokens", async () => {
    for (const d of manifest.domains) {
      const tokens = phatgoose.model.tokenizePrompt(d.heldOutText).slice(0, 400);
      const { routing } = await scoreRouted(phatgoose, {}, tokens);
      expect(routing.every((r) => r !== null)).toBe(true);
      const own = routing.filter((r) => r!.experts[0].expert === d.name).length;
      expect(own / tokens.length, d.name).toBeGreaterThanOrEqual(0.9);
      // Top-2 by default: two experts per token, weights summing to 1.
      for (const r of routing) {
        expect(r!.experts).toHaveLength(2);
        expect(r!.experts[0].weight + r!.experts[1].weight).toBeCloseTo(1, 6);
      }
    }
  });

  it("a subset of experts routes among that subset only; top_k 1 gives each token one expert", async () => {
    const tokens = phatgoose.model.tokenizePrompt(manifest.mixedText!).slice(0, 200);
    const subset = domains.slice(0, 2);
    const { routing } = await scoreRouted(phatgoose, { experts: subset, topK: 1 }, tokens);
    for (const r of routing) {
      expect(r!.experts).toHaveLength(1);
      expect(subset).toContain(r!.experts[0].expert);
      expect(r!.experts[0].weight).toBe(1);
    }
  });

  it("Arrow gates are derived from each adapter when there is no gate file", async () => {
    const tokens = phatgoose.model.tokenizePrompt(manifest.mixedText!).slice(0, 100);
    const { routing } = await scoreRouted(arrow, {}, tokens);
    expect(routing.every((r) => r !== null && r.experts.length === 2)).toBe(true);
    const expert = arrow.library.list()[0];
    const gate = expert.arrow.get("output.weight")!;
    expect(Math.hypot(...gate)).toBeCloseTo(1, 4);
  });
});

describe("expert validation", () => {
  let dir: string;
  let shapes: Awaited<ReturnType<typeof baseModuleShapes>>;
  let good: ReturnType<typeof expertsOf>[number];
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "flock-experts-"));
    shapes = await baseModuleShapes(forgedPath(manifest.models["flock-routing-base"].file));
    good = expertsOf(manifest)[0];
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  const width = () => shapes.modules.get("output.weight")![0];

  it("accepts the forged expert, with PHATGOOSE gates from its file and Arrow gates from the adapter", async () => {
    const expert = await loadExpert(good, shapes);
    expect(expert.modules).toEqual(["output.weight"]);
    expect(expert.phatgoose!.get("output.weight")!.length).toBe(width());
    expect(expert.arrow.get("output.weight")!.length).toBe(width());
  });

  it("rejects a gate of the wrong width, naming the module and both widths", async () => {
    const gates = join(dir, "narrow.gates.gguf");
    writeGateFile(gates, [{ module: "output.weight", gate: new Float32Array(width() - 3) }]);
    await expect(loadExpert({ ...good, gates }, shapes)).rejects.toThrow(`the gate for output.weight has ${width() - 3} values; the module's input has ${width()}`);
  });

  it("rejects a gate file that misses a module the adapter adapts", async () => {
    const gates = join(dir, "other.gates.gguf");
    writeGateFile(gates, [{ module: "blk.0.attn_q.weight", gate: new Float32Array(width()) }]);
    await expect(loadExpert({ ...good, gates }, shapes)).rejects.toThrow("the gate file has no gate for output.weight");
  });

  it("rejects NaN and infinite gates", async () => {
    for (const bad of [Number.NaN, Number.POSITIVE_INFINITY]) {
      const gate = new Float32Array(width()).fill(0.1);
      gate[5] = bad;
      const gates = join(dir, "nan.gates.safetensors");
      writeSafetensors(gates, [{ name: "lm_head.gate", shape: [width()], data: gate }]);
      await expect(loadExpert({ ...good, gates }, shapes)).rejects.toThrow("the gate for output.weight is not finite");
    }
  });

  it("rejects an adapter made for another base, and a file that is not a LoRA adapter", async () => {
    const foreign = forgedPath(manifest.adapters["flock-demo-kitchen"].file);
    await expect(loadExpert({ name: "foreign", lora: foreign, scale: 1 }, shapes)).rejects.toThrow(/expert foreign: output\.weight has shape .* \(an adapter for another base\?\)/);
    await expect(loadExpert({ name: "model", lora: forgedPath(manifest.models["flock-demo"].file), scale: 1 }, shapes)).rejects.toThrow("is not a LoRA adapter");
    await expect(loadExpert({ name: "missing", lora: join(dir, "nope.gguf"), scale: 1 }, shapes)).rejects.toThrow("expert missing: cannot read the adapter");
  });

  it("reads Hugging Face gate names from safetensors (the PHATGOOSE authors' parameter names)", async () => {
    const gates = join(dir, "hf.safetensors");
    const v = Float32Array.from({ length: 8 }, (_, i) => i);
    writeSafetensors(gates, [
      { name: "model.layers.3.self_attn.q_proj.gate", shape: [8], data: v },
      { name: "base_model.model.model.layers.0.mlp.down_proj.gate", shape: [8], data: v },
      { name: "lm_head.gate", shape: [8], data: v },
    ]);
    expect([...(await readGateFile(gates)).keys()].sort()).toEqual(["blk.0.ffn_down.weight", "blk.3.attn_q.weight", "output.weight"]);
  });
});

describe.runIf(native || required)("npm run fit:gates (average-activation gates)", () => {
  const root = join(import.meta.dirname, "..");
  const fitGates = (args: string[]) =>
    new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
      execFile(join(root, "node_modules/.bin/tsx"), ["tools/fit-gates.ts", ...args, "--threads", "1"], { cwd: root }, (err, stdout, stderr) =>
        resolve({ code: err ? Number(err.code ?? 1) : 0, stdout, stderr }),
      );
    });
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), "flock-fit-gates-"));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("fits an expert's gate from its domain text: the gate's largest domain coordinate is that domain's", async () => {
    const d = manifest.domains[1];
    const expert = expertsOf(manifest).find((e) => e.name === d.name)!;
    const text = join(dir, `${d.name}.txt`);
    writeFileSync(text, d.heldOutText);
    const out = join(dir, `${d.name}.gates.safetensors`);
    const run = await fitGates(["--base", forgedPath(manifest.models["flock-routing-base"].file), "--lora", expert.lora, "--text", text, "--out", out]);
    expect(run.stderr).toBe("");
    expect(run.code).toBe(0);
    expect(run.stdout).toMatch(/average-activation gates for output\.weight from \d+ tokens/);
    const shapes = await baseModuleShapes(forgedPath(manifest.models["flock-routing-base"].file));
    const fitted = (await loadExpert({ ...expert, gates: out }, shapes)).phatgoose!.get("output.weight")!;
    // The forged gates are one-hot on each domain's residual dimension.
    const domainDims = await Promise.all(
      expertsOf(manifest).map(async (e) => (await readGateFile(e.gates)).get("output.weight")!.findIndex((x) => x === 1)),
    );
    const own = domainDims[manifest.domains.indexOf(d)];
    for (const dim of domainDims) if (dim !== own) expect(fitted[own]).toBeGreaterThan(fitted[dim]);
  });

  it("refuses adapters of modules whose inputs it cannot observe, naming them", async () => {
    const model = join(dir, "random.gguf");
    writeRandomLlama(model, RANDOM_SHAPE, 3);
    const lora = join(dir, "attn.gguf");
    writeRandomLora(lora, matrices(RANDOM_SHAPE).slice(0, 2), 4, 4, 9);
    const text = join(dir, "t.txt");
    writeFileSync(text, "hello");
    const run = await fitGates(["--base", model, "--lora", lora, "--text", text, "--out", join(dir, "x.gguf")]);
    expect(run.code).toBe(2);
    expect(run.stderr).toContain("average-activation gates can be fitted for output.weight only");
    expect(run.stderr).toContain(matrices(RANDOM_SHAPE)[0].name);
  });
});

describe("routed models through the API", () => {
  let t: TestServer;
  let dir: string;
  let client: OpenAI;
  const admin = (method: string, path: string, body?: object, key = "admin-secret") =>
    fetch(`${t.url}${path}`, {
      method,
      headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
      body: body ? JSON.stringify(body) : undefined,
    });

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "flock-admin-experts-"));
    const m = readManifest(inject("forgeDir"));
    const experts = expertsOf(m);
    // A configured expert with a broken gate file: left out at startup, the rest serve.
    const broken = join(dir, "broken.gates.gguf");
    writeGateFile(broken, [{ module: "output.weight", gate: new Float32Array(7) }]);
    t = await startTestServer({
      auth: { apiKeys: [], adminKey: "admin-secret" },
      adminDirs: [inject("forgeDir"), dir],
      models: [
        { id: "flock-demo", path: forgedPath(m.models["flock-demo"].file), parallel: 2 },
        {
          id: "routing",
          path: forgedPath(m.models["flock-routing-base"].file),
          parallel: 2,
          experts: { library: [...experts.slice(0, 3), { name: "broken", lora: experts[3].lora, gates: broken }] },
        },
      ],
    });
    client = new OpenAI({ baseURL: `${t.url}/v1`, apiKey: "unused", maxRetries: 0 });
  });
  afterAll(async () => {
    await t?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const ask = (model: string, routing?: object, extra: object = {}) =>
    client.chat.completions.create({
      model,
      messages: [{ role: "user", content: "the cook mixes the soup" }],
      max_tokens: 12,
      temperature: 0,
      ...extra,
      ...(routing ? { flock: { routing } } : {}),
    } as OpenAI.ChatCompletionCreateParamsNonStreaming) as Promise<OpenAI.ChatCompletion & { flock?: { routing?: RoutingReport } }>;

  interface RoutingReport {
    mode: string;
    method: string;
    tokens_reported: number;
    experts: Record<string, { tokens: number; share: number }>;
    tokens?: Array<{ experts: Array<{ expert: string; weight: number }> } | null>;
  }

  it("lists the base and its routed ids", async () => {
    const ids = (await client.models.list()).data.map((m) => m.id);
    expect(ids).toEqual(expect.arrayContaining(["routing", "routing+phatgoose", "routing+arrow"]));
  });

  it.runIf(native || required)("a routed completion reports expert usage, per token on request, and counts it in /metrics", async () => {
    const res = await ask("routing+phatgoose", { detail: true });
    const routing = res.flock!.routing!;
    expect(routing).toMatchObject({ mode: "routed", method: "phatgoose" });
    const tokens = res.usage!.completion_tokens;
    expect(routing.tokens).toHaveLength(tokens);
    expect(routing.tokens_reported).toBe(tokens);
    const shares = Object.values(routing.experts).reduce((a, e) => a + e.share, 0);
    expect(shares).toBeCloseTo(1, 6);
    for (const name of Object.keys(routing.experts)) expect(["kitchen", "harbor", "sky", "garden"].slice(0, 3)).toContain(name);
    const metrics = await (await fetch(`${t.url}/metrics`)).text();
    const counted = [...metrics.matchAll(/^flock_routed_tokens_total\{model_name="routing\+phatgoose",expert="([^"]+)"\} (\d+)/gm)];
    expect(counted.reduce((a, m) => a + Number(m[2]), 0)).toBeGreaterThanOrEqual(tokens);
    // Without detail: the summary only.
    expect((await ask("routing+phatgoose")).flock!.routing!.tokens).toBeUndefined();
  });

  it.runIf(native || required)("streams carry the routing summary on the final chunk", async () => {
    const stream = await client.chat.completions.create({
      model: "routing+arrow",
      messages: [{ role: "user", content: "the ship" }],
      max_tokens: 8,
      stream: true,
      flock: { routing: { top_k: 1, detail: true } },
    } as OpenAI.ChatCompletionCreateParamsStreaming);
    let last: { flock?: { routing?: RoutingReport } } | undefined;
    for await (const chunk of stream) if (chunk.choices[0]?.finish_reason) last = chunk as typeof last;
    expect(last?.flock?.routing?.method).toBe("arrow");
    for (const token of last!.flock!.routing!.tokens!) expect(token!.experts).toHaveLength(1);
  });

  it("baselines: one adapter, the uniform merge, retrieval", async () => {
    const single = await ask("routing+phatgoose", { mode: "single", expert: "harbor" });
    expect(single.flock!.routing!.experts).toEqual({ harbor: { tokens: single.usage!.completion_tokens, share: 1 } });
    const merge = await ask("routing+phatgoose", { mode: "merge" });
    expect(Object.keys(merge.flock!.routing!.experts).sort()).toEqual(["harbor", "kitchen", "sky"]);
    for (const e of Object.values(merge.flock!.routing!.experts)) expect(e.share).toBeCloseTo(1 / 3, 6);
    if (native || required) {
      const retrieval = await ask("routing+phatgoose", { mode: "retrieval" });
      expect(Object.keys(retrieval.flock!.routing!.experts)).toHaveLength(1);
    }
  });

  it("bad routing requests are 400s that name the parameter", async () => {
    await expect(ask("flock-demo", { mode: "merge" })).rejects.toMatchObject({ status: 400, param: "flock.routing" });
    await expect(ask("routing+phatgoose", { experts: ["kitchen", "nope"] })).rejects.toMatchObject({ status: 400, param: "flock.routing.experts" });
    await expect(ask("routing+phatgoose", { mode: "single" })).rejects.toMatchObject({ status: 400, param: "flock.routing.expert" });
    await expect(ask("routing+phatgoose", { top_k: 0 })).rejects.toMatchObject({ status: 400, param: "flock.routing.top_k" });
    await expect(ask("routing+phatgoose", { experts: ["broken"] })).rejects.toMatchObject({ status: 400 });
  });

  it("the expert that failed validation at startup is listed with its reason; the others serve", async () => {
    const res = await admin("GET", "/admin/models/routing/experts");
    expect(res.status).toBe(200);
    const body = (await res.json()) as { experts: Array<{ name: string; methods: string[] }>; failed: Array<{ name: string; error: string }>; routed_models: string[] };
    expect(body.experts.map((e) => e.name)).toEqual(["kitchen", "harbor", "sky"]);
    expect(body.routed_models).toEqual(["routing+phatgoose", "routing+arrow"]);
    expect(body.failed).toEqual([{ name: "broken", error: expect.stringContaining("the gate for output.weight has 7 values") }]);
  });

  it("admin endpoints add and remove experts while serving; bad experts are 400s that leave the server serving", async () => {
    const m = readManifest(inject("forgeDir"));
    const garden = expertsOf(m)[3];
    // Without the admin key: refused.
    expect((await admin("POST", "/admin/models/routing/experts", garden, "wrong")).status).toBe(401);

    // Bad gate files and a foreign adapter: clear 400s.
    const nan = join(dir, "nan.gates.gguf");
    const gate = new Float32Array(phatgoose.library.base.modules.get("output.weight")![0]);
    gate[0] = Number.NaN;
    writeGateFile(nan, [{ module: "output.weight", gate }]);
    for (const [body, message] of [
      [{ ...garden, gates: nan }, "not finite"],
      [{ ...garden, gates: join(dir, "absent.gguf") }, "cannot read the gate file"],
      [{ name: "foreign", lora: forgedPath(m.adapters["flock-demo-kitchen"].file) }, "an adapter for another base?"],
      [{ ...garden, name: "kitchen" }, "already has an expert named kitchen"],
      [{ name: "x" }, "lora"],
    ] as const) {
      const res = await admin("POST", "/admin/models/routing/experts", body);
      expect([400, 409]).toContain(res.status);
      const err = (await res.json()) as { error: { message: string } };
      expect(err.error.message).toContain(message);
      // Still serving.
      expect((await ask("routing+phatgoose", { mode: "merge" })).choices[0].finish_reason).toBeTruthy();
    }
    expect((await admin("POST", "/admin/models/nope/experts", garden)).status).toBe(404);

    // Add garden (a copy of its files, so the adapter path is new), route to it, remove it.
    const lora = join(dir, "garden.gguf");
    copyFileSync(garden.lora, lora);
    const added = await admin("POST", "/admin/models/routing+phatgoose/experts", { ...garden, lora });
    expect(added.status).toBe(201);
    expect(await added.json()).toMatchObject({ name: "garden", methods: ["phatgoose", "arrow"], modules: ["output.weight"] });
    const single = await ask("routing+phatgoose", { mode: "single", expert: "garden" });
    expect(Object.keys(single.flock!.routing!.experts)).toEqual(["garden"]);
    const merge = await ask("routing+arrow", { mode: "merge" });
    expect(Object.keys(merge.flock!.routing!.experts)).toHaveLength(4);

    expect((await admin("DELETE", "/admin/models/routing/experts/garden")).status).toBe(200);
    expect((await admin("DELETE", "/admin/models/routing/experts/garden")).status).toBe(404);
    await expect(ask("routing+phatgoose", { mode: "single", expert: "garden" })).rejects.toMatchObject({ status: 400 });
    expect((await ask("routing+phatgoose", { mode: "merge" })).flock!.routing!.experts).not.toHaveProperty("garden");
  });

  it("a body that is not JSON is a 400", async () => {
    const res = await fetch(`${t.url}/admin/models/routing/experts`, { method: "POST", headers: { authorization: "Bearer admin-secret", "content-type": "application/json" }, body: "{" });
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error: { message: string } }).error.message).toContain("could not parse the JSON body");
  });
});
