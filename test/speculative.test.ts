// Speculative decoding on real forged models through node-llama-cpp: lossless at temperature 0
// and in distribution, acceptance as the closed form predicts, caches consistent after
// rejections, stops inside candidates.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { inject } from "vitest";
import { DEFAULT_SAMPLING, type SamplingParams } from "../decoding/sampler.js";
import type { SpeculativeOverrides } from "../decoding/speculative/settings.js";
import type { DecodeStep, GenerationRequest } from "../decoding/types.js";
import { Engine } from "../models/engine.js";
import { readManifest, type Manifest } from "../models/forge/manifest.js";
import { ModelEntry } from "../models/registry.js";
import { loadPipeline } from "../routing/load.js";
import type { Pipeline, SpeculativePipeline } from "../routing/pipeline.js";
import { ChainOracle } from "./helpers/chain.js";
import { goodnessOfFit } from "./helpers/goodness.js";
import { chiSquarePValue } from "./helpers/stats.js";
import { forgedPath } from "./helpers/server.js";

let engine: Engine;
let manifest: Manifest;
let base: ChainOracle;
let spec: SpeculativePipeline;
let contextual: SpeculativePipeline;
let plain: Pipeline;
let plainContextual: Pipeline;

const POLICIES: SpeculativeOverrides[] = [
  { policy: "fixed", k: 1 },
  { policy: "fixed", k: 3 },
  { policy: "fixed", k: 8 },
  { policy: "confidence", pMin: 0.4 },
  { policy: "specdec++", threshold: 0.5 },
];

beforeAll(async () => {
  manifest = readManifest(inject("forgeDir"));
  base = new ChainOracle(manifest, "base");
  engine = await Engine.create({ gpu: "off", threads: 1 });
  const entry = (id: string, file: string, speculative = true) =>
    ModelEntry.parse({
      id,
      path: forgedPath(file),
      contextSize: 512,
      parallel: 2,
      ...(speculative ? { speculative: { draft: forgedPath(manifest.models["flock-demo-draft"].file) } } : {}),
    });
  const stateDir = inject("forgeDir");
  spec = (await loadPipeline(engine, entry("spec", manifest.models["flock-demo"].file), stateDir)) as SpeculativePipeline;
  contextual = (await loadPipeline(engine, entry("ctx", manifest.models["flock-contextual"].file), stateDir)) as SpeculativePipeline;
  plain = await loadPipeline(engine, entry("plain", manifest.models["flock-demo"].file, false), stateDir);
  plainContextual = await loadPipeline(engine, entry("plain-ctx", manifest.models["flock-contextual"].file, false), stateDir);
});
afterAll(() => engine?.[Symbol.asyncDispose]());

function request(prompt: number[], overrides: Partial<GenerationRequest> = {}): GenerationRequest {
  return { prompt, maxTokens: 40, sampling: DEFAULT_SAMPLING, seed: 1, stopStrings: [], stopTokens: [], topLogprobs: null, ...overrides };
}

async function collect(pipeline: Pipeline, req: GenerationRequest) {
  const steps: DecodeStep[] = [];
  for await (const step of pipeline.generate(req)) steps.push(step);
  return { steps, tokens: steps.flatMap((s) => s.tokens), text: steps.map((s) => s.text).join(""), finish: steps.at(-1)?.finishReason };
}

const greedy: SamplingParams = { ...DEFAULT_SAMPLING, temperature: 0 };
/** Prompts starting in every chain state the language has (BOS + one word). */
const prompts = () => manifest.states.names.slice(1).map((piece) => [manifest.vocab.bos, manifest.vocab.tokens.indexOf(piece)]);

describe("temperature 0", () => {
  it.each(POLICIES)("output is identical to target-only decoding, token for token (%o)", async (policy) => {
    for (const prompt of prompts()) {
      const req = request(prompt, { sampling: greedy, maxTokens: 24 });
      const expected = await collect(plain, req);
      const got = await collect(spec, { ...req, speculative: policy });
      expect(got.tokens).toEqual(expected.tokens);
      expect(got.text).toBe(expected.text);
      expect(got.finish).toBe(expected.finish);
    }
  });

  it.each(POLICIES)("also on a target whose logits depend on the whole context, so cache errors would show (%o)", async (policy) => {
    for (const prompt of prompts().slice(0, 40)) {
      const req = request(prompt, { sampling: greedy, maxTokens: 32, stopTokens: [] });
      const expected = await collect(plainContextual, req);
      const got = await collect(contextual, { ...req, speculative: policy });
      expect(got.tokens).toEqual(expected.tokens);
    }
  });
});

describe("sampling", () => {
  /** Transition counts prev → next over many speculative generations. */
  async function transitions(sampling: SamplingParams, policy: SpeculativeOverrides, runs: number) {
    const byState = new Map<number, Map<number, number>>();
    const all = prompts();
    for (let r = 0; r < runs; r++) {
      const prompt = all[r % all.length];
      const { tokens } = await collect(spec, request(prompt, { sampling, seed: 7000 + r, maxTokens: 48, speculative: policy }));
      let prev = prompt.at(-1)!;
      for (const t of tokens) {
        const state = manifest.states.ofToken[prev];
        let row = byState.get(state);
        if (!row) byState.set(state, (row = new Map()));
        row.set(t, (row.get(t) ?? 0) + 1);
        prev = t;
      }
    }
    return byState;
  }

  /** One chi-square over all states (statistics and degrees of freedom add up). */
  function pooledFit(byState: Map<number, Map<number, number>>, expectedOf: (stateToken: number) => Float64Array) {
    let statistic = 0;
    let dof = 0;
    let outside = 0;
    for (const [state, counts] of byState) {
      const n = [...counts.values()].reduce((a, b) => a + b, 0);
      if (n < 40) continue;
      const token = manifest.states.ofToken.indexOf(state);
      const fit = goodnessOfFit(counts, expectedOf(token));
      statistic += fit.statistic;
      dof += fit.degreesOfFreedom;
      outside += fit.outsideSupport;
    }
    return { pValue: chiSquarePValue(statistic, dof), dof, outside };
  }

  it("tokens follow the target's analytic distribution at temperature 1 (SpecDec++)", async () => {
    const byState = await transitions(DEFAULT_SAMPLING, { policy: "specdec++", threshold: 0.7 }, 400);
    const fit = pooledFit(byState, (token) => base.next(token));
    expect(fit.dof).toBeGreaterThan(50);
    expect(fit.outside).toBe(0);
    expect(fit.pValue).toBeGreaterThan(1e-4);
  });

  it("and with top_k and top_p applied to both target and draft (fixed K = 4)", async () => {
    const sampling: SamplingParams = { ...DEFAULT_SAMPLING, temperature: 0.9, topK: 5, topP: 0.8 };
    const byState = await transitions(sampling, { policy: "fixed", k: 4 }, 300);
    const truncated = (token: number) => {
      const p = base.next(token);
      const scaled = [...p].map((x) => x ** (1 / 0.9));
      const order = scaled.map((x, i) => [x, i] as const).filter(([x]) => x > 0).sort((a, b) => b[0] - a[0]).slice(0, 5);
      const mass = order.reduce((a, [x]) => a + x, 0);
      const out = new Float64Array(p.length);
      let cumulative = 0;
      for (const [x, i] of order) {
        out[i] = x;
        cumulative += x / mass;
        if (cumulative >= 0.8) break;
      }
      const kept = out.reduce((a, b) => a + b, 0);
      return out.map((x) => x / kept);
    };
    const fit = pooledFit(byState, truncated);
    expect(fit.dof).toBeGreaterThan(30);
    expect(fit.outside).toBe(0);
    expect(fit.pValue).toBeGreaterThan(1e-4);
  });

  it("the measured acceptance rate matches the closed form Σ min(p, q) of the visited states", async () => {
    const pair = manifest.pairs.find((p) => p.target === "flock-demo")!;
    // Per verified position: its state, and whether it was accepted. Fixed K = 3 drafts from
    // known states: position 1 from the last committed token, later ones from the candidate before.
    let expected = 0;
    let variance = 0;
    let observed = 0;
    for (const [r, prompt] of prompts().entries()) {
      const { steps } = await collect(spec, request(prompt, { seed: 9000 + r, maxTokens: 40, speculative: { policy: "fixed", k: 3 } }));
      let last = prompt.at(-1)!;
      for (const step of steps) {
        const round = step.speculative!;
        // Positions 1..accepted+1 were verified (or all, when every one was accepted).
        const verified = Math.min(round.drafted, round.accepted + 1);
        let state = manifest.states.ofToken[last];
        for (let i = 0; i < verified; i++) {
          const alpha = pair.acceptancePerState[state];
          expected += alpha;
          variance += alpha * (1 - alpha);
          if (i < round.accepted) {
            observed += 1;
            state = manifest.states.ofToken[step.tokens[i]];
          }
        }
        last = step.tokens.at(-1)!;
      }
    }
    expect(variance).toBeGreaterThan(100);
    // Within 4 standard deviations (false alarm ≈ 6e-5).
    expect(Math.abs(observed - expected)).toBeLessThan(4 * Math.sqrt(variance));
  });
});

describe("caches and stops", () => {
  it("after rejections both caches hold exactly the committed tokens and continue like fresh evaluation", async () => {
    const prompt = [manifest.vocab.bos, ...base.promptTokens("The sailor ties the")];
    const { tokens } = await collect(contextual, request(prompt, { seed: 3, maxTokens: 30, speculative: { policy: "fixed", k: 6 } }));
    expect(contextual.stats.draftTokens).toBeGreaterThan(contextual.stats.acceptedTokens); // there were rejections
    const committed = [...prompt, ...tokens];
    for (const model of [contextual.model, contextual.draft]) {
      const seq = await model.acquire(committed);
      try {
        // The pool hands back the sequence the decode used; it holds most of the committed text
        // (the draft may keep a tail of its last, rejected candidate).
        const shared = seq.sharedPrefix(committed);
        expect(shared).toBeGreaterThan(committed.length - 10);
        await seq.truncate(shared);
        const [continued] = await seq.evaluate(committed.slice(shared), [committed.length - shared - 1]);
        await seq.truncate(0);
        const [fresh] = await seq.evaluate(committed, [committed.length - 1]);
        const gap = Math.max(...continued.map((x, i) => Math.abs(Math.exp(x) - Math.exp(fresh[i]))));
        expect(gap).toBeLessThan(1e-5);
      } finally {
        seq.release();
      }
    }
  });

  it("a stop sequence inside a candidate ends the text right before it", async () => {
    // The longest greedy continuation among the states, so the stop falls mid-candidate.
    const starts = prompts().map((p) => ({ p, path: base.greedyPath(p.at(-1)!, 30) }));
    const { p, path } = starts.reduce((a, b) => (b.path.length > a.path.length ? b : a));
    const full = path.filter((t) => t !== base.eos).map((t) => base.text(t)).join("");
    const stop = full.slice(full.indexOf(" ", 5), full.indexOf(" ", 5) + 4);
    const got = await collect(spec, request(p, { sampling: greedy, maxTokens: 30, stopStrings: [stop], speculative: { policy: "fixed", k: 8 } }));
    expect(got.text).toBe(full.slice(0, full.indexOf(stop)));
    expect(got.finish).toBe("stop");
  });

  it("EOS inside a candidate ends generation there, and max_tokens cuts a round short", async () => {
    const withEos = prompts()
      .map((p) => ({ p, path: base.greedyPath(p.at(-1)!, 40) }))
      .find(({ path }) => path.at(-1) === base.eos && path.length > 4)!;
    const got = await collect(spec, request(withEos.p, { sampling: greedy, maxTokens: 40, speculative: { policy: "fixed", k: 8 } }));
    expect(got.tokens).toEqual(withEos.path);
    expect(got.finish).toBe("stop");
    const short = await collect(spec, request(withEos.p, { sampling: greedy, maxTokens: 3, speculative: { policy: "fixed", k: 8 } }));
    expect(short.tokens).toEqual(withEos.path.slice(0, 3));
    expect(short.finish).toBe(withEos.path.length === 3 ? "stop" : "length");
  });

  it("counts drafts, draft tokens, accepted tokens and accepted tokens per position", () => {
    const s = spec.stats;
    expect(s.drafts).toBeGreaterThan(0);
    expect(s.acceptedTokens).toBeLessThanOrEqual(s.draftTokens);
    expect(s.acceptedPerPosition[0]).toBeLessThanOrEqual(s.drafts);
    for (let i = 1; i < s.acceptedPerPosition.length; i++) expect(s.acceptedPerPosition[i]).toBeLessThanOrEqual(s.acceptedPerPosition[i - 1]);
    expect(s.acceptedPerPosition.reduce((a, b) => a + b, 0)).toBe(s.acceptedTokens);
  });
});

describe("per-token detail (flock.speculative.detail)", () => {
  it("accounts for every emitted token: origin, round, the draft's probability, acceptance, P̂ and the rejected candidate", async () => {
    const prompt = [manifest.vocab.bos, ...base.promptTokens("The sailor ties the")];
    for (const sampling of [greedy, DEFAULT_SAMPLING]) {
      for (const policy of [{ policy: "specdec++", threshold: 0.5 }, { policy: "fixed", k: 4 }] as const) {
        const req = request(prompt, { sampling, seed: 5, maxTokens: 40 });
        const without = await collect(contextual, { ...req, speculative: policy });
        const got = await collect(contextual, { ...req, speculative: { ...policy, detail: true } });
        // Detail is an account, not a change: same tokens, same text (SpecDec++'s online predictor
        // learns between the two requests, so its rounds, and hence sampled draws, may differ).
        if (sampling === greedy || policy.policy === "fixed") {
          expect(got.tokens).toEqual(without.tokens);
          expect(got.text).toBe(without.text);
        }
        expect(without.steps.every((s) => s.speculative!.detail === undefined)).toBe(true);

        let recovered = 0;
        for (const [round, step] of got.steps.entries()) {
          const { detail, origins, drafted, accepted } = step.speculative!;
          expect(detail!.map((d) => d.origin)).toEqual(origins);
          for (const [j, d] of detail!.entries()) {
            expect(d.round).toBe(round);
            expect(d.drafted).toBe(drafted);
            if (d.origin === "accepted") {
              expect(j).toBeLessThan(accepted);
              expect(d.draftProbability).toBeGreaterThan(0);
              expect(d.draftProbability).toBeLessThanOrEqual(1);
              expect(d.acceptanceProbability).toBeGreaterThan(0);
              if (sampling === greedy) expect(d.acceptanceProbability).toBe(1);
              expect(d.rejected).toBeUndefined();
            } else if (d.origin === "recovered") {
              recovered++;
              expect(j).toBe(accepted);
              expect(d.draftProbability).toBeUndefined();
              expect(d.rejected!.token).not.toBe(step.tokens[j]);
              expect(d.rejected!.text).toBe(base.text(d.rejected!.token));
              expect(d.rejected!.acceptanceProbability).toBeLessThan(1);
              if (sampling === greedy) expect(d.rejected!.acceptanceProbability).toBe(0);
            } else {
              expect(j).toBe(drafted);
              expect(d.rejected).toBeUndefined();
            }
            const judged = d.origin === "accepted" ? d : d.rejected;
            if (judged && policy.policy === "specdec++") expect(judged.predictedAcceptance).toBeGreaterThan(0);
            if (judged && policy.policy === "fixed") expect(judged.predictedAcceptance).toBeUndefined();
          }
        }
        expect(recovered).toBeGreaterThan(0); // the contextual pair disagrees often enough
      }
    }
  });
});

describe("the SpecDec++ authors' head", () => {
  // The embedding view tells tokens apart without the draft's context, so it needs more rollouts.
  it.for([
    ["the hidden state at the candidate (the authors' input)", "hidden", []],
    ["the candidate's token embedding", "embedding", ["--tokens", "256"]],
  ] as const)("npm run train:acceptance trains a head that reads %s; served with it, greedy output is still the target's", async ([, view, extra], ctx) => {
    if (!engine.capabilities.hiddenStates) ctx.skip();
    const { mkdtempSync, readFileSync, rmSync } = await import("node:fs");
    const { join } = await import("node:path");
    const { tmpdir } = await import("node:os");
    const { spawnSync } = await import("node:child_process");
    const dir = mkdtempSync(join(tmpdir(), "flock-head-"));
    try {
      const out = join(dir, "head.json");
      const root = join(import.meta.dirname, "..");
      const run = spawnSync(
        join(root, "node_modules", ".bin", "tsx"),
        [
          "decoding/speculative/train-cli.ts",
          ...["--target", forgedPath(manifest.models["flock-demo"].file), "--draft", forgedPath(manifest.models["flock-demo-draft"].file), "--out", out],
          ...["--threads", "1", "--epochs", "8", "--candidate", view, ...extra],
        ],
        { cwd: root, encoding: "utf8", timeout: 120_000 },
      );
      expect(run.status, run.stderr).toBe(0);
      const file = JSON.parse(readFileSync(out, "utf8")) as { hiddenSize: number; candidate: string; trainedOn: { heldOutLoss: number; bestConstantLoss: number } };
      // The head reads the draft's hidden state before the candidate, then its view of the
      // candidate (the forge's token embeddings are as wide as its hidden states).
      expect(file.candidate).toBe(view);
      expect(file.hiddenSize).toBe(2 * manifest.models["flock-demo-draft"].shape.embeddingDim);
      // The head learned something a constant cannot say.
      expect(file.trainedOn.heldOutLoss).toBeLessThan(file.trainedOn.bestConstantLoss);

      const pipeline = (await loadPipeline(
        engine,
        ModelEntry.parse({
          id: "head",
          path: forgedPath(manifest.models["flock-demo"].file),
          contextSize: 512,
          parallel: 1,
          speculative: { draft: forgedPath(manifest.models["flock-demo-draft"].file), predictor: "head", head: out, threshold: 0.5 },
        }),
        dir,
      )) as SpeculativePipeline;
      expect(pipeline.predictor.name).toBe("head");
      expect(pipeline.predictor.needsCandidateHidden).toBe(view === "hidden");
      for (const prompt of prompts().slice(0, 20)) {
        const req = request(prompt, { sampling: greedy, maxTokens: 20 });
        expect((await collect(pipeline, req)).tokens).toEqual((await collect(plain, req)).tokens);
      }
      expect(pipeline.stats.drafts).toBeGreaterThan(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("refuses a head whose hidden size does not match the draft", async (ctx) => {
    if (!engine.capabilities.hiddenStates) ctx.skip();
    const { mkdtempSync, rmSync } = await import("node:fs");
    const { join } = await import("node:path");
    const { tmpdir } = await import("node:os");
    const { AcceptanceHead } = await import("../decoding/speculative/head.js");
    const dir = mkdtempSync(join(tmpdir(), "flock-head-"));
    try {
      const file = join(dir, "wrong.json");
      new AcceptanceHead(7, 1).save(file, {});
      const entry = ModelEntry.parse({
        id: "bad-head",
        path: forgedPath(manifest.models["flock-demo"].file),
        contextSize: 256,
        parallel: 1,
        speculative: { draft: forgedPath(manifest.models["flock-demo-draft"].file), predictor: "head", head: file },
      });
      await expect(loadPipeline(engine, entry, dir)).rejects.toThrow(/reads 7 inputs, the draft's two hidden states make 256/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
