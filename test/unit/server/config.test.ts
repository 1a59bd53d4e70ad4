// Server configuration from a JSON file, environment variables and CLI flags.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { availableParallelism, homedir, tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { ConfigError, loadConfig, type ServerConfig } from "../../../server/config.js";

const dir = mkdtempSync(join(tmpdir(), "flock-config-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let files = 0;
function configFile(content: unknown): string {
  const path = join(dir, `config-${files++}.json`);
  writeFileSync(path, typeof content === "string" ? content : JSON.stringify(content));
  return path;
}
/** loadConfig with an empty environment unless one is given, so the test host's FLOCK_* do not leak in. */
const load = (argv: string[], env: NodeJS.ProcessEnv = {}): ServerConfig => {
  const config = loadConfig(argv, env);
  if (config === null) throw new Error("unexpected null");
  return config;
};
function configError(argv: string[], env: NodeJS.ProcessEnv = {}): ConfigError {
  try {
    loadConfig(argv, env);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return err as ConfigError;
  }
  throw new Error(`no ConfigError for ${argv.join(" ")}`);
}

describe("loadConfig", () => {
  it("has sane defaults", () => {
    const config = load([]);
    expect(config).toMatchObject({
      host: "127.0.0.1",
      port: 8080,
      gpu: "auto",
      models: [],
      logLevel: "info",
      limits: { maxN: 8, maxTokens: null, maxBodyBytes: 8 * 1024 * 1024 },
    });
    expect(config.threads).toBe(Math.max(1, availableParallelism() - 1));
    expect(config.cacheDir).toBe(join(process.env.XDG_CACHE_HOME || join(homedir(), ".cache"), "flock"));
  });

  it("returns null for --help and -h", () => {
    expect(loadConfig(["--help"], {})).toBeNull();
    expect(loadConfig(["-h", "--port", "80"], {})).toBeNull();
  });

  it("layers file < environment < flags", () => {
    // Hosts other machines reach need API keys, or serving open on purpose.
    const file = configFile({ host: "file-host", port: 1000, gpu: "off", logLevel: "warn", threads: 3, insecureNoAuth: true });
    const env = { FLOCK_HOST: "env-host", FLOCK_PORT: "2000", FLOCK_THREADS: "5" };
    expect(load(["--config", file])).toMatchObject({ host: "file-host", port: 1000, gpu: "off", logLevel: "warn", threads: 3 });
    expect(load(["--config", file], env)).toMatchObject({ host: "env-host", port: 2000, gpu: "off", logLevel: "warn", threads: 5 });
    expect(load(["--config", file, "--host", "flag-host", "--threads", "7", "--log-level", "debug"], env)).toMatchObject({
      host: "flag-host",
      port: 2000,
      gpu: "off",
      logLevel: "debug",
      threads: 7,
    });
  });

  it("reads every documented environment variable", () => {
    const env = {
      FLOCK_HOST: "0.0.0.0",
      FLOCK_PORT: "9000",
      FLOCK_GPU: "cuda",
      FLOCK_THREADS: "2",
      FLOCK_LOG_LEVEL: "error",
      FLOCK_CACHE_DIR: "/c",
      FLOCK_INSECURE_NO_AUTH: "1",
      FLOCK_WEIGHT_CHECK: "0",
      FLOCK_ADMIN_DIRS: "/a,/b",
      FLOCK_ALLOWED_HOSTS: "flock.internal",
      FLOCK_LOG_FORMAT: "json",
    };
    expect(load([], env)).toMatchObject({
      host: "0.0.0.0",
      port: 9000,
      gpu: "cuda",
      threads: 2,
      logLevel: "error",
      cacheDir: "/c",
      insecureNoAuth: true,
      weightCheck: false,
      adminDirs: ["/a", "/b"],
      allowedHosts: ["flock.internal"],
      logFormat: "json",
    });
  });

  it("takes the config file from FLOCK_CONFIG unless --config names one", () => {
    const a = configFile({ port: 1111 });
    const b = configFile({ port: 2222 });
    expect(load([], { FLOCK_CONFIG: a }).port).toBe(1111);
    expect(load(["--config", b], { FLOCK_CONFIG: a }).port).toBe(2222);
  });

  it("merges limits from the file with --max-* flags", () => {
    const file = configFile({ limits: { maxN: 2, maxTokens: 100 } });
    const rest = { maxPromptTokens: null, maxQueue: 64, requestTimeout: null, retryAfter: 1 };
    expect(load(["--config", file]).limits).toEqual({ maxN: 2, maxTokens: 100, maxBodyBytes: 8 * 1024 * 1024, ...rest });
    expect(load(["--config", file, "--max-tokens", "50", "--max-body-bytes", "4096"]).limits).toEqual({ maxN: 2, maxTokens: 50, maxBodyBytes: 4096, ...rest });
  });

  it("turns --model ID=PATH flags into model entries with the per-model flags", () => {
    const config = load(["--model", "tiny=/m/tiny.gguf", "--model", "big:q4=/m/a=b.gguf", "--parallel", "2", "--context-size", "1024", "--gpu-layers", "max"]);
    expect(config.models).toEqual([
      { id: "tiny", path: "/m/tiny.gguf", lora: [], contextSize: 1024, parallel: 2, gpuLayers: "max", embeddings: false },
      { id: "big:q4", path: "/m/a=b.gguf", lora: [], contextSize: 1024, parallel: 2, gpuLayers: "max", embeddings: false },
    ]);
    const defaults = load(["--model", "m=/x.gguf", "--gpu-layers", "12"]).models[0];
    expect(defaults).toEqual({ id: "m", path: "/x.gguf", lora: [], contextSize: "auto", parallel: 4, gpuLayers: 12, embeddings: false });
  });

  it("takes llama-server's and vLLM's flags: each alias parses to what its long form does", () => {
    const pairs: Array<[string[], string[]]> = [
      [["-m", "/m/qwen2.5-0.5b-instruct-q8_0.gguf"], ["--model", "/m/qwen2.5-0.5b-instruct-q8_0.gguf"]],
      [["-m", "/m/a.gguf", "-c", "2048"], ["--model", "/m/a.gguf", "--ctx-size", "2048"]],
      [["-m", "/m/a.gguf", "--max-model-len", "2048"], ["--model", "/m/a.gguf", "--context-size", "2048"]],
      [["-m", "/m/a.gguf", "-ngl", "99"], ["--model", "/m/a.gguf", "--n-gpu-layers", "99"]],
      [["-m", "/m/a.gguf", "--n-gpu-layers", "99"], ["--model", "/m/a.gguf", "--gpu-layers", "99"]],
      [["-m", "/m/a.gguf", "-np", "2"], ["--model", "/m/a.gguf", "--parallel", "2"]],
      [["-m", "/m/a.gguf", "-t", "3"], ["--model", "/m/a.gguf", "--threads", "3"]],
      [["-m", "/m/a.gguf", "-a", "qwen"], ["--model", "/m/a.gguf", "--alias", "qwen"]],
      [["-m", "/m/a.gguf", "--served-model-name", "qwen"], ["--model", "qwen=/m/a.gguf"]],
      [["-m=/m/a.gguf", "-c=512"], ["--model", "/m/a.gguf", "--ctx-size", "512"]],
    ];
    for (const [short, long] of pairs) expect(load(short), short.join(" ")).toEqual(load(long));
    expect(load(["-m", "/m/qwen2.5-0.5b-instruct-q8_0.gguf"]).models[0]).toMatchObject({ id: "qwen2.5-0.5b-instruct-q8_0", path: "/m/qwen2.5-0.5b-instruct-q8_0.gguf", contextSize: "auto" });
    expect(load(["-m", "/m/a.gguf", "-c", "2048", "-np", "2", "-ngl", "99", "-t", "3"])).toMatchObject({ threads: 3, models: [{ id: "a", contextSize: 2048, parallel: 2, gpuLayers: 99 }] });
  });

  it("names models given by path from --alias in order, ID=PATH ones keep theirs", () => {
    const config = load(["-m", "/m/one.gguf", "-m", "two=/m/2.gguf", "-m", "/m/three.gguf", "--alias", "first"]);
    expect(config.models.map((m) => [m.id, m.path])).toEqual([["first", "/m/one.gguf"], ["two", "/m/2.gguf"], ["three", "/m/three.gguf"]]);
    expect(configError(["-m", "/m/one.gguf", "-a", "x", "-a", "y"]).message).toContain("--alias y");
    expect(configError(["-a", "x"]).message).toContain("--model");
    // A file whose name holds "=" is a path when it exists.
    const odd = join(dir, "a=b.gguf");
    writeFileSync(odd, "");
    expect(load(["-m", odd]).models[0]).toMatchObject({ id: "a-b", path: odd });
  });

  it("takes the model, context, parallelism and GPU layers from the environment when no flag names a model", () => {
    const env = { FLOCK_MODEL: "/m/a.gguf,b=/m/b.gguf", FLOCK_ALIAS: "alpha", FLOCK_CTX_SIZE: "1024", FLOCK_PARALLEL: "3", FLOCK_N_GPU_LAYERS: "max" };
    expect(load([], env).models).toEqual([
      { id: "alpha", path: "/m/a.gguf", lora: [], contextSize: 1024, parallel: 3, gpuLayers: "max", embeddings: false },
      { id: "b", path: "/m/b.gguf", lora: [], contextSize: 1024, parallel: 3, gpuLayers: "max", embeddings: false },
    ]);
    // Flags win: their models replace the environment's, their settings override.
    expect(load(["-m", "/m/c.gguf", "-c", "512"], env).models).toEqual([{ id: "c", path: "/m/c.gguf", lora: [], contextSize: 512, parallel: 3, gpuLayers: "max", embeddings: false }]);
  });

  it("reads llama-server's LLAMA_ARG_* variables where flock's are unset", () => {
    const flock = { FLOCK_MODEL: "/m/a.gguf", FLOCK_ALIAS: "alpha", FLOCK_HOST: "0.0.0.0", FLOCK_PORT: "9000", FLOCK_THREADS: "3", FLOCK_CTX_SIZE: "1024", FLOCK_PARALLEL: "2", FLOCK_N_GPU_LAYERS: "max", FLOCK_API_KEYS: "k" };
    const llama = { LLAMA_ARG_MODEL: "/m/a.gguf", LLAMA_ARG_ALIAS: "alpha", LLAMA_ARG_HOST: "0.0.0.0", LLAMA_ARG_PORT: "9000", LLAMA_ARG_THREADS: "3", LLAMA_ARG_CTX_SIZE: "1024", LLAMA_ARG_N_PARALLEL: "2", LLAMA_ARG_N_GPU_LAYERS: "max", FLOCK_API_KEYS: "k" };
    expect(load([], llama)).toEqual(load([], flock));
    expect(load([], llama).models[0]).toMatchObject({ id: "alpha", contextSize: 1024, parallel: 2, gpuLayers: "max" });
    // flock's own name wins over llama-server's.
    expect(load([], { ...llama, FLOCK_PORT: "9100" }).port).toBe(9100);
  });

  it("suggests the closest flag for a typo", () => {
    expect(configError(["--prot", "80"]).message).toContain("Did you mean --port?");
    expect(configError(["--ctx", "80"]).message).toContain("Did you mean --ctx-size?");
    expect(configError(["--paralel", "2"]).message).toContain("Did you mean --parallel?");
    expect(configError(["--frobnicate"]).message).not.toContain("Did you mean");
  });

  it("adds --model entries to the file's models", () => {
    const file = configFile({ models: [{ id: "from-file", path: "/f.gguf" }] });
    expect(load(["--config", file, "--model", "from-flag=/g.gguf"]).models.map((m) => m.id)).toEqual(["from-file", "from-flag"]);
  });

  it("applies -c, -np and -ngl given without -m to every model that does not set its own, and keeps them for the demo", () => {
    // The demo: no models yet (they are forged at start); server.ts applies modelDefaults to each.
    const demo = load(["-c", "2048", "-np", "2", "-ngl", "0"]);
    expect(demo.models).toEqual([]);
    expect(demo.modelDefaults).toEqual({ contextSize: 2048, parallel: 2, gpuLayers: 0 });
    expect(load([], { FLOCK_CTX_SIZE: "1024", FLOCK_PARALLEL: "3", FLOCK_N_GPU_LAYERS: "max" }).modelDefaults).toEqual({ contextSize: 1024, parallel: 3, gpuLayers: "max" });
    expect(load(["--max-model-len", "auto"]).modelDefaults).toEqual({ contextSize: "auto" });
    expect(load([]).modelDefaults).toEqual({});

    // The config file's models: each key a model sets itself wins; the file's modelDefaults yield to the flags.
    const file = configFile({
      modelDefaults: { parallel: 6, gpuLayers: 10 },
      models: [{ id: "own", path: "/f.gguf", contextSize: 512, parallel: 1 }, { id: "bare", path: "/g.gguf" }],
    });
    const config = load(["--config", file, "-c", "2048", "-ngl", "max"]);
    expect(config.models.map(({ id, contextSize, parallel, gpuLayers }) => ({ id, contextSize, parallel, gpuLayers }))).toEqual([
      { id: "own", contextSize: 512, parallel: 1, gpuLayers: "max" },
      { id: "bare", contextSize: 2048, parallel: 6, gpuLayers: "max" },
    ]);
    // With -m too, the flags set the -m models and fill in the file's.
    const both = load(["--config", file, "-m", "/m/c.gguf", "-np", "2"]);
    expect(both.models.map((m) => [m.id, m.parallel, m.gpuLayers])).toEqual([["own", 1, 10], ["bare", 2, 10], ["c", 2, 10]]);
    expect(configError(["-c", "10"]).message).toContain("modelDefaults.contextSize");
    expect(configError(["--config", configFile({ modelDefaults: 4 })]).message).toContain("modelDefaults");
  });

  it("rejects malformed --model specs", () => {
    for (const spec of ["=/x.gguf", "id="]) expect(configError(["--model", spec]).message).toContain("--model");
  });

  it("names the offending field for bad values from flags, environment and file", () => {
    const cases: Array<[string[], NodeJS.ProcessEnv, string]> = [
      [["--port", "70000"], {}, "port"],
      [["--port", "http"], {}, "port"],
      [["--port", "80.5"], {}, "port"],
      [[], { FLOCK_THREADS: "0" }, "threads"],
      [["--gpu", "tpu"], {}, "gpu"],
      [["--log-level", "loud"], {}, "logLevel"],
      [["--max-n", "0"], {}, "limits.maxN"],
      [["--model", "m=/x.gguf", "--gpu-layers=-1"], {}, "models.0.gpuLayers"],
      [["--model", "m=/x.gguf", "--parallel", "65"], {}, "models.0.parallel"],
      [["--model", "bad id=/x.gguf"], {}, "models.0.id"],
      [["--config", configFile({ port: "8080" })], {}, "port"],
      [["--config", configFile({ limits: { maxBodyBytes: 10 } })], {}, "limits.maxBodyBytes"],
      [["--config", configFile({ hots: "typo" })], {}, "hots"],
      [["--config", configFile({ models: [{ id: "m", path: "/x.gguf", rpc: ["10.0.0.2"] }] })], {}, "models.0.rpc.0: an RPC server is host:port"],
      [["--config", configFile({ models: [{ id: "m", path: "/x.gguf", rpc: ["h:1", "h:1"] }] })], {}, "models.0.rpc: an RPC server is listed twice"],
      [["--config", configFile({ models: [{ id: "m", path: "/x.gguf", rpc: ["h:1"], experts: {} }] })], {}, "models.0.rpc: a model on RPC servers serves generation without routed experts"],
    ];
    for (const [argv, env, field] of cases) {
      expect(configError(argv, env).message, argv.join(" ") + JSON.stringify(env)).toContain(field);
    }
  });

  it("serves the playground unless --no-playground, FLOCK_PLAYGROUND=0 or playground: false says otherwise", () => {
    expect(load([]).playground).toBe(true);
    expect(load(["--no-playground"]).playground).toBe(false);
    expect(load([], { FLOCK_PLAYGROUND: "0" }).playground).toBe(false);
    expect(load(["--config", configFile({ playground: false })]).playground).toBe(false);
    expect(load(["--config", configFile({ playground: false })], { FLOCK_PLAYGROUND: "1" }).playground).toBe(true);
    expect(configError([], { FLOCK_PLAYGROUND: "maybe" }).message).toContain("playground");
  });

  it("rejects unknown flags", () => {
    expect(configError(["--prot", "80"]).message).toContain("--prot");
  });

  it("gives a ConfigError naming the file when it cannot be read or is not a JSON object", () => {
    const missing = join(dir, "missing.json");
    const broken = configFile("{ not json");
    const array = configFile([1, 2]);
    for (const path of [missing, broken, array, dir]) {
      expect(configError(["--config", path]).message).toContain(path);
    }
  });
});
