// Configuration of the operations features: keys from flags, a key file, the environment and
// the config file (they add up), CORS origins, limits, timeouts and logging switches.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { ConfigError, loadConfig, type ServerConfig } from "../../../server/config.js";

const dir = mkdtempSync(join(tmpdir(), "flock-ops-config-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const file = (name: string, content: string) => {
  const path = join(dir, name);
  writeFileSync(path, content);
  return path;
};
const load = (argv: string[], env: NodeJS.ProcessEnv = {}): ServerConfig => {
  const config = loadConfig(argv, env);
  if (config === null) throw new Error("unexpected null");
  return config;
};

describe("operations configuration", () => {
  it("defaults: no keys, admin disabled, /health and /metrics open, no CORS, 10 s keep-alive, 30 s shutdown, queue 64, no timeout, no prompt logging", () => {
    const config = load([]);
    expect(config.auth).toEqual({ apiKeys: [], healthRequiresKey: false, metricsRequiresKey: false });
    expect(config.corsOrigins).toEqual([]);
    expect(config.keepAlive).toBe(10);
    expect(config.shutdownTimeout).toBe(30);
    expect(config.logPrompts).toBe(false);
    expect(config.limits).toMatchObject({ maxQueue: 64, maxPromptTokens: null, requestTimeout: null, retryAfter: 1 });
  });

  it("API keys add up from the config file, FLOCK_API_KEYS, --api-key and a key file", () => {
    const keyFile = file("keys.txt", "# team keys\nfrom-file-1\n\n  from-file-2  \n");
    const config = file("flock.json", JSON.stringify({ auth: { apiKeys: ["from-config"], metricsRequiresKey: true } }));
    const loaded = load(["--config", config, "--api-key", "flag-1", "--api-key", "flag-2", "--api-key-file", keyFile], { FLOCK_API_KEYS: "env-1, env-2,," });
    expect(loaded.auth.apiKeys).toEqual(["from-config", "env-1", "env-2", "flag-1", "flag-2", "from-file-1", "from-file-2"]);
    expect(loaded.auth.metricsRequiresKey).toBe(true);
    expect(loaded.auth.apiKeyFile).toBe(keyFile);
    // The key file can come from the environment too.
    expect(load([], { FLOCK_API_KEY_FILE: keyFile }).auth.apiKeys).toEqual(["from-file-1", "from-file-2"]);
  });

  it("the admin key: flag over environment over file", () => {
    const config = file("admin.json", JSON.stringify({ auth: { adminKey: "file-admin" } }));
    expect(load(["--config", config]).auth.adminKey).toBe("file-admin");
    expect(load(["--config", config], { FLOCK_ADMIN_KEY: "env-admin" }).auth.adminKey).toBe("env-admin");
    expect(load(["--config", config, "--admin-key", "flag-admin"], { FLOCK_ADMIN_KEY: "env-admin" }).auth.adminKey).toBe("flag-admin");
  });

  it("switches, CORS origins, limits and timeouts from flags and environment", () => {
    const loaded = load(
      [
        "--health-requires-key",
        "--metrics-requires-key",
        "--cors-origin",
        "https://a.example",
        "--max-prompt-tokens",
        "1000",
        "--max-queue",
        "3",
        "--request-timeout",
        "2.5",
        "--keep-alive",
        "0",
        "--shutdown-timeout",
        "5",
        "--log-prompts",
      ],
      { FLOCK_CORS_ORIGINS: "https://b.example" },
    );
    expect(loaded.auth).toMatchObject({ healthRequiresKey: true, metricsRequiresKey: true });
    expect(loaded.corsOrigins).toEqual(["https://b.example", "https://a.example"]);
    expect(loaded.limits).toMatchObject({ maxPromptTokens: 1000, maxQueue: 3, requestTimeout: 2.5 });
    expect(loaded.keepAlive).toBe(0);
    expect(loaded.shutdownTimeout).toBe(5);
    expect(loaded.logPrompts).toBe(true);
    expect(load([], { FLOCK_SHUTDOWN_TIMEOUT: "12", FLOCK_LOG_PROMPTS: "1" })).toMatchObject({ shutdownTimeout: 12, logPrompts: true });
    expect(load([], { FLOCK_LOG_PROMPTS: "0" }).logPrompts).toBe(false);
  });

  it("per-model maxQueue and the config file's limits", () => {
    const config = file("limits.json", JSON.stringify({ limits: { maxQueue: 0, requestTimeout: 60, retryAfter: 5 }, models: [{ id: "m", path: "/m.gguf", maxQueue: 2 }] }));
    const loaded = load(["--config", config]);
    expect(loaded.limits).toMatchObject({ maxQueue: 0, requestTimeout: 60, retryAfter: 5 });
    expect(loaded.models[0].maxQueue).toBe(2);
  });

  it("rejects bad values with a message naming them, and never echoes a key", () => {
    const expectError = (argv: string[], env: NodeJS.ProcessEnv, fragment: string) => {
      try {
        loadConfig(argv, env);
      } catch (err) {
        expect(err).toBeInstanceOf(ConfigError);
        expect((err as Error).message).toContain(fragment);
        return err as Error;
      }
      throw new Error(`no ConfigError for ${argv.join(" ")}`);
    };
    expectError(["--max-queue=-1"], {}, "limits.maxQueue");
    expectError(["--request-timeout", "soon"], {}, "limits.requestTimeout");
    expectError(["--keep-alive=-1"], {}, "keepAlive");
    expectError(["--api-key-file", join(dir, "missing.txt")], {}, "missing.txt");
    const err = expectError(["--config", file("badkey.json", JSON.stringify({ auth: { apiKeys: ["secret-123", ""] } }))], {}, "auth.apiKeys");
    expect(err.message).not.toContain("secret-123");
    expectError([], { FLOCK_LOG_PROMPTS: "maybe" }, "logPrompts");
  });
});
