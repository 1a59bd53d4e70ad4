// The layering a newcomer can rely on: imports flow one way, from the server down to the engine,
// and no two modules import each other, directly or through others; and each unit test sits where
// the module it tests does. See docs/development.md.
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { basename, dirname, join, relative, resolve } from "node:path";
import ts from "typescript";
import { describe, expect, it } from "vitest";

const root = join(import.meta.dirname, "..", "..");
/** Each top-level folder's rank: a module may import only from folders of lower rank or its own. */
const RANK: Record<string, number> = { engine: 0, decoding: 1, experts: 2, forge: 3, pipelines: 3, server: 4, tools: 5 };

function sources(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) return name === "node_modules" || name === "playground" ? [] : sources(path);
    return /\.ts$/.test(name) && !name.endsWith(".d.ts") ? [path] : [];
  });
}

/** Relative imports of every layered module, resolved to repository paths (`a/b.ts`). */
function importGraph(): Map<string, string[]> {
  const graph = new Map<string, string[]>();
  for (const file of Object.keys(RANK).flatMap((d) => sources(join(root, d)))) {
    const { importedFiles } = ts.preProcessFile(readFileSync(file, "utf8"), true, true);
    const targets = importedFiles
      .map((f) => f.fileName)
      .filter((f) => f.startsWith("."))
      .map((f) => relative(root, resolve(dirname(file), f)).replace(/\.js$/, ".ts"));
    graph.set(relative(root, file), targets);
  }
  return graph;
}

const top = (path: string) => path.split("/")[0];

describe("module layering", () => {
  const graph = importGraph();

  it("reads every layer", () => {
    for (const dir of Object.keys(RANK)) expect([...graph.keys()].some((f) => top(f) === dir), dir).toBe(true);
    expect([...graph.values()].flat().length).toBeGreaterThan(100);
  });

  it("imports flow from higher layers to lower ones only", () => {
    const upward = [...graph].flatMap(([from, targets]) =>
      targets.filter((to) => top(to) !== top(from) && !(RANK[top(to)] < RANK[top(from)])).map((to) => `${from} → ${to}`),
    );
    expect(upward).toEqual([]);
  });

  it("no module imports itself through others (no cycles)", () => {
    // Tarjan's strongly connected components: every component of more than one module is a cycle.
    let counter = 0;
    const index = new Map<string, number>();
    const low = new Map<string, number>();
    const stack: string[] = [];
    const onStack = new Set<string>();
    const cycles: string[][] = [];
    const visit = (v: string) => {
      index.set(v, counter);
      low.set(v, counter++);
      stack.push(v);
      onStack.add(v);
      for (const w of graph.get(v) ?? []) {
        if (!graph.has(w)) continue;
        if (!index.has(w)) {
          visit(w);
          low.set(v, Math.min(low.get(v)!, low.get(w)!));
        } else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, index.get(w)!));
      }
      if (low.get(v) === index.get(v)) {
        const component: string[] = [];
        let w: string;
        do {
          w = stack.pop()!;
          onStack.delete(w);
          component.push(w);
        } while (w !== v);
        if (component.length > 1) cycles.push(component.sort());
      }
    };
    for (const v of graph.keys()) if (!index.has(v)) visit(v);
    expect(cycles).toEqual([]);
  });
});

/**
 * The unit tests that test no one module but the whole repository: they sit at the top of
 * test/unit/, each with what it checks.
 */
const REPO_WIDE: Record<string, string> = {
  "layout.test.ts": "the import layering of every module, and where every unit test sits (this file)",
  "references.test.ts": "every repository path the sources and docs mention",
};

/** Unit tests, relative to test/unit/ (`decoding/sampler.test.ts`). */
function unitTests(dir = ""): string[] {
  return readdirSync(join(root, "test", "unit", dir)).flatMap((name) => {
    const path = dir ? `${dir}/${name}` : name;
    if (statSync(join(root, "test", "unit", path)).isDirectory()) return unitTests(path);
    return name.endsWith(".test.ts") ? [path] : [];
  });
}

describe("unit tests mirror the source layout", () => {
  const tests = unitTests();

  it("reads every unit test", () => {
    expect(tests.length).toBeGreaterThan(20);
    expect(tests).toContain("decoding/sampler.test.ts");
  });

  // test/unit/<folder>/<module>.test.ts tests <folder>/<module>.ts; a second file on the same
  // module names its aspect (server/config.operations.test.ts), and a test of a whole folder may
  // be named after the folder. <folder> is any folder of the repository (test/helpers/ included).
  it("each unit test is named after a module in the folder it mirrors", () => {
    const misplaced = tests.filter((test) => {
      if (test in REPO_WIDE) return false;
      const folder = dirname(test);
      const module = basename(test).split(".")[0];
      if (folder === "." || !existsSync(join(root, folder)) || !statSync(join(root, folder)).isDirectory()) return true;
      return !existsSync(join(root, folder, `${module}.ts`)) && module !== basename(folder);
    });
    expect(misplaced).toEqual([]);
  });

  it("the repository-wide allow-list names only unit tests that exist", () => {
    expect(Object.keys(REPO_WIDE).filter((test) => !tests.includes(test))).toEqual([]);
  });
});
