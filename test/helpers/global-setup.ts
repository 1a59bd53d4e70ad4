// Forges the demo model set once per test run into a temporary directory shared by all files.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { TestProject } from "vitest/node";
import { forge } from "../../forge/presets.js";

declare module "vitest" {
  export interface ProvidedContext {
    forgeDir: string;
  }
}

export default function setup(project: TestProject): () => void {
  const dir = mkdtempSync(join(tmpdir(), "flock-test-"));
  forge({ outDir: dir, preset: "demo", seed: 1 });
  project.provide("forgeDir", dir);
  return () => rmSync(dir, { recursive: true, force: true });
}
