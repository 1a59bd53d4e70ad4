// npx tsx deploy/replay-dockerfile.ts [--target cpu] [--full | --plan] [--keep]
//
// Replays a Dockerfile target on this host, without Docker (CI machines have no Docker engine),
// so that the recipe itself is exercised: in a clean temporary directory each stage gets its own
// root folder; WORKDIR, ARG and ENV are applied as Docker applies them; COPY copies from the build
// context (the repository through .dockerignore, with Docker's matching rules) or from an earlier
// stage's folder; every RUN line runs with /bin/sh -c in the stage's WORKDIR with the stage's ARG
// and ENV, except the lines marked `# replay: skip (reason)` (system packages and users, which
// only make sense inside the image; the host has the same toolchain, since CI's own npm ci builds
// the native extension). Then the final stage is started as the image would start: its
// ENTRYPOINT + CMD in its WORKDIR with its ENV (VOLUME paths mapped into the temporary
// directory, FLOCK_PORT moved to a free port), as an unprivileged user when run as root (the
// image's USER is not root either: only the cache volume is writable, as in the image). Checks:
// /health turns 200, the image's HEALTHCHECK command exits 0, the startup log reports flock's
// local native build with every capability, a completion and /metrics answer, SIGTERM exits 0
// and the HEALTHCHECK then fails.
//
// The native build. The Dockerfile's `npm ci` builds llama.cpp with flock's addon (its
// postinstall), 5-8 minutes on 2 cores for a host-tuned build and several times that for the
// image's portable one (one CPU backend per x86 feature level). CI has 90 minutes and has just
// built the same addon from the same sources in its own `npm ci`, so by default the replay runs
// the Dockerfile's `npm ci` with FLOCK_SKIP_NATIVE_BUILD=1 and then copies the host's finished
// build (its localBuilds folder and build.ts's stamp) into the replayed node_modules: every other
// step — check-native.mjs, prune.sh, the runtime stage's COPY --from, the start — runs on it
// unchanged. The host build was made without the image's NODE_LLAMA_CPP_CMAKE_OPTION_*
// (portable CPU variants), and node-llama-cpp finds a local build by a folder name that hashes
// those options, so in this mode the server starts without them (said in the output);
// deploy/lint-dockerfile.ts checks that build and runtime stages carry the same ones. --full
// runs the Dockerfile's npm ci as written, the image's cmake options included, and starts the
// server with the image's whole ENV: the complete recipe, for a developer machine.
//
// --plan resolves the target's stages and prints what would run, without running anything
// (CI uses it for the cuda target, which needs NVIDIA's images and toolkit).
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { chmodSync, chownSync, cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, posix } from "node:path";
import { parseArgs } from "node:util";
import {
  argProperty,
  contextFiles,
  envProperties,
  execForm,
  expand,
  flagsAndArgs,
  healthcheckCommand,
  parseDockerfile,
  repoRoot,
  stageChain,
  stageNamed,
  type Stage,
} from "./dockerfile.js";

const { values: opts } = parseArgs({
  options: {
    target: { type: "string" },
    full: { type: "boolean", default: false },
    plan: { type: "boolean", default: false },
    keep: { type: "boolean", default: false },
    "ready-timeout": { type: "string", default: "300" },
  },
});

const df = parseDockerfile();
const target = opts.target ?? df.stages[df.stages.length - 1].name;
const chain = stageChain(df, target);
const fast = !opts.full;
const started = Date.now();
const log = (msg: string) => console.log(`[replay ${((Date.now() - started) / 1000).toFixed(0).padStart(4)}s] ${msg}`);
let tmp = "";
const fail = (msg: string): never => {
  console.error(`[replay] FAILED: ${msg}${tmp ? ` (the replay's files are left in ${tmp})` : ""}`);
  process.exit(1);
};

interface StageState {
  root: string;
  workdir: string;
  args: Map<string, string | undefined>;
  env: Map<string, string>;
  user?: string;
  volumes: string[];
  entrypoint: string[];
  cmd: string[];
  healthcheck: string[] | null;
  shell: string[];
}

if (!opts.plan) {
  tmp = mkdtempSync(join(tmpdir(), "ci-docker-replay-"));
  chmodSync(tmp, 0o755);
}
const context = new Set(contextFiles());
const states = new Map<string, StageState>();

/** Inside a stage: an image path (absolute, or relative to WORKDIR) → the host path. */
const hostPath = (state: StageState, p: string) => join(state.root, posix.resolve(state.workdir, p));

/** The host environment a RUN line sees, without this session's flock or node-llama-cpp settings. */
function hostEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (v === undefined || /^(FLOCK_|NODE_LLAMA_CPP_|npm_|NODE_OPTIONS$|INIT_CWD$)/.test(k)) continue;
    env[k] = v;
  }
  return env;
}

function copyFromContext(state: StageState, src: string, dest: string, many: boolean): number {
  const rel = src.replace(/^\.?\/+/, "").replace(/\/+$/, "");
  const destIsDir = many || dest.endsWith("/");
  if (context.has(rel)) {
    const to = destIsDir ? join(hostPath(state, dest), posix.basename(rel)) : hostPath(state, dest);
    mkdirSync(join(to, ".."), { recursive: true });
    cpSync(join(repoRoot, rel), to);
    return 1;
  }
  // A folder: its contents (what of it the context holds) go into dest.
  const files = [...context].filter((f) => rel === "" || f.startsWith(`${rel}/`));
  if (files.length === 0) fail(`COPY ${src}: not in the build context`);
  for (const f of files) {
    const to = join(hostPath(state, dest), rel === "" ? f : f.slice(rel.length + 1));
    mkdirSync(join(to, ".."), { recursive: true });
    cpSync(join(repoRoot, f), to);
  }
  return files.length;
}

/** Copies the host's finished native build into the replayed node_modules (fast mode; see the top). */
function graftHostNativeBuild(state: StageState): void {
  const hostLlama = join(repoRoot, "node_modules/node-llama-cpp/llama");
  const stamp = join(hostLlama, "localBuilds/flock-native.json");
  const lastBuild = join(hostLlama, "lastBuild.json");
  if (!existsSync(stamp) || !existsSync(lastBuild)) {
    fail(`no finished native build on this host to reuse (${stamp}); run npm ci or npm run build:native first, or replay with --full`);
  }
  const { folderName } = JSON.parse(readFileSync(lastBuild, "utf8")) as { folderName: string };
  const llama = join(hostPath(state, "node_modules/node-llama-cpp/llama"));
  cpSync(join(hostLlama, "localBuilds", folderName), join(llama, "localBuilds", folderName), { recursive: true });
  cpSync(stamp, join(llama, "localBuilds/flock-native.json"));
  cpSync(lastBuild, join(llama, "lastBuild.json"));
  log(`reused the host's native build (localBuilds/${folderName}, built ${JSON.parse(readFileSync(stamp, "utf8")).builtAt}) instead of rebuilding it`);
}

for (const stage of chain) {
  const base = stageNamed(df, stage.from);
  const inherited = base && base.index < stage.index ? states.get(base.name) : undefined;
  const state: StageState = {
    root: opts.plan ? `/${stage.name}` : join(tmp, "stages", stage.name),
    workdir: inherited?.workdir ?? "/",
    args: new Map(),
    env: new Map(inherited?.env ?? []),
    user: inherited?.user,
    volumes: [...(inherited?.volumes ?? [])],
    entrypoint: inherited?.entrypoint ?? [],
    cmd: inherited?.cmd ?? [],
    healthcheck: inherited?.healthcheck ?? null,
    shell: inherited?.shell ?? ["/bin/sh", "-c"],
  };
  states.set(stage.name, state);
  if (!opts.plan) {
    if (inherited) cpSync(inherited.root, state.root, { recursive: true });
    mkdirSync(state.root, { recursive: true });
  }
  const vars = () => new Map<string, string | undefined>([...state.args, ...state.env]);
  log(`stage ${stage.name} (FROM ${expand(stage.from, df.globalArgs)})`);

  for (const step of stage.steps.slice(1)) {
    const where = `line ${step.line}: ${step.keyword}`;
    switch (step.keyword) {
      case "ARG": {
        const [name, value] = argProperty(step);
        state.args.set(name, value !== undefined ? expand(value, vars()) : df.globalArgs.get(name));
        break;
      }
      case "ENV": {
        const set = envProperties(step).map(([name, value]) => [name, expand(value, vars())] as const);
        for (const [name, value] of set) state.env.set(name, value);
        log(`  ${where} ${set.map(([k, v]) => `${k}=${v}`).join(" ")}`);
        break;
      }
      case "WORKDIR":
        state.workdir = posix.resolve(state.workdir, expand(step.args.trim(), vars()));
        if (!opts.plan) mkdirSync(hostPath(state, "."), { recursive: true });
        break;
      case "COPY": {
        const { flags, args } = flagsAndArgs(step);
        const expanded = args.map((a) => expand(a, vars()));
        const dest = expanded[expanded.length - 1];
        const sources = expanded.slice(0, -1);
        const from = flags.get("from");
        if (from === undefined) {
          if (opts.plan) {
            for (const src of sources) {
              const rel = src.replace(/^\.?\/+/, "").replace(/\/+$/, "");
              if (!context.has(rel) && ![...context].some((f) => f.startsWith(`${rel}/`))) fail(`${where} ${src}: not in the build context`);
            }
            log(`  ${where} ${sources.join(" ")} → ${posix.resolve(state.workdir, dest)} (from the context)`);
          } else {
            const n = sources.reduce((sum, src) => sum + copyFromContext(state, src, dest, sources.length > 1), 0);
            log(`  ${where} ${sources.join(" ")} → ${posix.resolve(state.workdir, dest)} (${n} files from the context)`);
          }
        } else {
          const source = states.get(from);
          if (!source) {
            if (!opts.plan) fail(`${where} --from=${from}: files from another image cannot be replayed here`);
            log(`  ${where} --from=${from} ${sources.join(" ")} → ${dest} (from ${stageNamed(df, from) ? "stage" : "image"} ${from})`);
            break;
          }
          for (const src of sources) {
            log(`  ${where} --from=${from} ${src} → ${posix.resolve(state.workdir, dest)}`);
            if (opts.plan) continue;
            const fromPath = join(source.root, posix.resolve("/", src));
            if (!existsSync(fromPath)) fail(`${where} --from=${from} ${src}: no such path in stage ${from}`);
            const to = statSync(fromPath).isDirectory() || !dest.endsWith("/") ? hostPath(state, dest) : join(hostPath(state, dest), posix.basename(src));
            cpSync(fromPath, to, { recursive: true, verbatimSymlinks: true });
          }
        }
        break;
      }
      case "RUN": {
        const skip = step.comments.map((c) => /replay:\s*skip\s*(\(.*\))?/.exec(c)).find((m) => m);
        const command = step.args.trim();
        const short = command.length > 90 ? `${command.slice(0, 87)}...` : command;
        if (skip) {
          log(`  ${where} skipped ${skip[1] ?? ""}: ${short}`);
          break;
        }
        const isNpmCi = /\bnpm\s+ci\b/.test(command);
        log(`  ${where} ${short}${isNpmCi && fast && !opts.plan ? "   [FLOCK_SKIP_NATIVE_BUILD=1: the host's build is reused]" : ""}`);
        if (opts.plan) break;
        const env: Record<string, string> = { ...hostEnv() };
        for (const [k, v] of state.args) if (v !== undefined) env[k] = v;
        for (const [k, v] of state.env) env[k] = v;
        if (isNpmCi && fast) env.FLOCK_SKIP_NATIVE_BUILD = "1";
        const t0 = Date.now();
        const result = spawnSync(state.shell[0], [...state.shell.slice(1), command], { cwd: hostPath(state, "."), env, stdio: "inherit" });
        if (result.status !== 0) fail(`${where} exited with ${result.status ?? result.signal}`);
        log(`  … done in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
        if (isNpmCi && fast) graftHostNativeBuild(state);
        break;
      }
      case "SHELL":
        state.shell = execForm(step.args) ?? fail(`${where}: SHELL needs the exec form`);
        break;
      case "USER":
        state.user = step.args.trim();
        break;
      case "VOLUME":
        state.volumes.push(...(execForm(step.args) ?? step.args.split(/\s+/)).map((v) => expand(v, vars())));
        break;
      case "ENTRYPOINT":
        state.entrypoint = execForm(step.args) ?? fail(`${where}: exec form expected`);
        state.cmd = [];
        break;
      case "CMD":
        state.cmd = execForm(step.args) ?? fail(`${where}: exec form expected`);
        break;
      case "HEALTHCHECK":
        state.healthcheck = healthcheckCommand(step);
        break;
      default:
        log(`  ${where} (nothing to replay)`);
    }
  }
}

const final = states.get(target)!;
if (opts.plan) {
  log(`plan of target ${target}: ${chain.map((s: Stage) => s.name).join(" → ")}; starts ${JSON.stringify([...final.entrypoint, ...final.cmd])} as ${final.user ?? "root"}`);
  process.exit(0);
}

// --- start the image's process -----------------------------------------------------------------

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

const port = await freePort();
const cwd = hostPath(final, ".");
const env: Record<string, string> = { PATH: process.env.PATH ?? "/usr/local/bin:/usr/bin:/bin", HOME: join(final.root, "nonexistent") };
for (const [k, v] of final.env) {
  const volume = final.volumes.find((vol) => v === vol || v.startsWith(`${vol}/`));
  env[k] = volume ? join(final.root, v) : v;
}
env.FLOCK_PORT = String(port);
// The image listens on all interfaces, which flock allows only with an API key: run it with one,
// as docs/deployment.md's docker run lines do.
const apiKey = "replay-api-key";
env.FLOCK_API_KEYS = apiKey;
if (fast) {
  const dropped = Object.keys(env).filter((k) => k.startsWith("NODE_LLAMA_CPP_CMAKE_OPTION_"));
  for (const k of dropped) delete env[k];
  if (dropped.length) log(`starting without ${dropped.join(", ")} (the reused host build was made without them; --full keeps them)`);
}

// Only the volumes are writable for the runtime user, as in the image.
let ids: { uid: number; gid: number } | undefined;
for (const volume of final.volumes) mkdirSync(join(final.root, volume), { recursive: true });
if (process.getuid?.() === 0) {
  const uid = Number(spawnSync("id", ["-u", "nobody"], { encoding: "utf8" }).stdout.trim());
  const gid = Number(spawnSync("id", ["-g", "nobody"], { encoding: "utf8" }).stdout.trim());
  if (Number.isInteger(uid) && uid > 0) {
    ids = { uid, gid };
    chmodSync(join(tmp, "stages"), 0o755);
    for (const s of states.values()) chmodSync(s.root, 0o755);
    for (const volume of final.volumes) chownSync(join(final.root, volume), uid, gid);
  }
}
log(`starting ${JSON.stringify([...final.entrypoint, ...final.cmd])} in ${final.workdir} as ${ids ? `nobody (uid ${ids.uid}) for USER ${final.user}` : `the current user (USER ${final.user})`}, port ${port}`);

const [command, ...commandArgs] = [...final.entrypoint, ...final.cmd];
const child: ChildProcess = spawn(command, commandArgs, { cwd, env, stdio: ["ignore", "pipe", "pipe"], ...ids });
const lines: string[] = [];
let exited: number | null | undefined;
const exit = new Promise<number | null>((resolve) => child.on("exit", (code, signal) => resolve((exited = code ?? (signal ? -1 : null)))));
for (const stream of [child.stdout!, child.stderr!]) {
  let buffer = "";
  stream.on("data", (chunk: Buffer) => {
    buffer += chunk.toString("utf8");
    const parts = buffer.split("\n");
    buffer = parts.pop()!;
    lines.push(...parts);
  });
}
const tail = () => lines.slice(-30).join("\n");
const stop = (why: string): never => {
  child.kill("SIGKILL");
  console.error(tail());
  return fail(why);
};

const base = `http://127.0.0.1:${port}`;
const deadline = Date.now() + Number(opts["ready-timeout"]) * 1000;
for (;;) {
  if (exited !== undefined) stop(`the server exited (${exited}) before it was ready`);
  if (Date.now() > deadline) stop(`/health not 200 within ${opts["ready-timeout"]} s`);
  const status = await fetch(`${base}/health`).then((r) => r.status, () => 0);
  if (status === 200) break;
  await new Promise((r) => setTimeout(r, 500));
}
log("GET /health → 200");

const runHealthcheck = () =>
  final.healthcheck ? spawnSync(final.healthcheck[0], final.healthcheck.slice(1), { cwd, env, timeout: 10_000, ...ids }).status : null;
if (!final.healthcheck) stop("the image has no HEALTHCHECK in exec form");
const healthy = runHealthcheck();
if (healthy !== 0) stop(`the HEALTHCHECK command ${JSON.stringify(final.healthcheck)} exited ${healthy} against a ready server`);
log(`HEALTHCHECK ${JSON.stringify(final.healthcheck)} → 0`);

const ready = lines.map((l) => { try { return JSON.parse(l) as Record<string, unknown>; } catch { return null; } }).find((l) => l?.msg === "engine ready");
if (!ready) stop("no `engine ready` line in the startup log");
const capabilities = ready!.capabilities as Record<string, boolean>;
if (ready!.build !== "localBuild" || !Object.values(capabilities).every(Boolean)) {
  stop(`the server does not run on flock's native build: build=${String(ready!.build)}, capabilities=${JSON.stringify(capabilities)}`);
}
log(`engine ready: build=${String(ready!.build)}, gpu=${String(ready!.gpu)}, capabilities ${Object.keys(capabilities).join(", ")}`);

const completion = await fetch(`${base}/v1/completions`, {
  method: "POST",
  headers: { "content-type": "application/json", authorization: `Bearer ${apiKey}` },
  body: JSON.stringify({ model: "flock-demo", prompt: "The sailor ties the", max_tokens: 8, temperature: 0 }),
});
const body = (await completion.json()) as { usage?: { completion_tokens?: number }; choices?: Array<{ text: string }> };
if (completion.status !== 200 || !(body.usage?.completion_tokens && body.usage.completion_tokens > 0)) stop(`POST /v1/completions → ${completion.status} ${JSON.stringify(body)}`);
log(`POST /v1/completions → 200 ${JSON.stringify(body.choices?.[0]?.text)}`);
const metrics = await fetch(`${base}/metrics`);
if (metrics.status !== 200 || !(await metrics.text()).includes("flock_requests_total")) stop(`GET /metrics → ${metrics.status}`);
log("GET /metrics → 200 with flock_ series");

child.kill("SIGTERM");
const code = await Promise.race([exit, new Promise<string>((r) => setTimeout(() => r("timeout"), 60_000))]);
if (code !== 0) stop(`after SIGTERM the server ended with ${code}, expected exit 0`);
log("SIGTERM → exit 0");
const down = runHealthcheck();
if (down === 0) fail("the HEALTHCHECK passes with the server down");
log(`HEALTHCHECK with the server down → ${down}`);

writeFileSync(join(tmp, "server.log"), lines.join("\n"));
if (opts.keep) log(`kept ${tmp}`);
else rmSync(tmp, { recursive: true, force: true });
log(`replay of target ${target} passed (${fast ? "host native build reused" : "full build"})`);
process.exit(0);
