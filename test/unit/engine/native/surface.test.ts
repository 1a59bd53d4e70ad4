// The native surface is listed once (engine/native/surface.ts): the patches must define exactly
// those names, and the installed node-llama-cpp must ship the llama.cpp the patches are written for.
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { ADDON_FUNCTIONS, bundledLlamaCpp, CONTEXT_METHODS, LLAMA_CPP_SOURCE, NODE_LLAMA_CPP_LLAMA_DIR } from "../../../../engine/native/surface.js";

const patches = join(import.meta.dirname, "..", "..", "..", "..", "engine", "native", "patches");
const added = (file: string, pattern: RegExp) =>
  readFileSync(join(patches, file), "utf8")
    .split("\n")
    .filter((line) => line.startsWith("+"))
    .flatMap((line) => [...line.matchAll(pattern)].map((m) => m[1]));

describe("the native surface", () => {
  it("the context patch registers exactly CONTEXT_METHODS", () => {
    expect(added("addon-context.diff", /InstanceMethod\("(\w+)"/g).sort()).toEqual([...CONTEXT_METHODS].sort());
  });

  it("the exports patch registers exactly ADDON_FUNCTIONS", () => {
    expect(added("addon-exports.diff", /PropertyDescriptor::Function\("(\w+)"/g).sort()).toEqual([...ADDON_FUNCTIONS].sort());
  });

  it("the patches hold only hooks into existing files; flock's own files ship whole (engine/native/llama-cpp)", () => {
    for (const file of readdirSync(patches)) expect(readFileSync(join(patches, file), "utf8"), file).not.toMatch(/^new file mode/m);
    const own = join(patches, "..", "llama-cpp");
    expect(readdirSync(own, { recursive: true, encoding: "utf8" }).filter((f) => /\.(cpp|h)$/.test(f)).sort()).toEqual([
      "ggml/src/ggml-cpu/arch/x86/flock-amx-probe.h",
      "src/llama-flock.cpp",
      "src/llama-flock.h",
    ]);
    // The hooks reach the shipped files: the CMake patch compiles llama-flock.cpp into libllama,
    // and ggml's x86 variant scoring includes the AMX check.
    expect(added("llama-cpp-flock.diff", /(llama-flock\.cpp)/g)).toContain("llama-flock.cpp");
    expect(added("llama-cpp-cpu-variants.diff", /"(flock-amx-probe\.h)"/g)).toEqual(["flock-amx-probe.h"]);
  });

  it("a patch adds no long run of lines: bodies belong in the shipped files", () => {
    // The longest run today is llama.h's documented routed-LoRA declarations.
    for (const file of readdirSync(patches)) {
      let run = 0;
      let longest = 0;
      for (const line of readFileSync(join(patches, file), "utf8").split("\n")) {
        run = line.startsWith("+") && !line.startsWith("+++") ? run + 1 : 0;
        longest = Math.max(longest, run);
      }
      expect(longest, file).toBeLessThanOrEqual(40);
    }
  });

  it("node-llama-cpp ships the llama.cpp the patches are written for", () => {
    expect(bundledLlamaCpp(NODE_LLAMA_CPP_LLAMA_DIR)).toEqual(LLAMA_CPP_SOURCE);
  });
});
