// The AMX check of the CPU variants' scoring (engine/native/llama-cpp/ggml/src/ggml-cpu/arch/x86/
// flock-amx-probe.h, hooked into ggml's cpu-feats.cpp by patches/llama-cpp-cpu-variants.diff):
// compiled into a tiny program as ggml compiles its feature-detection unit (no -m flags), and run.
// It must answer without taking its caller down, whatever the tile instructions do here.
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { cpuinfoFlags, probeCpu } from "../../../../engine/native/cpu-probe.js";

const headerDir = join(import.meta.dirname, "../../../../engine/native/llama-cpp/ggml/src/ggml-cpu/arch/x86");
const compiler = process.env.CXX ?? "c++";
const canCompile = process.platform === "linux" && process.arch === "x64" && spawnSync(compiler, ["--version"]).status === 0;
const required = process.env.FLOCK_REQUIRE_NATIVE === "1";

let dir = "";
let program = "";

function probe(env: NodeJS.ProcessEnv = {}): { executes: boolean; status: number | null } {
  const run = spawnSync(program, [], { encoding: "utf8", env: { ...process.env, ...env } });
  return { executes: run.stdout.trim() === "1", status: run.status };
}

describe.runIf(canCompile || required)("the AMX check of ggml's CPU variant scoring", () => {
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), "flock-amx-probe-"));
    program = join(dir, "amx-probe");
    writeFileSync(join(dir, "main.cpp"), '#include "flock-amx-probe.h"\n#include <cstdio>\nint main() { std::printf("%d\\n", flock_amx_executes() ? 1 : 0); return 0; }\n');
    const build = spawnSync(compiler, ["-std=c++17", "-O2", "-Wall", "-Werror", `-I${headerDir}`, join(dir, "main.cpp"), "-o", program], { encoding: "utf8" });
    expect(build.stderr).toBe("");
    expect(build.status).toBe(0);
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("a child that traps rules AMX out, one that exits cleanly keeps it, and the caller lives on", () => {
    const trapped = probe({ FLOCK_TEST_AMX_PROBE: "trap" });
    expect(trapped.status).toBe(0);
    expect(trapped.executes).toBe(false);
    const passed = probe({ FLOCK_TEST_AMX_PROBE: "pass" });
    expect(passed.status).toBe(0);
    expect(passed.executes).toBe(true);
  });

  it("agrees with the build's own probe about this CPU", () => {
    const { executes, status } = probe();
    expect(status).toBe(0);
    const flags = cpuinfoFlags();
    // Without amx_tile advertised the tile instructions cannot run (the kernel refuses the tile
    // state, or the CPU traps); with it, the build-time probe ran the same instructions.
    const expected = flags.has("amx_tile") && probeCpu({ flags }).results.find((r) => r.name === "AMX_TILE")?.outcome === "runs";
    expect(executes).toBe(expected);
  });
});
