// @ts-check
// flock's OpenAI endpoints from the browser: the key (when the server asks for one), errors in
// OpenAI's shape, and server-sent events read from a streamed fetch.

const KEY_STORAGE = "flock.playground.apiKey";

export class ApiError extends Error {
  /**
   * @param {number} status HTTP status (0: no response)
   * @param {string} message
   * @param {string | null} code OpenAI error code
   */
  constructor(status, message, code = null) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/**
 * @typedef {{ id: string, object: string, owned_by: string, flock?: { kind: string, experts?: string[] } }} ModelInfo
 */

export class Api {
  /** @param {string} base URL the v1 paths are relative to (the page's own directory) */
  constructor(base) {
    this.base = base;
    /** @type {string | null} */
    this.key = sessionStorage.getItem(KEY_STORAGE);
  }

  /** @param {string | null} key */
  setKey(key) {
    this.key = key && key.length > 0 ? key : null;
    if (this.key) sessionStorage.setItem(KEY_STORAGE, this.key);
    else sessionStorage.removeItem(KEY_STORAGE);
  }

  /** @returns {Record<string, string>} */
  headers() {
    return this.key ? { authorization: `Bearer ${this.key}` } : {};
  }

  /** @returns {Promise<ModelInfo[]>} */
  async models() {
    const res = await this.fetch("v1/models", { headers: this.headers() });
    const body = /** @type {{ data: ModelInfo[] }} */ (await res.json());
    return body.data;
  }

  /**
   * POSTs a streaming request and yields every JSON event of the stream.
   * @param {string} path
   * @param {object} body
   * @param {AbortSignal} signal
   * @returns {AsyncGenerator<any>}
   */
  async *stream(path, body, signal) {
    const res = await this.fetch(path, {
      method: "POST",
      headers: { ...this.headers(), "content-type": "application/json", accept: "text/event-stream" },
      body: JSON.stringify(body),
      signal,
    });
    if (!res.body) throw new ApiError(res.status, "the response has no body");
    yield* sseEvents(res.body);
  }

  /**
   * @param {string} path
   * @param {RequestInit} init
   */
  async fetch(path, init) {
    let res;
    try {
      res = await fetch(new URL(path, this.base), init);
    } catch (err) {
      if (err instanceof DOMException && err.name === "AbortError") throw err;
      throw new ApiError(0, `cannot reach the server (${err instanceof Error ? err.message : String(err)})`);
    }
    if (res.ok) return res;
    let message = `${res.status} ${res.statusText}`;
    let code = null;
    try {
      const body = await res.json();
      if (body?.error?.message) message = body.error.message;
      code = body?.error?.code ?? null;
    } catch {
      // Not JSON (a proxy's page): the status line says enough.
    }
    throw new ApiError(res.status, message, code);
  }
}

/**
 * The `data:` payloads of a text/event-stream, parsed as JSON, until `[DONE]`. Comments
 * (flock's keep-alives) and other fields are skipped. An error event in OpenAI's shape is thrown.
 * @param {ReadableStream<Uint8Array>} body
 * @returns {AsyncGenerator<any>}
 */
export async function* sseEvents(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let ended = false;
  let sawDone = false;
  try {
    while (true) {
      const { value, done } = await reader.read();
      if (done) {
        ended = true;
        break;
      }
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
        const data = event
          .split(/\r?\n/)
          .filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, ""))
          .join("\n");
        // After [DONE] the server closes the stream: read to its end rather than cancel it.
        if (data.length === 0 || sawDone) continue;
        if (data === "[DONE]") {
          sawDone = true;
          continue;
        }
        const parsed = JSON.parse(data);
        if (parsed?.error) throw new ApiError(200, parsed.error.message ?? "the stream ended with an error", parsed.error.code ?? null);
        yield parsed;
      }
    }
  } finally {
    // Early exits (the consumer stopped, an error event) close the connection.
    if (!ended) reader.cancel().catch(() => {});
  }
}
