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

/** GPT-2's byte-level BPE alphabet, reversed: the byte each character of a token's text spells. */
const BYTE_OF_CHAR: ReadonlyMap<string, number> = (() => {
  const printable = (b: number) => (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
  const map = new Map<string, number>();
  let shifted = 0;
  for (let b = 0; b < 256; b++) map.set(String.fromCodePoint(printable(b) ? b : 256 + shifted++), b);
  return map;
})();

/**
 * A token's bytes, from its text in the vocabulary: byte-level BPE (gpt2) spells each byte with
 * one character, SentencePiece (llama) a lone byte as <0xXX>. Undefined for anything else.
 */
function tokenBytes(model: LoadedModel, id: number): number[] | undefined {
  const ggml = model.weights.fileInfo.metadata.tokenizer?.ggml;
  const text = ggml?.tokens?.[id];
  if (text === undefined) return undefined;
  if (ggml?.model === "gpt2") {
    const bytes = [...text].map((ch) => BYTE_OF_CHAR.get(ch));
    return bytes.every((b) => b !== undefined) ? (bytes as number[]) : undefined;
  }
  const byte = /^<0x([0-9A-Fa-f]{2})>$/.exec(text);
  return ggml?.model === "llama" && byte ? [parseInt(byte[1], 16)] : undefined;
}

/** llama-server's piece: the token's text, or its bytes where they are not valid UTF-8 alone (part of a character). */
function pieceOf(model: LoadedModel, id: number): string | number[] {
  const text = model.tokenText(id);
  if (!text.includes("\uFFFD")) return text;
  const bytes = tokenBytes(model, id);
  if (!bytes) return text;
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
