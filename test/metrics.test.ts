// GET /metrics against a real server: the exposition's names, types and labels, and the
// counters, histograms and gauges moving as requests are served (plain, speculative and fusion
// models, through the official openai client).
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FUSION_ALPHA_BUCKETS, ITL_BUCKETS, Metrics, REQUEST_LATENCY_BUCKETS, TTFT_BUCKETS } from "../server/metrics.js";
import { dashboardMetrics, type Exposition, parseExposition, scrape, valueOf } from "./helpers/ops.js";
import { forgedManifest, forgedPath, startTestServer, type TestServer } from "./helpers/server.js";

let t: TestServer;
beforeAll(async () => {
  const manifest = forgedManifest();
  const demo = forgedPath(manifest.models["flock-demo"].file);
  t = await startTestServer({
    models: [
      { id: "flock-demo", path: demo, parallel: 2 },
      { id: "spec", path: demo, parallel: 2, speculative: { draft: forgedPath(manifest.models["flock-demo-draft"].file) } },
      {
        id: "fused",
        path: demo,
        parallel: 1,
        fusion: {
          base: forgedPath(manifest.models["flock-weak"].file),
          experts: ["kitchen", "harbor"].map((d) => ({ name: d, lora: forgedPath(manifest.adapters[`flock-weak-${d}`].file) })),
        },
      },
    ],
  });
});
afterAll(() => t?.close());

const EXPECTED: Array<[name: string, type: string, labels: string[]]> = [
  ["flock_requests_total", "counter", ["route", "model_name", "status"]],
  ["flock_request_finished_total", "counter", ["model_name", "reason"]],
  ["flock_time_to_first_token_seconds", "histogram", ["model_name"]],
  ["flock_inter_token_latency_seconds", "histogram", ["model_name"]],
  ["flock_e2e_request_latency_seconds", "histogram", ["model_name"]],
  ["flock_request_queue_time_seconds", "histogram", ["model_name"]],
  ["flock_prompt_tokens_total", "counter", ["model_name"]],
  ["flock_generation_tokens_total", "counter", ["model_name"]],
  ["flock_num_requests_running", "gauge", ["model_name"]],
  ["flock_num_requests_waiting", "gauge", ["model_name"]],
  ["flock_spec_decode_num_drafts_total", "counter", ["model_name"]],
  ["flock_spec_decode_num_draft_tokens_total", "counter", ["model_name"]],
  ["flock_spec_decode_num_accepted_tokens_total", "counter", ["model_name"]],
  ["flock_spec_decode_num_target_calls_total", "counter", ["model_name"]],
  ["flock_spec_decode_num_accepted_tokens_per_pos_total", "counter", ["model_name", "position"]],
  ["flock_fusion_expert_tokens_total", "counter", ["model_name", "expert"]],
  ["flock_fusion_alpha", "histogram", ["model_name"]],
  ["flock_kv_cache_usage_perc", "gauge", ["model_name"]],
  ["flock_request_prompt_tokens", "histogram", ["model_name"]],
  ["flock_request_generation_tokens", "histogram", ["model_name"]],
  ["flock_request_success_total", "counter", ["model_name", "finished_reason"]],
  ["flock_time_per_output_token_seconds", "histogram", ["model_name"]],
  ["flock_request_prefill_time_seconds", "histogram", ["model_name"]],
  ["flock_request_decode_time_seconds", "histogram", ["model_name"]],
  ["flock_request_inference_time_seconds", "histogram", ["model_name"]],
];

/** Samples of a family (a histogram's _bucket/_sum/_count included). */
const familySamples = (e: Exposition, name: string) => e.samples.filter((s) => s.name === name || s.name.startsWith(`${name}_`) && ["_bucket", "_sum", "_count"].includes(s.name.slice(name.length)));

describe("the exposition", () => {
  it("declares every flock metric with its type, help and labels, and default process metrics with the prefix", async () => {
    // One request of each kind first, so the labelled families have samples.
    await t.client.completions.create({ model: "flock-demo", prompt: "The cook", max_tokens: 4 });
    await t.client.completions.create({ model: "spec", prompt: "The cook", max_tokens: 8, flock: { speculative: { policy: "fixed", k: 3 } } } as OpenAI.CompletionCreateParamsNonStreaming);
    await t.client.completions.create({ model: "fused", prompt: "The cook", max_tokens: 4 });
    const res = await fetch(`${t.url}/metrics`);
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toMatch(/^text\/plain; version=0\.0\.4/);
    const e = parseExposition(await res.text());

    for (const [name, type, labels] of EXPECTED) {
      expect(e.types.get(name), name).toBe(type);
      expect(e.help.get(name)?.length, `${name} help`).toBeGreaterThan(10);
      const samples = familySamples(e, name);
      expect(samples.length, `${name} has samples`).toBeGreaterThan(0);
      for (const s of samples) {
        const own = Object.keys(s.labels).filter((l) => l !== "le").sort();
        expect(own, `${s.name} labels`).toEqual([...labels].sort());
      }
    }
    // No metric escapes the prefix; Node's process metrics are there too.
    for (const name of e.types.keys()) expect(name).toMatch(/^flock_/);
    expect(e.types.get("flock_process_cpu_seconds_total")).toBe("counter");
    expect(e.types.get("flock_process_resident_memory_bytes")).toBe("gauge");
    expect(e.types.get("flock_nodejs_eventloop_lag_seconds")).toBe("gauge");
    // Reserved for routed LoRA: declared, no samples yet.
    expect(e.types.get("flock_routed_tokens_total")).toBe("counter");
    expect(familySamples(e, "flock_routed_tokens_total")).toEqual([]);
  });

  it("has a sample of every metric the Grafana dashboard queries (deploy/grafana-dashboard.json)", async () => {
    const e = await scrape(t.url);
    const names = dashboardMetrics();
    expect(names).toContain("flock_kv_cache_usage_perc");
    for (const name of names) expect(e.samples.some((s) => s.name === name), name).toBe(true);
  });

  it("uses vLLM's histogram buckets", async () => {
    const e = await scrape(t.url);
    const bounds = (name: string) =>
      e.samples.filter((s) => s.name === `${name}_bucket` && s.labels.model_name === "flock-demo").map((s) => s.labels.le);
    const asLabels = (buckets: number[]) => [...buckets.map(String), "+Inf"];
    expect(bounds("flock_time_to_first_token_seconds")).toEqual(asLabels(TTFT_BUCKETS));
    expect(bounds("flock_inter_token_latency_seconds")).toEqual(asLabels(ITL_BUCKETS));
    expect(bounds("flock_e2e_request_latency_seconds")).toEqual(asLabels(REQUEST_LATENCY_BUCKETS));
    expect(bounds("flock_request_queue_time_seconds")).toEqual(asLabels(REQUEST_LATENCY_BUCKETS));
    for (const phase of ["prefill", "decode", "inference"]) expect(bounds(`flock_request_${phase}_time_seconds`)).toEqual(asLabels(REQUEST_LATENCY_BUCKETS));
    expect(TTFT_BUCKETS.slice(0, 4)).toEqual([0.001, 0.005, 0.01, 0.02]);
    expect(ITL_BUCKETS.at(-1)).toBe(80);
    expect(REQUEST_LATENCY_BUCKETS.at(-1)).toBe(7680);
    expect(e.samples.filter((s) => s.name === "flock_fusion_alpha_bucket" && s.labels.model_name === "fused").map((s) => s.labels.le)).toEqual(asLabels(FUSION_ALPHA_BUCKETS));
  });
});

describe("request phases (vLLM's prefill, decode and inference times)", () => {
  it("start when the choice gets its sequence, told by the model's queue observer through the request's signal", async () => {
    const metrics = new Metrics(() => []);
    const signal = new AbortController().signal;
    const observed = metrics.generation("m", 0, 5, signal);
    // A draft's acquisition for the same request reports under the draft's id: not this choice's.
    metrics.queueTimeObserver("m-draft")(0, signal);
    expect(parseExposition(await metrics.exposition()).samples.some((x) => x.name === "flock_request_prefill_time_seconds_count")).toBe(false);
    observed.scheduled(1000); // waited a second in the queue
    observed.step(0, 1, 1500);
    observed.step(0, 1, 2500);
    observed.finish(0, "stop", 2600);
    const e = parseExposition(await metrics.exposition());
    expect(valueOf(e, "flock_request_queue_time_seconds_count", { model_name: "m" })).toBe(0);
    expect(valueOf(e, "flock_request_prefill_time_seconds_sum", { model_name: "m" })).toBeCloseTo(0.5);
    expect(valueOf(e, "flock_request_decode_time_seconds_sum", { model_name: "m" })).toBeCloseTo(1);
    expect(valueOf(e, "flock_request_inference_time_seconds_sum", { model_name: "m" })).toBeCloseTo(1.5);
    expect(valueOf(e, "flock_time_to_first_token_seconds_sum", { model_name: "m" })).toBeCloseTo(1.5);
    // The model's own observer marks the choice scheduled: a request that arrived 10,000 s ago
    // and got its sequence now has a prefill of 1,000 s, not 11,000.
    const next = new AbortController().signal;
    const now = performance.now();
    const second = metrics.generation("m", now - 10_000_000, 5, next);
    metrics.queueTimeObserver("m")(10_000, next);
    second.step(0, 1, now + 1_000_000);
    second.finish(0, "length", now + 1_000_000);
    const prefill = valueOf(parseExposition(await metrics.exposition()), "flock_request_prefill_time_seconds_sum", { model_name: "m" }) - 0.5;
    expect(prefill).toBeGreaterThan(999);
    expect(prefill).toBeLessThan(1001);
  });
});

describe("counters move as requests are served", () => {
  it("requests, tokens and latencies of a streamed chat completion", async () => {
    const before = await scrape(t.url);
    const stream = await t.client.chat.completions.create({
      model: "flock-demo",
      messages: [{ role: "user", content: "Tell me about the harbor." }],
      max_tokens: 12,
      stream: true,
      stream_options: { include_usage: true },
    });
    let usage: OpenAI.CompletionUsage | undefined;
    let contentChunks = 0;
    for await (const chunk of stream) {
      if (chunk.usage) usage = chunk.usage;
      if (chunk.choices[0]?.delta.content) contentChunks++;
    }
    const after = await scrape(t.url);
    const delta = (name: string, labels: Record<string, string> = { model_name: "flock-demo" }) => valueOf(after, name, labels) - valueOf(before, name, labels);

    expect(delta("flock_requests_total", { route: "/v1/chat/completions", model_name: "flock-demo", status: "200" })).toBe(1);
    expect(delta("flock_prompt_tokens_total")).toBe(usage!.prompt_tokens);
    expect(delta("flock_generation_tokens_total")).toBe(usage!.completion_tokens);
    expect(delta("flock_time_to_first_token_seconds_count")).toBe(1);
    // One observation per decode step after the first: the plain decoder steps one token at a time.
    expect(delta("flock_inter_token_latency_seconds_count")).toBe(usage!.completion_tokens - 1);
    expect(delta("flock_e2e_request_latency_seconds_count")).toBe(1);
    expect(delta("flock_e2e_request_latency_seconds_sum")).toBeGreaterThan(delta("flock_time_to_first_token_seconds_sum"));
    expect(delta("flock_request_queue_time_seconds_count")).toBe(1);
    const finished = delta("flock_request_finished_total", { model_name: "flock-demo", reason: "stop" }) + delta("flock_request_finished_total", { model_name: "flock-demo", reason: "length" });
    expect(finished).toBe(1);
    // vLLM's per-request series: the prompt's and the output's token counts, the mean time per
    // output token after the first, success by finish reason.
    expect(delta("flock_request_prompt_tokens_count")).toBe(1);
    expect(delta("flock_request_prompt_tokens_sum")).toBe(usage!.prompt_tokens);
    expect(delta("flock_request_generation_tokens_sum")).toBe(usage!.completion_tokens);
    expect(delta("flock_time_per_output_token_seconds_count")).toBe(usage!.completion_tokens > 1 ? 1 : 0);
    const tpot = delta("flock_time_per_output_token_seconds_sum");
    expect(tpot * (usage!.completion_tokens - 1)).toBeLessThanOrEqual(delta("flock_e2e_request_latency_seconds_sum") - delta("flock_time_to_first_token_seconds_sum") + 1e-3);
    // vLLM's phases after the queue: prefill up to the first token, decode to the last, inference both.
    for (const phase of ["prefill", "decode", "inference"]) expect(delta(`flock_request_${phase}_time_seconds_count`), phase).toBe(1);
    expect(delta("flock_request_prefill_time_seconds_sum")).toBeLessThanOrEqual(delta("flock_time_to_first_token_seconds_sum") + 1e-6);
    expect(delta("flock_request_inference_time_seconds_sum")).toBeCloseTo(delta("flock_request_prefill_time_seconds_sum") + delta("flock_request_decode_time_seconds_sum"), 6);
    expect(delta("flock_request_inference_time_seconds_sum")).toBeLessThanOrEqual(delta("flock_e2e_request_latency_seconds_sum") + 1e-6);
    const success = (reason: string) => delta("flock_request_success_total", { model_name: "flock-demo", finished_reason: reason });
    expect(success("stop") + success("length")).toBe(1);
    // The finished request's tokens stay cached in its sequence: part of the KV cache is in use.
    const usagePerc = valueOf(after, "flock_kv_cache_usage_perc", { model_name: "flock-demo" });
    expect(usagePerc).toBeGreaterThan(0);
    expect(usagePerc).toBeLessThanOrEqual((usage!.total_tokens * 2) / (4096 * 2) + 1e-9 + valueOf(before, "flock_kv_cache_usage_perc", { model_name: "flock-demo" }));
    expect(contentChunks).toBeGreaterThan(0);
    // The scrape itself is counted under its route, without a model.
    expect(valueOf(after, "flock_requests_total", { route: "/metrics", model_name: "", status: "200" })).toBeGreaterThanOrEqual(1);
  });

  it("n choices count as n requests in the per-choice histograms", async () => {
    const before = await scrape(t.url);
    const res = await t.client.completions.create({ model: "flock-demo", prompt: "The gull", max_tokens: 5, n: 2, temperature: 1 });
    const after = await scrape(t.url);
    const delta = (name: string) => valueOf(after, name, { model_name: "flock-demo" }) - valueOf(before, name, { model_name: "flock-demo" });
    expect(delta("flock_time_to_first_token_seconds_count")).toBe(2);
    expect(delta("flock_e2e_request_latency_seconds_count")).toBe(2);
    expect(delta("flock_generation_tokens_total")).toBe(res.usage!.completion_tokens);
    expect(delta("flock_prompt_tokens_total")).toBe(res.usage!.prompt_tokens);
  });

  it("failed requests are counted by status, with the model when one was named", async () => {
    const before = await scrape(t.url);
    await expect(t.client.completions.create({ model: "flock-demo", prompt: "x", max_tokens: 0 })).rejects.toMatchObject({ status: 400 });
    await expect(t.client.completions.create({ model: "no-such-model", prompt: "x" })).rejects.toMatchObject({ status: 404 });
    expect((await fetch(`${t.url}/v1/nowhere`)).status).toBe(404);
    const after = await scrape(t.url);
    const delta = (labels: Record<string, string>) => valueOf(after, "flock_requests_total", labels) - valueOf(before, "flock_requests_total", labels);
    expect(delta({ route: "/v1/completions", model_name: "flock-demo", status: "400" })).toBe(1);
    // An unknown model id is not a label value (label sets stay bounded).
    expect(delta({ route: "/v1/completions", model_name: "", status: "404" })).toBe(1);
    expect(delta({ route: "other", model_name: "", status: "404" })).toBe(1);
    expect(after.samples.some((s) => s.labels.model_name === "no-such-model")).toBe(false);
  });

  it("speculative counters follow the pipeline's own stats", async () => {
    const before = await scrape(t.url);
    const res = await t.client.completions.create({
      model: "spec",
      prompt: "The sailor ties the",
      max_tokens: 40,
      temperature: 0,
      flock: { speculative: { policy: "fixed", k: 3 } },
    } as OpenAI.CompletionCreateParamsNonStreaming);
    const ext = (res as unknown as { flock: { speculative: { rounds: number; drafted_tokens: number; accepted_tokens: number } } }).flock.speculative;
    const after = await scrape(t.url);
    const delta = (name: string, labels: Record<string, string> = { model_name: "spec" }) => valueOf(after, name, labels) - valueOf(before, name, labels);

    expect(ext.drafted_tokens).toBeGreaterThan(0);
    expect(delta("flock_spec_decode_num_draft_tokens_total")).toBe(ext.drafted_tokens);
    expect(delta("flock_spec_decode_num_accepted_tokens_total")).toBe(ext.accepted_tokens);
    expect(delta("flock_spec_decode_num_drafts_total")).toBeGreaterThan(0);
    expect(delta("flock_spec_decode_num_drafts_total")).toBeLessThanOrEqual(ext.rounds);
    // Per position: every accepted token was accepted at some position, and position 0 most often.
    const perPos = (e: Exposition) => e.samples.filter((s) => s.name === "flock_spec_decode_num_accepted_tokens_per_pos_total" && s.labels.model_name === "spec");
    const sumPerPos = perPos(after).reduce((n, s) => n + s.value, 0) - perPos(before).reduce((n, s) => n + s.value, 0);
    expect(sumPerPos).toBe(ext.accepted_tokens);
    const p0 = valueOf(after, "flock_spec_decode_num_accepted_tokens_per_pos_total", { model_name: "spec", position: "0" });
    for (const s of perPos(after)) expect(s.value).toBeLessThanOrEqual(p0);
    // A plain model has no speculative series.
    expect(after.samples.some((s) => s.name.startsWith("flock_spec_decode") && s.labels.model_name === "flock-demo")).toBe(false);
  });

  it("fusion counts tokens per active expert and observes α per token", async () => {
    const before = await scrape(t.url);
    const res = await t.client.completions.create({ model: "fused", prompt: "The cook mixes the", max_tokens: 10, temperature: 0 });
    const after = await scrape(t.url);
    const tokens = res.usage!.completion_tokens;
    const experts = (e: Exposition) =>
      e.samples.filter((s) => s.name === "flock_fusion_expert_tokens_total" && s.labels.model_name === "fused").reduce((n, s) => n + s.value, 0);
    expect(experts(after) - experts(before)).toBe(tokens);
    expect(valueOf(after, "flock_fusion_alpha_count", { model_name: "fused" }) - valueOf(before, "flock_fusion_alpha_count", { model_name: "fused" })).toBe(tokens);
    for (const s of after.samples.filter((s) => s.name === "flock_fusion_expert_tokens_total")) {
      expect(["kitchen", "harbor", "none", "kitchen+harbor"]).toContain(s.labels.expert);
    }
  });

  it("running and waiting gauges are per model and zero when idle", async () => {
    const e = await scrape(t.url);
    for (const model of ["flock-demo", "spec", "fused"]) {
      expect(e.samples.find((s) => s.name === "flock_num_requests_running" && s.labels.model_name === model)?.value).toBe(0);
      expect(e.samples.find((s) => s.name === "flock_num_requests_waiting" && s.labels.model_name === model)?.value).toBe(0);
    }
  });
});
