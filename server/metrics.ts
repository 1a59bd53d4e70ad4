// Prometheus metrics (GET /metrics), prefix flock_. Each server has its own registry, so
// several servers in one process (tests, benchmarks) never share counters.
//
// Names, labels (model_name), meanings and histogram buckets follow vLLM's
// (vllm/v1/metrics/loggers.py, vllm/v1/spec_decode/metrics.py) where flock has the same
// quantity; docs/operations.md lists what a vLLM dashboard finds missing or different.
// Request-level timings are per choice, as vLLM v1 counts each of a request's n samples as a
// request of its own.
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from "prom-client";
import type { ContextUsage } from "../engine/engine.js";
import { contextOwner } from "../pipelines/load.js";
import type { Pipeline } from "../pipelines/pipeline.js";
import { CANDIDATE_SOURCES, type SpeculativeStats } from "../decoding/speculative/stats.js";

/** vLLM's vllm:time_to_first_token_seconds buckets. */
export const TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0];
/** vLLM's vllm:inter_token_latency_seconds (and time_per_output_token) buckets. */
export const ITL_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0];
/** vLLM's request latency buckets (e2e, queue, inference, prefill, decode). */
export const REQUEST_LATENCY_BUCKETS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0];
/** vLLM's token-count buckets (1, 2, 5 per decade), up to a 128k-token window. */
export const TOKEN_COUNT_BUCKETS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000];
/** Dynamic logit fusion searches α on a grid over [0, 2] in steps of 0.1. */
export const FUSION_ALPHA_BUCKETS = Array.from({ length: 21 }, (_, i) => Math.round(i * 10) / 100);

/** How a choice ended: the OpenAI finish reasons, or why it was cut short. */
export type FinishedReason = "stop" | "length" | "disconnected" | "stalled" | "timeout" | "shutdown" | "error";

/** The routes /metrics labels requests with; anything else is "other" (bounded label values). */
const ROUTES = new Set(["/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/embeddings", "/v1/models", "/v1/models/:id", "/health", "/metrics", "/admin/status", "/tokenize", "/detokenize"]);

export function routeLabel(route: string | undefined): string {
  if (!route) return "other";
  const plain = route.replace(/\{[^}]*\}/g, ""); // "/v1/models/:id{.+}" → "/v1/models/:id"
  return ROUTES.has(plain) ? plain : "other";
}

export class Metrics {
  readonly registry = new Registry();
  private readonly requests: Counter<"route" | "model_name" | "status">;
  private readonly finished: Counter<"model_name" | "reason">;
  private readonly ttft: Histogram<"model_name">;
  private readonly itl: Histogram<"model_name">;
  private readonly e2e: Histogram<"model_name">;
  private readonly queue: Histogram<"model_name">;
  private readonly batchSequences: Histogram<"model_name">;
  private readonly loopDecodes: Counter<"model_name">;
  private readonly promptTokens: Counter<"model_name">;
  private readonly generationTokens: Counter<"model_name">;
  private readonly routedTokens: Counter<"model_name" | "expert">;
  private readonly fusionAlpha: Histogram<"model_name">;
  private readonly promptTokensPerRequest: Histogram<"model_name">;
  private readonly generationTokensPerRequest: Histogram<"model_name">;
  private readonly timePerOutputToken: Histogram<"model_name">;
  private readonly success: Counter<"model_name" | "finished_reason">;
  private readonly prefill: Histogram<"model_name">;
  private readonly decode: Histogram<"model_name">;
  private readonly inference: Histogram<"model_name">;
  /** Each request's timings by its abort signal: a model's acquisitions carry the signal of the request they serve. */
  private readonly bySignal = new WeakMap<AbortSignal, { model: string; observed: GenerationMetrics }>();

  /** `pipelines` and `contexts` are read at every scrape (empty while models load). */
  constructor(pipelines: () => readonly Pipeline[], contexts: () => readonly ContextUsage[] = () => []) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry, prefix: "flock_" });
    // prom-client names three gauges *_total, which Prometheus reserves for counters (promtool
    // check metrics rejects them); the per-type gauges flock_nodejs_active_{handles,requests,
    // resources} carry the same numbers.
    for (const name of ["flock_nodejs_active_handles_total", "flock_nodejs_active_requests_total", "flock_nodejs_active_resources_total"]) {
      this.registry.removeSingleMetric(name);
    }

    this.requests = new Counter({
      name: "flock_requests_total",
      help: "HTTP requests answered, by route, model (empty when none was resolved) and status code.",
      labelNames: ["route", "model_name", "status"],
      registers,
    });
    this.finished = new Counter({
      name: "flock_request_finished_total",
      help: "Choices that ended, by reason: stop, length, disconnected (client gone), stalled (the client stopped reading), timeout, shutdown, error.",
      labelNames: ["model_name", "reason"],
      registers,
    });
    this.ttft = new Histogram({
      name: "flock_time_to_first_token_seconds",
      help: "Time from the request's arrival to a choice's first token, in seconds (queue and prefill included).",
      labelNames: ["model_name"],
      buckets: TTFT_BUCKETS,
      registers,
    });
    this.itl = new Histogram({
      name: "flock_inter_token_latency_seconds",
      help: "Time between successive decode steps of a choice, in seconds (a speculative step may carry several tokens).",
      labelNames: ["model_name"],
      buckets: ITL_BUCKETS,
      registers,
    });
    this.e2e = new Histogram({
      name: "flock_e2e_request_latency_seconds",
      help: "Time from the request's arrival to a choice's last token, in seconds (choices that finished with stop or length).",
      labelNames: ["model_name"],
      buckets: REQUEST_LATENCY_BUCKETS,
      registers,
    });
    this.timePerOutputToken = new Histogram({
      name: "flock_time_per_output_token_seconds",
      help: "A choice's mean time per generated token after its first, in seconds (choices with two tokens or more that finished with stop or length).",
      labelNames: ["model_name"],
      buckets: ITL_BUCKETS,
      registers,
    });
    this.promptTokensPerRequest = new Histogram({
      name: "flock_request_prompt_tokens",
      help: "Prompt tokens of each finished choice.",
      labelNames: ["model_name"],
      buckets: TOKEN_COUNT_BUCKETS,
      registers,
    });
    this.generationTokensPerRequest = new Histogram({
      name: "flock_request_generation_tokens",
      help: "Generated tokens of each finished choice.",
      labelNames: ["model_name"],
      buckets: TOKEN_COUNT_BUCKETS,
      registers,
    });
    this.success = new Counter({
      name: "flock_request_success_total",
      help: "Choices that finished as asked: finished_reason stop (end of text or a stop sequence) or length (max_tokens or the context window).",
      labelNames: ["model_name", "finished_reason"],
      registers,
    });
    // vLLM's phases of a request after it got its sequence ("scheduled"): prefill up to the first
    // token, decode from there to the last, inference both.
    this.prefill = new Histogram({
      name: "flock_request_prefill_time_seconds",
      help: "Time from a choice getting its sequence to its first token, in seconds (choices that finished with stop or length).",
      labelNames: ["model_name"],
      buckets: REQUEST_LATENCY_BUCKETS,
      registers,
    });
    this.decode = new Histogram({
      name: "flock_request_decode_time_seconds",
      help: "Time from a choice's first token to its last, in seconds (choices that finished with stop or length).",
      labelNames: ["model_name"],
      buckets: REQUEST_LATENCY_BUCKETS,
      registers,
    });
    this.inference = new Histogram({
      name: "flock_request_inference_time_seconds",
      help: "Time from a choice getting its sequence to its last token (prefill and decode), in seconds (choices that finished with stop or length).",
      labelNames: ["model_name"],
      buckets: REQUEST_LATENCY_BUCKETS,
      registers,
    });
    this.queue = new Histogram({
      name: "flock_request_queue_time_seconds",
      help: "Time a choice waited for a free sequence of its model, in seconds.",
      labelNames: ["model_name"],
      buckets: REQUEST_LATENCY_BUCKETS,
      registers,
    });
    this.batchSequences = new Histogram({
      name: "flock_batch_sequences",
      help: "Sequences whose tokens one llama.cpp decode of the model's context carried (above 1: requests share batches).",
      labelNames: ["model_name"],
      buckets: [1, 2, 4, 8, 16, 32, 64],
      registers,
    });
    this.loopDecodes = new Counter({
      name: "flock_generation_loop_decodes_total",
      help: "Decodes of plain generation run by the native addon's loop, without a round trip through JavaScript per token.",
      labelNames: ["model_name"],
      registers,
    });
    this.promptTokens = new Counter({
      name: "flock_prompt_tokens_total",
      help: "Prompt tokens of requests that produced a token (as usage.prompt_tokens counts them).",
      labelNames: ["model_name"],
      registers,
    });
    this.generationTokens = new Counter({
      name: "flock_generation_tokens_total",
      help: "Generated tokens (as usage.completion_tokens counts them).",
      labelNames: ["model_name"],
      registers,
    });

    new Gauge({
      name: "flock_num_requests_running",
      help: "Choices holding a sequence of the model (being generated in shared batches).",
      labelNames: ["model_name"],
      registers,
      collect() {
        this.reset();
        for (const p of pipelines()) this.set({ model_name: p.id }, p.model.runningSequences);
      },
    });
    new Gauge({
      name: "flock_kv_cache_usage_perc",
      help: "Share of the model's KV cache cells holding tokens (running sequences and idle sequences' cached prefixes), 0 to 1.",
      labelNames: ["model_name"],
      registers,
      collect() {
        this.reset();
        for (const p of pipelines()) this.set({ model_name: p.id }, p.model.kvCacheUsage);
      },
    });
    new Gauge({
      name: "flock_num_requests_waiting",
      help: "Choices waiting for a free sequence of the model.",
      labelNames: ["model_name"],
      registers,
      collect() {
        this.reset();
        for (const p of pipelines()) this.set({ model_name: p.id }, p.model.waitingSequences);
      },
    });

    // Contexts per configured model (a routed model's variants count under it): what bounds a
    // server's memory besides the weights.
    new Gauge({
      name: "flock_contexts",
      help: "llama.cpp contexts alive per configured model (drafts, fusion's small models and routed variants count under their own ids or their base).",
      labelNames: ["model_name"],
      registers,
      collect() {
        this.reset();
        for (const c of contexts()) this.inc({ model_name: contextOwner(c.id) });
      },
    });
    new Gauge({
      name: "flock_context_memory_bytes",
      help: "Memory the model's contexts reserved (KV cache and compute buffers, as node-llama-cpp estimates them), by memory kind.",
      labelNames: ["model_name", "memory"],
      registers,
      collect() {
        this.reset();
        for (const c of contexts()) {
          this.inc({ model_name: contextOwner(c.id), memory: "ram" }, c.ramBytes);
          this.inc({ model_name: contextOwner(c.id), memory: "vram" }, c.vramBytes);
        }
      },
    });

    // Speculative decoding: read from each pipeline's SpeculativeStats at scrape time, so the
    // pipeline's counters stay the one source of truth (responses, logs and benchmarks read them too).
    // Plain models count once a prediction or prompt lookup has had a round.
    const speculative = () => pipelines().flatMap((p) => (p.kind === "speculative" || (p.kind === "plain" && p.stats.targetCalls > 0) ? [p] : []));
    const fromStats = (name: string, help: string, read: (s: SpeculativeStats) => number) =>
      new Counter({
        name,
        help,
        labelNames: ["model_name"],
        registers,
        collect() {
          this.reset();
          for (const p of speculative()) this.inc({ model_name: p.id }, read(p.stats));
        },
      });
    fromStats("flock_spec_decode_num_drafts_total", "Speculative verification rounds that proposed at least one draft token.", (s) => s.drafts);
    fromStats("flock_spec_decode_num_draft_tokens_total", "Draft tokens proposed.", (s) => s.draftTokens);
    fromStats("flock_spec_decode_num_accepted_tokens_total", "Draft tokens accepted by the target.", (s) => s.acceptedTokens);
    fromStats("flock_spec_decode_num_target_calls_total", "Target forward passes of speculative decoding (verification batches).", (s) => s.targetCalls);
    fromStats(
      "flock_spec_decode_num_declined_positions_total",
      "Candidate positions a candidate-length policy declined before drawing them (ending their round).",
      (s) => s.declinedBeforeDraw,
    );
    fromStats("flock_spec_decode_num_skipped_rounds_total", "Rounds a candidate-length policy skipped drafting for (target-only rounds where drafting does not pay).", (s) => s.skippedRounds);
    fromStats("flock_spec_decode_num_forced_tokens_total", "Candidates a grammar forced (the only token it allowed), proposed without the draft; counted in draft tokens too.", (s) => s.forcedTokens);
    new Counter({
      name: "flock_spec_decode_num_rounds_total",
      help: "Verification rounds by mode: rejection sampling, or coupled keyed noise (requests with a seed).",
      labelNames: ["model_name", "verification"],
      registers,
      collect() {
        this.reset();
        for (const p of speculative()) for (const [verification, n] of Object.entries(p.stats.rounds)) this.inc({ model_name: p.id, verification }, n);
      },
    });
    for (const [name, help, field] of [
      ["flock_spec_decode_num_draft_tokens_by_source_total", "Candidates proposed, by proposer: the draft model (with a grammar's forced tokens), prompt lookup or a prediction.", "proposed"],
      ["flock_spec_decode_num_accepted_tokens_by_source_total", "Candidates accepted by the target, by proposer: the draft model, prompt lookup or a prediction.", "accepted"],
    ] as const) {
      new Counter({
        name,
        help,
        labelNames: ["model_name", "source"],
        registers,
        collect() {
          this.reset();
          for (const p of speculative()) for (const source of CANDIDATE_SOURCES) this.inc({ model_name: p.id, source }, p.stats.bySource[source][field]);
        },
      });
    }
    new Counter({
      name: "flock_spec_decode_num_accepted_tokens_per_pos_total",
      help: "Draft tokens accepted at each candidate position (0 = first candidate of a round).",
      labelNames: ["model_name", "position"],
      registers,
      collect() {
        this.reset();
        for (const p of speculative()) p.stats.acceptedPerPosition.forEach((n, i) => this.inc({ model_name: p.id, position: String(i) }, n));
      },
    });

    // Constrained decoding: each model's grammar mask cache (engine/grammar.ts), read at scrape time.
    const grammars = () => pipelines().flatMap((p) => (p.model.grammars ? [{ id: p.id, stats: p.model.grammars.maskCacheStats() }] : []));
    new Counter({
      name: "flock_grammar_mask_lookups_total",
      help: 'Grammar mask lookups by state (masks, checks, forced tokens): "hit" found in the model\'s cache, "miss" a mask computed by a grammar pass over the vocabulary.',
      labelNames: ["model_name", "result"],
      registers,
      collect() {
        this.reset();
        for (const g of grammars()) {
          this.inc({ model_name: g.id, result: "hit" }, g.stats.hits);
          this.inc({ model_name: g.id, result: "miss" }, g.stats.misses);
        }
      },
    });
    new Gauge({
      name: "flock_grammar_mask_cache_bytes",
      help: "Bytes of grammar masks the model's cache holds.",
      labelNames: ["model_name"],
      registers,
      collect() {
        this.reset();
        for (const g of grammars()) this.set({ model_name: g.id }, g.stats.bytes);
      },
    });

    // Dynamic logit fusion: the active expert per generated token comes from each fusion
    // pipeline's FusionStats (the one source of truth, like SpeculativeStats above); α per
    // token from the decode steps (observeFusion), as the stats keep only its sum.
    const fusion = () => pipelines().flatMap((p) => (p.kind === "fusion" ? [p] : []));
    new Counter({
      name: "flock_fusion_expert_tokens_total",
      help: 'Tokens generated by logit fusion per active expert ("none": α = 0; static fusion of several experts joins their names with "+").',
      labelNames: ["model_name", "expert"],
      registers,
      collect() {
        this.reset();
        for (const p of fusion()) for (const [expert, n] of p.stats.chosen) this.inc({ model_name: p.id, expert }, n);
      },
    });
    this.fusionAlpha = new Histogram({
      name: "flock_fusion_alpha",
      help: "Logit-fusion weight α per generated token.",
      labelNames: ["model_name"],
      buckets: FUSION_ALPHA_BUCKETS,
      registers,
    });

    this.routedTokens = new Counter({
      name: "flock_routed_tokens_total",
      help: "Generated tokens of routed models, by the expert with the most weight over the routed modules.",
      labelNames: ["model_name", "expert"],
      registers,
    });
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  exposition(): Promise<string> {
    return this.registry.metrics();
  }

  request(route: string, model: string, status: number): void {
    this.requests.inc({ route, model_name: model, status: String(status) });
  }

  /**
   * Wires a model's queue-time reports into flock_request_queue_time_seconds, and tells the
   * request they came from (by its signal) when its choice got a sequence.
   */
  queueTimeObserver(model: string): (seconds: number, signal?: AbortSignal) => void {
    const child = this.queue.labels({ model_name: model });
    return (seconds, signal) => {
      child.observe(seconds);
      const request = signal && this.bySignal.get(signal);
      // A draft or fusion model acquired for the same request reports under its own id: not this request's choice.
      if (request && request.model === model) request.observed.scheduled();
    };
  }

  /** Wires a model's batch reports into flock_batch_sequences and flock_generation_loop_decodes_total. */
  batchObserver(model: string): (sequences: number, loop: boolean) => void {
    const child = this.batchSequences.labels({ model_name: model });
    const loopDecodes = this.loopDecodes.labels({ model_name: model });
    return (sequences, loop) => {
      child.observe(sequences);
      if (loop) loopDecodes.inc();
    };
  }

  /**
   * Timings of one request's choices; `arrival` is performance.now() at arrival, `signal` the one
   * its choices acquire sequences with (without it, prefill and inference count from arrival).
   */
  generation(model: string, arrival: number, promptTokens: number, signal?: AbortSignal): GenerationMetrics {
    const observed = new GenerationMetrics(
      {
        ttft: this.ttft.labels({ model_name: model }),
        itl: this.itl.labels({ model_name: model }),
        e2e: this.e2e.labels({ model_name: model }),
        prompt: this.promptTokens.labels({ model_name: model }),
        generated: this.generationTokens.labels({ model_name: model }),
        finished: (reason) => this.finished.inc({ model_name: model, reason }),
        success: (reason) => this.success.inc({ model_name: model, finished_reason: reason }),
        promptPerRequest: this.promptTokensPerRequest.labels({ model_name: model }),
        generatedPerRequest: this.generationTokensPerRequest.labels({ model_name: model }),
        timePerOutputToken: this.timePerOutputToken.labels({ model_name: model }),
        prefill: this.prefill.labels({ model_name: model }),
        decode: this.decode.labels({ model_name: model }),
        inference: this.inference.labels({ model_name: model }),
      },
      arrival,
      promptTokens,
    );
    if (signal) this.bySignal.set(signal, { model, observed });
    return observed;
  }

  /** Routed models: `tokens` generated tokens whose routed modules gave `expert` the most weight. */
  observeRouting(model: string, expert: string, tokens: number): void {
    this.routedTokens.inc({ model_name: model, expert }, tokens);
  }

  /** Logit fusion: α of one generated token (the active expert is counted from FusionStats). */
  observeFusion(model: string, alpha: number): void {
    this.fusionAlpha.observe({ model_name: model }, alpha);
  }
}

interface GenerationSinks {
  ttft: { observe(v: number): void };
  itl: { observe(v: number): void };
  e2e: { observe(v: number): void };
  prompt: { inc(v: number): void };
  generated: { inc(v: number): void };
  finished: (reason: FinishedReason) => void;
  success: (reason: "stop" | "length") => void;
  promptPerRequest: { observe(v: number): void };
  generatedPerRequest: { observe(v: number): void };
  timePerOutputToken: { observe(v: number): void };
  prefill: { observe(v: number): void };
  decode: { observe(v: number): void };
  inference: { observe(v: number): void };
}

/** Per-request bookkeeping: first-token and inter-step times per choice, and how each ended. */
export class GenerationMetrics {
  private readonly lastStep = new Map<number, number>();
  private readonly firstStep = new Map<number, number>();
  private readonly generated = new Map<number, number>();
  private readonly ended = new Set<number>();
  /** When the request's choices got their sequences, in order (choice i takes the i-th). */
  private readonly scheduledAt: number[] = [];
  private promptCounted = false;
  /** Seconds from arrival to the first token of any choice (null before one). */
  firstTokenSeconds: number | null = null;

  constructor(
    private readonly sinks: GenerationSinks,
    private readonly arrival: number,
    private readonly promptTokens: number,
  ) {}

  /** One of the request's choices got its sequence (it leaves the queue; prefill starts). */
  scheduled(now = performance.now()): void {
    this.scheduledAt.push(now);
  }

  step(index: number, tokens: number, now = performance.now()): void {
    if (!this.promptCounted) {
      this.promptCounted = true;
      this.sinks.prompt.inc(this.promptTokens);
    }
    const previous = this.lastStep.get(index);
    if (previous === undefined) {
      this.firstStep.set(index, now);
      const seconds = (now - this.arrival) / 1000;
      this.sinks.ttft.observe(seconds);
      this.firstTokenSeconds ??= seconds;
    } else {
      this.sinks.itl.observe((now - previous) / 1000);
    }
    this.lastStep.set(index, now);
    this.generated.set(index, (this.generated.get(index) ?? 0) + tokens);
    if (tokens > 0) this.sinks.generated.inc(tokens);
  }

  /** A choice ended; only stop and length count towards end-to-end latency. Once per choice. */
  finish(index: number, reason: FinishedReason, now = performance.now()): void {
    if (this.ended.has(index)) return;
    this.ended.add(index);
    const tokens = this.generated.get(index) ?? 0;
    if (reason === "stop" || reason === "length") {
      this.sinks.e2e.observe((now - this.arrival) / 1000);
      this.sinks.success(reason);
      const first = this.firstStep.get(index);
      if (first !== undefined && tokens > 1) this.sinks.timePerOutputToken.observe((this.lastStep.get(index)! - first) / 1000 / (tokens - 1));
      if (first !== undefined) {
        const last = this.lastStep.get(index)!;
        // Choices start in index order and sequences go to waiters first come, first served.
        const start = Math.min(this.scheduledAt[index] ?? this.arrival, first);
        this.sinks.prefill.observe((first - start) / 1000);
        this.sinks.decode.observe((last - first) / 1000);
        this.sinks.inference.observe((last - start) / 1000);
      }
    }
    this.sinks.promptPerRequest.observe(this.promptTokens);
    this.sinks.generatedPerRequest.observe(tokens);
    this.sinks.finished(reason);
  }

  /** Ends every choice of `count` that has not ended yet with `reason`. */
  finishRest(count: number, reason: FinishedReason): void {
    for (let i = 0; i < count; i++) this.finish(i, reason);
  }
}
