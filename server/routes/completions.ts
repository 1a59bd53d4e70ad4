// POST /v1/completions (legacy text completions)
import type { Hono } from "hono";
import { FlockError } from "../../engine/errors.js";
import type { PipelineRequest } from "../../pipelines/pipeline.js";
import { chunkFor, completionId, completionLogprobs, nowSeconds, responseExtension, streamedStep } from "../format.js";
import {
  checkPromptBytes,
  choiceCount,
  choiceRequests,
  maxTokensFor,
  promptWindow,
  samplingParams,
  speculativeOverrides,
  stopSequences,
  fusionOverrides,
  routingOverrides,
  extensionOptions,
  lookupOverrides,
  predictionTokens,
  predictionUsage,
} from "../generation.js";
import type { ChoiceAccumulator, Usage } from "../format.js";
import { respond, type ResponseShape } from "../respond.js";
import { outputConstraint } from "../output-format.js";
import { CompletionRequest } from "../schemas.js";
import { parseRequest } from "../validation.js";
import type { AppEnv, ServerContext } from "../context.js";

/** OpenAI accepts one prompt or a batch: text, texts, token ids, or lists of token ids. */
function promptList(prompt: CompletionRequest["prompt"]): Array<string | number[]> {
  if (typeof prompt === "string") return [prompt];
  if (prompt.every((p) => typeof p === "number")) return [prompt as number[]];
  return prompt as Array<string | number[]>;
}

export function completionRoutes(app: Hono<AppEnv>, ctx: ServerContext): void {
  app.post("/v1/completions", async (c) => {
    const body = await parseRequest(c, CompletionRequest, "completions");
    const pipeline = ctx.registry().resolve(body.model);
    const extension = extensionOptions(body, pipeline);
    const n = choiceCount(body, ctx.limits);
    if (body.best_of != null && body.best_of !== n) {
      throw new FlockError("unsupported", "best_of must equal n: flock does not rank candidates server-side", "best_of");
    }
    if (body.echo && body.logprobs != null) {
      throw new FlockError("unsupported", "echo together with logprobs (prompt logprobs) is not supported", "echo");
    }
    const prompts = promptList(body.prompt);
    if (prompts.length * n > ctx.limits.maxN) {
      throw new FlockError("invalid_request", `${prompts.length} prompts × n=${n} choices exceeds this server's limit of ${ctx.limits.maxN} choices per request`, "prompt");
    }
    const vocabularySize = pipeline.model.vocabularySize;
    const abort = new AbortController();
    const sampling = samplingParams(body, pipeline);
    const constraint = outputConstraint(body, pipeline);
    const stops = stopSequences(body);
    const prediction = predictionTokens(body.prediction, pipeline);
    // With a prediction, usage says how much of it was accepted, as chat's does.
    const withDetails = (usage: Usage, choices: ChoiceAccumulator[]) => (prediction ? { ...usage, completion_tokens_details: predictionUsage(choices) } : usage);

    // Choice index = prompt index * n + i, as OpenAI numbers batched prompts.
    const requests: PipelineRequest[] = [];
    const echoes: string[] = [];
    let promptTokens = 0;
    prompts.forEach((prompt, p) => {
      if (typeof prompt === "string") checkPromptBytes([prompt], pipeline, promptWindow(pipeline, c.get("ops").serving.maxPromptTokens), "prompt");
      const tokens = typeof prompt === "string" ? pipeline.model.tokenizePrompt(prompt) : prompt;
      const bad = tokens.find((t) => t >= vocabularySize);
      if (bad !== undefined) {
        throw new FlockError("invalid_request", `token id ${bad} is outside the vocabulary (size ${vocabularySize})`, "prompt");
      }
      if (tokens.length === 0) throw new FlockError("invalid_request", "the prompt is empty", "prompt");
      promptTokens += tokens.length;
      const maxTokens = maxTokensFor(body.max_tokens ?? 16, tokens.length, pipeline, ctx.limits, "prompt", "max_tokens");
      const echo = body.echo ? (typeof prompt === "string" ? prompt : pipeline.model.detokenize(tokens)) : "";
      for (const request of choiceRequests(
        n,
        {
          prompt: tokens,
          maxTokens,
          sampling,
          stopStrings: stops,
          stopTokens: [],
          topLogprobs: body.logprobs ?? null,
          signal: abort.signal,
          speculative: speculativeOverrides(body, pipeline),
          fusion: fusionOverrides(body, pipeline),
          routing: routingOverrides(body, pipeline),
          lookup: lookupOverrides(body, pipeline),
          constraint,
          ...(prediction && { prediction }),
        },
        body.seed,
        p * n,
      )) {
        requests.push(request);
        echoes.push(echo);
      }
    });

    const id = completionId("cmpl");
    const created = nowSeconds();
    const envelope = { id, object: "text_completion", created, model: pipeline.id };
    const includeUsage = body.stream_options?.include_usage === true;
    const usageField = includeUsage ? { usage: null } : {};
    const wantLogprobs = body.logprobs != null;
    const shape: ResponseShape = {
      opening: (index) =>
        echoes[index] ? [chunkFor(envelope, usageField, index)({ text: echoes[index], logprobs: null, finish_reason: null })] : [],
      step: (index, step, choice) =>
        streamedStep(
          chunkFor(envelope, usageField, index),
          step,
          choice,
          extension,
          () => {
            const offset = echoes[index].length + choice.text.length - step.text.length;
            return { text: step.text, logprobs: wantLogprobs ? completionLogprobs(step.logprobs ?? [], offset) : null };
          },
          { text: "", logprobs: null },
        ),
      usage: (usage, choices) => ({ ...envelope, choices: [], usage: withDetails(usage, choices) }),
      response: (choices, usage) => ({
        id,
        object: "text_completion",
        created,
        model: pipeline.id,
        choices: choices.map((ch, index) => ({
          index,
          text: echoes[index] + ch.text,
          logprobs: wantLogprobs ? completionLogprobs(ch.logprobs, echoes[index].length) : null,
          finish_reason: ch.finishReason,
        })),
        usage: withDetails(usage, choices),
        ...responseExtension(choices, extension),
      }),
    };
    return respond(c, { pipeline, requests, promptTokens, stream: body.stream === true, includeUsage, shape, abort, log: c.get("log"), promptParam: "prompt" });
  });
}
