// GET /v1/models, GET /v1/models/:id
import type { Hono } from "hono";
import type { AppEnv, ServerContext } from "../app.js";

export function modelRoutes(app: Hono<AppEnv>, ctx: ServerContext): void {
  const describe = (m: { id: string; created: number }) => ({ id: m.id, object: "model", created: m.created, owned_by: "flock" });
  app.get("/v1/models", (c) => c.json({ object: "list", data: ctx.registry().list().map(describe) }));
  app.get("/v1/models/:id{.+}", (c) => {
    const id = c.req.param("id");
    ctx.registry().resolve(id);
    return c.json(describe(ctx.registry().list().find((m) => m.id === id)!));
  });
}
