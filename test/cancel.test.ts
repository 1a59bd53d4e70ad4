// Cancellation and concurrency on a real server: a client that goes away mid-generation frees
// its sequence within 100 ms (seen in the running-requests gauge, and by the next request getting
// the sequence), and concurrent streams share batches instead of queueing behind each other.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { inject } from "vitest";
import { readManifest } from "../forge/manifest.js";
import { readSSE, scrape, until, valueOf } from "./helpers/ops.js";
import { forgedPath, startTestServer, type TestServer } from "./helpers/server.js";

const manifest = readManifest(inject("forgeDir"));
const demo = forgedPath(manifest.models["flock-demo"].file);
const endless = { logit_bias: { [String(manifest.vocab.eos)]: -100 } };

let t: TestServer;
beforeAll(async () => {
  t = await startTestServer({
    models: [
      { id: "one", path: demo, parallel: 1, contextSize: 2048 },
      { id: "pair", path: demo, parallel: 2, contextSize: 512 },
    ],
  });
});
afterAll(() => t?.close());

const running = async (model: string) => valueOf(await scrape(t.url), "flock_num_requests_running", { model_name: model });
const finished = async (reason: string) => valueOf(await scrape(t.url), "flock_request_finished_total", { model_name: "one", reason });

function start(stream: boolean, controller: AbortController) {
  return fetch(`${t.url}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: "one", prompt: "The captain", max_tokens: 2000, stream, ...endless }),
    signal: controller.signal,
  });
}

describe("a client that disconnects", () => {
  it("mid-stream: generation stops and the sequence is free within 100 ms", async () => {
    const disconnectedBefore = await finished("disconnected");
    const controller = new AbortController();
    const res = await start(true, controller);
    await readSSE(res, (text) => (text.match(/data: \{/g)?.length ?? 0) >= 3);
    expect(await running("one")).toBe(1);

    const aborted = performance.now();
    controller.abort();
    expect(await until(async () => (await running("one")) === 0, 2_000, 2)).toBe(true);
    const freedMs = performance.now() - aborted;
    expect(freedMs).toBeLessThan(100);
    expect(await finished("disconnected")).toBe(disconnectedBefore + 1);

    // The next request gets the sequence at once (it would wait ~4 s for a generation still running).
    const next = performance.now();
    const res2 = await t.client.completions.create({ model: "one", prompt: "The cook", max_tokens: 2 });
    expect(res2.choices).toHaveLength(1);
    expect(performance.now() - next).toBeLessThan(1_000);
  });

  it("during a non-streamed generation: the same", async () => {
    const controller = new AbortController();
    const pending = start(false, controller).catch((err: unknown) => err);
    expect(await until(async () => (await running("one")) === 1, 5_000)).toBe(true);
    await new Promise((r) => setTimeout(r, 50)); // well inside the generation
    const aborted = performance.now();
    controller.abort();
    expect(await until(async () => (await running("one")) === 0, 2_000, 2)).toBe(true);
    expect(performance.now() - aborted).toBeLessThan(100);
    expect(await pending).toBeInstanceOf(Error);
    // Counted with nginx's 499 ("client closed request").
    expect(await until(async () => valueOf(await scrape(t.url), "flock_requests_total", { route: "/v1/completions", model_name: "one", status: "499" }) === 1, 2_000)).toBe(true);
  });
});

describe("concurrent requests on one model", () => {
  it("two concurrent streams are decoded in shared batches, not queued one after the other", async () => {
    const TOKENS = 200;
    const stream = async (seed: number, tokens = TOKENS, onFirst?: () => void) => {
      const s = await t.client.completions.create({ model: "pair", prompt: "The captain", max_tokens: tokens, temperature: 0, seed, stream: true, ...endless });
      let chunks = 0;
      for await (const chunk of s) {
        if (!chunk.choices[0]?.text) continue;
        if (chunks++ === 0) onFirst?.();
      }
      return chunks;
    };
    // llama.cpp decodes that carried more than one sequence's tokens (flock_batch_sequences).
    const shared = async () => {
      const exposition = await scrape(t.url);
      return valueOf(exposition, "flock_batch_sequences_count", { model_name: "pair" }) - valueOf(exposition, "flock_batch_sequences_bucket", { model_name: "pair", le: "1" });
    };
    const before = await shared();
    expect(await stream(1)).toBe(TOKENS);
    expect(await stream(2)).toBe(TOKENS);
    // One after the other, nothing is shared: the metric tells the two cases apart.
    expect(await shared()).toBe(before);
    // The second arrives while the first, more than twice as long, is generating: a sequence
    // alone runs ahead in the addon's generation loop, so both must have work left to overlap.
    const LONG = 480;
    let second: Promise<number> | undefined;
    const first = stream(3, LONG, () => (second = stream(4)));
    // Both hold a sequence at the same time.
    let peak = 0;
    await until(async () => {
      peak = Math.max(peak, await running("pair"));
      return peak === 2;
    }, 2_000, 2);
    expect(peak).toBe(2);
    expect(await first).toBe(LONG);
    expect(await second).toBe(TOKENS);
    // Generated together: most of the second's steps were one decode for both (a queue would share none).
    expect(await shared()).toBeGreaterThanOrEqual(before + TOKENS / 2);
  });
});
