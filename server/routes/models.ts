// GET /v1/models, GET /v1/models/:id
import type { Hono } from "hono";
import type { EmbeddingModel } from "../../engine/embedding.js";
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
  const describeEmbedding = (m: { id: string; created: number; model: EmbeddingModel }) => ({
    id: m.id,
    object: "model",
    created: m.created,
    owned_by: "flock",
    [EXTENSION_KEY]: { kind: "embedding", dimensions: m.model.dimensions },
  });
  const all = () => [...ctx.registry().list().map(describe), ...ctx.registry().embeddingList().map(describeEmbedding)];
  app.get("/v1/models", (c) => c.json({ object: "list", data: all() }));
  app.get("/v1/models/:id{.+}", (c) => {
    const id = c.req.param("id");
    const found = all().find((m) => m.id === id);
    if (!found) ctx.registry().resolve(id); // throws model_not_found
    return c.json(found);
  });
}
