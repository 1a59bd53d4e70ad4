// Seed semantics through the server and the official client: a request with a seed draws every
// token with keyed noise (decoding/noise.ts), so its text and logprobs are the same with the
// draft on or off, under every candidate-length policy, streamed or not, alone or among
// concurrent requests, and per choice for n > 1 — speculative requests are then verified by
// coupled noise, which the response extension and /metrics report. Fused and routed models
// reproduce too.
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Manifest } from "../forge/manifest.js";
import { forgedManifest, forgedPath, startTestServer, type TestServer } from "./helpers/server.js";

let t: TestServer;
let manifest: Manifest;

beforeAll(async () => {
  manifest = forgedManifest();
  const demo = forgedPath(manifest.models["flock-demo"].file);
  const routingAdapters = Object.values(manifest.adapters).filter((a) => a.base === "flock-routing-base");
  t = await startTestServer({
    models: [
      { id: "flock-demo", path: demo, parallel: 4 },
      { id: "spec", path: demo, parallel: 4, speculative: { draft: forgedPath(manifest.models["flock-demo-draft"].file) } },
      {
        id: "fused",
        path: demo,
        parallel: 2,
        fusion: { base: forgedPath(manifest.models["flock-weak"].file), experts: [{ name: "kitchen", lora: forgedPath(manifest.adapters["flock-weak-kitchen"].file) }] },
      },
      {
        id: "routing",
        path: forgedPath(manifest.models["flock-routing-base"].file),
        parallel: 2,
        experts: { library: routingAdapters.map((a) => ({ name: a.domain, lora: forgedPath(a.file), gates: forgedPath(a.gates!) })), methods: ["phatgoose"] },
      },
    ],
  });
});
afterAll(() => t?.close());

type Extended = OpenAI.Completion & { flock?: { speculative?: { verification?: string; drafted_tokens: number; accepted_tokens: number } } };

const PROMPT = "The sailor ties the";
const SAMPLINGS = [
  { temperature: 1 },
  { temperature: 0.7, top_p: 0.9, presence_penalty: 0.5, frequency_penalty: 0.3 },
];
const POLICIES = [undefined, { policy: "fixed", k: 1 }, { policy: "fixed", k: 4 }, { policy: "confidence", p_min: 0.3 }, { policy: "specdec++", threshold: 0.5 }];

async function complete(body: Record<string, unknown>): Promise<Extended> {
  return (await t.client.completions.create({ prompt: PROMPT, max_tokens: 24, logprobs: 2, ...body } as unknown as OpenAI.CompletionCreateParamsNonStreaming)) as Extended;
}

async function streamed(body: Record<string, unknown>): Promise<string> {
  const stream = await t.client.completions.create({ prompt: PROMPT, max_tokens: 24, stream: true, ...body } as unknown as OpenAI.CompletionCreateParamsStreaming);
  let text = "";
  for await (const chunk of stream) text += chunk.choices[0]?.text ?? "";
  return text;
}

function expectSameTokens(a: OpenAI.Completion, b: OpenAI.Completion, what: string): void {
  expect(b.choices[0].text, what).toBe(a.choices[0].text);
  const [la, lb] = [a.choices[0].logprobs!, b.choices[0].logprobs!];
  expect(lb.tokens, what).toEqual(la.tokens);
  lb.token_logprobs!.forEach((lp, i) => expect(lp, what).toBeCloseTo(la.token_logprobs![i], 5));
}

describe("a seeded request reproduces", () => {
  it.for(SAMPLINGS)("with the draft on or off, under every policy, streamed or not (%o)", async (sampling) => {
    let drafted = 0;
    let rejected = 0;
    for (const seed of [7, 42, 123456789012]) {
      const reference = await complete({ model: "flock-demo", seed, ...sampling });
      expect(reference.choices[0].logprobs!.tokens!.length).toBeGreaterThan(1);
      expectSameTokens(reference, await complete({ model: "spec", seed, ...sampling, flock: { speculative: { enabled: false } } }), "draft off");
      for (const policy of POLICIES) {
        const res = await complete({ model: "spec", seed, ...sampling, ...(policy ? { flock: { speculative: policy } } : {}) });
        expectSameTokens(reference, res, JSON.stringify(policy ?? "default"));
        expect(res.flock!.speculative!.verification).toBe("coupled");
        drafted += res.flock!.speculative!.drafted_tokens;
        rejected += res.flock!.speculative!.drafted_tokens - res.flock!.speculative!.accepted_tokens;
      }
      expect(await streamed({ model: "spec", seed, ...sampling, flock: { speculative: { policy: "fixed", k: 3 } } })).toBe(reference.choices[0].text);
      expect(await streamed({ model: "flock-demo", seed, ...sampling })).toBe(reference.choices[0].text);
    }
    // The draft proposed, and the target refused some of it: the texts agree for a reason.
    expect(drafted).toBeGreaterThan(50);
    expect(rejected).toBeGreaterThan(5);
  });

  it("under concurrent load: the same seed gives the same text beside other requests", async () => {
    const seeded = { model: "spec", seed: 99, temperature: 1, flock: { speculative: { policy: "fixed", k: 4 } } };
    const alone = await complete(seeded);
    const noise = Array.from({ length: 6 }, (_, i) => complete({ model: i % 2 ? "spec" : "flock-demo", seed: 1000 + i, temperature: 1 }));
    const together = await Promise.all([complete(seeded), complete(seeded), ...noise, complete({ ...seeded, model: "flock-demo", flock: undefined })]);
    for (const res of [together[0], together[1], together.at(-1)!]) expectSameTokens(alone, res, "concurrent");
  });

  it("per choice for n = 2: each choice reproduces, on its own noise", async () => {
    const body = { model: "spec", seed: 5, temperature: 1, n: 2, flock: { speculative: { policy: "fixed", k: 2 } } };
    const [a, b] = [await complete(body), await complete({ ...body, model: "flock-demo", flock: undefined })];
    for (const i of [0, 1]) expect(b.choices[i].text).toBe(a.choices[i].text);
    expect(a.choices[0].text).not.toBe(a.choices[1].text);
  });

  it("fused and routed models reproduce a seeded request", async () => {
    for (const model of ["fused", "routing+phatgoose"]) {
      const body = { model, seed: 11, temperature: 1 };
      expectSameTokens(await complete(body), await complete(body), model);
    }
  });

  it("a fused model at static α = 0 fuses nothing: its seeded text and logprobs are its strong model's (flock-demo's)", async () => {
    let moved = 0;
    for (const seed of [11, 12, 13]) {
      for (const sampling of SAMPLINGS) {
        const reference = await complete({ model: "flock-demo", seed, ...sampling });
        expect(reference.choices[0].logprobs!.tokens!.length).toBeGreaterThan(3);
        expectSameTokens(reference, await complete({ model: "fused", seed, ...sampling, flock: { fusion: { mode: "static", alpha: 0 } } }), `α = 0, seed ${seed}`);
        // The same request at α = 1 fuses the expert in: a different text (the equality above is not vacuous).
        const fused = await complete({ model: "fused", seed, ...sampling, flock: { fusion: { mode: "static", alpha: 1 } } });
        if (fused.choices[0].text !== reference.choices[0].text) moved++;
      }
    }
    expect(moved).toBeGreaterThan(0);
  });

  it("a routed model's keyed noise follows the absolute position: the prompt extended by the first k tokens continues identically", async () => {
    let checked = 0;
    for (let seed = 21; seed < 41 && checked < 3; seed++) {
      const full = await complete({ model: "routing+phatgoose", seed, temperature: 1 });
      const tokens = full.choices[0].logprobs!.tokens!;
      if (tokens.length < 8) continue; // ended too soon to cut
      checked++;
      for (const k of [1, 5]) {
        const head = tokens.slice(0, k).join("");
        const rest = await complete({ model: "routing+phatgoose", seed, temperature: 1, prompt: PROMPT + head, max_tokens: 24 - k });
        expect(rest.choices[0].logprobs!.tokens, `seed ${seed}, k ${k}`).toEqual(tokens.slice(k));
      }
    }
    expect(checked).toBe(3);
    // A different seed gives a different text: the noise is live.
    const [a, b] = await Promise.all([complete({ model: "routing+phatgoose", seed: 21, temperature: 1 }), complete({ model: "routing+phatgoose", seed: 23, temperature: 1 })]);
    expect(a.choices[0].text).not.toBe(b.choices[0].text);
  });

  it("the whole seed keys the noise: s and s + 2^32 give different texts, each reproducible, with the draft or without", async () => {
    for (const seed of [7, 42, 2 ** 40 + 3]) {
      const low = await complete({ model: "flock-demo", seed, temperature: 1 });
      const high = await complete({ model: "flock-demo", seed: seed + 2 ** 32, temperature: 1 });
      expect(high.choices[0].text, `seed ${seed}`).not.toBe(low.choices[0].text);
      expectSameTokens(high, await complete({ model: "spec", seed: seed + 2 ** 32, temperature: 1 }), `seed ${seed} + 2^32 on the speculative model`);
    }
  });
});

describe("which verification served a request", () => {
  it("seeded requests are coupled, unseeded ones use the model's mode (rejection sampling); /metrics counts rounds by mode", async () => {
    const unseeded = await complete({ model: "spec", temperature: 1, flock: { speculative: { policy: "fixed", k: 3 } } });
    expect(unseeded.flock!.speculative!.verification).toBe("rejection");
    const asked = await complete({ model: "spec", seed: 3, temperature: 1, flock: { speculative: { policy: "fixed", k: 3, verification: "rejection" } } });
    expect(asked.flock!.speculative!.verification).toBe("rejection");
    const metrics = await (await fetch(`${t.url}/metrics`)).text();
    for (const mode of ["rejection", "coupled"]) {
      const line = metrics.split("\n").find((l) => l.startsWith(`flock_spec_decode_num_rounds_total{model_name="spec",verification="${mode}"}`));
      expect(Number(line?.split(" ").at(-1))).toBeGreaterThan(0);
    }
  });
});
