// flock's native surface, listed once: what the patches add to node-llama-cpp's addon, and the
// llama.cpp source they are written against. The build (build.ts) checks the source before it
// patches and the methods after it builds; startup (engine/native.ts) checks the loaded binary;
// test/unit/engine/native/surface.test.ts checks that the patches define exactly these names.
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";

/** Methods flock's patch adds to the addon's AddonContext (engine/native/addon/AddonFlock.cpp). */
export const CONTEXT_METHODS = [
  "flockGetLogits",
  "flockDecodeBatch",
  "flockGenerate",
  "flockGenerateStop",
  "flockGenerateConsumed",
  "flockFusionGrid",
  "flockEnableHiddenStates",
  "flockGetHiddenState",
  "flockSetRoutedLoras",
  "flockGetRoutingTraceModules",
  "flockGetRoutingTrace",
] as const;

/** Functions flock's patch adds to the addon's exports. */
export const ADDON_FUNCTIONS = ["flockCheckWeightType", "flockSoftmax", "flockSampleToken", "flockSamplingDistribution", "flockDrawFrom", "flockDistributionSummary", "flockResidualMass", "flockDrawResidual", "flockGrammarValid", "flockGrammarMask", "flockJsonSchemaToGrammar", "flockGrammarFree", "flockGrammarMaskCache", "flockGrammarMaskCacheStats", "flockGrammarAllows", "flockGrammarForcedToken", "flockRpcSupported", "flockSetModelRpcServers", "flockRpcFailed", "flockTrainLora", "flockTrainGates", "flockTrainGradientCheck"] as const;

/**
 * The llama.cpp source the patches apply to: node-llama-cpp's bundled release
 * (llama/llama.cpp.info.json) and the commit of its llama/gitRelease.bundle.
 */
export const LLAMA_CPP_SOURCE = { release: "v0.4.0", commit: "80fb11ac73e66d89eae2c6a91d8a77428fa733ed" } as const;

/** node-llama-cpp's package root: two levels above its entry point (dist/index.js); package.json is not exported. */
export const NODE_LLAMA_CPP_DIR = dirname(dirname(createRequire(import.meta.url).resolve("node-llama-cpp")));
/** Its `llama/` folder: llama.cpp's source bundle, the addon's sources, local builds. */
export const NODE_LLAMA_CPP_LLAMA_DIR = join(NODE_LLAMA_CPP_DIR, "llama");

/** The llama.cpp source a node-llama-cpp `llama/` folder ships: its release and the bundle's commit. */
export function bundledLlamaCpp(llamaDir: string): { release: string; commit: string } {
  const info = JSON.parse(readFileSync(join(llamaDir, "llama.cpp.info.json"), "utf8")) as { tag?: string };
  const heads = spawnSync("git", ["bundle", "list-heads", join(llamaDir, "gitRelease.bundle")], { encoding: "utf8" });
  const commit = /^([0-9a-f]{40}) HEAD$/m.exec(heads.stdout ?? "")?.[1] ?? "unknown";
  return { release: info.tag ?? "unknown", commit };
}
