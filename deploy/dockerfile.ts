// What deploy/lint-dockerfile.ts and deploy/replay-dockerfile.ts share: the Dockerfile split into
// stages (parsed with dockerfile-ast, the parser of the Docker language server), build-argument
// and environment expansion as Docker does it, and the build context as Docker sends it (the
// repository filtered through .dockerignore, with Docker's matching rules).
import { readdirSync, readFileSync, existsSync, statSync } from "node:fs";
import { join, posix } from "node:path";
import { DockerfileParser, ModifiableInstruction, type Arg, type Env, type Instruction } from "dockerfile-ast";

export const repoRoot = join(import.meta.dirname, "..");

export interface Step {
  keyword: string;
  /** One-based line of the instruction, for messages. */
  line: number;
  /** Arguments with line continuations joined, as Docker hands them on (flags left out). */
  args: string;
  /** Flags (--name=value) of COPY, FROM, HEALTHCHECK. */
  flags: Map<string, string>;
  /** The comment lines directly above the instruction (without '#'). */
  comments: string[];
  node: Instruction;
}

export interface Stage {
  /** The stage name (FROM … AS name), or its index when unnamed. */
  name: string;
  index: number;
  /** FROM's image reference as written (variables not expanded). */
  from: string;
  steps: Step[];
}

export interface ParsedDockerfile {
  path: string;
  text: string;
  /** ARGs before the first FROM, with their defaults (undefined: none). */
  globalArgs: Map<string, string | undefined>;
  stages: Stage[];
}

export function parseDockerfile(path = join(repoRoot, "Dockerfile")): ParsedDockerfile {
  const text = readFileSync(path, "utf8");
  const dockerfile = DockerfileParser.parse(text);
  const commentAt = new Map<number, string>();
  for (const comment of dockerfile.getComments()) commentAt.set(comment.getRange().start.line, comment.getContent());

  const globalArgs = new Map<string, string | undefined>();
  const stages: Stage[] = [];
  for (const node of dockerfile.getInstructions()) {
    const keyword = node.getKeyword();
    const start = node.getRange().start.line;
    const comments: string[] = [];
    for (let line = start - 1; commentAt.has(line); line--) comments.unshift(commentAt.get(line)!);
    const flags = new Map<string, string>();
    if (node instanceof ModifiableInstruction) for (const flag of node.getFlags()) flags.set(flag.getName(), flag.getValue() ?? "true");
    const step: Step = { keyword, line: start + 1, args: node.getArgumentsContent() ?? "", flags, comments, node };
    if (keyword === "FROM") {
      const args = step.args.split(/\s+/);
      const as = args.findIndex((a) => a.toLowerCase() === "as");
      stages.push({ name: as >= 0 ? args[as + 1] : String(stages.length), index: stages.length, from: args[0], steps: [step] });
    } else if (stages.length === 0) {
      if (keyword === "ARG") {
        const property = (node as Arg).getProperty();
        if (property) globalArgs.set(property.getName(), property.getValue() ?? undefined);
      }
    } else {
      stages[stages.length - 1].steps.push(step);
    }
  }
  return { path, text, globalArgs, stages };
}

/** ${NAME}, ${NAME:-default}, ${NAME:+alternative} and $NAME, as Docker expands them in ENV, ARG, COPY, WORKDIR, FROM. */
export function expand(value: string, vars: ReadonlyMap<string, string | undefined>): string {
  return value.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)(?::([-+])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)/g, (_m, braced, op, word, bare) => {
    const name = braced ?? bare;
    const current = vars.get(name);
    if (op === "-") return current ? current : word;
    if (op === "+") return current ? word : "";
    return current ?? "";
  });
}

/** ENV properties of a step, name → value as written (quotes removed, variables not expanded). */
export function envProperties(step: Step): Array<[string, string]> {
  return (step.node as Env).getProperties().map((p) => [p.getName(), p.getValue() ?? ""]);
}

/** ARG of a step: [name, default as written or undefined]. */
export function argProperty(step: Step): [string, string | undefined] {
  const property = (step.node as Arg).getProperty();
  if (!property) throw new Error(`line ${step.line}: ARG without a name`);
  return [property.getName(), property.getValue() ?? undefined];
}

/** Flags and the whitespace-separated arguments of COPY, FROM, HEALTHCHECK. */
export function flagsAndArgs(step: Step): { flags: Map<string, string>; args: string[] } {
  return { flags: step.flags, args: step.args.split(/\s+/).filter((w) => w.length > 0) };
}

/** The exec form (JSON array) of CMD, ENTRYPOINT or HEALTHCHECK … CMD; null for the shell form. */
export function execForm(text: string): string[] | null {
  const trimmed = text.trim();
  if (!trimmed.startsWith("[")) return null;
  try {
    const parsed: unknown = JSON.parse(trimmed);
    return Array.isArray(parsed) && parsed.every((x) => typeof x === "string") ? (parsed as string[]) : null;
  } catch {
    return null;
  }
}

/** The HEALTHCHECK's command (after its flags and CMD) in exec form, or null. */
export function healthcheckCommand(step: Step): string[] | null {
  const match = /^\s*CMD\s+(.*)$/is.exec(step.args);
  return match ? execForm(match[1]) : null;
}

/** The stage a FROM or COPY --from names, if it is a stage of this file. */
export function stageNamed(df: ParsedDockerfile, name: string): Stage | undefined {
  return df.stages.find((s) => s.name === name || String(s.index) === name);
}

/** The target stage and every stage it depends on (FROM <stage>, COPY --from=<stage>), in file order. */
export function stageChain(df: ParsedDockerfile, target: string): Stage[] {
  const wanted = new Set<Stage>();
  const visit = (stage: Stage) => {
    if (wanted.has(stage)) return;
    wanted.add(stage);
    const base = stageNamed(df, stage.from);
    if (base) visit(base);
    for (const step of stage.steps) {
      if (step.keyword !== "COPY") continue;
      const from = flagsAndArgs(step).flags.get("from");
      const source = from ? stageNamed(df, from) : undefined;
      if (source) visit(source);
    }
  };
  const stage = stageNamed(df, target);
  if (!stage) throw new Error(`no stage named ${target} in ${df.path}`);
  visit(stage);
  return df.stages.filter((s) => wanted.has(s));
}

// --- .dockerignore -----------------------------------------------------------------------------

interface IgnorePattern {
  negated: boolean;
  regex: RegExp;
  /** The pattern's fixed leading directories, to know which excluded folders may hold exceptions. */
  text: string;
}

/** Docker's pattern syntax (Go's filepath.Match plus `**`), anchored at the context root. */
function patternRegex(pattern: string): RegExp {
  let out = "";
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i];
    if (c === "*") {
      if (pattern[i + 1] === "*") {
        i++;
        if (pattern[i + 1] === "/") {
          i++;
          out += "(?:.*/)?";
        } else out += ".*";
      } else out += "[^/]*";
    } else if (c === "?") out += "[^/]";
    else if (c === "[") {
      const end = pattern.indexOf("]", i + 1);
      if (end < 0) throw new Error(`.dockerignore: unterminated [ in ${pattern}`);
      out += `[${pattern.slice(i + 1, end).replace(/^!/, "^").replace(/\\/g, "\\\\")}]`;
      i = end;
    } else if (c === "\\" && i + 1 < pattern.length) {
      out += `\\${pattern[++i]}`;
    } else out += c.replace(/[.+^${}()|\]\\]/g, "\\$&");
  }
  return new RegExp(`^${out}$`);
}

export function readDockerignore(root = repoRoot): IgnorePattern[] {
  const file = join(root, ".dockerignore");
  if (!existsSync(file)) return [];
  return readFileSync(file, "utf8")
    .split(/\r?\n/)
    .map((line) => line.trim())
    .filter((line) => line.length > 0 && !line.startsWith("#"))
    .map((line) => {
      const negated = line.startsWith("!");
      // Docker cleans each pattern like a path: no leading or trailing slash, no ./ or //.
      const text = posix.normalize(negated ? line.slice(1).trim() : line).replace(/^\/+|\/+$/g, "").replace(/^\.\//, "");
      return { negated, regex: patternRegex(text), text };
    });
}

/** Docker's rule: a path is excluded by the last pattern that matches it or one of its parent folders. */
export function isExcluded(path: string, patterns: IgnorePattern[]): boolean {
  const parents: string[] = [];
  const parts = path.split("/");
  for (let i = 1; i <= parts.length; i++) parents.push(parts.slice(0, i).join("/"));
  let excluded = false;
  for (const p of patterns) if (parents.some((candidate) => p.regex.test(candidate))) excluded = !p.negated;
  return excluded;
}

/** Whether an exception (!pattern) could re-include something below an excluded folder. */
function mayHoldExceptions(dir: string, patterns: IgnorePattern[]): boolean {
  return patterns.some((p) => p.negated && (p.text.startsWith(`${dir}/`) || p.text.startsWith("**") || !p.text.includes("/") && /[*?[]/.test(p.text)));
}

/** The files of the build context, relative to root, in sorted order. */
export function contextFiles(root = repoRoot, patterns = readDockerignore(root)): string[] {
  const files: string[] = [];
  const walk = (rel: string) => {
    for (const entry of readdirSync(join(root, rel), { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
      const path = rel ? `${rel}/${entry.name}` : entry.name;
      const excluded = isExcluded(path, patterns);
      if (entry.isDirectory()) {
        if (!excluded || mayHoldExceptions(path, patterns)) walk(path);
      } else if (!excluded && (entry.isFile() || statSync(join(root, path)).isFile())) {
        files.push(path);
      }
    }
  };
  walk("");
  return files;
}
