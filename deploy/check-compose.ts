// npx tsx deploy/check-compose.ts
//
// Checks deploy/compose.yaml against what it refers to, since CI cannot run `docker compose`
// (no Docker engine, no compose plugin): the build context and target exist in the Dockerfile;
// the files it mounts exist; models are mounted at /models and the cache volume at the image's
// FLOCK_CACHE_DIR; FLOCK_CONFIG names the mounted config file, which flock's own loader accepts
// (server/config.ts); the published port is the image's FLOCK_PORT; Prometheus' scrape target
// is the flock service on that port at /metrics; the stop grace period outlasts flock's
// shutdown timeout; images are pinned; and docs/deployment.md shows the same compose file
// and Prometheus configuration (compared as parsed YAML, comments aside). Exit code 1 on any finding.
import { existsSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { isDeepStrictEqual } from "node:util";
import { parse } from "yaml";
import { loadConfig } from "../server/config.js";
import { envProperties, parseDockerfile, repoRoot, stageNamed } from "./dockerfile.js";

const here = import.meta.dirname;
const composePath = join(here, "compose.yaml");
const findings: string[] = [];
const check = (ok: unknown, message: string) => {
  if (!ok) findings.push(`${composePath}: ${message}`);
};

interface Service {
  build?: { context?: string; target?: string };
  image?: string;
  ports?: string[];
  environment?: Record<string, string>;
  volumes?: string[];
  stop_grace_period?: string;
}
const compose = parse(readFileSync(composePath, "utf8")) as { services?: Record<string, Service>; volumes?: Record<string, unknown> };
const services = compose.services ?? {};
const flock = services.flock;
const prometheus = services.prometheus;
check(flock, "no flock service");
check(prometheus, "no prometheus service");

const seconds = (d: string | undefined) => {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/.exec(d ?? "");
  return m ? Number(m[1]) * { ms: 0.001, s: 1, m: 60, h: 3600 }[m[2] as "ms" | "s" | "m" | "h"] : NaN;
};

for (const [name, service] of Object.entries(services)) {
  if (service.image && !service.build) check(/:[^:/]+$/.test(service.image) && !service.image.endsWith(":latest"), `${name}: pin the image to a version (${service.image})`);
  for (const volume of service.volumes ?? []) {
    const [source, target] = volume.split(":");
    if (source.startsWith(".") || source.startsWith("/")) {
      if (target !== "/models") check(existsSync(resolve(here, source)), `${name}: mounts ${source}, which does not exist`);
    } else {
      check(compose.volumes && source in compose.volumes, `${name}: volume ${source} is not declared under volumes:`);
    }
  }
}

if (flock) {
  const contextDir = resolve(here, flock.build?.context ?? ".");
  check(contextDir === repoRoot, `flock: build context ${flock.build?.context} is not the repository root`);
  const df = parseDockerfile(join(contextDir, "Dockerfile"));
  const target = flock.build?.target ?? df.stages[df.stages.length - 1].name;
  const stage = stageNamed(df, target);
  check(stage, `flock: no stage ${target} in the Dockerfile`);
  const imageEnv = new Map(stage ? stage.steps.filter((s) => s.keyword === "ENV").flatMap(envProperties) : []);
  const port = imageEnv.get("FLOCK_PORT") ?? "8080";
  check((flock.ports ?? []).some((p) => p.split(":").pop() === port), `flock: publish the image's port ${port}`);

  const mounts = new Map((flock.volumes ?? []).map((v) => [v.split(":")[1], v.split(":")[0]] as const));
  check(mounts.has("/models"), "flock: mount the models at /models");
  const cacheDir = imageEnv.get("FLOCK_CACHE_DIR");
  check(cacheDir && mounts.has(cacheDir) && !mounts.get(cacheDir)!.startsWith("."), `flock: mount a named volume at the image's FLOCK_CACHE_DIR (${cacheDir})`);

  const configTarget = flock.environment?.FLOCK_CONFIG;
  const configSource = configTarget ? mounts.get(configTarget) : undefined;
  check(configSource, `flock: FLOCK_CONFIG (${configTarget}) is not a mounted file`);
  let shutdownTimeout = 30;
  if (configSource) {
    try {
      const config = loadConfig(["--config", resolve(here, configSource)], {});
      if (config) {
        shutdownTimeout = config.shutdownTimeout;
        for (const m of config.models) check(m.path.startsWith("/models/"), `${configSource}: model ${m.id} is not under /models (${m.path})`);
      }
    } catch (err) {
      check(false, `${configSource} is not a valid flock configuration: ${(err as Error).message}`);
    }
  }
  check(seconds(flock.stop_grace_period) > shutdownTimeout, `flock: stop_grace_period (${flock.stop_grace_period ?? "10s, Docker's default"}) must outlast shutdownTimeout (${shutdownTimeout} s)`);
  for (const key of Object.keys(flock.environment ?? {})) {
    check(!key.startsWith("FLOCK_") || readFileSync(join(repoRoot, "server/config.ts"), "utf8").includes(key), `flock: ${key} is not a variable flock reads`);
  }

  if (prometheus) {
    const configFile = (prometheus.volumes ?? []).map((v) => v.split(":")).find(([, t]) => t === "/etc/prometheus/prometheus.yml")?.[0];
    check(configFile, "prometheus: mount a prometheus.yml at /etc/prometheus/prometheus.yml");
    if (configFile && existsSync(resolve(here, configFile))) {
      const prom = parse(readFileSync(resolve(here, configFile), "utf8")) as {
        scrape_configs?: Array<{ job_name: string; metrics_path?: string; static_configs?: Array<{ targets?: string[] }> }>;
      };
      const job = prom.scrape_configs?.find((j) => j.static_configs?.some((s) => s.targets?.includes(`flock:${port}`)));
      check(job, `${configFile}: no scrape job targets flock:${port}`);
      check(!job || (job.metrics_path ?? "/metrics") === "/metrics", `${configFile}: flock serves its metrics at /metrics`);
    }
  }
}

// The deployment page shows both files; they must not drift apart.
const page = readFileSync(join(repoRoot, "docs", "deployment.md"), "utf8");
const blocks = [...page.matchAll(/```yaml\n([\s\S]*?)```/g)].map((m) => parse(m[1]) as Record<string, unknown>);
for (const file of ["compose.yaml", "prometheus.yml"]) {
  const wanted = parse(readFileSync(join(here, file), "utf8")) as Record<string, unknown>;
  const key = file === "compose.yaml" ? "services" : "scrape_configs";
  const shown = blocks.find((b) => b && key in b);
  check(shown && isDeepStrictEqual(shown, wanted), `docs/deployment.md does not show deploy/${file} as it is`);
}

for (const f of findings) console.error(f);
console.log(`compose check: ${Object.keys(services).length} services, ${findings.length} finding(s)`);
process.exit(findings.length > 0 ? 1 : 0);
