// POST /tokenize and POST /detokenize, in llama-server's shapes (content, add_special,
// parse_special, with_pieces → tokens, a piece that is part of a character as its bytes;
// tokens → content) with vLLM's names accepted too (prompt, add_special_tokens; count,
// max_model_len and prompt in the answers). `model` picks the served model; without it, the
// first one configured.
import type { Hono } from "hono";
import { z } from "zod";
import { FlockError } from "../../engine/errors.js";
import type { LoadedModel } from "../../engine/model.js";
import type { Pipeline } from "../../pipelines/pipeline.js";
import type { AppEnv, ServerContext } from "../context.js";
import { parseBody } from "../validation.js";

/** The most text /tokenize takes (the body limit bounds it too): tokenizing runs on the event loop. */
const MAX_TOKENIZE_CHARS = 1 << 20;

const TokenizeRequest = z
  .object({
    model: z.string().min(1).optional(),
    content: z.string().max(MAX_TOKENIZE_CHARS).optional(),
    prompt: z.string().max(MAX_TOKENIZE_CHARS).optional(),
    add_special: z.boolean().optional(),
    add_special_tokens: z.boolean().optional(),
    parse_special: z.boolean().optional(),
    with_pieces: z.boolean().optional(),
  })
  .refine((r) => r.content !== undefined || r.prompt !== undefined, { message: "content (or prompt) is required", path: ["content"] });

const DetokenizeRequest = z.object({
  model: z.string().min(1).optional(),
  tokens: z.array(z.int().min(0)).max(MAX_TOKENIZE_CHARS),
});

/** llama-server's piece: the token's text, or its bytes where they are not valid UTF-8 alone (part of a character). */
function pieceOf(model: LoadedModel, id: number): string | number[] {
  const text = model.tokenText(id);
  if (!text.includes("\uFFFD")) return text;
  const bytes = model.tokenBytes(id);
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(Uint8Array.from(bytes));
  } catch {
    return bytes;
  }
}

function pipelineFor(ctx: ServerContext, model: string | undefined): Pipeline {
  const registry = ctx.registry();
  if (model !== undefined) return registry.resolve(model);
  const first = registry.list()[0];
  if (!first) throw new FlockError("unavailable", "No model is served.");
  return first.pipeline;
}

export function tokenizeRoutes(app: Hono<AppEnv>, ctx: ServerContext): void {
  app.post("/tokenize", async (c) => {
    const body = await parseBody(c, TokenizeRequest);
    const model = pipelineFor(ctx, body.model).model;
    const tokens = model.tokenize(body.content ?? body.prompt ?? "", {
      addSpecial: body.add_special ?? body.add_special_tokens ?? false,
      parseSpecial: body.parse_special ?? true,
    });
    return c.json({
      tokens: body.with_pieces ? tokens.map((id) => ({ id, piece: pieceOf(model, id) })) : tokens,
      count: tokens.length,
      max_model_len: model.contextSize,
    });
  });

  app.post("/detokenize", async (c) => {
    const body = await parseBody(c, DetokenizeRequest);
    const model = pipelineFor(ctx, body.model).model;
    const outside = body.tokens.find((t) => t >= model.vocabularySize);
    if (outside !== undefined) throw new FlockError("invalid_request", `token id ${outside} is outside the vocabulary (size ${model.vocabularySize})`, "tokens");
    const content = model.detokenize(body.tokens);
    return c.json({ content, prompt: content });
  });
}
