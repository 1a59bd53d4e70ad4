// The native build's CPU probe (engine/native/cpu-probe.ts): real probe programs, compiled and
// run in child processes. A trap is either simulated (the probe executes ud2 first, the test
// hook) or real: claiming an extension this CPU lacks makes its probe execute instructions the
// CPU does not have.
import { describe, expect, it } from "vitest";
import { cpuinfoFlags, probeCpu } from "../../../../engine/native/cpu-probe.js";

const x64 = process.arch === "x64";
const here = cpuinfoFlags();

describe("the CPU probe", () => {
  it("reads the flags line of /proc/cpuinfo", () => {
    const flags = cpuinfoFlags("processor\t: 0\nflags\t\t: fpu sse4_2 avx2 amx_int8\nbugs\t\t: none\n");
    expect([...flags]).toEqual(["fpu", "sse4_2", "avx2", "amx_int8"]);
    expect(cpuinfoFlags("no flags here").size).toBe(0);
  });

  it.runIf(x64 && here.has("avx2"))("every advertised extension of this CPU runs, and nothing is turned off", () => {
    const probe = probeCpu({ flags: here });
    const ran = probe.results.filter((r) => r.outcome === "runs").map((r) => r.name);
    expect(ran).toEqual(expect.arrayContaining(["SSE42", "AVX", "AVX2", "FMA", "F16C"]));
    expect(probe.disabled).toEqual([]);
    expect(probe.flags).toEqual([]);
  });

  it.runIf(x64 && here.has("avx2"))("an extension whose probe traps is turned off with everything built on it", () => {
    const probe = probeCpu({ flags: here, simulateTrap: ["AVX2"] });
    const outcome = (name: string) => probe.results.find((r) => r.name === name)?.outcome;
    expect(probe.results.find((r) => r.name === "AVX2")).toEqual({ name: "AVX2", outcome: "traps", signal: "SIGILL" });
    expect(outcome("AVX")).toBe("runs");
    expect(probe.disabled).toContain("AVX2");
    expect(probe.flags).toContain("-mno-avx2");
    expect(probe.flags).not.toContain("-mno-avx");
    if (here.has("avx512f")) {
      expect(outcome("AVX512")).toBe("needs-disabled");
      expect(probe.flags).toContain("-mno-avx512f");
    }
  });

  it.runIf(x64 && here.has("avx512f") && !here.has("amx_tile"))("AMX claimed by a CPU without it (as a VM that traps on it would): its real probe fails and AMX is turned off", () => {
    const probe = probeCpu({ flags: new Set([...here, "amx_tile", "amx_int8"]) });
    const amx = probe.results.filter((r) => r.name.startsWith("AMX") && r.outcome !== "not-advertised");
    expect(amx.map((r) => r.name)).toEqual(["AMX_TILE", "AMX_INT8"]);
    // The kernel refuses the tile state (not-permitted) or the instruction traps.
    for (const r of amx) expect(["traps", "not-permitted", "needs-disabled"]).toContain(r.outcome);
    expect(probe.disabled).toEqual(["AMX_TILE", "AMX_INT8"]);
    expect(probe.flags).toEqual(["-mno-amx-tile", "-mno-amx-int8"]);
  });

  it("without a working compiler nothing is probed and nothing turned off", () => {
    const probe = probeCpu({ flags: new Set(["avx2", "avx"]), compiler: "/nonexistent/cc" });
    expect(probe).toEqual({ results: [], disabled: [], flags: [] });
  });
});
