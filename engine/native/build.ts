// npm run build:native [-- --force] [-- --postinstall]
//
// Builds flock's native engine extension: node-llama-cpp's bundled llama.cpp release
// (`source download --skipBuild`, offline), flock's addon sources and its own llama.cpp source
// files (llama-cpp/, copied in as they are), then the patches — only the hooks into llama.cpp's
// and the addon's files — applied with `git apply` (failing loudly when they do not apply), then
// `source build`. getLlama() then
// loads this local build. Skipped when node-llama-cpp's version and flock's native sources are
// unchanged since the last build.
//
// --quick: for developers changing only engine/native/addon/* or patches/addon-*: copy the
// sources, apply the addon's patches, rebuild incrementally with cmake (seconds instead of
// minutes) and install the result.
// --postinstall: run from `npm install`; a failed build warns and exits 0, so flock still
// installs and serves with the prebuilt binary (startup says which features are missing).
// FLOCK_NATIVE_GPU=cuda|vulkan builds for that backend (default: CPU only).
// FLOCK_SKIP_NATIVE_BUILD=1 skips the build.
//
// A native build (llama.cpp's default, -march=native) compiles in every x86 extension the CPU
// advertises; each is first probed (cpu-probe.ts), and those that trap here are turned off
// (FLOCK_NATIVE_DISABLE_FLAGS, read by flock's patch to ggml-cpu's CMakeLists). The probe's
// outcome is part of the build's fingerprint and its stamp. A portable build
// (NODE_LLAMA_CPP_CMAKE_OPTION_GGML_NATIVE=OFF, the Docker image) is not probed: it does not run
// where it was built, and picks its CPU variant at run time.
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { copyFileSync, cpSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { type CpuProbe, describeProbe, probeCpu } from "./cpu-probe.js";
import { ADDON_FUNCTIONS, bundledLlamaCpp, CONTEXT_METHODS, LLAMA_CPP_SOURCE, NODE_LLAMA_CPP_DIR, NODE_LLAMA_CPP_LLAMA_DIR } from "./surface.js";

const here = import.meta.dirname;
const packageDir = NODE_LLAMA_CPP_DIR;
const llamaDir = NODE_LLAMA_CPP_LLAMA_DIR;
const addonDir = join(llamaDir, "addon");
const pristineDir = join(llamaDir, ".flock-pristine-addon");
const stampFile = join(llamaDir, "localBuilds", "flock-native.json");
const cli = join(packageDir, "dist", "cli", "cli.js");

const args = new Set(process.argv.slice(2));
const postinstall = args.has("--postinstall");
const force = args.has("--force");
const quick = args.has("--quick");
const gpu = process.env.FLOCK_NATIVE_GPU ?? "false";

/** flock's own files inside llama.cpp's tree (llama-cpp/src/llama-flock.cpp, …), copied in whole. */
const llamaCppFilesDir = join(here, "llama-cpp");

function sources(): string[] {
  const dirs = [join(here, "addon"), join(here, "patches")];
  const files = dirs.flatMap((d) => (existsSync(d) ? readdirSync(d).sort().map((f) => join(d, f)) : []));
  const own = existsSync(llamaCppFilesDir) ? readdirSync(llamaCppFilesDir, { recursive: true, encoding: "utf8" }).sort().map((f) => join(llamaCppFilesDir, f)) : [];
  return [...files, ...own.filter((f) => !statSync(f).isDirectory())];
}

/** Whether llama.cpp builds for this machine's CPU (-march=native), as it does unless told otherwise. */
const nativeCpu = !/^(off|0|false)$/i.test(process.env.NODE_LLAMA_CPP_CMAKE_OPTION_GGML_NATIVE ?? "ON");

function fingerprint(probe: CpuProbe): string {
  const hash = createHash("sha256");
  const version = (JSON.parse(readFileSync(join(packageDir, "package.json"), "utf8")) as { version: string }).version;
  hash.update(`node-llama-cpp@${version} gpu=${gpu} native=${nativeCpu} disabled=${probe.disabled.join(",")}\n`);
  for (const file of sources()) hash.update(`${file.slice(here.length)}\n`).update(readFileSync(file));
  return hash.digest("hex");
}

function run(command: string, commandArgs: string[], cwd: string, env: NodeJS.ProcessEnv = process.env): void {
  console.log(`flock build:native: ${command} ${commandArgs.join(" ")}  (in ${cwd})`);
  const result = spawnSync(command, commandArgs, { cwd, stdio: "inherit", env });
  if (result.status !== 0) throw new Error(`${command} ${commandArgs.join(" ")} failed with exit code ${result.status ?? result.signal}`);
}

/** git apply, outside any enclosing repository, relative to `dir`. */
function applyPatch(patch: string, dir: string): void {
  const env = { ...process.env, GIT_CEILING_DIRECTORIES: dirname(dir) };
  const check = spawnSync("git", ["apply", "--check", patch], { cwd: dir, env, encoding: "utf8" });
  if (check.status !== 0) throw new Error(`patch ${patch} does not apply in ${dir}:\n${check.stderr}`);
  run("git", ["apply", patch], dir, env);
}

/** Refuses to patch a llama.cpp the patches were not written for: say so before git apply fails. */
function checkSource(): void {
  const shipped = bundledLlamaCpp(llamaDir);
  if (shipped.release !== LLAMA_CPP_SOURCE.release || shipped.commit !== LLAMA_CPP_SOURCE.commit) {
    throw new Error(
      `flock's patches are written for llama.cpp ${LLAMA_CPP_SOURCE.release} (${LLAMA_CPP_SOURCE.commit}), but node-llama-cpp ships ` +
        `${shipped.release} (${shipped.commit}): port engine/native/patches and update engine/native/surface.ts`,
    );
  }
}

function probeForBuild(): CpuProbe {
  if (!nativeCpu) return { results: [], disabled: [], flags: [] };
  const result = probeCpu();
  console.log(`flock build:native: CPU extensions: ${describeProbe(result)}`);
  if (result.disabled.length > 0) console.log(`flock build:native: turned off (advertised, but they do not run here): ${result.disabled.join(", ")}`);
  return result;
}

function build(): void {
  const cpu = probeForBuild();
  const wanted = fingerprint(cpu);
  if (!force && existsSync(stampFile)) {
    const stamp = JSON.parse(readFileSync(stampFile, "utf8")) as { fingerprint?: string };
    if (stamp.fingerprint === wanted) {
      console.log("flock build:native: up to date (node-llama-cpp version and flock's native sources unchanged)");
      return;
    }
  }

  // 1. llama.cpp's source from the bundle shipped inside node-llama-cpp (no network).
  checkSource();
  run(process.execPath, [cli, "source", "download", "--gpu", gpu, "--skipBuild"], packageDir);

  // 2. The addon as shipped, then flock's sources and patches.
  if (!existsSync(pristineDir)) cpSync(addonDir, pristineDir, { recursive: true });
  cpSync(pristineDir, addonDir, { recursive: true });
  for (const file of readdirSync(join(here, "addon"))) copyFileSync(join(here, "addon", file), join(addonDir, file));
  cpSync(llamaCppFilesDir, join(llamaDir, "llama.cpp"), { recursive: true });
  for (const patch of readdirSync(join(here, "patches")).sort()) {
    const target = patch.startsWith("llama-cpp-") ? join(llamaDir, "llama.cpp") : llamaDir;
    applyPatch(join(here, "patches", patch), target);
  }

  // 3. Build; node-llama-cpp's getLlama() prefers this local build from now on.
  const env = { ...process.env };
  delete env.FLOCK_NATIVE_DISABLE_FLAGS;
  if (cpu.flags.length > 0) env.FLOCK_NATIVE_DISABLE_FLAGS = cpu.flags.join(" ");
  run(process.execPath, [cli, "source", "build", "--gpu", gpu], packageDir, env);

  // 4. Check that the build loads and carries flock's methods.
  const probe = spawnSync(
    process.execPath,
    [
      "--input-type=module",
      "-e",
      `import { getLlama } from "node-llama-cpp";
       const llama = await getLlama({ gpu: ${gpu === "false" ? "false" : JSON.stringify(gpu)} });
       const p = llama._bindings.AddonContext.prototype;
       const ok = llama.buildType === "localBuild" &&
         ${JSON.stringify(CONTEXT_METHODS)}.every((m) => typeof p[m] === "function") &&
         ${JSON.stringify(ADDON_FUNCTIONS)}.every((f) => typeof llama._bindings[f] === "function");
       console.log(JSON.stringify({ buildType: llama.buildType, ok }));
       process.exit(ok ? 0 : 1);`,
    ],
    { cwd: dirname(dirname(packageDir)), encoding: "utf8" },
  );
  if (probe.status !== 0) throw new Error(`the local build does not load with flock's methods: ${probe.stdout}${probe.stderr}`);

  mkdirSync(dirname(stampFile), { recursive: true });
  writeFileSync(stampFile, JSON.stringify({ fingerprint: wanted, builtAt: new Date().toISOString(), gpu, cpu: { disabled: cpu.disabled, probes: cpu.results } }));
  console.log("flock build:native: done");
}

/** Incremental rebuild of an existing local build after editing flock's addon sources. */
function quickRebuild(): void {
  const buildDir = join(llamaDir, "localBuilds", `${process.platform}-${process.arch}`);
  if (!existsSync(join(buildDir, "build.ninja")) && !existsSync(join(buildDir, "Makefile"))) {
    throw new Error(`no local build in ${buildDir} to rebuild; run npm run build:native first`);
  }
  // The addon as shipped, flock's sources and the addon's patches again (they may have changed);
  // a new source file needs cmake to glob the addon's sources again.
  const added = readdirSync(join(here, "addon")).some((file) => !existsSync(join(addonDir, file)));
  cpSync(pristineDir, addonDir, { recursive: true });
  for (const file of readdirSync(join(here, "addon"))) copyFileSync(join(here, "addon", file), join(addonDir, file));
  for (const patch of readdirSync(join(here, "patches")).sort()) if (patch.startsWith("addon-")) applyPatch(join(here, "patches", patch), llamaDir);
  if (added) run("cmake", [buildDir], packageDir);
  run("cmake", ["--build", buildDir, "--parallel", "2"], packageDir);
  const bin = join(buildDir, "bin");
  // A new file, not the old one rewritten: a running process that has the library mapped keeps
  // its copy (writing over a mapped library crashes it).
  for (const file of readdirSync(bin)) {
    rmSync(join(buildDir, "Release", file), { force: true });
    copyFileSync(join(bin, file), join(buildDir, "Release", file));
  }
  mkdirSync(dirname(stampFile), { recursive: true });
  // The configuration (and so the CPU extensions) is the last full build's.
  const last = (existsSync(stampFile) ? JSON.parse(readFileSync(stampFile, "utf8")) : {}) as { cpu?: { disabled: string[] } };
  const cpu = { results: [], disabled: last.cpu?.disabled ?? [], flags: [] };
  writeFileSync(stampFile, JSON.stringify({ ...last, fingerprint: fingerprint(cpu), builtAt: new Date().toISOString(), gpu, quick: true }));
  console.log("flock build:native: quick rebuild done");
}

if (process.env.FLOCK_SKIP_NATIVE_BUILD === "1") {
  console.log("flock build:native: skipped (FLOCK_SKIP_NATIVE_BUILD=1)");
} else {
  try {
    if (quick) quickRebuild();
    else build();
  } catch (err) {
    if (!postinstall) throw err;
    console.warn(
      `\nflock: WARNING — the native engine extension was not built: ${(err as Error).message}\n` +
        "flock will run on node-llama-cpp's prebuilt binary without raw logits (slower full distributions).\n" +
        "Retry with: npm run build:native\n",
    );
  }
}
