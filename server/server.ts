// Starts flock: the HTTP server listens at once (GET /health answers 503 while loading), the
// engine loads the configured models, then every route serves.
import type { Server as HttpServer } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { serve, type ServerType } from "@hono/node-server";
import { Engine } from "../engine/engine.js";
import { entryFiles, ModelEntry } from "../pipelines/model-entry.js";
import { PipelineRegistry, pipelineModels } from "../pipelines/pipeline.js";
import { loadPipelines, savePredictors } from "../pipelines/load.js";
import { createApp } from "./app.js";
import { notReady, shuttingDown } from "./context.js";
import type { ServerConfig } from "./config.js";
import { demoModels } from "./demo.js";
import { Inflight } from "./inflight.js";
import { createLogger, type Logger } from "./logger.js";
import { Metrics } from "./metrics.js";

/** How often a model whose RPC server failed tries to load again. */
const RPC_RECOVERY_MS = 5_000;

export interface FlockServer {
  url: string;
  port: number;
  /** Resolves when every model is loaded; rejects when loading failed. */
  ready: Promise<void>;
  /**
   * Graceful shutdown: stops accepting connections, refuses new requests (503), gives requests
   * in flight `deadlineMs` (default: the configured shutdownTimeout) to finish, cancels the rest
   * (their clients get a shutting_down error), saves what the predictors learned, frees the
   * engine. Calling it again while it runs cuts the deadline to `deadlineMs`.
   */
  close(deadlineMs?: number): Promise<void>;
  /** The request ids of the generations in flight (logged when the process dies). */
  inFlight(): string[];
}

export async function startServer(config: ServerConfig, log: Logger = createLogger(config.logLevel, undefined, config.logFormat)): Promise<FlockServer> {
  let registry: PipelineRegistry | null = null;
  let failure: string | null = null;
  let engine: Engine | null = null;
  const started = Date.now();
  const metrics = new Metrics(
    () => registry?.list().map((m) => m.pipeline) ?? [],
    () => (engine ? (engine as Engine).contexts() : []),
  );
  const inflight = new Inflight();
  const app = createApp({
    registry: () => registry ?? notReady(),
    health: () => {
      if (!registry) return failure ? { status: "failed", detail: failure } : { status: "loading" };
      const models = registry.list();
      // A model whose RPC server failed cannot serve until flock restarts (engine/model.ts).
      const unavailable = models.flatMap(({ id, pipeline }) => (pipeline.model.unavailable ? [{ id, detail: pipeline.model.unavailable }] : []));
      return { status: unavailable.length > 0 ? "unhealthy" : "ok", models: models.map((m) => m.id), ...(unavailable.length > 0 ? { unavailable } : {}) };
    },
    limits: { maxN: config.limits.maxN, maxTokens: config.limits.maxTokens },
    maxBodyBytes: config.limits.maxBodyBytes,
    log,
    metrics,
    inflight,
    serving: {
      maxPromptTokens: config.limits.maxPromptTokens,
      requestTimeoutMs: config.limits.requestTimeout === null ? null : config.limits.requestTimeout * 1000,
      keepAliveMs: config.keepAlive * 1000,
      writeTimeoutMs: config.writeTimeout * 1000,
      retryAfter: config.limits.retryAfter,
      logPrompts: config.logPrompts,
    },
    auth: config.auth,
    corsOrigins: config.corsOrigins,
    playground: config.playground,
    adminDirs: config.adminDirs,
    allowedHosts: config.allowedHosts,
    status: () => ({
      uptimeSeconds: Math.round((Date.now() - started) / 1000),
      engine: engine ? (engine as Engine).describe() : null,
      contexts: engine ? (engine as Engine).contexts() : [],
      adapters: engine ? (engine as Engine).adapters.status() : null,
    }),
  });

  const server: ServerType = await new Promise((resolve, reject) => {
    const s = serve({ fetch: app.fetch, hostname: config.host, port: config.port }, () => resolve(s));
    s.once("error", reject);
  });
  const port = (server.address() as AddressInfo).port;
  const host = config.host.includes(":") ? `[${config.host}]` : config.host;
  log.info(
    {
      url: `http://${host}:${port}`,
      // Counts only: keys never reach the logs.
      apiKeys: config.auth.apiKeys.length,
      adminKey: config.auth.adminKey !== undefined,
      cors: config.corsOrigins,
    },
    "listening",
  );

  // llama.cpp gives no model more context than it was trained for: say so rather than serve less silently.
  const warnContextCapped = (model: string, asked: number, trained: number) =>
    log.warn(
      { model, contextSize: asked, trainContextSize: trained },
      `-c/--ctx-size (contextSize) ${asked} is larger than the model's training context: each sequence holds ${trained} tokens`,
    );

  let saveTimer: NodeJS.Timeout | undefined;
  let recoveryTimer: NodeJS.Timeout | undefined;
  const ready = (async () => {
    engine = await Engine.create({ gpu: config.gpu, threads: config.threads });
    log.info(engine.describe(), "engine ready");
    // -c, -np and -ngl without -m (modelDefaults) set every demo model: its own values are flock's choice, not the user's.
    const entries = config.models.length > 0 ? config.models : (await demoModels(config.cacheDir, config.demoTokenizer)).map((m) => ModelEntry.parse({ ...m, ...config.modelDefaults }));
    if (config.models.length === 0) log.info({ cacheDir: config.cacheDir }, "no models configured: serving the built-in demo");
    if (config.weightCheck) {
      const checked = await engine.checkWeights(entries.flatMap(entryFiles), join(config.cacheDir, "weight-check.json"));
      if (!checked) log.warn("startup weight check unavailable in this build (run npm run build:native)");
    }
    const loaded = new PipelineRegistry();
    for (const configured of entries) {
      const entry = { ...configured, maxQueue: configured.maxQueue ?? config.limits.maxQueue };
      if (entry.embeddings) {
        const embedder = await engine.loadEmbedding(entry);
        loaded.addEmbedding(embedder);
        log.info({ model: entry.id, path: entry.path, contextSize: embedder.contextSize, dimensions: embedder.dimensions, weightBuffers: engine.weightBuffers(entry.path) }, "embedding model loaded");
        if (typeof entry.contextSize === "number" && entry.contextSize > embedder.contextSize) warnContextCapped(entry.id, entry.contextSize, embedder.contextSize);
        continue;
      }
      const [pipeline, ...routed] = await loadPipelines(engine, entry, config.cacheDir, log);
      loaded.add(pipeline);
      const model = pipeline.model;
      model.onAcquire = metrics.queueTimeObserver(pipeline.id);
      model.onBatch = metrics.batchObserver(pipeline.id);
      log.info(
        {
          model: entry.id,
          path: entry.path,
          contextSize: model.contextSize,
          parallel: model.parallel,
          maxQueue: entry.maxQueue,
          threads: model.threads,
          gpuLayers: model.gpuLayers,
          chatTemplate: model.chatTemplateName,
          // The buffer types its weights are in (MiB each), as llama.cpp loaded them.
          weightBuffers: engine.weightBuffers(entry.path),
          ...(pipeline.kind === "speculative"
            ? { draft: entry.speculative?.draft, policy: pipeline.settings.policy, predictor: pipeline.predictor.name, costs: pipeline.costs.describe() }
            : {}),
        },
        "model loaded",
      );
      if (entry.contextSize === "auto" && model.contextSize < model.trainContextSize) {
        log.warn(
          { model: entry.id, contextSize: model.contextSize, trainContextSize: model.trainContextSize, parallel: model.parallel },
          `context reduced to ${model.contextSize} tokens, below the model's training context of ${model.trainContextSize}, to fit memory for its ${model.parallel} parallel sequences: ` +
            "choose the context with -c/--ctx-size (contextSize), or fewer sequences with -np/--parallel (parallel)",
        );
      }
      if (typeof entry.contextSize === "number" && entry.contextSize > model.trainContextSize) warnContextCapped(entry.id, entry.contextSize, model.trainContextSize);
      for (const r of routed) {
        loaded.add(r);
        if (r.kind === "routed") {
          const experts = r.library.list().map((e) => ({ name: e.spec.name, gates: e.phatgoose ? "phatgoose" : "arrow only" }));
          const failed = r.library.failed.map((f) => f.name);
          log.info({ model: r.id, base: entry.id, method: r.method, topK: r.settings.topK, temperature: r.settings.temperature, experts, ...(failed.length > 0 ? { failed } : {}) }, "routed model ready");
        }
      }
    }
    registry = loaded;
    log.info({ models: [...loaded.list(), ...loaded.embeddingList()].map((m) => m.id), url: `http://${host}:${port}` }, "ready: every model is loaded");
    const rpcEntries = entries.filter((e) => e.rpc?.length);
    if (rpcEntries.length > 0) {
      recoveryTimer = setInterval(() => {
        for (const entry of rpcEntries) recoverRpcModel(engine!, loaded, { ...entry, maxQueue: entry.maxQueue ?? config.limits.maxQueue });
      }, RPC_RECOVERY_MS);
      recoveryTimer.unref();
    }
    // Acceptance predictors learn while serving; keep what they learned across restarts.
    saveTimer = setInterval(() => savePredictors(loaded), 60_000);
    saveTimer.unref();
  })().catch((err: unknown) => {
    failure = (err as Error).message;
    log.error({ err }, "loading models failed");
    throw err;
  });
  ready.catch(() => undefined); // observed by callers through `ready`; never an unhandled rejection

  /**
   * A model whose RPC server failed (engine/model.ts) is loaded again once its servers answer:
   * its contexts and the weights it had on them are freed (each server serves one connection at
   * a time), then its pipeline is built anew and served in place of the failed one.
   */
  const recovering = new Map<string, Promise<void>>();
  const recoverRpcModel = (engine: Engine, loaded: PipelineRegistry, entry: ModelEntry) => {
    const current = loaded.resolve(entry.id);
    if (!current.model.unavailable || recovering.has(entry.id) || closing) return;
    const attempt = (async () => {
      for (const model of pipelineModels(current)) await model[Symbol.asyncDispose]();
      await engine.evictRpcWeights(entry);
      const [pipeline] = await loadPipelines(engine, entry, config.cacheDir, log);
      pipeline.model.onAcquire = metrics.queueTimeObserver(pipeline.id);
      pipeline.model.onBatch = metrics.batchObserver(pipeline.id);
      loaded.replace(pipeline);
      log.info({ model: entry.id, rpc: entry.rpc }, "model loaded again: its RPC servers are back");
    })()
      .catch((err: unknown) => log.debug({ model: entry.id, err: (err as Error).message }, "model still unavailable"))
      .finally(() => recovering.delete(entry.id));
    recovering.set(entry.id, attempt);
  };

  let closing: Promise<void> | null = null;
  let cutDeadline: ((ms: number) => void) | null = null;
  const shutdown = async (deadlineMs: number) => {
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    const deadline = new Promise<number>((resolve) => {
      const timer = setTimeout(() => resolve(deadlineMs), deadlineMs);
      cutDeadline = (ms) => {
        clearTimeout(timer);
        resolve(ms);
      };
    });
    if (inflight.size > 0) log.info({ inFlight: inflight.size, deadlineMs }, "waiting for requests in flight");
    const { cancelled } = await inflight.drain(deadline, shuttingDown());
    if (cancelled > 0) log.warn({ cancelled }, "cancelled requests still running at the shutdown deadline");
    // Connections kept alive by clients hold server.close() open; close them once idle (a
    // response that just finished still gets its last bytes out) and, after a grace period,
    // whatever is left.
    const http = server as HttpServer; // serve() makes a plain node:http server
    const idleSweep = setInterval(() => http.closeIdleConnections(), 50);
    const grace = new Promise<void>((resolve) => setTimeout(resolve, 2_000).unref());
    await Promise.race([closed, grace]);
    clearInterval(idleSweep);
    http.closeAllConnections();
    await ready.catch(() => undefined);
    clearInterval(saveTimer);
    clearInterval(recoveryTimer);
    await Promise.all(recovering.values());
    if (registry) savePredictors(registry);
    if (engine) await (engine as Engine)[Symbol.asyncDispose]();
  };

  return {
    url: `http://${host}:${port}`,
    port,
    ready,
    close(deadlineMs = config.shutdownTimeout * 1000) {
      if (closing) {
        cutDeadline?.(deadlineMs);
        return closing;
      }
      closing = shutdown(deadlineMs);
      return closing;
    },
    inFlight: () => inflight.ids(),
  };
}
