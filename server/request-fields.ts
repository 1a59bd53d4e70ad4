// What flock does with each field of a chat, completions or Responses request: the one table clients and
// the docs read (docs/api.md prints it, npm run bench:docs writes it there).
//
// - honoured: validated and acted on (the schemas in schemas.ts hold the bounds);
// - ignored: accepted and dropped because it cannot change the generated text (caching hints,
//   billing tiers, user ids) or names a control flock's models do not have; unknown fields are
//   ignored the same way. Each request lists what it ignored in the x-flock-ignored-fields
//   header, and the log names each ignored field once per client.
// - refused: a 400 with code unsupported_parameter naming the field, where ignoring it would
//   silently change what the client asked for.
import { createHash } from "node:crypto";

export type FieldFate = "honoured" | "ignored" | "refused";
export type Endpoint = "chat" | "completions" | "responses" | "embeddings";

export interface FieldRule {
  name: string;
  endpoints: readonly Endpoint[];
  fate: FieldFate;
  /** What flock does with it; for a refused field, which values are refused. */
  note: string;
}

const EVERY: readonly Endpoint[] = ["chat", "completions", "responses", "embeddings"];
/** The endpoints that generate text. */
const ALL: readonly Endpoint[] = ["chat", "completions", "responses"];
const EMBEDDINGS: readonly Endpoint[] = ["embeddings"];
const BOTH: readonly Endpoint[] = ["chat", "completions"];
const CHAT: readonly Endpoint[] = ["chat"];
const COMPLETIONS: readonly Endpoint[] = ["completions"];
const RESPONSES: readonly Endpoint[] = ["responses"];
const CHAT_RESPONSES: readonly Endpoint[] = ["chat", "responses"];

export const REQUEST_FIELDS: readonly FieldRule[] = [
  { name: "model", endpoints: EVERY, fate: "honoured", note: "a served model id (GET /v1/models); embedding models serve only /v1/embeddings" },
  { name: "messages", endpoints: CHAT, fate: "honoured", note: "system, developer, user and assistant messages with text content, assistant tool_calls and the tool messages answering them, rendered by the model's chat template; other content parts are refused; a message's name is ignored (node-llama-cpp's chat history, which the template renders, has no field for it)" },
  { name: "prompt", endpoints: COMPLETIONS, fate: "honoured", note: "a string, strings, token ids, or lists of token ids" },
  { name: "input", endpoints: RESPONSES, fate: "honoured", note: "a string, or messages (with or without type message) with text content, function_call and function_call_output items; other items are refused" },
  { name: "input", endpoints: EMBEDDINGS, fate: "honoured", note: "a string, strings, token ids or lists of token ids; at most 2,048 inputs, each within the context" },
  { name: "encoding_format", endpoints: EMBEDDINGS, fate: "honoured", note: "float, or base64 of little-endian float32" },
  { name: "dimensions", endpoints: EMBEDDINGS, fate: "honoured", note: "must equal the model's (vectors are not shortened)" },
  { name: "instructions", endpoints: RESPONSES, fate: "honoured", note: "a system message before the input" },
  { name: "max_tokens", endpoints: BOTH, fate: "honoured", note: "bounded by the context window and limits.maxTokens" },
  { name: "max_completion_tokens", endpoints: CHAT, fate: "honoured", note: "wins over max_tokens" },
  { name: "max_output_tokens", endpoints: RESPONSES, fate: "honoured", note: "bounded by the context window and limits.maxTokens; reaching it makes the response incomplete" },
  { name: "temperature", endpoints: ALL, fate: "honoured", note: "0 to 2; 0 is greedy" },
  { name: "top_p", endpoints: ALL, fate: "honoured", note: "nucleus sampling" },
  { name: "top_k", endpoints: ALL, fate: "honoured", note: "as llama-server and vLLM (0: off); also flock.top_k" },
  { name: "min_p", endpoints: ALL, fate: "honoured", note: "as llama-server and vLLM (0: off); also flock.min_p" },
  { name: "repetition_penalty", endpoints: ALL, fate: "honoured", note: "llama.cpp's: a positive logit divided by it, a negative one multiplied, for each distinct token among the last repeat_last_n (1: off)" },
  { name: "repeat_penalty", endpoints: ALL, fate: "honoured", note: "llama-server's name for repetition_penalty" },
  { name: "repeat_last_n", endpoints: ALL, fate: "honoured", note: "the repetition penalty's window, prompt included (default 64, -1: the whole context, 0: off)" },
  { name: "presence_penalty", endpoints: ALL, fate: "honoured", note: "OpenAI's, over generated tokens" },
  { name: "frequency_penalty", endpoints: ALL, fate: "honoured", note: "OpenAI's, over generated tokens" },
  { name: "logit_bias", endpoints: ALL, fate: "honoured", note: "at most 1,024 token ids below the vocabulary size" },
  { name: "seed", endpoints: ALL, fate: "honoured", note: "reproducible output, with or without speculation" },
  { name: "stop", endpoints: ALL, fate: "honoured", note: "up to 16 sequences" },
  { name: "n", endpoints: BOTH, fate: "honoured", note: "up to limits.maxN; more is refused (unsupported_parameter)" },
  { name: "n", endpoints: RESPONSES, fate: "refused", note: "more than 1 (a response has one output)" },
  { name: "stream", endpoints: ALL, fate: "honoured", note: "server-sent events (Responses: its named events)" },
  { name: "stream_options", endpoints: BOTH, fate: "honoured", note: "include_usage; include_obfuscation is ignored" },
  { name: "stream_options", endpoints: RESPONSES, fate: "ignored", note: "the final event carries the usage" },
  { name: "logprobs", endpoints: BOTH, fate: "honoured", note: "chat: a boolean; completions: 0 to 20 alternatives" },
  { name: "top_logprobs", endpoints: CHAT_RESPONSES, fate: "honoured", note: "0 to 20 (Responses: also with include message.output_text.logprobs)" },
  { name: "include", endpoints: RESPONSES, fate: "honoured", note: "message.output_text.logprobs; other values are ignored" },
  { name: "echo", endpoints: COMPLETIONS, fate: "honoured", note: "the prompt before the completion; with logprobs it is refused" },
  { name: "best_of", endpoints: COMPLETIONS, fate: "honoured", note: "must equal n (flock does not rank candidates)" },
  { name: "chat_template_kwargs", endpoints: CHAT, fate: "honoured", note: "variables for the model's Jinja chat template (e.g. enable_thinking)" },
  { name: "flock", endpoints: ALL, fate: "honoured", note: "flock's extensions: speculative, lookup, fusion, routing, top_k, min_p" },
  { name: "response_format", endpoints: BOTH, fate: "honoured", note: "text, json_object, or json_schema: the output is held to the schema by a grammar; a malformed schema, or a strict one with a keyword the grammar would not enforce, is a 400 naming its path (docs/structured-output.md)" },
  { name: "text", endpoints: RESPONSES, fate: "honoured", note: "format: text, json_object or json_schema, as response_format" },
  { name: "grammar", endpoints: ALL, fate: "honoured", note: "llama-server's: a GBNF grammar the output is held to (not with response_format)" },
  { name: "tools", endpoints: CHAT_RESPONSES, fate: "honoured", note: "functions, documented to the model through its chat template; calls come back as tool_calls (chat) or function_call items (Responses; other tool types are refused) (docs/structured-output.md)" },
  { name: "tool_choice", endpoints: CHAT_RESPONSES, fate: "honoured", note: "none, auto (calls in the model's output are parsed), required or a named function (a grammar holds the output to one valid call)" },
  { name: "parallel_tool_calls", endpoints: CHAT_RESPONSES, fate: "honoured", note: "false: at most one call per turn (a named function always makes one; required may make several where the template frames parallel calls)" },
  { name: "max_tool_calls", endpoints: RESPONSES, fate: "ignored", note: "no tools are called" },
  { name: "functions", endpoints: CHAT, fate: "refused", note: "a non-empty list: OpenAI's deprecated form of tools, which flock takes instead" },
  { name: "function_call", endpoints: CHAT, fate: "refused", note: 'anything but "none" or "auto": OpenAI\'s deprecated form of tool_choice, which flock takes instead' },
  { name: "modalities", endpoints: CHAT, fate: "refused", note: 'anything but ["text"]' },
  { name: "audio", endpoints: CHAT, fate: "refused", note: "any value: audio output is not supported" },
  { name: "prediction", endpoints: BOTH, fate: "honoured", note: "Predicted Outputs: the content is proposed to the model as speculative candidates, as many a round as the cost rule finds worth it (plain and speculative models; fused and routed ones refuse it); usage reports accepted and rejected prediction tokens; on completions a flock extension" },
  { name: "web_search_options", endpoints: CHAT, fate: "refused", note: "any value: flock does not search the web" },
  { name: "suffix", endpoints: COMPLETIONS, fate: "refused", note: "a non-empty string (insertion is not supported)" },
  { name: "previous_response_id", endpoints: RESPONSES, fate: "refused", note: "any value: responses are not stored; send the whole conversation" },
  { name: "conversation", endpoints: RESPONSES, fate: "refused", note: "any value: conversations are not stored" },
  { name: "background", endpoints: RESPONSES, fate: "refused", note: "true" },
  { name: "prompt", endpoints: RESPONSES, fate: "refused", note: "any value: stored prompt templates are not supported" },
  { name: "user", endpoints: EVERY, fate: "ignored", note: "an end-user id" },
  { name: "safety_identifier", endpoints: ALL, fate: "ignored", note: "an end-user id" },
  { name: "metadata", endpoints: ALL, fate: "ignored", note: "nothing is stored" },
  { name: "store", endpoints: ALL, fate: "ignored", note: "nothing is stored (Responses answer store: false)" },
  { name: "service_tier", endpoints: ALL, fate: "ignored", note: "one tier" },
  { name: "prompt_cache_key", endpoints: ALL, fate: "ignored", note: "each sequence reuses its own cached prefix" },
  { name: "prompt_cache_retention", endpoints: ALL, fate: "ignored", note: "as prompt_cache_key" },
  { name: "cache_prompt", endpoints: ALL, fate: "ignored", note: "llama-server's; flock always reuses a sequence's cached prefix" },
  { name: "reasoning_effort", endpoints: CHAT, fate: "ignored", note: "flock's models have no reasoning control" },
  { name: "reasoning", endpoints: RESPONSES, fate: "ignored", note: "flock's models have no reasoning control" },
  { name: "verbosity", endpoints: CHAT, fate: "ignored", note: "flock's models have no verbosity control" },
  { name: "truncation", endpoints: RESPONSES, fate: "ignored", note: "input that does not fit the context is refused (context_length_exceeded) either way" },
];

/** The rules of one endpoint, by field name. */
export function fieldRules(endpoint: Endpoint): ReadonlyMap<string, FieldRule> {
  return new Map(REQUEST_FIELDS.filter((r) => r.endpoints.includes(endpoint)).map((r) => [r.name, r]));
}

/** Fields of `body` that the endpoint does not act on: listed ignored ones and unknown ones. */
export function ignoredFields(body: object, endpoint: Endpoint): string[] {
  const rules = fieldRules(endpoint);
  return Object.keys(body).filter((name) => {
    const rule = rules.get(name);
    return rule === undefined || rule.fate === "ignored";
  });
}

/** The header that lists a request's ignored fields. */
export const IGNORED_FIELDS_HEADER = "x-flock-ignored-fields";

/**
 * Remembers which client was told about which ignored field, so the log names each once per
 * client (a client: its API key's fingerprint and its User-Agent). Bounded: past `max` pairs it
 * starts over, and some clients are told again.
 */
export class IgnoredFieldLog {
  private readonly seen = new Set<string>();

  constructor(private readonly max = 10_000) {}

  /** The fields this client has not been told about yet (now remembered). */
  firstTime(client: string, fields: readonly string[]): string[] {
    const fresh = fields.filter((f) => !this.seen.has(`${client}\u0000${f}`));
    if (this.seen.size + fresh.length > this.max) this.seen.clear();
    for (const f of fresh) this.seen.add(`${client}\u0000${f}`);
    return fresh;
  }
}

/** A client's identity for the log: never the key itself. */
export function clientFingerprint(authorization: string | undefined, userAgent: string | undefined): string {
  const key = authorization ? createHash("sha256").update(authorization).digest("hex").slice(0, 12) : "no-key";
  return `${key} ${(userAgent ?? "").slice(0, 120)}`;
}

/** The table as docs/api.md prints it. */
export function renderFieldTable(): string {
  const where = (e: readonly Endpoint[]) => (e.length === EVERY.length ? "all" : e.length === ALL.length && ALL.every((x) => e.includes(x)) ? "generation" : e.join(", "));
  return [
    "| field | endpoints | fate | what flock does |",
    "|---|---|---|---|",
    ...REQUEST_FIELDS.map((r) => `| \`${r.name}\` | ${where(r.endpoints)} | ${r.fate} | ${r.note.replaceAll("|", "\\|")} |`),
    "| any other field | all | ignored | listed in `x-flock-ignored-fields`, logged once per client |",
    "",
    "*generation*: chat, completions and responses.",
  ].join("\n");
}
