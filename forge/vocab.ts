// A SentencePiece-style vocabulary (llama.cpp's "llama"/SPM tokenizer with byte fallback).
// llama.cpp's SPM tokenizer merges adjacent symbols only when the merged text is itself a
// token, so every word comes with all of its prefixes; scores grow with length so the longest
// piece wins. Words carry the "▁" word-boundary marker except sentence-initial capitalised
// forms, which exist both bare (start of a text) and with "▁" (after a full stop).
import { allWords, capitalize, SENTENCE_STARTERS } from "./language.js";

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
  tokens: string[];
  scores: number[];
  types: TokenType[];
  unk: number;
  bos: number;
  eos: number;
  imStart: number;
  imEnd: number;
  /** Token id of a whole piece ("▁stirs", "The", "."). */
  idOf(piece: string): number;
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

  return {
    tokens,
    scores,
    types,
    unk: 0,
    bos: 1,
    eos: 2,
    imStart: 3,
    imEnd: 4,
    idOf(piece: string): number {
      const id = index.get(piece);
      if (id === undefined) throw new Error(`piece not in vocabulary: ${JSON.stringify(piece)}`);
      return id;
    },
  };
}
