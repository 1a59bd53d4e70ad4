// Starts flock: the HTTP server listens at once (GET /health answers 503 while loading), the
// engine loads the configured models, then every route serves.
import type { AddressInfo } from "node:net";
import { serve, type ServerType } from "@hono/node-server";
import { Engine } from "../models/engine.js";
import { ModelEntry } from "../models/registry.js";
import { PipelineRegistry } from "../routing/pipeline.js";
import { loadPipeline, savePredictors } from "../routing/load.js";
import { createApp, notReady } from "./app.js";
import type { ServerConfig } from "./config.js";
import { demoModels } from "./demo.js";
import { createLogger, type Logger } from "./logger.js";

export interface FlockServer {
  url: string;
  port: number;
  /** Resolves when every model is loaded; rejects when loading failed. */
  ready: Promise<void>;
  close(): Promise<void>;
}

export async function startServer(config: ServerConfig, log: Logger = createLogger(config.logLevel)): Promise<FlockServer> {
  let registry: PipelineRegistry | null = null;
  let failure: string | null = null;
  const app = createApp({
    registry: () => registry ?? notReady(),
    health: () =>
      registry ? { status: "ok", models: registry.list().map((m) => m.id) } : failure ? { status: "failed", detail: failure } : { status: "loading" },
    limits: { maxN: config.limits.maxN, maxTokens: config.limits.maxTokens },
    maxBodyBytes: config.limits.maxBodyBytes,
    log,
  });

  const server: ServerType = await new Promise((resolve, reject) => {
    const s = serve({ fetch: app.fetch, hostname: config.host, port: config.port }, () => resolve(s));
    s.once("error", reject);
  });
  const port = (server.address() as AddressInfo).port;
  const host = config.host.includes(":") ? `[${config.host}]` : config.host;
  log.info({ url: `http://${host}:${port}` }, "listening");

  let engine: Engine | null = null;
  let saveTimer: NodeJS.Timeout | undefined;
  const ready = (async () => {
    engine = await Engine.create({ gpu: config.gpu, threads: config.threads });
    log.info(engine.describe(), "engine ready");
    const entries = config.models.length > 0 ? config.models : demoModels(config.cacheDir).map((m) => ModelEntry.parse(m));
    if (config.models.length === 0) log.info({ cacheDir: config.cacheDir }, "no models configured: serving the built-in demo");
    const loaded = new PipelineRegistry();
    for (const entry of entries) {
      const pipeline = await loadPipeline(engine, entry, config.cacheDir);
      loaded.add(pipeline);
      const model = pipeline.model;
      log.info(
        {
          model: entry.id,
          path: entry.path,
          contextSize: model.contextSize,
          parallel: model.parallel,
          threads: model.threads,
          gpuLayers: model.gpuLayers,
          chatTemplate: model.chatTemplateName,
          ...(pipeline.kind === "speculative"
            ? { draft: entry.speculative?.draft, policy: pipeline.settings.policy, predictor: pipeline.predictor.name, costs: pipeline.costs.describe() }
            : {}),
        },
        "model loaded",
      );
    }
    registry = loaded;
    // Acceptance predictors learn while serving; keep what they learned across restarts.
    saveTimer = setInterval(() => savePredictors(loaded), 60_000);
    saveTimer.unref();
  })().catch((err: unknown) => {
    failure = (err as Error).message;
    log.error({ err }, "loading models failed");
    throw err;
  });
  ready.catch(() => undefined); // observed by callers through `ready`; never an unhandled rejection

  return {
    url: `http://${host}:${port}`,
    port,
    ready,
    async close() {
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await ready.catch(() => undefined);
      clearInterval(saveTimer);
      if (registry) savePredictors(registry);
      if (engine) await (engine as Engine)[Symbol.asyncDispose]();
    },
  };
}
