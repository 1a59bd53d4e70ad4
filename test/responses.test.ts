// POST /v1/responses through the official SDK (client.responses.create and .stream): the same
// text chat completions give for the same conversation, the Responses object and event shapes,
// incomplete responses, seeds, logprobs, and what is refused (stored state, background, tools other
// than functions, n above 1, other items).
import type OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestServer, type TestServer } from "./helpers/server.js";

let t: TestServer;
beforeAll(async () => {
  t = await startTestServer();
});
afterAll(() => t?.close());

const chatText = async (messages: OpenAI.ChatCompletionMessageParam[], extra: Partial<OpenAI.ChatCompletionCreateParamsNonStreaming> = {}) => {
  const res = await t.client.chat.completions.create({ model: "flock-demo", messages, temperature: 0, max_tokens: 30, ...extra });
  return { text: res.choices[0].message.content, usage: res.usage!, finish: res.choices[0].finish_reason };
};

describe("client.responses.create", () => {
  it("answers a string input with what chat completions answer for the same user message", async () => {
    const res = await t.client.responses.create({ model: "flock-demo", input: "Tell me about boats.", temperature: 0, max_output_tokens: 30 });
    const chat = await chatText([{ role: "user", content: "Tell me about boats." }]);
    expect(res.output_text).toBe(chat.text);
    expect(res).toMatchObject({ object: "response", model: "flock-demo", store: false, error: null });
    expect(res.id).toMatch(/^resp_/);
    expect(res.status).toBe(chat.finish === "length" ? "incomplete" : "completed");
    expect(res.usage).toMatchObject({ input_tokens: chat.usage.prompt_tokens, output_tokens: chat.usage.completion_tokens, total_tokens: chat.usage.total_tokens });
    expect(res.output).toHaveLength(1);
    expect(res.output[0]).toMatchObject({ type: "message", role: "assistant", status: "completed", content: [{ type: "output_text", text: chat.text, annotations: [] }] });
  });

  it("instructions and message items (text parts, an assistant turn) render as the chat messages would", async () => {
    const res = await t.client.responses.create({
      model: "flock-demo",
      instructions: "Be brief.",
      input: [
        { role: "user", content: [{ type: "input_text", text: "Hello" }] },
        { type: "message", role: "assistant", content: "The captain waves." },
        { role: "developer", content: "Stay on topic." },
        { role: "user", content: "Tell me more." },
      ],
      temperature: 0,
      max_output_tokens: 20,
    });
    const chat = await chatText(
      [
        { role: "system", content: "Be brief." },
        { role: "user", content: "Hello" },
        { role: "assistant", content: "The captain waves." },
        { role: "system", content: "Stay on topic." },
        { role: "user", content: "Tell me more." },
      ],
      { max_tokens: 20 },
    );
    expect(res.output_text).toBe(chat.text);
    expect(res.usage!.input_tokens).toBe(chat.usage.prompt_tokens);
    expect(res.instructions).toBe("Be brief.");
  });

  it("is incomplete when max_output_tokens cuts it, and a seed reproduces it at temperature 1", async () => {
    const ask = (seed: number) => t.client.responses.create({ model: "flock-demo", input: "Story?", max_output_tokens: 3, temperature: 1, seed } as OpenAI.Responses.ResponseCreateParamsNonStreaming);
    const a = await ask(7);
    expect(a.status).toBe("incomplete");
    expect(a.incomplete_details).toEqual({ reason: "max_output_tokens" });
    expect(a.usage!.output_tokens).toBe(3);
    expect((await ask(7)).output_text).toBe(a.output_text);
    const others = await Promise.all([1, 2, 3, 4, 5].map(ask));
    expect(new Set([a, ...others].map((r) => r.output_text)).size).toBeGreaterThan(1);
  });

  it("returns logprobs with top_logprobs, as chat does", async () => {
    const res = await t.client.responses.create({ model: "flock-demo", input: "Hello", temperature: 0, max_output_tokens: 5, top_logprobs: 2, include: ["message.output_text.logprobs"] });
    const chat = await t.client.chat.completions.create({ model: "flock-demo", messages: [{ role: "user", content: "Hello" }], temperature: 0, max_tokens: 5, logprobs: true, top_logprobs: 2 });
    const part = res.output[0].type === "message" ? res.output[0].content[0] : undefined;
    expect(part?.type === "output_text" ? part.logprobs : undefined).toEqual(chat.choices[0].logprobs!.content);
  });
});

describe("streamed responses", () => {
  it("emits the Responses events in order, deltas adding up to the final text", async () => {
    const stream = await t.client.responses.create({ model: "flock-demo", input: "Tell me about boats.", temperature: 0, max_output_tokens: 30, stream: true });
    const events: OpenAI.Responses.ResponseStreamEvent[] = [];
    for await (const e of stream) events.push(e);
    const types = events.map((e) => e.type);
    expect(types.slice(0, 4)).toEqual(["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]);
    expect(types.slice(-4)).toEqual(["response.output_text.done", "response.content_part.done", "response.output_item.done", types.at(-1)]);
    expect(["response.completed", "response.incomplete"]).toContain(types.at(-1));
    expect(events.map((e) => e.sequence_number)).toEqual(events.map((_, i) => i));
    const deltas = events.flatMap((e) => (e.type === "response.output_text.delta" ? [e.delta] : []));
    expect(deltas.length).toBeGreaterThan(1);
    const final = events.at(-1) as OpenAI.Responses.ResponseCompletedEvent;
    const text = (await chatText([{ role: "user", content: "Tell me about boats." }])).text;
    expect(deltas.join("")).toBe(text);
    expect(final.response.output[0]).toMatchObject({ type: "message", content: [{ type: "output_text", text }] });
    expect(final.response.usage!.output_tokens).toBeGreaterThan(0);
  });

  it("works with the SDK's stream helper and its final response", async () => {
    const stream = t.client.responses.stream({ model: "flock-demo", input: "Hello", temperature: 0, max_output_tokens: 12 });
    let deltas = "";
    stream.on("response.output_text.delta", (e) => (deltas += e.delta));
    const final = await stream.finalResponse();
    expect(final.output_text).toBe(deltas);
    expect(final.output_text).toBe((await chatText([{ role: "user", content: "Hello" }], { max_tokens: 12 })).text);
  });
});

describe("what /v1/responses refuses", () => {
  const post = async (body: Record<string, unknown>) => {
    const res = await fetch(`${t.url}/v1/responses`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ model: "flock-demo", input: "hi", ...body }) });
    return { status: res.status, body: (await res.json()) as { error?: { code: string | null; param: string | null } } };
  };

  it.each([
    [{ previous_response_id: "resp_123" }, "previous_response_id"],
    [{ conversation: "conv_1" }, "conversation"],
    [{ background: true }, "background"],
    [{ prompt: { id: "pmpt_1" } }, "prompt"],
    [{ tools: [{ type: "web_search" }] }, "tools[0]"],
    [{ n: 2 }, "n"],
    [{ input: [{ type: "computer_call_output", call_id: "c", output: {} }] }, "input[0]"],
    [{ input: [{ role: "user", content: [{ type: "input_image", image_url: "data:," }] }] }, "input[0].content[0]"],
  ])("%o: 400 unsupported_parameter naming %s", async (body, param) => {
    const res = await post(body);
    expect(res.status).toBe(400);
    expect(res.body.error).toMatchObject({ code: "unsupported_parameter", param });
  });

  it("ignores what cannot change the text (listing it in x-flock-ignored-fields), refuses nothing of an ordinary SDK call", async () => {
    const { data, response } = await t.client.responses
      .create({ model: "flock-demo", input: "hi", max_output_tokens: 2, store: true, reasoning: { effort: "low" }, truncation: "auto", metadata: { a: "b" }, parallel_tool_calls: false, text: { format: { type: "text" } } })
      .withResponse();
    expect(data.status).toBe("incomplete");
    expect(response.headers.get("x-flock-ignored-fields")!.split(", ").sort()).toEqual(["metadata", "reasoning", "store", "truncation"]);
  });

  it("an unknown model is a 404, a prompt past the window a context_length_exceeded naming input", async () => {
    expect((await post({ model: "nope" })).body.error).toMatchObject({ code: "model_not_found" });
    const long = await post({ model: "small", input: `The${" cook the".repeat(400)}` });
    expect(long.body.error).toMatchObject({ code: "context_length_exceeded", param: "input" });
  });
});
