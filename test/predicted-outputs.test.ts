// Predicted Outputs (chat's `prediction`) and prompt lookup (`lookup` in a model entry,
// `flock.lookup` in a request) through the OpenAI SDK on the forged models: the proposals are
// verified by the target, so the text is the target's own — identical for a seeded request with
// or without them — and usage reports how much of a prediction was accepted and rejected.
import type OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ChainOracle } from "./helpers/chain.js";
import { goodnessOfFit } from "./helpers/goodness.js";
import { forgedManifest, forgedPath, startTestServer, type TestServer } from "./helpers/server.js";

let t: TestServer;
beforeAll(async () => {
  const manifest = forgedManifest();
  const demo = forgedPath(manifest.models["flock-demo"].file);
  t = await startTestServer({
    models: [
      { id: "flock-demo", path: demo, parallel: 2 },
      { id: "spec", path: demo, parallel: 2, speculative: { draft: forgedPath(manifest.models["flock-demo-draft"].file) } },
      // Every offer proposed: whether one pays on this CPU is the cost rule's own test (test/unit/decoding/speculative/costs.test.ts).
      { id: "lookup", path: demo, parallel: 2, lookup: { minMatch: 1, maxCandidates: 6, priced: false } },
    ],
  });
});
afterAll(() => t?.close());

type Details = { accepted_prediction_tokens: number; rejected_prediction_tokens: number };
const chat = (extra: Partial<OpenAI.ChatCompletionCreateParamsNonStreaming>, model = "flock-demo") =>
  t.client.chat.completions.create({ model, messages: [{ role: "user", content: "Tell me about the harbor." }], max_tokens: 40, ...extra });
const details = (res: OpenAI.ChatCompletion) => res.usage!.completion_tokens_details as unknown as Details;

describe("prediction", () => {
  it("a prediction equal to the output: the same text, most of it accepted, none rejected", async () => {
    const plain = await chat({ temperature: 0 });
    const text = plain.choices[0].message.content!;
    const predicted = await chat({ temperature: 0, prediction: { type: "content", content: text } });
    expect(predicted.choices[0].message.content).toBe(text);
    expect(predicted.usage!.completion_tokens).toBe(plain.usage!.completion_tokens);
    expect(details(predicted).rejected_prediction_tokens).toBe(0);
    // Every generated token but the ones each round's verification adds itself came from the prediction.
    expect(details(predicted).accepted_prediction_tokens).toBeGreaterThan(plain.usage!.completion_tokens / 2);
    // Without a prediction, usage has no prediction details.
    expect(plain.usage!.completion_tokens_details).toBeUndefined();
  });

  // Whether the rest is proposed again after the divergence is the cost rule's call, which weighs
  // measured timings (on a loaded machine it may decline); the aligner's resynchronisation
  // itself is test/unit/decoding/speculative/prediction.test.ts's.
  it("a prediction that diverges halfway: the same text; the agreeing prefix is accepted, the diverging part rejected", async () => {
    const plain = await chat({ temperature: 0 });
    const text = plain.choices[0].message.content!;
    const words = text.split(" ");
    const half = Math.floor(words.length / 2);
    const diverging = [...words.slice(0, half), "sky", "comet", "star", ...words.slice(half)].join(" ");
    const predicted = await chat({ temperature: 0, prediction: { type: "content", content: [{ type: "text", text: diverging }] } });
    expect(predicted.choices[0].message.content).toBe(text);
    expect(details(predicted).rejected_prediction_tokens).toBeGreaterThan(0);
    expect(details(predicted).accepted_prediction_tokens).toBeGreaterThanOrEqual(half);
  });

  it("seeded requests at temperature 1 give the same text with any prediction, on a plain and on a speculative model", async () => {
    for (const model of ["flock-demo", "spec"]) {
      for (const seed of [1, 2, 3, 4, 5, 6]) {
        const plain = await chat({ temperature: 1, seed }, model);
        const other = await chat({ temperature: 1, seed: seed + 100 }, model);
        for (const prediction of [plain.choices[0].message.content!, other.choices[0].message.content!]) {
          const predicted = await chat({ temperature: 1, seed, prediction: { type: "content", content: prediction } }, model);
          expect(predicted.choices[0].message.content, `${model} seed ${seed}`).toBe(plain.choices[0].message.content);
        }
      }
    }
  });

  it("a speculative model with its draft turned off still speculates from a prediction", async () => {
    const off = { flock: { speculative: { enabled: false } } } as Partial<OpenAI.ChatCompletionCreateParamsNonStreaming>;
    const plain = await chat({ temperature: 0, ...off }, "spec");
    const text = plain.choices[0].message.content!;
    const predicted = await chat({ temperature: 0, ...off, prediction: { type: "content", content: text } }, "spec");
    expect(predicted.choices[0].message.content).toBe(text);
    expect(details(predicted).accepted_prediction_tokens).toBeGreaterThan(0);
    expect(details(predicted).rejected_prediction_tokens).toBe(0);
  });

  it("streams with usage carry the details; an empty prediction is plain decoding", async () => {
    // The output itself as the prediction, so the cost rule proposes it whatever earlier requests
    // taught it (a prediction the output rarely matches could be found not worth proposing).
    const text = (await chat({ temperature: 0, max_tokens: 12 })).choices[0].message.content!;
    const stream = await t.client.chat.completions.create({
      model: "flock-demo",
      messages: [{ role: "user", content: "Tell me about the harbor." }],
      temperature: 0,
      max_tokens: 12,
      stream: true,
      stream_options: { include_usage: true },
      prediction: { type: "content", content: text },
    });
    let usage: OpenAI.CompletionUsage | undefined;
    for await (const chunk of stream) if (chunk.usage) usage = chunk.usage;
    const d = usage!.completion_tokens_details as unknown as Details;
    expect(usage!.completion_tokens_details).toMatchObject({ reasoning_tokens: 0, audio_tokens: 0 });
    expect(d.accepted_prediction_tokens + d.rejected_prediction_tokens).toBeGreaterThan(0);
    const empty = await chat({ temperature: 0, prediction: { type: "content", content: "" } });
    expect(details(empty)).toMatchObject({ accepted_prediction_tokens: 0, rejected_prediction_tokens: 0 });
  });
});

describe("prompt lookup", () => {
  // A prompt that repeats a passage: the continuation is likely to repeat it again.
  const passage = "The captain pulls a wet net on the deck. The cook mixes the soup.";
  const prompt = `${passage} ${passage} ${passage}`;
  const complete = (model: string, extra: Record<string, unknown>) =>
    t.client.completions.create({ model, prompt, max_tokens: 40, ...extra } as OpenAI.CompletionCreateParamsNonStreaming) as Promise<OpenAI.Completion & { flock?: { speculative?: { drafted_tokens: number; accepted_tokens: number } } }>;

  it("a model entry's lookup proposes from the text; seeded text is the same as without it", async () => {
    let accepted = 0;
    for (const seed of [1, 2, 3, 4]) {
      const plain = await complete("flock-demo", { temperature: 1, seed });
      const looked = await complete("lookup", { temperature: 1, seed });
      expect(looked.choices[0].text, `seed ${seed}`).toBe(plain.choices[0].text);
      expect(looked.flock?.speculative?.drafted_tokens, "the lookup proposed").toBeGreaterThan(0);
      expect(plain.flock).toBeUndefined();
      accepted += looked.flock!.speculative!.accepted_tokens;
    }
    // Some proposals were right (the passage repeats): verification accepted them.
    expect(accepted).toBeGreaterThan(0);
  });

  it("a request turns it on or off (flock.lookup), on plain and speculative models; greedy text is unchanged", async () => {
    for (const model of ["flock-demo", "spec"]) {
      const base = await complete(model, { temperature: 0, flock: { speculative: model === "spec" ? { enabled: false } : undefined } });
      // Every offer proposed (priced: false): whether an offer pays on this CPU is the cost rule's test.
      const looked = await complete(model, { temperature: 0, flock: { lookup: { enabled: true, min_match: 1, priced: false } } });
      expect(looked.choices[0].text, model).toBe(base.choices[0].text);
      expect(looked.flock?.speculative?.drafted_tokens, model).toBeGreaterThan(0);
    }
    const off = await complete("lookup", { temperature: 0, flock: { lookup: { enabled: false } } });
    expect(off.flock).toBeUndefined();
    expect((await complete("lookup", { temperature: 0 })).choices[0].text).toBe(off.choices[0].text);
  });
});

describe("text proposals at temperature 1 through the server: rejection sampling of one-hot proposals keeps the target's distribution", () => {
  // The passage repeats, so lookup (min_match 1) proposes " wet net on …" after " a"; the
  // prediction proposes the same from the first position.
  const prompt = "The captain pulls a wet net on the deck. The captain pulls a";
  type Counted = OpenAI.Completion & { flock?: { speculative?: { drafted_tokens: number; accepted_tokens: number } } };

  /** First tokens of `requests` unseeded requests of n = 8 (verified by rejection sampling), and how the proposals fared. */
  async function firstTokens(model: string, extra: Record<string, unknown>, requests: number) {
    const counts = new Map<number, number>();
    let drafted = 0;
    let accepted = 0;
    for (let i = 0; i < requests; i++) {
      const res = (await t.client.completions.create({ model, prompt, max_tokens: 2, n: 8, temperature: 1, logprobs: 0, ...extra } as OpenAI.CompletionCreateParamsNonStreaming)) as Counted;
      for (const choice of res.choices) {
        const first = choice.logprobs?.tokens?.[0];
        const token = first === undefined ? base.eos : base.tokenOf(first);
        counts.set(token, (counts.get(token) ?? 0) + 1);
      }
      drafted += res.flock?.speculative?.drafted_tokens ?? 0;
      accepted += res.flock?.speculative?.accepted_tokens ?? 0;
    }
    return { counts, drafted, accepted };
  }

  let base: ChainOracle;
  beforeAll(() => {
    base = new ChainOracle(t.manifest, "base");
  });

  it("prompt lookup, every offer proposed (priced: false): first-token frequencies match the analytic distribution (chi-square over 2,000 choices)", async () => {
    const { counts, drafted, accepted } = await firstTokens("lookup", {}, 250);
    const fit = goodnessOfFit(counts, base.next(base.tokenOf(" a")));
    expect(fit.pValue).toBeGreaterThan(1e-4);
    expect(fit.outsideSupport).toBe(0);
    // Every choice's first position was a proposal; some were rejected, some accepted.
    expect(drafted).toBeGreaterThanOrEqual(2000);
    expect(accepted).toBeGreaterThan(0);
    expect(accepted).toBeLessThan(drafted);
  });

  it("a prediction, priced (on this CPU the rule declines most offers): first-token frequencies match the analytic distribution", async () => {
    const { counts, drafted, accepted } = await firstTokens("flock-demo", { prediction: { type: "content", content: " wet net on the deck." } }, 250);
    const fit = goodnessOfFit(counts, base.next(base.tokenOf(" a")));
    expect(fit.pValue).toBeGreaterThan(1e-4);
    expect(fit.outsideSupport).toBe(0);
    expect(drafted).toBeGreaterThan(100);
    expect(accepted).toBeLessThan(drafted);
  });
});

describe("metrics", () => {
  it("/metrics counts text proposals by source, plain models included; the sources add up to the draft tokens", async () => {
    await t.client.completions.create({ model: "lookup", prompt: "The captain pulls a wet net on the deck. The captain pulls a", max_tokens: 8, temperature: 0 });
    await t.client.completions.create({ model: "flock-demo", prompt: "The captain", max_tokens: 8, temperature: 0, prediction: { type: "content", content: " pulls a wet net" } } as OpenAI.CompletionCreateParamsNonStreaming);
    const metrics = await (await fetch(`${t.url}/metrics`)).text();
    const value = (series: string) => Number(metrics.split("\n").find((l) => l.startsWith(`${series} `))?.split(" ").at(-1) ?? NaN);
    const bySource = (model: string, source: string, what: "draft" | "accepted") => value(`flock_spec_decode_num_${what}_tokens_by_source_total{model_name="${model}",source="${source}"}`);
    expect(bySource("lookup", "lookup", "draft")).toBeGreaterThan(0);
    expect(bySource("lookup", "lookup", "accepted")).toBeLessThanOrEqual(bySource("lookup", "lookup", "draft"));
    expect(bySource("flock-demo", "prediction", "draft")).toBeGreaterThan(0);
    for (const model of ["lookup", "flock-demo", "spec"]) {
      const sum = ["draft", "lookup", "prediction"].reduce((n, source) => n + bySource(model, source, "draft"), 0);
      expect(sum, model).toBe(value(`flock_spec_decode_num_draft_tokens_total{model_name="${model}"}`));
    }
  });
});
