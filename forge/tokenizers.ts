// Real tokenizers for forged models: the vocabulary-only GGUFs that llama.cpp ships for its
// tokenizer tests (Qwen 2's byte-level BPE, Llama 3's BPE). A forged model copies the file's
// `tokenizer.ggml.*` metadata as it is, so llama.cpp tokenizes, detokenizes and treats special
// tokens exactly as it does for the real family, plus what the family's released GGUFs state and
// the vocabulary file leaves out (whether a BOS is added, the chat template). The forged
// language's words are single tokens of these vocabularies (forge/language.ts picks its words
// so); every other token is one a forged model never emits.
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { readGgufFileInfo } from "node-llama-cpp";
import { NODE_LLAMA_CPP_LLAMA_DIR } from "../engine/native/surface.js";

// Llama 3's instruct template (the vocabulary file carries none): headers per message, each
// message ended by <|eot_id|>.
const LLAMA3_TEMPLATE =
  "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";

/** `chatTemplate`: the family's template where the vocabulary file carries none (null: the file's). */
export const TOKENIZERS = {
  qwen2: { about: "Qwen 2 / 2.5 byte-level BPE, 151,936 tokens, ChatML", turnStart: "<|im_start|>", turnEnd: "<|im_end|>", addBos: false, chatTemplate: null },
  "llama-bpe": { about: "Llama 3 byte-level BPE, 128,256 tokens, Llama 3 chat format", turnStart: "<|start_header_id|>", turnEnd: "<|eot_id|>", addBos: true, chatTemplate: LLAMA3_TEMPLATE },
} as const;
export type TokenizerName = keyof typeof TOKENIZERS;

/** A real vocabulary as its GGUF states it. */
export interface RealTokenizer {
  name: TokenizerName;
  tokens: string[];
  /** llama.cpp's token types (1 normal, 3 control, 6 byte, …). */
  types: number[];
  /** Every `tokenizer.*` key of the file, as read (numbers, strings, booleans, arrays). */
  metadata: Record<string, unknown>;
  bos: number;
  eos: number;
  /** The tokens that open and close a chat turn. */
  turnStart: number;
  turnEnd: number;
  /** The family's chat template. */
  chatTemplate: string;
}

/**
 * Path of llama.cpp's `models/ggml-vocab-NAME.gguf` (or its `.inp`/`.out` tokenizer fixtures,
 * `suffix`): from the unpacked source where build:native left it, else read out of
 * node-llama-cpp's git bundle into `cacheDir` (no network either way). Any of the vocabularies
 * llama.cpp ships, not only the forge's (`llama-spm`: Llama 2's 32,000 SentencePiece tokens).
 */
export function vocabFile(name: TokenizerName | "llama-spm", cacheDir: string, suffix = ""): string {
  const file = `ggml-vocab-${name}.gguf${suffix}`;
  const unpacked = join(NODE_LLAMA_CPP_LLAMA_DIR, "llama.cpp", "models", file);
  if (existsSync(unpacked)) return unpacked;
  const cached = join(cacheDir, "vocab", file);
  if (existsSync(cached)) return cached;

  const bundle = join(NODE_LLAMA_CPP_LLAMA_DIR, "gitRelease.bundle");
  const repo = join(cacheDir, "vocab", `bundle-${process.pid}`);
  mkdirSync(repo, { recursive: true });
  try {
    const git = (args: string[]) => {
      const r = spawnSync("git", args, { cwd: repo, encoding: "buffer", maxBuffer: 256 << 20 });
      if (r.status !== 0) throw new Error(`cannot read ${file} out of ${bundle}: git ${args[0]}: ${r.stderr?.toString() || r.error}`);
      return r.stdout;
    };
    git(["init", "-q", "--bare"]);
    git(["fetch", "-q", bundle, "HEAD"]);
    const partial = `${cached}.${process.pid}`;
    writeFileSync(partial, git(["show", `FETCH_HEAD:models/${file}`]));
    renameSync(partial, cached);
  } finally {
    rmSync(repo, { recursive: true, force: true });
  }
  return cached;
}

export async function readTokenizer(name: TokenizerName, cacheDir: string): Promise<RealTokenizer> {
  if (!(name in TOKENIZERS)) throw new Error(`unknown tokenizer ${JSON.stringify(name)} (known: ${Object.keys(TOKENIZERS).join(", ")})`);
  const info = await readGgufFileInfo(vocabFile(name, cacheDir), { logWarnings: false });
  const metadata: Record<string, unknown> = {};
  flatten((info.metadata as { tokenizer?: object }).tokenizer ?? {}, "tokenizer", metadata);
  metadata["tokenizer.ggml.add_bos_token"] ??= TOKENIZERS[name].addBos;
  const tokens = metadata["tokenizer.ggml.tokens"] as string[];
  const types = metadata["tokenizer.ggml.token_type"] as number[];
  const chatTemplate = TOKENIZERS[name].chatTemplate ?? metadata["tokenizer.chat_template"];
  if (typeof chatTemplate !== "string") throw new Error(`${name}: the vocabulary file has no chat template and flock knows none for it`);
  const idOf = (text: string) => {
    const id = tokens.indexOf(text);
    if (id < 0) throw new Error(`${name}: no token ${text}`);
    return id;
  };
  return {
    name,
    tokens,
    types,
    metadata,
    bos: metadata["tokenizer.ggml.bos_token_id"] as number,
    eos: metadata["tokenizer.ggml.eos_token_id"] as number,
    turnStart: idOf(TOKENIZERS[name].turnStart),
    turnEnd: idOf(TOKENIZERS[name].turnEnd),
    chatTemplate,
  };
}

function flatten(node: object, prefix: string, out: Record<string, unknown>): void {
  for (const [key, value] of Object.entries(node)) {
    const path = `${prefix}.${key}`;
    if (value !== null && typeof value === "object" && !Array.isArray(value)) flatten(value, path, out);
    else out[path] = value;
  }
}

/** GPT-2's byte-level alphabet: each byte as the printable character BPE vocabularies store. */
const BYTE_TO_CHAR: string[] = (() => {
  const printable = (b: number) => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  let next = 256;
  return Array.from({ length: 256 }, (_, b) => String.fromCodePoint(printable(b) ? b : next++));
})();

/** A text as a byte-level BPE vocabulary spells it (" mixes" → "Ġmixes"). */
export function byteLevelPiece(text: string): string {
  return [...new TextEncoder().encode(text)].map((b) => BYTE_TO_CHAR[b]).join("");
}
