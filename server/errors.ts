// One place that turns errors into OpenAI-shaped responses:
// {"error": {"message", "type", "param", "code"}} with the matching status.
import type { ContentfulStatusCode } from "hono/utils/http-status";
import { FlockError, type FlockErrorKind } from "../models/errors.js";

export interface OpenAIErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

const KIND_TO_HTTP: Record<FlockErrorKind, { status: ContentfulStatusCode; type: string; code: string | null }> = {
  invalid_request: { status: 400, type: "invalid_request_error", code: null },
  context_length_exceeded: { status: 400, type: "invalid_request_error", code: "context_length_exceeded" },
  model_not_found: { status: 404, type: "invalid_request_error", code: "model_not_found" },
  unsupported: { status: 400, type: "invalid_request_error", code: "unsupported_parameter" },
  overloaded: { status: 429, type: "rate_limit_error", code: "overloaded" },
  unavailable: { status: 503, type: "service_unavailable", code: "unavailable" },
  internal: { status: 500, type: "server_error", code: null },
};

export const INTERNAL_ERROR_MESSAGE = "The server had an error while processing your request.";

export function errorBody(message: string, type: string, param: string | null = null, code: string | null = null): OpenAIErrorBody {
  return { error: { message, type, param, code } };
}

/** Status and body for any thrown value; internals of unexpected errors are never exposed. */
export function toOpenAIError(err: unknown): { status: ContentfulStatusCode; body: OpenAIErrorBody; internal: boolean } {
  if (err instanceof FlockError) {
    const http = KIND_TO_HTTP[err.kind];
    const message = err.kind === "internal" ? INTERNAL_ERROR_MESSAGE : err.message;
    return { status: http.status, body: errorBody(message, http.type, err.param, http.code), internal: err.kind === "internal" };
  }
  return { status: 500, body: errorBody(INTERNAL_ERROR_MESSAGE, "server_error"), internal: true };
}
