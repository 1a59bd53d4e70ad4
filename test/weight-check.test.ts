// The startup weight check (engine/weight-check.ts) with the real native build: every weight
// type runs in a child process; a check that dies on an illegal instruction — simulated by the
// addon's test hook, which executes ud2 where the named case would run, as an AMX-advertising VM
// traps — refuses the start with the type, the buffer type and the files named, and the server
// process itself exits 1 with that message instead of crashing on a request.
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { getLlama } from "node-llama-cpp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RANDOM_SHAPE, writeRandomLlama } from "../forge/random.js";
import { TensorType } from "../engine/gguf/writer.js";
import { hasWeightCheck } from "../engine/native.js";
import { checkWeights, weightTypes } from "../engine/weight-check.js";

const required = process.env.FLOCK_REQUIRE_NATIVE === "1";
const root = join(import.meta.dirname, "..");
let dir: string;
let available = false;
const q4 = () => join(dir, "q4.gguf");
const q8 = () => join(dir, "q8.gguf");
const options = (cacheFile: string | null = null) => ({ gpu: false as const, threads: 1, cacheFile, build: "test" });

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "flock-weight-check-"));
  writeRandomLlama(q4(), { ...RANDOM_SHAPE, blockWeights: TensorType.Q4_0 }, 1);
  writeRandomLlama(q8(), { ...RANDOM_SHAPE, blockWeights: TensorType.Q8_0 }, 2);
  const llama = await getLlama({ gpu: false });
  available = hasWeightCheck(llama);
  await llama.dispose();
});
afterAll(() => {
  delete process.env.FLOCK_TEST_TRAP_WEIGHT_CHECK;
  rmSync(dir, { recursive: true, force: true });
});

describe("the startup weight check", () => {
  it("finds each file's matrix types", async () => {
    const types = await weightTypes([q4(), q8(), join(dir, "missing.gguf")]);
    expect(types.get("Q4_0")).toEqual([q4()]);
    expect(types.get("Q8_0")).toEqual([q8()]);
    // token_embd is F16 and output F32 in both; a missing file is left to loading to report.
    expect(types.get("F16")).toEqual([q4(), q8()]);
    expect(types.get("F32")).toEqual([q4(), q8()]);
  });

  it("passes every type of real files and remembers what passed", async (ctx) => {
    if (!required && !available) ctx.skip();
    const cacheFile = join(dir, "state", "weight-check.json");
    await checkWeights([q4(), q8()], options(cacheFile));
    const cache = JSON.parse(readFileSync(cacheFile, "utf8")) as Record<string, string[]>;
    expect(Object.values(cache)).toEqual([["F16", "F32", "Q4_0", "Q8_0"]]);
  });

  it.for(["CPU", "CPU_REPACK"])("a case that traps (%s buffer) is refused, naming the type, the buffer type, the signal and the files", async (buffer, ctx) => {
    if (!required && !available) ctx.skip();
    const llama = await getLlama({ gpu: false });
    const repack = llama.systemInfo.includes("REPACK = 1");
    await llama.dispose();
    if (buffer === "CPU_REPACK" && !repack) ctx.skip(); // Q4_0 is repacked on AVX2 and ARM only
    process.env.FLOCK_TEST_TRAP_WEIGHT_CHECK = `Q4_0@${buffer}`;
    try {
      const refused = checkWeights([q8(), q4()], options(join(dir, "trap-cache.json")));
      await expect(refused).rejects.toThrow(/crashed \(SIGILL\) running a Q4_0 matrix product/);
      await expect(refused).rejects.toThrow(buffer === "CPU" ? "in the CPU backend's own kernels" : "in the CPU_REPACK buffer type");
      await expect(refused).rejects.toThrow(`Files with Q4_0 weights: ${q4()}.`);
    } finally {
      delete process.env.FLOCK_TEST_TRAP_WEIGHT_CHECK;
    }
  });

  it("the server refuses to start (exit 1) with the reason, before loading anything", async (ctx) => {
    if (!required && !available) ctx.skip();
    const child = spawn(join(root, "node_modules", ".bin", "tsx"), ["server/main.ts", "--port", "0", "--threads", "1", "--gpu", "off", "--model", `m=${q8()}`, "--cache-dir", join(dir, "cli")], {
      cwd: root,
      env: { ...process.env, FLOCK_TEST_TRAP_WEIGHT_CHECK: "Q8_0@CPU" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stderr = "";
    child.stderr.on("data", (d) => (stderr += d));
    const code = await new Promise((resolve) => child.on("exit", resolve));
    expect(code).toBe(1);
    expect(stderr).toMatch(/flock: cannot start: .*crashed \(SIGILL\) running a Q8_0 matrix product/);
    expect(stderr).toContain(q8());
  });
});
