// The startup self-check: before serving, every weight type among the configured GGUF files
// runs one matrix product in each buffer type llama.cpp may place it in (the addon's
// flockCheckWeightType), in a child process. A CPU that advertises an instruction-set extension
// it traps on (AMX on some VMs) kills that child, not the server, and flock refuses to start with
// the weight type, the buffer type and the files named — instead of crashing at the first
// request. Outcomes that passed are remembered per build, CPU and type (cacheFile), so a restart
// costs nothing.
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname } from "node:path";
import { GgmlType, readGgufFileInfo } from "node-llama-cpp";
import { FlockError } from "./errors.js";

/** One case the addon ran: a matrix product of `batch` rows with the weights in `buffer`. */
export interface WeightCheckCase {
  device: string;
  buffer: string;
  batch: number;
  supported: boolean;
  /** ‖y − ref‖ / ‖ref‖ against a double-precision product of the dequantized weights. */
  error: number;
}

/** Relative error past which a kernel computes something else (activation rounding gives ~0.4 %). */
export const WRONG_RESULT = 0.05;

export interface WeightCheckOptions {
  gpu: false | "auto" | "cuda" | "vulkan" | "metal";
  threads: number;
  /** Where passed checks are remembered; null: check every time. */
  cacheFile: string | null;
  /** Identifies the loaded build (its system info): a rebuild invalidates what was remembered. */
  build: string;
}

/** The files holding matrices (tensors of two or more dimensions) of each ggml type. */
export async function weightTypes(files: readonly string[]): Promise<Map<string, string[]>> {
  const byType = new Map<string, string[]>();
  for (const file of new Set(files)) {
    // A file that cannot be read is left to loading, which names the model entry it belongs to.
    const info = await readGgufFileInfo(file, { logWarnings: false }).catch(() => null);
    if (!info) continue;
    const types = new Set((info.fullTensorInfo ?? []).filter((t) => t.dimensions.length >= 2).map((t) => GgmlType[t.ggmlType] ?? `type ${t.ggmlType}`));
    for (const type of types) byType.set(type, [...(byType.get(type) ?? []), file]);
  }
  return byType;
}

/**
 * Checks every weight type of `files`; throws a FlockError ("unavailable") naming the type, the
 * buffer type, what it means and the files, when a check crashes or computes wrong results.
 */
export async function checkWeights(files: readonly string[], options: WeightCheckOptions): Promise<void> {
  const byType = await weightTypes(files);
  const cache = options.cacheFile && !process.env.FLOCK_TEST_TRAP_WEIGHT_CHECK ? readCache(options.cacheFile) : {};
  const key = cacheKey(options);
  const passed = new Set(cache[key] ?? []);
  const pending = [...byType.keys()].filter((t) => !passed.has(t));
  if (pending.length === 0) return;

  const outcome = await runChild(pending, options);
  if (outcome.crashed) {
    const { type, device, buffer } = outcome.crashed.running ?? { type: pending[0], device: "CPU", buffer: "?" };
    throw new FlockError(
      "unavailable",
      `the startup weight check crashed (${outcome.crashed.signal}) running a ${type} matrix product in ${meaning(buffer, device)}: ` +
        `this machine cannot run ${type} weights with this build of llama.cpp. Files with ${type} weights: ${(byType.get(type) ?? []).join(", ")}. ` +
        "If the CPU advertises an extension it traps on, build the native engine on this machine (npm run build:native -- --force; for the Docker image, " +
        "--build-arg GGML_NATIVE=ON --build-arg GGML_CPU_ALL_VARIANTS=OFF): a native build probes each extension and leaves out those that trap.",
    );
  }
  for (const [type, cases] of outcome.results) {
    const wrong = cases.find((c) => c.supported && !(c.error < WRONG_RESULT));
    if (wrong) {
      throw new FlockError(
        "unavailable",
        `the startup weight check computed wrong results for ${type} weights in ${meaning(wrong.buffer, wrong.device)} (relative error ${wrong.error.toPrecision(3)}, batch ${wrong.batch}). Files with ${type} weights: ${(byType.get(type) ?? []).join(", ")}.`,
      );
    }
    passed.add(type);
  }
  if (options.cacheFile && !process.env.FLOCK_TEST_TRAP_WEIGHT_CHECK) writeCache(options.cacheFile, { ...cache, [key]: [...passed].sort() });
}

/** What a buffer type stands for, in words a user can act on. */
function meaning(buffer: string, device: string): string {
  if (buffer === "AMX") return "the AMX buffer type (Intel AMX tile instructions: amx_tile, amx_int8)";
  if (buffer === "CPU_REPACK") return "the CPU_REPACK buffer type (weights repacked for the CPU's AVX2/AVX-512 or NEON kernels)";
  if (buffer === "CPU") return "the CPU backend's own kernels (built for the instruction-set extensions in its system info)";
  return `the ${buffer} buffer type of device ${device}`;
}

interface ChildOutcome {
  results: Map<string, WeightCheckCase[]>;
  crashed?: { signal: string; running?: { type: string; device: string; buffer: string } };
}

/** node-llama-cpp's package root, where the child resolves it from. */
const appRoot = dirname(dirname(dirname(dirname(createRequire(import.meta.url).resolve("node-llama-cpp")))));

// Plain JavaScript (no TypeScript loader in the child): load the same build, run the checks,
// print one JSON line per type.
const CHILD = `
import { getLlama, LlamaLogLevel } from "node-llama-cpp";
const { gpu, threads, types } = JSON.parse(process.argv[1]);
// The build the server loaded, never a download or a compile (the server uses build: "never" too).
const llama = await getLlama({ gpu, build: "never", logLevel: LlamaLogLevel.error, progressLogs: false });
for (const type of types) console.log(JSON.stringify({ type, cases: llama._bindings.flockCheckWeightType(type, threads) }));
`;

function runChild(types: readonly string[], options: WeightCheckOptions): Promise<ChildOutcome> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--input-type=module", "-e", CHILD, JSON.stringify({ gpu: options.gpu, threads: options.threads, types })], {
      cwd: appRoot,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
    child.on("error", reject);
    child.on("close", (code, signal) => {
      const results = new Map<string, WeightCheckCase[]>();
      for (const line of stdout.split("\n").filter((l) => l.startsWith("{"))) {
        const { type, cases } = JSON.parse(line) as { type: string; cases: WeightCheckCase[] };
        results.set(type, cases);
      }
      if (signal) {
        resolve({ results, crashed: { signal, running: lastAnnounced(stderr) } });
      } else if (code !== 0) {
        reject(new FlockError("unavailable", `the startup weight check failed (exit code ${code}): ${stderr.trim().split("\n").slice(-3).join(" | ")}`));
      } else {
        resolve({ results });
      }
    });
  });
}

/** The case the addon announced last ("flock-weight-check: TYPE DEVICE BUFFER batch M"). */
function lastAnnounced(stderr: string): { type: string; device: string; buffer: string } | undefined {
  const lines = stderr.split("\n").filter((l) => l.startsWith("flock-weight-check: "));
  const last = lines.at(-1)?.split(" ");
  return last && last.length >= 4 ? { type: last[1], device: last[2], buffer: last[3] } : undefined;
}

type Cache = Record<string, string[]>;

function cacheKey(options: WeightCheckOptions): string {
  let cpu = "";
  try {
    cpu = readFileSync("/proc/cpuinfo", "utf8").split("\n").find((l) => /^(flags|Features)\s*:/.test(l)) ?? "";
  } catch {
    // no /proc: the build identity alone
  }
  return createHash("sha256").update(`${options.build}\n${cpu}\ngpu=${options.gpu}`).digest("hex").slice(0, 32);
}

function readCache(file: string): Cache {
  try {
    return existsSync(file) ? (JSON.parse(readFileSync(file, "utf8")) as Cache) : {};
  } catch {
    return {}; // unreadable: check again and rewrite it
  }
}

function writeCache(file: string, cache: Cache): void {
  try {
    mkdirSync(dirname(file), { recursive: true });
    writeFileSync(file, JSON.stringify(cache));
  } catch {
    // a read-only cache directory only costs a check per start
  }
}
