// The built-in demo: forged on first start into the cache directory, then served. Its models
// carry Qwen 2's tokenizer by default (151,936 tokens), so what a user tries runs at a real
// vocabulary size.
import { execFile } from "node:child_process";
import { existsSync, renameSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { promisify } from "node:util";
import { FORGE_FORMAT, readManifest } from "../forge/manifest.js";
import type { TokenizerName } from "../forge/tokenizers.js";
import type { ModelEntryInput } from "../pipelines/model-entry.js";

const DEMO_SEED = 1;
export type DemoTokenizer = TokenizerName | "forge";

export function demoDir(cacheDir: string, tokenizer: DemoTokenizer): string {
  return join(cacheDir, `demo-f${FORGE_FORMAT}-s${DEMO_SEED}-${tokenizer}`);
}

/**
 * Forges the demo with `npm run forge` in a child process: at a real vocabulary size that takes
 * seconds of CPU, and the server's event loop keeps answering /health (503 while it loads).
 */
async function forgeDemo(outDir: string, cacheDir: string, tokenizer: DemoTokenizer): Promise<void> {
  const tsx = pathToFileURL(createRequire(import.meta.url).resolve("tsx")).href;
  const cli = fileURLToPath(new URL("../tools/forge.ts", import.meta.url));
  const args = ["--import", tsx, cli, "--out", outDir, "--preset", "demo", "--seed", String(DEMO_SEED), "--cache-dir", cacheDir];
  if (tokenizer !== "forge") args.push("--tokenizer", tokenizer);
  try {
    await promisify(execFile)(process.execPath, args, { maxBuffer: 16 << 20 });
  } catch (err) {
    const stderr = (err as { stderr?: string }).stderr?.trim();
    throw new Error(`cannot forge the demo models into ${outDir}: ${stderr || (err as Error).message}`);
  }
}

/** Forges the demo set if it is not cached yet; returns the model entries to serve. */
export async function demoModels(cacheDir: string, tokenizer: DemoTokenizer = "qwen2"): Promise<ModelEntryInput[]> {
  const dir = demoDir(cacheDir, tokenizer);
  if (!existsSync(join(dir, "manifest.json"))) {
    // Forge beside the target and rename, so a concurrent or interrupted start never sees half a set.
    const staging = `${dir}.staging-${process.pid}`;
    try {
      await forgeDemo(staging, cacheDir, tokenizer);
      rmSync(dir, { recursive: true, force: true });
      renameSync(staging, dir);
    } catch (err) {
      rmSync(staging, { recursive: true, force: true });
      if (!existsSync(join(dir, "manifest.json"))) throw err;
    }
  }
  const manifest = readManifest(dir);
  const file = (f: string) => join(dir, f);
  const base = manifest.models["flock-demo"];
  return [
    // The demo's base model is served with its draft: SpecDec++ speculative decoding.
    { id: "flock-demo", path: file(base.file), speculative: { draft: file(manifest.models["flock-demo-draft"].file) } },
    { id: "flock-demo-draft", path: file(manifest.models["flock-demo-draft"].file), parallel: 2 },
    // Dynamic logit fusion: the four weak domain experts steer the strong base.
    {
      id: "flock-demo-fused",
      path: file(base.file),
      parallel: 2,
      fusion: {
        base: file(manifest.models["flock-weak"].file),
        experts: Object.entries(manifest.adapters)
          .filter(([, a]) => a.base === "flock-weak")
          .map(([, a]) => ({ name: a.domain, lora: file(a.file) })),
      },
    },
    // Routed experts: the four domain LoRAs over a base that tracks the text's domain, routed
    // per token (flock-routing+phatgoose with the forged gate files, flock-routing+arrow).
    {
      id: "flock-routing",
      path: file(manifest.models["flock-routing-base"].file),
      parallel: 2,
      experts: {
        library: Object.entries(manifest.adapters)
          .filter(([, a]) => a.base === "flock-routing-base")
          .map(([, a]) => ({ name: a.domain, lora: file(a.file), ...(a.gates ? { gates: file(a.gates) } : {}) })),
      },
    },
    // Embeddings (POST /v1/embeddings): a mean-pooled model whose vectors carry the domains.
    { id: "flock-embed", path: file(manifest.models["flock-embed"].file), parallel: 1, embeddings: true },
    // One LoRA expert per id: the demo of adapters (node-llama-cpp applies LoRA per context).
    ...Object.entries(manifest.adapters)
      .filter(([, a]) => a.base === "flock-demo")
      .map(([id, a]) => ({ id, path: file(base.file), lora: [{ path: file(a.file) }], parallel: 2 })),
  ];
}
