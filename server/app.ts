// The Hono app: routes, body limit, request ids, and the single error handler.
import { randomUUID } from "node:crypto";
import { Hono } from "hono";
import { bodyLimit } from "hono/body-limit";
import { FlockError } from "../models/errors.js";
import type { PipelineRegistry } from "../routing/pipeline.js";
import { errorBody, toOpenAIError } from "./errors.js";
import type { Limits } from "./generation.js";
import type { Logger } from "./logger.js";
import { chatRoutes } from "./routes/chat.js";
import { completionRoutes } from "./routes/completions.js";
import { modelRoutes } from "./routes/models.js";

export interface ServerContext {
  /** The loaded pipelines; throws `unavailable` while models are still loading. */
  registry(): PipelineRegistry;
  /** Health: loading, ready, or failed with a reason. */
  health(): { status: "loading" | "ok" | "failed"; detail?: string; models?: string[] };
  limits: Limits;
  maxBodyBytes: number;
  log: Logger;
}

export type AppEnv = { Variables: { log: Logger; requestId: string } };

export function createApp(ctx: ServerContext): Hono<AppEnv> {
  const app = new Hono<AppEnv>();

  app.use(async (c, next) => {
    const requestId = c.req.header("x-request-id")?.slice(0, 128) || randomUUID();
    const log = ctx.log.child({ requestId });
    c.set("requestId", requestId);
    c.set("log", log);
    const started = performance.now();
    await next();
    // Set on the final response (also streams, whose headers are built before this point).
    c.res.headers.set("x-request-id", requestId);
    log.info({ method: c.req.method, path: c.req.path, status: c.res.status, ms: Math.round(performance.now() - started) }, "request");
  });

  app.use(
    "/v1/*",
    bodyLimit({
      maxSize: ctx.maxBodyBytes,
      onError: (c) =>
        c.json(errorBody(`The request body exceeds the limit of ${ctx.maxBodyBytes} bytes.`, "invalid_request_error", null, "request_too_large"), 413),
    }),
  );

  app.get("/health", (c) => {
    const health = ctx.health();
    return c.json(health, health.status === "ok" ? 200 : 503);
  });

  modelRoutes(app, ctx);
  chatRoutes(app, ctx);
  completionRoutes(app, ctx);

  app.notFound((c) =>
    c.json(errorBody(`Unknown request URL: ${c.req.method} ${c.req.path}.`, "invalid_request_error", null, "unknown_url"), 404),
  );

  app.onError((err, c) => {
    const { status, body, internal } = toOpenAIError(err);
    const log = c.get("log") ?? ctx.log;
    if (internal) log.error({ err }, "request failed");
    return c.json(body, status);
  });

  return app;
}

export function notReady(): never {
  throw new FlockError("unavailable", "Models are still loading; retry shortly.");
}
