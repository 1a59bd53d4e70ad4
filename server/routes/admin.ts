// Admin endpoints (behind the admin key): server status, and the expert libraries of routed
// models — list, add and remove experts while serving. A change retires the library's contexts;
// requests running on them finish there, new requests see the new library.
import { realpathSync } from "node:fs";
import { basename, dirname, isAbsolute, join, resolve, sep } from "node:path";
import type { Hono } from "hono";
import { FlockError } from "../../engine/errors.js";
import { ExpertEntry } from "../../experts/config.js";
import type { Expert } from "../../experts/library.js";
import type { RoutedPipeline } from "../../pipelines/pipeline.js";
import type { AppEnv, ServerContext } from "../context.js";
import { parseBody } from "../validation.js";

function describeExpert(e: Expert) {
  return {
    name: e.spec.name,
    lora: e.spec.lora,
    scale: e.spec.scale,
    gates: e.spec.gates ?? null,
    /** Routed ids that can route to it: PHATGOOSE needs a gate file. */
    methods: e.phatgoose ? ["phatgoose", "arrow"] : ["arrow"],
    modules: e.modules,
  };
}

/** The routed pipelines of a base id (or of one of its routed ids). */
function routedOf(ctx: ServerContext, id: string): RoutedPipeline[] {
  const all = ctx
    .registry()
    .list()
    .map((m) => m.pipeline)
    .filter((p): p is RoutedPipeline => p.kind === "routed");
  const owner = all.find((p) => p.id === id || p.library.baseId === id);
  if (!owner) {
    const bases = [...new Set(all.map((p) => p.library.baseId))];
    throw new FlockError("not_found", `model ${id} has no expert library${bases.length > 0 ? `; models with one: ${bases.join(", ")}` : " (no model is configured with experts)"}`);
  }
  return all.filter((p) => p.library === owner.library);
}

/**
 * A file an admin request names, checked before anything reads it: a filesystem path (no URL,
 * no hf: URI — the GGUF reader would fetch those), inside one of the configured admin
 * directories once links are resolved. The answer never says whether a file outside exists.
 */
function allowedFile(path: string, dirs: readonly string[], param: string): string {
  if (dirs.length === 0) {
    throw new FlockError("invalid_request", "adding experts through the admin API needs --admin-dir (the directories its files may come from)", param);
  }
  const outside = new FlockError("invalid_request", `${param} must name a file inside the admin directories (--admin-dir)`, param);
  if (/^[a-z][a-z0-9+.-]*:/i.test(path) || !isAbsolute(resolve(path))) throw outside;
  // A file that does not exist is judged by its directory: inside, loading says it is missing.
  let real: string;
  try {
    real = realpathSync(resolve(path));
  } catch {
    try {
      real = join(realpathSync(dirname(resolve(path))), basename(path));
    } catch {
      throw outside;
    }
  }
  const inside = dirs.some((dir) => {
    try {
      const root = realpathSync(resolve(dir));
      return real.startsWith(root.endsWith(sep) ? root : root + sep);
    } catch {
      return false;
    }
  });
  if (!inside) throw outside;
  return real;
}

export function adminRoutes(app: Hono<AppEnv>, ctx: ServerContext, status: () => object): void {
  app.get("/admin/status", (c) => c.json(status()));

  const listing = (routed: RoutedPipeline[]) => ({
    model: routed[0].library.baseId,
    routed_models: routed.map((p) => p.id),
    experts: routed[0].library.list().map(describeExpert),
    /** Configured experts left out at startup, with the reason. */
    failed: routed[0].library.failed,
  });

  app.get("/admin/models/:id{.+}/experts", (c) => c.json(listing(routedOf(ctx, c.req.param("id")))));

  app.post("/admin/models/:id{.+}/experts", async (c) => {
    const routed = routedOf(ctx, c.req.param("id"));
    const body = await parseBody(c, ExpertEntry);
    const dirs = ctx.adminDirs ?? [];
    const spec = { ...body, lora: allowedFile(body.lora, dirs, "lora"), ...(body.gates ? { gates: allowedFile(body.gates, dirs, "gates") } : {}) };
    const expert = await routed[0].library.add(spec);
    routed[0].variants.clear();
    c.get("log").info({ model: routed[0].library.baseId, expert: spec.name, lora: spec.lora, gates: spec.gates ?? null }, "expert added");
    return c.json(describeExpert(expert), 201);
  });

  app.delete("/admin/models/:id{.+}/experts/:name", (c) => {
    const routed = routedOf(ctx, c.req.param("id"));
    const name = c.req.param("name");
    if (!routed[0].library.remove(name)) throw new FlockError("not_found", `model ${routed[0].library.baseId} has no expert named ${name}`);
    routed[0].variants.clear();
    c.get("log").info({ model: routed[0].library.baseId, expert: name }, "expert removed");
    return c.json({ name, deleted: true });
  });
}
