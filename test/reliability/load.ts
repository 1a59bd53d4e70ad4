// The load phase: C concurrent clients send N requests to a running flock — chat and legacy
// completions, streamed and not, spread over every pipeline kind the server reports — with
// client-side faults mixed in (abrupt disconnects mid-stream, TCP resets, slow readers,
// clients that never read, cancellation during prefill) and engine failures injected mid-generation (the x-flock-fault
// header). Every response is checked (sse.ts); nothing is retried. Bounded in count and time.
import { connect } from "node:net";
import { createRng, type Rng } from "../../decoding/rng.js";
import { FAULT_HEADER } from "../../engine/faults.js";
import { checkResponse, checkStream, type Endpoint, isOpenAIError } from "./sse.js";

export type ClientFault = "none" | "disconnect" | "reset" | "slow-reader" | "never-reader" | "cancel-prefill" | "engine-error";

export interface LoadOptions {
  url: string;
  requests: number;
  concurrency: number;
  seed: number;
  /** Served models by pipeline kind (plain, speculative, fusion, routed, …). */
  modelsByKind: Record<string, string[]>;
  /** Token ids that end a generation (suppressed with logit_bias where a request must run on). */
  endTokens: number[];
  /** Ordinary tokens (the language's words) for long prompts (cancellation during prefill). */
  wordTokens: number[];
  /** Share of requests with each fault; the rest are ordinary. */
  faultRates: Partial<Record<Exclude<ClientFault, "none">, number>>;
  /** Largest max_tokens an ordinary request asks for. */
  maxTokens: number;
  /** Bound on one request, ms. */
  requestTimeoutMs: number;
  /** The server's --write-timeout, ms: a stream never read must be ended within it (plus slack). */
  writeTimeoutMs: number;
  /** Largest n the server accepts (never-readers ask for it, to outgrow the socket buffers). */
  maxN: number;
  /** max_tokens of a never-reader's choices (the server's limit allows it). */
  neverReaderTokens: number;
  /** Bound on the whole phase, ms: requests not started by then are not sent. */
  budgetMs: number;
}

export type OutcomeClass =
  /** A well-formed 200 (non-streamed) or a stream that ended with [DONE]. */
  | "ok"
  /** A fault ran its course as planned (disconnect done, engine error reported as it should be, …). */
  | "fault-handled"
  /** An OpenAI-shaped 4xx (429 included). */
  | "4xx"
  /** A 5xx that no injected fault explains. */
  | "5xx"
  /** A stream or body that breaks the format (sse.ts), or an error without OpenAI's shape. */
  | "malformed"
  /** A mid-stream error event on a request without an injected fault. */
  | "error-event"
  /** The request failed at the transport level or ran past its bound. */
  | "transport";

export interface Outcome {
  index: number;
  endpoint: Endpoint;
  kind: string;
  model: string;
  stream: boolean;
  fault: ClientFault;
  status: number;
  class: OutcomeClass;
  detail?: string;
  /** Send → first content chunk (streams), ms. */
  ttftMs?: number;
  /** Send → last byte, ms. */
  latencyMs: number;
  /** Cancellation during prefill: whether the client gave up before any content arrived. */
  beforeFirstToken?: boolean;
}

interface Plan {
  index: number;
  endpoint: Endpoint;
  kind: string;
  model: string;
  stream: boolean;
  n: number;
  fault: ClientFault;
  body: Record<string, unknown>;
  headers: Record<string, string>;
  /** disconnect / reset: after this many content chunks. */
  cutAfter: number;
  /** cancel-prefill: abort this many ms after sending. */
  cancelAfterMs: number;
}

const WORDS = ["The", "captain", "cook", "mixes", "a", "pot", "harbor", "net", "sky", "comet", "garden", "rabbit", "she", "watches", "bright", "wet", "deck", "tiny", "soup", "star"];
const PROMPTS = ["Tell me a story.", "The sailor ties the", "Describe the kitchen.", "What does the worker plant?", "The captain pulls a wet net on the deck.", "Once upon a time"];

function sentence(rng: Rng, words: number): string {
  return Array.from({ length: words }, () => rng.pick(WORDS)).join(" ");
}

function planRequest(index: number, o: LoadOptions, rng: Rng): Plan {
  const kinds = Object.keys(o.modelsByKind).filter((k) => o.modelsByKind[k].length > 0).sort();
  const kind = rng.pick(kinds);
  const model = rng.pick(o.modelsByKind[kind]);
  const endpoint: Endpoint = rng.next() < 0.5 ? "chat" : "completions";
  let fault: ClientFault = "none";
  let u = rng.next();
  for (const [f, rate] of Object.entries(o.faultRates) as Array<[ClientFault, number]>) {
    if (u < rate) {
      fault = f;
      break;
    }
    u -= rate;
  }
  const streamedFault = fault === "disconnect" || fault === "reset" || fault === "slow-reader" || fault === "never-reader" || fault === "cancel-prefill";
  const stream = streamedFault || (fault === "engine-error" ? rng.next() < 0.75 : rng.next() < 0.7);
  const n = fault === "none" && rng.next() < 0.1 ? 2 : 1;
  const body: Record<string, unknown> = { model, stream, n, seed: rng.int(1_000_000) };
  const temperature = rng.pick([0, 0.7, 1, 1]);
  body.temperature = temperature;
  let maxTokens = 4 + rng.int(Math.max(1, o.maxTokens - 3));
  // Faults that need a generation still running when they strike: no end token, more tokens.
  const endless = fault !== "none" && fault !== "cancel-prefill";
  if (endless) {
    maxTokens = Math.max(48, o.maxTokens);
    body.logit_bias = Object.fromEntries(o.endTokens.map((t) => [String(t), -100]));
  }
  if (fault === "slow-reader") maxTokens = Math.min(maxTokens, 32);
  body.max_tokens = maxTokens;
  if (fault === "never-reader") {
    // The most output a request may ask for (every choice, 20 alternatives per token): more
    // than the socket buffers hold, so the server's writes block on a client that reads nothing.
    return {
      index,
      endpoint: "chat",
      kind,
      model,
      stream: true,
      n: o.maxN,
      fault,
      body: { ...body, n: o.maxN, max_tokens: o.neverReaderTokens, logprobs: true, top_logprobs: 20, messages: [{ role: "user", content: rng.pick(PROMPTS) }] },
      headers: {},
      cutAfter: 0,
      cancelAfterMs: 0,
    };
  }
  if (stream && rng.next() < 0.3) body.stream_options = { include_usage: true };
  if (fault === "none" && rng.next() < 0.15) body.stop = [rng.pick(WORDS.slice(1)), "\n"];
  if (fault === "cancel-prefill") {
    // A long prompt of ordinary word tokens, so the prefill takes a while (completions only).
    const length = 1500 + rng.int(1500);
    body.prompt = Array.from({ length }, () => rng.pick(o.wordTokens));
    body.max_tokens = 64;
    return { index, endpoint: "completions", kind, model, stream: true, n: 1, fault, body, headers: {}, cutAfter: 0, cancelAfterMs: 2 + rng.int(15) };
  }
  if (endpoint === "chat") {
    const messages: Array<{ role: string; content: string }> = [];
    if (rng.next() < 0.3) messages.push({ role: "system", content: "You tell short stories." });
    if (rng.next() < 0.2) messages.push({ role: "user", content: rng.pick(PROMPTS) }, { role: "assistant", content: sentence(rng, 6) });
    messages.push({ role: "user", content: rng.next() < 0.5 ? rng.pick(PROMPTS) : sentence(rng, 3 + rng.int(20)) });
    body.messages = messages;
    if (fault === "none" && rng.next() < 0.1) {
      body.logprobs = true;
      body.top_logprobs = rng.int(4);
    }
  } else {
    body.prompt = rng.next() < 0.5 ? rng.pick(PROMPTS) : sentence(rng, 2 + rng.int(30));
    // echo and logprobs together are refused (400): one or the other
    const extra = rng.next();
    if (fault === "none" && extra < 0.1) body.logprobs = rng.int(4);
    else if (fault === "none" && extra < 0.15) body.echo = true;
  }
  const headers: Record<string, string> = {};
  if (fault === "engine-error") headers[FAULT_HEADER] = `engine-error-after=${8 + rng.int(24)}`;
  return { index, endpoint, kind, model, stream, n, fault, body, headers, cutAfter: 1 + rng.int(5), cancelAfterMs: 0 };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Reads a fetch body to the end (or until `stop` says so), noting when content first arrives. */
async function readBody(
  res: Response,
  started: number,
  options: { delayMs?: () => number; stop?: (text: string, contentChunks: number) => boolean; cancelled?: AbortSignal } = {},
): Promise<{ text: string; ttftMs?: number; stopped: boolean }> {
  const reader = res.body!.getReader();
  const decoder = new TextDecoder();
  let text = "";
  let ttftMs: number | undefined;
  let chunks = 0;
  for (;;) {
    let result: Awaited<ReturnType<typeof reader.read>>;
    try {
      result = await reader.read();
    } catch (err) {
      // The client's own cancellation: what was read so far is what it got.
      if (options.cancelled?.aborted) return { text, ttftMs, stopped: true };
      throw err;
    }
    const { value, done } = result;
    if (done) break;
    text += decoder.decode(value, { stream: true });
    if (ttftMs === undefined && /"(content|text)":"[^"]/.test(text)) ttftMs = performance.now() - started;
    chunks = (text.match(/"finish_reason":null/g) ?? []).length;
    if (options.stop?.(text, chunks)) {
      await reader.cancel();
      return { text, ttftMs, stopped: true };
    }
    const delay = options.delayMs?.();
    if (delay) await sleep(delay);
  }
  text += decoder.decode();
  return { text, ttftMs, stopped: false };
}

/** An abrupt disconnect at the TCP level: a raw HTTP request, reset (RST) after `after` chunks. */
function resetAfterChunks(url: string, path: string, body: string, headers: Record<string, string>, after: number, timeoutMs: number): Promise<{ chunks: number; reset: boolean; status: number }> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), hostname);
    let raw = "";
    let settled = false;
    const finish = (result: { chunks: number; reset: boolean; status: number }) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve(result);
    };
    const timer = setTimeout(() => {
      socket.destroy();
      if (!settled) {
        settled = true;
        reject(new Error("raw request timed out"));
      }
    }, timeoutMs);
    const status = () => Number(raw.match(/^HTTP\/1\.1 (\d{3})/)?.[1] ?? 0);
    socket.on("connect", () => {
      const extra = Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join("");
      socket.write(`POST ${path} HTTP/1.1\r\nHost: ${hostname}:${port}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n${extra}connection: close\r\n\r\n${body}`);
    });
    socket.on("data", (d: Buffer) => {
      raw += d.toString("latin1");
      const chunks = (raw.match(/"finish_reason":null/g) ?? []).length;
      if (chunks >= after) {
        socket.resetAndDestroy();
        finish({ chunks, reset: true, status: status() });
      }
    });
    socket.on("error", () => finish({ chunks: 0, reset: false, status: status() }));
    socket.on("close", () => finish({ chunks: (raw.match(/"finish_reason":null/g) ?? []).length, reset: false, status: status() }));
  });
}

/**
 * A client that sends a stream request and reads nothing until the server's write timeout (and
 * queueing) has passed; then it reads what is there. The server must by then have ended the
 * stream — finished it, or given up on the stalled writes and closed the connection — so its
 * sequences are free again.
 */
function neverRead(url: string, path: string, body: string, waitMs: number): Promise<{ status: number; ended: boolean }> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), hostname);
    let raw = "";
    let ended = false;
    socket.on("connect", () => {
      socket.write(`POST ${path} HTTP/1.1\r\nHost: ${hostname}:${port}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
      socket.pause();
    });
    socket.on("data", (d: Buffer) => {
      raw += d.toString("latin1");
      if (raw.includes("data: [DONE]")) ended = true;
    });
    const done = () => {
      clearTimeout(reading);
      socket.destroy();
      resolve({ status: Number(raw.match(/^HTTP\/1\.1 (\d{3})/)?.[1] ?? 0), ended: ended || closed });
    };
    let closed = false;
    socket.on("end", () => (closed = true));
    socket.on("close", () => {
      closed = true;
      done();
    });
    socket.on("error", (err) => (closed ? undefined : err.message.includes("ECONNRESET") ? (closed = true) : reject(err)));
    // After the wait: read what the buffers hold; a stream the server ended shows its end at once.
    let reading: NodeJS.Timeout | undefined;
    setTimeout(() => {
      socket.resume();
      reading = setTimeout(done, 3_000);
    }, waitMs);
  });
}

async function execute(plan: Plan, o: LoadOptions): Promise<Outcome> {
  const path = plan.endpoint === "chat" ? "/v1/chat/completions" : "/v1/completions";
  const base = { index: plan.index, endpoint: plan.endpoint, kind: plan.kind, model: plan.model, stream: plan.stream, fault: plan.fault };
  const started = performance.now();
  const elapsed = () => performance.now() - started;
  const json = JSON.stringify(plan.body);
  const outcome = (status: number, cls: OutcomeClass, detail?: string, extra: Partial<Outcome> = {}): Outcome => ({
    ...base,
    status,
    class: cls,
    ...(detail ? { detail } : {}),
    latencyMs: elapsed(),
    ...extra,
  });

  if (plan.fault === "reset") {
    try {
      const r = await resetAfterChunks(o.url, path, json, plan.headers, plan.cutAfter, o.requestTimeoutMs);
      if (r.status >= 500) return outcome(r.status, "5xx", "before the reset");
      return outcome(r.status, r.status === 200 ? "fault-handled" : "4xx", r.reset ? undefined : "the stream ended before the reset");
    } catch (err) {
      return outcome(0, "transport", (err as Error).message);
    }
  }

  if (plan.fault === "never-reader") {
    try {
      // Long enough for a slow pipeline (a routed model, n choices on two sequences) to fill the
      // socket buffers, then stall for the write timeout.
      const r = await neverRead(o.url, path, json, o.writeTimeoutMs + 25_000);
      if (r.status >= 500) return outcome(r.status, "5xx", "before the stream started");
      if (r.status !== 200) return outcome(r.status, "4xx");
      return outcome(200, r.ended ? "fault-handled" : "transport", r.ended ? undefined : "the server held a stream nobody read past its write timeout");
    } catch (err) {
      return outcome(0, "transport", (err as Error).message);
    }
  }

  const controller = new AbortController();
  const signal = AbortSignal.any([controller.signal, AbortSignal.timeout(o.requestTimeoutMs)]);
  let res: Response;
  let cancelTimer: NodeJS.Timeout | undefined;
  if (plan.fault === "cancel-prefill") cancelTimer = setTimeout(() => controller.abort(), plan.cancelAfterMs);
  try {
    res = await fetch(o.url + path, { method: "POST", headers: { "content-type": "application/json", ...plan.headers }, body: json, signal });
  } catch (err) {
    clearTimeout(cancelTimer);
    if (plan.fault === "cancel-prefill" && controller.signal.aborted) return outcome(0, "fault-handled", undefined, { beforeFirstToken: true });
    return outcome(0, "transport", (err as Error).message);
  }

  try {
    if (res.status !== 200) {
      clearTimeout(cancelTimer);
      const text = await res.text();
      let body: unknown = null;
      try {
        body = JSON.parse(text);
      } catch {
        // judged below
      }
      if (!isOpenAIError(body)) return outcome(res.status, "malformed", `status ${res.status} without an OpenAI error body: ${text.slice(0, 160)}`);
      if (plan.fault === "engine-error" && !plan.stream && res.status === 500 && body.error.type === "server_error") return outcome(500, "fault-handled");
      if (res.status >= 500) return outcome(res.status, "5xx", `${body.error.type}: ${body.error.message}`);
      return outcome(res.status, "4xx", `${body.error.code ?? body.error.type}`);
    }

    if (!plan.stream) {
      const text = await res.text();
      let body: unknown;
      try {
        body = JSON.parse(text);
      } catch {
        return outcome(200, "malformed", `not JSON: ${text.slice(0, 160)}`);
      }
      const wrong = checkResponse(body, plan.endpoint, plan.n);
      if (wrong) return outcome(200, "malformed", wrong);
      if (plan.fault === "engine-error") return outcome(200, "error-event", "the injected fault did not fire");
      return outcome(200, "ok");
    }

    if (plan.fault === "disconnect" || plan.fault === "cancel-prefill") {
      const read = await readBody(res, started, {
        stop: plan.fault === "disconnect" ? (_, chunks) => chunks >= plan.cutAfter : undefined,
        cancelled: controller.signal,
      });
      clearTimeout(cancelTimer);
      if (plan.fault === "disconnect") controller.abort();
      const verdict = checkStream(read.text, plan.endpoint, plan.n, !read.stopped);
      if (verdict.malformed) return outcome(200, "malformed", verdict.malformed);
      if (!read.stopped && verdict.ending === "error") return outcome(200, "error-event", verdict.error?.message);
      return outcome(200, "fault-handled", read.stopped ? undefined : "ended before the client cut it", { ttftMs: read.ttftMs, beforeFirstToken: read.ttftMs === undefined });
    }

    let stalled = false;
    const read = await readBody(res, started, {
      delayMs:
        plan.fault === "slow-reader"
          ? () => {
              if (!stalled) {
                stalled = true;
                return 1_500; // one long stall: the server must neither give up nor buffer badly
              }
              return 20 + Math.floor(Math.random() * 60);
            }
          : undefined,
    });
    const verdict = checkStream(read.text, plan.endpoint, plan.n);
    if (verdict.malformed) return outcome(200, "malformed", verdict.malformed);
    if (plan.fault === "engine-error") {
      if (verdict.ending === "error" && verdict.error?.type === "server_error") return outcome(200, "fault-handled", undefined, { ttftMs: read.ttftMs });
      return outcome(200, "error-event", verdict.ending === "done" ? "the injected fault did not fire" : `error event ${verdict.error?.type}`);
    }
    if (verdict.ending === "error") return outcome(200, "error-event", `${verdict.error?.type}: ${verdict.error?.message}`);
    return outcome(200, plan.fault === "none" ? "ok" : "fault-handled", undefined, { ttftMs: read.ttftMs });
  } catch (err) {
    clearTimeout(cancelTimer);
    if (plan.fault === "cancel-prefill" && controller.signal.aborted) return outcome(200, "fault-handled", undefined, { beforeFirstToken: true });
    return outcome(res.status, "transport", (err as Error).message);
  }
}

/** Runs the phase; outcomes in request order. */
export async function runLoad(o: LoadOptions, onProgress?: (done: number) => void): Promise<{ outcomes: Outcome[]; wallMs: number; notSent: number }> {
  const rng = createRng(o.seed);
  const plans = Array.from({ length: o.requests }, (_, i) => planRequest(i, o, rng));
  const outcomes: Outcome[] = [];
  const started = performance.now();
  let next = 0;
  let notSent = 0;
  const worker = async () => {
    for (;;) {
      const i = next++;
      if (i >= plans.length) return;
      if (performance.now() - started > o.budgetMs) {
        notSent++;
        continue;
      }
      outcomes[i] = await execute(plans[i], o);
      onProgress?.(outcomes.filter(Boolean).length);
    }
  };
  await Promise.all(Array.from({ length: Math.min(o.concurrency, o.requests) }, worker));
  return { outcomes: outcomes.filter(Boolean), wallMs: performance.now() - started, notSent };
}

/** Nearest-rank percentile; NaN for no values. */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}
