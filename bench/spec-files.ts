// The forge's `spec` pair with its vocabulary padded to a real size, forged once into .cache/
// (shared by the benchmarks that put flock's speculation beside llama-server's).
import { existsSync } from "node:fs";
import { join } from "node:path";
import { FORGE_FORMAT, type Manifest, readManifest } from "../forge/manifest.js";
import { forge } from "../forge/presets.js";

export function forgedSpecPair(vocabulary: number): { manifest: Manifest; target: string; draft: string } {
  const dir = join(import.meta.dirname, "..", ".cache", `bench-spec-v${vocabulary}-f${FORGE_FORMAT}`);
  if (!existsSync(join(dir, "manifest.json"))) forge({ outDir: dir, preset: "spec", seed: 1, vocabSize: vocabulary });
  const manifest = readManifest(dir);
  const pair = manifest.pairs[0];
  return { manifest, target: join(dir, manifest.models[pair.target].file), draft: join(dir, manifest.models[pair.draft].file) };
}

export const SPEC_PAIR_MODELS = "forged spec pair (target: one f32 layer, d = 2048; draft: d = 128)";
