// Which x86 instruction-set extensions the native build may compile in: those the CPU
// advertises and that actually execute here. Some VMs advertise AMX (amx_int8, amx_tile) in
// cpuid and /proc/cpuinfo, yet trap on the first tile instruction (SIGILL in ggml's AMX matmul):
// a -march=native build then crashes on the first Q8_0 decode. So each advertised extension is
// exercised by a tiny probe program, compiled with the same -m flags ggml would use and run in a
// child process; an extension whose probe dies by a signal is turned off (-mno-…) for the build.
//
// Build-time only (engine/native/build.ts); needs a C compiler, which the build needs anyway.
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

interface Extension {
  /** The name ggml's CMake options and llama.cpp's system info use (GGML_<name>). */
  name: string;
  /** /proc/cpuinfo flags that must all be present. */
  cpuinfo: string[];
  /** Compiler flags that enable it (and, as -mno-…, disable it). */
  flags: string[];
  /** Extensions it builds on: if one of them is off, so is this one. */
  needs?: string[];
  /** Statements that use it; `v` is a volatile int the compiler cannot fold. Return 0 when the result is right. */
  body: string;
}

// Each body computes something checkable, so a probe that silently did nothing cannot pass.
const EXTENSIONS: Extension[] = [
  { name: "SSE42", cpuinfo: ["sse4_2"], flags: ["-msse4.2"], body: "return _mm_crc32_u32(0, (unsigned) v) == 0 && v != 0;" },
  { name: "AVX", cpuinfo: ["avx"], flags: ["-mavx"], body: "__m256 a = _mm256_set1_ps((float) v); float o[8]; _mm256_storeu_ps(o, _mm256_add_ps(a, a)); return o[7] != 2.0f * v;" },
  { name: "F16C", cpuinfo: ["f16c"], flags: ["-mf16c"], needs: ["AVX"], body: "__m128 a = _mm_set1_ps((float) v); __m128 b = _mm_cvtph_ps(_mm_cvtps_ph(a, 0)); return _mm_cvtss_f32(b) != (float) v;" },
  { name: "FMA", cpuinfo: ["fma"], flags: ["-mfma"], needs: ["AVX"], body: "__m256 a = _mm256_set1_ps((float) v); float o[8]; _mm256_storeu_ps(o, _mm256_fmadd_ps(a, a, a)); return o[0] != (float) (v * v + v);" },
  { name: "BMI2", cpuinfo: ["bmi2"], flags: ["-mbmi2"], body: "return _pdep_u32((unsigned) v, 0xF0u) != (((unsigned) v & 0xFu) << 4);" },
  { name: "AVX2", cpuinfo: ["avx2"], flags: ["-mavx2"], needs: ["AVX"], body: "__m256i a = _mm256_set1_epi32(v); int o[8]; _mm256_storeu_si256((__m256i *) o, _mm256_add_epi32(a, a)); return o[3] != 2 * v;" },
  {
    name: "AVX_VNNI", cpuinfo: ["avx_vnni"], flags: ["-mavxvnni"], needs: ["AVX2"],
    body: "__m256i a = _mm256_set1_epi8(1), b = _mm256_set1_epi8((char) v); int o[8]; _mm256_storeu_si256((__m256i *) o, _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), a, b)); return o[0] != 4 * v;",
  },
  {
    name: "AVX512", cpuinfo: ["avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"], flags: ["-mavx512f", "-mavx512cd", "-mavx512vl", "-mavx512dq", "-mavx512bw"], needs: ["AVX2"],
    body: "__m512i a = _mm512_set1_epi8((char) v); __m512i s = _mm512_add_epi8(a, a); __m512d d = _mm512_and_pd(_mm512_set1_pd(v), _mm512_set1_pd(v)); char o[64]; _mm512_storeu_si512(o, s); return o[63] != (char) (2 * v) || _mm512_reduce_add_pd(d) != 8.0 * v;",
  },
  { name: "AVX512_VBMI", cpuinfo: ["avx512vbmi"], flags: ["-mavx512vbmi"], needs: ["AVX512"], body: "__m512i a = _mm512_set1_epi8((char) v); char o[64]; _mm512_storeu_si512(o, _mm512_permutexvar_epi8(_mm512_setzero_si512(), a)); return o[5] != (char) v;" },
  {
    name: "AVX512_VNNI", cpuinfo: ["avx512_vnni"], flags: ["-mavx512vnni"], needs: ["AVX512"],
    body: "__m512i a = _mm512_set1_epi8(1), b = _mm512_set1_epi8((char) v); return _mm512_reduce_add_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), a, b)) != 64 * v;",
  },
  {
    name: "AVX512_BF16", cpuinfo: ["avx512_bf16"], flags: ["-mavx512bf16"], needs: ["AVX512"],
    body: "__m512 a = _mm512_set1_ps((float) v); __m512bh h = _mm512_cvtne2ps_pbh(a, a); return _mm512_reduce_add_ps(_mm512_dpbf16_ps(_mm512_setzero_ps(), h, h)) != 32.0f * v * v;",
  },
  // Not a ggml build option, but -march=native enables it and ggml's F16 vector code uses it.
  {
    name: "AVX512_FP16", cpuinfo: ["avx512_fp16"], flags: ["-mavx512fp16"], needs: ["AVX512"],
    body: "__m512h a = _mm512_set1_ph((_Float16) v); _Float16 o[32]; _mm512_storeu_ph(o, _mm512_fmadd_ph(a, a, a)); return o[31] != (_Float16) (v * v + v);",
  },
  // AMX needs the kernel's permission for the tile state first, as ggml asks for it (ggml_amx_init).
  { name: "AMX_TILE", cpuinfo: ["amx_tile"], flags: ["-mamx-tile"], needs: ["AVX512"], body: "if (!amx_permitted()) return 2; struct tilecfg c = tile_config(); _tile_loadconfig(&c); _tile_zero(0); _tile_release(); return v == 0;" },
  {
    name: "AMX_INT8", cpuinfo: ["amx_int8"], flags: ["-mamx-tile", "-mamx-int8"], needs: ["AMX_TILE", "AVX512_VNNI"],
    body: "if (!amx_permitted()) return 2; struct tilecfg c = tile_config(); signed char a[16 * 64], b[16 * 64]; int o[16 * 16]; for (int i = 0; i < 16 * 64; i++) { a[i] = 1; b[i] = (signed char) v; } _tile_loadconfig(&c); _tile_zero(0); _tile_loadd(1, a, 64); _tile_loadd(2, b, 64); _tile_dpbssd(0, 1, 2); _tile_stored(0, o, 64); _tile_release(); return o[17] != 64 * v;",
  },
  {
    name: "AMX_BF16", cpuinfo: ["amx_bf16"], flags: ["-mamx-tile", "-mamx-bf16"], needs: ["AMX_TILE"],
    body: "if (!amx_permitted()) return 2; struct tilecfg c = tile_config(); unsigned short a[16 * 32]; float o[16 * 16]; for (int i = 0; i < 16 * 32; i++) a[i] = 0x3f80; _tile_loadconfig(&c); _tile_zero(0); _tile_loadd(1, a, 64); _tile_loadd(2, a, 64); _tile_dpbf16ps(0, 1, 2); _tile_stored(0, o, 64); _tile_release(); return o[17] != 32.0f * (v != 0);",
  },
];

const PRELUDE = `#include <immintrin.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18
struct tilecfg { unsigned char palette; unsigned char start_row; unsigned char reserved[14]; unsigned short colsb[16]; unsigned char rows[16]; };
static struct tilecfg tile_config(void) {
  struct tilecfg c; memset(&c, 0, sizeof c); c.palette = 1;
  for (int t = 0; t < 3; t++) { c.colsb[t] = 64; c.rows[t] = 16; }
  return c;
}
static int amx_permitted(void) {
#if defined(__linux__)
  return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
#else
  return 1;
#endif
}
volatile int v = 3;
`;

export type ProbeOutcome = "runs" | "traps" | "wrong-result" | "not-permitted" | "not-advertised" | "no-compiler-support" | "needs-disabled";

export interface ProbeResult {
  name: string;
  outcome: ProbeOutcome;
  /** What the probe process died of, when it trapped. */
  signal?: string;
}

export interface CpuProbe {
  /** Every extension ggml knows on x86, with why it is on or off. */
  results: ProbeResult[];
  /** Extensions the CPU advertises that the build must not use. */
  disabled: string[];
  /** Compiler flags that turn them off (added after -march=native, which they override). */
  flags: string[];
}

/** The CPU's flags as /proc/cpuinfo lists them (empty where there is none). */
export function cpuinfoFlags(text?: string): Set<string> {
  let source = text;
  if (source === undefined) {
    try {
      source = readFileSync("/proc/cpuinfo", "utf8");
    } catch {
      return new Set();
    }
  }
  const line = source.split("\n").find((l) => /^flags\s*:/.test(l));
  return new Set(line ? line.replace(/^flags\s*:/, "").trim().split(/\s+/) : []);
}

export interface ProbeOptions {
  /** The CPU's advertised flags (default: this machine's /proc/cpuinfo). */
  flags?: Set<string>;
  /** The C compiler (default: $CC, else cc). */
  compiler?: string;
  /**
   * Test hook: extensions whose probes are built to trap (a ud2 before the real work), to check
   * that a trapping extension is turned off. Default: $FLOCK_CPU_PROBE_TRAP (comma-separated).
   */
  simulateTrap?: readonly string[];
}

/**
 * Probes every x86 extension ggml can use. On other architectures nothing is probed (an empty
 * result): their native builds have not been seen to trap.
 */
export function probeCpu(options: ProbeOptions = {}): CpuProbe {
  if (process.arch !== "x64" && options.flags === undefined) return { results: [], disabled: [], flags: [] };
  const flags = options.flags ?? cpuinfoFlags();
  const compiler = options.compiler ?? process.env.CC ?? "cc";
  const simulateTrap = new Set(options.simulateTrap ?? (process.env.FLOCK_CPU_PROBE_TRAP ?? "").split(",").map((s) => s.trim().toUpperCase()).filter(Boolean));
  const dir = mkdtempSync(join(tmpdir(), "flock-cpu-probe-"));
  const outcomes = new Map<string, ProbeResult>();
  try {
    // Without a working compiler nothing can be probed (and nothing built): change nothing.
    if (!compile(dir, "baseline", "int main(void) { return 0; }", [], compiler)) return { results: [], disabled: [], flags: [] };
    for (const ext of EXTENSIONS) {
      const result = ((): ProbeResult => {
        if (!ext.cpuinfo.every((f) => flags.has(f))) return { name: ext.name, outcome: "not-advertised" };
        const source = `${PRELUDE}int main(void) {\n${simulateTrap.has(ext.name) ? "  __builtin_trap();\n" : ""}  ${ext.body}\n}\n`;
        const binary = compile(dir, ext.name, source, ext.flags, compiler);
        // A compiler that does not know an extension cannot enable it (nor take its -mno- flag).
        if (!binary) return { name: ext.name, outcome: "no-compiler-support" };
        if ((ext.needs ?? []).some((n) => DISABLING.has(outcomes.get(n)?.outcome ?? "not-advertised"))) return { name: ext.name, outcome: "needs-disabled" };
        return run(ext.name, binary);
      })();
      outcomes.set(ext.name, result);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  const results = [...outcomes.values()];
  const disabled = results.filter((r) => DISABLING.has(r.outcome)).map((r) => r.name);
  // Each disabled extension's own flag (AMX_INT8's -mamx-tile belongs to AMX_TILE).
  const off = disabled.map((name) => EXTENSIONS.find((e) => e.name === name)!.flags.filter((f) => f !== "-mamx-tile" || name === "AMX_TILE")).flat();
  return { results, disabled, flags: [...new Set(off)].map((f) => f.replace(/^-m/, "-mno-")) };
}

/** Outcomes of an advertised extension that the build must turn off. */
const DISABLING = new Set<ProbeOutcome>(["traps", "wrong-result", "not-permitted", "needs-disabled"]);

/** Compiles a probe; returns the binary's path, or null when the compiler refuses. */
function compile(dir: string, name: string, source: string, flags: readonly string[], compiler: string): string | null {
  const file = join(dir, `${name}.c`);
  const binary = join(dir, name);
  writeFileSync(file, source);
  return spawnSync(compiler, ["-O1", ...flags, file, "-o", binary], { encoding: "utf8" }).status === 0 ? binary : null;
}

function run(name: string, binary: string): ProbeResult {
  const result = spawnSync(binary, [], { encoding: "utf8", timeout: 10_000 });
  if (result.signal) return { name, outcome: "traps", signal: result.signal };
  if (result.status === 2) return { name, outcome: "not-permitted" };
  return { name, outcome: result.status === 0 ? "runs" : "wrong-result" };
}

/** One line per extension for the build log. */
export function describeProbe(probe: CpuProbe): string {
  if (probe.results.length === 0) return "no x86 extensions probed on this architecture";
  return probe.results
    .filter((r) => r.outcome !== "not-advertised")
    .map((r) => `${r.name}: ${r.outcome}${r.signal ? ` (${r.signal})` : ""}`)
    .join(", ");
}
