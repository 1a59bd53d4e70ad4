// Every repository path the sources and docs mention exists: a path in a comment, a relative
// import, a Markdown link in a page, a folder in backticks.
// A renamed or deleted file leaves no reference behind (issue-free docs, comments that lead
// somewhere). A few mentions name files that are not in the repository on purpose: ALLOWED.
import { execFileSync } from "node:child_process";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, normalize } from "node:path";
import { describe, expect, it } from "vitest";

const root = join(import.meta.dirname, "..", "..");

/** Mentions of paths that are not in the repository by design, each with why. */
const ALLOWED: Record<string, string> = {
  "./api-key.txt": "the operator creates the API key file beside the manifests (a secret, never committed)",
  "bench/results/NAME.json": "a placeholder for any benchmark's result file",
  "deploy/models/": "the operator's GGUF files, mounted into the container; ignored by git",
  "test/artifacts/": "screenshots the browser tests write; ignored by git",
};

/** Docs that quote a file from another folder: their relative paths are relative to it. */
const QUOTED_FROM: Record<string, string> = {
  // Its compose file and volumes are deploy/compose.yaml's, whose config file is deploy's own.
  "docs/deployment.md": "deploy",
};

/**
 * Paths in llama.cpp's source tree (the patch and the native sources name them) and in
 * installed packages: not this repository's files.
 */
const UPSTREAM = /node_modules|^https?:|llama\.cpp\/|^src\/|^common\/|^ggml|^include\/|^vendor\/|^tools\/server|^examples\//;

/** What the files the test reads are: text under version control, or about to be (not ignored). */
function repositoryFiles(): string[] {
  try {
    const out = execFileSync("git", ["ls-files", "--cached", "--others", "--exclude-standard", "-z"], { cwd: root, encoding: "utf8", maxBuffer: 64 << 20 });
    return out.split("\0").filter((f) => f && statExists(f));
  } catch {
    // No git (a source tarball): the tree, less what .gitignore names.
    const skip = new Set(["node_modules", ".git", ".cache", "dist", "coverage", "scratch"]);
    const walk = (dir: string): string[] =>
      readdirSync(join(root, dir)).flatMap((name) => {
        const path = dir ? `${dir}/${name}` : name;
        if (skip.has(name) || path === "test/artifacts") return [];
        return statSync(join(root, path)).isDirectory() ? walk(path) : [path];
      });
    return walk("");
  }
}

function statExists(path: string): boolean {
  try {
    statSync(join(root, path));
    return true;
  } catch {
    return false;
  }
}

const EXT = "(?:ts|mts|js|mjs|md|json|diff|cpp|h|hpp|c|yaml|yml|cfg|sh|txt|svg|css|html|gguf|py)";
/** A path with a file extension (relative or from the root), not inside a URL or a longer path. */
const PATH = new RegExp(String.raw`(?<![\w@$/.:-])((?:\.{1,2}/)?[A-Za-z0-9_.\-]+(?:/[A-Za-z0-9_.\-]+)*\.${EXT})(?![\w/])`, "g");
const MARKDOWN_LINK = /\]\(([^)#\s]+)(?:#[^)]*)?\)/g;
/** A folder in backticks: `deploy/kubernetes/`. */
const FOLDER = /`((?:[a-z][\w.-]*\/)+)`/g;

describe("references to repository files", () => {
  const files = repositoryFiles();
  const known = new Set(files);
  const folders = new Set(files.flatMap((f) => f.split("/").slice(0, -1).map((_, i, parts) => parts.slice(0, i + 1).join("/"))));
  const tops = new Set(files.map((f) => f.split("/")[0]));
  const exists = (path: string) => known.has(path) || folders.has(path.replace(/\/$/, "")) || statExists(path);

  /** Where a mention in `file` may point: beside the file, from the root, and (`.js`) at the TypeScript source. */
  const targets = (file: string, mention: string): string[] => {
    const bases = [dirname(file), ".", ...(QUOTED_FROM[file] ? [QUOTED_FROM[file]] : [])];
    const paths = bases.map((base) => normalize(join(base, mention)).replace(/\\/g, "/"));
    return mention.endsWith(".js") ? [...paths, ...paths.map((p) => p.replace(/\.js$/, ".ts"))] : paths;
  };

  const dangling: string[] = [];
  const scanned = files.filter((f) => !f.startsWith("bench/results/") && !f.endsWith("package-lock.json") && !/\.(gguf|png|jpe?g|ico|woff2?|bin)$/.test(f));
  for (const file of scanned) {
    const text = readFileSync(join(root, file), "utf8");
    if (text.includes("\0")) continue;
    text.split("\n").forEach((line, i) => {
      const links = file.endsWith(".md") ? [...line.matchAll(MARKDOWN_LINK)].map((m) => m[1]).filter((l) => !/^[a-z]+:/.test(l)) : [];
      const mentions = new Set([...[...line.matchAll(PATH)].map((m) => m[1]), ...links]);
      for (const mention of mentions) {
        if (UPSTREAM.test(mention) || mention in ALLOWED) continue;
        // A repository path: under a top-level folder of this repository, relative, or a link.
        const first = mention.replace(/^(\.\.?\/)+/, "").split("/")[0];
        const repoPath = (mention.includes("/") && (tops.has(first) || mention.startsWith("."))) || links.includes(mention);
        if (repoPath && !targets(file, mention).some(exists)) dangling.push(`${file}:${i + 1}: ${mention}`);
      }
      for (const [, folder] of line.matchAll(FOLDER)) {
        if (folder in ALLOWED || !tops.has(folder.split("/")[0])) continue;
        if (!exists(folder)) dangling.push(`${file}:${i + 1}: ${folder}`);
      }
    });
  }

  it("reads the repository", () => {
    expect(scanned.length).toBeGreaterThan(100);
    expect(scanned).toContain("engine/model.ts");
  });

  it("every mentioned repository path exists", () => {
    expect(dangling).toEqual([]);
  });

  it("the allow-list holds only what is still mentioned", () => {
    const text = scanned.map((f) => readFileSync(join(root, f), "utf8")).join("\n");
    const stale = Object.keys(ALLOWED).filter((path) => text.split(path).length - 1 <= 1); // this file's own mention
    expect(stale).toEqual([]);
  });
});
