// The fusion decoder (decoding/fusion/decoder.ts) driven through the fake engine: a strong model,
// a base and an expert that are Markov chains over three tokens, so the fused distribution of
// every step is known in closed form — softmax(log s + α (log e − log b)).
import { describe, expect, it } from "vitest";
import { type FusionSetup, FusionStats, fusionDecode } from "../../../../decoding/fusion/decoder.js";
import type { FusionSettings } from "../../../../decoding/fusion/config.js";
import type { DecodeStep, GenerationRequest } from "../../../../decoding/types.js";
import { argmax, ChainModel, chainRequest } from "../../../helpers/fake-engine.js";
import { goodnessOfFit } from "../../../helpers/goodness.js";

// Greedy paths differ: the strong chain goes 0→1→2→0…, the fused (α = 1) one does not.
const STRONG = [
  [0.2, 0.5, 0.3],
  [0.3, 0.2, 0.5],
  [0.6, 0.1, 0.3],
];
const BASE = [
  [0.3, 0.4, 0.3],
  [0.4, 0.3, 0.3],
  [0.5, 0.2, 0.3],
];
const EXPERT = [
  [0.6, 0.2, 0.2],
  [0.1, 0.8, 0.1],
  [0.2, 0.2, 0.6],
];
const PROMPT = [2];

/** The fused next-token distribution after `token`, in closed form. */
function fused(token: number, alpha: number, expert = EXPERT): number[] {
  const w = STRONG[token].map((s, i) => s * (expert[token][i] / BASE[token][i]) ** alpha);
  const z = w.reduce((a, b) => a + b, 0);
  return w.map((x) => x / z);
}

function setup(mode: FusionSettings["mode"], alpha: number, expertRows = EXPERT): FusionSetup & { models: ChainModel[] } {
  const strong = new ChainModel("strong", STRONG);
  const base = new ChainModel("base", BASE);
  const expert = new ChainModel("expert", expertRows);
  return {
    strong,
    base,
    experts: [{ name: "e", model: expert }],
    settings: { mode, alpha, grid: { max: 2, step: 0.1 }, supportMargin: null },
    stats: new FusionStats(),
    models: [strong, base, expert],
  };
}

async function collect(gen: AsyncGenerator<DecodeStep>): Promise<DecodeStep[]> {
  const steps: DecodeStep[] = [];
  for await (const step of gen) steps.push(step);
  return steps;
}

/** Every step's reported distribution (top logprobs over the whole vocabulary), by token id. */
function reported(steps: DecodeStep[]): number[][] {
  return steps.map((step) => {
    const row = [0, 0, 0];
    for (const t of step.logprobs![0].top) row[t.token] = Math.exp(t.logprob);
    return row;
  });
}

const greedy = (maxTokens: number): GenerationRequest => chainRequest(PROMPT, maxTokens, { temperature: 0 }, { topLogprobs: 3 });

describe("fusion decoder on a fake engine", () => {
  it("static α = 0 is the strong model: its distributions at every step, its greedy path", async () => {
    const s = setup("static", 0);
    const steps = await collect(fusionDecode(s, greedy(6)));
    const tokens = steps.flatMap((step) => step.tokens);
    const path: number[] = [];
    for (let last = PROMPT[0]; path.length < 6; ) path.push((last = argmax(STRONG[last])));
    expect(tokens).toEqual(path);
    const contexts = [PROMPT[0], ...tokens.slice(0, -1)];
    reported(steps).forEach((row, i) => row.forEach((p, t) => expect(p).toBeCloseTo(STRONG[contexts[i]][t], 6)));
    expect(steps.at(-1)!.finishReason).toBe("length");
    expect(steps.every((step) => step.fusion![0].alpha === 0)).toBe(true);
    expect(s.models.map((m) => m.held)).toEqual([0, 0, 0]); // every sequence given back
  });

  it("static α = 1 fuses softmax(log s + log e − log b), and greedy follows the fused chain", async () => {
    const s = setup("static", 1);
    const steps = await collect(fusionDecode(s, greedy(6)));
    const tokens = steps.flatMap((step) => step.tokens);
    const path: number[] = [];
    for (let last = PROMPT[0]; path.length < 6; ) path.push((last = argmax(fused(last, 1))));
    expect(tokens).toEqual(path);
    const strongPath: number[] = [];
    for (let last = PROMPT[0]; strongPath.length < 6; ) strongPath.push((last = argmax(STRONG[last])));
    expect(path).not.toEqual(strongPath); // the expert changed the text: α was applied
    const contexts = [PROMPT[0], ...tokens.slice(0, -1)];
    reported(steps).forEach((row, i) => row.forEach((p, t) => expect(p).toBeCloseTo(fused(contexts[i], 1)[t], 6)));
    expect(s.stats.steps).toBe(6);
    expect(s.stats.chosen.get("e")).toBe(6);
  });

  it("an expert equal to the base shifts nothing, whatever α", async () => {
    const steps = await collect(fusionDecode(setup("static", 2, BASE), greedy(4)));
    const contexts = [PROMPT[0], ...steps.flatMap((step) => step.tokens).slice(0, -1)];
    reported(steps).forEach((row, i) => row.forEach((p, t) => expect(p).toBeCloseTo(STRONG[contexts[i]][t], 6)));
  });

  it("at T = 1 the first token is drawn from the fused distribution (chi-square, with power)", async () => {
    const N = 20_000;
    for (const alpha of [0, 1]) {
      const s = setup("static", alpha);
      const counts = new Map<number, number>();
      for (let seed = 0; seed < N; seed++) {
        const [step] = await collect(fusionDecode(s, { ...chainRequest(PROMPT, 1), seed }));
        counts.set(step.tokens[0], (counts.get(step.tokens[0]) ?? 0) + 1);
      }
      const fit = goodnessOfFit(counts, Float64Array.from(fused(PROMPT[0], alpha)));
      expect(fit.outsideSupport).toBe(0);
      expect(fit.pValue).toBeGreaterThan(1e-4);
      // The same counts reject the other α's distribution: the test can tell them apart.
      expect(goodnessOfFit(counts, Float64Array.from(fused(PROMPT[0], 1 - alpha))).pValue).toBeLessThan(1e-6);
    }
  });

  it("a request's α overrides the configured one", async () => {
    const steps = await collect(fusionDecode(setup("static", 0), { ...greedy(3), fusion: { alpha: 1 } }));
    expect(steps.every((step) => step.fusion![0].alpha === 1)).toBe(true);
    const contexts = [PROMPT[0], ...steps.flatMap((step) => step.tokens).slice(0, -1)];
    reported(steps).forEach((row, i) => row.forEach((p, t) => expect(p).toBeCloseTo(fused(contexts[i], 1)[t], 6)));
  });
});
