// Routed decoding (experts/routed.ts routedDecode) driven through the fake engine: each variant
// context the routing plan asks for is a Markov chain of its own, so the test sees which context
// served the request, that the emitted tokens follow that context's distribution (argmax at
// T = 0, chi-square with power at T = 1), and that each token's routing report is the trace of
// the position behind it.
import { describe, expect, it } from "vitest";
import type { ExpertLibrary } from "../../../experts/library.js";
import { routedDecode, type RoutedSetup, VariantCache, type VariantSpec } from "../../../experts/routed.js";
import type { RoutingOverrides } from "../../../experts/config.js";
import type { DecodeStep, GenerationRequest } from "../../../decoding/types.js";
import type { LoadedModel } from "../../../engine/model.js";
import { argmax, ChainModel, chainRequest } from "../../helpers/fake-engine.js";
import { goodnessOfFit } from "../../helpers/goodness.js";

const MODULE = "blk.0.attn_q.weight";
const WIDTH = 2;
const CHAINS: Record<string, number[][]> = {
  // routed LoRA (both experts, mixed per token by the engine)
  routed: [
    [0.1, 0.7, 0.2],
    [0.2, 0.1, 0.7],
    [0.7, 0.2, 0.1],
  ],
  a: [
    [0.8, 0.1, 0.1],
    [0.8, 0.1, 0.1],
    [0.8, 0.1, 0.1],
  ],
  b: [
    [0.1, 0.1, 0.8],
    [0.1, 0.1, 0.8],
    [0.1, 0.1, 0.8],
  ],
  merge: [
    [0.2, 0.2, 0.6],
    [0.6, 0.2, 0.2],
    [0.2, 0.6, 0.2],
  ],
};
const PROMPT = [0];

const expert = (name: string) => ({
  spec: { name, lora: `${name}.gguf`, scale: 1 },
  modules: [MODULE],
  phatgoose: null,
  arrow: new Map([[MODULE, Float32Array.from({ length: WIDTH }, () => 1 / Math.sqrt(WIDTH))]]),
});
const experts = [expert("a"), expert("b")];
const library = {
  baseId: "base",
  version: 0,
  base: { modules: new Map([[MODULE, [WIDTH, 3]]]) },
  get size() {
    return experts.length;
  },
  list: () => [...experts],
  get: (name: string) => experts.find((e) => e.spec.name === name),
} as unknown as ExpertLibrary;

/**
 * The engine's routing trace at a position: after token 0 expert a takes 0.9, else b does (one
 * module, softmax over the two experts).
 */
const trace = (token: number) => ({ probabilities: Float32Array.from(token === 0 ? [0.9, 0.1] : [0.1, 0.9]), modules: [MODULE] });

function routedSetup(): RoutedSetup & { loaded: VariantSpec[] } {
  const loaded: VariantSpec[] = [];
  const load = async (spec: VariantSpec) => {
    loaded.push(spec);
    const chain = spec.routing ? "routed" : spec.adapters.length > 1 ? "merge" : spec.adapters[0].path.replace(".gguf", "");
    return new ChainModel(chain, CHAINS[chain], spec.routing ? trace : undefined) as unknown as LoadedModel;
  };
  return { method: "arrow", library, settings: { topK: 1, temperature: 1 }, variants: new VariantCache(load, 4), loaded };
}

async function decode(setup: RoutedSetup, request: GenerationRequest, routing: RoutingOverrides): Promise<DecodeStep[]> {
  const steps: DecodeStep[] = [];
  for await (const step of routedDecode(setup, { ...request, routing })) steps.push(step);
  return steps;
}

const greedyPath = (rows: number[][], n: number) => {
  const path: number[] = [];
  for (let last = PROMPT[0]; path.length < n; ) path.push((last = argmax(rows[last])));
  return path;
};

describe("routed decoding on a fake engine", () => {
  it("routed: greedy follows the routed context's argmax; each token reports the trace behind it", async () => {
    const setup = routedSetup();
    const steps = await decode(setup, chainRequest(PROMPT, 6, { temperature: 0 }), { mode: "routed" });
    const tokens = steps.flatMap((s) => s.tokens);
    expect(tokens).toEqual(greedyPath(CHAINS.routed, 6));
    expect(setup.loaded).toHaveLength(1);
    expect(setup.loaded[0].routing).toMatchObject({ method: "arrow", topK: 1, trace: true, adapters: [{ path: "a.gguf" }, { path: "b.gguf" }] });
    // Token i was chosen from the logits after token i−1 (the prompt's last for the first).
    const behind = [PROMPT[0], ...tokens.slice(0, -1)];
    const reports = steps.flatMap((s) => s.routing!);
    expect(reports.map((r) => r!.experts)).toEqual(behind.map((t) => [{ expert: t === 0 ? "a" : "b", weight: 1 }]));
  });

  it("single and merge: the request runs on that adapter's context, reported at fixed weights", async () => {
    const setup = routedSetup();
    const single = await decode(setup, chainRequest(PROMPT, 4, { temperature: 0 }), { mode: "single", expert: "b" });
    expect(single.flatMap((s) => s.tokens)).toEqual(greedyPath(CHAINS.b, 4));
    expect(single.flatMap((s) => s.routing!)).toEqual(Array(4).fill({ experts: [{ expert: "b", weight: 1 }] }));
    const merge = await decode(setup, chainRequest(PROMPT, 4, { temperature: 0 }), { mode: "merge" });
    expect(merge.flatMap((s) => s.tokens)).toEqual(greedyPath(CHAINS.merge, 4));
    expect(setup.loaded.at(-1)!.adapters).toEqual([
      { path: "a.gguf", scale: 0.5 },
      { path: "b.gguf", scale: 0.5 },
    ]);
  });

  it("at T = 1 the first two tokens follow the routed context's chain (chi-square, with power)", async () => {
    const setup = routedSetup();
    const N = 20_000;
    const first = new Map<number, number>();
    const secondAfter1 = new Map<number, number>();
    for (let seed = 0; seed < N; seed++) {
      const steps = await decode(setup, { ...chainRequest(PROMPT, 2), seed }, { mode: "routed" });
      const [t1, t2] = steps.flatMap((s) => s.tokens);
      first.set(t1, (first.get(t1) ?? 0) + 1);
      if (t1 === 1) secondAfter1.set(t2, (secondAfter1.get(t2) ?? 0) + 1);
    }
    const fit = (counts: Map<number, number>, row: number[]) => goodnessOfFit(counts, Float64Array.from(row));
    expect(fit(first, CHAINS.routed[PROMPT[0]]).outsideSupport).toBe(0);
    expect(fit(first, CHAINS.routed[PROMPT[0]]).pValue).toBeGreaterThan(1e-4);
    expect(fit(secondAfter1, CHAINS.routed[1]).pValue).toBeGreaterThan(1e-4);
    // The same counts reject a neighbouring context's distribution.
    expect(fit(first, CHAINS.merge[PROMPT[0]]).pValue).toBeLessThan(1e-6);
    expect(fit(secondAfter1, CHAINS.merge[1]).pValue).toBeLessThan(1e-6);
  });
});
