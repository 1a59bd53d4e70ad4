// A SentencePiece-style vocabulary (llama.cpp's "llama"/SPM tokenizer with byte fallback).
// llama.cpp's SPM tokenizer merges adjacent symbols only when the merged text is itself a
// token, so every word comes with all of its prefixes; scores grow with length so the longest
// piece wins. Words carry the "▁" word-boundary marker except sentence-initial capitalised
// forms, which exist both bare (start of a text) and with "▁" (after a full stop).
import { gguf, type GgufValue } from "../engine/gguf/writer.js";
import { allWords, capitalize, SENTENCE_STARTERS } from "./language.js";
import { byteLevelPiece, type RealTokenizer, type TokenizerName } from "./tokenizers.js";

export const SPACE = "\u2581";

export enum TokenType {
  NORMAL = 1,
  UNKNOWN = 2,
  CONTROL = 3,
  USER_DEFINED = 4,
  UNUSED = 5,
  BYTE = 6,
}

export interface Vocab {
  /** "forge": the forge's own SPM vocabulary; otherwise the real tokenizer it copies. */
  tokenizer: "forge" | TokenizerName;
  tokens: string[];
  bos: number;
  eos: number;
  /** The tokens that open and close a chat turn (<|im_start|>, <|im_end|> in ChatML). */
  imStart: number;
  imEnd: number;
  /** Token id of a whole piece of the forged language ("▁mixes", "The", "."). */
  idOf(piece: string): number;
  /** The `tokenizer.*` GGUF metadata a model over this vocabulary carries. */
  metadata: Array<[string, GgufValue]>;
}

export const CHATML_TEMPLATE =
  "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/** The pieces the language's chain emits: words (with/without ▁), capitalised starters, ".". */
export function languagePieces(): string[] {
  const pieces = allWords().map((w) => SPACE + w);
  for (const w of SENTENCE_STARTERS) pieces.push(capitalize(w), SPACE + capitalize(w));
  pieces.push(".");
  return pieces;
}

/**
 * Builds the vocabulary. `padTo` appends unused filler tokens until the vocabulary has that
 * many entries (the large-vocabulary variants used by benchmarks).
 */
export function buildVocab(pieces: readonly string[], padTo = 0): Vocab {
  const tokens: string[] = [];
  const scores: number[] = [];
  const types: TokenType[] = [];
  const index = new Map<string, number>();
  const add = (text: string, type: TokenType, score: number): void => {
    if (index.has(text)) return;
    index.set(text, tokens.length);
    tokens.push(text);
    scores.push(score);
    types.push(type);
  };

  add("<unk>", TokenType.UNKNOWN, 0);
  add("<s>", TokenType.CONTROL, 0);
  add("</s>", TokenType.CONTROL, 0);
  add("<|im_start|>", TokenType.CONTROL, 0);
  add("<|im_end|>", TokenType.CONTROL, 0);
  for (let b = 0; b < 256; b++) add(`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`, TokenType.BYTE, 0);

  const chars = new Set<string>([SPACE]);
  for (const p of pieces) for (const ch of p) chars.add(ch);
  for (const ch of [...chars].sort()) add(ch, TokenType.NORMAL, -1000);

  // Prefixes before whole pieces, shortest first; a longer piece always scores higher.
  const prefixes = new Set<string>();
  for (const p of pieces) {
    const cps = [...p];
    for (let k = 2; k <= cps.length; k++) prefixes.add(cps.slice(0, k).join(""));
  }
  for (const p of [...prefixes].sort((a, b) => [...a].length - [...b].length || (a < b ? -1 : 1))) {
    add(p, TokenType.NORMAL, [...p].length);
  }
  for (let i = 0; tokens.length < padTo; i++) add(`<|filler_${i}|>`, TokenType.UNUSED, -1e4);

  const [unk, bos, eos, imEnd] = [0, 1, 2, 4];
  return {
    tokenizer: "forge",
    tokens,
    bos,
    eos,
    imStart: 3,
    imEnd,
    idOf: lookup(index),
    metadata: [
      ["tokenizer.ggml.model", gguf.str("llama")],
      ["tokenizer.ggml.tokens", gguf.strings(tokens)],
      ["tokenizer.ggml.scores", gguf.f32s(scores)],
      ["tokenizer.ggml.token_type", gguf.i32s(types)],
      ["tokenizer.ggml.bos_token_id", gguf.u32(bos)],
      ["tokenizer.ggml.eos_token_id", gguf.u32(eos)],
      ["tokenizer.ggml.eot_token_id", gguf.u32(imEnd)],
      ["tokenizer.ggml.unknown_token_id", gguf.u32(unk)],
      ["tokenizer.ggml.padding_token_id", gguf.u32(unk)],
      ["tokenizer.ggml.add_bos_token", gguf.bool(true)],
      ["tokenizer.ggml.add_eos_token", gguf.bool(false)],
      ["tokenizer.ggml.add_space_prefix", gguf.bool(false)],
      ["tokenizer.chat_template", gguf.str(CHATML_TEMPLATE)],
    ],
  };
}

/**
 * A real tokenizer's vocabulary, unchanged; each piece of the forged language is the single
 * token that spells it there (throws, naming them, if some piece is not one token).
 */
export function realVocab(tokenizer: RealTokenizer, pieces: readonly string[]): Vocab {
  const byText = new Map<string, number>();
  tokenizer.tokens.forEach((t, id) => byText.set(t, id));
  const index = new Map<string, number>();
  const missing: string[] = [];
  for (const piece of pieces) {
    const id = byText.get(byteLevelPiece(piece.replaceAll(SPACE, " ")));
    if (id === undefined || tokenizer.types[id] !== TokenType.NORMAL) missing.push(JSON.stringify(piece));
    else index.set(piece, id);
  }
  if (missing.length > 0) throw new Error(`${tokenizer.name}: the forged language's ${missing.join(", ")} are not single tokens of this vocabulary`);
  return {
    tokenizer: tokenizer.name,
    tokens: tokenizer.tokens,
    bos: tokenizer.bos,
    eos: tokenizer.eos,
    imStart: tokenizer.turnStart,
    imEnd: tokenizer.turnEnd,
    idOf: lookup(index),
    metadata: [
      ...Object.entries(tokenizer.metadata)
        .filter(([key]) => key !== "tokenizer.chat_template")
        .map(([key, value]): [string, GgufValue] => [key, ggufValueOf(key, value)]),
      ["tokenizer.chat_template", gguf.str(tokenizer.chatTemplate)],
    ],
  };
}

function lookup(index: ReadonlyMap<string, number>): (piece: string) => number {
  return (piece) => {
    const id = index.get(piece);
    if (id === undefined) throw new Error(`piece not in vocabulary: ${JSON.stringify(piece)}`);
    return id;
  };
}

/** A metadata value read by node-llama-cpp, typed as llama.cpp reads that key. */
function ggufValueOf(key: string, value: unknown): GgufValue {
  if (typeof value === "string") return gguf.str(value);
  if (typeof value === "boolean") return gguf.bool(value);
  if (typeof value === "number") return Number.isInteger(value) ? gguf.u32(value) : gguf.f32(value);
  if (Array.isArray(value) && value.every((v) => typeof v === "string")) return gguf.strings(value);
  if (Array.isArray(value) && key.endsWith(".scores")) return gguf.f32s(value);
  if (Array.isArray(value)) return gguf.i32s(value);
  throw new Error(`tokenizer metadata ${key}: unsupported value`);
}
