// Tool calling end to end: a real server over the forged models, the official openai client (its
// zod helpers), real node-llama-cpp; and a conversation with tool calls and results rendered
// through the chat templates of several model families (golden prompts).
import { zodFunction } from "openai/helpers/zod";
import {
  type ChatWrapper,
  ChatMLChatWrapper,
  DeepSeekChatWrapper,
  FunctionaryChatWrapper,
  Llama3_1ChatWrapper,
  LlamaText,
  MistralChatWrapper,
  QwenChatWrapper,
  SpecialTokensText,
  type Token,
} from "node-llama-cpp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { z } from "zod";
import { type ChatMessage, ChatTemplate, toolSyntaxOf } from "../engine/chat-template.js";
import { Engine } from "../engine/engine.js";
import { ModelEntry } from "../pipelines/model-entry.js";
import { parseToolCalls } from "../server/tools.js";
import { forgedPath, startTestServer, type TestServer } from "./helpers/server.js";
import { FRAMING_FAMILIES, WEATHER_DEFINITIONS, WEATHER_HISTORY, writeCalls } from "./helpers/tool-syntax.js";

let t: TestServer;
beforeAll(async () => {
  t = await startTestServer();
});
afterAll(() => t?.close());

const Weather = z.object({ city: z.string().max(10), unit: z.enum(["c", "f"]) });
const Time = z.object({ zone: z.string().max(6) });
const tools = [zodFunction({ name: "get_weather", description: "The weather in a city", parameters: Weather }), zodFunction({ name: "get_time", parameters: Time })];
const ask = [{ role: "user" as const, content: "What is the weather in Paris?" }];

async function post(body: unknown) {
  const res = await fetch(`${t.url}/v1/chat/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  return { status: res.status, body: (await res.json()) as { error?: { message: string; param: string | null } } & Record<string, unknown> };
}

describe("tool_choice required and named", () => {
  it("chat.completions.parse: every call names a declared function and its arguments validate, on plain and speculative models", async () => {
    const seen = new Set<string>();
    for (const [model, seed] of [["flock-demo", 1], ["flock-demo", 2], ["flock-demo", 3], ["spec", 4], ["kitchen", 5]] as const) {
      const res = await t.client.chat.completions.parse({ model, messages: ask, tools, tool_choice: "required", seed, max_tokens: 200 });
      const choice = res.choices[0];
      expect(choice.finish_reason).toBe("tool_calls");
      expect(choice.message.content).toBeNull();
      const [call] = choice.message.tool_calls ?? [];
      expect(call).toBeDefined();
      expect(call.type).toBe("function");
      expect(call.id).toMatch(/^call_/);
      if (call.type !== "function") continue;
      seen.add(call.function.name);
      const schema = call.function.name === "get_weather" ? Weather : Time;
      expect(schema.parse(call.function.parsed_arguments)).toEqual(JSON.parse(call.function.arguments));
    }
    expect(seen.size).toBeGreaterThan(0);
  });

  it("a named function is the one called; streamed, the call arrives as OpenAI's deltas (id and name, then argument fragments as they are written) and equals the whole response", async () => {
    const request = { model: "flock-demo", messages: ask, tools, tool_choice: { type: "function" as const, function: { name: "get_time" } }, seed: 9, max_tokens: 200 };
    const whole = await t.client.chat.completions.create(request);
    const call = whole.choices[0].message.tool_calls![0];
    expect(call.type === "function" && call.function.name).toBe("get_time");
    const streamed: { id?: string; name?: string; arguments: string; fragments: number } = { arguments: "", fragments: 0 };
    let finish: string | null = null;
    let firstCallDelta: unknown;
    for await (const chunk of await t.client.chat.completions.create({ ...request, stream: true })) {
      const delta = chunk.choices[0]?.delta;
      for (const c of delta?.tool_calls ?? []) {
        firstCallDelta ??= c;
        expect(c.index).toBe(0);
        streamed.id ??= c.id;
        streamed.name ??= c.function?.name;
        streamed.arguments += c.function?.arguments ?? "";
        if (c.function?.arguments) streamed.fragments++;
      }
      finish = chunk.choices[0]?.finish_reason ?? finish;
    }
    expect(firstCallDelta).toMatchObject({ id: expect.stringMatching(/^call_/), type: "function", function: { name: "get_time", arguments: "" } });
    expect(finish).toBe("tool_calls");
    // The arguments arrive as they are written, not in one piece at the end.
    expect(streamed.fragments).toBeGreaterThan(3);
    expect(streamed.name).toBe("get_time");
    expect(call.type === "function" && streamed.arguments).toBe(call.type === "function" && call.function.arguments);
    Time.parse(JSON.parse(streamed.arguments));
  });

  it("auto: the demo model answers in text (its chain never writes the call syntax), streamed as written, and tools lengthen the prompt", async () => {
    const withTools = await t.client.chat.completions.create({ model: "flock-demo", messages: ask, tools, seed: 2, max_tokens: 20 });
    const without = await t.client.chat.completions.create({ model: "flock-demo", messages: ask, seed: 2, max_tokens: 20 });
    expect(withTools.choices[0].message.tool_calls ?? []).toEqual([]);
    expect(withTools.choices[0].message.content).toBeTruthy();
    expect(withTools.usage!.prompt_tokens).toBeGreaterThan(without.usage!.prompt_tokens + 50);
    // Streamed, the answer arrives as it is written (not in one piece at the end), the same text.
    const stream = await t.client.chat.completions.create({ model: "flock-demo", messages: ask, tools, seed: 2, max_tokens: 20, stream: true });
    const pieces: string[] = [];
    let finish: string | null = null;
    for await (const chunk of stream) {
      if (chunk.choices[0]?.delta?.content) pieces.push(chunk.choices[0].delta.content);
      finish = chunk.choices[0]?.finish_reason ?? finish;
    }
    expect(pieces.length).toBeGreaterThan(3);
    expect(pieces.join("")).toBe(withTools.choices[0].message.content);
    expect(finish).toBe(withTools.choices[0].finish_reason);
    const none = await t.client.chat.completions.create({ model: "flock-demo", messages: ask, tools, tool_choice: "none", seed: 2, max_tokens: 20 });
    expect(none.usage!.prompt_tokens).toBe(without.usage!.prompt_tokens);
  });
});

describe("history with tool calls", () => {
  const history = [
    ...ask,
    { role: "assistant" as const, content: null, tool_calls: [{ id: "call_1", type: "function" as const, function: { name: "get_weather", arguments: '{"city": "Paris", "unit": "c"}' } }] },
    { role: "tool" as const, tool_call_id: "call_1", content: '{"temperature": 21}' },
  ];

  it("is rendered, never dropped: the call and its result lengthen the prompt", async () => {
    const withCall = await t.client.chat.completions.create({ model: "flock-demo", messages: history, tools, max_tokens: 3 });
    const without = await t.client.chat.completions.create({ model: "flock-demo", messages: ask, tools, max_tokens: 3 });
    expect(withCall.usage!.prompt_tokens).toBeGreaterThan(without.usage!.prompt_tokens + 10);
  });

  it("a tool message that answers no call, a call left unanswered, unknown names and bad schemas are 400s naming the place", async () => {
    const stray = await post({ model: "flock-demo", messages: [...ask, { role: "tool", tool_call_id: "call_9", content: "x" }] });
    expect(stray.status).toBe(400);
    expect(stray.body.error!.param).toBe("messages[1]");
    const wrongId = await post({ model: "flock-demo", messages: [...history.slice(0, 2), { role: "tool", tool_call_id: "call_2", content: "x" }] });
    expect(wrongId.body.error!.param).toBe("messages[2].tool_call_id");
    const unanswered = await post({ model: "flock-demo", messages: [...history.slice(0, 2), { role: "user", content: "?" }] });
    expect(unanswered.status).toBe(400);
    expect(unanswered.body.error!.message).toContain("call_1");
    const unknown = await post({ model: "flock-demo", messages: ask, tools, tool_choice: { type: "function", function: { name: "nope" } } });
    expect(unknown.body.error!.param).toBe("tool_choice");
    const badSchema = await post({ model: "flock-demo", messages: ask, tools: [{ type: "function", function: { name: "f", parameters: { type: "object", properties: { a: { type: "strin" } } } } }] });
    expect(badSchema.status).toBe(400);
    expect(badSchema.body.error!.message).toContain("tools[0].function.parameters.properties.a.type");
    const both = await post({ model: "flock-demo", messages: ask, tools, tool_choice: "required", response_format: { type: "json_object" } });
    expect(both.status).toBe(400);
    const ok = await t.client.chat.completions.create({ model: "flock-demo", messages: ask, max_tokens: 2 });
    expect(ok.choices[0].message.content).toBeTruthy();
  });

  it("renders through each supported template family with the call and its result (golden prompts)", async () => {
    const engine = await Engine.create({ gpu: "off", threads: 1 });
    const model = await engine.load(ModelEntry.parse({ id: "golden", path: forgedPath("flock-demo.gguf"), contextSize: 2048, parallel: 1 }));
    const messages = WEATHER_HISTORY;
    const definitions = WEATHER_DEFINITIONS;
    const families: Array<[string, ChatWrapper]> = [
      ["chatml", new ChatMLChatWrapper()],
      // The template states today's date: pinned to the one the golden prompt was written with.
      ["llama-3.1", new Llama3_1ChatWrapper({ todayDate: new Date("2026-12-06T12:00:00Z") })],
      ["qwen", new QwenChatWrapper()],
      ["mistral", new MistralChatWrapper()],
      ["functionary", new FunctionaryChatWrapper()],
    ];
    for (const [family, wrapper] of families) {
      const rendered = new ChatTemplate("golden", model.weights, wrapper).render(messages, undefined, definitions);
      const text = model.weights.detokenize(rendered.tokens as Token[], true);
      expect(text, family).toContain("get_weather");
      expect(text, family).toContain("Paris");
      expect(text, family).toContain("21");
      expect(text.indexOf("Paris"), family).toBeLessThan(text.lastIndexOf("21"));
      await expect(text).toMatchFileSnapshot(`fixtures/chat-templates/${family}-tools.txt`);
    }
    await engine[Symbol.asyncDispose]();
  });

  it("parallel calls in one turn render in the template's framing (Mistral, DeepSeek), the framing flock constrains and parses new calls in", async () => {
    const engine = await Engine.create({ gpu: "off", threads: 1 });
    const model = await engine.load(ModelEntry.parse({ id: "framing", path: forgedPath("flock-demo.gguf"), contextSize: 2048, parallel: 1 }));
    const calls = [
      { id: "call_1", name: "get_weather", arguments: '{"city": "Paris", "unit": "c"}' },
      { id: "call_2", name: "get_time", arguments: '{"zone": "CET"}' },
    ];
    const messages: ChatMessage[] = [
      { role: "user", content: "Weather and time in Paris?" },
      { role: "assistant", content: "", toolCalls: calls },
      { role: "tool", toolCallId: "call_1", content: '{"temperature": 21}' },
      { role: "tool", toolCallId: "call_2", content: '"12:00"' },
      { role: "user", content: "Thanks. And Rome?" },
    ];
    const definitions = [
      { name: "get_weather", parameters: z.toJSONSchema(Weather) as Record<string, unknown> },
      { name: "get_time", parameters: z.toJSONSchema(Time) as Record<string, unknown> },
    ];
    for (const [family, wrapper] of FRAMING_FAMILIES) {
      const rendered = new ChatTemplate("framing", model.weights, wrapper).render(messages, undefined, definitions);
      const syntax = rendered.toolSyntax;
      expect(syntax.parallel?.sectionPrefix, family).toBeTruthy();
      // The forged vocabulary reads "▁" as a space.
      const text = model.weights.detokenize(rendered.tokens as Token[], true).replaceAll("▁", " ");
      const written = writeCalls(syntax, calls.map((c) => [c.name, c.arguments] as const));
      expect(text, family).toContain(written.replaceAll("▁", " "));
      const parsed = parseToolCalls(`${written}`, syntax, definitions);
      expect(parsed.content, family).toBeNull();
      expect(parsed.calls.map((c) => [c.name, c.arguments]), family).toEqual(calls.map((c) => [c.name, c.arguments]));
    }
    // A suffix's special text that is the model's end of generation (here its </s>, which the
    // template's stop triggers do not name) is cut: the model ends its turn there.
    const chatml = new ChatMLChatWrapper();
    const ending = Object.assign(Object.create(ChatMLChatWrapper.prototype) as ChatMLChatWrapper, chatml, {
      settings: { ...chatml.settings, functions: { ...chatml.settings.functions, call: { ...chatml.settings.functions.call, suffix: LlamaText(new SpecialTokensText(")</s>")) } } },
    });
    expect(toolSyntaxOf(ending).suffix).toBe(")</s>");
    expect(new ChatTemplate("framing", model.weights, ending).render(messages.slice(0, 1), undefined, definitions).toolSyntax.suffix).toBe(")");
    await engine[Symbol.asyncDispose]();
  });
});

describe("Responses API function calling", () => {
  const functionTools = [
    { type: "function" as const, name: "get_weather", description: "The weather in a city", parameters: z.toJSONSchema(Weather) as Record<string, unknown>, strict: true },
    { type: "function" as const, name: "get_time", parameters: z.toJSONSchema(Time) as Record<string, unknown>, strict: true },
  ];

  it("required: a function_call item with a declared name and valid arguments; streamed as the item events, the same call", async () => {
    const request = { model: "flock-demo", input: "What is the weather in Paris?", tools: functionTools, tool_choice: "required" as const, max_output_tokens: 200, seed: 4 };
    const response = await t.client.responses.create(request as never);
    const output = (response as unknown as { output: Array<Record<string, string>>; status: string }).output;
    expect((response as unknown as { status: string }).status).toBe("completed");
    const call = output.find((item) => item.type === "function_call")!;
    expect(call).toMatchObject({ type: "function_call", status: "completed", call_id: expect.stringMatching(/^call_/), id: expect.stringMatching(/^fc_/) });
    (call.name === "get_weather" ? Weather : Time).parse(JSON.parse(call.arguments));
    const events: Array<Record<string, unknown>> = [];
    for await (const event of (await t.client.responses.create({ ...request, stream: true } as never)) as unknown as AsyncIterable<Record<string, unknown>>) events.push(event);
    const types = events.map((e) => e.type);
    expect(types).toEqual(expect.arrayContaining(["response.output_item.added", "response.function_call_arguments.delta", "response.function_call_arguments.done", "response.output_item.done", "response.completed"]));
    const done = events.find((e) => e.type === "response.function_call_arguments.done") as { arguments: string };
    const completed = events.find((e) => e.type === "response.completed") as { response: { output: Array<Record<string, string>> } };
    const streamedCall = completed.response.output.find((item) => item.type === "function_call")!;
    expect(streamedCall.name).toBe(call.name);
    expect(done.arguments).toBe(streamedCall.arguments);
    expect(streamedCall.arguments).toBe(call.arguments);
    // The arguments arrive as they are written, under the item's id, which the response keeps.
    const deltas = events.filter((e) => e.type === "response.function_call_arguments.delta") as Array<{ delta: string; item_id: string }>;
    expect(deltas.length).toBeGreaterThan(3);
    expect(deltas.map((d) => d.delta).join("")).toBe(streamedCall.arguments);
    expect(new Set(deltas.map((d) => d.item_id))).toEqual(new Set([streamedCall.id]));
    const added = events.find((e) => e.type === "response.output_item.added") as { item: Record<string, string> };
    expect(added.item).toMatchObject({ id: streamedCall.id, call_id: streamedCall.call_id, name: streamedCall.name, status: "in_progress" });
  });

  it("auto: the demo model's text streams as output_text deltas of one message, the one the response completes with", async () => {
    const request = { model: "flock-demo", input: "What is the weather in Paris?", tools: functionTools, max_output_tokens: 20, seed: 2 };
    const whole = (await t.client.responses.create(request as never)) as unknown as { output: Array<{ type: string; content: Array<{ text: string }> }> };
    const events: Array<Record<string, unknown>> = [];
    for await (const event of (await t.client.responses.create({ ...request, stream: true } as never)) as unknown as AsyncIterable<Record<string, unknown>>) events.push(event);
    const deltas = events.filter((e) => e.type === "response.output_text.delta") as Array<{ delta: string }>;
    expect(deltas.length).toBeGreaterThan(3);
    // The response ends with the message as streamed: incomplete where max_output_tokens cut it.
    const completed = events.find((e) => e.type === "response.incomplete" || e.type === "response.completed") as {
      type: string;
      response: { output: Array<{ type: string; content: Array<{ text: string }> }>; usage: { output_tokens: number } };
    };
    expect(completed.type).toBe(completed.response.usage.output_tokens === 20 ? "response.incomplete" : "response.completed");
    expect(completed.response.output.map((item) => item.type)).toEqual(["message"]);
    expect(deltas.map((d) => d.delta).join("")).toBe(completed.response.output[0].content[0].text);
    expect(completed.response.output[0].content[0].text).toBe(whole.output[0].content[0].text);
  });

  it("a function_call and its function_call_output in the input are rendered; an output that answers no call is a 400 on input; other tool types are refused", async () => {
    const turn = [
      { role: "user" as const, content: "What is the weather in Paris?" },
      { type: "function_call" as const, call_id: "call_7", name: "get_weather", arguments: '{"city": "Paris", "unit": "c"}' },
      { type: "function_call_output" as const, call_id: "call_7", output: '{"temperature": 21}' },
    ];
    const withCall = await t.client.responses.create({ model: "flock-demo", input: turn, tools: functionTools, max_output_tokens: 3 } as never);
    const without = await t.client.responses.create({ model: "flock-demo", input: turn.slice(0, 1), tools: functionTools, max_output_tokens: 3 } as never);
    const inputTokens = (r: unknown) => (r as { usage: { input_tokens: number } }).usage.input_tokens;
    expect(inputTokens(withCall)).toBeGreaterThan(inputTokens(without) + 10);
    const res = await fetch(`${t.url}/v1/responses`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ model: "flock-demo", input: [turn[0], { ...turn[2], call_id: "call_8" }] }) });
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error: { param: string } }).error.param).toBe("input");
    const web = await fetch(`${t.url}/v1/responses`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ model: "flock-demo", input: "x", tools: [{ type: "web_search" }] }) });
    expect(web.status).toBe(400);
  });
});
