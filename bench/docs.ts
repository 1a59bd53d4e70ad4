// npm run bench:docs [-- --check]
// Writes the benchmark tables of the docs from bench/results/*.json (and the tables the code
// holds, such as the request fields' fates, between `<!-- table:NAME -->` markers). In any docs/*.md page,
// the lines between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` become: how the run was
// made (command, date, commit, machine) and its rows, one table per row shape, read from
// bench/results/NAME.json. Prose stays outside the markers, so a table is never typed by hand.
// Between `<!-- targets:NAME -->` markers: the targets a benchmark is held to (TARGETS), each
// with the figure its results give and whether it is met, so no verdict is typed by hand either.
// --check changes nothing and exits 1 when a page differs from what the results give (the test
// suite runs it).
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { renderFieldTable } from "../server/request-fields.js";
import type { BenchReport } from "./report.js";

const root = join(import.meta.dirname, "..");
const docs = join(root, "docs");
const results = join(root, "bench", "results");

type Row = BenchReport["rows"][number];
interface Saved extends BenchReport {
  machine?: { cpu?: string; cores?: number; node?: string; nodeLlamaCpp?: string; date?: string; commit?: string };
}

/** camelCase → words: `tokensPerSecond` → `tokens per second`. */
const heading = (key: string) => key.replace(/([a-z0-9])([A-Z])/g, "$1 $2").toLowerCase();

function cell(value: Row[string]): string {
  if (value === null || value === undefined) return "–";
  if (typeof value === "boolean") return value ? "yes" : "no";
  if (typeof value === "number") {
    if (Number.isInteger(value)) return String(value);
    const magnitude = Math.abs(value);
    return value.toFixed(magnitude >= 100 ? 0 : magnitude >= 1 ? 2 : 3);
  }
  return String(value).replaceAll("|", "\\|").replaceAll("\n", " ");
}

/** Rows in tables: consecutive rows with the same keys share one. */
function tables(rows: readonly Row[]): string[] {
  const groups: Row[][] = [];
  for (const row of rows) {
    const last = groups.at(-1);
    if (last && Object.keys(last[0]).join() === Object.keys(row).join()) last.push(row);
    else groups.push([row]);
  }
  return groups.map((group) => {
    const keys = Object.keys(group[0]);
    return [`| ${keys.map(heading).join(" | ")} |`, `|${keys.map(() => "---").join("|")}|`, ...group.map((r) => `| ${keys.map((k) => cell(r[k])).join(" | ")} |`)].join("\n");
  });
}

export function renderResult(name: string): string {
  const file = join(results, `${name}.json`);
  if (!existsSync(file)) throw new Error(`bench/results/${name}.json does not exist: run the benchmark first`);
  const saved = JSON.parse(readFileSync(file, "utf8")) as Saved;
  const m = saved.machine ?? {};
  const how = [
    `\`${saved.command}\``,
    m.date?.slice(0, 10),
    m.commit ? `commit ${m.commit}` : undefined,
    m.cpu ? `${m.cpu} (${m.cores} cores)` : undefined,
    m.node ? `Node ${m.node}` : undefined,
    m.nodeLlamaCpp ? `node-llama-cpp ${m.nodeLlamaCpp}` : undefined,
  ].filter(Boolean);
  return [`Run: ${how.join(" · ")}`, ...tables(saved.rows)].join("\n\n");
}

const MARKER = /<!-- bench:([\w.-]+) -->\n[\s\S]*?<!-- \/bench:\1 -->/g;

/** Tables the code itself holds, between `<!-- table:NAME -->` markers. */
const CODE_TABLES: Record<string, () => string> = { "request-fields": renderFieldTable };
const CODE_MARKER = /<!-- table:([\w.-]+) -->\n[\s\S]*?<!-- \/table:\1 -->/g;

function renderCodeTable(name: string): string {
  const render = CODE_TABLES[name];
  if (!render) throw new Error(`no table named ${name} (known: ${Object.keys(CODE_TABLES).join(", ")})`);
  return render();
}

/** A target a benchmark is held to: what it asks, the figure the rows give, and its bound (a ratio at least, or a time in ms at most). */
type Target = { goal: string; measured: (rows: readonly Row[]) => number } & ({ atLeast: number } | { atMostMs: number });

/** The one row whose fields equal `where` (a missing row is a renamed variant: fail loudly). */
function rowWhere(rows: readonly Row[], where: Row): Row {
  const row = rows.find((r) => Object.entries(where).every(([k, v]) => r[k] === v));
  if (!row) throw new Error(`no row ${JSON.stringify(where)}`);
  return row;
}
const num = (row: Row, key: string) => row[key] as number;

/** Prompt lookup's rate over llama-server's best n-gram setting's, on one workload and temperature. */
const lookupOverNgram = (workload: string, temperature: number) => (rows: readonly Row[]) => {
  const here = rows.filter((r) => r.workload === workload && r.temperature === temperature);
  const ngram = Math.max(...here.filter((r) => String(r.variant).startsWith("llama-server, ngram")).map((r) => num(r, "tokensPerSecond")));
  return num(rowWhere(here, { variant: "flock, prompt lookup" }), "tokensPerSecond") / ngram;
};

/** Constrained SpecDec++ (rejection verification) over constrained target-only decoding at T = 0. */
const constrainedSpeedup = (rows: readonly Row[]) => num(rowWhere(rows, { temperature: 0, variant: "specdec++, rejection" }), "vsTargetOnly");

/** The best of SpecDec++ rows (h = auto, rejection verification) over the best fixed K of the same temperature, both against target-only. */
const overBestFixed = (temperature: number, predictors: readonly string[]) => (rows: readonly Row[]) => {
  const here = rows.filter((r) => r.temperature === temperature);
  const fixed = Math.max(...here.filter((r) => /^fixed K=\d+$/.test(String(r.variant))).map((r) => num(r, "vsTargetOnly")));
  return Math.max(...predictors.map((p) => num(rowWhere(here, { variant: `SpecDec++ h=auto (${p})` }), "vsTargetOnly"))) / fixed;
};

/** The worst of a column over the rows of one vocabulary size (both shapes of logits). */
const worstAt = (vocabulary: number, key: string) => (rows: readonly Row[]) => Math.max(...rows.filter((r) => r.vocabulary === vocabulary).map((r) => num(r, key)));

const TARGETS: Record<string, Target[]> = {
  grammar: [
    { goal: "flock's grammar cost per position at 151,936 tokens, the schema's masks cached", measured: worstAt(151_936, "grammarMs"), atMostMs: 0.1 },
    { goal: "flock's grammar cost per position at 151,936 tokens, first request with the schema", measured: worstAt(151_936, "firstGrammarMs"), atMostMs: 0.1 },
  ],
  spec: [
    ...[1, 0].flatMap((temperature) => [
      { goal: `SpecDec++, default predictor (online), over the best fixed K, T = ${temperature}`, measured: overBestFixed(temperature, ["online logistic"]), atLeast: 1 },
      { goal: `SpecDec++, a trained head (the better view), over the best fixed K, T = ${temperature}`, measured: overBestFixed(temperature, ["authors' head", "head, candidate embedding"]), atLeast: 1.07 },
    ]),
    {
      goal: "coupled SpecDec++ over rejection SpecDec++ (default predictor), T = 1",
      measured: (rows) => num(rowWhere(rows, { temperature: 1, variant: "SpecDec++ h=auto (online logistic) [coupled]" }), "vsTargetOnly") / num(rowWhere(rows, { temperature: 1, variant: "SpecDec++ h=auto (online logistic)" }), "vsTargetOnly"),
      atLeast: 0.9,
    },
  ],
  "spec-json": [{ goal: "constrained SpecDec++ over constrained target-only, T = 0", measured: constrainedSpeedup, atLeast: 1.5 }],
  "spec-json-qwen2": [{ goal: "constrained SpecDec++ over constrained target-only at 151,936 tokens, T = 0", measured: constrainedSpeedup, atLeast: 1.5 }],
  "peer-spec": [0, 1].map((temperature) => ({
    goal: `flock's default over llama-server's best draft setting, T = ${temperature}`,
    measured: (rows) => num(rowWhere(rows, { temperature, variant: "flock, default (specdec++)" }), "vsLlamaServerBestDraft"),
    atLeast: temperature === 0 ? 1.1 : 1.3,
  })),
  "spec-lookup": [
    {
      goal: "an exact Predicted Output over the target alone, T = 0 (the slower workload)",
      measured: (rows) => Math.min(...rows.filter((r) => r.temperature === 0 && String(r.variant).startsWith("flock, Predicted Output")).map((r) => num(r, "vsOwnTargetOnly"))),
      atLeast: 3,
    },
    ...["quote", "rewrite (every 10th word edited)"].flatMap((workload) =>
      [0, 1].map((temperature) => ({
        goal: `prompt lookup over llama-server's best n-gram setting, ${workload.split(" ")[0]}, T = ${temperature}`,
        measured: lookupOverNgram(workload, temperature),
        atLeast: 1.2,
      })),
    ),
  ],
};
const TARGET_MARKER = /<!-- targets:([\w.-]+) -->\n[\s\S]*?<!-- \/targets:\1 -->/g;

export function renderTargets(name: string): string {
  const targets = TARGETS[name];
  if (!targets) throw new Error(`no targets for ${name} (known: ${Object.keys(TARGETS).join(", ")})`);
  const rows = (JSON.parse(readFileSync(join(results, `${name}.json`), "utf8")) as Saved).rows;
  return [
    "| target | bound | measured | met |",
    "|---|---|---|---|",
    ...targets.map((t) => {
      const measured = t.measured(rows);
      const [bound, figure, met] = "atLeast" in t ? [`≥ ${t.atLeast}×`, `${cell(measured)}×`, measured >= t.atLeast] : [`≤ ${t.atMostMs} ms`, `${cell(measured)} ms`, measured <= t.atMostMs];
      return `| ${t.goal} | ${bound} | ${figure} | ${met ? "yes" : "no"} |`;
    }),
  ].join("\n");
}

/**
 * bench:spec's stopping replay (its settings.stoppingReplayOverBestFixedK): what a perfect
 * predictor deciding after each draw under the cost-aware rule, and the best length per round in
 * hindsight, gain over the best fixed K on the run's own cost table.
 */
const REPLAY_MARKER = /<!-- stopping:([\w.-]+) -->\n[\s\S]*?<!-- \/stopping:\1 -->/g;

export function renderStoppingReplay(name: string): string {
  const saved = JSON.parse(readFileSync(join(results, `${name}.json`), "utf8")) as Saved;
  const replays = (saved.settings as { stoppingReplayOverBestFixedK?: Record<string, { perfectPredictor: number; hindsight: number; bestFixedK: number; rounds: number }> }).stoppingReplayOverBestFixedK;
  if (!replays) return "(this run recorded no replay: rerun the benchmark)";
  return [
    "| temperature | rounds replayed | best fixed K | perfect predictor, cost-aware rule | best length per round in hindsight |",
    "|---|---|---|---|---|",
    ...Object.entries(replays).map(([t, c]) => `| ${t} | ${c.rounds} | ${c.bestFixedK} | ${cell(c.perfectPredictor)}× | ${cell(c.hindsight)}× |`),
  ].join("\n");
}

/** A page with every marked table regenerated. */
export function regenerate(page: string): string {
  return page
    .replace(MARKER, (_, name: string) => `<!-- bench:${name} -->\n${renderResult(name)}\n<!-- /bench:${name} -->`)
    .replace(TARGET_MARKER, (_, name: string) => `<!-- targets:${name} -->\n${renderTargets(name)}\n<!-- /targets:${name} -->`)
    .replace(REPLAY_MARKER, (_, name: string) => `<!-- stopping:${name} -->\n${renderStoppingReplay(name)}\n<!-- /stopping:${name} -->`)
    .replace(CODE_MARKER, (_, name: string) => `<!-- table:${name} -->\n${renderCodeTable(name)}\n<!-- /table:${name} -->`);
}

/** The pages whose tables differ from what the results give. */
export function stalePages(): string[] {
  return readdirSync(docs)
    .filter((f) => f.endsWith(".md"))
    .filter((f) => {
      const page = readFileSync(join(docs, f), "utf8");
      return regenerate(page) !== page;
    });
}

if (import.meta.filename === process.argv[1]) {
  const { values } = parseArgs({ options: { check: { type: "boolean" } } });
  if (values.check) {
    const stale = stalePages();
    for (const f of stale) console.error(`docs/${f}: benchmark tables differ from bench/results (npm run bench:docs)`);
    process.exit(stale.length > 0 ? 1 : 0);
  }
  for (const f of readdirSync(docs).filter((name) => name.endsWith(".md"))) {
    const path = join(docs, f);
    const page = readFileSync(path, "utf8");
    const next = regenerate(page);
    if (next !== page) {
      writeFileSync(path, next);
      console.log(`docs/${f}: tables regenerated`);
    }
  }
}
