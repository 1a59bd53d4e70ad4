// Tool calling on chat completions: `tools` and `tool_choice` in, OpenAI's `tool_calls` out. The
// model writes a call in its chat template's own syntax (engine/chat-template.ts reads it off
// node-llama-cpp's wrapper for the GGUF's template): with tool_choice "required" or a named
// function, a grammar holds the output to valid calls whose arguments match the function's
// parameters, framed as the template frames parallel calls (one call for a named function or with
// parallel_tool_calls false); with "auto" the model may answer or call, and the calls in its
// output are parsed, their framing stripped.
import { randomBytes } from "node:crypto";
import { z } from "zod";
import type { RenderedPrompt, ToolCall, ToolCallSyntax, ToolDefinition } from "../engine/chat-template.js";
import { FlockError } from "../engine/errors.js";
import type { GrammarCompiler } from "../engine/grammar.js";
import { checkJsonSchema, refuseUnenforced } from "./output-format.js";

export const Tool = z.looseObject({
  type: z.literal("function"),
  function: z.looseObject({
    name: z.string().regex(/^[a-zA-Z0-9_-]{1,64}$/, "a function name of at most 64 letters, digits, _ or -"),
    description: z.string().nullish(),
    parameters: z.record(z.string(), z.unknown()).nullish(),
    strict: z.boolean().nullish(),
  }),
});

export const ToolChoice = z.union([
  z.enum(["none", "auto", "required"]),
  z.looseObject({ type: z.literal("function"), function: z.looseObject({ name: z.string() }) }),
]);

interface ToolFields {
  tools?: Array<z.infer<typeof Tool>> | null;
  tool_choice?: z.infer<typeof ToolChoice> | null;
  parallel_tool_calls?: boolean | null;
}

/** What a request's tools ask of the generation. */
export interface ToolPlan {
  mode: "auto" | "required";
  /** The functions offered (documented to the model, and parsed for). */
  tools: ToolDefinition[];
  /** The function a call must name (tool_choice naming one); else any of `tools`. */
  named?: string;
  /** parallel_tool_calls not false: a required call may be several, where the template frames parallel calls. */
  parallel?: boolean;
}

/** Arguments of a function declared without parameters: an empty object. */
const NO_PARAMETERS = { type: "object", properties: {}, additionalProperties: false };

/** The request's tools, checked; null when no function may be called (none given, or tool_choice "none"). */
export function toolPlan(body: ToolFields): ToolPlan | null {
  const tools = (body.tools ?? []).map((t, i): ToolDefinition => {
    const parameters = t.function.parameters ?? undefined;
    if (parameters) checkJsonSchema(parameters, `tools[${i}].function.parameters`, parameters);
    if (parameters && t.function.strict === true) refuseUnenforced(parameters, `tools[${i}].function.parameters`, `tools[${i}].function.parameters`);
    return { name: t.function.name, ...(t.function.description ? { description: t.function.description } : {}), ...(parameters ? { parameters } : {}) };
  });
  const names = new Set<string>();
  tools.forEach((t, i) => {
    if (names.has(t.name)) throw new FlockError("invalid_request", `tools[${i}]: function ${t.name} is declared twice`, "tools");
    names.add(t.name);
  });
  const choice = body.tool_choice ?? (tools.length > 0 ? "auto" : "none");
  if (choice !== "none" && tools.length === 0) throw new FlockError("invalid_request", `tool_choice ${JSON.stringify(choice)} needs tools`, "tool_choice");
  if (choice === "none") return null;
  const parallel = body.parallel_tool_calls !== false;
  if (typeof choice === "string") return { mode: choice, tools, parallel };
  if (!names.has(choice.function.name)) {
    throw new FlockError("invalid_request", `tool_choice names function ${choice.function.name}, which tools does not declare`, "tool_choice");
  }
  return { mode: "required", tools, named: choice.function.name, parallel };
}

/**
 * The prompt and grammar of a generation that may call `plan`'s tools: a required call is held to
 * the call grammar (which needs the native grammar kernels); in auto mode generation stops where
 * the model would go on to imagine the call's result.
 */
export function toolGeneration(plan: ToolPlan | null, rendered: RenderedPrompt, compiler: GrammarCompiler | null): { rendered: RenderedPrompt; grammar?: string } {
  if (!plan) return { rendered };
  if (plan.mode === "required") {
    if (!compiler) throw new FlockError("unsupported", "tool_choice required or a named function needs flock's native build (npm run build:native)", "tool_choice");
    return { rendered, grammar: toolCallGrammar(plan, rendered.toolSyntax, compiler) };
  }
  const resultPrefix = rendered.toolSyntax.resultPrefix;
  return { rendered: resultPrefix.trim() === "" ? rendered : { ...rendered, stopStrings: [...rendered.stopStrings, resultPrefix] } };
}

/** A GBNF string literal. */
const literal = (text: string) => `"${text.replace(/[\\"]/g, (c) => `\\${c}`).replace(/\n/g, "\\n").replace(/\r/g, "\\r").replace(/\t/g, "\\t")}"`;

/**
 * Renames every rule of a GBNF grammar with a prefix, so that several converted schemas share one
 * grammar: rule names outside string literals, character classes, repetition counts and comments.
 */
export function prefixRules(gbnf: string, prefix: string): string {
  let out = "";
  for (let i = 0; i < gbnf.length; ) {
    const c = gbnf[i];
    if (c === '"' || c === "[") {
      const close = c === '"' ? '"' : "]";
      let j = i + 1;
      while (j < gbnf.length && gbnf[j] !== close) j += gbnf[j] === "\\" ? 2 : 1;
      out += gbnf.slice(i, j + 1);
      i = j + 1;
    } else if (c === "{" || c === "#") {
      const j = gbnf.indexOf(c === "{" ? "}" : "\n", i);
      const end = j < 0 ? gbnf.length : j + 1;
      out += gbnf.slice(i, end);
      i = end;
    } else if (/[a-zA-Z0-9-]/.test(c)) {
      let j = i;
      while (j < gbnf.length && /[a-zA-Z0-9-]/.test(gbnf[j])) j++;
      out += prefix + gbnf.slice(i, j);
      i = j;
    } else {
      out += c;
      i++;
    }
  }
  return out;
}

/** The template's params prefix or suffix written for one function (`{{functionName}}` filled in). */
const forFunction = (template: string, name: string) => template.replaceAll("{{functionName}}", name);

/** The prefixes a call may start with: the template's own, then its alternates. */
const callPrefixes = (syntax: ToolCallSyntax) => [syntax.prefix, ...syntax.alternatePrefixes].filter((p) => p.trim().length > 0);

/** The section prefixes of the template's parallel calls (in full, then without special tokens' text), longest first. */
const sectionPrefixes = (syntax: ToolCallSyntax) =>
  syntax.parallel ? [syntax.parallel.sectionPrefix, ...syntax.parallel.sectionPrefixAlternates].filter((p) => p.trim().length > 0).sort((a, b) => b.length - a.length) : [];

/**
 * Where the calls start at or after `from`: the first call prefix, or the section prefix written
 * just before it (whitespace between); `call` is the call prefix.
 */
function findCallStart(text: string, syntax: ToolCallSyntax, prefixes: readonly string[], from: number): { start: number; call: { at: number; length: number } } | null {
  const call = findCallPrefix(text, prefixes, from);
  if (!call) return null;
  const before = text.slice(from, call.at).trimEnd();
  const section = sectionPrefixes(syntax).find((p) => before.endsWith(p));
  return { start: section === undefined ? call.at : from + before.length - section.length, call };
}

/** The first call prefix at or after `from` (the first listed where two start together), or null. */
function findCallPrefix(text: string, prefixes: readonly string[], from: number): { at: number; length: number } | null {
  let best: { at: number; length: number } | null = null;
  for (const p of prefixes) {
    const at = text.indexOf(p, from);
    if (at >= 0 && (!best || at < best.at)) best = { at, length: p.length };
  }
  return best;
}

/**
 * The declared function whose name, followed by its params prefix, is written at `at`, and where
 * its arguments start; `names` longest first, so that one name that starts another cannot shadow it.
 */
function calledAt(text: string, at: number, syntax: ToolCallSyntax, names: readonly string[]): { name: string; argsAt: number } | undefined {
  const name = names.find((n) => text.startsWith(n + forFunction(syntax.paramsPrefix, n), at));
  return name === undefined ? undefined : { name, argsAt: at + name.length + forFunction(syntax.paramsPrefix, name).length };
}

/** Declared names, longest first (what calledAt reads). */
const longestFirst = (tools: readonly ToolDefinition[]) => tools.map((t) => t.name).sort((a, b) => b.length - a.length);

/**
 * GBNF for the calls in the template's syntax, each the prefix, a declared function's name (or
 * the named one), its params prefix, arguments valid against its parameters, its suffix; framed
 * as the template frames parallel calls (section prefix, calls with the text between them,
 * section suffix up to where generation ends). Several calls only where the template frames them
 * and the plan allows them (tool_choice "required" without parallel_tool_calls false); else one.
 */
export function toolCallGrammar(plan: ToolPlan, syntax: ToolCallSyntax, compiler: GrammarCompiler): string {
  const callable = plan.named ? plan.tools.filter((t) => t.name === plan.named) : plan.tools;
  const rules: string[] = [];
  const alternatives = callable.map((tool, i) => {
    const args = prefixRules(compiler.jsonSchemaGrammar(tool.parameters ?? NO_PARAMETERS), `t${i}-`);
    rules.push(args);
    return `${literal(tool.name)} ${literal(forFunction(syntax.paramsPrefix, tool.name))} t${i}-root ${literal(forFunction(syntax.suffix, tool.name))}`;
  });
  const framing = syntax.parallel;
  const several = framing !== null && !plan.named && plan.parallel !== false;
  const words = (...parts: string[]) => parts.filter((p) => p.length > 0).join(" ");
  const calls = several ? `tool-call (${words(literal(framing.betweenCalls), "tool-call")})*` : "tool-call";
  return [
    `root ::= ${words(framing?.sectionPrefix ? literal(framing.sectionPrefix) : "", calls, framing?.sectionSuffix ? literal(framing.sectionSuffix) : "")}`,
    `tool-call ::= ${literal(syntax.prefix)} (${alternatives.join(" | ")})`,
    ...rules,
  ].join("\n");
}

/** The end of the JSON object or array starting at `start` (after whitespace), or -1. */
function jsonEnd(text: string, start: number): number {
  let i = start;
  while (i < text.length && /\s/.test(text[i])) i++;
  if (text[i] !== "{" && text[i] !== "[") return -1;
  let depth = 0;
  for (; i < text.length; i++) {
    const c = text[i];
    if (c === '"') {
      for (i++; i < text.length && text[i] !== '"'; i++) if (text[i] === "\\") i++;
    } else if (c === "{" || c === "[") depth++;
    else if (c === "}" || c === "]") {
      depth--;
      if (depth === 0) return i + 1;
    }
  }
  return -1;
}

const callId = () => `call_${randomBytes(12).toString("hex")}`;

/**
 * A finished choice's text as OpenAI's message: the calls parsed out of it when tools may be
 * called (`plan`), at most one with parallel_tool_calls false; else all of it content.
 */
export function choiceMessage(text: string, plan: ToolPlan | null, syntax: ToolCallSyntax, parallel: boolean | null | undefined): { content: string | null; calls: ToolCall[] } {
  if (!plan) return { content: text, calls: [] };
  const parsed = parseToolCalls(text, syntax, plan.tools);
  return parallel === false ? { ...parsed, calls: parsed.calls.slice(0, 1) } : parsed;
}

/**
 * The calls in a generated text: the text before the first call prefix (and the section prefix of
 * parallel calls just before it) is the content (null when empty), then each call's name, JSON
 * arguments and suffix, in the template's syntax; the text between calls and the section's
 * suffix are passed over. Text that does not parse as calls stays content, with no calls.
 */
export function parseToolCalls(text: string, syntax: ToolCallSyntax, tools: readonly ToolDefinition[]): { content: string | null; calls: ToolCall[] } {
  const prefixes = callPrefixes(syntax);
  const first = findCallStart(text, syntax, prefixes, 0);
  if (!first) return { content: text, calls: [] };
  const calls: ToolCall[] = [];
  const names = longestFirst(tools);
  let next: { at: number; length: number } | null = first.call;
  while (next) {
    const called = calledAt(text, next.at + next.length, syntax, names);
    if (called === undefined) return { content: text, calls: [] };
    const end = jsonEnd(text, called.argsAt);
    if (end < 0) return { content: text, calls: [] };
    const args = text.slice(called.argsAt, end).trim();
    try {
      JSON.parse(args);
    } catch {
      return { content: text, calls: [] };
    }
    calls.push({ id: callId(), name: called.name, arguments: args });
    const suffix = forFunction(syntax.suffix, called.name);
    next = findCallPrefix(text, prefixes, text.startsWith(suffix, end) ? end + suffix.length : end);
  }
  const content = text.slice(0, first.start).trim();
  return { content: content.length > 0 ? content : null, calls };
}

/** One entry of a stream chunk's delta.tool_calls. */
export interface ToolCallDelta {
  index: number;
  id?: string;
  type?: "function";
  function: { name?: string; arguments: string };
}

/**
 * The stream deltas of one call as its text grows (`text` starts where the call does, with one
 * of `prefixes`): the id and name once the name is written, then each new fragment of the
 * arguments, up to the end of their JSON (the suffix after it is not sent).
 */
class CallStream {
  private call: { id: string; name: string; argsAt: number } | null = null;
  private sent = 0;
  /** Where the call's text ends (after its arguments and any suffix), once it is written. */
  end = -1;

  constructor(
    private readonly syntax: ToolCallSyntax,
    private readonly tools: readonly ToolDefinition[],
    private readonly index: number,
    private readonly prefixes: readonly string[],
  ) {}

  /** Whether the call's name was written. */
  get started(): boolean {
    return this.call !== null;
  }

  deltas(text: string): ToolCallDelta[] {
    const out: ToolCallDelta[] = [];
    if (!this.call) {
      const names = longestFirst(this.tools);
      for (const prefix of this.prefixes) {
        const called = text.startsWith(prefix) ? calledAt(text, prefix.length, this.syntax, names) : undefined;
        if (called !== undefined) {
          this.call = { id: callId(), ...called };
          break;
        }
      }
      if (!this.call) return out;
      out.push({ index: this.index, id: this.call.id, type: "function", function: { name: this.call.name, arguments: "" } });
    }
    const args = text.slice(this.call.argsAt);
    if (this.sent === 0) this.sent = args.length - args.trimStart().length;
    const end = jsonEnd(args, 0);
    const upTo = end >= 0 ? end : args.length;
    if (upTo > this.sent) {
      out.push({ index: this.index, function: { arguments: args.slice(this.sent, upTo) } });
      this.sent = upTo;
    }
    if (end >= 0) {
      const suffix = forFunction(this.syntax.suffix, this.call.name);
      this.end = this.call.argsAt + end + (args.startsWith(suffix, end) ? suffix.length : 0);
    }
    return out;
  }
}

/**
 * The stream deltas of required calls as their text grows (tool_choice "required" or named: the
 * grammar makes the whole output the calls, in the template's parallel framing where it has one).
 */
export class RequiredCallStream {
  private readonly calls: AutoCallStream;

  constructor(syntax: ToolCallSyntax, tools: readonly ToolDefinition[]) {
    this.calls = new AutoCallStream(syntax, tools, true);
  }

  /** Whether a call's name was written (then the choice finishes with "tool_calls"). */
  get started(): boolean {
    return this.calls.calling;
  }

  deltas(text: string): ToolCallDelta[] {
    return this.calls.step(text).calls;
  }
}

/**
 * The stream deltas of a choice that may call (tool_choice "auto") as its text grows: content as
 * it is written, held back only where it could be the start of a call prefix (or of the section
 * prefix of parallel calls and a call prefix), and its trailing whitespace (which the message
 * drops before a call); from the first call prefix on, each call's
 * id and name once written, then its arguments as they are written. `finish` sends what the
 * whole text's parse (choiceMessage) leaves: text that did not turn out a call is content. A
 * call whose deltas went out stays sent even where text after it fails to parse.
 */
export class AutoCallStream {
  private sent = 0;
  private readonly calls: Array<{ at: number; stream: CallStream }> = [];
  private readonly prefixes: string[];
  /** What a call's text may start with: a call prefix, or a section prefix and a call prefix. */
  private readonly starts: string[];

  constructor(
    private readonly syntax: ToolCallSyntax,
    private readonly tools: readonly ToolDefinition[],
    /** parallel_tool_calls: false streams the first call only. */
    private readonly parallel: boolean,
  ) {
    // Longest first: a call is read with the longest prefix its text starts with.
    this.prefixes = callPrefixes(syntax).sort((a, b) => b.length - a.length);
    this.starts = [...this.prefixes, ...sectionPrefixes(syntax).flatMap((section) => this.prefixes.map((prefix) => section + prefix))];
  }

  /** Whether a call's name was written. */
  get calling(): boolean {
    return this.calls.some((c) => c.stream.started);
  }

  step(text: string): { content: string; calls: ToolCallDelta[] } {
    let content = "";
    if (this.calls.length === 0) {
      const first = findCallStart(text, this.syntax, this.prefixes, this.sent);
      const written = text.trimEnd();
      let safe = first ? first.start : written.length - this.possiblePrefixTail(written);
      while (safe > this.sent && /\s/.test(text[safe - 1])) safe--;
      if (safe > this.sent) {
        content = text.slice(this.sent, safe);
        this.sent = safe;
      }
      if (!first) return { content, calls: [] };
      this.calls.push({ at: first.call.at, stream: new CallStream(this.syntax, this.tools, 0, this.prefixes) });
    }
    const deltas: ToolCallDelta[] = [];
    for (;;) {
      const { at, stream } = this.calls[this.calls.length - 1];
      deltas.push(...stream.deltas(text.slice(at)));
      if (stream.end < 0 || !this.parallel) break;
      const next = findCallPrefix(text, this.prefixes, at + stream.end);
      if (!next) break;
      this.calls.push({ at: next.at, stream: new CallStream(this.syntax, this.tools, this.calls.length, this.prefixes) });
    }
    return { content, calls: deltas };
  }

  /** The content still owed once the choice is complete, given its parsed message. */
  finish(text: string, message: { calls: readonly ToolCall[] }): string {
    if (message.calls.length > 0 || this.calling) return "";
    const rest = text.slice(this.sent);
    this.sent = text.length;
    return rest;
  }

  /** The length of the longest end of `text` that a call's start (a call prefix, or a section prefix and a call prefix) begins with. */
  private possiblePrefixTail(text: string): number {
    let longest = 0;
    for (const prefix of this.starts) {
      for (let k = Math.min(prefix.length - 1, text.length); k > longest; k--) {
        if (text.endsWith(prefix.slice(0, k))) {
          longest = k;
          break;
        }
      }
    }
    return longest;
  }
}
