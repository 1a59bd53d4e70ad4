// The forge's manifest: what each forged file is and the exact distributions it encodes.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { ModelShape } from "./compile.js";

/** Bumped whenever forged output changes, so cached demo sets are forged again. */
export const FORGE_FORMAT = 6;

/** A chain row as [token, probability] pairs; tokens not listed have probability 0. */
export type ManifestRow = Array<[number, number]>;

export interface Manifest {
  format: number;
  preset: string;
  seed: number;
  /** `tokenizer`: "forge" (the forge's own) or the real tokenizer copied (forge/tokenizers.ts). */
  vocab: { tokenizer: string; tokens: string[]; bos: number; eos: number; imStart: number; imEnd: number };
  states: { names: string[]; ofToken: number[] };
  chains: Record<string, ManifestRow[]>;
  /** `analytic`: the model's next-token distribution is exactly its chain's row. */
  models: Record<string, { file: string; chain: string; role: string; shape: ModelShape; analytic: boolean }>;
  /** `gates`: the expert's PHATGOOSE gate file, where the forge made one. */
  adapters: Record<string, { file: string; base: string; chain: string; domain: string; gates?: string }>;
  pairs: Array<{ target: string; draft: string; acceptancePerState: number[]; greedyAgreementPerState: boolean[] }>;
  domains: Array<{ name: string; heldOutText: string }>;
  mixedText?: string;
  mixedTokens?: number[];
}

export function readManifest(dir: string): Manifest {
  return JSON.parse(readFileSync(join(dir, "manifest.json"), "utf8")) as Manifest;
}

/** Exact next-token probabilities after `token` under a chain. */
export function nextTokenProbabilities(manifest: Manifest, chain: string, token: number): Float64Array {
  const out = new Float64Array(manifest.vocab.tokens.length);
  for (const [t, p] of manifest.chains[chain][manifest.states.ofToken[token]]) out[t] = p;
  return out;
}

/**
 * The token of each chain state, by state: each word's own token, whatever the tokenizer spells
 * it as (the start state, which many tokens lead to, has -1).
 */
export function tokenOfState(manifest: Manifest): number[] {
  const tokens = new Array<number>(manifest.states.names.length).fill(-1);
  manifest.states.ofToken.forEach((state, token) => {
    if (state !== 0) tokens[state] = token;
  });
  return tokens;
}
