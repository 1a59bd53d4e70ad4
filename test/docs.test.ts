// The documentation as a user meets it: every example in README.md and docs/*.md either runs
// against the built-in demo (OpenAI SDK snippets, curl lines) or is checked by the code that
// would read it (JSON configs and model entries by the config schema, `npm start` flags by the
// flag parser, `npm run` names by package.json); and the benchmark tables are what
// bench/results/*.json hold (npm run bench:docs).
import { execFile, spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { stalePages } from "../bench/docs.js";
import { ModelEntry } from "../pipelines/model-entry.js";
import { loadConfig, ServerConfig } from "../server/config.js";
import { createLogger } from "../server/logger.js";
import { type FlockServer, startServer } from "../server/server.js";

const root = join(import.meta.dirname, "..");
const pages = ["README.md", ...readdirSync(join(root, "docs")).filter((f) => f.endsWith(".md")).map((f) => `docs/${f}`)];
const blocks = pages.flatMap((page) =>
  [...readFileSync(join(root, page), "utf8").matchAll(/```(\w*)\n([\s\S]*?)```/g)].map((m) => ({ page, lang: m[1], code: m[2] })),
);
/** Shell commands of sh blocks, continuation lines joined, comments dropped. */
const commands = blocks
  .filter((b) => b.lang === "sh")
  .flatMap((b) => b.code.replace(/\\\n\s*/g, " ").split("\n").map((line) => ({ page: b.page, line: line.replace(/\s+#.*$/, "").trim() })))
  .filter((c) => c.line && !c.line.startsWith("#"));

const DOC_URL = "http://127.0.0.1:8080";

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
  it("every OpenAI SDK snippet runs against the demo", async () => {
    const snippets = blocks.filter((b) => b.lang === "js" && b.code.includes('from "openai"'));
    expect(snippets.length).toBeGreaterThan(0);
    const scratch = join(root, "test", "artifacts");
    mkdirSync(scratch, { recursive: true });
    for (const [i, s] of snippets.entries()) {
      const file = join(scratch, `doc-example-${i}.mjs`);
      writeFileSync(file, s.code.replaceAll(DOC_URL, server.url));
      const run = await runClient(process.execPath, [file]);
      expect(run.status, `${s.page}: ${run.stderr}`).toBe(0);
      expect(run.stdout.trim().length, s.page).toBeGreaterThan(0);
    }
  }, 300_000);

  it("every curl line runs against the demo", async (ctx) => {
    const curls = commands.filter((c) => c.line.startsWith("curl "));
    expect(curls.length).toBeGreaterThan(0);
    if (spawnSync("curl", ["--version"]).status !== 0) ctx.skip();
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

  it("every `npm start` line's flags parse, and every `npm run` names a script", () => {
    const scripts = (JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as { scripts: Record<string, string> }).scripts;
    let starts = 0;
    for (const c of commands) {
      const npm = /^npm (?:start|run ([\w:-]+))(?: -- (.*))?$/.exec(c.line);
      if (!npm) continue;
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
