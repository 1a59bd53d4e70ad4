// llama.cpp's own programs (llama-server for the side-by-side benchmarks, rpc-server for the
// machines that hold a model's layers over RPC), built from the llama.cpp source node-llama-cpp
// ships (llama/gitRelease.bundle, the commit flock's native build patches), with the CPU flags
// flock's own build uses (-march=native less the extensions that trap here), once per commit and
// program, cached in ~/.cache/flock.
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, rmSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import { probeCpu } from "./cpu-probe.js";
import { bundledLlamaCpp, NODE_LLAMA_CPP_LLAMA_DIR } from "./surface.js";

export type LlamaTool = "llama-server" | "rpc-server";

/** Each program's CMake target (also its binary's name) and what it needs beyond the defaults. */
const TOOLS: Record<LlamaTool, { target: string; options: string[] }> = {
  "llama-server": { target: "llama-server", options: [] },
  "rpc-server": { target: "ggml-rpc-server", options: ["-DGGML_RPC=ON"] },
};

function run(command: string, args: string[], options: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): void {
  console.error(`flock: ${command} ${args.join(" ")}`);
  const result = spawnSync(command, args, { stdio: ["ignore", "inherit", "inherit"], ...options });
  if (result.status !== 0) throw new Error(`${command} ${args.join(" ")} failed (${result.status ?? result.signal})`);
}

/** The path of `tool`, built first if this commit's build is not cached (minutes on 2 cores). */
export function llamaToolBinary(tool: LlamaTool): string {
  const llamaDir = NODE_LLAMA_CPP_LLAMA_DIR;
  const { commit } = bundledLlamaCpp(llamaDir);
  const dir = join(homedir(), ".cache", "flock", `${tool}-${commit.slice(0, 12)}`);
  const { target, options: toolOptions } = TOOLS[tool];
  const binary = join(dir, "build", "bin", target);
  if (existsSync(binary)) return binary;
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  run("git", ["clone", "--quiet", join(llamaDir, "gitRelease.bundle"), join(dir, "src")]);
  // The CPU flags of flock's own build: -march=native less what traps on this machine.
  run("git", ["apply", join(import.meta.dirname, "patches", "llama-cpp-native-flags.diff")], { cwd: join(dir, "src") });
  const disabled = probeCpu().flags;
  const env = { ...process.env, ...(disabled.length > 0 ? { FLOCK_NATIVE_DISABLE_FLAGS: disabled.join(" ") } : {}) };
  const options = ["-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", ...toolOptions];
  run("cmake", ["-S", join(dir, "src"), "-B", join(dir, "build"), "-G", "Ninja", ...options], { env });
  run("cmake", ["--build", join(dir, "build"), "--target", target, "--parallel", "2"], { env });
  return binary;
}
