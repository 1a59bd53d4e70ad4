// One place that turns errors into OpenAI-shaped responses:
// {"error": {"message", "type", "param", "code"}} with the matching status.
import { existsSync } from "node:fs";
import { basename } from "node:path";
import type { ContentfulStatusCode } from "hono/utils/http-status";
import { FlockError, type FlockErrorKind } from "../engine/errors.js";

export interface OpenAIErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

const KIND_TO_HTTP: Record<FlockErrorKind, { status: ContentfulStatusCode; type: string; code: string | null }> = {
  invalid_request: { status: 400, type: "invalid_request_error", code: null },
  context_length_exceeded: { status: 400, type: "invalid_request_error", code: "context_length_exceeded" },
  model_not_found: { status: 404, type: "invalid_request_error", code: "model_not_found" },
  not_found: { status: 404, type: "invalid_request_error", code: "not_found" },
  conflict: { status: 409, type: "invalid_request_error", code: "conflict" },
  unsupported: { status: 400, type: "invalid_request_error", code: "unsupported_parameter" },
  overloaded: { status: 429, type: "rate_limit_error", code: "overloaded" },
  unavailable: { status: 503, type: "service_unavailable", code: "unavailable" },
  internal: { status: 500, type: "server_error", code: null },
};

/**
 * An error that is about HTTP itself (authentication, admission, timeouts, shutdown) rather than
 * the domain: it carries its own status, OpenAI type and code, and headers (Retry-After).
 */
export class HttpError extends Error {
  constructor(
    readonly status: ContentfulStatusCode,
    readonly type: string,
    readonly code: string | null,
    message: string,
    readonly param: string | null = null,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
    this.name = "HttpError";
  }
}

export const INTERNAL_ERROR_MESSAGE = "The server had an error while processing your request.";

/** Absolute paths of two segments or more (an API route such as /v1/models/x is one too). */
const ABSOLUTE_PATH = /(?<![\w.~])\/(?:[^\s/'"`,;:()<>]+\/)+[^\s/'"`,;:()<>]*/g;

/**
 * A message with every path on this machine cut to its file name: clients learn which file an
 * error is about, not where the server keeps its files. A path counts as this machine's when its
 * top folder exists here (/home, /tmp, /etc…); routes such as /v1/models/x pass unchanged.
 */
export function withoutServerPaths(message: string): string {
  return message.replace(ABSOLUTE_PATH, (path) => {
    const trimmed = path.replace(/[.]+$/, "");
    const top = trimmed.slice(0, trimmed.indexOf("/", 1));
    return existsSync(top) ? basename(trimmed) + path.slice(trimmed.length) : path;
  });
}

export function errorBody(message: string, type: string, param: string | null = null, code: string | null = null): OpenAIErrorBody {
  return { error: { message, type, param, code } };
}

/**
 * Status, body and extra headers for any thrown value; internals of unexpected errors are never
 * exposed. `retryAfter` (seconds) goes on every 429 that does not bring its own.
 */
export function toOpenAIError(
  err: unknown,
  retryAfter = 1,
): { status: ContentfulStatusCode; body: OpenAIErrorBody; internal: boolean; headers: Record<string, string> } {
  if (err instanceof HttpError) {
    const headers = err.status === 429 ? { "retry-after": String(retryAfter), ...err.headers } : err.headers;
    return { status: err.status, body: errorBody(withoutServerPaths(err.message), err.type, err.param, err.code), internal: false, headers };
  }
  if (err instanceof FlockError) {
    const http = KIND_TO_HTTP[err.kind];
    const message = err.kind === "internal" ? INTERNAL_ERROR_MESSAGE : withoutServerPaths(err.message);
    const headers: Record<string, string> = http.status === 429 ? { "retry-after": String(retryAfter) } : {};
    return { status: http.status, body: errorBody(message, http.type, err.param, http.code), internal: err.kind === "internal", headers };
  }
  return { status: 500, body: errorBody(INTERNAL_ERROR_MESSAGE, "server_error"), internal: true, headers: {} };
}
