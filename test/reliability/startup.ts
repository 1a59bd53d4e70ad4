// Startup faults: a configuration naming a corrupt GGUF, a truncated one, a missing file, a LoRA
// adapter built for another base model, or a missing speculative draft. flock's rule: a file a
// model id needs that cannot be loaded stops the server at startup (exit code 1) with a message
// naming the model id and the file — it never serves a partial set of models, never hangs, never
// dies of a signal. The one exception is an expert of a routed library, which is optional by
// design: it is left out and listed as failed while the model serves with the others.
import { randomBytes } from "node:crypto";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Manifest } from "../../forge/manifest.js";
import { type ExitInfo, spawnFlock, startFlockProcess } from "./server.js";

export interface StartupCase {
  name: string;
  /** The file the error must name. */
  file: string;
  model: Record<string, unknown>;
}

export interface StartupResult {
  name: string;
  file: string;
  exit: ExitInfo | "timeout";
  namesFile: boolean;
  namesModel: boolean;
  ms: number;
  /** The line that names the file (trimmed). */
  message: string;
  passed: boolean;
}

/** Builds the bad files next to the forged demo set and returns the cases. */
export function startupCases(forgeDir: string, manifest: Manifest, dir: string): StartupCase[] {
  const base = join(forgeDir, manifest.models["flock-demo"].file);
  const bytes = readFileSync(base);
  const corrupt = join(dir, "corrupt.gguf");
  // The magic is right, everything after it is noise.
  writeFileSync(corrupt, Buffer.concat([bytes.subarray(0, 4), randomBytes(64 * 1024)]));
  const truncated = join(dir, "truncated.gguf");
  writeFileSync(truncated, bytes.subarray(0, Math.floor(bytes.length * 0.6)));
  const missing = join(dir, "missing.gguf");
  const cases: StartupCase[] = [
    { name: "corrupt GGUF", file: corrupt, model: { id: "bad", path: corrupt } },
    { name: "truncated GGUF", file: truncated, model: { id: "bad", path: truncated } },
    { name: "missing file", file: missing, model: { id: "bad", path: missing } },
    { name: "missing speculative draft", file: missing, model: { id: "bad", path: base, speculative: { draft: missing } } },
  ];
  // An adapter whose base model has another width than flock-demo: its tensors cannot fit.
  const width = manifest.models["flock-demo"].shape.embeddingDim;
  const foreign = Object.values(manifest.adapters).find((a) => manifest.models[a.base] && manifest.models[a.base].shape.embeddingDim !== width);
  if (foreign) {
    const file = join(forgeDir, foreign.file);
    cases.push({ name: "adapter built for another base", file, model: { id: "bad", path: base, lora: [{ path: file }] } });
  }
  return cases;
}

async function runCase(c: StartupCase, forgeDir: string, manifest: Manifest, dir: string, index: number, timeoutMs: number): Promise<StartupResult> {
  const configFile = join(dir, `startup-${index}.json`);
  const good = { id: "good", path: join(forgeDir, manifest.models["flock-demo-draft"].file), parallel: 1 };
  writeFileSync(configFile, JSON.stringify({ host: "127.0.0.1", port: 0, threads: 1, gpu: "off", cacheDir: join(dir, "startup-state"), models: [good, c.model] }));
  const started = performance.now();
  const child = spawnFlock(configFile);
  let output = "";
  child.stdout!.on("data", (d: Buffer) => (output += d.toString()));
  child.stderr!.on("data", (d: Buffer) => (output += d.toString()));
  const exit = await Promise.race([
    new Promise<ExitInfo>((resolve) => child.once("exit", (code, signal) => resolve({ code, signal }))),
    new Promise<"timeout">((resolve) => setTimeout(() => resolve("timeout"), timeoutMs)),
  ]);
  if (exit === "timeout") child.kill("SIGKILL");
  // The plain line on stderr (`flock: cannot start: …`); the JSON log line says the same.
  const line = output.split("\n").find((l) => l.startsWith("flock: cannot start:")) ?? output.split("\n").find((l) => l.includes(c.file) && /error|fail|cannot/i.test(l)) ?? "";
  const namesFile = line.includes(c.file);
  const namesModel = /\bmodel bad\b/.test(line);
  const message = line.replace(/^flock: cannot start: /, "");
  return {
    name: c.name,
    file: c.file,
    exit,
    namesFile,
    namesModel,
    ms: performance.now() - started,
    message: message.slice(0, 300),
    passed: exit !== "timeout" && exit.code === 1 && exit.signal === null && namesFile && namesModel,
  };
}

/** Runs the cases, `parallel` at a time. */
export async function runStartupFaults(forgeDir: string, manifest: Manifest, dir: string, parallel = 2, timeoutMs = 90_000): Promise<StartupResult[]> {
  const cases = startupCases(forgeDir, manifest, dir);
  const results: StartupResult[] = [];
  let next = 0;
  await Promise.all(
    Array.from({ length: parallel }, async () => {
      for (let i = next++; i < cases.length; i = next++) results[i] = await runCase(cases[i], forgeDir, manifest, dir, i, timeoutMs);
    }),
  );
  return results;
}

export interface ExpertFaultResult {
  /** The bad expert is listed as failed, with the reason. */
  listedFailed: boolean;
  reason: string;
  /** The routed model serves with the other experts. */
  serves: boolean;
  passed: boolean;
}

/** A routed library with one expert built for another base: it is left out, the model serves. */
export async function runExpertFault(forgeDir: string, manifest: Manifest, dir: string): Promise<ExpertFaultResult> {
  const base = manifest.models["flock-routing-base"];
  const good = Object.values(manifest.adapters).filter((a) => a.base === "flock-routing-base");
  const foreign = Object.values(manifest.adapters).find((a) => a.base === "flock-demo");
  if (!base || good.length === 0 || !foreign) return { listedFailed: false, reason: "the forge has no routing set", serves: false, passed: false };
  const foreignFile = join(forgeDir, foreign.file);
  mkdirSync(join(dir, "expert-fault"), { recursive: true });
  const server = await startFlockProcess({
    dir: join(dir, "expert-fault"),
    config: {
      threads: 1,
      models: [
        {
          id: "routed",
          path: join(forgeDir, base.file),
          parallel: 1,
          experts: {
            library: [
              ...good.map((a) => ({ name: a.domain, lora: join(forgeDir, a.file), ...(a.gates ? { gates: join(forgeDir, a.gates) } : {}) })),
              { name: "foreign", lora: foreignFile },
            ],
          },
        },
      ],
    },
  });
  try {
    const listing = (await (await fetch(`${server.url}/admin/models/routed/experts`, { headers: { authorization: `Bearer ${server.adminKey}` } })).json()) as {
      failed?: Array<{ name: string; error: string }>;
    };
    const failed = listing.failed?.find((f) => f.name === "foreign");
    const res = await fetch(`${server.url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: "routed+arrow", prompt: "The cook", max_tokens: 8 }),
    });
    await res.text();
    const listedFailed = failed !== undefined && failed.error.length > 0;
    return { listedFailed, reason: failed?.error ?? "", serves: res.status === 200, passed: listedFailed && res.status === 200 };
  } finally {
    await server.stop();
  }
}
