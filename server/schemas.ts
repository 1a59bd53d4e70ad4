// Request bodies of the OpenAI endpoints flock serves, validated with zod. Fields OpenAI
// defines but flock cannot honour are rejected with a clear message rather than ignored;
// fields with no effect on generation (user, metadata, store) are accepted.
import { z } from "zod";
import { FusionRequest } from "../decoding/fusion/config.js";
import { SpeculativeRequest } from "../decoding/speculative/config.js";
import { RoutingRequest } from "../experts/config.js";

/** Project extensions live under this one key of a request and a response. */
export const EXTENSION_KEY = "flock";

const Stop = z.union([z.string(), z.array(z.string()).max(16, "at most 16 stop sequences")]).nullish();

/** Entries a logit_bias may hold: each is applied at every sampled position (OpenAI documents 300). */
export const MAX_LOGIT_BIAS = 1024;

const LogitBias = z
  .record(z.string().regex(/^\d+$/, "logit_bias keys are token ids"), z.number().min(-100).max(100))
  .refine((bias) => Object.keys(bias).length <= MAX_LOGIT_BIAS, { message: `at most ${MAX_LOGIT_BIAS} entries` })
  .nullish();

/** flock's extensions beyond OpenAI's parameters. */
const FlockExtension = z.strictObject({
  top_k: z.int().min(0).optional(),
  min_p: z.number().min(0).max(1).optional(),
  /** Speculative settings (models served with a draft). */
  speculative: SpeculativeRequest.optional(),
  /** Fusion settings (models served with fusion). */
  fusion: FusionRequest.optional(),
  /** Expert routing (models served with an expert library, `<base>+phatgoose` / `+arrow`). */
  routing: RoutingRequest.optional(),
});

const common = {
  model: z.string().min(1),
  temperature: z.number().min(0).max(2).nullish(),
  top_p: z.number().gt(0).max(1).nullish(),
  n: z.int().min(1).nullish(),
  stream: z.boolean().nullish(),
  stream_options: z.strictObject({ include_usage: z.boolean().optional() }).nullish(),
  stop: Stop,
  presence_penalty: z.number().min(-2).max(2).nullish(),
  frequency_penalty: z.number().min(-2).max(2).nullish(),
  logit_bias: LogitBias,
  seed: z.int().nullish(),
  user: z.string().optional(),
  [EXTENSION_KEY]: FlockExtension.optional(),
};

const TextPart = z.strictObject({ type: z.literal("text"), text: z.string() });
const ContentPart = z.union([
  TextPart,
  z.looseObject({ type: z.string() }).transform((part, ctx) => {
    ctx.addIssue({ code: "custom", message: `content parts of type "${part.type}" are not supported; only "text" is` });
    return z.NEVER;
  }),
]);
const Content = z.union([z.string(), z.array(ContentPart)]);

const Message = z.discriminatedUnion("role", [
  z.looseObject({ role: z.literal("system"), content: Content, name: z.string().optional() }),
  z.looseObject({ role: z.literal("developer"), content: Content, name: z.string().optional() }),
  z.looseObject({ role: z.literal("user"), content: Content, name: z.string().optional() }),
  z.looseObject({ role: z.literal("assistant"), content: Content.nullish(), name: z.string().optional() }),
]);

export const ChatCompletionRequest = z.strictObject({
  ...common,
  messages: z.array(Message).min(1, "messages must hold at least one message"),
  max_tokens: z.int().min(1).nullish(),
  max_completion_tokens: z.int().min(1).nullish(),
  logprobs: z.boolean().nullish(),
  top_logprobs: z.int().min(0).max(20).nullish(),
  response_format: z
    .object({ type: z.string() })
    .refine((f) => f.type === "text", { message: 'only response_format {"type": "text"} is supported' })
    .nullish(),
  tools: z.array(z.unknown()).max(0, "tools (function calling) are not supported").nullish(),
  tool_choice: z.literal("none").nullish(),
  parallel_tool_calls: z.boolean().nullish(),
  store: z.boolean().nullish(),
  metadata: z.record(z.string(), z.string()).nullish(),
});
export type ChatCompletionRequest = z.infer<typeof ChatCompletionRequest>;

export const CompletionRequest = z.strictObject({
  ...common,
  prompt: z.union([
    z.string(),
    z.array(z.string()).min(1),
    z.array(z.int().min(0)).min(1),
    z.array(z.array(z.int().min(0)).min(1)).min(1),
  ]),
  max_tokens: z.int().min(1).nullish(),
  logprobs: z.int().min(0).max(20).nullish(),
  echo: z.boolean().nullish(),
  best_of: z.int().min(1).nullish(),
  suffix: z
    .string()
    .nullish()
    .refine((s) => !s, { message: "suffix (text insertion) is not supported" }),
});
export type CompletionRequest = z.infer<typeof CompletionRequest>;

/** Text of a message's content (text parts joined). */
export function contentText(content: z.infer<typeof Content> | null | undefined): string {
  if (content == null) return "";
  return typeof content === "string" ? content : content.map((p) => p.text).join("");
}
