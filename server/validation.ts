// Reading and validating JSON bodies; every failure becomes an OpenAI-shaped 400 naming the
// offending parameter.
import type { Context } from "hono";
import type { z } from "zod";
import { FlockError } from "../engine/errors.js";
import type { AppEnv } from "./context.js";
import { HttpError } from "./errors.js";
import { clientFingerprint, type Endpoint, IGNORED_FIELDS_HEADER, ignoredFields } from "./request-fields.js";

/** application/json, or a +json type, with or without parameters. */
const JSON_TYPE = /^application\/([\w.-]+\+)?json\s*(;|$)/i;

function paramOf(path: ReadonlyArray<PropertyKey>): string | null {
  if (path.length === 0) return null;
  return path.reduce<string>((acc, key) => (typeof key === "number" ? `${acc}[${key}]` : acc ? `${acc}.${String(key)}` : String(key)), "");
}

/** A refusal (custom issue marked unsupported) anywhere under `issue`, with its full path. */
function refusalIn(issue: z.core.$ZodIssue, prefix: ReadonlyArray<PropertyKey> = []): z.core.$ZodIssue | undefined {
  const path = [...prefix, ...issue.path];
  if (issue.code === "custom" && issue.params?.unsupported === true) return { ...issue, path } as z.core.$ZodIssue;
  if (issue.code === "invalid_union") {
    for (const branch of issue.errors) for (const inner of branch) {
      const found = refusalIn(inner, path);
      if (found) return found;
    }
  }
  return undefined;
}

export function describeIssue(original: z.core.$ZodIssue): FlockError {
  // Inside a union (content: a string or parts) a refused part explains the failure best.
  const issue = refusalIn(original) ?? original;
  if (issue.code === "unrecognized_keys") {
    const key = issue.keys[0];
    const where = paramOf([...issue.path, key]) ?? key;
    return new FlockError("invalid_request", `Unrecognized request argument supplied: ${where}`, where);
  }
  const param = paramOf(issue.path);
  if (issue.code === "custom" && issue.params?.unsupported === true) {
    return new FlockError("unsupported", param ? `Unsupported value for '${param}': ${issue.message}` : issue.message, param);
  }
  return new FlockError("invalid_request", param ? `Invalid value for '${param}': ${issue.message}` : issue.message, param);
}

/**
 * A request to one of the OpenAI endpoints: the body parsed against `schema`, its ignored fields (see
 * request-fields.ts) listed in a response header and logged the first time a client sends each.
 */
export async function parseRequest<S extends z.ZodType>(c: Context<AppEnv>, schema: S, endpoint: Endpoint): Promise<z.infer<S>> {
  const body = await parseBody(c, schema);
  const ignored = ignoredFields(await c.req.json(), endpoint);
  if (ignored.length > 0) {
    c.header(IGNORED_FIELDS_HEADER, ignored.join(", ").slice(0, 1024));
    const client = clientFingerprint(c.req.header("authorization"), c.req.header("user-agent"));
    const fresh = c.get("ops").ignoredFields.firstTime(client, ignored.slice(0, 64));
    if (fresh.length > 0) c.get("log").warn({ fields: fresh, userAgent: c.req.header("user-agent")?.slice(0, 120) }, "request fields ignored (they cannot change the output, or flock does not know them)");
  }
  return body;
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
