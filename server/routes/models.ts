// GET /v1/models, GET /v1/models/:id
import type { Hono } from "hono";
import type { Pipeline } from "../../pipelines/pipeline.js";
import type { AppEnv, ServerContext } from "../context.js";
import { EXTENSION_KEY } from "../schemas.js";

/** The `flock` extension of a model object: how the id is served, and what a request may pick from. */
function servedAs(pipeline: Pipeline): { kind: string; experts?: string[] } {
  if (pipeline.kind === "fusion") return { kind: pipeline.kind, experts: pipeline.experts.map((e) => e.name) };
  if (pipeline.kind === "routed") return { kind: pipeline.kind, experts: pipeline.library.list().map((e) => e.spec.name) };
  return { kind: pipeline.kind };
}

export function modelRoutes(app: Hono<AppEnv>, ctx: ServerContext): void {
  const describe = (m: { id: string; created: number; pipeline: Pipeline }) => ({
    id: m.id,
    object: "model",
    created: m.created,
    owned_by: "flock",
    [EXTENSION_KEY]: servedAs(m.pipeline),
  });
  app.get("/v1/models", (c) => c.json({ object: "list", data: ctx.registry().list().map(describe) }));
  app.get("/v1/models/:id{.+}", (c) => {
    const id = c.req.param("id");
    ctx.registry().resolve(id);
    return c.json(describe(ctx.registry().list().find((m) => m.id === id)!));
  });
}
