// The Hono app: request ids and metrics, CORS, auth, body limit, routes, and the single error
// handler.
import type { EmbeddingModel } from "../engine/embedding.js";
import { IgnoredFieldLog } from "./request-fields.js";
import { randomUUID } from "node:crypto";
import { Hono, type Context } from "hono";
import { bodyLimit } from "hono/body-limit";
import { cors } from "hono/cors";
import { routePath } from "hono/route";
import { collectGarbage, FAULT_HEADER, faultsEnabled, parseFault, withFault } from "../engine/faults.js";
import type { Pipeline } from "../pipelines/pipeline.js";
import { KeySet, requireAdminKey, requireApiKey } from "./auth.js";
import { type AppEnv, DEFAULT_SERVING, type Operations, type ServerContext, shuttingDown } from "./context.js";
import { errorBody, toOpenAIError } from "./errors.js";
import { Inflight } from "./inflight.js";
import { Metrics, routeLabel } from "./metrics.js";
import { chatRoutes } from "./routes/chat.js";
import { completionRoutes } from "./routes/completions.js";
import { embeddingsRoutes } from "./routes/embeddings.js";
import { responsesRoutes } from "./routes/responses.js";
import { tokenizeRoutes } from "./routes/tokenize.js";
import { modelRoutes } from "./routes/models.js";
import { playgroundRoutes } from "./routes/playground.js";
import { adminRoutes } from "./routes/admin.js";

/** Reads and drops a body nobody read, up to `limit` bytes; false if it was longer or broken. */
async function discardUnreadBody(req: Request, limit: number): Promise<boolean> {
  if (!req.body || req.bodyUsed) return true;
  const reader = req.body.getReader();
  let bytes = 0;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return true;
      bytes += value.byteLength;
      if (bytes > limit) {
        await reader.cancel().catch(() => undefined);
        return false;
      }
    }
  } catch {
    return false;
  }
}

/** The pipelines, or none while models load. */
function embeddingModelsOf(ctx: ServerContext): EmbeddingModel[] {
  try {
    return ctx.registry().embeddingList().map((m) => m.model);
  } catch {
    return [];
  }
}

function pipelinesOf(ctx: ServerContext): Pipeline[] {
  try {
    return ctx.registry().list().map((m) => m.pipeline);
  } catch {
    return [];
  }
}

/**
 * The model id a request named, when it is a served one (label values stay bounded): set by
 * respond(), else read from the JSON body the route already parsed (failed requests).
 */
async function modelLabel(c: Context<AppEnv>, ctx: ServerContext): Promise<string> {
  const resolved = c.get("model");
  if (resolved) return resolved;
  const cached = c.req.bodyCache.text as unknown;
  if (cached === undefined) return "";
  try {
    const body = JSON.parse(await Promise.resolve(cached as string)) as { model?: unknown };
    if (typeof body?.model !== "string") return "";
    const id = body.model;
    return ctx.registry().list().some((m) => m.id === id) || ctx.registry().embeddingList().some((m) => m.id === id) ? id : "";
  } catch {
    return "";
  }
}

export function createApp(ctx: ServerContext): Hono<AppEnv> {
  const app = new Hono<AppEnv>();
  const ops: Operations = {
    metrics: ctx.metrics ?? new Metrics(() => pipelinesOf(ctx)),
    inflight: ctx.inflight ?? new Inflight(),
    serving: { ...DEFAULT_SERVING, ...ctx.serving },
    ignoredFields: new IgnoredFieldLog(),
  };
  const apiKeys = new KeySet(ctx.auth?.apiKeys ?? []);
  const adminKey = new KeySet(ctx.auth?.adminKey ? [ctx.auth.adminKey] : []);

  app.use(async (c, next) => {
    const arrival = performance.now();
    const requestId = c.req.header("x-request-id")?.slice(0, 128) || randomUUID();
    const log = ctx.log.child({ requestId });
    c.set("requestId", requestId);
    c.set("log", log);
    c.set("arrival", arrival);
    c.set("ops", ops);
    await next();
    // A request answered before its body was read (401, 404, 413, 415…) leaves that body in the
    // connection; the Node adapter drops such a connection after 500 ms, and a keep-alive
    // client that already sent its next request on it loses that one. Read the rest here, up
    // to the body limit; past it, tell the client not to reuse the connection.
    if (!(await discardUnreadBody(c.req.raw, ctx.maxBodyBytes))) c.res.headers.set("connection", "close");
    // Set on the final response (also streams, whose headers are built before this point).
    c.res.headers.set("x-request-id", requestId);
    const route = routeLabel(routePath(c, -1));
    ops.metrics.request(route, await modelLabel(c, ctx), c.res.status);
    log.info({ method: c.req.method, path: c.req.path, status: c.res.status, ms: Math.round(performance.now() - arrival) }, "request");
  });

  // Test mode only (NODE_ENV=test, FLOCK_FAULTS=1): a request may ask the engine to fail
  // mid-generation; the plan follows the request's async context down to EngineSequence.
  if (faultsEnabled()) {
    ctx.log.warn("fault injection is on (FLOCK_FAULTS=1, NODE_ENV=test): requests may carry " + FAULT_HEADER);
    app.use(async (c, next) => {
      const header = c.req.header(FAULT_HEADER);
      if (header === "gc") collectGarbage();
      const plan = parseFault(header);
      return plan ? withFault(plan, next) : next();
    });
  }

  if (ctx.allowedHosts && ctx.allowedHosts.length > 0) {
    const allowed = new Set(ctx.allowedHosts.map((h) => h.toLowerCase()));
    app.use(async (c, next) => {
      const host = (c.req.header("host") ?? "").toLowerCase().replace(/:\d+$/, "").replace(/^\[|\]$/g, "");
      if (!allowed.has(host)) return c.json(errorBody(`Host ${JSON.stringify(host.slice(0, 100))} is not served here.`, "invalid_request_error", null, "host_not_allowed"), 403);
      return next();
    });
  }

  // Before auth: browsers send preflights without credentials.
  if (ctx.corsOrigins && ctx.corsOrigins.length > 0) {
    const origins = [...ctx.corsOrigins];
    app.use(
      cors({
        origin: origins.includes("*") ? "*" : origins,
        allowHeaders: ["Authorization", "Content-Type", "x-request-id", "OpenAI-Organization", "OpenAI-Project"],
        exposeHeaders: ["x-request-id", "Retry-After"],
        maxAge: 600,
      }),
    );
  }

  app.use("/v1/*", async (c, next) => {
    if (ops.inflight.isDraining) throw shuttingDown();
    return next();
  });
  app.use("/v1/*", requireApiKey(apiKeys, adminKey));
  for (const path of ["/tokenize", "/detokenize"]) app.use(path, requireApiKey(apiKeys, adminKey));
  app.use("/admin/*", requireAdminKey(adminKey));
  if (ctx.auth?.healthRequiresKey) app.use("/health", requireApiKey(apiKeys, adminKey));
  if (ctx.auth?.metricsRequiresKey) app.use("/metrics", requireApiKey(apiKeys, adminKey));

  const limitBody = bodyLimit({
    maxSize: ctx.maxBodyBytes,
    onError: (c) => c.json(errorBody(`The request body exceeds the limit of ${ctx.maxBodyBytes} bytes.`, "invalid_request_error", null, "request_too_large"), 413),
  });
  app.use("/v1/*", limitBody);
  for (const path of ["/tokenize", "/detokenize"]) app.use(path, limitBody);

  app.get("/health", (c) => {
    // A draining server tells load balancers to stop sending work while it finishes.
    if (ops.inflight.isDraining) return c.json({ status: "shutting_down" }, 503);
    const health = ctx.health();
    return c.json(health, health.status === "ok" ? 200 : 503);
  });

  app.get("/metrics", async (c) => c.body(await ops.metrics.exposition(), 200, { "content-type": ops.metrics.contentType }));

  app.use("/admin/*", limitBody);
  adminRoutes(app, ctx, () => ({
    ...ctx.health(),
    draining: ops.inflight.isDraining,
    inFlight: ops.inflight.size,
    ...ctx.status?.(),
    models: pipelinesOf(ctx).map((p) => ({
      id: p.id,
      kind: p.kind,
      contextSize: p.model.contextSize,
      parallel: p.model.parallel,
      maxQueue: Number.isFinite(p.model.maxQueue) ? p.model.maxQueue : null,
      running: p.model.runningSequences,
      waiting: p.model.waitingSequences,
      ...(p.kind === "speculative" ? { draft: p.draft.id, policy: p.settings.policy, predictor: p.predictor.name } : {}),
      ...(p.kind === "routed" ? { base: p.library.baseId, method: p.method, experts: p.library.size, contexts: p.variants.size } : {}),
    })),
    embeddingModels: embeddingModelsOf(ctx).map((m) => ({ id: m.id, contextSize: m.contextSize, dimensions: m.dimensions })),
  }));

  modelRoutes(app, ctx);
  tokenizeRoutes(app, ctx);
  chatRoutes(app, ctx);
  completionRoutes(app, ctx);
  responsesRoutes(app, ctx);
  embeddingsRoutes(app, ctx);
  // Static and public: the page holds no secrets, and asks for the API key itself when /v1 does.
  if (ctx.playground !== false) playgroundRoutes(app);

  app.notFound((c) =>
    c.json(errorBody(`Unknown request URL: ${c.req.method} ${c.req.path}.`, "invalid_request_error", null, "unknown_url"), 404),
  );

  app.onError((err, c) => {
    const { status, body, internal, headers } = toOpenAIError(err, ops.serving.retryAfter);
    const log = c.get("log") ?? ctx.log;
    if (internal) log.error({ err }, "request failed");
    return c.json(body, status, headers);
  });

  return app;
}
