// The chat-template families whose tool-call syntax the tests write, and calls written in one.
import { ChatMLChatWrapper, DeepSeekChatWrapper, Llama3_1ChatWrapper, MistralChatWrapper, QwenChatWrapper } from "node-llama-cpp";
import { z } from "zod";
import type { ChatMessage, ToolCallSyntax } from "../../engine/chat-template.js";

export const TEMPLATE_FAMILIES = [
  ["chatml", new ChatMLChatWrapper()],
  ["qwen", new QwenChatWrapper()],
  ["llama-3.1", new Llama3_1ChatWrapper()],
  // Parallel calls framed: [TOOL_CALLS][call, call]</s>
  ["mistral", new MistralChatWrapper()],
  // Parallel calls framed: <｜tool▁calls▁begin｜>call\ncall<｜tool▁calls▁end｜><｜end▁of▁sentence｜>
  ["deepseek", new DeepSeekChatWrapper({ functionCallingSyntax: "original", parallelFunctionCalling: true })],
] as const;

/** The families that frame parallel calls (a section prefix, text between calls, a section suffix). */
export const FRAMING_FAMILIES = TEMPLATE_FAMILIES.filter(([family]) => family === "mistral" || family === "deepseek");

/** A call as the template writes it: prefix, name, params prefix, arguments, suffix. */
export function writeCall(syntax: ToolCallSyntax, name: string, args: string): string {
  const forName = (template: string) => template.replaceAll("{{functionName}}", name);
  return `${syntax.prefix}${name}${forName(syntax.paramsPrefix)}${args}${forName(syntax.suffix)}`;
}

/**
 * Calls as the template writes several in one turn: its section prefix, the calls with the text
 * between them, its section suffix (as text up to where generation ends); `plain` writes the
 * section prefix without its special tokens' text, as a detokenizer that drops them shows it.
 */
export function writeCalls(syntax: ToolCallSyntax, calls: ReadonlyArray<readonly [string, string]>, plain = false): string {
  const framing = syntax.parallel ?? { sectionPrefix: "", sectionPrefixAlternates: [], betweenCalls: "", sectionSuffix: "" };
  const prefix = plain ? (framing.sectionPrefixAlternates[0] ?? "") : framing.sectionPrefix;
  return `${prefix}${calls.map(([name, args]) => writeCall(syntax, name, args)).join(framing.betweenCalls)}${framing.sectionSuffix}`;
}

/** The tool both golden-prompt tests render: a city's weather. */
export const WEATHER = z.object({ city: z.string().max(10), unit: z.enum(["c", "f"]) });
export const WEATHER_DEFINITIONS = [{ name: "get_weather", description: "The weather in a city", parameters: z.toJSONSchema(WEATHER) as Record<string, unknown> }];

/** A history with a tool call, its result and the turns around them, as the golden prompts render it. */
export const WEATHER_HISTORY: ChatMessage[] = [
  { role: "system", content: "You are terse." },
  { role: "user", content: "What is the weather in Paris?" },
  { role: "assistant", content: "", toolCalls: [{ id: "call_1", name: "get_weather", arguments: '{"city": "Paris", "unit": "c"}' }] },
  { role: "tool", toolCallId: "call_1", content: '{"temperature": 21}' },
  { role: "assistant", content: "It is 21 °C." },
  { role: "user", content: "And the time?" },
];
