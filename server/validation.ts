// Reading and validating JSON bodies; every failure becomes an OpenAI-shaped 400 naming the
// offending parameter.
import type { Context } from "hono";
import type { z } from "zod";
import { FlockError } from "../engine/errors.js";
import { HttpError } from "./errors.js";

/** application/json, or a +json type, with or without parameters. */
const JSON_TYPE = /^application\/([\w.-]+\+)?json\s*(;|$)/i;

function paramOf(path: ReadonlyArray<PropertyKey>): string | null {
  if (path.length === 0) return null;
  return path.reduce<string>((acc, key) => (typeof key === "number" ? `${acc}[${key}]` : acc ? `${acc}.${String(key)}` : String(key)), "");
}

export function describeIssue(issue: z.core.$ZodIssue): FlockError {
  if (issue.code === "unrecognized_keys") {
    const key = issue.keys[0];
    const where = paramOf([...issue.path, key]) ?? key;
    return new FlockError("invalid_request", `Unrecognized request argument supplied: ${where}`, where);
  }
  const param = paramOf(issue.path);
  return new FlockError("invalid_request", param ? `Invalid value for '${param}': ${issue.message}` : issue.message, param);
}

export async function parseBody<S extends z.ZodType>(c: Context, schema: S): Promise<z.infer<S>> {
  // A browser sends text/plain, form and multipart bodies cross-origin without a preflight: a
  // page the operator visits could otherwise start generations on an open server.
  const type = c.req.header("content-type") ?? "";
  if (!JSON_TYPE.test(type.trim())) {
    throw new HttpError(415, "invalid_request_error", "unsupported_media_type", `Send the request body as JSON with Content-Type: application/json (got ${type ? JSON.stringify(type.slice(0, 80)) : "none"}).`);
  }
  let body: unknown;
  try {
    body = await c.req.json();
  } catch {
    throw new FlockError(
      "invalid_request",
      "We could not parse the JSON body of your request. The body must be a JSON object sent with Content-Type: application/json.",
    );
  }
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    throw new FlockError("invalid_request", "The request body must be a JSON object.");
  }
  const result = schema.safeParse(body);
  if (!result.success) throw describeIssue(result.error.issues[0]);
  return result.data;
}
