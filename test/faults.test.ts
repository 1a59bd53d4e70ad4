// Engine failures in the middle of a generation, injected through the test-mode fault hook
// (NODE_ENV=test, FLOCK_FAULTS=1, header x-flock-fault): every pipeline kind turns them into an
// OpenAI-shaped error (a final stream event, or a 500 body) and keeps serving, with every
// sequence back in its pool. And the bug the reliability suite found with them: a sequence
// released while llama.cpp was still evaluating it went to the next request at once.
process.env.NODE_ENV = "test";
process.env.FLOCK_FAULTS = "1";

import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { inject } from "vitest";
import { Engine } from "../engine/engine.js";
import { faultsEnabled, parseFault } from "../engine/faults.js";
import { readManifest } from "../forge/manifest.js";
import { ModelEntry } from "../pipelines/model-entry.js";
import { readSSE, scrape, sseEvents, until, valueOf } from "./helpers/ops.js";
import { forgedPath, startTestServer, type TestServer } from "./helpers/server.js";
import { isOpenAIError } from "./reliability/sse.js";

const manifest = readManifest(inject("forgeDir"));
const demo = forgedPath(manifest.models["flock-demo"].file);
const endless = { logit_bias: { [String(manifest.vocab.eos)]: -100, [String(manifest.vocab.imEnd)]: -100 } };
const domains = ["kitchen", "harbor", "sky", "garden"];

describe("the fault hook's switch", () => {
  it("is on only with NODE_ENV=test and FLOCK_FAULTS=1, and reads one header form", () => {
    expect(faultsEnabled({ NODE_ENV: "test", FLOCK_FAULTS: "1" })).toBe(true);
    expect(faultsEnabled({ NODE_ENV: "production", FLOCK_FAULTS: "1" })).toBe(false);
    expect(faultsEnabled({ FLOCK_FAULTS: "1" })).toBe(false);
    expect(faultsEnabled({ NODE_ENV: "test" })).toBe(false);
    expect(parseFault("engine-error-after=7")).toEqual({ engineErrorAfter: 7, evaluations: 0 });
    for (const bad of [undefined, "", "engine-error-after=-1", "engine-error-after=x", "crash", "engine-error-after=1;rm"]) expect(parseFault(bad)).toBeNull();
  });
});

describe("an engine failure mid-generation", () => {
  let t: TestServer;
  beforeAll(async () => {
    t = await startTestServer({
      models: [
        { id: "plain", path: demo, parallel: 2 },
        { id: "spec", path: demo, parallel: 2, speculative: { draft: forgedPath(manifest.models["flock-demo-draft"].file) } },
        {
          id: "fused",
          path: demo,
          parallel: 2,
          fusion: { base: forgedPath(manifest.models["flock-weak"].file), experts: domains.map((d) => ({ name: d, lora: forgedPath(manifest.adapters[`flock-weak-${d}`].file) })) },
        },
      ],
    });
  });
  afterAll(() => t?.close());

  const post = (model: string, body: Record<string, unknown>, fault?: string) =>
    fetch(`${t.url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json", ...(fault ? { "x-flock-fault": fault } : {}) },
      body: JSON.stringify({ model, prompt: "The cook", max_tokens: 60, ...endless, ...body }),
    });
  const running = async () => (await scrape(t.url)).samples.filter((s) => s.name === "flock_num_requests_running").reduce((n, s) => n + s.value, 0);

  for (const model of ["plain", "spec", "fused"]) {
    it(`${model}: a stream ends with an OpenAI server_error event after its first tokens; the next request is served`, async () => {
      // Fusion evaluates six models per token, speculation two: enough evaluations for tokens first.
      const res = await post(model, { stream: true }, "engine-error-after=40");
      expect(res.status).toBe(200);
      const events = sseEvents(await readSSE(res));
      const last = events.at(-1);
      expect(isOpenAIError(last)).toBe(true);
      expect((last as { error: { type: string } }).error.type).toBe("server_error");
      expect(events.length).toBeGreaterThan(1); // text came before the failure

      const plain = await post(model, { stream: false }, "engine-error-after=40");
      expect(plain.status).toBe(500);
      expect(isOpenAIError(await plain.json())).toBe(true);

      const after = await t.client.completions.create({ model, prompt: "The sailor", max_tokens: 8 });
      expect(after.choices[0].text.length).toBeGreaterThan(0);
      expect(await until(async () => (await running()) === 0, 2_000)).toBe(true);
    });
  }

  it("a request without the header is untouched, and a failure counts as finished with reason error", async () => {
    const before = valueOf(await scrape(t.url), "flock_request_finished_total", { model_name: "plain", reason: "error" });
    const ok = await post("plain", { max_tokens: 30 });
    expect(ok.status).toBe(200);
    expect((await post("plain", {}, "engine-error-after=0")).status).toBe(500);
    expect(valueOf(await scrape(t.url), "flock_request_finished_total", { model_name: "plain", reason: "error" })).toBe(before + 1);
  });

  // Found by npm run test:reliability: fusion evaluates its models concurrently; when one
  // evaluation failed, the decoder released every sequence while the others were still being
  // evaluated, the next request got them at once and its cache edits interleaved with the stale
  // evaluations ("sequence positions must remain consecutive": a 500 for an innocent request).
  it("fusion: requests beside failing ones are never hurt (sequences return only once idle)", async () => {
    const statuses: number[] = [];
    const longPrompt = (k: number) => Array.from({ length: 300 + (k % 7) * 50 }, (_, i) => 300 + ((i * (k + 3)) % 300));
    let k = 0;
    for (let round = 0; round < 8; round++) {
      const innocent = () => post("fused", { prompt: longPrompt(k++), max_tokens: 4 }).then(async (r) => (await r.text(), statuses.push(r.status)));
      await Promise.all([post("fused", { prompt: longPrompt(k++), max_tokens: 4 }, `engine-error-after=${round % 5}`).then((r) => r.text()), innocent(), innocent(), innocent()]);
    }
    expect(statuses).toEqual(new Array(24).fill(200));
    expect(await until(async () => (await running()) === 0, 2_000)).toBe(true);
  });
});

describe("a sequence released during an evaluation", () => {
  let engine: Engine;
  beforeAll(async () => {
    engine = await Engine.create({ gpu: "off", threads: 1 });
  });
  afterAll(() => engine?.[Symbol.asyncDispose]());

  it("goes back to the pool only when llama.cpp is done with it; the next holder sees a consistent cache", async () => {
    // The contextual model: its logits depend on the whole context, so a mixed-up cache shows.
    const model = await engine.load(ModelEntry.parse({ id: "ctx", path: forgedPath(manifest.models["flock-contextual"].file), contextSize: 1024, parallel: 1 }));
    const words = (n: number, step: number) => Array.from({ length: n }, (_, i) => 300 + ((i * step) % 300));
    const first = words(700, 7);
    const second = [manifest.vocab.bos, ...words(200, 11)];

    const reference = await model.acquire([]);
    await reference.truncate(0);
    const expected = await reference.prefill(second);
    await reference.truncate(0);
    reference.release();

    const a = await model.acquire([]);
    await a.truncate(0);
    const evaluation = a.evaluate(first, [first.length - 1]);
    a.release(); // while llama.cpp still evaluates `first`
    const b = await model.acquire(second);
    const logits = await b.prefill(second);
    await evaluation;
    b.release();
    // Same batches as the reference: equal up to float noise (a mixed-up cache is off by ~0.2).
    expect(Math.max(...logits.map((x, i) => Math.abs(x - expected[i])))).toBeLessThan(1e-4);
  });
});

// Found by npm run test:reliability: a routed context knows which modules its routing traces
// cover only after a decode, and read at any other moment that list raced with the decode of
// another sequence of the context on llama.cpp's thread ("Error in native callback", a 500; or
// an empty list and tokens reported with no experts). It is now read with each trace, between
// decodes. Here requests of different prompt lengths share one routed context, so prompts are
// decoded beside other requests' generation steps.
describe("routed requests sharing one context", () => {
  let t: TestServer;
  beforeAll(async () => {
    const base = manifest.models["flock-routing-base"];
    const experts = Object.values(manifest.adapters).filter((a) => a.base === "flock-routing-base");
    t = await startTestServer({
      models: [
        {
          id: "routing",
          path: forgedPath(base.file),
          parallel: 4,
          experts: { library: experts.map((a) => ({ name: a.domain, lora: forgedPath(a.file), ...(a.gates ? { gates: forgedPath(a.gates) } : {}) })) },
        },
      ],
    });
  });
  afterAll(async () => {
    await t?.close();
  });

  it("report every token's experts", async () => {
    const words = ["The cook", "the cook mixes the soup and the", "a sailor", "the ship sails over the sea and the cook tastes the"];
    const ask = async (i: number) => {
      const res = await fetch(`${t.url}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ model: "routing+phatgoose", prompt: words[i % words.length].repeat(1 + (i % 3)), max_tokens: 6 + (i % 5), ...endless, flock: { routing: { detail: true } } }),
      });
      expect(res.status).toBe(200);
      return ((await res.json()) as { flock: { routing: { tokens_reported: number; tokens: Array<{ experts: unknown[] } | null> } } }).flock.routing;
    };
    const answers = await Promise.all(Array.from({ length: 16 }, (_, i) => ask(i)));
    for (const routing of answers) {
      expect(routing.tokens_reported).toBe(routing.tokens.length);
      for (const token of routing.tokens) expect(token!.experts.length).toBeGreaterThan(0);
    }
  });
});
