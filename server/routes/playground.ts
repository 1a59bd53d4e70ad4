// GET / and GET /playground/{file}: the Playground, a static page that streams from flock's own
// OpenAI endpoints in the browser and shows how each token came to be. The files are read once
// when the app is built; nothing is fetched from elsewhere (the CSP says so to the browser).
import { createHash } from "node:crypto";
import { readdirSync, readFileSync } from "node:fs";
import { extname, join } from "node:path";
import { fileURLToPath } from "node:url";
import type { Hono } from "hono";
import type { AppEnv } from "../context.js";

export const PLAYGROUND_DIR = fileURLToPath(new URL("../playground/", import.meta.url));

const TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".svg": "image/svg+xml",
};

/** Same-origin only: the page's scripts, styles and API calls, nothing inline, no frames. */
const CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self'",
  "connect-src 'self'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join("; ");

interface Asset {
  body: Uint8Array;
  type: string;
  etag: string;
}

function loadAssets(dir: string): Map<string, Asset> {
  const assets = new Map<string, Asset>();
  for (const name of readdirSync(dir)) {
    const type = TYPES[extname(name)];
    if (!type) continue; // the page's tsconfig and anything else that is not served
    const body = readFileSync(join(dir, name));
    assets.set(name, { body, type, etag: `"${createHash("sha256").update(body).digest("base64url").slice(0, 22)}"` });
  }
  return assets;
}

export function playgroundRoutes(app: Hono<AppEnv>, dir = PLAYGROUND_DIR): void {
  const assets = loadAssets(dir);
  const serve = (name: string) =>
    app.get(name === "index.html" ? "/" : `/playground/${name}`, (c) => {
      const asset = assets.get(name)!;
      // Revalidated on every load, so a restarted server's new page is never mixed with old scripts.
      const headers = {
        "content-type": asset.type,
        "cache-control": "no-cache",
        etag: asset.etag,
        "x-content-type-options": "nosniff",
        "referrer-policy": "no-referrer",
        ...(name === "index.html" ? { "content-security-policy": CSP } : {}),
      };
      if (c.req.header("if-none-match") === asset.etag) return c.body(null, 304, headers);
      return c.body(asset.body as Uint8Array<ArrayBuffer>, 200, headers);
    });
  for (const name of assets.keys()) serve(name);
}
