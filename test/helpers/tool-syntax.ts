// The chat-template families whose tool-call syntax the tests write, and a call written in one.
import { ChatMLChatWrapper, Llama3_1ChatWrapper, QwenChatWrapper } from "node-llama-cpp";
import type { ToolCallSyntax } from "../../engine/chat-template.js";

export const TEMPLATE_FAMILIES = [
  ["chatml", new ChatMLChatWrapper()],
  ["qwen", new QwenChatWrapper()],
  ["llama-3.1", new Llama3_1ChatWrapper()],
] as const;

/** A call as the template writes it: prefix, name, params prefix, arguments, suffix. */
export function writeCall(syntax: ToolCallSyntax, name: string, args: string): string {
  const forName = (template: string) => template.replaceAll("{{functionName}}", name);
  return `${syntax.prefix}${name}${forName(syntax.paramsPrefix)}${args}${forName(syntax.suffix)}`;
}
