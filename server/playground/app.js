// @ts-check
// The playground's controller: connects (asking for an API key when the server wants one), lists
// the models with the options each kind of pipeline takes, streams a chat or a raw completion
// with flock's per-token detail switched on, and redraws the token view and the live panel at
// most once per animation frame.
import { Api, ApiError } from "./api.js";
import { drawAlpha, drawRounds, drawUsage, Palette } from "./charts.js";
import { TokenView } from "./tokens.js";
import { Transcript } from "./transcript.js";

/** @typedef {import("./api.js").ModelInfo} ModelInfo */

/**
 * @template {HTMLElement} T
 * @param {string} id
 * @returns {T}
 */
function $(id) {
  const node = document.getElementById(id);
  if (!node) throw new Error(`the page lacks #${id}`);
  return /** @type {T} */ (node);
}

const ui = {
  connection: $("connection"),
  keyButton: /** @type {HTMLButtonElement} */ ($("key-button")),
  form: /** @type {HTMLFormElement} */ ($("controls")),
  model: /** @type {HTMLSelectElement} */ ($("model")),
  modelKind: $("model-kind"),
  systemField: $("system-field"),
  system: /** @type {HTMLTextAreaElement} */ ($("system")),
  prompt: /** @type {HTMLTextAreaElement} */ ($("prompt")),
  promptLabel: $("prompt-label"),
  send: /** @type {HTMLButtonElement} */ ($("send")),
  stop: /** @type {HTMLButtonElement} */ ($("stop")),
  clear: /** @type {HTMLButtonElement} */ ($("clear")),
  history: $("history"),
  tokens: $("tokens"),
  tooltip: $("tooltip"),
  finish: $("finish"),
  error: $("error"),
  stats: $("stats"),
  jsonSchema: /** @type {HTMLTextAreaElement} */ ($("json-schema")),
  tools: /** @type {HTMLTextAreaElement} */ ($("tools")),
  toolChoice: /** @type {HTMLSelectElement} */ ($("tool-choice")),
  speculativeOptions: $("speculative-options"),
  fusionOptions: $("fusion-options"),
  fusionExperts: $("fusion-experts"),
  routingOptions: $("routing-options"),
  roundsFigure: $("rounds-figure"),
  alphaFigure: $("alpha-figure"),
  expertsFigure: $("experts-figure"),
  expertsCaption: $("experts-caption"),
  roundsChart: /** @type {HTMLCanvasElement} */ ($("rounds-chart")),
  alphaChart: /** @type {HTMLCanvasElement} */ ($("alpha-chart")),
  expertsChart: /** @type {HTMLCanvasElement} */ ($("experts-chart")),
  keyDialog: /** @type {HTMLDialogElement} */ ($("key-dialog")),
  keyForm: /** @type {HTMLFormElement} */ ($("key-form")),
  keyInput: /** @type {HTMLInputElement} */ ($("key-input")),
  keyMessage: $("key-message"),
  legend: $("legend"),
  routingMode: /** @type {HTMLSelectElement} */ ($("routing-mode")),
  routingExpert: /** @type {HTMLSelectElement} */ ($("routing-expert")),
  routingExpertField: $("routing-expert-field"),
};

const KIND_TEXT = {
  plain: "One model decodes alone.",
  speculative: "Speculative decoding: a draft model proposes candidates, this model verifies them (SpecDec++ picks how many).",
  fusion: "Dynamic logit fusion: small experts steer this model; α is re-solved at every token.",
  routed: "Routed LoRA experts: every token is served by the experts its gates pick.",
};

const api = new Api(document.baseURI);
const palette = new Palette();
const view = new TokenView(ui.tokens, ui.tooltip, /** @type {HTMLElement} */ (ui.tokens.parentElement), palette);
/** @type {Map<string, ModelInfo>} */
let models = new Map();
/** Earlier turns of the chat. @type {Array<{ role: "user" | "assistant", content: string }>} */
let conversation = [];
/** @type {{ transcript: Transcript, abort: AbortController } | null} */
let running = null;
/** The message (or raw prompt) whose answer the token view shows. @type {string | null} */
let shownPrompt = null;
/** That answer, once finished, until the next message makes both a turn of the conversation. @type {string | null} */
let shownAnswer = null;
let frame = 0;

// ---- connection and API key ----

async function connect() {
  setConnection("connecting…");
  try {
    const list = await api.models();
    models = new Map(list.map((m) => [m.id, m]));
    fillModels(list);
    setConnection(`${list.length} model${list.length === 1 ? "" : "s"}${api.key ? " · API key set" : ""}`);
    ui.keyButton.hidden = api.key === null;
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return askForKey(api.key ? "The server did not accept this key." : "This flock server requires an API key.");
    if (err instanceof ApiError && err.status === 503) {
      setConnection(`${err.message} Retrying…`, true);
      setTimeout(connect, 2000);
      return;
    }
    setConnection(err instanceof Error ? err.message : String(err), true);
  }
}

/**
 * @param {string} text
 * @param {boolean} [bad]
 */
function setConnection(text, bad = false) {
  ui.connection.textContent = text;
  ui.connection.classList.toggle("bad", bad);
}

/** @param {string} message */
function askForKey(message) {
  setConnection("API key required", true);
  ui.keyButton.hidden = false;
  ui.keyMessage.textContent = message;
  ui.keyInput.value = "";
  if (!ui.keyDialog.open) ui.keyDialog.showModal();
  ui.keyInput.focus();
}

ui.keyForm.addEventListener("submit", (e) => {
  e.preventDefault();
  const submitter = /** @type {HTMLButtonElement | null} */ (e.submitter);
  ui.keyDialog.close();
  if (submitter?.value === "cancel") return;
  api.setKey(ui.keyInput.value.trim());
  void connect();
});
ui.keyButton.addEventListener("click", () => askForKey("Enter the API key for this server (leave it empty to send none)."));

// ---- models and options ----

/** @param {ModelInfo[]} list */
function fillModels(list) {
  const previous = ui.model.value;
  ui.model.replaceChildren(
    ...list.map((m) => {
      const option = document.createElement("option");
      option.value = m.id;
      option.textContent = m.flock?.kind && m.flock.kind !== "plain" ? `${m.id} (${m.flock.kind})` : m.id;
      return option;
    }),
  );
  // The most interesting model first: one that shows adaptive decoding.
  const preferred = list.find((m) => m.id === previous) ?? list.find((m) => m.flock?.kind === "speculative") ?? list[0];
  if (preferred) ui.model.value = preferred.id;
  showOptions();
}

function kindOf(/** @type {string} */ id) {
  return models.get(id)?.flock?.kind ?? "unknown";
}

function showOptions() {
  const model = models.get(ui.model.value);
  const kind = kindOf(ui.model.value);
  ui.modelKind.textContent = KIND_TEXT[/** @type {keyof typeof KIND_TEXT} */ (kind)] ?? "";
  ui.speculativeOptions.hidden = kind !== "speculative";
  ui.fusionOptions.hidden = kind !== "fusion";
  ui.routingOptions.hidden = kind !== "routed";
  if (!running) showLegend(new Set(kind === "speculative" ? ["speculative"] : kind === "fusion" || kind === "routed" ? ["experts"] : []));
  ui.fusionExperts.replaceChildren();
  if (kind === "fusion") {
    for (const name of model?.flock?.experts ?? []) {
      const label = document.createElement("label");
      const box = document.createElement("input");
      box.type = "checkbox";
      box.checked = true;
      box.value = name;
      label.append(box, name);
      ui.fusionExperts.append(label);
    }
    if (ui.fusionExperts.childElementCount > 0) {
      const legend = document.createElement("legend");
      legend.textContent = "experts";
      ui.fusionExperts.prepend(legend);
    }
  }
  ui.routingExpert.replaceChildren(
    ...(kind === "routed" ? (model?.flock?.experts ?? []) : []).map((name) => {
      const option = document.createElement("option");
      option.value = option.textContent = name;
      return option;
    }),
  );
  showRoutingExpert();
}

/** The single-adapter baseline names its expert. */
function showRoutingExpert() {
  ui.routingExpertField.hidden = ui.routingMode.value !== "single";
}

ui.routingMode.addEventListener("change", showRoutingExpert);

ui.model.addEventListener("change", showOptions);

function endpoint() {
  const checked = /** @type {HTMLInputElement | null} */ (ui.form.querySelector("input[name=mode]:checked"));
  return checked?.value === "completion" ? "completion" : "chat";
}

function showMode() {
  const chat = endpoint() === "chat";
  ui.systemField.hidden = !chat;
  ui.clear.hidden = !chat;
  ui.promptLabel.textContent = chat ? "Message" : "Prompt (raw text, no chat template)";
  renderHistory();
}

for (const radio of ui.form.querySelectorAll("input[name=mode]")) radio.addEventListener("change", showMode);

/** @param {string} id */
function numberOf(id) {
  const input = /** @type {HTMLInputElement} */ ($(id));
  if (input.value.trim() === "") return undefined;
  const value = Number(input.value);
  return Number.isFinite(value) ? value : undefined;
}

/** @param {string} id */
function valueOf(id) {
  const value = /** @type {HTMLInputElement | HTMLSelectElement} */ ($(id)).value.trim();
  return value === "" ? undefined : value;
}

/** Drops undefined fields (JSON.stringify would too; this keeps the request readable in devtools). */
function defined(/** @type {Record<string, unknown>} */ object) {
  return Object.fromEntries(Object.entries(object).filter(([, v]) => v !== undefined));
}

/** flock's request extension for the selected model's kind; detail always on. */
function extension() {
  const kind = kindOf(ui.model.value);
  /** @type {Record<string, unknown>} */
  const flock = defined({ top_k: numberOf("top_k") || undefined, min_p: numberOf("min_p") || undefined });
  if (kind === "speculative") {
    const enabled = /** @type {HTMLInputElement} */ ($("spec-enabled")).checked;
    const threshold = valueOf("spec-threshold");
    flock.speculative = enabled
      ? defined({
          detail: true,
          policy: valueOf("spec-policy"),
          k: numberOf("spec-k"),
          threshold: threshold === undefined ? undefined : threshold === "auto" ? "auto" : Number(threshold),
          max_candidates: numberOf("spec-max"),
        })
      : { enabled: false };
  } else if (kind === "fusion") {
    const boxes = [...ui.fusionExperts.querySelectorAll("input")];
    const chosen = boxes.filter((b) => b.checked).map((b) => b.value);
    flock.fusion = defined({
      detail: true,
      mode: valueOf("fusion-mode"),
      alpha: numberOf("fusion-alpha"),
      experts: chosen.length < boxes.length && chosen.length > 0 ? chosen : undefined,
    });
  } else if (kind === "routed") {
    const mode = valueOf("routing-mode");
    flock.routing = defined({ detail: true, mode, top_k: numberOf("routing-top-k"), expert: mode === "single" ? valueOf("routing-expert") : undefined });
  }
  return Object.keys(flock).length > 0 ? { flock } : {};
}

// ---- generation ----

async function generate() {
  if (running) return;
  const model = ui.model.value;
  const text = ui.prompt.value;
  if (!model) return showError("No model to ask: the server lists none yet.");
  if (text.trim() === "") {
    ui.prompt.focus();
    return showError("Write a message or a prompt first.");
  }
  const chat = endpoint() === "chat";
  const structured = structuredFields(chat);
  if (structured === null) return;
  if (chat && shownPrompt !== null && shownAnswer !== null) conversation.push({ role: "user", content: shownPrompt }, { role: "assistant", content: shownAnswer });
  shownPrompt = text;
  shownAnswer = null;
  const common = {
    model,
    stream: true,
    stream_options: { include_usage: true },
    max_tokens: numberOf("max_tokens"),
    temperature: numberOf("temperature"),
    top_p: numberOf("top_p"),
    seed: numberOf("seed"),
    ...structured,
    ...extension(),
  };
  const system = ui.system.value.trim();
  const body = chat
    ? defined({
        ...common,
        messages: [...(system ? [{ role: "system", content: system }] : []), ...conversation, { role: "user", content: text }],
        logprobs: true,
        top_logprobs: 5,
      })
    : defined({ ...common, prompt: text, logprobs: 5 });

  const transcript = new Transcript(chat ? "chat" : "completion");
  running = { transcript, abort: new AbortController() };
  view.reset(transcript);
  showError(null);
  ui.finish.textContent = "waiting for the first token…";
  setState("streaming");
  renderHistory();
  draw();
  try {
    for await (const chunk of api.stream(chat ? "v1/chat/completions" : "v1/completions", body, running.abort.signal)) {
      transcript.add(chunk);
      scheduleDraw();
    }
    if (chat) {
      shownAnswer = transcript.content;
      ui.prompt.value = "";
    }
  } catch (err) {
    if (err instanceof DOMException && err.name === "AbortError") {
      transcript.finishReason ??= "stopped";
    } else if (err instanceof ApiError && err.status === 401) {
      askForKey("The server did not accept the request's API key.");
      showError(err.message);
    } else {
      showError(err instanceof Error ? err.message : String(err));
    }
  } finally {
    running = null;
    cancelAnimationFrame(frame);
    frame = 0;
    draw();
    setState("done");
  }
}

/**
 * response_format from the JSON schema box, tools and tool_choice (chat) from the tools box; null,
 * with the error shown, when a box does not hold JSON.
 * @param {boolean} chat
 * @returns {Record<string, unknown> | null}
 */
function structuredFields(chat) {
  /** @type {Record<string, unknown>} */
  const fields = {};
  const parse = (/** @type {HTMLTextAreaElement} */ box, /** @type {string} */ what) => {
    try {
      return JSON.parse(box.value);
    } catch (err) {
      showError(`The ${what} is not JSON: ${err instanceof Error ? err.message : String(err)}`);
      box.focus();
      return undefined;
    }
  };
  if (ui.jsonSchema.value.trim() !== "") {
    const schema = parse(ui.jsonSchema, "JSON schema");
    if (schema === undefined) return null;
    fields.response_format = { type: "json_schema", json_schema: { name: "playground", schema } };
  }
  if (chat && ui.tools.value.trim() !== "") {
    const tools = parse(ui.tools, "tools list");
    if (tools === undefined) return null;
    fields.tools = tools;
    fields.tool_choice = ui.toolChoice.value;
  }
  return fields;
}

/** The token area's state, for assistive technology and for tests: idle, streaming or done. */
function setState(/** @type {"idle" | "streaming" | "done"} */ state) {
  const on = state === "streaming";
  ui.send.disabled = on;
  ui.stop.disabled = !on;
  ui.tokens.setAttribute("aria-busy", String(on));
  ui.tokens.dataset.state = state;
}

/** @param {string | null} message */
function showError(message) {
  ui.error.hidden = message === null;
  ui.error.textContent = message ?? "";
}

function stop() {
  running?.abort.abort();
}

ui.form.addEventListener("submit", (e) => {
  e.preventDefault();
  void generate();
});
ui.stop.addEventListener("click", stop);
ui.clear.addEventListener("click", () => {
  if (running) return;
  conversation = [];
  shownPrompt = null;
  shownAnswer = null;
  view.reset(new Transcript("chat"));
  ui.finish.textContent = "";
  setState("idle");
  renderHistory();
  draw();
  ui.prompt.focus();
});

document.addEventListener("keydown", (e) => {
  if (ui.keyDialog.open) return;
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
    e.preventDefault();
    void generate();
  } else if (e.key === "Escape" && running) {
    e.preventDefault();
    stop();
  }
});

// ---- drawing ----

function scheduleDraw() {
  if (frame === 0) frame = requestAnimationFrame(() => {
    frame = 0;
    draw();
  });
}

/** Earlier turns, then the message whose answer the token view shows. */
function renderHistory() {
  const chat = endpoint() === "chat";
  const shown = [...(chat ? conversation : []), ...(shownPrompt !== null ? [{ role: chat ? "user" : "prompt", content: shownPrompt }] : [])];
  ui.history.replaceChildren(
    ...shown.map((turn) => {
      const div = document.createElement("div");
      div.className = `turn ${turn.role}`;
      const who = document.createElement("span");
      who.className = "who";
      who.textContent = turn.role;
      div.append(who, turn.content);
      return div;
    }),
  );
}

/** Legend entries for what the answer shows. @param {Set<string>} features */
function showLegend(features) {
  for (const item of ui.legend.querySelectorAll("li")) {
    const feature = item.dataset.feature ?? "";
    item.hidden = !(features.has(feature) || (feature === "any" && features.size > 0));
  }
}

function draw() {
  view.render();
  const t = view.transcript;
  if (!t) return;
  if (t.tokens.length > 0) {
    const features = new Set(t.features.map((f) => (f === "speculative" ? f : "experts")));
    showLegend(features.size > 0 ? features : new Set(["plain"]));
  }
  drawStats(t);
  const rounds = t.rounds();
  ui.roundsFigure.hidden = rounds.length === 0;
  if (rounds.length > 0) drawRounds(ui.roundsChart, rounds);
  const alphas = t.alphas();
  ui.alphaFigure.hidden = alphas.length === 0;
  if (alphas.length > 0) drawAlpha(ui.alphaChart, alphas, palette);
  const usage = t.expertUsage();
  ui.expertsFigure.hidden = usage === null;
  if (usage) {
    ui.expertsCaption.textContent = usage.kind === "fusion" ? "Active fusion expert (tokens)" : "Routed expert usage (share of routing weight)";
    drawUsage(ui.expertsChart, usage.usage, palette, (v, total) => (usage.kind === "fusion" ? `${v} (${Math.round((100 * v) / Math.max(1, total))}%)` : `${((100 * v) / Math.max(1e-9, total)).toFixed(1)}%`));
  }
  if (t.done) {
    const reason = { stop: "finished (stop)", length: "finished: max_tokens reached", stopped: "stopped", tool_calls: `called: ${t.content}` }[t.finishReason ?? ""] ?? `finished (${t.finishReason})`;
    const tokens = t.tokens.length || (t.usage?.completion_tokens ?? 0);
    ui.finish.textContent = `${reason} · ${tokens} tokens${t.usage ? ` · prompt ${t.usage.prompt_tokens} tokens` : ""}`;
  } else if (t.tokens.length > 0) ui.finish.textContent = "streaming…";
}

/** @param {Transcript} t */
function drawStats(t) {
  /** @type {Array<[string, string]>} */
  const rows = [];
  const fixed = (/** @type {number | null} */ v, digits = 2) => (v === null ? "–" : v.toFixed(digits));
  const percent = (/** @type {number | null} */ v) => (v === null ? "–" : `${(100 * v).toFixed(1)}%`);
  const end = t.done && t.lastTokenAt !== null ? t.lastTokenAt : performance.now();
  rows.push(["tokens", String(t.tokens.length)]);
  rows.push(["time to first token", t.firstTokenAt === null ? "–" : `${Math.round(t.firstTokenAt - t.startedAt)} ms`]);
  rows.push(["tokens/s", fixed(t.tokensPerSecond, 1)]);
  rows.push(["elapsed", `${((end - t.startedAt) / 1000).toFixed(2)} s`]);
  if (t.cursors.speculative > 0 || t.summary?.speculative) {
    const s = t.speculativeStats();
    rows.push(["rounds", String(s.rounds)]);
    rows.push(["drafted / accepted", `${s.drafted} / ${s.accepted}`]);
    rows.push(["acceptance rate", percent(s.acceptanceRate)]);
    rows.push(["mean candidate length", fixed(s.meanCandidateLength)]);
    rows.push(["tokens per round", fixed(s.tokensPerRound)]);
    if (s.meanPredicted !== null) rows.push(["mean P̂ vs min(1, p/q)", `${percent(s.meanPredicted)} vs ${percent(s.meanAcceptance)}`]);
  }
  const alphas = t.alphas();
  if (alphas.length > 0) rows.push(["mean α", fixed(alphas.reduce((a, p) => a + p.alpha, 0) / alphas.length)]);
  if (t.summary?.routing) rows.push(["routing", `${t.summary.routing.mode ?? ""} ${t.summary.routing.method ?? ""}`.trim()]);
  ui.stats.replaceChildren(
    ...rows.flatMap(([term, value]) => {
      const dt = document.createElement("dt");
      dt.textContent = term;
      const dd = document.createElement("dd");
      dd.textContent = value;
      return [dt, dd];
    }),
  );
}

window.addEventListener("resize", () => draw());

setState("idle");
showMode();
void connect();
