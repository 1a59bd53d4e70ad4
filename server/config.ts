// Server configuration: a JSON config file, environment variables and CLI flags (in rising
// precedence), validated with zod. No model configured means: serve the built-in demo.
import { existsSync, readFileSync } from "node:fs";
import { homedir } from "node:os";
import { basename, join } from "node:path";
import { parseArgs } from "node:util";
import { z } from "zod";
import { defaultThreads } from "../engine/engine.js";
import { ModelEntry } from "../pipelines/model-entry.js";
import { TOKENIZERS, type TokenizerName } from "../forge/tokenizers.js";

export const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"] as const;

export const Limits = z.strictObject({
  /** Largest n (times the number of prompts, for batched completions). */
  maxN: z.int().min(1).default(8),
  /** Largest max_tokens a request may ask for; null: the context window is the bound. */
  maxTokens: z.int().min(1).nullable().default(null),
  maxBodyBytes: z.int().min(1024).default(8 * 1024 * 1024),
  /** Largest prompt (tokens of one prompt) a request may send; null: the context window is the bound. */
  maxPromptTokens: z.int().min(1).nullable().default(null),
  /** Choices that may wait for a free sequence, per model (models[].maxQueue overrides); beyond: 429. */
  maxQueue: z.int().min(0).default(64),
  /** Seconds a request may take from arrival to its last token; null: no limit. */
  requestTimeout: z.number().positive().nullable().default(null),
  /** The Retry-After (seconds) a 429 suggests. */
  retryAfter: z.int().min(1).default(1),
});

export const Auth = z.strictObject({
  /** Keys accepted as `Authorization: Bearer KEY` on /v1/*; none: /v1/* is open. */
  apiKeys: z.array(z.string().min(1)).default([]),
  /** A file with one API key per line (blank lines and # comments ignored), added to apiKeys. */
  apiKeyFile: z.string().min(1).optional(),
  /** The key for /admin/*; without one, /admin/* is disabled. */
  adminKey: z.string().min(1).optional(),
  /** Whether GET /health needs a key too (when API keys are configured). */
  healthRequiresKey: z.boolean().default(false),
  /** Whether GET /metrics needs a key too (when API keys are configured). */
  metricsRequiresKey: z.boolean().default(false),
});
export type Auth = z.infer<typeof Auth>;

export const ServerConfig = z.strictObject({
  host: z.string().min(1).default("127.0.0.1"),
  port: z.int().min(0).max(65535).default(8080),
  gpu: z.enum(["auto", "off", "cuda", "vulkan", "metal"]).default("auto"),
  threads: z.int().min(1).default(defaultThreads()),
  models: z.array(ModelEntry).default([]),
  /**
   * Settings for every model that does not set its own (what -c, -np and -ngl given without -m
   * mean, as llama-server applies them to its model): the config file's models, those of -m, and
   * every model of the built-in demo.
   */
  modelDefaults: z
    .strictObject({
      contextSize: z.union([z.number().int().min(64), z.literal("auto")]).optional(),
      parallel: z.number().int().min(1).max(64).optional(),
      gpuLayers: z.union([z.literal("auto"), z.literal("max"), z.number().int().min(0)]).optional(),
    })
    .default({}),
  limits: Limits.default({ maxN: 8, maxTokens: null, maxBodyBytes: 8 * 1024 * 1024, maxPromptTokens: null, maxQueue: 64, requestTimeout: null, retryAfter: 1 }),
  logLevel: z.enum(LOG_LEVELS).default("info"),
  /** Log lines as JSON (for collectors) or as text for people; default: text on a terminal. */
  logFormat: z.enum(["text", "json"]).optional(),
  /** Where the built-in demo models are forged on first start. */
  cacheDir: z.string().min(1).default(defaultCacheDir()),
  /**
   * The built-in demo's tokenizer: Qwen 2's (a real vocabulary, 151,936 tokens), Llama 3's, or
   * the forge's own 679 tokens (cheap per token on small machines).
   */
  demoTokenizer: z.enum([...(Object.keys(TOKENIZERS) as TokenizerName[]), "forge"]).default("qwen2"),
  auth: Auth.default({ apiKeys: [], healthRequiresKey: false, metricsRequiresKey: false }),
  /** Origins allowed by CORS ("*" for any); empty: no CORS headers at all. */
  corsOrigins: z.array(z.string().min(1)).default([]),
  /** Seconds between SSE keep-alive comments while a stream has nothing to send; 0: none. */
  keepAlive: z.number().min(0).default(10),
  /** Seconds a stream may wait for a client that reads nothing; then it is dropped and its sequences freed. */
  writeTimeout: z.number().positive().default(30),
  /** Seconds in-flight requests get to finish after SIGTERM before they are cancelled. */
  shutdownTimeout: z.number().min(0).default(30),
  /** Log prompt and completion text (off: logs never contain them). */
  logPrompts: z.boolean().default(false),
  /** Serve the playground page at / (off: / is a 404 like any unknown URL). */
  playground: z.boolean().default(true),
  /**
   * Before loading, run each weight type of the configured files once in a child process, so a
   * kernel this machine cannot execute refuses the start instead of crashing a request.
   */
  weightCheck: z.boolean().default(true),
  /** Directories whose files the admin API may load as experts (real paths; nothing else is read). */
  adminDirs: z.array(z.string().min(1)).default([]),
  /**
   * Host header values (host names, without the port) requests may carry; empty: any. Against DNS
   * rebinding, where a web page's own host name resolves to this server.
   */
  allowedHosts: z.array(z.string().min(1)).default([]),
  /** Serve /v1 without API keys on an address other hosts can reach (refused otherwise). */
  insecureNoAuth: z.boolean().default(false),
});
export type ServerConfig = z.infer<typeof ServerConfig>;
export type ServerConfigInput = z.input<typeof ServerConfig>;

export function defaultCacheDir(): string {
  const base = process.env.XDG_CACHE_HOME || join(homedir(), ".cache");
  return join(base, "flock");
}

export const USAGE = `usage: npm start -- [options]

Models
  -m, --model PATH|ID=PATH   serve a GGUF file (repeatable; env FLOCK_MODEL); its id is the
                             matching --alias, else the file name without .gguf
  -a, --alias ID             the id of the next -m PATH (repeatable; also --served-model-name)
  -c, --ctx-size N           tokens per sequence (default: the model's training context, reduced
                             to fit memory; also --max-model-len, --context-size; env FLOCK_CTX_SIZE)
  -np, --parallel N          concurrent sequences per model (default 4; env FLOCK_PARALLEL)
  -ngl, --n-gpu-layers N|auto|max   layers offloaded to the GPU (default auto; also --gpu-layers;
                             env FLOCK_N_GPU_LAYERS)
  -t, --threads N            CPU threads per model context (default: cores - 1; env FLOCK_THREADS)
  --gpu auto|off|cuda|vulkan|metal   GPU backend (default auto; env FLOCK_GPU)
  --config FILE              JSON config file (see docs/configuration.md; env FLOCK_CONFIG)
  --cache-dir DIR            where the demo models are forged (env FLOCK_CACHE_DIR)
  --demo-tokenizer NAME      the demo's vocabulary: qwen2 (default), llama-bpe, or forge (the
                             forge's own 679 tokens, fastest; env FLOCK_DEMO_TOKENIZER)
  --no-weight-check          skip the startup check of each weight type (env FLOCK_WEIGHT_CHECK=0)

Server
  --host HOST                bind address (default 127.0.0.1; env FLOCK_HOST)
  --port PORT                port (default 8080; env FLOCK_PORT)
  --keep-alive S             seconds between SSE keep-alive comments (default 10; 0: off)
  --write-timeout S          seconds a stream may wait for a client that reads nothing (default 30)
  --shutdown-timeout S       seconds in-flight requests get after SIGTERM (default 30; env FLOCK_SHUTDOWN_TIMEOUT)
  --no-playground            do not serve the playground page at / (env FLOCK_PLAYGROUND=0)

Limits
  --max-n N                  largest n per request (default 8)
  --max-tokens N             largest max_tokens per request (default: the context window)
  --max-prompt-tokens N      largest prompt in tokens (default: the context window)
  --max-body-bytes N         largest request body (default 8 MiB)
  --max-queue N              choices that may wait for a sequence, per model (default 64)
  --request-timeout S        seconds from arrival to the last token (default: none)

Security
  --api-key KEY              require this key on /v1/* (repeatable; env FLOCK_API_KEYS, comma-separated)
  --api-key-file FILE        keys, one per line (env FLOCK_API_KEY_FILE)
  --admin-key KEY            key for /admin/* (env FLOCK_ADMIN_KEY; without it /admin/* is disabled)
  --admin-key-file FILE      the admin key, read from a file (env FLOCK_ADMIN_KEY_FILE; keeps it out of ps)
  --admin-dir DIR            a directory the admin API may load expert files from (repeatable; env FLOCK_ADMIN_DIRS)
  --health-requires-key      GET /health needs a key too
  --metrics-requires-key     GET /metrics needs a key too
  --cors-origin ORIGIN       allow CORS from ORIGIN, or * (repeatable; env FLOCK_CORS_ORIGINS)
  --allowed-host NAME        answer only requests whose Host header names NAME (repeatable; env FLOCK_ALLOWED_HOSTS)
  --insecure-no-auth         serve without API keys on a non-loopback address (env FLOCK_INSECURE_NO_AUTH=1)

Logs
  --log-level LEVEL          ${LOG_LEVELS.join("|")} (default info; env FLOCK_LOG_LEVEL)
  --log-format text|json     (default: text on a terminal, else json; env FLOCK_LOG_FORMAT)
  --log-prompts              log prompt and completion text (env FLOCK_LOG_PROMPTS=1)
  -h, --help                 this text

-c, -np and -ngl set every model that does not set its own: the -m models, the config file's,
and the demo's. Without a model or a config file with models, flock serves its built-in demo models.`;

export class ConfigError extends Error {}

/** flock's environment variables and llama-server's names for the same settings. */
const LLAMA_SERVER_ENV: Record<string, string> = {
  FLOCK_MODEL: "LLAMA_ARG_MODEL",
  FLOCK_ALIAS: "LLAMA_ARG_ALIAS",
  FLOCK_HOST: "LLAMA_ARG_HOST",
  FLOCK_PORT: "LLAMA_ARG_PORT",
  FLOCK_THREADS: "LLAMA_ARG_THREADS",
  FLOCK_CTX_SIZE: "LLAMA_ARG_CTX_SIZE",
  FLOCK_PARALLEL: "LLAMA_ARG_N_PARALLEL",
  FLOCK_N_GPU_LAYERS: "LLAMA_ARG_N_GPU_LAYERS",
};

/** Whether a bind address is reachable from this machine only. */
export function isLoopback(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, "").toLowerCase();
  return h === "localhost" || h === "::1" || /^127\.\d+\.\d+\.\d+$/.test(h) || h === "::ffff:127.0.0.1";
}

function describeZodError(where: string, error: z.ZodError): ConfigError {
  const issues = error.issues.map((i) => `${i.path.join(".") || "(root)"}: ${i.message}`).join("; ");
  return new ConfigError(`${where}: ${issues}`);
}

/** llama-server's and vLLM's short flags, spelled as flock's long ones before parsing. */
const FLAG_ALIASES: Record<string, string> = {
  "-m": "--model",
  "-a": "--alias",
  "-c": "--ctx-size",
  "-np": "--parallel",
  "-ngl": "--n-gpu-layers",
  "-t": "--threads",
};

/** argv with the aliases above (also in their -flag=value form) replaced. */
export function expandFlagAliases(argv: readonly string[]): string[] {
  return argv.map((arg) => {
    const eq = arg.indexOf("=");
    const flag = eq < 0 ? arg : arg.slice(0, eq);
    const long = FLAG_ALIASES[flag];
    return long ? long + (eq < 0 ? "" : arg.slice(eq)) : arg;
  });
}

/** An id for a model given by path alone: its file name without .gguf, in the id alphabet. */
export function idFromPath(path: string): string {
  return basename(path)
    .replace(/\.gguf$/i, "")
    .replace(/[^\w.:/+-]+/g, "-");
}

/**
 * A --model value: ID=PATH, or a path (a file that exists is a path even with "=" in its name).
 * Paths alone take the next alias, else their file name.
 */
function parseModelFlags(specs: readonly string[], aliases: readonly string[]): Array<{ id: string; path: string }> {
  const left = [...aliases];
  const models = specs.map((spec) => {
    const eq = spec.indexOf("=");
    if (eq >= 0 && !existsSync(spec)) {
      if (eq === 0 || eq === spec.length - 1) throw new ConfigError(`--model expects PATH or ID=PATH, got "${spec}"`);
      return { id: spec.slice(0, eq), path: spec.slice(eq + 1) };
    }
    return { id: left.shift() ?? idFromPath(spec), path: spec };
  });
  if (left.length > 0) throw new ConfigError(`--alias ${left.join(", ")}: no --model PATH left to name (aliases name the models given without ID=)`);
  return models;
}

/** The known flag closest to `unknown` by edit distance, if it is close enough to be a typo. */
export function closestFlag(unknown: string, known: readonly string[]): string | undefined {
  const distance = (a: string, b: string) => {
    const row = Array.from({ length: b.length + 1 }, (_, j) => j);
    for (let i = 1; i <= a.length; i++) {
      let diagonal = row[0];
      row[0] = i;
      for (let j = 1; j <= b.length; j++) {
        const above = row[j];
        row[j] = Math.min(row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] === b[j - 1] ? 0 : 1));
        diagonal = above;
      }
    }
    return row[b.length];
  };
  let best: { flag: string; d: number } | undefined;
  for (const flag of known) {
    const d = distance(unknown, flag);
    if (!best || d < best.d) best = { flag, d };
  }
  // A prefix of a flag ("--ctx") or a few edits away ("--prot").
  const prefixOf = known.find((flag) => flag.startsWith(unknown) && unknown.length >= 4);
  if (prefixOf) return prefixOf;
  return best && best.d <= Math.max(2, Math.floor(unknown.length / 4)) ? best.flag : undefined;
}

const int = (s: string | undefined) => (s === undefined ? undefined : /^-?\d+$/.test(s) ? Number(s) : s);
const num = (s: string | undefined) => (s === undefined ? undefined : /^-?\d+(\.\d+)?$/.test(s) ? Number(s) : s);
/** "a, b,,c" → ["a", "b", "c"] (comma-separated env lists). */
const list = (s: string | undefined) => (s === undefined ? undefined : s.split(",").map((x) => x.trim()).filter((x) => x.length > 0));
const bool = (s: string | undefined) => (s === undefined ? undefined : /^(1|true|yes|on)$/i.test(s) ? true : /^(0|false|no|off|)$/i.test(s) ? false : s);

/** API keys from a key file: one per line, blank lines and # comments skipped. */
export function readKeyFile(path: string): string[] {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    throw new ConfigError(`cannot read API key file ${path}: ${(err as Error).message}`);
  }
  return text
    .split(/\r?\n/)
    .map((line) => line.trim())
    .filter((line) => line.length > 0 && !line.startsWith("#"));
}

/** Resolves the configuration from argv and env; returns null when --help was asked for. */
export function loadConfig(argv: string[], env: NodeJS.ProcessEnv = process.env): ServerConfig | null {
  let parsed;
  const options = {
    config: { type: "string" },
    model: { type: "string", multiple: true },
    host: { type: "string" },
    port: { type: "string" },
    gpu: { type: "string" },
    threads: { type: "string" },
    parallel: { type: "string" },
    "context-size": { type: "string" },
    "gpu-layers": { type: "string" },
    "max-n": { type: "string" },
    "max-tokens": { type: "string" },
    "max-body-bytes": { type: "string" },
    "log-level": { type: "string" },
    "cache-dir": { type: "string" },
    "demo-tokenizer": { type: "string" },
    "max-prompt-tokens": { type: "string" },
    "max-queue": { type: "string" },
    "request-timeout": { type: "string" },
    "api-key": { type: "string", multiple: true },
    "api-key-file": { type: "string" },
    "admin-key": { type: "string" },
    "admin-key-file": { type: "string" },
    "admin-dir": { type: "string", multiple: true },
    "health-requires-key": { type: "boolean" },
    "metrics-requires-key": { type: "boolean" },
    "cors-origin": { type: "string", multiple: true },
    "keep-alive": { type: "string" },
    "write-timeout": { type: "string" },
    "shutdown-timeout": { type: "string" },
    "log-prompts": { type: "boolean" },
    "no-playground": { type: "boolean" },
    "no-weight-check": { type: "boolean" },
    "insecure-no-auth": { type: "boolean" },
    "allowed-host": { type: "string", multiple: true },
    alias: { type: "string", multiple: true },
    "served-model-name": { type: "string", multiple: true },
    "ctx-size": { type: "string" },
    "max-model-len": { type: "string" },
    "n-gpu-layers": { type: "string" },
    "log-format": { type: "string" },
    help: { type: "boolean", short: "h" },
  } as const;
  try {
    parsed = parseArgs({ args: expandFlagAliases(argv), options, strict: true });
  } catch (err) {
    const unknown = (err as Error).message.match(/Unknown option '([^']+)'/)?.[1];
    const known = Object.keys(options).map((name) => `--${name}`);
    const suggestion = unknown ? closestFlag(unknown, [...known, ...Object.keys(FLAG_ALIASES)]) : undefined;
    throw new ConfigError(suggestion ? `${(err as Error).message.split(". ")[0]}. Did you mean ${suggestion}?` : (err as Error).message);
  }
  const flags = parsed.values;
  if (flags.help) return null;

  const configPath = flags.config ?? env.FLOCK_CONFIG;
  let file: Record<string, unknown> = {};
  if (configPath) {
    try {
      file = JSON.parse(readFileSync(configPath, "utf8")) as Record<string, unknown>;
    } catch (err) {
      throw new ConfigError(`cannot read config file ${configPath}: ${(err as Error).message}`);
    }
    if (typeof file !== "object" || file === null || Array.isArray(file)) throw new ConfigError(`${configPath}: expected a JSON object`);
  }

  // llama-server's variables (LLAMA_ARG_*) stand in for flock's where flock's are unset, so a
  // deployment written for llama-server keeps its environment.
  env = { ...Object.fromEntries(Object.entries(LLAMA_SERVER_ENV).flatMap(([flock, llama]) => (env[llama] !== undefined ? [[flock, env[llama]]] : []))), ...env };

  const merged: Record<string, unknown> = { ...file };
  const set = (key: string, value: unknown) => {
    if (value !== undefined) merged[key] = value;
  };
  set("host", env.FLOCK_HOST);
  set("port", int(env.FLOCK_PORT));
  set("gpu", env.FLOCK_GPU);
  set("threads", int(env.FLOCK_THREADS));
  set("logLevel", env.FLOCK_LOG_LEVEL);
  set("cacheDir", env.FLOCK_CACHE_DIR);
  set("demoTokenizer", env.FLOCK_DEMO_TOKENIZER);
  set("host", flags.host);
  set("port", int(flags.port));
  set("gpu", flags.gpu);
  set("threads", int(flags.threads));
  set("logLevel", flags["log-level"]);
  set("logFormat", env.FLOCK_LOG_FORMAT);
  set("logFormat", flags["log-format"]);
  set("cacheDir", flags["cache-dir"]);
  set("demoTokenizer", flags["demo-tokenizer"]);
  set("keepAlive", num(flags["keep-alive"]));
  set("writeTimeout", num(flags["write-timeout"]));
  set("shutdownTimeout", num(env.FLOCK_SHUTDOWN_TIMEOUT));
  set("shutdownTimeout", num(flags["shutdown-timeout"]));
  set("logPrompts", bool(env.FLOCK_LOG_PROMPTS));
  set("logPrompts", flags["log-prompts"]);
  set("playground", bool(env.FLOCK_PLAYGROUND));
  if (flags["no-playground"]) merged.playground = false;
  set("weightCheck", bool(env.FLOCK_WEIGHT_CHECK));
  set("insecureNoAuth", bool(env.FLOCK_INSECURE_NO_AUTH));
  if (flags["insecure-no-auth"]) merged.insecureNoAuth = true;
  if (flags["no-weight-check"]) merged.weightCheck = false;
  // Allowed origins and API keys add up across sources rather than replacing each other: a
  // key given by flag must not silently revoke the keys of the config file.
  const corsOrigins = [...((file.corsOrigins as unknown[] | undefined) ?? []), ...(list(env.FLOCK_CORS_ORIGINS) ?? []), ...(flags["cors-origin"] ?? [])];
  if (corsOrigins.length > 0) merged.corsOrigins = corsOrigins;

  const auth: Record<string, unknown> = { ...((file.auth as Record<string, unknown> | undefined) ?? {}) };
  const keyFile = flags["api-key-file"] ?? env.FLOCK_API_KEY_FILE ?? (typeof auth.apiKeyFile === "string" ? auth.apiKeyFile : undefined);
  const apiKeys = [
    ...(Array.isArray(auth.apiKeys) ? (auth.apiKeys as unknown[]) : auth.apiKeys === undefined ? [] : [auth.apiKeys]),
    ...(list(env.FLOCK_API_KEYS) ?? []),
    ...(flags["api-key"] ?? []),
    ...(keyFile ? readKeyFile(keyFile) : []),
  ];
  auth.apiKeys = apiKeys;
  if (keyFile) auth.apiKeyFile = keyFile;
  if (env.FLOCK_ADMIN_KEY) auth.adminKey = env.FLOCK_ADMIN_KEY;
  if (flags["admin-key"] !== undefined) auth.adminKey = flags["admin-key"];
  const adminKeyFile = flags["admin-key-file"] ?? env.FLOCK_ADMIN_KEY_FILE;
  if (adminKeyFile) {
    const [key, ...more] = readKeyFile(adminKeyFile);
    if (!key || more.length > 0) throw new ConfigError(`admin key file ${adminKeyFile}: expected exactly one key`);
    auth.adminKey = key;
  }
  const adminDirs = [...((file.adminDirs as unknown[] | undefined) ?? []), ...(list(env.FLOCK_ADMIN_DIRS) ?? []), ...(flags["admin-dir"] ?? [])];
  if (adminDirs.length > 0) merged.adminDirs = adminDirs;
  const allowedHosts = [...((file.allowedHosts as unknown[] | undefined) ?? []), ...(list(env.FLOCK_ALLOWED_HOSTS) ?? []), ...(flags["allowed-host"] ?? [])];
  if (allowedHosts.length > 0) merged.allowedHosts = allowedHosts;
  if (flags["health-requires-key"]) auth.healthRequiresKey = true;
  if (flags["metrics-requires-key"]) auth.metricsRequiresKey = true;
  merged.auth = auth;

  const limits = { ...((file.limits as Record<string, unknown> | undefined) ?? {}) };
  if (flags["max-n"] !== undefined) limits.maxN = int(flags["max-n"]);
  if (flags["max-tokens"] !== undefined) limits.maxTokens = int(flags["max-tokens"]);
  if (flags["max-body-bytes"] !== undefined) limits.maxBodyBytes = int(flags["max-body-bytes"]);
  if (flags["max-prompt-tokens"] !== undefined) limits.maxPromptTokens = int(flags["max-prompt-tokens"]);
  if (flags["max-queue"] !== undefined) limits.maxQueue = int(flags["max-queue"]);
  if (flags["request-timeout"] !== undefined) limits.requestTimeout = num(flags["request-timeout"]);
  merged.limits = limits;

  // -c, -np and -ngl (flag, else env) override the file's modelDefaults, and fill in every
  // model that does not set them itself; the demo's models get them in server.ts.
  const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);
  const fileDefaults = file.modelDefaults;
  const modelDefaults: Record<string, unknown> = isObject(fileDefaults) ? { ...fileDefaults } : {};
  const contextSize = flags["ctx-size"] ?? flags["max-model-len"] ?? flags["context-size"] ?? env.FLOCK_CTX_SIZE;
  const parallel = flags.parallel ?? env.FLOCK_PARALLEL;
  const gpuLayers = flags["n-gpu-layers"] ?? flags["gpu-layers"] ?? env.FLOCK_N_GPU_LAYERS;
  if (contextSize !== undefined) modelDefaults.contextSize = contextSize === "auto" ? "auto" : int(contextSize);
  if (parallel !== undefined) modelDefaults.parallel = int(parallel);
  if (gpuLayers !== undefined) modelDefaults.gpuLayers = gpuLayers === "auto" || gpuLayers === "max" ? gpuLayers : int(gpuLayers);
  // A file's modelDefaults that is no object reaches the schema as it is, to be refused there.
  if (fileDefaults !== undefined && !isObject(fileDefaults)) merged.modelDefaults = fileDefaults;
  else if (Object.keys(modelDefaults).length > 0) merged.modelDefaults = modelDefaults;
  const withDefaults = (model: unknown) => (isObject(model) ? { ...modelDefaults, ...model } : model);

  // Models from flags, else from the environment (FLOCK_MODEL: paths or ID=PATH, comma-separated).
  const modelSpecs = flags.model?.length ? flags.model : (list(env.FLOCK_MODEL) ?? []);
  const fileModels = Array.isArray(file.models) ? (file.models as unknown[]).map(withDefaults) : file.models;
  if (fileModels !== undefined) merged.models = fileModels;
  if (modelSpecs.length > 0) {
    const aliases = [...(flags.alias ?? []), ...(flags["served-model-name"] ?? []), ...(flags.model?.length ? [] : (list(env.FLOCK_ALIAS) ?? []))];
    const models = parseModelFlags(modelSpecs, aliases).map(withDefaults);
    merged.models = [...((fileModels as unknown[] | undefined) ?? []), ...models];
  } else if (flags.alias?.length || flags["served-model-name"]?.length) {
    throw new ConfigError("--alias and --served-model-name name models given with --model PATH; there are none");
  }

  const result = ServerConfig.safeParse(merged);
  if (!result.success) throw describeZodError(configPath ? `configuration (${configPath} and flags)` : "configuration", result.error);
  const config = result.data;
  if (!isLoopback(config.host) && config.auth.apiKeys.length === 0 && !config.insecureNoAuth) {
    throw new ConfigError(
      `host ${config.host} is reachable from other machines, and no API key is set: anyone there could use /v1. ` +
        "Set keys (--api-key-file FILE or FLOCK_API_KEY_FILE, --api-key or FLOCK_API_KEYS), or pass --insecure-no-auth (FLOCK_INSECURE_NO_AUTH=1) to serve it open on purpose",
    );
  }
  return config;
}
