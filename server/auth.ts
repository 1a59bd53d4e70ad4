// API keys: `Authorization: Bearer KEY`, compared in constant time.
//
// Both sides are hashed (SHA-256) before timingSafeEqual: the comparison then takes the same
// time whatever the presented key's length, and every configured key is compared (no early
// exit), so response times say nothing about how much of a key was right or which key it was.
import { createHash, timingSafeEqual } from "node:crypto";
import type { Context, MiddlewareHandler } from "hono";
import { errorBody } from "./errors.js";

const digest = (key: string): Buffer => createHash("sha256").update(key, "utf8").digest();

export class KeySet {
  private readonly hashes: Buffer[];

  constructor(keys: readonly string[]) {
    this.hashes = [...new Set(keys)].map(digest);
  }

  get size(): number {
    return this.hashes.length;
  }

  matches(presented: string): boolean {
    const candidate = digest(presented);
    let found = false;
    for (const hash of this.hashes) found = timingSafeEqual(candidate, hash) || found;
    return found;
  }
}

/** The token of an `Authorization: Bearer TOKEN` header, or null. */
export function bearerToken(header: string | undefined): string | null {
  const match = header?.match(/^\s*Bearer\s+(\S+)\s*$/i);
  return match ? match[1] : null;
}

function unauthorized(c: Context, message: string) {
  c.header("WWW-Authenticate", 'Bearer realm="flock"');
  return c.json(errorBody(message, "invalid_request_error", null, "invalid_api_key"), 401);
}

/**
 * Requires one of `keys` (or the admin key, which opens everything). With no keys configured
 * the route stays open.
 */
export function requireApiKey(keys: KeySet, admin: KeySet): MiddlewareHandler {
  return async (c, next) => {
    if (keys.size === 0) return next();
    const token = bearerToken(c.req.header("authorization"));
    if (token === null) {
      return unauthorized(
        c,
        "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
      );
    }
    // Evaluate both so the time taken does not reveal which set a key belongs to.
    const isKey = keys.matches(token);
    const isAdmin = admin.matches(token);
    if (!isKey && !isAdmin) return unauthorized(c, "Incorrect API key provided.");
    return next();
  };
}

/** Requires the admin key; without one configured, admin endpoints are disabled (403). */
export function requireAdminKey(admin: KeySet): MiddlewareHandler {
  return async (c, next) => {
    if (admin.size === 0) {
      return c.json(errorBody("Admin endpoints are disabled: start flock with --admin-key (or FLOCK_ADMIN_KEY) to enable them.", "permission_error", null, "admin_disabled"), 403);
    }
    const token = bearerToken(c.req.header("authorization"));
    if (token === null) return unauthorized(c, "Admin endpoints need the admin key in an Authorization header using Bearer auth (i.e. Authorization: Bearer ADMIN_KEY).");
    if (!admin.matches(token)) return unauthorized(c, "Incorrect admin key provided.");
    return next();
  };
}
