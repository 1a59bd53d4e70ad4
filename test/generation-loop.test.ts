// The addon's generation loop (engine/native/addon/AddonFlockDecode.cpp) on a real server:
// plain requests without logprobs are decoded and drawn inside the addon, and what they return
// is what flock's JavaScript loop returns — the same tokens for the same seed, the same stops,
// limits and cache afterwards. A request with logprobs always takes the JavaScript loop, so each
// comparison below runs both paths, and the loop's decode counter proves which one ran.
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Manifest } from "../forge/manifest.js";
import { readSSE, scrape, valueOf } from "./helpers/ops.js";
import { forgedManifest, forgedPath, startTestServer, type TestServer } from "./helpers/server.js";

let t: TestServer;
let manifest: Manifest;

beforeAll(async () => {
  manifest = forgedManifest();
  const demo = forgedPath(manifest.models["flock-demo"].file);
  t = await startTestServer({
    models: [
      { id: "one", path: demo, parallel: 1, contextSize: 512 },
      { id: "pair", path: demo, parallel: 2, contextSize: 512 },
      { id: "short", path: demo, parallel: 1, contextSize: 256 },
      { id: "javascript", path: demo, parallel: 1, contextSize: 512, generationLoop: false },
    ],
  });
});
afterAll(() => t?.close());

const PROMPT = "The sailor ties the";
const loopDecodes = async (model: string) => valueOf(await scrape(t.url), "flock_generation_loop_decodes_total", { model_name: model });

type Body = Record<string, unknown>;

/** The request's text, token count and finish reason; `viaLoop`: how many decodes the generation loop ran for it. */
async function complete(model: string, body: Body): Promise<{ text: string; tokens: number; finish: string; viaLoop: number }> {
  const before = await loopDecodes(model);
  const r = await t.client.completions.create({ model, prompt: PROMPT, max_tokens: 40, ...body } as unknown as OpenAI.CompletionCreateParamsNonStreaming);
  return { text: r.choices[0].text, tokens: r.usage!.completion_tokens, finish: r.choices[0].finish_reason, viaLoop: (await loopDecodes(model)) - before };
}

/** The same request through the JavaScript loop (logprobs keep a request out of the addon's). */
const viaJavaScript = (model: string, body: Body) => complete(model, { ...body, logprobs: 1 });

const endless = () => ({ logit_bias: { [String(manifest.vocab.eos)]: -100 } });

describe("the generation loop draws what the JavaScript loop draws", () => {
  const SETTINGS: Array<[string, () => Body]> = [
    ["T = 0", () => ({ temperature: 0, ...endless() })],
    ["T = 1, seeded", () => ({ temperature: 1, seed: 11, ...endless() })],
    ["T = 0.8, top_p 0.9, top_k 40, min_p 0.05, seeded", () => ({ temperature: 0.8, top_p: 0.9, seed: 12, flock: { top_k: 40, min_p: 0.05 }, ...endless() })],
    ["T = 1, seeded, a logit bias", () => ({ temperature: 1, seed: 13, logit_bias: { [String(manifest.vocab.eos)]: -100, "7": 3, "12": -2 } })],
    ["T = 1, seeded, ending at the end-of-text token", () => ({ temperature: 1, seed: 14, max_tokens: 200 })],
    ["T = 0.7, top_p 0.9, presence and frequency penalties, seeded", () => ({ temperature: 0.7, top_p: 0.9, seed: 16, presence_penalty: 0.8, frequency_penalty: 0.6, ...endless() })],
    ["T = 1, repetition penalty over the last 8 tokens, seeded", () => ({ temperature: 1, seed: 17, repetition_penalty: 1.6, repeat_last_n: 8, ...endless() })],
    ["T = 0, repetition penalty over the whole context", () => ({ temperature: 0, repetition_penalty: 1.3, repeat_last_n: -1, ...endless() })],
  ];
  it.each(SETTINGS)("%s: the same tokens and finish reason", async (_name, body) => {
    const loop = await complete("one", body());
    const js = await viaJavaScript("one", body());
    expect(loop.viaLoop).toBeGreaterThanOrEqual(loop.tokens - 2);
    expect(js.viaLoop).toBe(0);
    expect(loop.tokens).toBeGreaterThan(3);
    expect(loop).toEqual({ ...js, viaLoop: loop.viaLoop });
  });

  it("models[].generationLoop false: every token through JavaScript, the same text", async () => {
    const body = { temperature: 1, seed: 15, ...endless() };
    const off = await complete("javascript", body);
    expect(off.viaLoop).toBe(0);
    expect(off).toEqual({ ...(await complete("one", body)), viaLoop: 0 });
  });

  it("a stop string ends the text where the JavaScript loop ends it, and the next request starts from a sound cache", async () => {
    const probe = await complete("one", { temperature: 1, seed: 21, ...endless() });
    // A word from the middle of the text as the stop string.
    const words = probe.text.trim().split(/\s+/);
    const stop = ` ${words[Math.floor(words.length / 2)]}`;
    const loop = await complete("one", { temperature: 1, seed: 21, stop: [stop], ...endless() });
    const js = await viaJavaScript("one", { temperature: 1, seed: 21, stop: [stop], ...endless() });
    expect(loop.finish).toBe("stop");
    expect(loop.text).toBe(js.text);
    expect(loop.viaLoop).toBeGreaterThan(0);
    // The loop may have decoded past the stop: the cache must still serve the next request right.
    expect(await complete("one", { temperature: 1, seed: 21, ...endless() })).toEqual({ ...probe, viaLoop: expect.any(Number) });
  });

  it("the length limit, also at the context's last position: finish_reason length, the JavaScript loop's tokens", async () => {
    const byLength = await complete("one", { temperature: 1, seed: 31, max_tokens: 17, ...endless() });
    expect(byLength).toMatchObject({ tokens: 17, finish: "length" });
    expect(byLength.text).toBe((await viaJavaScript("one", { temperature: 1, seed: 31, max_tokens: 17, ...endless() })).text);
    // To the last position the context holds: the loop's budget ends at the context's end.
    const prompt = (await t.client.completions.create({ model: "short", prompt: PROMPT, max_tokens: 1 })).usage!.prompt_tokens;
    const full = { temperature: 1, seed: 32, max_tokens: 256 - prompt, ...endless() };
    const byContext = await complete("short", full);
    const js = await viaJavaScript("short", full);
    expect(byContext).toMatchObject({ tokens: 256 - prompt, finish: "length" });
    expect(byContext.viaLoop).toBeGreaterThan(0);
    expect(byContext).toEqual({ ...js, viaLoop: byContext.viaLoop });
  });
});

describe("the generation loop and other requests", () => {
  it("gives the context up when a second sequence needs it: both texts are their solo texts, and they shared batches", async () => {
    const long = { temperature: 1, seed: 41, max_tokens: 400, ...endless() };
    const short = { temperature: 1, seed: 42, max_tokens: 30, ...endless() };
    const soloLong = await complete("pair", long);
    const soloShort = await complete("pair", short);
    const shared = async () => {
      const exposition = await scrape(t.url);
      return valueOf(exposition, "flock_batch_sequences_count", { model_name: "pair" }) - valueOf(exposition, "flock_batch_sequences_bucket", { model_name: "pair", le: "1" });
    };
    const sharedBefore = await shared();
    // The long request streams; the short one arrives once the long one's loop is running, with
    // most of the long one still to come.
    const res = await fetch(`${t.url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: "pair", prompt: PROMPT, stream: true, ...long }),
    });
    let second: Promise<Awaited<ReturnType<typeof complete>>> | undefined;
    const streamed = await readSSE(res, (text) => {
      if (!second && (text.match(/"text"/g)?.length ?? 0) >= 2) second = complete("pair", short);
      return false;
    });
    const text = streamed
      .split("\n\n")
      .map((event) => event.replace(/^data: /, ""))
      .filter((data) => data.startsWith("{"))
      .map((data) => (JSON.parse(data) as { choices: Array<{ text: string }> }).choices[0]?.text ?? "")
      .join("");
    expect(text).toBe(soloLong.text);
    expect(soloLong.viaLoop).toBeGreaterThan(100);
    expect((await second!).text).toBe(soloShort.text);
    expect(await shared()).toBeGreaterThan(sharedBefore);
  });

  it("a client that leaves mid-stream: the loop stops, and the sequence serves the next request", async () => {
    const controller = new AbortController();
    const res = await fetch(`${t.url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: "one", prompt: PROMPT, stream: true, max_tokens: 400, temperature: 1, ...endless() }),
      signal: controller.signal,
    });
    await readSSE(res, (text) => (text.match(/"text"/g)?.length ?? 0) >= 5).catch(() => undefined);
    controller.abort();
    const after = await complete("one", { temperature: 1, seed: 51, ...endless() });
    expect(after.tokens).toBe(40);
    expect(after.text).toBe((await viaJavaScript("one", { temperature: 1, seed: 51, ...endless() })).text);
  });
});
