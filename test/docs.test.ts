// The documentation as a user meets it: every example in README.md and docs/*.md either runs
// against the built-in demo (OpenAI SDK snippets in js and ts, curl lines) or is checked by the
// code that would read it (JSON configs and model entries by the config schema, `npm start`
// flags by the flag parser, `npm run` names by package.json, YAML by the deploy/ file it shows
// or as a Prometheus scrape job, the layout by the folders); a block that is none of these
// carries `<!-- not run: why -->` just before it, or this test fails. And the benchmark tables
// are what bench/results/*.json hold (npm run bench:docs).
import { execFile, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { isDeepStrictEqual, promisify } from "node:util";
import ts from "typescript";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse as parseYaml } from "yaml";
import { stalePages } from "../bench/docs.js";
import { ModelEntry } from "../pipelines/model-entry.js";
import { loadConfig, ServerConfig } from "../server/config.js";
import { createLogger } from "../server/logger.js";
import { type FlockServer, startServer } from "../server/server.js";

const root = join(import.meta.dirname, "..");
const pages = ["README.md", ...readdirSync(join(root, "docs")).filter((f) => f.endsWith(".md")).map((f) => `docs/${f}`)];
const blocks = pages.flatMap((page) => {
  const text = readFileSync(join(root, page), "utf8");
  return [...text.matchAll(/```(\w*)\n([\s\S]*?)```/g)].map((m) => ({
    page: `${page}:${text.slice(0, m.index).split("\n").length}`,
    lang: m[1],
    code: m[2],
    /** The reason in a `<!-- not run: … -->` comment just before the block (blank lines between allowed). */
    notRun: /<!--\s*not run:\s*(.*?)\s*-->\s*$/.exec(text.slice(0, m.index))?.[1] ?? null,
  }));
});
/** A block's shell commands, continuation lines joined, comments dropped. */
const shellLines = (code: string) =>
  code
    .replace(/\\\n\s*/g, " ")
    .split("\n")
    .map((line) => line.replace(/\s+#.*$/, "").trim())
    .filter((line) => line && !line.startsWith("#"));
/** Shell commands of sh blocks. */
const commands = blocks.filter((b) => b.lang === "sh").flatMap((b) => shellLines(b.code).map((line) => ({ page: b.page, line })));
/** `npm start -- FLAGS`, `npm run NAME -- …`, `npm test`: checked against the flag parser and package.json. */
const NPM = /^npm (?:start|test|run ([\w:-]+))(?: -- (.*))?$/;
/** Lines the tests below run or check completely. */
const checkedLine = (line: string) => line.startsWith("curl ") || NPM.test(line);
const openaiSnippet = (b: { lang: string; code: string }) => (b.lang === "js" || b.lang === "ts") && b.code.includes('from "openai"');
/** A layout listing: `folder/   what it holds`, with indented continuation lines. */
const layoutListing = (b: { lang: string; code: string }) => b.lang === "" && b.code.split("\n").every((l) => !l.trim() || /^\s/.test(l) || /^[\w.-]+\/\s/.test(l));

/** YAML files under deploy/ (what docs may show), parsed. */
function deployYaml(): Map<string, unknown> {
  const files = new Map<string, unknown>();
  const walk = (dir: string) => {
    for (const name of readdirSync(join(root, dir))) {
      const path = `${dir}/${name}`;
      if (name === "node_modules") continue;
      if (statSync(join(root, path)).isDirectory()) walk(path);
      else if (/\.ya?ml$/.test(name)) files.set(path, parseYaml(readFileSync(join(root, path), "utf8")));
    }
  };
  walk("deploy");
  return files;
}

/** What is wrong with a Prometheus scrape configuration pointed at flock, or null. */
function scrapeConfigProblem(value: unknown): string | null {
  const config = value as { scrape_configs?: unknown };
  if (!config || typeof config !== "object" || !Array.isArray(config.scrape_configs) || config.scrape_configs.length === 0) return "no scrape_configs list";
  const known = new Set(["job_name", "static_configs", "metrics_path", "scheme", "scrape_interval", "scrape_timeout", "authorization"]);
  for (const job of config.scrape_configs as Array<Record<string, unknown>>) {
    const unknown = Object.keys(job).filter((k) => !known.has(k));
    if (unknown.length > 0) return `unknown job fields ${unknown.join(", ")}`;
    if (typeof job.job_name !== "string" || !job.job_name) return "a job without job_name";
    if ((job.metrics_path ?? "/metrics") !== "/metrics") return `flock serves its metrics at /metrics, not ${String(job.metrics_path)}`;
    const statics = job.static_configs as Array<{ targets?: unknown }> | undefined;
    if (!Array.isArray(statics) || statics.length === 0) return `${job.job_name}: no static_configs`;
    for (const s of statics) {
      if (!Array.isArray(s.targets) || s.targets.length === 0 || !s.targets.every((t) => typeof t === "string" && /^[\w.-]+:\d+$/.test(t))) return `${job.job_name}: targets must be host:port`;
    }
    const auth = job.authorization as { type?: unknown; credentials?: unknown } | undefined;
    if (auth && (auth.type !== "Bearer" || typeof auth.credentials !== "string")) return `${job.job_name}: authorization must be { type: Bearer, credentials }`;
  }
  return null;
}

const DOC_URL = "http://127.0.0.1:8080";
/** Set where the docs must run as written (CI): a missing curl fails instead of skipping. */
const CURL_REQUIRED = process.env.FLOCK_REQUIRE_CURL === "1";

/** A ts snippet as the ES module node runs (types erased; type errors are the snippet's reader's). */
function transpile(code: string, page: string): string {
  const out = ts.transpileModule(code, { compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 }, reportDiagnostics: true, fileName: "snippet.ts" });
  if (out.diagnostics?.length) throw new Error(`${page}: ${ts.flattenDiagnosticMessageText(out.diagnostics[0].messageText, "\n")}`);
  return out.outputText;
}

/** Runs a client without blocking this process's event loop: the server it talks to lives here. */
async function runClient(file: string, args: string[], cwd = root): Promise<{ status: number | null; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await promisify(execFile)(file, args, { cwd, encoding: "utf8", timeout: 60_000 });
    return { status: 0, stdout, stderr };
  } catch (e) {
    const err = e as { code?: number | string; stdout?: string; stderr?: string; message: string };
    return { status: typeof err.code === "number" ? err.code : null, stdout: err.stdout ?? "", stderr: `${err.stderr ?? ""}${err.message}` };
  }
}
let server: FlockServer;
let dir: string;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "flock-docs-"));
  // The server the docs talk to: `npm start` without models, the built-in demo.
  server = await startServer(ServerConfig.parse({ port: 0, gpu: "off", threads: 1, logLevel: "silent", cacheDir: join(dir, "cache") }), createLogger("silent"));
  await server.ready;
});
afterAll(async () => {
  await server?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe("the docs' examples", () => {
  it("every block is run or checked below, or says why not", () => {
    const yaml = blocks.filter((b) => b.lang === "yaml");
    const unchecked = blocks.filter((b) => {
      if (b.notRun !== null) return false;
      if (openaiSnippet(b) || b.lang === "json" || b.lang === "yaml" || layoutListing(b)) return false;
      return !(b.lang === "sh" && shellLines(b.code).every(checkedLine));
    });
    expect(unchecked.map((b) => `${b.page} [${b.lang || "no language"}]: ${b.code.split("\n")[0]}`)).toEqual([]);
    expect(blocks.filter((b) => b.notRun !== null && !b.notRun).map((b) => b.page), "a not-run marker without a reason").toEqual([]);
    expect(yaml.length).toBeGreaterThan(0);
  });

  it("every OpenAI SDK snippet runs against the demo (ts ones transpiled)", async () => {
    const snippets = blocks.filter(openaiSnippet);
    expect(snippets.length).toBeGreaterThan(0);
    expect(snippets.some((s) => s.lang === "ts")).toBe(true);
    const scratch = join(root, "test", "artifacts");
    mkdirSync(scratch, { recursive: true });
    for (const [i, s] of snippets.entries()) {
      const file = join(scratch, `doc-example-${i}.mjs`);
      const code = s.lang === "ts" ? transpile(s.code, s.page) : s.code;
      writeFileSync(file, code.replaceAll(DOC_URL, server.url));
      const run = await runClient(process.execPath, [file]);
      expect(run.status, `${s.page}: ${run.stderr}`).toBe(0);
      expect(run.stdout.trim().length, s.page).toBeGreaterThan(0);
    }
  }, 300_000);

  it("every curl line runs against the demo", async (ctx) => {
    const curls = commands.filter((c) => c.line.startsWith("curl "));
    expect(curls.length).toBeGreaterThan(0);
    if (spawnSync("curl", ["--version"]).status !== 0) {
      // CI runs the docs as written: there a missing curl is a failure, not a skip.
      if (CURL_REQUIRED) expect.fail("curl is not installed (FLOCK_REQUIRE_CURL=1 needs it)");
      ctx.skip();
    }
    for (const c of curls) {
      const run = await runClient("sh", ["-c", `${c.line.replaceAll(DOC_URL, server.url)} --fail-with-body`]);
      expect(run.status, `${c.page}: ${c.line}\n${run.stdout}${run.stderr}`).toBe(0);
      expect(run.stdout.length).toBeGreaterThan(0);
    }
  }, 300_000);

  it("every JSON config or model entry is one the config schema accepts", () => {
    const json = blocks.filter((b) => b.lang === "json");
    expect(json.length).toBeGreaterThan(3);
    for (const b of json) {
      const value = JSON.parse(b.code) as Record<string, unknown>;
      const result = "id" in value && "path" in value ? ModelEntry.safeParse(value) : ServerConfig.safeParse(value);
      expect(result.success, `${b.page}: ${b.code.slice(0, 80)}… ${result.error?.message ?? ""}`).toBe(true);
    }
  });

  it("every YAML block is the deploy/ file it shows, or a Prometheus scrape job for flock", () => {
    const files = deployYaml();
    const yaml = blocks.filter((b) => b.lang === "yaml");
    expect(yaml.length).toBeGreaterThan(0);
    for (const b of yaml) {
      const value = parseYaml(b.code) as unknown;
      const shown = [...files].find(([, file]) => isDeepStrictEqual(file, value));
      if (shown) continue;
      // Not a copy of a file: then a scrape job, checked for the shape Prometheus reads.
      expect(scrapeConfigProblem(value), `${b.page}: neither a deploy/ file as it is nor a scrape config for flock`).toBeNull();
    }
  });

  it("the layout lists folders that exist", () => {
    const listings = blocks.filter(layoutListing);
    expect(listings.length).toBeGreaterThan(0);
    for (const b of listings) {
      for (const [, folder] of b.code.matchAll(/^([\w.-]+)\/\s/gm)) expect(existsSync(join(root, folder)), `${b.page}: ${folder}/`).toBe(true);
    }
  });

  it("every `npm start` line's flags parse, and every `npm run` names a script", () => {
    const scripts = (JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as { scripts: Record<string, string> }).scripts;
    let starts = 0;
    for (const c of commands) {
      const npm = NPM.exec(c.line);
      if (!npm) continue;
      if (c.line.startsWith("npm test")) {
        expect(scripts, `${c.page}: ${c.line}`).toHaveProperty("test");
        continue;
      }
      if (npm[1]) {
        expect(scripts, `${c.page}: ${c.line}`).toHaveProperty(npm[1]);
        continue;
      }
      starts++;
      const argv = (npm[2] ?? "").split(/\s+/).filter(Boolean);
      expect(() => loadConfig(argv, {}), `${c.page}: ${c.line}`).not.toThrow();
    }
    expect(starts).toBeGreaterThan(0);
  });

  it("every FLOCK_ variable a docker line sets is one flock reads", () => {
    const config = readFileSync(join(root, "server", "config.ts"), "utf8");
    const vars = commands.filter((c) => c.line.startsWith("docker run")).flatMap((c) => [...c.line.matchAll(/-e (FLOCK_\w+)=/g)].map((m) => m[1]));
    expect(vars.length).toBeGreaterThan(0);
    for (const v of vars) expect(config, v).toContain(v);
  });
});

describe("the benchmark tables", () => {
  it("are what bench/results holds (npm run bench:docs)", () => {
    expect(stalePages()).toEqual([]);
  });
});
