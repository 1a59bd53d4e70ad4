import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    globalSetup: ["test/helpers/global-setup.ts"],
    // node-llama-cpp's native addon is safest in child processes, one per test file.
    pool: "forks",
    testTimeout: 60_000,
    hookTimeout: 120_000,
  },
});
