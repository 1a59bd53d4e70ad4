// Server configuration: a JSON config file, environment variables and CLI flags (in rising
// precedence), validated with zod. No model configured means: serve the built-in demo.
import { readFileSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { z } from "zod";
import { defaultThreads } from "../models/engine.js";
import { ModelEntry } from "../models/registry.js";

export const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"] as const;

export const Limits = z.strictObject({
  /** Largest n (times the number of prompts, for batched completions). */
  maxN: z.int().min(1).default(8),
  /** Largest max_tokens a request may ask for; null: the context window is the bound. */
  maxTokens: z.int().min(1).nullable().default(null),
  maxBodyBytes: z.int().min(1024).default(8 * 1024 * 1024),
});

export const ServerConfig = z.strictObject({
  host: z.string().min(1).default("127.0.0.1"),
  port: z.int().min(0).max(65535).default(8080),
  gpu: z.enum(["auto", "off", "cuda", "vulkan", "metal"]).default("auto"),
  threads: z.int().min(1).default(defaultThreads()),
  models: z.array(ModelEntry).default([]),
  limits: Limits.default({ maxN: 8, maxTokens: null, maxBodyBytes: 8 * 1024 * 1024 }),
  logLevel: z.enum(LOG_LEVELS).default("info"),
  /** Where the built-in demo models are forged on first start. */
  cacheDir: z.string().min(1).default(defaultCacheDir()),
});
export type ServerConfig = z.infer<typeof ServerConfig>;
export type ServerConfigInput = z.input<typeof ServerConfig>;

export function defaultCacheDir(): string {
  const base = process.env.XDG_CACHE_HOME || join(homedir(), ".cache");
  return join(base, "flock");
}

export const USAGE = `usage: npm start -- [options]

  --config FILE          JSON config file (see README, "Configuration")
  --model ID=PATH        serve a GGUF file as model ID (repeatable)
  --host HOST            bind address (default 127.0.0.1; env FLOCK_HOST)
  --port PORT            port (default 8080; env FLOCK_PORT)
  --gpu auto|off|cuda|vulkan|metal   GPU backend (default auto; env FLOCK_GPU)
  --threads N            CPU threads per model context (default: cores - 1; env FLOCK_THREADS)
  --parallel N           concurrent sequences per --model (default 4)
  --context-size N       tokens per sequence for --model entries (default 4096)
  --gpu-layers N|auto|max  layers to offload for --model entries (default auto)
  --max-n N              largest n per request (default 8)
  --max-tokens N         largest max_tokens per request (default: the context window)
  --max-body-bytes N     largest request body (default 8 MiB)
  --log-level LEVEL      ${LOG_LEVELS.join("|")} (default info; env FLOCK_LOG_LEVEL)
  --cache-dir DIR        where the demo models are forged (env FLOCK_CACHE_DIR)
  -h, --help             this text

Without --model or a config file with models, flock serves its built-in demo models.`;

export class ConfigError extends Error {}

function describeZodError(where: string, error: z.ZodError): ConfigError {
  const issues = error.issues.map((i) => `${i.path.join(".") || "(root)"}: ${i.message}`).join("; ");
  return new ConfigError(`${where}: ${issues}`);
}

function parseModelFlag(spec: string): { id: string; path: string } {
  const eq = spec.indexOf("=");
  if (eq <= 0 || eq === spec.length - 1) throw new ConfigError(`--model expects ID=PATH, got "${spec}"`);
  return { id: spec.slice(0, eq), path: spec.slice(eq + 1) };
}

const int = (s: string | undefined) => (s === undefined ? undefined : /^-?\d+$/.test(s) ? Number(s) : s);

/** Resolves the configuration from argv and env; returns null when --help was asked for. */
export function loadConfig(argv: string[], env: NodeJS.ProcessEnv = process.env): ServerConfig | null {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      options: {
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
        help: { type: "boolean", short: "h" },
      },
      strict: true,
    });
  } catch (err) {
    throw new ConfigError((err as Error).message);
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
  set("host", flags.host);
  set("port", int(flags.port));
  set("gpu", flags.gpu);
  set("threads", int(flags.threads));
  set("logLevel", flags["log-level"]);
  set("cacheDir", flags["cache-dir"]);

  const limits = { ...((file.limits as Record<string, unknown> | undefined) ?? {}) };
  if (flags["max-n"] !== undefined) limits.maxN = int(flags["max-n"]);
  if (flags["max-tokens"] !== undefined) limits.maxTokens = int(flags["max-tokens"]);
  if (flags["max-body-bytes"] !== undefined) limits.maxBodyBytes = int(flags["max-body-bytes"]);
  merged.limits = limits;

  if (flags.model?.length) {
    const gpuLayers = flags["gpu-layers"];
    const models = flags.model.map((spec) => ({
      ...parseModelFlag(spec),
      ...(flags.parallel !== undefined ? { parallel: int(flags.parallel) } : {}),
      ...(flags["context-size"] !== undefined ? { contextSize: int(flags["context-size"]) } : {}),
      ...(gpuLayers !== undefined ? { gpuLayers: gpuLayers === "auto" || gpuLayers === "max" ? gpuLayers : int(gpuLayers) } : {}),
    }));
    merged.models = [...((file.models as unknown[] | undefined) ?? []), ...models];
  }

  const result = ServerConfig.safeParse(merged);
  if (!result.success) throw describeZodError(configPath ? `configuration (${configPath} and flags)` : "configuration", result.error);
  return result.data;
}
