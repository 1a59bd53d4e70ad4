// What the app's routes share: the server's context, per-request variables, and the errors
// every route may answer while models load or the server shuts down.
import { IgnoredFieldLog } from "./request-fields.js";
import { FlockError } from "../engine/errors.js";
import type { PipelineRegistry } from "../pipelines/pipeline.js";
import { HttpError } from "./errors.js";
import type { Limits } from "./generation.js";
import type { Inflight } from "./inflight.js";
import type { Logger } from "./logger.js";
import type { Metrics } from "./metrics.js";

/** How generations are served (respond.ts reads these). */
export interface Serving {
  /** Largest prompt of one choice, in tokens; null: the context window is the bound. */
  maxPromptTokens: number | null;
  /** Milliseconds from arrival to the last token; null: no limit. */
  requestTimeoutMs: number | null;
  /** Milliseconds of silence after which a stream sends an SSE keep-alive comment; 0: never. */
  keepAliveMs: number;
  /** Milliseconds a stream's write may wait for a client that does not read; then the stream is dropped. */
  writeTimeoutMs: number;
  /** Seconds a 429 tells the client to wait (Retry-After). */
  retryAfter: number;
  /** Whether prompt and completion text may be logged. */
  logPrompts: boolean;
}

export const DEFAULT_SERVING: Serving = { maxPromptTokens: null, requestTimeoutMs: null, keepAliveMs: 10_000, writeTimeoutMs: 30_000, retryAfter: 1, logPrompts: false };

export interface AuthSettings {
  apiKeys: readonly string[];
  adminKey?: string;
  healthRequiresKey?: boolean;
  metricsRequiresKey?: boolean;
}

export interface ServerContext {
  /** The loaded pipelines; throws `unavailable` while models are still loading. */
  registry(): PipelineRegistry;
  /** Health: loading, ready, failed with a reason, or unhealthy (a model that cannot serve, with why). */
  health(): { status: "loading" | "ok" | "failed" | "unhealthy"; detail?: string; models?: string[]; unavailable?: Array<{ id: string; detail: string }> };
  limits: Limits;
  maxBodyBytes: number;
  log: Logger;
  /** The rest is optional: HTTP-shape tests build an app with only the above. */
  metrics?: Metrics;
  inflight?: Inflight;
  serving?: Partial<Serving>;
  auth?: AuthSettings;
  /** Origins allowed by CORS ("*" for any); empty or absent: CORS off. */
  corsOrigins?: readonly string[];
  /** What GET /admin/status shows beyond the models. */
  status?(): Record<string, unknown>;
  /** Serve the playground page at / (default true). */
  playground?: boolean;
  /** Directories the admin API may read expert files from (none: it may add none). */
  adminDirs?: readonly string[];
  /** Host header names requests may carry (none: any). */
  allowedHosts?: readonly string[];
}

/** What respond.ts needs from the app, per request. */
export interface Operations {
  metrics: Metrics;
  inflight: Inflight;
  serving: Serving;
  /** Which client was told about which ignored request field (logged once per client). */
  ignoredFields: IgnoredFieldLog;
}

export type AppEnv = {
  Variables: {
    log: Logger;
    requestId: string;
    /** performance.now() when the request arrived. */
    arrival: number;
    /** The model id a generation resolved to (metrics label). */
    model?: string;
    ops: Operations;
  };
};

export function notReady(): never {
  throw new FlockError("unavailable", "Models are still loading; retry shortly.");
}

export function shuttingDown(): HttpError {
  return new HttpError(503, "service_unavailable", "shutting_down", "The server is shutting down; retry shortly.");
}
