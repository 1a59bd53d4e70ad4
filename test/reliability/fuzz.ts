// Hostile request bodies, property-based (fast-check): for both generation endpoints, bodies
// whose every field may be right, at a limit, past it, of the wrong type or absurd — huge and
// negative numbers, deep nesting, invalid UTF-8 in the raw bytes, enormous stop lists, n and
// max_tokens at the server's limits, unknown models and experts, unknown keys, truncated JSON.
// The property: every answer is a 2xx that is well formed, or a 4xx with OpenAI's error shape —
// never a 5xx, never a dropped connection, and the server is still there afterwards.
import fc from "fast-check";
import { checkResponse, checkStream, type Endpoint, isOpenAIError } from "./sse.js";

export interface FuzzOptions {
  url: string;
  /** Served model ids (every kind) with their pipeline kinds, and fusion expert names. */
  models: string[];
  kinds: Record<string, string>;
  experts: string[];
  /** The server's limits.maxN and limits.maxTokens. */
  maxN: number;
  maxTokens: number;
  /** Cases per endpoint. */
  runs: number;
  seed: number;
  /** Bound per endpoint, ms (generation and shrinking together). */
  budgetMs: number;
  /** Deepest nesting a body may carry. */
  maxDepth: number;
  /** Called after every case: false when the server is gone (a crash fails the property). */
  alive: () => boolean;
}

export interface FuzzResult {
  endpoint: Endpoint;
  cases: number;
  /** Responses by status code. */
  statuses: Record<string, number>;
  /** 4xx answers by the parameter they name (else their code or type). */
  rejected: Record<string, number>;
  /** Streams that ended with an error event (4xx-type), by error type. */
  errorEvents: Record<string, number>;
  failed: boolean;
  interrupted: boolean;
  shrinks: number;
  /** The smallest failing body fast-check found, and why it failed. */
  counterexample?: string;
  error?: string;
}

/** A body is a JSON value with placeholders that become raw bytes in the serialized text. */
const DEEP = "\u0000deep\u0000";
const BYTES = "\u0000bytes\u0000";

interface Raw {
  body: Record<string, unknown>;
  depth: number;
  deepKind: "array" | "object";
  bytes: number[];
  truncateAt: number | null;
  contentType: string | null;
}

const edgeNumbers = fc.constantFrom(0, -0, -1, 1, 0.5, -0.5, 1e308, -1e308, 1e-308, 2 ** 31, 2 ** 31 - 1, 2 ** 32, 2 ** 53, 2 ** 53 + 2, -(2 ** 53), Number.MAX_SAFE_INTEGER, Number.MIN_SAFE_INTEGER, 100, -100, 101, 2, 2.0000001, 20, 21);
const anyNumber = fc.oneof(edgeNumbers, fc.integer(), fc.double({ noNaN: true, noDefaultInfinity: true }));
const wrongType = fc.oneof(fc.jsonValue({ maxDepth: 3 }), fc.constant(DEEP), fc.constant(BYTES));
const text = fc.oneof(
  { weight: 4, arbitrary: fc.string({ maxLength: 40 }) },
  { weight: 2, arbitrary: fc.string({ unit: "binary", maxLength: 40 }) },
  { weight: 1, arbitrary: fc.constantFrom("", "\u0000", "\uD800", "\uDFFF\uD800", "<|im_end|>", "</s>", "<s>", "\uFFFD", "a".repeat(20_000), "🦜".repeat(500)) },
  { weight: 1, arbitrary: fc.constant(BYTES) },
);

/**
 * One field of a request: values the schema accepts (inside the server's limits), and hostile
 * ones — at and past the limits, absurd, of the wrong type, or a raw-bytes placeholder.
 */
interface Field {
  valid: fc.Arbitrary<unknown>;
  hostile: fc.Arbitrary<unknown>;
}

const hostile = (...specific: Array<fc.Arbitrary<unknown>>): fc.Arbitrary<unknown> =>
  fc.oneof({ weight: 3, arbitrary: fc.oneof(...specific) }, { weight: 1, arbitrary: anyNumber }, { weight: 1, arbitrary: wrongType });

const validText = fc.string({ maxLength: 40 });

/** Fields both endpoints share; `kind` (of the body's model) decides which extensions are valid. */
function commonFields(o: FuzzOptions, kind: string): Record<string, Field> {
  const around = (...xs: number[]) => fc.constantFrom(...xs);
  return {
    model: {
      valid: fc.constantFrom(...o.models),
      hostile: hostile(fc.constantFrom("nope", "", "flock-demo:draft", "FLOCK-DEMO", "flock-demo ", "../etc/passwd", "__proto__", "m".repeat(10_000))),
    },
    max_tokens: { valid: fc.integer({ min: 1, max: o.maxTokens }), hostile: hostile(around(o.maxTokens, o.maxTokens + 1, 4096, 4097, 0, -1, 2 ** 31, 2 ** 53, 1.5)) },
    n: { valid: fc.integer({ min: 1, max: Math.min(2, o.maxN) }), hostile: hostile(around(o.maxN, o.maxN + 1, 0, -1, 1_000_000_000, 1.5)) },
    temperature: { valid: fc.double({ min: 0, max: 2, noNaN: true }), hostile: hostile(around(-0.1, 2.0001, 1e-300, 1e308)) },
    top_p: { valid: fc.double({ min: 1e-9, max: 1, noNaN: true }), hostile: hostile(around(0, -0.1, 1.0001, 1e-300)) },
    presence_penalty: { valid: fc.double({ min: -2, max: 2, noNaN: true }), hostile: hostile(around(-2.5, 2.5)) },
    frequency_penalty: { valid: fc.double({ min: -2, max: 2, noNaN: true }), hostile: hostile(around(-2.5, 2.5)) },
    seed: { valid: fc.integer(), hostile: hostile(around(2 ** 53, -(2 ** 53), Number.MAX_SAFE_INTEGER, Number.MIN_SAFE_INTEGER, 1.5)) },
    stream: { valid: fc.boolean(), hostile: hostile(fc.constantFrom("true", 1, null)) },
    stream_options: { valid: fc.record({ include_usage: fc.boolean() }, { requiredKeys: [] }), hostile: hostile(fc.constantFrom({ include_usage: "yes" }, { extra: 1 })) },
    stop: {
      valid: fc.oneof(validText, fc.array(validText, { maxLength: 16 }), fc.constant(null)),
      hostile: hostile(
        // enormous stop lists, far past the 16 allowed, and enormous stop strings
        fc.integer({ min: 17, max: 5000 }).map((k) => Array.from({ length: k }, (_, i) => `s${i}`)),
        fc.constantFrom([""], ["".padEnd(100_000, "x")], "".padEnd(100_000, "y"), Array.from({ length: 16 }, () => "".padEnd(10_000, "z"))),
        fc.array(text, { maxLength: 16 }),
      ),
    },
    logit_bias: {
      valid: fc.dictionary(fc.integer({ min: 0, max: 700 }).map(String), fc.double({ min: -100, max: 100, noNaN: true }), { maxKeys: 6 }),
      hostile: hostile(
        fc.dictionary(
          fc.oneof(fc.integer({ min: 0, max: 2000 }).map(String), fc.constantFrom("-1", "1.5", "99999999999999999999", "abc", "", "__proto__")),
          fc.oneof(fc.double({ min: -200, max: 200, noNaN: true }), edgeNumbers, wrongType),
          { maxKeys: 8 },
        ),
        fc.constant(Object.fromEntries(Array.from({ length: 5000 }, (_, i) => [String(i), -100]))),
      ),
    },
    user: { valid: validText, hostile: hostile(text) },
    flock: {
      valid: fc.record(
        {
          top_k: fc.integer({ min: 0, max: 50 }),
          min_p: fc.double({ min: 0, max: 1, noNaN: true }),
          ...(kind === "speculative"
            ? { speculative: fc.record({ enabled: fc.boolean(), k: fc.integer({ min: 1, max: 32 }), policy: fc.constantFrom("specdec++", "fixed", "confidence") }, { requiredKeys: [] }) }
            : {}),
          ...(kind === "fusion"
            ? { fusion: fc.record({ mode: fc.constantFrom("dynamic", "static"), alpha: fc.double({ min: 0, max: 10, noNaN: true }), experts: fc.uniqueArray(fc.constantFrom(...o.experts), { minLength: 1, maxLength: 4 }), detail: fc.boolean() }, { requiredKeys: [] }) }
            : {}),
        },
        { requiredKeys: [] },
      ),
      hostile: hostile(
        fc.record(
          {
            top_k: hostile(around(0, 1_000_000, -1)),
            min_p: hostile(around(-0.1, 1.1)),
            speculative: hostile(
              fc.record(
                {
                  enabled: fc.boolean(),
                  policy: fc.constantFrom("specdec++", "fixed", "confidence", "nope"),
                  k: around(1, 32, 33, 0),
                  threshold: fc.oneof(fc.double({ min: -1, max: 2, noNaN: true }), fc.constant("auto")),
                  p_min: fc.double({ min: -1, max: 2, noNaN: true }),
                  min_candidates: around(1, 64, 65),
                  max_candidates: around(1, 64, 65),
                },
                { requiredKeys: [] },
              ),
            ),
            fusion: hostile(
              fc.record(
                {
                  mode: fc.constantFrom("dynamic", "static", "nope"),
                  alpha: fc.double({ min: -1, max: 11, noNaN: true }),
                  experts: fc.array(fc.constantFrom(...o.experts, "nope", ""), { maxLength: 6 }),
                  detail: fc.boolean(),
                },
                { requiredKeys: [] },
              ),
            ),
            routing: wrongType,
            unknown: wrongType,
          },
          { requiredKeys: [] },
        ),
      ),
    },
  };
}

function chatFields(o: FuzzOptions, kind: string): Record<string, Field> {
  const role = fc.constantFrom("system", "developer", "user", "assistant");
  const validMessage = fc.record({ role, content: fc.oneof(validText, fc.array(fc.record({ type: fc.constant("text"), text: validText }), { minLength: 1, maxLength: 2 })) });
  const part = fc.oneof(
    fc.record({ type: fc.constant("text"), text: hostile(text) }),
    fc.record({ type: fc.constantFrom("image_url", "input_audio", "file", "refusal", ""), image_url: fc.constant({ url: "http://x/y.png" }) }),
    wrongType,
  );
  const hostileMessage = fc.record(
    { role: hostile(fc.constantFrom("tool", "function", "", "USER"), role), content: hostile(text, fc.array(part, { maxLength: 3 }), fc.constant(null)), name: hostile(text) },
    { requiredKeys: ["role"] },
  );
  return {
    ...commonFields(o, kind),
    messages: {
      valid: fc.array(validMessage, { minLength: 1, maxLength: 4 }),
      hostile: hostile(
        fc.array(fc.oneof(validMessage, hostileMessage), { maxLength: 4 }),
        fc.integer({ min: 100, max: 2000 }).map((k) => Array.from({ length: k }, () => ({ role: "user", content: "hi" }))),
        fc.constant([{ role: "user", content: "word ".repeat(5000) }]),
      ),
    },
    max_completion_tokens: { valid: fc.integer({ min: 1, max: o.maxTokens }), hostile: hostile(fc.constantFrom(o.maxTokens + 1, 0, -1)) },
    logprobs: { valid: fc.boolean(), hostile: hostile(fc.constantFrom(1, "true")) },
    top_logprobs: { valid: fc.integer({ min: 0, max: 20 }), hostile: hostile(fc.constantFrom(21, -1)) },
    response_format: { valid: fc.constant({ type: "text" }), hostile: hostile(fc.record({ type: fc.constantFrom("json_object", "json_schema", "") })) },
    tools: { valid: fc.constant([]), hostile: hostile(fc.array(fc.jsonValue({ maxDepth: 2 }), { minLength: 1, maxLength: 2 })) },
    tool_choice: { valid: fc.constant("none"), hostile: hostile(fc.constantFrom("auto", "required")) },
    metadata: { valid: fc.dictionary(fc.string({ maxLength: 8 }), validText, { maxKeys: 3 }), hostile: hostile(fc.dictionary(fc.string({ maxLength: 8 }), wrongType, { maxKeys: 3 })) },
    store: { valid: fc.boolean(), hostile: hostile(fc.constant("no")) },
    unknown_field: { valid: fc.constant(undefined), hostile: wrongType },
  };
}

function completionFields(o: FuzzOptions, kind: string): Record<string, Field> {
  const validToken = fc.integer({ min: 5, max: 678 });
  const tokenId = fc.oneof(fc.integer({ min: 0, max: 700 }), fc.constantFrom(-1, 679, 680, 2 ** 31, 2 ** 53, 1.5));
  return {
    ...commonFields(o, kind),
    prompt: {
      valid: fc.oneof(
        fc.string({ minLength: 1, maxLength: 60 }),
        fc.array(fc.string({ minLength: 1, maxLength: 30 }), { minLength: 1, maxLength: 2 }),
        fc.array(validToken, { minLength: 1, maxLength: 12 }),
        fc.array(fc.array(validToken, { minLength: 1, maxLength: 6 }), { minLength: 1, maxLength: 2 }),
      ),
      hostile: hostile(
        text,
        fc.array(text, { maxLength: 4 }),
        fc.array(tokenId, { maxLength: 12 }),
        fc.array(fc.array(tokenId, { maxLength: 6 }), { maxLength: 3 }),
        fc.constantFrom([], [[]], [[[1]]], [""], [1, "a"], "word ".repeat(5000), Array.from({ length: 5000 }, () => 300)),
      ),
    },
    logprobs: { valid: fc.integer({ min: 0, max: 5 }), hostile: hostile(fc.constantFrom(20, 21, -1, true)) },
    // echo with logprobs is refused (400), so a valid body echoes without them only
    echo: { valid: fc.constant(false), hostile: hostile(fc.constantFrom(true, "yes")) },
    best_of: { valid: fc.constant(undefined), hostile: hostile(fc.constantFrom(1, 2, o.maxN, o.maxN + 1, 0)) },
    suffix: { valid: fc.constant(null), hostile: hostile(text) },
    unknown_field: { valid: fc.constant(undefined), hostile: wrongType },
  };
}

/**
 * A body: a valid request (model and prompt or messages always, other fields now and then),
 * then up to three fields replaced by hostile values or removed; about a third stay valid.
 */
function body(fields: Record<string, Field>, required: string[]): fc.Arbitrary<Record<string, unknown>> {
  const names = Object.keys(fields);
  const valid = fc.record(Object.fromEntries(names.map((n) => [n, fields[n].valid])), { requiredKeys: required }) as fc.Arbitrary<Record<string, unknown>>;
  const corruption = fc.oneof(
    { weight: 1, arbitrary: fc.constant([] as Array<[string, unknown]>) },
    {
      weight: 2,
      arbitrary: fc.array(
        fc.constantFrom(...names).chain((name) => fc.tuple(fc.constant(name), fc.oneof({ weight: 9, arbitrary: fields[name].hostile }, { weight: 1, arbitrary: fc.constant(undefined) }))),
        { minLength: 1, maxLength: 3 },
      ),
    },
  );
  return fc.tuple(valid, corruption).map(([b, changes]) => {
    const out = { ...b };
    for (const [name, value] of changes) {
      if (value === undefined) delete out[name];
      else out[name] = value;
    }
    return out;
  });
}

/** The body's model is drawn first, so the extensions it may validly carry follow its kind. */
function withModel(o: FuzzOptions, fields: (kind: string) => Record<string, Field>, required: string[]): fc.Arbitrary<Record<string, unknown>> {
  return fc.constantFrom(...o.models).chain((model) => {
    const f = fields(o.kinds[model] ?? "plain");
    return body({ ...f, model: { valid: fc.constant(model), hostile: f.model.hostile } }, required);
  });
}

function chatBody(o: FuzzOptions): fc.Arbitrary<Record<string, unknown>> {
  return withModel(o, (kind) => chatFields(o, kind), ["model", "messages"]);
}

function completionBody(o: FuzzOptions): fc.Arbitrary<Record<string, unknown>> {
  return withModel(o, (kind) => completionFields(o, kind), ["model", "prompt"]);
}

function rawRequest(o: FuzzOptions, body: fc.Arbitrary<Record<string, unknown>>): fc.Arbitrary<Raw> {
  return fc.record({
    body,
    depth: fc.oneof(fc.integer({ min: 1, max: 64 }), fc.integer({ min: 1, max: o.maxDepth })),
    deepKind: fc.constantFrom("array" as const, "object" as const),
    // Invalid UTF-8 of every kind: lone continuation bytes, truncated sequences, overlong forms,
    // encoded surrogates, bytes that are never valid, NUL and control bytes.
    bytes: fc.oneof(
      fc.array(fc.integer({ min: 0, max: 255 }), { minLength: 1, maxLength: 12 }),
      fc.constantFrom<number[]>([0xff], [0xc3], [0xe2, 0x82], [0xc0, 0xaf], [0xed, 0xa0, 0x80], [0xf4, 0x90, 0x80, 0x80], [0x80], [0x00], [0xfe, 0xff]),
    ),
    truncateAt: fc.oneof({ weight: 15, arbitrary: fc.constant(null) }, { weight: 1, arbitrary: fc.nat() }),
    contentType: fc.oneof({ weight: 10, arbitrary: fc.constant("application/json") }, { weight: 1, arbitrary: fc.constantFrom(null, "text/plain", "application/json; charset=latin1", "multipart/form-data; boundary=x") }),
  });
}

function serialize(raw: Raw): Uint8Array {
  const json = JSON.stringify(raw.body) ?? "null";
  const open = raw.deepKind === "array" ? "[" : '{"a":';
  const close = raw.deepKind === "array" ? "]" : "}";
  const deep = open.repeat(raw.depth) + "1" + close.repeat(raw.depth);
  const pieces: Buffer[] = [];
  // Placeholders appear JSON-escaped inside string literals: "\u0000deep\u0000".
  const tokens = json.split(/("\\u0000(?:deep|bytes)\\u0000")/);
  for (const t of tokens) {
    if (t === JSON.stringify(DEEP)) pieces.push(Buffer.from(deep));
    else if (t === JSON.stringify(BYTES)) pieces.push(Buffer.concat([Buffer.from('"x'), Buffer.from(raw.bytes), Buffer.from('y"')]));
    else pieces.push(Buffer.from(t));
  }
  let bytes = Buffer.concat(pieces);
  if (raw.truncateAt !== null) bytes = bytes.subarray(0, raw.truncateAt % (bytes.length + 1));
  return new Uint8Array(bytes);
}

/** Choices a 2xx answer must carry: n per prompt. */
function expectedChoices(endpoint: Endpoint, body: Record<string, unknown>): number {
  const n = typeof body.n === "number" ? body.n : 1;
  if (endpoint === "chat") return n;
  const p = body.prompt;
  const prompts = Array.isArray(p) && p.length > 0 && typeof p[0] !== "number" ? p.length : 1;
  return n * prompts;
}

async function judge(o: FuzzOptions, endpoint: Endpoint, raw: Raw, result: FuzzResult): Promise<string | null> {
  const path = endpoint === "chat" ? "/v1/chat/completions" : "/v1/completions";
  const headers: Record<string, string> = raw.contentType ? { "content-type": raw.contentType } : {};
  let res: Response;
  try {
    res = await fetch(o.url + path, { method: "POST", headers, body: serialize(raw), signal: AbortSignal.timeout(60_000) });
  } catch (err) {
    const cause = (err as Error & { cause?: { code?: string; message?: string } }).cause;
    const why = cause ? ` (${[cause.code, cause.message].filter(Boolean).join(": ")})` : "";
    return `no response: ${(err as Error).message}${why}${o.alive() ? "" : " (the server exited)"}`;
  }
  result.statuses[res.status] = (result.statuses[res.status] ?? 0) + 1;
  const text = await res.text().catch((err: unknown) => `\u0000unreadable: ${(err as Error).message}`);
  if (res.status >= 500) return `status ${res.status}: ${text.slice(0, 300)}`;
  if (res.status >= 400) {
    let body: unknown;
    try {
      body = JSON.parse(text);
    } catch {
      body = null;
    }
    if (!isOpenAIError(body)) return `status ${res.status} without an OpenAI error body: ${text.slice(0, 300)}`;
    const key = body.error.param ?? body.error.code ?? body.error.type;
    result.rejected[key] = (result.rejected[key] ?? 0) + 1;
    return null;
  }
  if (res.status < 200 || res.status > 299) return `status ${res.status}`;
  const choices = expectedChoices(endpoint, raw.body);
  if ((res.headers.get("content-type") ?? "").startsWith("text/event-stream")) {
    const verdict = checkStream(text, endpoint, choices, true, false);
    if (verdict.malformed) return `malformed stream: ${verdict.malformed}`;
    if (verdict.ending === "error") {
      const type = verdict.error!.type;
      result.errorEvents[type] = (result.errorEvents[type] ?? 0) + 1;
      if (type === "server_error") return `stream error event: ${verdict.error!.message}`;
    }
    return null;
  }
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    return `2xx that is not JSON: ${text.slice(0, 200)}`;
  }
  const wrong = checkResponse(body, endpoint, choices, false);
  return wrong ? `malformed 2xx: ${wrong}` : null;
}

export async function fuzzEndpoint(o: FuzzOptions, endpoint: Endpoint): Promise<FuzzResult> {
  const result: FuzzResult = { endpoint, cases: 0, statuses: {}, rejected: {}, errorEvents: {}, failed: false, interrupted: false, shrinks: 0 };
  const arbitrary = rawRequest(o, endpoint === "chat" ? chatBody(o) : completionBody(o));
  const details = await fc.check(
    fc.asyncProperty(arbitrary, async (raw) => {
      result.cases++;
      const why = await judge(o, endpoint, raw, result);
      if (why) throw new Error(why);
      if (!o.alive()) throw new Error("the server exited");
    }),
    { numRuns: o.runs, seed: o.seed, interruptAfterTimeLimit: o.budgetMs, markInterruptAsFailure: false },
  );
  result.failed = details.failed;
  result.interrupted = details.interrupted;
  result.shrinks = details.numShrinks;
  if (details.failed && details.counterexample) {
    const raw = details.counterexample[0];
    const body = Buffer.from(serialize(raw)).toString("latin1");
    result.counterexample = body.length > 2_000 ? `${body.slice(0, 2_000)}… (${body.length} bytes)` : body;
    result.error = (details.errorInstance as Error | null)?.message ?? String(details.errorInstance);
  }
  return result;
}
