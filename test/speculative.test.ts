// Speculative decoding on real forged models through node-llama-cpp: lossless at temperature 0
// and in distribution, acceptance as the closed form predicts, caches consistent after
// rejections, stops inside candidates.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { inject } from "vitest";
import { DEFAULT_SAMPLING, type SamplingParams } from "../decoding/sampler.js";
import type { SpeculativeOverrides } from "../decoding/speculative/config.js";
import type { DecodeStep, GenerationRequest } from "../decoding/types.js";
import { Engine } from "../engine/engine.js";
import { readManifest, type Manifest } from "../forge/manifest.js";
import { createRng } from "../decoding/rng.js";
import { document, DOMAINS, renderText } from "../forge/language.js";
import { ModelEntry } from "../pipelines/model-entry.js";
import { loadPipeline } from "../pipelines/load.js";
import type { Pipeline, SpeculativePipeline } from "../pipelines/pipeline.js";
import { ChainOracle } from "./helpers/chain.js";
import { goodnessOfFit } from "./helpers/goodness.js";
import { chiSquarePValue } from "./helpers/stats.js";
import { forgedPath } from "./helpers/server.js";

let engine: Engine;
let manifest: Manifest;
let base: ChainOracle;
let spec: SpeculativePipeline;
/** SpecDec++ with P̂ = q(y). */
let specDraftConfidence: SpeculativePipeline;
/** The default policy (SpecDec++, automatic threshold, online predictor) on costs where drafting pays. */
let specPinned: SpeculativePipeline;
/** The default policy on costs where drafting does not pay (a draft step dearer than a target pass): it skips rounds. */
let specUnpaid: SpeculativePipeline;
let contextual: SpeculativePipeline;
let plain: Pipeline;
let plainContextual: Pipeline;

const POLICIES: SpeculativeOverrides[] = [
  { policy: "fixed", k: 1 },
  { policy: "fixed", k: 3 },
  { policy: "fixed", k: 8 },
  { policy: "confidence", pMin: 0.4 },
  { policy: "specdec++", threshold: 0.5 },
  { policy: "specdec++", threshold: "auto" },
];

beforeAll(async () => {
  manifest = readManifest(inject("forgeDir"));
  base = new ChainOracle(manifest, "base");
  engine = await Engine.create({ gpu: "off", threads: 1 });
  const entry = (id: string, file: string, speculative = true, predictor: "online" | "draft-confidence" = "online") =>
    ModelEntry.parse({
      id,
      path: forgedPath(file),
      contextSize: 512,
      parallel: 2,
      ...(speculative ? { speculative: { draft: forgedPath(manifest.models["flock-demo-draft"].file), predictor } } : {}),
    });
  const stateDir = inject("forgeDir");
  spec = (await loadPipeline(engine, entry("spec", manifest.models["flock-demo"].file), stateDir)) as SpeculativePipeline;
  contextual = (await loadPipeline(engine, entry("ctx", manifest.models["flock-contextual"].file), stateDir)) as SpeculativePipeline;
  specDraftConfidence = (await loadPipeline(engine, entry("spec-q", manifest.models["flock-demo"].file, true, "draft-confidence"), stateDir)) as SpeculativePipeline;
  // The demo's draft costs as much as its target on this CPU, so the automatic rule rightly
  // declines to draft; its drafting paths are exercised on a pinned cost table that the rounds
  // do not retime: draft steps a tenth of a pass, verifying a second token nearly free and each
  // one after it a third of a pass more, so that positions whose E_q[P̂] is low are declined
  // before their draw even though the step to q_k is paid.
  const pinned = async (n: number) => 1 + 0.05 * n + 0.35 * Math.max(0, n - 2);
  specPinned = (await loadPipeline(engine, entry("spec-pinned", manifest.models["flock-demo"].file), stateDir)) as SpeculativePipeline;
  await specPinned.costs.calibrate(async () => 0.1, pinned, 16, 1);
  specPinned.costs.observeDraftStep = () => {};
  specPinned.costs.observeTargetPass = () => {};
  // The same table for the automatic rule over P̂ = q(y) (a numeric threshold reads no costs).
  await specDraftConfidence.costs.calibrate(async () => 0.1, pinned, 16, 1);
  specDraftConfidence.costs.observeDraftStep = () => {};
  specDraftConfidence.costs.observeTargetPass = () => {};
  specUnpaid = (await loadPipeline(engine, entry("spec-unpaid", manifest.models["flock-demo"].file), stateDir)) as SpeculativePipeline;
  await specUnpaid.costs.calibrate(async () => 3, async (n) => 4 + 0.2 * n, 16, 1);
  specUnpaid.costs.observeDraftStep = () => {};
  specUnpaid.costs.observeTargetPass = () => {};
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

const sailorPrompt = () => [manifest.vocab.bos, ...base.promptTokens("The sailor ties the")];

/**
 * A peaked state, shaped like the one where the old default's bias showed (` So` 0.950, ` farmer`
 * and ` pilot` 0.013): after "sail" the target's top token (".", 0.53) raised by a logit bias
 * (on target and draft alike) to 0.969 at T = 1 — five others at 0.005–0.007 — and to 0.968 at
 * T = 0.7 under top_p 0.98 (three others at 0.009–0.012). The forged language has no such state
 * of its own: its rows are flat (the 76 tokens after "the" top out at 0.029), where a bias of
 * that shape hides in the noise. Draft and target still disagree there (Σ min(p, q) ≈ 0.8 and
 * 0.44), and the next state is flat again.
 */
function peaked(temperature: 1 | 0.7): { prompt: number[]; sampling: SamplingParams } {
  const sail = base.tokenOf(" sail");
  const logitBias = new Map([[base.argmax(sail), temperature === 1 ? 3.3 : 1.5]]);
  const sampling: SamplingParams = temperature === 1 ? { ...DEFAULT_SAMPLING, logitBias } : { ...DEFAULT_SAMPLING, temperature: 0.7, topP: 0.98, logitBias };
  return { prompt: [manifest.vocab.bos, sail], sampling };
}

/**
 * `exact` with `tv` of probability moved to its most likely token from the others (in
 * proportion): the shape of the old default's bias, which withdrew unlikely candidates.
 */
function towardsTop(exact: Float64Array, tv: number): Float64Array {
  let top = 0;
  exact.forEach((p, t) => (top = p > exact[top] ? t : top));
  const rest = 1 - exact[top];
  return exact.map((p, t) => (t === top ? p + tv : p - (tv * p) / rest));
}

/**
 * The first two tokens after `prompt`, over `decodes` seeded decodes, against the target's
 * exact distributions (the second's averaged over the first); and what the pipeline's rounds
 * did meanwhile.
 */
async function firstTwo(pipeline: SpeculativePipeline, sampling: SamplingParams, overrides: SpeculativeOverrides | undefined, decodes: number, prompt = sailorPrompt()) {
  const first = new Map<number, number>();
  const second = new Map<number, number>();
  const lengths = new Set<number>();
  const declined = pipeline.stats.declinedBeforeDraw;
  const skipped = pipeline.stats.skippedRounds;
  const [drafted, accepted] = [pipeline.stats.draftTokens, pipeline.stats.acceptedTokens];
  for (let seed = 0; seed < decodes; seed++) {
    const tokens: number[] = [];
    for await (const step of pipeline.generate(request(prompt, { sampling, seed: 20_000 + seed, maxTokens: 10, speculative: overrides }))) {
      lengths.add(step.speculative!.drafted);
      tokens.push(...step.tokens);
      if (tokens.length >= 2) break;
    }
    first.set(tokens[0], (first.get(tokens[0]) ?? 0) + 1);
    second.set(tokens[1], (second.get(tokens[1]) ?? 0) + 1);
  }
  const exactFirst = sampled(base.next(prompt.at(-1)!), sampling);
  const exactSecond = new Float64Array(exactFirst.length);
  exactFirst.forEach((p, t) => {
    if (p > 0 && t !== base.eos) sampled(base.next(t), sampling).forEach((q, u) => (exactSecond[u] += p * q));
  });
  const rejected = pipeline.stats.draftTokens - drafted - (pipeline.stats.acceptedTokens - accepted);
  return {
    first: goodnessOfFit(first, exactFirst),
    second: goodnessOfFit(second, exactSecond),
    counts: first,
    exactFirst,
    lengths,
    declined: pipeline.stats.declinedBeforeDraw - declined,
    skipped: pipeline.stats.skippedRounds - skipped,
    rejected,
  };
}

/** p with the logit bias, at temperature T, truncated to the nucleus top_p and renormalised (as the sampler does). */
function sampled(p: Float64Array, sampling: SamplingParams): Float64Array {
  const scaled = [...p].map((x, t) => (x > 0 ? (x * Math.exp(sampling.logitBias.get(t) ?? 0)) ** (1 / sampling.temperature) : 0));
  const total = scaled.reduce((a, b) => a + b, 0);
  const order = scaled.map((x, i) => [x / total, i] as const).filter(([x]) => x > 0).sort((a, b) => b[0] - a[0] || a[1] - b[1]);
  const out = new Float64Array(p.length);
  let mass = 0;
  for (const [x, i] of order) {
    out[i] = x;
    mass += x;
    if (mass >= sampling.topP) break;
  }
  return out.map((x) => x / mass);
}

describe("temperature 0", () => {
  it.each(POLICIES)("output is identical to target-only decoding, token for token (%o)", async (policy) => {
    for (const prompt of prompts()) {
      const req = request(prompt, { sampling: greedy, maxTokens: 24 });
      const expected = await collect(plain, req);
      const got = await collect(spec, { ...req, speculative: policy });
      expect(got.tokens).toEqual(expected.tokens);
      expect(got.text).toBe(expected.text);
      expect(got.finish).toBe(expected.finish);
      // Seeded (keyed noise, coupled verification): temperature 0 uses no noise, the argmax stays.
      const seeded = await collect(spec, { ...req, seed: 4242, keyedNoise: true, speculative: policy });
      expect(seeded.steps.every((s) => s.speculative!.verification === "coupled")).toBe(true);
      expect(seeded.tokens).toEqual(expected.tokens);
      expect(seeded.text).toBe(expected.text);
      expect(seeded.finish).toBe(expected.finish);
    }
  });

  it("the default policy declines positions before their draw by P̂ at the draft's argmax; the output stays the target's", async () => {
    // At T = 0 the candidate is the draft's argmax, known before the draw: the expectation the
    // cost-aware rule weighs is P̂ there (expectedOverTop's greedy case), not E_q over q's tokens.
    const run = async (policy?: SpeculativeOverrides) => {
      const before = { declined: specPinned.stats.declinedBeforeDraw, drafted: specPinned.stats.draftTokens, accepted: specPinned.stats.acceptedTokens };
      for (const prompt of prompts().slice(0, 60)) {
        const req = request(prompt, { sampling: greedy, maxTokens: 24 });
        const expected = await collect(plain, req);
        expect((await collect(specPinned, { ...req, speculative: policy })).tokens).toEqual(expected.tokens);
      }
      const drafted = specPinned.stats.draftTokens - before.drafted;
      return { declined: specPinned.stats.declinedBeforeDraw - before.declined, drafted, acceptance: (specPinned.stats.acceptedTokens - before.accepted) / drafted };
    };
    const auto = await run();
    const fixed = await run({ policy: "fixed", k: 3 });
    expect(auto.declined).toBeGreaterThan(10);
    expect(auto.drafted).toBeGreaterThan(100);
    expect(fixed.declined).toBe(0);
    // What it declines are the likely misses: its candidates are accepted more often than fixed K's.
    expect(auto.acceptance).toBeGreaterThan(fixed.acceptance + 0.05);
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
  async function transitions(sampling: SamplingParams, policy: SpeculativeOverrides, runs: number, exercised?: { lengths: Set<number>; rejections: number }) {
    const byState = new Map<number, Map<number, number>>();
    const all = prompts();
    for (let r = 0; r < runs; r++) {
      const prompt = all[r % all.length];
      const { tokens, steps } = await collect(spec, request(prompt, { sampling, seed: 7000 + r, maxTokens: 48, speculative: policy }));
      for (const { speculative: round } of steps) {
        if (!exercised) break;
        exercised.lengths.add(round!.drafted);
        if (round!.accepted < round!.drafted) exercised.rejections++;
      }
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
    const exercised = { lengths: new Set<number>(), rejections: 0 };
    const byState = await transitions(DEFAULT_SAMPLING, { policy: "specdec++", threshold: 0.7 }, 400, exercised);
    const fit = pooledFit(byState, (token) => base.next(token));
    expect(fit.dof).toBeGreaterThan(50);
    expect(fit.outside).toBe(0);
    expect(fit.pValue).toBeGreaterThan(1e-4);
    // The threshold rule stopped after draws at several lengths, and the target rejected candidates.
    expect(exercised.lengths.size).toBeGreaterThan(2);
    expect(exercised.rejections).toBeGreaterThan(100);
  });

  it("and with top_k and top_p applied to both target and draft (fixed K = 4)", async () => {
    const sampling: SamplingParams = { ...DEFAULT_SAMPLING, temperature: 0.9, topK: 5, topP: 0.8 };
    const exercised = { lengths: new Set<number>(), rejections: 0 };
    const byState = await transitions(sampling, { policy: "fixed", k: 4 }, 300, exercised);
    // Rounds of four candidates ran, and the target rejected some of them.
    expect(exercised.lengths.has(4)).toBe(true);
    expect(exercised.rejections).toBeGreaterThan(20);
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

  // The policies whose decisions read P̂ or q: the default (automatic threshold, online
  // predictor, calibrated at load) at temperature 1 and at 0.7 with top_p, SpecDec++'s fixed
  // threshold and its automatic rule over P̂ = q(y), and the confidence rule; and the default
  // where drafting does not pay, which skips rounds. On a peaked first token (peaked()), 3,000
  // decodes: each test shows that a bias of the size and shape the old default had (first-token
  // total variation 0.02, mass moved from the unlikely tokens to the likely one) fails it, and
  // what its run exercised: rejections, rounds of several lengths (stops after a draw),
  // positions declined before their draw (the rules that decline any), skipped rounds.
  const DECODES = 3000;
  it.for([
    ["the default policy (SpecDec++ auto, online predictor), T = 1", () => specPinned, undefined, 1],
    ["the default policy, T = 0.7, top_p 0.98", () => specPinned, undefined, 0.7],
    ["SpecDec++ h = 0.5 with P̂ = q(y), T = 1", () => specDraftConfidence, { policy: "specdec++", threshold: 0.5 }, 1],
    ["SpecDec++ auto with P̂ = q(y), T = 1", () => specDraftConfidence, { policy: "specdec++", threshold: "auto" }, 1],
    ["SpecDec++ auto with P̂ = q(y), T = 0.7, top_p 0.98", () => specDraftConfidence, { policy: "specdec++", threshold: "auto" }, 0.7],
    ["the confidence rule, T = 0.7, top_p 0.98", () => spec, { policy: "confidence", pMin: 0.38 }, 0.7],
    ["the default policy where drafting does not pay (it skips rounds), T = 1", () => specUnpaid, undefined, 1],
  ] as const)("%s: the first two tokens follow the target's distributions", async ([name, pipeline, overrides, temperature]) => {
    const { prompt, sampling } = peaked(temperature);
    const run = await firstTwo(pipeline(), sampling, overrides, DECODES, prompt);
    for (const fit of [run.first, run.second]) {
      expect(fit.outsideSupport).toBe(0);
      expect(fit.pValue).toBeGreaterThan(1e-4);
    }
    expect(run.first.degreesOfFreedom).toBeGreaterThanOrEqual(3);
    // The power to see the bug: the same counts against the target off by 0.02 in its shape fail.
    expect(goodnessOfFit(run.counts, towardsTop(run.exactFirst, 0.02)).pValue).toBeLessThan(1e-4);
    expect(run.rejected).toBeGreaterThan(20);
    expect(run.lengths.size).toBeGreaterThan(1);
    if (!(overrides && "threshold" in overrides && overrides.threshold !== "auto")) expect(run.declined).toBeGreaterThan(10);
    if (name.includes("skips")) expect(run.skipped).toBeGreaterThan(100);
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
    for (const sampling of [greedy, DEFAULT_SAMPLING]) {
      for (const policy of [{ policy: "specdec++", threshold: 0.5 }, { policy: "fixed", k: 4 }] as const) {
        // Prompts until a rejection has been accounted for (at T = 1 one prompt may hold none).
        let recovered = 0;
        for (const text of ["The sailor ties the", "The baker heats the", "The"]) {
          if (recovered > 0) break;
          const req = request([manifest.vocab.bos, ...base.promptTokens(text)], { sampling, seed: 5, maxTokens: 40 });
          const without = await collect(contextual, { ...req, speculative: policy });
          const got = await collect(contextual, { ...req, speculative: { ...policy, detail: true } });
          // Detail is an account, not a change: same tokens, same text (SpecDec++'s online predictor
          // learns between the two requests, so its rounds, and hence sampled draws, may differ).
          if (sampling === greedy || policy.policy === "fixed") {
            expect(got.tokens).toEqual(without.tokens);
            expect(got.text).toBe(without.text);
          }
          expect(without.steps.every((s) => s.speculative!.detail === undefined)).toBe(true);

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
                // The text it would have written: none for an end-of-generation token.
                expect(d.rejected!.text).toBe(d.rejected!.token === base.eos ? "" : base.text(d.rejected!.token));
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
        }
        expect(recovered).toBeGreaterThan(0); // the contextual pair disagrees often enough
      }
    }
  });
});

/** A file of `count` prompts: the first words of sentences of the forge's language, domains in turn. */
function languagePrompts(count: number): string {
  const rng = createRng(11);
  const prompts = Array.from({ length: count }, (_, i) => renderText([document(rng, [DOMAINS[i % DOMAINS.length]], 1)[0].slice(0, 2 + (i % 3))]));
  const file = join(mkdtempSync(join(tmpdir(), "flock-prompts-")), "prompts.txt");
  writeFileSync(file, prompts.join("\n"));
  return file;
}

describe("the SpecDec++ authors' head", () => {
  // The embedding view tells tokens apart without the draft's context, so it needs more rollouts:
  // longer ones, from 96 prompts in the language's words (with the 12 built-in prompts its
  // held-out loss beat the best constant for some rollout seeds only).
  it.for([
    ["the hidden state at the candidate (the authors' input)", "hidden", []],
    ["the candidate's token embedding", "embedding", ["--tokens", "256", "--prompts", languagePrompts(96)]],
  ] as const)("npm run train:acceptance trains a head that reads %s; served with it, greedy output is still the target's", async ([, view, extra], ctx) => {
    if (!engine.capabilities.hiddenStates) ctx.skip();
    const { spawnSync } = await import("node:child_process");
    const dir = mkdtempSync(join(tmpdir(), "flock-head-"));
    try {
      const out = join(dir, "head.json");
      const root = join(import.meta.dirname, "..");
      const run = spawnSync(
        join(root, "node_modules", ".bin", "tsx"),
        [
          "tools/train-acceptance.ts",
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

      // Sampled under the default rule (automatic threshold, on the pinned GPU-like costs): the
      // head's P̂ decides after each draw, and before each draw its expectation (embedding view)
      // or its last prediction (hidden view); the first two tokens keep the target's distribution.
      pipeline.costs.observeDraftStep = () => {};
      pipeline.costs.observeTargetPass = () => {};
      await pipeline.costs.calibrate(async () => 0.1, async (n) => 1 + 0.05 * n, 16, 1);
      const sampledRun = await firstTwo(pipeline, DEFAULT_SAMPLING, { policy: "specdec++", threshold: "auto" }, 1000);
      for (const fit of [sampledRun.first, sampledRun.second]) expect(fit.pValue).toBeGreaterThan(1e-4);
      expect(sampledRun.rejected).toBeGreaterThan(20);
      expect(sampledRun.lengths.size).toBeGreaterThan(1);
      // At T = 0.7 with top_p as well. The embedding view's expectation E_q[P̂] declines
      // positions before their draw; the hidden view has no expectation before a draw (it judges
      // the next position by the last P̂, as the step after that draw already did), so its
      // rounds end after draws.
      const cooler = await firstTwo(pipeline, { ...DEFAULT_SAMPLING, temperature: 0.7, topP: 0.9 }, { policy: "specdec++", threshold: "auto" }, 1000);
      for (const fit of [cooler.first, cooler.second]) expect(fit.pValue).toBeGreaterThan(1e-4);
      expect(cooler.rejected).toBeGreaterThan(20);
      expect(cooler.lengths.size).toBeGreaterThan(1);
      if (view === "embedding") expect(cooler.declined).toBeGreaterThan(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("refuses a head whose hidden size does not match the draft", async (ctx) => {
    if (!engine.capabilities.hiddenStates) ctx.skip();
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
