// Tool calls as text (server/tools.ts): the calls a model writes in its template's syntax are
// parsed back, streamed as they are written, and converted schemas share one grammar under
// renamed rules.
import { describe, expect, it } from "vitest";
import { ChatMLChatWrapper, DeepSeekChatWrapper, Llama3_1ChatWrapper, MistralChatWrapper, QwenChatWrapper } from "node-llama-cpp";
import { toolSyntaxOf } from "../../../engine/chat-template.js";
import { createRng } from "../../../decoding/rng.js";
import { AutoCallStream, choiceMessage, parseToolCalls, prefixRules, RequiredCallStream, type ToolCallDelta } from "../../../server/tools.js";
import { FRAMING_FAMILIES, TEMPLATE_FAMILIES, writeCall, writeCalls } from "../../helpers/tool-syntax.js";

const tools = [{ name: "get_weather" }, { name: "get_weather_by_zip" }, { name: "get_time" }];

describe("toolSyntaxOf", () => {
  it("reads the template's framing of parallel calls, cut where generation ends (the model ends its turn there)", () => {
    expect(toolSyntaxOf(new MistralChatWrapper()).parallel).toEqual({ sectionPrefix: "[TOOL_CALLS][", sectionPrefixAlternates: ["["], betweenCalls: ", ", sectionSuffix: "]" });
    const deepseek = toolSyntaxOf(new DeepSeekChatWrapper({ functionCallingSyntax: "original", parallelFunctionCalling: true }));
    expect(deepseek.parallel).toEqual({ sectionPrefix: "<｜tool▁calls▁begin｜>", sectionPrefixAlternates: [], betweenCalls: "\n", sectionSuffix: "<｜tool▁calls▁end｜>" });
    expect(toolSyntaxOf(new QwenChatWrapper()).parallel).toEqual({ sectionPrefix: "", sectionPrefixAlternates: [], betweenCalls: "\n", sectionSuffix: "" });
    // A call whose suffix ends generation is one call per turn; templates without framing too.
    const single = toolSyntaxOf(new DeepSeekChatWrapper({ functionCallingSyntax: "original" }));
    expect(single.suffix).toBe("\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>");
    expect(single.parallel).toBeNull();
    expect(toolSyntaxOf(new ChatMLChatWrapper()).parallel).toBeNull();
    // Where the model says which special text ends generation, that is where a part is cut.
    const eom = toolSyntaxOf(new Llama3_1ChatWrapper(), (special) => special.indexOf("<|eom_id|>"));
    expect(eom.suffix).toBe("</function>");
  });
});

describe("parseToolCalls", () => {
  it.for(TEMPLATE_FAMILIES)("%s: a call written in the template's syntax comes back with its name and JSON arguments", ([, wrapper]) => {
    const syntax = toolSyntaxOf(wrapper);
    const write = (name: string, args: string) => writeCall(syntax, name, args);
    const one = parseToolCalls(write("get_weather", '{"city": "Paris"}'), syntax, tools);
    expect(one.content).toBeNull();
    expect(one.calls.map((c) => [c.name, JSON.parse(c.arguments)])).toEqual([["get_weather", { city: "Paris" }]]);
    // A longer name that starts with another is not cut short; braces inside strings do not end the arguments.
    const two = parseToolCalls(`Let me check. ${write("get_weather_by_zip", '{"zip": "7500}{"}')}${write("get_time", "{}")}`, syntax, tools);
    expect(two.content).toBe("Let me check.");
    expect(two.calls.map((c) => c.name)).toEqual(["get_weather_by_zip", "get_time"]);
    expect(JSON.parse(two.calls[0].arguments)).toEqual({ zip: "7500}{" });
    expect(new Set(two.calls.map((c) => c.id)).size).toBe(2);
    // Not a call: an unknown function, or arguments that are not JSON — the text stays content.
    for (const text of [write("launch", "{}"), write("get_time", "{oops")]) expect(parseToolCalls(text, syntax, tools)).toEqual({ content: text, calls: [] });
    expect(parseToolCalls("Just text.", syntax, tools)).toEqual({ content: "Just text.", calls: [] });
  });

  it.for(FRAMING_FAMILIES)("%s: parallel calls in the template's framing are split into calls, the framing stripped from the content", ([, wrapper]) => {
    const syntax = toolSyntaxOf(wrapper);
    expect(syntax.parallel?.sectionPrefix.trim().length).toBeGreaterThan(0);
    const calls = [["get_weather_by_zip", '{"zip": "75]0, {"}'], ["get_time", '{"tz": "CET"}']] as const;
    const framed = [writeCalls(syntax, calls), ...(syntax.parallel!.sectionPrefixAlternates.length > 0 ? [writeCalls(syntax, calls, true)] : [])];
    for (const text of framed) {
      for (const [before, content] of [["", null], ["Let me check.\n", "Let me check."]] as const) {
        const parsed = parseToolCalls(before + text, syntax, tools);
        expect(parsed.content, text).toBe(content);
        expect(parsed.calls.map((c) => [c.name, JSON.parse(c.arguments)])).toEqual([["get_weather_by_zip", { zip: "75]0, {" }], ["get_time", { tz: "CET" }]]);
        // parallel_tool_calls false: the first call only.
        expect(choiceMessage(before + text, { mode: "auto", tools }, syntax, false).calls.map((c) => c.name)).toEqual(["get_weather_by_zip"]);
      }
    }
    // One call, framed.
    const one = parseToolCalls(writeCalls(syntax, [["get_time", "{}"]]), syntax, tools);
    expect(one).toMatchObject({ content: null, calls: [{ name: "get_time", arguments: "{}" }] });
  });
});

describe("prefixRules", () => {
  it("renames rule names only: not inside literals, character classes, repetition counts or comments", () => {
    const gbnf = 'root ::= "{" space name-kv "}" # root-comment\nname-kv ::= "\\"name\\"" [a-z-]{1,3} space\nspace ::= | " "';
    expect(prefixRules(gbnf, "t0-")).toBe('t0-root ::= "{" t0-space t0-name-kv "}" # root-comment\nt0-name-kv ::= "\\"name\\"" [a-z-]{1,3} t0-space\nt0-space ::= | " "');
  });
});

describe("RequiredCallStream", () => {
  it.for(TEMPLATE_FAMILIES)("%s: written a character at a time, the call streams its id and name once, then the arguments without the suffix", ([, wrapper]) => {
    const syntax = toolSyntaxOf(wrapper);
    const args = '{"zip": "75)0}", "n": [1, {"a": 2}]}';
    const name = "get_weather_by_zip";
    const text = writeCall(syntax, name, args);
    const stream = new RequiredCallStream(syntax, tools);
    const deltas = [];
    for (let i = 1; i <= text.length; i++) deltas.push(...stream.deltas(text.slice(0, i)));
    expect(stream.started).toBe(true);
    expect(deltas[0]).toMatchObject({ index: 0, id: expect.stringMatching(/^call_/), type: "function", function: { name, arguments: "" } });
    expect(deltas.filter((d) => d.function.name !== undefined)).toHaveLength(1);
    expect(deltas.map((d) => d.function.arguments).join("")).toBe(args);
    expect(deltas.length).toBeGreaterThan(10);
  });

  it.for(FRAMING_FAMILIES)("%s: parallel calls in the template's framing, written a character at a time, stream as calls 0 and 1", ([, wrapper]) => {
    const syntax = toolSyntaxOf(wrapper);
    const calls = [["get_weather_by_zip", '{"zip": "75)0}, {"}'], ["get_time", '{"tz": "CET"}']] as const;
    for (const text of [writeCalls(syntax, calls), writeCalls(syntax, calls, true)]) {
      const stream = new RequiredCallStream(syntax, tools);
      const deltas: ToolCallDelta[] = [];
      for (let i = 1; i <= text.length; i++) deltas.push(...stream.deltas(text.slice(0, i)));
      expect(stream.started).toBe(true);
      expect(deltas.filter((d) => d.function.name !== undefined).map((d) => [d.index, d.function.name])).toEqual([[0, "get_weather_by_zip"], [1, "get_time"]]);
      for (const [index, [, args]] of calls.entries()) {
        expect(deltas.filter((d) => d.index === index).map((d) => d.function.arguments).join(""), text).toBe(args);
      }
    }
  });
});

describe("AutoCallStream", () => {
  const rng = createRng(11);
  /** Streams `text` in random pieces; what the client would put together. */
  /** `cuts`: where the pieces end (else random). */
  function streamed(text: string, syntax: ReturnType<typeof toolSyntaxOf>, parallel = true, cuts?: readonly number[]) {
    const stream = new AutoCallStream(syntax, tools, parallel);
    let content = "";
    const deltas: ToolCallDelta[] = [];
    let pieces = 0;
    const ends = cuts ? [...cuts.filter((c) => c > 0 && c < text.length).sort((a, b) => a - b), text.length] : undefined;
    for (let at = 0; at < text.length; ) {
      at = ends ? ends.shift()! : Math.min(text.length, at + 1 + rng.int(4));
      const step = stream.step(text.slice(0, at));
      if (step.content) pieces++;
      content += step.content;
      deltas.push(...step.calls);
    }
    const message = choiceMessage(text, { mode: "auto", tools }, syntax, parallel);
    content += stream.finish(text, message);
    const calls = new Map<number, { id?: string; name?: string; arguments: string }>();
    for (const d of deltas) {
      const call = calls.get(d.index) ?? { arguments: "" };
      call.id ??= d.id;
      call.name ??= d.function.name;
      call.arguments += d.function.arguments;
      calls.set(d.index, call);
    }
    return { content, pieces, calls: [...calls.values()], message, calling: stream.calling };
  }

  it.for(TEMPLATE_FAMILIES)("%s: content streams as written, calls as their names and arguments are written; together they are the parsed message", ([, wrapper]) => {
    const syntax = toolSyntaxOf(wrapper);
    const write = (name: string, args: string) => writeCall(syntax, name, args);
    for (let trial = 0; trial < 20; trial++) {
      // Text alone, ending in what could begin a call: all of it is content, in pieces.
      const text = `The weather is fine today, I think. ${syntax.prefix.slice(0, 3)}`;
      const plain = streamed(text, syntax);
      expect(plain.content).toBe(text);
      expect(plain.calls).toEqual([]);
      expect(plain.pieces).toBeGreaterThan(3);
      // Text, then two calls.
      const calling = `Let me check the weather for you.\n\n${write("get_weather_by_zip", '{"zip": "75}0"}')}${write("get_time", '{"tz": "CET"}')}`;
      const two = streamed(calling, syntax);
      expect(two.calling).toBe(true);
      expect(two.content).toBe(two.message.content);
      expect(two.calls.map((c) => [c.name, JSON.parse(c.arguments)])).toEqual(two.message.calls.map((c) => [c.name, JSON.parse(c.arguments)]));
      expect(two.calls.map((c) => c.name)).toEqual(["get_weather_by_zip", "get_time"]);
      expect(two.calls.every((c) => c.id?.startsWith("call_"))).toBe(true);
      // parallel_tool_calls false: the first call only.
      expect(streamed(calling, syntax, false).calls.map((c) => c.name)).toEqual(["get_weather_by_zip"]);
      // A call to an undeclared function is no call: the text is content.
      const stray = `Hm. ${write("launch", "{}")}`;
      const notCall = streamed(stray, syntax);
      expect(notCall.calling).toBe(false);
      expect(notCall.content).toBe(stray);
      expect(notCall.message).toEqual({ content: stray, calls: [] });
    }
  });

  it.for(FRAMING_FAMILIES)("%s: parallel calls in the template's framing stream as calls, fragments split inside the framing; the framing is not content", ([, wrapper]) => {
    const syntax = toolSyntaxOf(wrapper);
    const framing = syntax.parallel!;
    const calls = [["get_weather_by_zip", '{"zip": "75}0"}'], ["get_time", '{"tz": "CET"}']] as const;
    const before = "Let me check the weather for you.\n\n";
    const expected = calls.map(([name, args]) => [name, JSON.parse(args)]);
    for (const plain of [false, true]) {
      if (plain && framing.sectionPrefixAlternates.length === 0) continue;
      const text = before + writeCalls(syntax, calls, plain);
      const section = plain ? framing.sectionPrefixAlternates[0] : framing.sectionPrefix;
      const first = before.length + section.length;
      const between = text.indexOf(framing.betweenCalls + syntax.prefix, first + syntax.prefix.length);
      const suffixAt = text.length - framing.sectionSuffix.length;
      // Awkward places: inside and just after the section prefix, inside the first call prefix,
      // inside the text between the calls and the next prefix, inside the section suffix.
      const awkward = [
        before.length - 1, before.length + 1, before.length + Math.ceil(section.length / 2), first, first + 1, first + Math.ceil(syntax.prefix.length / 2),
        between, between + 1, between + framing.betweenCalls.length, between + framing.betweenCalls.length + 2, suffixAt - 1, suffixAt + 1, text.length - 1,
      ];
      for (const cuts of [awkward, ...Array.from({ length: 10 }, () => undefined)]) {
        const result = streamed(text, syntax, true, cuts);
        expect(result.calling).toBe(true);
        expect(result.content, JSON.stringify(cuts)).toBe("Let me check the weather for you.");
        expect(result.message.content).toBe("Let me check the weather for you.");
        expect(result.calls.map((c) => [c.name, JSON.parse(c.arguments)])).toEqual(expected);
        expect(result.message.calls.map((c) => [c.name, JSON.parse(c.arguments)])).toEqual(expected);
        expect(streamed(text, syntax, false, cuts).calls.map((c) => c.name)).toEqual(["get_weather_by_zip"]);
      }
      // The section prefix alone at the end of the text, with no call after it, is content once the text is complete.
      const dangling = `Brackets ${section}`;
      expect(streamed(dangling, syntax).content).toBe(dangling);
    }
  });
});
