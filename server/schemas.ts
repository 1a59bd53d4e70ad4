// Request bodies of the OpenAI endpoints flock serves, validated with zod. Which fields are
// honoured, ignored or refused is decided in request-fields.ts; here are the bounds of the
// honoured ones and the values of the refused ones that are refused (a 400 with code
// unsupported_parameter). Other top-level fields are dropped (and reported as ignored).
import { z } from "zod";
import { FusionRequest } from "../decoding/fusion/config.js";
import { SpeculativeRequest } from "../decoding/speculative/config.js";
import { LookupRequest } from "../decoding/speculative/lookup.js";
import { RoutingRequest } from "../experts/config.js";
import { ResponseFormat, TextFormat } from "./output-format.js";
import { Tool, ToolChoice } from "./tools.js";

/** Project extensions live under this one key of a request and a response. */
export const EXTENSION_KEY = "flock";

const Stop = z.union([z.string(), z.array(z.string()).max(16, "at most 16 stop sequences")]).nullish();

/** Entries a logit_bias may hold: each is applied at every sampled position (OpenAI documents 300). */
export const MAX_LOGIT_BIAS = 1024;

// The entries are counted before any is validated: checking each of a 690k-entry map first
// held the event loop for over half a second, only to refuse it.
const LogitBias = z
  .preprocess(
    (bias, ctx) => {
      if (bias !== null && typeof bias === "object" && !Array.isArray(bias)) {
        let entries = 0;
        for (const key in bias) {
          if (Object.hasOwn(bias, key) && ++entries > MAX_LOGIT_BIAS) {
            ctx.addIssue({ code: "custom", message: `at most ${MAX_LOGIT_BIAS} entries`, input: bias });
            break;
          }
        }
      }
      return bias;
    },
    z.record(z.string().regex(/^\d+$/, "logit_bias keys are token ids"), z.number().min(-100).max(100)),
  )
  .nullish();

/** flock's extensions beyond OpenAI's parameters. */
const FlockExtension = z.strictObject({
  top_k: z.int().min(0).optional(),
  min_p: z.number().min(0).max(1).optional(),
  /** Prompt lookup (plain and speculative models). */
  lookup: LookupRequest.optional(),
  /** Speculative settings (models served with a draft). */
  speculative: SpeculativeRequest.optional(),
  /** Fusion settings (models served with fusion). */
  fusion: FusionRequest.optional(),
  /** Expert routing (models served with an expert library, `<base>+phatgoose` / `+arrow`). */
  routing: RoutingRequest.optional(),
});

/** A refusal: the issue describeIssue turns into a 400 with code unsupported_parameter. */
export const UNSUPPORTED = { unsupported: true } as const;

/** A field refused whenever `refused(value)` holds, with `message` saying why. */
function refusedWhen<T extends z.ZodType>(schema: T, refused: (value: z.output<T>) => boolean, message: string) {
  return schema.nullish().refine((value) => value == null || !refused(value as z.output<T>), { message, params: UNSUPPORTED });
}

/** A field refused with any value but null. */
const refusedAlways = (message: string) => refusedWhen(z.unknown(), () => true, message);

const common = {
  model: z.string().min(1),
  temperature: z.number().min(0).max(2).nullish(),
  top_p: z.number().gt(0).max(1).nullish(),
  // llama-server's and vLLM's top-level sampling fields (≤ 0 turns top-k off, as in both).
  top_k: z.int().min(-1).nullish(),
  min_p: z.number().min(0).max(1).nullish(),
  repetition_penalty: z.number().gt(0).max(100).nullish(),
  repeat_penalty: z.number().gt(0).max(100).nullish(),
  repeat_last_n: z.int().min(-1).nullish(),
  n: z.int().min(1).nullish(),
  stream: z.boolean().nullish(),
  stop: Stop,
  presence_penalty: z.number().min(-2).max(2).nullish(),
  frequency_penalty: z.number().min(-2).max(2).nullish(),
  logit_bias: LogitBias,
  seed: z.int().nullish(),
  /** llama-server's: a GBNF grammar the output is held to. */
  grammar: z.string().nullish(),
  [EXTENSION_KEY]: FlockExtension.optional(),
};

/** Chat and completions only: a Responses stream always ends with the usage (request-fields.ts ignores it there). */
const StreamOptions = z.object({ include_usage: z.boolean().nullish(), include_obfuscation: z.boolean().nullish() }).nullish();

const TextPart = z.strictObject({ type: z.literal("text"), text: z.string() });
const ContentPart = z.union([
  TextPart,
  z.looseObject({ type: z.string() }).transform((part, ctx) => {
    ctx.addIssue({ code: "custom", message: `content parts of type "${part.type}" are not supported: the model accepts text only`, params: UNSUPPORTED });
    return z.NEVER;
  }),
]);
const Content = z.union([z.string(), z.array(ContentPart)]);

/** A message role flock cannot render: refused, never dropped. */
function refusedRole<R extends string>(role: R, message: string) {
  return z.looseObject({ role: z.literal(role) }).transform((_, ctx) => {
    ctx.addIssue({ code: "custom", message, params: UNSUPPORTED, path: ["role"] });
    return z.NEVER;
  });
}

const Message = z.discriminatedUnion("role", [
  z.looseObject({ role: z.literal("system"), content: Content, name: z.string().optional() }),
  z.looseObject({ role: z.literal("developer"), content: Content, name: z.string().optional() }),
  z.looseObject({ role: z.literal("user"), content: Content, name: z.string().optional() }),
  z.looseObject({
    role: z.literal("assistant"),
    content: Content.nullish(),
    name: z.string().optional(),
    tool_calls: z.array(z.looseObject({ id: z.string().min(1), type: z.literal("function").optional(), function: z.looseObject({ name: z.string().min(1), arguments: z.string() }) })).nullish(),
    function_call: refusedAlways('function_call is OpenAI\'s deprecated form of tool_calls: send tool_calls: [{"id", "type": "function", "function": {"name", "arguments"}}] instead'),
    audio: refusedAlways("assistant messages with audio are not supported: this server handles text only"),
  }),
  z.looseObject({ role: z.literal("tool"), content: Content, tool_call_id: z.string().min(1) }),
  refusedRole("function", 'role "function" is OpenAI\'s deprecated form of role "tool": answer each of the assistant\'s tool_calls with {"role": "tool", "tool_call_id", "content"}'),
]);

const NoCall = z.union([z.string(), z.looseObject({})]);
const calls = (choice: unknown) => choice !== "none" && choice !== "auto";

export const ChatCompletionRequest = z.object({
  ...common,
  stream_options: StreamOptions,
  messages: z.array(Message).min(1, "messages must hold at least one message"),
  max_tokens: z.int().min(1).nullish(),
  max_completion_tokens: z.int().min(1).nullish(),
  logprobs: z.boolean().nullish(),
  top_logprobs: z.int().min(0).max(20).nullish(),
  chat_template_kwargs: z.record(z.string(), z.unknown()).nullish(),
  response_format: ResponseFormat.nullish(),
  tools: z.array(Tool).max(128, "at most 128 tools").nullish(),
  tool_choice: ToolChoice.nullish(),
  parallel_tool_calls: z.boolean().nullish(),
  functions: refusedWhen(z.array(z.unknown()), (functions) => functions.length > 0, 'functions is OpenAI\'s deprecated form of tools: send tools: [{"type": "function", "function": {"name", "description", "parameters"}}] instead'),
  function_call: refusedWhen(NoCall, calls, 'function_call is OpenAI\'s deprecated form of tool_choice: send tools and tool_choice ("required" or {"type": "function", "function": {"name"}}) instead'),
  modalities: refusedWhen(z.array(z.string()), (m) => m.some((x) => x !== "text"), 'this server generates text only: modalities must be ["text"]'),
  audio: refusedAlways("audio output is not supported: this server generates text only"),
  prediction: z.strictObject({ type: z.literal("content"), content: Content }).nullish(),
  web_search_options: refusedAlways("web search is not supported"),
});
export type ChatCompletionRequest = z.infer<typeof ChatCompletionRequest>;

export const CompletionRequest = z.object({
  ...common,
  stream_options: StreamOptions,
  prompt: z.union([
    z.string(),
    z.array(z.string()).min(1),
    z.array(z.int().min(0)).min(1),
    z.array(z.array(z.int().min(0)).min(1)).min(1),
  ]),
  max_tokens: z.int().min(1).nullish(),
  logprobs: z.int().min(0).max(20).nullish(),
  echo: z.boolean().nullish(),
  response_format: ResponseFormat.nullish(),
  best_of: z.int().min(1).nullish(),
  /** Predicted Outputs, as chat has them (an extension here: OpenAI's completions have none). */
  prediction: z.strictObject({ type: z.literal("content"), content: Content }).nullish(),
  suffix: refusedWhen(z.string(), (suffix) => suffix.length > 0, "suffix (text insertion) is not supported"),
});
export type CompletionRequest = z.infer<typeof CompletionRequest>;

/** A Responses input item: a message (with or without `type: "message"`); other items are refused. */
const InputText = z.looseObject({ type: z.enum(["input_text", "output_text", "text"]), text: z.string() });
const InputPart = z.union([
  InputText,
  z.looseObject({ type: z.string() }).transform((part, ctx) => {
    ctx.addIssue({ code: "custom", message: `content parts of type "${part.type}" are not supported: the model accepts text only`, params: UNSUPPORTED });
    return z.NEVER;
  }),
]);
const InputMessage = z.looseObject({
  type: z.literal("message").optional(),
  role: z.enum(["user", "system", "developer", "assistant"]),
  content: z.union([z.string(), z.array(InputPart)]),
});
/** A call the model made earlier, and its output (function calling across turns). */
const FunctionCallItem = z.looseObject({ type: z.literal("function_call"), call_id: z.string().min(1), name: z.string().min(1), arguments: z.string() });
const FunctionCallOutputItem = z.looseObject({ type: z.literal("function_call_output"), call_id: z.string().min(1), output: z.union([z.string(), z.array(InputText)]) });
const InputItem = z.union([
  InputMessage,
  FunctionCallItem,
  FunctionCallOutputItem,
  z.looseObject({ type: z.string() }).transform((item, ctx) => {
    ctx.addIssue({ code: "custom", message: `input items of type "${item.type}" are not supported: send messages with text content`, params: UNSUPPORTED });
    return z.NEVER;
  }),
]);
export type ResponsesInputItem = z.infer<typeof InputMessage> | z.infer<typeof FunctionCallItem> | z.infer<typeof FunctionCallOutputItem>;

/** Responses' function tools: name and parameters beside the type; other tool types are refused. */
const ResponsesTool = z.union([
  z.looseObject({
    type: z.literal("function"),
    name: z.string().regex(/^[a-zA-Z0-9_-]{1,64}$/, "a function name of at most 64 letters, digits, _ or -"),
    description: z.string().nullish(),
    parameters: z.record(z.string(), z.unknown()).nullish(),
    strict: z.boolean().nullish(),
  }),
  z.looseObject({ type: z.string() }).transform((tool, ctx) => {
    ctx.addIssue({ code: "custom", message: `tools of type "${tool.type}" are not supported: only function tools`, params: UNSUPPORTED });
    return z.NEVER;
  }),
]);
const ResponsesToolChoice = z.union([z.enum(["none", "auto", "required"]), z.looseObject({ type: z.literal("function"), name: z.string() })]);

/** POST /v1/responses: text in, text out, nothing stored. */
export const ResponsesRequest = z.object({
  ...common,
  input: z.union([z.string(), z.array(InputItem).min(1, "input must hold at least one item")]),
  instructions: z.string().nullish(),
  max_output_tokens: z.int().min(1).nullish(),
  top_logprobs: z.int().min(0).max(20).nullish(),
  include: z.array(z.string()).nullish(),
  text: z.looseObject({ format: TextFormat.nullish() }).nullish(),
  previous_response_id: refusedWhen(z.string(), () => true, "this server does not store responses: send the whole conversation as input"),
  conversation: refusedAlways("this server does not store conversations: send the whole conversation as input"),
  background: refusedWhen(z.boolean(), (b) => b, "background responses are not supported"),
  prompt: refusedAlways("stored prompt templates are not supported"),
  tools: z.array(ResponsesTool).max(128, "at most 128 tools").nullish(),
  tool_choice: ResponsesToolChoice.nullish(),
  parallel_tool_calls: z.boolean().nullish(),
});
export type ResponsesRequest = z.infer<typeof ResponsesRequest>;

/** Text of a message's content (text parts joined). */
export function contentText(content: z.infer<typeof Content> | null | undefined): string {
  if (content == null) return "";
  return typeof content === "string" ? content : content.map((p) => p.text).join("");
}
