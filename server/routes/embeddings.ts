// POST /v1/embeddings: OpenAI's embeddings for models served with `embeddings: true`. `input` is
// a string, strings, token ids or lists of token ids (at most 2,048 inputs, as OpenAI allows);
// vectors come back unit-length, as floats or as base64 of little-endian float32 (what the
// OpenAI SDKs ask for by default).
import type { Hono } from "hono";
import { z } from "zod";
import { FlockError } from "../../engine/errors.js";
import type { AppEnv, ServerContext } from "../context.js";
import { checkPromptBytes } from "../generation.js";
import { parseRequest } from "../validation.js";

const MAX_INPUTS = 2048;

export const EmbeddingsRequest = z.object({
  model: z.string().min(1),
  input: z.union([
    z.string().min(1, "input must not be empty"),
    z.array(z.string().min(1, "inputs must not be empty")).min(1).max(MAX_INPUTS),
    z.array(z.int().min(0)).min(1),
    z.array(z.array(z.int().min(0)).min(1)).min(1).max(MAX_INPUTS),
  ]),
  encoding_format: z.enum(["float", "base64"]).nullish(),
  dimensions: z.int().min(1).nullish(),
});

function base64Of(vector: Float32Array): string {
  // Float32Array is little-endian on every platform Node runs on.
  return Buffer.from(vector.buffer, vector.byteOffset, vector.byteLength).toString("base64");
}

export function embeddingsRoutes(app: Hono<AppEnv>, ctx: ServerContext): void {
  app.post("/v1/embeddings", async (c) => {
    const body = await parseRequest(c, EmbeddingsRequest, "embeddings");
    const model = ctx.registry().resolveEmbedding(body.model);
    c.set("model", model.id);
    if (body.dimensions != null && body.dimensions !== model.dimensions) {
      throw new FlockError("unsupported", `model ${model.id} makes ${model.dimensions}-dimensional embeddings; it cannot shorten them to ${body.dimensions}`, "dimensions");
    }
    const input = body.input;
    // Each text is one sequence: one too long for the context is refused before it is tokenized.
    if (typeof input === "string" || typeof input[0] === "string") {
      for (const text of typeof input === "string" ? [input] : (input as string[])) checkPromptBytes([text], { model }, model.contextSize, "input");
    }
    const inputs: number[][] =
      typeof input === "string"
        ? [model.tokenize(input)]
        : input.length > 0 && typeof input[0] === "string"
          ? (input as string[]).map((text) => model.tokenize(text))
          : typeof input[0] === "number"
            ? [input as number[]]
            : (input as number[][]);
    inputs.forEach((tokens, index) => {
      const outside = tokens.find((t) => t >= model.vocabularySize);
      if (outside !== undefined) throw new FlockError("invalid_request", `input ${index} holds token id ${outside}, outside the vocabulary (size ${model.vocabularySize})`, "input");
    });
    const { vectors, tokens: promptTokens } = await model.embed(inputs);
    return c.json({
      object: "list",
      data: vectors.map((vector, index) => ({ object: "embedding", index, embedding: body.encoding_format === "base64" ? base64Of(vector) : Array.from(vector) })),
      model: model.id,
      usage: { prompt_tokens: promptTokens, total_tokens: promptTokens },
    });
  });
}
