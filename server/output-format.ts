// What a request holds its output to: response_format (chat and completions), text.format
// (Responses) or llama-server's `grammar` (GBNF). The schema is checked here first, so a mistake
// is a 400 naming its path; then the pipeline's model compiles it (engine/grammar.ts) into the
// constraint every choice's decoder starts from (decoding/constraint.ts).
import { z } from "zod";
import type { TokenConstraint } from "../decoding/constraint.js";
import { FlockError } from "../engine/errors.js";
import { GrammarError, type GrammarSource } from "../engine/grammar.js";
import type { Pipeline } from "../pipelines/pipeline.js";
import { unenforcedKeyword } from "./schema-coverage.js";

const JsonSchemaFormat = z.looseObject({
  name: z.string().regex(/^[a-zA-Z0-9_-]{1,64}$/, "a name of at most 64 letters, digits, _ or -"),
  description: z.string().nullish(),
  schema: z.record(z.string(), z.unknown()).nullish(),
  strict: z.boolean().nullish(),
});

type JsonSchemaFormat = z.infer<typeof JsonSchemaFormat>;

/** Chat's and completions' response_format. */
export const ResponseFormat = z.discriminatedUnion("type", [
  z.looseObject({ type: z.literal("text") }),
  z.looseObject({ type: z.literal("json_object") }),
  z.looseObject({ type: z.literal("json_schema"), json_schema: JsonSchemaFormat }),
]);

/** Responses' text.format: the json_schema fields sit beside its type. */
export const TextFormat = z.discriminatedUnion("type", [
  z.looseObject({ type: z.literal("text") }),
  z.looseObject({ type: z.literal("json_object") }),
  JsonSchemaFormat.extend({ type: z.literal("json_schema") }),
]);

/** The fields of a request that can constrain its output. */
export interface OutputFormatFields {
  response_format?: z.infer<typeof ResponseFormat> | null;
  text?: { format?: z.infer<typeof TextFormat> | null } | null;
  grammar?: string | null;
}

type Requested = { source: GrammarSource; param: string } | null;

/** The grammar a request asks for and the field that asked, or null for free text. */
function requestedGrammar(body: OutputFormatFields, toolCall: string | undefined): Requested {
  const asked: Requested[] = [
    body.response_format ? formatGrammar(body.response_format, "response_format") : body.text?.format ? formatGrammar(body.text.format, "text.format") : null,
    body.grammar != null && body.grammar !== "" ? { source: { gbnf: body.grammar }, param: "grammar" } : null,
    toolCall !== undefined ? { source: { gbnf: toolCall }, param: "tool_choice" } : null,
  ].filter((r) => r !== null);
  if (asked.length > 1) throw new FlockError("invalid_request", `${asked.map((r) => r!.param).join(" and ")} both constrain the output: send one`, asked[1]!.param);
  return asked[0] ?? null;
}

function formatGrammar(format: z.infer<typeof ResponseFormat> | z.infer<typeof TextFormat>, param: string): Requested {
  switch (format.type) {
    case "text":
      return null;
    case "json_object":
      return { source: { jsonSchema: { type: "object" } }, param };
    case "json_schema": {
      // response_format nests the schema's fields under json_schema; text.format holds them itself.
      const nested = param === "response_format";
      const spec = (nested ? (format as { json_schema: JsonSchemaFormat }).json_schema : format) as JsonSchemaFormat;
      return jsonSchemaSource(spec.schema, nested ? `${param}.json_schema.schema` : `${param}.schema`, param, spec.strict === true);
    }
  }
}

function jsonSchemaSource(schema: Record<string, unknown> | null | undefined, path: string, param: string, strict: boolean): { source: GrammarSource; param: string } {
  // No schema: any JSON value.
  const checked = schema ?? {};
  checkJsonSchema(checked, path, checked);
  if (strict) refuseUnenforced(checked, path, param);
  return { source: { jsonSchema: checked }, param: path };
}

/**
 * A strict schema promises output valid against it: a keyword the grammar would not hold the
 * output to is a 400 naming its path (strict: false accepts it, unenforced, as OpenAI's
 * non-strict mode does not guarantee the schema either).
 */
export function refuseUnenforced(schema: unknown, path: string, param: string): void {
  const found = unenforcedKeyword(schema, path);
  if (found) throw new FlockError("invalid_request", `${found.at}: ${found.reason}; with strict: true the output must validate, so the schema is refused (strict: false accepts it without that guarantee)`, param);
}

/**
 * The constraint the request's choices start from, or undefined for free text; `toolCall`, the
 * grammar of a required tool call (tools.ts). Throws a 400 when the schema or grammar is wrong,
 * and when the build cannot constrain (no native grammar).
 */
export function outputConstraint(body: OutputFormatFields, pipeline: Pipeline, toolCall?: string): TokenConstraint | undefined {
  const requested = requestedGrammar(body, toolCall);
  if (!requested) return undefined;
  const compiler = pipeline.model.grammars;
  if (!compiler) {
    throw new FlockError("unsupported", `${requested.param} needs flock's native build (npm run build:native), which this server was started without`, requested.param);
  }
  try {
    return compiler.start(requested.source);
  } catch (err) {
    if (err instanceof GrammarError) throw new FlockError("invalid_request", `${requested.param}: ${err.reason}`, requested.param);
    throw err;
  }
}

const TYPES = new Set(["string", "number", "integer", "boolean", "object", "array", "null"]);
const SCHEMA_MAPS = ["properties", "$defs", "definitions", "patternProperties"] as const;
const SCHEMA_LISTS = ["anyOf", "oneOf", "allOf", "prefixItems"] as const;
const SCHEMA_VALUES = ["items", "additionalProperties", "not", "contains"] as const;
const COUNTS = ["minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties"] as const;

/**
 * A JSON schema's structure, checked where the converter would guess or fail without saying
 * where: every subschema an object (or boolean), types known, counts non-negative integers,
 * required names among the properties, patterns valid, local $refs that resolve. Throws a 400
 * naming the path of the first mistake.
 */
export function checkJsonSchema(schema: unknown, path: string, root: unknown): void {
  const fail = (at: string, message: string): never => {
    throw new FlockError("invalid_request", `${at}: ${message}`, path.split(".")[0]);
  };
  if (typeof schema === "boolean") return;
  if (schema === null || typeof schema !== "object" || Array.isArray(schema)) fail(path, "a schema must be an object");
  const node = schema as Record<string, unknown>;
  if (node.type !== undefined) {
    const types = Array.isArray(node.type) ? node.type : [node.type];
    for (const type of types) if (typeof type !== "string" || !TYPES.has(type)) fail(`${path}.type`, `${JSON.stringify(type)} is not a JSON Schema type (${[...TYPES].join(", ")})`);
  }
  for (const key of SCHEMA_MAPS) {
    const map = node[key];
    if (map === undefined) continue;
    if (map === null || typeof map !== "object" || Array.isArray(map)) fail(`${path}.${key}`, "must be an object of schemas");
    for (const [name, sub] of Object.entries(map as object)) checkJsonSchema(sub, `${path}.${key}.${name}`, root);
  }
  for (const key of SCHEMA_LISTS) {
    const list = node[key];
    if (list === undefined) continue;
    if (!Array.isArray(list) || list.length === 0) fail(`${path}.${key}`, "must be a non-empty array of schemas");
    (list as unknown[]).forEach((sub, i) => checkJsonSchema(sub, `${path}.${key}[${i}]`, root));
  }
  for (const key of SCHEMA_VALUES) if (node[key] !== undefined) checkJsonSchema(node[key], `${path}.${key}`, root);
  for (const key of COUNTS) {
    const count = node[key];
    if (count !== undefined && !(Number.isInteger(count) && (count as number) >= 0)) fail(`${path}.${key}`, "must be a non-negative integer");
  }
  if (typeof node.minLength === "number" && typeof node.maxLength === "number" && node.minLength > node.maxLength) fail(path, `minLength ${node.minLength} exceeds maxLength ${node.maxLength}`);
  if (typeof node.minimum === "number" && typeof node.maximum === "number" && node.minimum > node.maximum) fail(path, `minimum ${node.minimum} exceeds maximum ${node.maximum}`);
  if (node.enum !== undefined && (!Array.isArray(node.enum) || node.enum.length === 0)) fail(`${path}.enum`, "must be a non-empty array");
  if (node.required !== undefined) {
    if (!Array.isArray(node.required) || node.required.some((r) => typeof r !== "string")) fail(`${path}.required`, "must be an array of property names");
    const properties = node.properties as Record<string, unknown> | undefined;
    const missing = properties ? (node.required as string[]).find((name) => !(name in properties)) : undefined;
    if (missing !== undefined) fail(`${path}.required`, `"${missing}" is not among the properties`);
  }
  if (node.pattern !== undefined) {
    if (typeof node.pattern !== "string") fail(`${path}.pattern`, "must be a string");
    try {
      new RegExp(node.pattern as string, "u");
    } catch (err) {
      fail(`${path}.pattern`, (err as Error).message);
    }
  }
  if (node.$ref !== undefined) {
    const ref = node.$ref;
    if (typeof ref !== "string" || !ref.startsWith("#")) fail(`${path}.$ref`, "only local references (#/$defs/…) are supported");
    let target: unknown = root;
    for (const part of (ref as string).slice(1).split("/").filter(Boolean)) {
      const key = decodeURIComponent(part).replaceAll("~1", "/").replaceAll("~0", "~");
      target = target !== null && typeof target === "object" ? (target as Record<string, unknown>)[key] : undefined;
      if (target === undefined) fail(`${path}.$ref`, `${ref} does not resolve in the schema`);
    }
  }
}
