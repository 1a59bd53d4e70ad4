// A real Prometheus server (Debian's `prometheus` package) scrapes flock on loopback with a
// bearer key, and promtool accepts the exposition. A second job is the Kubernetes one of
// deploy/kubernetes/prometheus/scrape-config.yaml, its relabeling run on the labels pod discovery
// would give, and the Prometheus adapter's rule (adapter-values.yaml) is queried as the adapter
// queries it. Skipped where the binaries are missing,
// unless FLOCK_REQUIRE_PROMETHEUS=1 (set by .ci/run once it installed them).
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse, stringify } from "yaml";
import { freePort } from "../bench/replica-set.js";
import { dashboardMetrics, until } from "./helpers/ops.js";
import { startTestServer, type TestServer } from "./helpers/server.js";

const installed = (bin: string) => !spawnSync(bin, ["--version"], { stdio: "ignore" }).error;
const available = installed("prometheus") && installed("promtool");
const required = process.env.FLOCK_REQUIRE_PROMETHEUS === "1";

const SCRAPE_KEY = "prometheus-scrape-key";
const kubernetesDir = join(import.meta.dirname, "..", "deploy", "kubernetes", "prometheus");
// What Kubernetes pod discovery would label a flock pod with (the Deployment's pod template).
const POD = { namespace: "serving", name: "flock-7d9f8b6c5-x2x4q" };

/** deploy/kubernetes/prometheus/scrape-config.yaml's job, with a static target for discovery. */
function kubernetesJob(flockPort: string): Record<string, unknown> {
  const { scrape_configs } = parse(readFileSync(join(kubernetesDir, "scrape-config.yaml"), "utf8")) as { scrape_configs: Array<Record<string, unknown>> };
  const { kubernetes_sd_configs, ...job } = scrape_configs[0];
  expect(kubernetes_sd_configs).toEqual([{ role: "pod" }]);
  return {
    ...job,
    job_name: "flock-kubernetes",
    authorization: { type: "Bearer", credentials: SCRAPE_KEY },
    static_configs: [
      {
        // A pod's address, port 1: the prometheus.io/port annotation must be what is scraped.
        targets: ["127.0.0.1:1"],
        labels: {
          __meta_kubernetes_namespace: POD.namespace,
          __meta_kubernetes_pod_name: POD.name,
          __meta_kubernetes_pod_label_app_kubernetes_io_name: "flock",
          __meta_kubernetes_pod_annotation_prometheus_io_scrape: "true",
          __meta_kubernetes_pod_annotation_prometheus_io_port: flockPort,
          __meta_kubernetes_pod_annotation_prometheus_io_path: "/metrics",
        },
      },
    ],
  };
}

describe("Prometheus", () => {
  it.runIf(!available && required)("is installed (FLOCK_REQUIRE_PROMETHEUS=1)", () => {
    expect(available, "prometheus and promtool on PATH").toBe(true);
  });
});

describe.runIf(available)("Prometheus scraping flock", () => {
  let t: TestServer;
  let client: OpenAI;
  let prometheus: ChildProcess | undefined;
  let prometheusUrl = "";
  let output = "";
  const dir = mkdtempSync(join(tmpdir(), "flock-prometheus-"));

  beforeAll(async () => {
    t = await startTestServer({ auth: { apiKeys: [SCRAPE_KEY], metricsRequiresKey: true } });
    client = new OpenAI({ baseURL: `${t.url}/v1`, apiKey: SCRAPE_KEY, maxRetries: 0 });
    const flock = new URL(t.url);
    const port = await freePort();
    prometheusUrl = `http://127.0.0.1:${port}`;
    const config = join(dir, "prometheus.yml");
    writeFileSync(
      config,
      [
        "global:",
        "  scrape_interval: 1s",
        "  evaluation_interval: 1s",
        "scrape_configs:",
        "  - job_name: flock",
        "    metrics_path: /metrics",
        "    authorization:",
        "      type: Bearer",
        `      credentials: ${SCRAPE_KEY}`,
        "    static_configs:",
        `      - targets: ["${flock.host}"]`,
        "",
      ].join("\n") + stringify([kubernetesJob(flock.port)]).replace(/^/gm, "  "),
    );
    prometheus = spawn(
      "prometheus",
      [`--config.file=${config}`, `--storage.tsdb.path=${join(dir, "data")}`, `--web.listen-address=127.0.0.1:${port}`, "--log.level=warn"],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    prometheus.stdout!.on("data", (d: Buffer) => (output += d.toString()));
    prometheus.stderr!.on("data", (d: Buffer) => (output += d.toString()));
  });

  afterAll(async () => {
    if (prometheus && prometheus.exitCode === null) {
      const exited = new Promise((resolve) => prometheus!.once("exit", resolve));
      prometheus.kill("SIGTERM");
      await Promise.race([exited, new Promise((r) => setTimeout(r, 5_000))]);
      if (prometheus.exitCode === null) prometheus.kill("SIGKILL");
    }
    await t?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const api = async <T>(path: string): Promise<T | null> => {
    const res = await fetch(`${prometheusUrl}${path}`).catch(() => null);
    if (!res || res.status !== 200) return null;
    return ((await res.json()) as { data: T }).data;
  };

  it("scrapes the target (up) and serves flock_ series through its HTTP API", async () => {
    const res = await client.completions.create({ model: "flock-demo", prompt: "The cook", max_tokens: 7 });
    const generated = res.usage!.completion_tokens;

    type Targets = { activeTargets: Array<{ health: string; lastError: string; scrapeUrl: string }> };
    let targets: Targets | null = null;
    const up = await until(async () => {
      targets = await api<Targets>("/api/v1/targets");
      return targets?.activeTargets.length === 2 && targets.activeTargets.every((t) => t.health === "up");
    }, 30_000, 200);
    expect(up, `target not up: ${JSON.stringify(targets)}\n${output}`).toBe(true);

    type Vector = { result: Array<{ metric: Record<string, string>; value: [number, string] }> };
    const query = encodeURIComponent('flock_generation_tokens_total{job="flock",model_name="flock-demo"}');
    let vector: Vector | null = null;
    const seen = await until(async () => {
      vector = await api<Vector>(`/api/v1/query?query=${query}`);
      return (vector?.result.length ?? 0) > 0 && Number(vector!.result[0].value[1]) >= generated;
    }, 30_000, 200);
    expect(seen, `no series: ${JSON.stringify(vector)}\n${output}`).toBe(true);
    const series = vector!.result[0];
    expect(series.metric).toMatchObject({ __name__: "flock_generation_tokens_total", job: "flock", model_name: "flock-demo" });
    expect(Number(series.value[1])).toBe(generated);

    const histogram = await api<Vector>(`/api/v1/query?query=${encodeURIComponent('flock_time_to_first_token_seconds_count{job="flock",model_name="flock-demo"}')}`);
    expect(Number(histogram!.result[0].value[1])).toBe(1);
    const upSeries = await api<Vector>(`/api/v1/query?query=${encodeURIComponent('up{job="flock"}')}`);
    expect(upSeries!.result[0].value[1]).toBe("1");
  });

  it("promtool check metrics accepts the exposition", async () => {
    await client.completions.create({ model: "spec", prompt: "The cook", max_tokens: 8, flock: { speculative: { policy: "fixed", k: 2 } } } as never);
    const exposition = await (await fetch(`${t.url}/metrics`, { headers: { authorization: `Bearer ${SCRAPE_KEY}` } })).text();
    const check = spawnSync("promtool", ["check", "metrics"], { input: exposition, encoding: "utf8", timeout: 30_000 });
    expect(check.status, `${check.stdout}${check.stderr}`).toBe(0);
    expect(`${check.stdout}${check.stderr}`.trim()).toBe("");
  });

  it("has every series the Grafana dashboard (deploy/grafana-dashboard.json) queries", async () => {
    // Traffic of each kind the dashboard shows: plain and speculative, finished requests.
    await client.completions.create({ model: "spec", prompt: "The cook", max_tokens: 8 });
    await client.completions.create({ model: "flock-demo", prompt: "The gull", max_tokens: 6 });
    const names = dashboardMetrics();
    expect(names.length).toBeGreaterThan(15);
    const missing = async () => {
      const absent: string[] = [];
      for (const name of names) {
        const series = await api<unknown[]>(`/api/v1/series?match[]=${encodeURIComponent(name)}`);
        if (!series || series.length === 0) absent.push(name);
      }
      return absent;
    };
    let absent: string[] = names;
    await until(async () => (absent = await missing()).length === 0, 30_000, 500);
    expect(absent, output).toEqual([]);
  });
  it("the Kubernetes job labels the pod, and the adapter's rule serves its queue as flock_queue_depth", async () => {
    type Rule = { seriesQuery: string; resources: { overrides: Record<string, { resource: string }> }; name: { matches: string; as: string }; metricsQuery: string };
    const values = parse(readFileSync(join(kubernetesDir, "adapter-values.yaml"), "utf8")) as { rules: { custom: Rule[] } };
    const rule = values.rules.custom.find((r) => r.name.as === "flock_queue_depth")!;
    expect(rule).toBeDefined();

    // The series the adapter discovers, with the labels it maps to the namespace and the pod.
    type Series = Array<Record<string, string>>;
    let series: Series | null = null;
    await until(async () => ((series = await api<Series>(`/api/v1/series?match[]=${encodeURIComponent(rule.seriesQuery)}`)) ?? []).length > 0, 30_000, 200);
    expect(series!.length).toBeGreaterThan(0);
    for (const s of series!) {
      expect(s.__name__).toMatch(new RegExp(rule.name.matches));
      expect(s).toMatchObject({ job: "flock-kubernetes", namespace: POD.namespace, pod: POD.name });
      expect(Object.keys(rule.resources.overrides).every((label) => label in s)).toBe(true);
    }

    // The HPA's query for this pod, as the adapter fills the template; a queue forms while more
    // requests than sequences run, and the metric must see it.
    const query = rule.metricsQuery
      .replace("<<.Series>>", series![0].__name__)
      .replace("<<.LabelMatchers>>", `namespace="${POD.namespace}",pod=~"${POD.name}"`)
      .replace("<<.GroupBy>>", "pod");
    type Vector = { result: Array<{ metric: Record<string, string>; value: [number, string] }> };
    let vector: Vector | null = null;
    const idle = await until(async () => (vector = await api<Vector>(`/api/v1/query?query=${encodeURIComponent(query)}`))?.result[0]?.value[1] === "0", 30_000, 100);
    expect(idle, `${query} while idle: ${JSON.stringify(vector)}`).toBe(true);
    let busy = true;
    const traffic = (async () => {
      for (let seed = 0; busy; seed += 12) {
        await Promise.all(Array.from({ length: 12 }, (_, i) => client.completions.create({ model: "flock-demo", prompt: "The cook", max_tokens: 200, seed: seed + i }).catch(() => null)));
      }
    })();
    try {
      await until(async () => {
        vector = await api<Vector>(`/api/v1/query?query=${encodeURIComponent(query)}`);
        return Number(vector?.result[0]?.value[1] ?? 0) > 0;
      }, 30_000, 100);
    } finally {
      busy = false;
      await traffic;
    }
    expect(vector!.result.map((r) => r.metric), query).toEqual([{ pod: POD.name }]);
    expect(Number(vector!.result[0].value[1]), `${query}: no queue seen`).toBeGreaterThan(0);
  });
});
