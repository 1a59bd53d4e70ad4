// A strict reader of flock's OpenAI-style SSE streams: what a careful client may rely on. Every
// event is one `data:` line (or an SSE comment, the keep-alive), every payload is JSON or
// `[DONE]`, chunks have OpenAI's shape with one id, every choice ends exactly once, and the
// stream ends with `[DONE]` or with one OpenAI-shaped error event — nothing after either.

export type Endpoint = "chat" | "completions";

export interface StreamVerdict {
  /** null when the stream is well formed; else what is wrong with it. */
  malformed: string | null;
  /** How the stream ended: [DONE], an error event, or neither (cut off). */
  ending: "done" | "error" | "cut";
  /** The error event's `error.type` and `code`, when it ended with one. */
  error?: { type: string; code: string | null; message: string };
  /** Chunks that carried generated text (or logprobs). */
  contentChunks: number;
}

export interface OpenAIErrorShape {
  error: { message: string; type: string; param: string | null; code: string | null };
}

/** Whether `value` is `{"error": {"message", "type", "param", "code"}}` with the right types. */
export function isOpenAIError(value: unknown): value is OpenAIErrorShape {
  if (typeof value !== "object" || value === null) return false;
  const e = (value as { error?: unknown }).error;
  if (typeof e !== "object" || e === null) return false;
  const { message, type, param, code } = e as Record<string, unknown>;
  return (
    typeof message === "string" &&
    message.length > 0 &&
    typeof type === "string" &&
    type.length > 0 &&
    (param === null || typeof param === "string") &&
    (code === null || typeof code === "string") &&
    Object.keys(value).length === 1
  );
}

const FINISH = new Set(["stop", "length"]);

/**
 * Checks a whole stream body. `complete`: the client read it to the end (false when the client
 * itself cut it short, which may leave a partial last event that is not held against it).
 * `strictText`: no U+FFFD in the text (streams never split a UTF-8 character; off for requests
 * whose logit_bias may force lone byte tokens).
 */
export function checkStream(text: string, endpoint: Endpoint, choices: number, complete = true, strictText = true): StreamVerdict {
  const verdict: StreamVerdict = { malformed: null, ending: "cut", contentChunks: 0 };
  const fail = (why: string) => {
    verdict.malformed ??= why;
    return verdict;
  };
  let events = text.split("\n\n");
  const tail = events.pop() ?? "";
  if (complete && tail !== "") return fail(`stream does not end with a blank line: ${JSON.stringify(tail.slice(0, 80))}`);
  if (!complete) events = events.filter((e) => e !== "");
  const object = endpoint === "chat" ? "chat.completion.chunk" : "text_completion";
  let id: string | null = null;
  const finished = new Array<number>(choices).fill(0);
  let usageSeen = false;
  for (const [i, event] of events.entries()) {
    if (verdict.ending !== "cut") return fail(`event after the end of the stream: ${JSON.stringify(event.slice(0, 80))}`);
    const lines = event.split("\n");
    const data = lines.filter((l) => !l.startsWith(":"));
    if (data.length === 0) continue; // a comment (keep-alive)
    if (data.length !== 1 || !data[0].startsWith("data: ")) return fail(`event ${i} is not one data line: ${JSON.stringify(event.slice(0, 80))}`);
    const payload = data[0].slice(6);
    if (payload === "[DONE]") {
      verdict.ending = "done";
      continue;
    }
    let chunk: unknown;
    try {
      chunk = JSON.parse(payload);
    } catch {
      return fail(`event ${i} is not JSON: ${JSON.stringify(payload.slice(0, 80))}`);
    }
    if (typeof chunk !== "object" || chunk === null) return fail(`event ${i} is not an object`);
    if ("error" in chunk) {
      if (!isOpenAIError(chunk)) return fail(`event ${i} is an error without OpenAI's shape: ${payload.slice(0, 160)}`);
      verdict.ending = "error";
      verdict.error = { type: chunk.error.type, code: chunk.error.code, message: chunk.error.message };
      continue;
    }
    const c = chunk as Record<string, unknown>;
    if (c.object !== object) return fail(`event ${i}: object is ${String(c.object)}, not ${object}`);
    if (typeof c.id !== "string" || typeof c.created !== "number" || typeof c.model !== "string") return fail(`event ${i}: id, created or model missing`);
    if (id !== null && c.id !== id) return fail(`event ${i}: id changed from ${id} to ${c.id}`);
    id = c.id;
    if (!Array.isArray(c.choices)) return fail(`event ${i}: choices is not an array`);
    if (c.choices.length === 0) {
      // The usage chunk (stream_options.include_usage): after every choice ended.
      const u = c.usage as Record<string, unknown> | null | undefined;
      if (!u || typeof u.prompt_tokens !== "number" || typeof u.completion_tokens !== "number" || u.total_tokens !== u.prompt_tokens + u.completion_tokens) {
        return fail(`event ${i}: an empty choices list without a usage object`);
      }
      if (finished.some((f) => f === 0)) return fail(`event ${i}: usage before every choice finished`);
      usageSeen = true;
      continue;
    }
    if (usageSeen) return fail(`event ${i}: a choice chunk after the usage chunk`);
    for (const choice of c.choices as Array<Record<string, unknown>>) {
      const index = choice.index;
      if (typeof index !== "number" || !Number.isInteger(index) || index < 0 || index >= choices) return fail(`event ${i}: choice index ${String(index)} out of range`);
      if (finished[index] > 0) return fail(`event ${i}: choice ${index} continues after its finish_reason`);
      const reason = choice.finish_reason;
      if (reason !== null && !(typeof reason === "string" && FINISH.has(reason))) return fail(`event ${i}: finish_reason ${String(reason)}`);
      let text: unknown;
      if (endpoint === "chat") {
        const delta = choice.delta as Record<string, unknown> | undefined;
        if (typeof delta !== "object" || delta === null) return fail(`event ${i}: a chat chunk without delta`);
        text = delta.content ?? "";
        if (delta.role !== undefined && delta.role !== "assistant") return fail(`event ${i}: role ${String(delta.role)}`);
      } else {
        text = choice.text;
      }
      if (typeof text !== "string") return fail(`event ${i}: generated text is not a string`);
      if (strictText && text.includes("\uFFFD")) return fail(`event ${i}: a replacement character (a split UTF-8 sequence?)`);
      if (text.length > 0 || (choice.logprobs !== null && choice.logprobs !== undefined)) verdict.contentChunks++;
      if (reason !== null) finished[index]++;
    }
  }
  if (verdict.ending === "done" && finished.some((f) => f !== 1)) return fail(`[DONE] before every choice finished (${finished.join(",")})`);
  if (complete && verdict.ending === "cut") return fail("the stream ended with neither [DONE] nor an error event");
  return verdict;
}

/** Checks a non-streamed completion body; null when it is well formed. */
export function checkResponse(body: unknown, endpoint: Endpoint, choices: number, strictText = true): string | null {
  if (typeof body !== "object" || body === null) return "not an object";
  const b = body as Record<string, unknown>;
  const object = endpoint === "chat" ? "chat.completion" : "text_completion";
  if (b.object !== object) return `object is ${String(b.object)}`;
  if (typeof b.id !== "string" || typeof b.model !== "string" || typeof b.created !== "number") return "id, model or created missing";
  if (!Array.isArray(b.choices) || b.choices.length !== choices) return `expected ${choices} choices`;
  for (const [i, choice] of (b.choices as Array<Record<string, unknown>>).entries()) {
    if (choice.index !== i) return `choice ${i} has index ${String(choice.index)}`;
    if (!FINISH.has(choice.finish_reason as string)) return `choice ${i}: finish_reason ${String(choice.finish_reason)}`;
    const text = endpoint === "chat" ? (choice.message as Record<string, unknown> | undefined)?.content : choice.text;
    if (typeof text !== "string") return `choice ${i}: text is not a string`;
    if (strictText && text.includes("\uFFFD")) return `choice ${i}: a replacement character`;
  }
  const u = b.usage as Record<string, unknown> | undefined;
  if (!u || typeof u.prompt_tokens !== "number" || typeof u.completion_tokens !== "number" || u.total_tokens !== u.prompt_tokens + u.completion_tokens) return "usage missing or inconsistent";
  return null;
}
