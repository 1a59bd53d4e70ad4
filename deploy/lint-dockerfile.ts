// npx tsx deploy/lint-dockerfile.ts [Dockerfile]
//
// Lints the Dockerfile without a Docker engine (CI has none). Two layers:
//  1. dockerfile-utils' validator (the Docker language server's: syntax, instruction arguments,
//     flags, durations, ports, stage names, JSON forms), every check at error severity;
//  2. flock's own rules: the hadolint rules that matter here (pinned base images, apt-get
//     hygiene, no ADD/sudo/cd/npm install, exec forms), what issue 7 asks of the images
//     (targets, non-root user, EXPOSE, HEALTHCHECK, FLOCK_HOST, a cache volume), and what keeps
//     this particular recipe working (COPY sources present in the .dockerignore'd context, the
//     native build checked after npm ci, the same NODE_LLAMA_CPP_CMAKE_OPTION_* in a runtime stage
//     as in the build stage it copies node_modules from, FLOCK_* variables flock actually reads).
// The hadolint binary is neither in Debian's archive nor on npm (npm has only wrappers that need
// it); these rules stand in for it.
// Exit code 1 on any finding.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { validate, ValidationSeverity } from "dockerfile-utils";
import {
  argProperty,
  contextFiles,
  envProperties,
  execForm,
  expand,
  flagsAndArgs,
  healthcheckCommand,
  isExcluded,
  parseDockerfile,
  readDockerignore,
  repoRoot,
  stageNamed,
  type Stage,
  type Step,
} from "./dockerfile.js";

const path = process.argv[2] ?? join(repoRoot, "Dockerfile");
const df = parseDockerfile(path);
const findings: string[] = [];
const report = (line: number, rule: string, message: string) => findings.push(`${path}:${line}: [${rule}] ${message}`);

// 1. dockerfile-utils
const strict = ValidationSeverity.ERROR;
for (const d of validate(df.text, {
  deprecatedMaintainer: strict,
  directiveCasing: strict,
  emptyContinuationLine: strict,
  instructionCasing: strict,
  instructionCmdMultiple: strict,
  instructionEntrypointMultiple: strict,
  instructionHealthcheckMultiple: strict,
  instructionJSONInSingleQuotes: strict,
  instructionWorkdirRelative: strict,
})) {
  report(d.range.start.line + 1, "dockerfile-utils", typeof d.message === "string" ? d.message : d.message.value);
}

// 2. flock's rules
const FINAL_TARGETS = ["cpu", "cuda"];
const PORT = "8080";
const patterns = readDockerignore(repoRoot);
const context = new Set(contextFiles(repoRoot, patterns));
/** FLOCK_* variables flock reads: its configuration and its native build. */
const knownFlockVars = new Set(
  ["server/config.ts", "engine/native/build.ts"].flatMap((f) => readFileSync(join(repoRoot, f), "utf8").match(/FLOCK_[A-Z_]+/g) ?? []),
);

/** ENV of a stage: name → [value as written, line]. */
function stageEnv(stage: Stage): Map<string, [string, number]> {
  const env = new Map<string, [string, number]>();
  for (const step of stage.steps) if (step.keyword === "ENV") for (const [k, v] of envProperties(step)) env.set(k, [v, step.line]);
  return env;
}

/** Build args visible in a stage, with their defaults (global defaults for re-declared names). */
function stageArgs(stage: Stage): Map<string, string | undefined> {
  const vars = new Map<string, string | undefined>();
  for (const step of stage.steps) {
    if (step.keyword !== "ARG") continue;
    const [name, value] = argProperty(step);
    vars.set(name, value ?? df.globalArgs.get(name));
  }
  return vars;
}

const runs = (stage: Stage) => stage.steps.filter((s) => s.keyword === "RUN");

// Stages and targets.
const last = df.stages[df.stages.length - 1];
if (!last || last.name !== "cpu") report(last?.steps[0].line ?? 1, "targets", "the last stage (what a plain `docker build` builds) must be the CPU image, named cpu");
for (const target of FINAL_TARGETS) if (!stageNamed(df, target)) report(1, "targets", `no stage named ${target}`);

for (const stage of df.stages) {
  const from = stage.steps[0];
  // FROM: a stage of this file, or an image pinned to a tag (hadolint DL3006, DL3007).
  if (!stageNamed(df, stage.from) || stageNamed(df, stage.from)!.index >= stage.index) {
    const image = expand(stage.from, df.globalArgs);
    const tag = /^[^@]+:([^:/@]+)$/.exec(image)?.[1];
    if (!tag && !image.includes("@sha256:")) report(from.line, "pinned-base", `FROM ${image}: pin the image to a tag`);
    else if (tag === "latest") report(from.line, "pinned-base", `FROM ${image}: pin a version, not latest`);
    if (/\$/.test(image)) report(from.line, "pinned-base", `FROM ${stage.from}: a variable without a default (${image})`);
  }

  const vars = new Map([...df.globalArgs, ...stageArgs(stage)]);
  for (const step of stage.steps) {
    const { keyword } = step;
    if (step.comments.some((c) => /replay:\s*skip/.test(c))) {
      if (keyword !== "RUN") report(step.line, "replay-marker", "only RUN lines can be marked `replay: skip`");
      else if (!step.comments.some((c) => /replay:\s*skip\s*\(.+\)/.test(c))) report(step.line, "replay-marker", "say why in parentheses: `# replay: skip (reason)`");
    }
    if (keyword === "ADD") report(step.line, "no-add", "use COPY (hadolint DL3020)");
    if (keyword === "MAINTAINER") report(step.line, "no-maintainer", "use a LABEL");
    if (keyword === "CMD" || keyword === "ENTRYPOINT") {
      if (!execForm(step.args)) report(step.line, "exec-form", `${keyword} in exec form (JSON), so signals reach node (hadolint DL3025)`);
    }
    if (keyword === "RUN") {
      const cmd = step.args;
      if (/(^|[;&|(]\s*)sudo\s/.test(cmd)) report(step.line, "no-sudo", "no sudo in RUN (hadolint DL3004)");
      if (/(^|[;&|(]\s*)cd\s/.test(cmd)) report(step.line, "no-cd", "use WORKDIR instead of cd (hadolint DL3003)");
      if (/(^|[^|])\|([^|]|$)/.test(cmd)) report(step.line, "no-pipe", "no pipes in RUN: /bin/sh has no pipefail, so a failing command before | would pass (hadolint DL4006)");
      if (/\bnpm\s+(install|i|add)\b/.test(cmd)) report(step.line, "npm-ci", "install with npm ci from the committed lock file, not npm install");
      if (/\bnpm\s+ci\b/.test(cmd)) {
        if (!/--omit=dev\b/.test(cmd)) report(step.line, "npm-ci", "npm ci --omit=dev: the images need no devDependencies");
        if (/--ignore-scripts\b/.test(cmd)) report(step.line, "npm-ci", "npm ci must run the postinstall: it builds the native extension");
        const after = stage.steps.slice(stage.steps.indexOf(step) + 1);
        if (!after.some((s) => s.keyword === "RUN" && s.args.includes("deploy/image/check-native.mjs"))) {
          report(step.line, "native-check", "run `node deploy/image/check-native.mjs` after npm ci: the postinstall only warns when the native build fails");
        }
      }
      if (/\bapt-get\b/.test(cmd)) {
        if (/\bapt-get\s+(-\S+\s+)*(dist-)?upgrade\b/.test(cmd)) report(step.line, "apt", "no apt-get upgrade (hadolint DL3005)");
        if (/\bapt-get\s+(-\S+\s+)*install\b/.test(cmd)) {
          if (!/\bapt-get\s+(-\S+\s+)*install\b[^&;]*\s(-y|--yes|-qq?y)\b/.test(cmd)) report(step.line, "apt", "apt-get install -y (hadolint DL3014)");
          if (!/--no-install-recommends\b/.test(cmd)) report(step.line, "apt", "apt-get install --no-install-recommends (hadolint DL3015)");
          if (!/\bapt-get\s+update\b/.test(cmd)) report(step.line, "apt", "apt-get update in the same RUN as install (hadolint DL3009's cache rule)");
          if (!/rm -rf \/var\/lib\/apt\/lists\/\*/.test(cmd)) report(step.line, "apt", "rm -rf /var/lib/apt/lists/* in the same RUN (hadolint DL3009)");
        }
      }
    }
    if (keyword === "COPY") {
      const { flags, args } = flagsAndArgs(step);
      const from = flags.get("from");
      const sources = args.slice(0, -1).map((a) => expand(a, vars));
      if (from !== undefined) {
        const source = stageNamed(df, from);
        if (!source) {
          if (!/:[^:/]+$/.test(expand(from, vars))) report(step.line, "copy-from", `COPY --from=${from}: neither an earlier stage nor an image with a tag (hadolint DL3022)`);
        } else if (source.index >= stage.index) report(step.line, "copy-from", `COPY --from=${from}: a later stage`);
        // The runtime stage finds the build only under the folder name that hashes these options.
        if (source && sources.some((s) => s.replace(/\/+$/, "").endsWith("node_modules"))) {
          const cmake = (st: Stage) =>
            [...stageEnv(st)].filter(([k]) => k.startsWith("NODE_LLAMA_CPP_CMAKE_OPTION_")).map(([k, [v]]) => `${k}=${v}`).sort().join("\n");
          if (cmake(source) !== cmake(stage)) {
            report(step.line, "cmake-options", `stage ${stage.name} must set the same NODE_LLAMA_CPP_CMAKE_OPTION_* as ${source.name} (node-llama-cpp finds the local build by a folder name that hashes them)`);
          }
        }
      } else {
        for (const src of sources) {
          const rel = src.replace(/^\.?\/+/, "").replace(/\/+$/, "");
          const present = rel === "" || rel === "." ? context.size > 0 : context.has(rel) || [...context].some((f) => f.startsWith(`${rel}/`));
          if (!present) report(step.line, "copy-context", `COPY ${src}: not in the build context (missing, or excluded by .dockerignore)`);
        }
      }
    }
    if (keyword === "ENV") {
      for (const [name] of envProperties(step)) {
        if (name.startsWith("FLOCK_") && !knownFlockVars.has(name)) report(step.line, "flock-env", `${name}: flock reads no such variable (server/config.ts, engine/native/build.ts)`);
      }
    }
  }
}

// Build stages: the backend the native build is for.
for (const stage of df.stages) {
  if (!runs(stage).some((s) => /\bnpm\s+ci\b/.test(s.args))) continue;
  const gpu = stageEnv(stage).get("FLOCK_NATIVE_GPU")?.[0];
  const want = stage.name.includes("cuda") ? "cuda" : undefined;
  if (gpu !== want && !(want === undefined && gpu === "false")) {
    report(stage.steps[0].line, "native-gpu", `stage ${stage.name}: FLOCK_NATIVE_GPU=${gpu ?? "(unset)"}, expected ${want ?? "unset"}`);
  }
}

// The images themselves (issue 7: non-root user, EXPOSE, HEALTHCHECK, configuration by env).
for (const target of FINAL_TARGETS) {
  const stage = stageNamed(df, target);
  if (!stage) continue;
  const at = stage.steps[0].line;
  const env = stageEnv(stage);
  const users = stage.steps.filter((s) => s.keyword === "USER");
  const user = users[users.length - 1];
  if (!user) report(at, "non-root", `${target}: no USER; the image must not run as root`);
  else {
    if (/^(root|0)(:|$)/.test(user.args.trim())) report(user.line, "non-root", `${target}: USER ${user.args} is root`);
    const lastRun = runs(stage).pop();
    if (lastRun && lastRun.line > user.line) report(lastRun.line, "non-root", `${target}: RUN after USER`);
  }
  const exposed = stage.steps.filter((s) => s.keyword === "EXPOSE").flatMap((s) => s.args.split(/\s+/));
  if (!exposed.some((p) => p.replace(/\/tcp$/, "") === PORT)) report(at, "expose", `${target}: EXPOSE ${PORT}`);
  if (env.get("FLOCK_HOST")?.[0] !== "0.0.0.0") report(at, "flock-env", `${target}: ENV FLOCK_HOST=0.0.0.0, or nothing outside the container reaches flock`);
  if (env.get("FLOCK_PORT")?.[0] !== PORT) report(at, "flock-env", `${target}: ENV FLOCK_PORT=${PORT}, the port EXPOSE names and the healthcheck probes`);
  const cacheDir = env.get("FLOCK_CACHE_DIR")?.[0];
  const volumes = stage.steps.filter((s) => s.keyword === "VOLUME").flatMap((s) => execForm(s.args) ?? s.args.split(/\s+/));
  if (!cacheDir) report(at, "flock-env", `${target}: ENV FLOCK_CACHE_DIR (the demo models and predictor weights are written there)`);
  else if (!volumes.includes(cacheDir)) report(at, "cache-volume", `${target}: VOLUME ${cacheDir}, the writable cache directory`);
  const setup = runs(stage).map((s) => s.args).join("\n");
  if (cacheDir && !new RegExp(`chown\\s+\\S+\\s+(\\S+\\s+)*${cacheDir}(\\s|$)`).test(setup)) report(at, "cache-volume", `${target}: chown ${cacheDir} to the runtime user`);
  if (!/mkdir -p [^&]*\/models\b/.test(setup)) report(at, "models", `${target}: create /models, where models are mounted`);
  const healthchecks = stage.steps.filter((s) => s.keyword === "HEALTHCHECK");
  if (healthchecks.length !== 1) report(at, "healthcheck", `${target}: one HEALTHCHECK`);
  for (const hc of healthchecks) {
    const cmd = healthcheckCommand(hc);
    if (!cmd) report(hc.line, "healthcheck", "HEALTHCHECK … CMD in exec form");
    else if (cmd[0] !== "node") report(hc.line, "healthcheck", "the healthcheck runs with node (the slim images have no curl or wget)");
    else if (cmd[1] && !stage.steps.some((s: Step) => s.keyword === "COPY" && s.args.includes(cmd[1]))) report(hc.line, "healthcheck", `${cmd[1]} is not copied into ${target}`);
  }
  const entrypoint = stage.steps.filter((s) => s.keyword === "ENTRYPOINT").pop();
  if (!entrypoint) report(at, "entrypoint", `${target}: no ENTRYPOINT`);
}

// The context: what must never be sent to the daemon.
for (const path of ["node_modules/x", ".git/HEAD", ".cache/x", "test/app.test.ts", "scratch/x.ts", "deploy/node_modules/x"]) {
  if (!isExcluded(path, patterns)) findings.push(`.dockerignore: [context] ${path} would be in the build context`);
}

for (const f of findings) console.error(f);
console.log(`dockerfile lint: ${df.stages.length} stages, ${context.size} context files, ${findings.length} finding(s)`);
process.exit(findings.length > 0 ? 1 : 0);
