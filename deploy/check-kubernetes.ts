// npx tsx deploy/check-kubernetes.ts
//
// Checks deploy/kubernetes/ without a cluster (none runs in CI). Every object is validated against
// the Kubernetes API's schemas by kubernetes-models (generated from Kubernetes' OpenAPI
// definitions: types, required fields, enums). Then what no schema knows: the Service, the
// PodDisruptionBudget and the HorizontalPodAutoscaler select the Deployment's pods; the HPA's
// metric is the one the Prometheus adapter rule serves, from a series flock exports; probes ask
// /health on the image's FLOCK_PORT; the grace period outlasts preStop plus flock's
// shutdownTimeout; the mounted config is one flock's own loader accepts, with models on the
// models volume; a read-only root file system leaves /cache and /tmp writable; the image runs as
// the Dockerfile's user; and the CPU and GPU Deployments differ only where they must.
// Exit code 1 on any finding.
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { isDeepStrictEqual } from "node:util";
import { ConfigMap, PersistentVolumeClaim, Service } from "kubernetes-models/v1";
import { Deployment } from "kubernetes-models/apps/v1";
import { HorizontalPodAutoscaler } from "kubernetes-models/autoscaling/v2";
import { PodDisruptionBudget } from "kubernetes-models/policy/v1";
import { parseAllDocuments, parse } from "yaml";
import { loadConfig } from "../server/config.js";
import { envProperties, parseDockerfile, repoRoot, stageNamed } from "./dockerfile.js";

const dir = join(import.meta.dirname, "kubernetes");
const findings: string[] = [];
const check = (ok: unknown, where: string, message: string) => {
  if (!ok) findings.push(`${where}: ${message}`);
};

// kind → the model class that validates it (apiVersion must match too).
const MODELS: Record<string, { apiVersion: string; model: new (data: never) => { validate(): void } }> = {
  ConfigMap: { apiVersion: "v1", model: ConfigMap },
  PersistentVolumeClaim: { apiVersion: "v1", model: PersistentVolumeClaim },
  Service: { apiVersion: "v1", model: Service },
  Deployment: { apiVersion: "apps/v1", model: Deployment },
  HorizontalPodAutoscaler: { apiVersion: "autoscaling/v2", model: HorizontalPodAutoscaler },
  PodDisruptionBudget: { apiVersion: "policy/v1", model: PodDisruptionBudget },
};

// Parsed YAML, checked field by field below.
type Yaml = any;

// deploy/kubernetes/*.yaml are shared; cpu/ and gpu/ hold one Deployment each.
interface Manifest {
  file: string;
  kind: string;
  object: Yaml;
}
function manifestsIn(folder: string): Manifest[] {
  return readdirSync(folder)
    .filter((f) => f.endsWith(".yaml"))
    .flatMap((f) => {
      const file = relative(repoRoot, join(folder, f));
      return parseAllDocuments(readFileSync(join(folder, f), "utf8")).map((doc) => {
        for (const e of doc.errors) check(false, file, `YAML: ${e.message}`);
        const object = doc.toJS() as Manifest["object"];
        return { file, kind: object?.kind, object };
      });
    });
}
const shared = manifestsIn(dir);
const variants = { cpu: manifestsIn(join(dir, "cpu")), gpu: manifestsIn(join(dir, "gpu")) };
const all = [...shared, ...variants.cpu, ...variants.gpu];

for (const { file, kind, object } of all) {
  const known = MODELS[kind];
  check(known, file, `unexpected kind ${kind}`);
  if (!known) continue;
  check(object.apiVersion === known.apiVersion, file, `${kind} should be ${known.apiVersion}, not ${object.apiVersion}`);
  try {
    new known.model(object as never).validate();
  } catch (err) {
    check(false, file, `${kind} ${object.metadata?.name}: ${(err as Error).message}`);
  }
}

const one = (kind: string, from = shared) => from.find((m) => m.kind === kind);
const configMap = one("ConfigMap");
const pvc = one("PersistentVolumeClaim");
const service = one("Service");
const pdb = one("PodDisruptionBudget");
const hpa = one("HorizontalPodAutoscaler");
for (const [kind, m] of Object.entries({ ConfigMap: configMap, PersistentVolumeClaim: pvc, Service: service, PodDisruptionBudget: pdb, HorizontalPodAutoscaler: hpa })) {
  check(m, relative(repoRoot, dir), `no ${kind}`);
}

// What the image provides: its port, cache directory and user.
const dockerfile = parseDockerfile();
const runtime = stageNamed(dockerfile, "cpu");
const imageEnv = new Map(runtime ? runtime.steps.filter((s) => s.keyword === "ENV").flatMap(envProperties) : []);
const imagePort = Number(imageEnv.get("FLOCK_PORT") ?? 8080);
const imageUid = Number(/--uid\s+(\d+)/.exec(readFileSync(join(repoRoot, "Dockerfile"), "utf8"))?.[1]);

const selects = (selector: Record<string, string> | undefined, labels: Record<string, string>) =>
  !!selector && Object.keys(selector).length > 0 && Object.entries(selector).every(([k, v]) => labels[k] === v);

// The adapter rule: its series must be one flock exports, and its name the HPA's metric.
const adapterFile = "deploy/kubernetes/prometheus/adapter-values.yaml";
const adapter = parse(readFileSync(join(repoRoot, adapterFile), "utf8")) as {
  rules?: { custom?: Array<{ seriesQuery: string; name: { matches: string; as: string }; metricsQuery: string }> };
};
const rules = adapter.rules?.custom ?? [];
const metricsSource = readFileSync(join(repoRoot, "server", "metrics.ts"), "utf8");
for (const rule of rules) {
  const series = /^([a-z_:]+)\{/.exec(rule.seriesQuery)?.[1];
  check(series && metricsSource.includes(`name: "${series}"`), adapterFile, `seriesQuery names ${series}, which flock does not export`);
  check(/namespace!?=/.test(rule.seriesQuery) && /pod!?=/.test(rule.seriesQuery), adapterFile, "seriesQuery must require the namespace and pod labels the rule maps to resources");
}
const hpaMetrics: string[] = (hpa?.object.spec?.metrics ?? []).map((m: { pods?: { metric?: { name?: string } } }) => m.pods?.metric?.name);
for (const name of hpaMetrics) check(rules.some((r) => r.name.as === name), hpa?.file ?? "hpa", `metric ${name} is served by no rule in ${adapterFile}`);

// The scrape job keeps pods by the label the Deployments set.
const scrapeFile = "deploy/kubernetes/prometheus/scrape-config.yaml";
const scrape = readFileSync(join(repoRoot, scrapeFile), "utf8");

for (const [variant, manifests] of Object.entries(variants)) {
  const deployment = one("Deployment", manifests);
  const where = deployment?.file ?? `deploy/kubernetes/${variant}`;
  check(deployment && manifests.length === 1, where, "one Deployment per variant folder");
  if (!deployment) continue;
  const spec = deployment.object.spec;
  const pod = spec.template.spec;
  const labels: Record<string, string> = spec.template.metadata?.labels ?? {};
  const name: string = deployment.object.metadata.name;

  check(selects(spec.selector?.matchLabels, labels), where, "spec.selector does not select the pod template's labels");
  check(selects(service?.object.spec?.selector, labels), where, "the Service does not select these pods");
  check(selects(pdb?.object.spec?.selector?.matchLabels, labels), where, "the PodDisruptionBudget does not select these pods");
  const target = hpa?.object.spec?.scaleTargetRef;
  check(target?.kind === "Deployment" && target?.name === name && target?.apiVersion === "apps/v1", where, `the HPA does not scale Deployment ${name}`);
  check(spec.strategy?.rollingUpdate?.maxUnavailable === 0, where, "rolling updates should keep every replica until its replacement is ready (maxUnavailable: 0)");
  check(Object.entries(labels).some(([k, v]) => scrape.includes(`__meta_kubernetes_pod_label_${k.replace(/[^a-zA-Z0-9_]/g, "_")}`) && scrape.includes(`regex: ${v}`)), where, `${scrapeFile} does not keep these pods by label`);

  const containers: Yaml[] = pod.containers;
  check(containers.length === 1, where, "one container");
  const c = containers[0];
  const env = new Map<string, string>((c.env ?? []).map((e: { name: string; value: string }) => [e.name, e.value]));
  for (const key of env.keys()) check(!key.startsWith("FLOCK_") || readFileSync(join(repoRoot, "server/config.ts"), "utf8").includes(key), where, `${key} is not a variable flock reads`);
  const httpPort = (c.ports ?? []).find((p: { name?: string }) => p.name === "http");
  check(httpPort?.containerPort === imagePort, where, `container port "http" must be the image's FLOCK_PORT (${imagePort})`);
  check(!env.has("FLOCK_PORT"), where, "leave FLOCK_PORT to the image (its healthcheck and this port follow it)");
  const annotations = spec.template.metadata?.annotations ?? {};
  check(annotations["prometheus.io/port"] === String(imagePort) && annotations["prometheus.io/path"] === "/metrics", where, "prometheus.io annotations must name the port and /metrics");
  for (const probe of ["startupProbe", "livenessProbe", "readinessProbe"]) {
    const get = c[probe]?.httpGet;
    check(get?.path === "/health" && (get?.port === "http" || get?.port === imagePort), where, `${probe} should GET /health on the http port`);
  }
  const startupSeconds = (c.startupProbe?.periodSeconds ?? 10) * (c.startupProbe?.failureThreshold ?? 3);
  check(startupSeconds >= 300, where, `the startup probe allows ${startupSeconds} s for loading models; give it at least 300`);
  check(pod.securityContext?.runAsUser === imageUid, where, `runAsUser should be the image's user (uid ${imageUid})`);

  // Volumes: the config file from the ConfigMap, the models read-only, writable cache and /tmp.
  const volumes = new Map<string, Yaml>((pod.volumes ?? []).map((v: { name: string }) => [v.name, v]));
  const mounts: Array<{ name: string; mountPath: string; readOnly?: boolean }> = c.volumeMounts ?? [];
  const mountAt = (path: string) => mounts.filter((m) => path === m.mountPath || path.startsWith(`${m.mountPath}/`)).sort((a, b) => b.mountPath.length - a.mountPath.length)[0];
  for (const m of mounts) check(volumes.has(m.name), where, `volumeMount ${m.name} names no volume`);
  const models = mountAt("/models/x");
  check(models?.mountPath === "/models" && models.readOnly && volumes.get(models.name)?.persistentVolumeClaim?.claimName === pvc?.object.metadata?.name, where, "mount the models PVC read-only at /models");
  const configPath = env.get("FLOCK_CONFIG");
  const configMount = configPath ? mountAt(configPath) : undefined;
  const configVolume = configMount ? volumes.get(configMount.name) : undefined;
  check(configVolume?.configMap?.name === configMap?.object.metadata?.name, where, `FLOCK_CONFIG (${configPath}) is not a file of the ConfigMap`);
  const keyPath = env.get("FLOCK_API_KEY_FILE");
  check(keyPath && volumes.get(mountAt(keyPath)?.name ?? "")?.secret?.secretName, where, "FLOCK_API_KEY_FILE should be a file of a mounted Secret (flock listens on the pod's address)");
  if (c.securityContext?.readOnlyRootFilesystem) {
    for (const path of [imageEnv.get("FLOCK_CACHE_DIR") ?? "/cache", "/tmp"]) {
      const m = mountAt(`${path}/x`);
      check(m && !m.readOnly && volumes.get(m.name)?.emptyDir, where, `a read-only root file system needs a writable volume at ${path}`);
    }
  }

  // The config file as flock itself loads it; the grace period outlasts preStop and the drain.
  let shutdownTimeout = 30;
  const configText = configMount && configMap ? configMap.object.data?.[configPath!.slice(configMount.mountPath.length + 1)] : undefined;
  check(configText, where, `the ConfigMap has no key for ${configPath}`);
  if (configText) {
    // flock's loader reads a file; the key file is checked above.
    const tmp = mkdtempSync(join(tmpdir(), "flock-k8s-"));
    try {
      writeFileSync(join(tmp, "flock.json"), configText);
      const config = loadConfig(["--config", join(tmp, "flock.json")], { FLOCK_API_KEYS: "from-the-secret" });
      if (config) {
        shutdownTimeout = config.shutdownTimeout;
        for (const m of config.models) check(m.path.startsWith("/models/"), configMap!.file, `model ${m.id} is not under /models (${m.path})`);
      }
    } catch (err) {
      check(false, configMap!.file, `flock.json is not a valid flock configuration: ${(err as Error).message}`);
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  }
  const preStop = c.lifecycle?.preStop;
  const preStopSeconds = preStop?.sleep?.seconds ?? Number(preStop?.exec?.command?.[0] === "sleep" ? preStop.exec.command[1] : 0);
  check(preStopSeconds > 0, where, "a preStop sleep lets endpoint removal reach the load balancers before flock drains");
  const grace = pod.terminationGracePeriodSeconds ?? 30;
  check(grace >= preStopSeconds + shutdownTimeout + 5, where, `terminationGracePeriodSeconds (${grace}) must outlast preStop (${preStopSeconds} s) + shutdownTimeout (${shutdownTimeout} s) + 5 s`);
  check(c.resources?.requests?.cpu && c.resources?.limits?.memory, where, "request CPUs and limit memory");
  const threads = Number(env.get("FLOCK_THREADS"));
  check(threads > 0 && threads <= Number(c.resources?.requests?.cpu), where, "FLOCK_THREADS should be set, at most the CPUs requested");
}

// The GPU Deployment is the CPU one plus the GPU: nothing else may drift.
const cpu = one("Deployment", variants.cpu)?.object;
const gpu = one("Deployment", variants.gpu)?.object;
if (cpu && gpu) {
  const strip = (d: Yaml) => {
    const copy = structuredClone(d);
    const pod = copy.spec.template.spec;
    delete pod.tolerations;
    delete pod.nodeSelector;
    for (const c of pod.containers) {
      delete c.image;
      delete c.resources;
      c.env = (c.env ?? []).filter((e: { name: string }) => !["FLOCK_GPU", "FLOCK_THREADS", "FLOCK_N_GPU_LAYERS"].includes(e.name));
    }
    return copy;
  };
  check(isDeepStrictEqual(strip(cpu), strip(gpu)), "deploy/kubernetes/gpu/deployment.yaml", "differs from cpu/deployment.yaml beyond image, resources, tolerations, nodeSelector and FLOCK_GPU/FLOCK_THREADS");
  check(gpu.spec.template.spec.containers[0].resources?.limits?.["nvidia.com/gpu"] >= 1, "deploy/kubernetes/gpu/deployment.yaml", "limit nvidia.com/gpu");
  check(gpu.spec.template.spec.containers[0].env?.some((e: { name: string; value: string }) => e.name === "FLOCK_GPU" && e.value === "cuda"), "deploy/kubernetes/gpu/deployment.yaml", "set FLOCK_GPU=cuda");
}

for (const f of findings) console.error(f);
console.log(`kubernetes check: ${all.length} objects, ${findings.length} finding(s)`);
process.exit(findings.length > 0 ? 1 : 0);
