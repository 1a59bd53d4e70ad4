// flock's native addon: present where it must be (CI builds it from scratch), and its raw
// logits define the same distributions as node-llama-cpp's public probabilities path.
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { inject } from "vitest";
import { searchExpert, solveFusion } from "../decoding/fusion/solver.js";
import { argmax, DEFAULT_SAMPLING, drawFrom, samplingDistribution, sampleToken, softmax, type SamplingParams } from "../decoding/sampler.js";
import { keyedSample, PositionNoise } from "../decoding/noise.js";
import { createRng } from "../decoding/rng.js";
import { Engine } from "../engine/engine.js";
import { nativeKernels, useSamplingKernels } from "../engine/native.js";
import { preDrawFeatures } from "../decoding/speculative/features.js";
import { drawResidual } from "../decoding/speculative/verifier.js";
import { readManifest } from "../forge/manifest.js";
import { LoadedModel } from "../engine/model.js";
import { ModelEntry } from "../pipelines/model-entry.js";
import { forgedPath } from "./helpers/server.js";

// CI sets FLOCK_REQUIRE_NATIVE=1: there a missing build is a failure, not a skip.
const required = process.env.FLOCK_REQUIRE_NATIVE === "1";
let engine: Engine;

beforeAll(async () => {
  engine = await Engine.create({ gpu: "off", threads: 1 });
});
afterAll(() => engine?.[Symbol.asyncDispose]());

describe("native build", () => {
  it("is loaded and reports raw logits", (ctx) => {
    if (!required && !engine.capabilities.rawLogits) ctx.skip();
    expect(engine.llama.buildType).toBe("localBuild");
    expect(engine.capabilities.rawLogits).toBe(true);
    expect(engine.describe().missing ?? "").not.toContain("rawLogits");
  });

  it("raw logits give the probabilities path's distributions at every requested position of a batch", async (ctx) => {
    if (!engine.capabilities.rawLogits) ctx.skip();
    const manifest = readManifest(inject("forgeDir"));
    const entry = ModelEntry.parse({ id: "ctx", path: forgedPath(manifest.models["flock-contextual"].file), contextSize: 256, parallel: 1 });
    const native = await engine.load(entry);
    const fallback = await LoadedModel.create(native.weights, entry, 1, { ...engine.capabilities, rawLogits: false });
    const tokens = [manifest.vocab.bos, ...[" sailor", " ties", " the", " rope", "."].map((w) => manifest.vocab.tokens.indexOf(w.replace(" ", "\u2581")))];
    const positions = [1, 3, 5];
    const read = async (model: LoadedModel) => {
      const seq = await model.acquire([]);
      try {
        return await seq.evaluate(tokens, positions);
      } finally {
        seq.release();
      }
    };
    const [raw, viaMap] = [await read(native), await read(fallback)];
    expect(raw[0]).toBeInstanceOf(Float32Array);
    expect(raw[0].length).toBe(manifest.vocab.tokens.length);
    positions.forEach((_, i) => {
      const p = softmax(raw[i]);
      const q = softmax(viaMap[i]);
      expect(Math.max(...p.map((x, t) => Math.abs(x - q[t])))).toBeLessThan(1e-6);
    });
    // The positions really differ (the check could fail).
    expect(Math.max(...softmax(raw[0]).map((x, t) => Math.abs(x - softmax(raw[2])[t])))).toBeGreaterThan(1e-3);
    await fallback[Symbol.asyncDispose]();
  });
});

describe("recycled logits", () => {
  it("a later evaluation writes into an array its reader gave back, with the values a fresh one gets", async (ctx) => {
    if (!engine.capabilities.rawLogits) ctx.skip();
    const manifest = readManifest(inject("forgeDir"));
    const entry = ModelEntry.parse({ id: "recycle", path: forgedPath(manifest.models["flock-contextual"].file), contextSize: 256, parallel: 2 });
    const model = await engine.load(entry);
    const word = (w: string) => manifest.vocab.tokens.indexOf(w.replace(" ", "\u2581"));
    const prompt = [manifest.vocab.bos, word(" sailor"), word(" ties")];
    const [recycling, fresh] = [await model.acquire([]), await model.acquire([])];
    try {
      const [first] = await recycling.evaluate(prompt, [prompt.length - 1]);
      const before = Float32Array.from(first);
      recycling.recycle([first]);
      const [next] = await recycling.evaluate([word(" the")], [0]);
      expect(next).toBe(first); // the same array, overwritten
      await fresh.evaluate(prompt, []);
      const [expected] = await fresh.evaluate([word(" the")], [0]);
      expect(expected).not.toBe(first);
      const distance = (a: Float32Array, b: Float32Array) => Math.max(...a.map((x, i) => Math.abs(x - b[i])));
      expect(distance(next, expected)).toBeLessThan(1e-5);
      expect(distance(next, before)).toBeGreaterThan(1e-2);
      // Without a recycled array, every evaluation allocates its own.
      const [again] = await recycling.evaluate([word(" rope")], [0]);
      expect(again).not.toBe(next);
    } finally {
      recycling.release();
      fresh.release();
      await model[Symbol.asyncDispose]();
    }
  });
});

describe("native sampling kernel", () => {
  it("computes the TypeScript softmax, and the samplers use it: the same draws, no Math.exp", async (ctx) => {
    if (!required && !engine.capabilities.nativeSampling) ctx.skip();
    expect(engine.capabilities.nativeSampling).toBe(true);
    const kernel = nativeKernels().softmax!;
    expect(kernel).toBeDefined();
    const rng = createRng(19);
    const gaussian = () => Math.sqrt(-2 * Math.log(1 - rng.next())) * Math.cos(2 * Math.PI * rng.next());
    let worst = 0;
    let same = 0;
    let draws = 0;
    for (const [n, sigma, temperature] of [[151_936, 6, 1], [151_936, 2, 0.7], [32_000, 4, 1.5], [7, 1, 1e-30]] as const) {
      const logits = Float32Array.from({ length: n }, () => sigma * gaussian());
      logits[3] = -Infinity;
      // The reference: the TypeScript loop (decoding/sampler.ts without a kernel), written out.
      let max = -Infinity;
      for (const l of logits) if (l > max) max = l;
      const reference = Float64Array.from(logits, (l) => Math.exp((l - max) / temperature));
      const total = reference.reduce((a, b) => a + b, 0);
      for (let i = 0; i < n; i++) reference[i] /= total;
      const exp = vi.spyOn(Math, "exp");
      const native = samplingDistribution(logits, { ...DEFAULT_SAMPLING, temperature });
      expect(exp).not.toHaveBeenCalled();
      exp.mockRestore();
      for (let i = 0; i < n; i++) worst = Math.max(worst, Math.abs(native[i] - reference[i]) / Math.max(reference[i], 1e-300));
      expect(native[3]).toBe(0);
      for (let d = 0; d < 200; d++, draws++) {
        const seed = 1000 * d + n;
        if (drawFrom(native, createRng(seed)) === drawFrom(reference, createRng(seed))) same++;
      }
    }
    expect(worst).toBeLessThan(1e-13);
    expect(same).toBe(draws);
    expect(() => kernel(new Float32Array([-Infinity, -Infinity]), 1, new Float64Array(2))).not.toThrow();
    expect(kernel(new Float32Array([-Infinity, -Infinity]), 1, new Float64Array(2))).toBe(0);
    expect(() => kernel(new Float32Array(3), 1, new Float64Array(2))).toThrow(/same length/);
  });
});

describe("native draw", () => {
  it("picks the TypeScript sampler's token for every setting, uniform and noise key, in one call", async (ctx) => {
    if (!required && !engine.capabilities.nativeSampling) ctx.skip();
    const installed = nativeKernels();
    const kernel = installed.sampleToken!;
    expect(Object.keys(installed).sort()).toEqual(["distribution", "distributionSummary", "drawFrom", "drawResidual", "residualMass", "sampleToken", "softmax"]);
    const rng = createRng(23);
    const gaussian = () => Math.sqrt(-2 * Math.log(1 - rng.next())) * Math.cos(2 * Math.PI * rng.next());
    const settings: Array<Partial<SamplingParams>> = [
      { temperature: 0 },
      { temperature: 1 },
      { temperature: 0.7, topP: 0.9 },
      { temperature: 1, topP: 0.999 },
      { temperature: 1, minP: 0.05 },
      { temperature: 0.8, topK: 40, topP: 0.95, minP: 0.05 },
      { temperature: 1.3, topK: 300, topP: 0.8 },
      { temperature: 1, topK: 1_000_000 },
    ];
    // The reference: decoding/sampler.ts and noise.ts with the native softmax only (its
    // exponentials are the kernel's; everything else is the TypeScript code).
    const reference = <T>(run: () => T): T => {
      useSamplingKernels({ softmax: installed.softmax });
      try {
        return run();
      } finally {
        useSamplingKernels(installed);
      }
    };
    let compared = 0;
    let boundaries = 0;
    const distinct = new Set<number>();
    for (const [n, sigma] of [[151_936, 6], [32_000, 2], [50, 1]] as const) {
      for (let trial = 0; trial < 2; trial++) {
        const logits = Float32Array.from({ length: n }, () => Math.round(sigma * gaussian() * 4) / 4); // quarter steps: many ties
        logits[3] = -Infinity;
        for (const overrides of settings) {
          const params: SamplingParams = { ...DEFAULT_SAMPLING, ...overrides };
          const probs = reference(() => samplingDistribution(logits, params));
          // The distribution, bit for bit (top-k's few exponentials: to exp's last bit).
          const native = samplingDistribution(logits, params);
          const topK = params.topK > 0 && params.topK < n;
          for (let i = 0; i < n; i++) {
            if (topK) expect(Math.abs(native[i] - probs[i])).toBeLessThanOrEqual(1e-15 * probs[i]);
            else if (native[i] !== probs[i]) expect.fail(`token ${i}: ${native[i]} ≠ ${probs[i]}`);
          }
          // What a drafted position's predictor reads.
          const scale = params.temperature === 0 ? 1 : 1 / params.temperature;
          expect(preDrawFeatures(probs, logits, 1 / scale, 1, 0.5)).toEqual(reference(() => preDrawFeatures(probs, logits, 1 / scale, 1, 0.5)));
          // Uniforms at random and exactly on the CDF's steps (u < cumulative decides). Not with
          // top-k, whose few exponentials sampler.ts takes with Math.exp: a step may differ in
          // its last bit there, which only a uniform placed on it exactly can see.
          const uniforms = Array.from({ length: 20 }, () => rng.next());
          let cumulative = 0;
          for (let i = 0, steps = 0; i < n && steps < 10 && !topK; i++) {
            if (probs[i] <= 0) continue;
            cumulative += probs[i];
            uniforms.push(cumulative);
            steps++;
            boundaries++;
          }
          // A rejected candidate's recovered token: the residual of p against another distribution.
          const q = reference(() => samplingDistribution(logits, { ...DEFAULT_SAMPLING, temperature: 1.3 }));
          let residualMass = 0;
          for (let i = 0; i < n; i++) if (probs[i] - q[i] > 0) residualMass += probs[i] - q[i];
          let residualCumulative = 0;
          for (let i = 0, steps = 0; i < n && steps < 5; i++) {
            if (!(probs[i] - q[i] > 0)) continue;
            residualCumulative += (probs[i] - q[i]) / residualMass;
            uniforms.push(residualCumulative);
            steps++;
          }
          for (const u of uniforms) {
            const fixed = { next: () => u, int: () => 0, pick: <T>(items: readonly T[]) => items[0] };
            expect(drawResidual(probs, q, fixed)).toBe(reference(() => drawResidual(probs, q, fixed)));
            const expected = reference(() => sampleToken(logits, params, fixed));
            expect(sampleToken(logits, params, fixed)).toBe(expected);
            expect(drawFrom(probs, fixed)).toBe(reference(() => drawFrom(probs, fixed)));
            distinct.add(expected);
            compared++;
          }
          for (let key = 0; key < 24; key++) {
            const noise = new PositionNoise((key * 2654435761) >>> 0);
            const expected = reference(() => keyedSample(logits, params, noise));
            expect(keyedSample(logits, params, noise)).toBe(expected);
            distinct.add(expected);
            compared++;
          }
        }
      }
    }
    expect(compared).toBeGreaterThan(2000);
    expect(boundaries).toBeGreaterThan(100);
    // The draws really vary (a kernel that returned the argmax would fail above).
    expect(distinct.size).toBeGreaterThan(100);
    // p = q leaves no residual: both fall back to p's most likely token without a uniform.
    const same = Float64Array.from([0.2, 0.5, 0.3]);
    const untouched = { next: () => expect.fail("no uniform is drawn"), int: () => 0, pick: <T>(items: readonly T[]) => items[0] };
    expect(drawResidual(same, same, untouched)).toBe(1);
    // Without a finite logit: the same error as the TypeScript path.
    expect(() => sampleToken(new Float32Array([-Infinity, -Infinity]), { ...DEFAULT_SAMPLING }, createRng(1))).toThrow(/probability zero/);
    expect(kernel(new Float32Array(0), 1, 0, 1, 0, false, 0.5)).toBe(-1);
    expect(() => (kernel as unknown as (x: number) => number)(1)).toThrow(/flockSampleToken/);
  });

  it("finds the argmax and the top k wherever they sit in the vector scan's blocks, NaN never winning", (ctx) => {
    if (!required && !engine.capabilities.nativeSampling) ctx.skip();
    const installed = nativeKernels();
    const kernel = installed.sampleToken!;
    const greedy = (logits: Float32Array) => kernel(logits, 0, 0, 1, 0, false, 0);
    const n = 75; // two 32-value steps, one 8-value step, a scalar tail of 3
    for (let at = 0; at < n; at++) {
      const logits = new Float32Array(n).fill(-1);
      logits[at] = 2;
      expect(greedy(logits)).toBe(at);
      // A tie goes to the earlier token; NaN after it changes nothing, NaN first wins nothing.
      logits[n - 1 - at] = 2;
      expect(greedy(logits)).toBe(Math.min(at, n - 1 - at));
      logits[(at + 1) % n] = NaN;
      expect(greedy(logits)).toBe(argmax(logits));
    }
    const nanFirst = Float32Array.from({ length: n }, (_, i) => (i === 0 ? NaN : i));
    expect(greedy(nanFirst)).toBe(argmax(nanFirst)); // 0, as the TypeScript scan answers
    // Top-k skips straight to logits above the k-th: the kept set is the sort's.
    const rng = createRng(5);
    for (let trial = 0; trial < 20; trial++) {
      const logits = Float32Array.from({ length: 1000 + trial * 37 }, () => Math.round(rng.next() * 64));
      if (trial % 2 === 0) logits[rng.int(logits.length)] = NaN;
      const params: SamplingParams = { ...DEFAULT_SAMPLING, temperature: 0.7, topK: 5 + trial };
      const native = samplingDistribution(logits, params);
      useSamplingKernels({});
      try {
        const reference = samplingDistribution(logits, params);
        for (let i = 0; i < logits.length; i++) expect(native[i] > 0).toBe(reference[i] > 0);
      } finally {
        useSamplingKernels(installed);
      }
    }
  });
});

describe("compiled fusion kernel", () => {
  it("computes the same objectives and choices as the TypeScript solver", async (ctx) => {
    if (!engine.capabilities.fusionKernel) ctx.skip();
    const manifest = readManifest(inject("forgeDir"));
    const model = await engine.load(ModelEntry.parse({ id: "k", path: forgedPath(manifest.models["flock-demo-draft"].file), contextSize: 256, parallel: 1 }));
    const kernel = model.fusionGridKernel!;
    const rng = createRng(17);
    for (let trial = 0; trial < 10; trial++) {
      const n = 50 + rng.int(3000);
      const logits = () => Float32Array.from({ length: n }, () => (rng.next() < 0.01 ? 10 : 0) + 3 * (rng.next() - 0.5));
      const strong = logits();
      const base = logits();
      const experts = [0, 1, 2].map(() => Float32Array.from(base, (x) => x + (rng.next() - 0.5) * 2 * rng.next()));
      const compiled = kernel(strong, base, experts, 0.1, 20, 40);
      experts.forEach((e, i) => {
        const ts = searchExpert(strong, base, e);
        ts.objectives.forEach((o, k) => expect(compiled[i * 21 + k]).toBeCloseTo(o, 9));
        expect(compiled[3 * 21 + i]).toBeCloseTo(ts.movement, 9);
      });
      const [viaKernel, viaTs] = [solveFusion(strong, base, experts, { kernel }), solveFusion(strong, base, experts)];
      expect([viaKernel.expert, viaKernel.alpha]).toEqual([viaTs.expert, viaTs.alpha]);
      expect(viaKernel.objective).toBeCloseTo(viaTs.objective, 9);
    }
  });
});

describe("hidden states", () => {
  it("are the vector that feeds the output projection: the one-hot state on the analytic model, the oracle's on the contextual one", async (ctx) => {
    if (!engine.capabilities.hiddenStates) ctx.skip();
    const manifest = readManifest(inject("forgeDir"));
    const words = ["The", "\u2581sailor", "\u2581ties", "\u2581the", "\u2581rope", "."].map((p) => manifest.vocab.tokens.indexOf(p));
    const tokens = [manifest.vocab.bos, ...words];
    const positions = tokens.map((_, i) => i);
    const read = async (file: string) => {
      const model = await engine.load(ModelEntry.parse({ id: `h-${file}`, path: forgedPath(file), contextSize: 256, parallel: 1 }), { hiddenStates: true });
      const seq = await model.acquire([]);
      try {
        return await seq.evaluateWithHidden(tokens, positions);
      } finally {
        seq.release();
      }
    };

    const analytic = await read(manifest.models["flock-demo"].file);
    tokens.forEach((token, i) => {
      const state = manifest.states.ofToken[token];
      const h = analytic.hidden[i];
      expect(h.length).toBe(manifest.models["flock-demo"].shape.embeddingDim);
      h.forEach((x, j) => expect(x).toBeCloseTo(j === state ? 1 : 0, 4));
    });

    const { LlamaOracle } = await import("./oracle/llama.js");
    const file = manifest.models["flock-contextual"].file;
    const [native, oracle] = [await read(file), (await LlamaOracle.load(forgedPath(file), { numerics: "ggml-cpu" })).forward(tokens)];
    positions.forEach((i) => {
      const norm = Math.sqrt(oracle.hidden[i].reduce((a, x) => a + x * x, 0));
      const gap = Math.sqrt(native.hidden[i].reduce((a, x, j) => a + (x - oracle.hidden[i][j]) ** 2, 0));
      expect(gap / norm).toBeLessThan(1e-3);
    });
    // And they depend on the context (the check could fail): another first word changes the last state.
    const model = await engine.load(ModelEntry.parse({ id: "h-ctx-2", path: forgedPath(file), contextSize: 256, parallel: 1 }), { hiddenStates: true });
    const seq = await model.acquire([]);
    const other = [tokens[0], manifest.vocab.tokens.indexOf("A"), ...tokens.slice(2)];
    const changed = (await seq.evaluateWithHidden(other, [other.length - 1])).hidden[0];
    seq.release();
    const last = native.hidden[tokens.length - 1];
    expect(Math.max(...last.map((x, j) => Math.abs(x - changed[j])))).toBeGreaterThan(1e-3);
  });
});
