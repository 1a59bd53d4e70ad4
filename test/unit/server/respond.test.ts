// respond.ts with a client that never reads (issue: hardening, finding 1): nobody consumes the
// response body, so the stream's first write never completes. On fake timers, the stream is
// dropped when the write timeout passes and not before, its generation is stopped (the
// sequence freed) at once, and the drop is logged as "stalled".
import { Hono } from "hono";
import { afterEach, describe, expect, it, vi } from "vitest";
import type { DecodeStep } from "../../../decoding/types.js";
import type { Pipeline } from "../../../pipelines/pipeline.js";
import { type AppEnv, DEFAULT_SERVING } from "../../../server/context.js";
import { Inflight } from "../../../server/inflight.js";
import type { Logger } from "../../../server/logger.js";
import { Metrics } from "../../../server/metrics.js";
import { type Generation, respond, type ResponseShape } from "../../../server/respond.js";

const WRITE_TIMEOUT_MS = 300;

afterEach(() => {
  vi.useRealTimers();
});

/** Lets promise chains and stream callbacks run (setImmediate is not faked). */
const settle = async () => {
  for (let i = 0; i < 20; i++) await new Promise((resolve) => setImmediate(resolve));
};

describe("a stream whose writes never complete", () => {
  it("ends as 'stalled' when the write timeout passes, frees its generation and logs a warning", async () => {
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout", "setInterval", "clearInterval"] });
    const state = { steps: 0, freed: false };
    const model = { capacity: 4, parallel: 1, maxQueue: 0, runningSequences: 0, waitingSequences: 0, admit: () => () => undefined, detokenize: () => "" };
    const pipeline = {
      id: "fake",
      kind: "plain",
      model,
      async *generate(): AsyncGenerator<DecodeStep> {
        try {
          for (let i = 0; i < 1_000; i++) {
            state.steps++;
            yield { tokens: [1], text: "x" } as unknown as DecodeStep;
          }
        } finally {
          state.freed = true;
        }
      },
    } as unknown as Pipeline;
    const shape: ResponseShape = {
      opening: () => [],
      step: () => [{ text: "x".repeat(1_000) }],
      usage: () => ({}),
      response: () => ({}),
    };
    const log = { info: vi.fn(), warn: vi.fn(), error: vi.fn(), debug: vi.fn(), child: () => log } as unknown as Logger & { warn: ReturnType<typeof vi.fn>; info: ReturnType<typeof vi.fn> };
    const inflight = new Inflight();
    const app = new Hono<AppEnv>();
    app.get("/stream", (c) => {
      c.set("log", log);
      c.set("requestId", "req-stalled");
      c.set("arrival", performance.now());
      c.set("ops", { metrics: new Metrics(() => []), inflight, serving: { ...DEFAULT_SERVING, writeTimeoutMs: WRITE_TIMEOUT_MS, keepAliveMs: 0 }, ignoredFields: undefined as never });
      const g: Generation = {
        pipeline,
        requests: [{ prompt: [1] } as never],
        promptTokens: 1,
        stream: true,
        includeUsage: false,
        shape,
        abort: new AbortController(),
        log,
        promptParam: "prompt",
      };
      return respond(c, g);
    });

    const res = await app.request("/stream"); // its body is never read
    expect(res.status).toBe(200);
    await settle();
    expect(state.steps).toBeGreaterThan(0);
    expect(inflight.ids()).toEqual(["req-stalled"]);
    const stalledWarning = () => log.warn.mock.calls.find(([, message]) => message === "stream dropped: the client stopped reading");

    await vi.advanceTimersByTimeAsync(WRITE_TIMEOUT_MS - 1);
    await settle();
    expect(stalledWarning()).toBeUndefined();
    expect(state.freed).toBe(false);

    // The deadline passes: within the next 100 ms the stream is dropped and the generation stopped.
    await vi.advanceTimersByTimeAsync(2);
    await settle();
    expect(stalledWarning()).toBeDefined();
    expect(state.freed).toBe(true);
    expect(inflight.size).toBe(0);
    expect(log.info.mock.calls.find(([, message]) => message === "generation finished")?.[0]).toMatchObject({ outcome: "stalled" });
    // Only the few chunks the stream buffers were produced: nothing more for a client that reads nothing.
    expect(state.steps).toBeLessThan(10);
  });
});
