// Predicted Outputs (chat's `prediction`) and prompt lookup (`lookup` in a model entry,
// `flock.lookup` in a request) through the OpenAI SDK on the forged models: the proposals are
// verified by the target, so the text is the target's own — identical for a seeded request with
// or without them — and usage reports how much of a prediction was accepted and rejected.
import type OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { forgedManifest, forgedPath, startTestServer, type TestServer } from "./helpers/server.js";

let t: TestServer;
beforeAll(async () => {
  const manifest = forgedManifest();
  const demo = forgedPath(manifest.models["flock-demo"].file);
  t = await startTestServer({
    models: [
      { id: "flock-demo", path: demo, parallel: 2 },
      { id: "spec", path: demo, parallel: 2, speculative: { draft: forgedPath(manifest.models["flock-demo-draft"].file) } },
      { id: "lookup", path: demo, parallel: 2, lookup: { minMatch: 1, maxCandidates: 6 } },
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

  it("a prediction that diverges halfway: the same text; the diverging part is rejected, the output resynchronises", async () => {
    const plain = await chat({ temperature: 0 });
    const text = plain.choices[0].message.content!;
    const words = text.split(" ");
    const half = Math.floor(words.length / 2);
    const diverging = [...words.slice(0, half), "sky", "comet", "star", ...words.slice(half)].join(" ");
    const predicted = await chat({ temperature: 0, prediction: { type: "content", content: [{ type: "text", text: diverging }] } });
    expect(predicted.choices[0].message.content).toBe(text);
    expect(details(predicted).rejected_prediction_tokens).toBeGreaterThan(0);
    expect(details(predicted).accepted_prediction_tokens).toBeGreaterThan(half);
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

  it("streams with usage carry the details; an empty prediction is plain decoding", async () => {
    const stream = await t.client.chat.completions.create({
      model: "flock-demo",
      messages: [{ role: "user", content: "Hello" }],
      temperature: 0,
      max_tokens: 12,
      stream: true,
      stream_options: { include_usage: true },
      prediction: { type: "content", content: "The captain" },
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
  const passage = "The captain hauls a wet net on the deck. The cook stirs the soup.";
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
      const looked = await complete(model, { temperature: 0, flock: { lookup: { enabled: true, min_match: 1 } } });
      expect(looked.choices[0].text, model).toBe(base.choices[0].text);
      expect(looked.flock?.speculative?.drafted_tokens, model).toBeGreaterThan(0);
    }
    const off = await complete("lookup", { temperature: 0, flock: { lookup: { enabled: false } } });
    expect(off.flock).toBeUndefined();
    expect((await complete("lookup", { temperature: 0 })).choices[0].text).toBe(off.choices[0].text);
  });
});
