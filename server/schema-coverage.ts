// What llama.cpp's JSON-schema converter (common/json-schema-to-grammar.cpp, the one flock's addon
// calls) really holds the output to. It picks one rule per schema node, in a fixed order ($ref,
// anyOf/oneOf, a list of types, const, enum, object with properties, allOf, array with items,
// pattern, format, string lengths, integer range, bare type), and ignores every other keyword of
// that node. A strict schema with an assertion the grammar would not enforce is refused here, so
// that strict output always validates; this walk follows the converter's order to say which.

/** Formats the converter has a rule for (uuid, uuid1…uuid5, date, time, date-time). */
const FORMATS = /^(uuid[1-5]?|date|time|date-time)$/;

/** Assertions the converter enforces nowhere (the trivial cases are let through below). */
const NEVER = ["not", "if", "then", "else", "contains", "minContains", "maxContains", "dependentRequired", "dependentSchemas", "dependencies", "propertyNames", "patternProperties", "unevaluatedProperties", "unevaluatedItems"] as const;

/** Assertion keywords by the instance type they constrain (validators skip them on other types). */
const STRING_KEYS = ["minLength", "maxLength", "pattern", "format"] as const;
const NUMBER_KEYS = ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"] as const;
const ARRAY_KEYS = ["items", "prefixItems", "minItems", "maxItems", "uniqueItems"] as const;
const OBJECT_KEYS = ["properties", "required", "additionalProperties", "minProperties", "maxProperties"] as const;
const ANY_KEYS = ["type", "enum", "const", "allOf", "anyOf", "oneOf", "$ref"] as const;

import { translatePattern } from "../engine/schema-patterns.js";

type Node = Record<string, unknown>;

/** A keyword the grammar would not enforce: its JSON path and why. */
export interface Unenforced {
  at: string;
  reason: string;
}

/**
 * The first assertion of `schema` that the converted grammar would not enforce, or undefined
 * when the grammar holds output to all of them. `path` names the schema in messages.
 */
export function unenforcedKeyword(schema: unknown, path: string): Unenforced | undefined {
  return visit(schema, path, schema);
}

function visit(schema: unknown, path: string, root: unknown): Unenforced | undefined {
  if (schema === null || typeof schema !== "object" || Array.isArray(schema)) return undefined;
  const node = schema as Node;
  const has = (key: string) => node[key] !== undefined;
  const miss = (key: string, reason: string): Unenforced => ({ at: `${path}.${key}`, reason: `${key} is not enforced ${reason}` });
  /** The first of `keys` present on the node, refused with `reason`. */
  const ignored = (keys: readonly string[], reason: string) => {
    const key = keys.find(has);
    return key === undefined ? undefined : miss(key, reason);
  };
  const sub = (key: string, value: unknown) => visit(value, `${path}.${key}`, root);
  const each = (key: string) => {
    const map = node[key];
    if (map === null || typeof map !== "object") return undefined;
    for (const [name, value] of Object.entries(map)) {
      const found = visit(value, `${path}.${key}${Array.isArray(map) ? `[${name}]` : `.${name}`}`, root);
      if (found) return found;
    }
    return undefined;
  };

  // Definitions are converted where they are referenced: checked once, here.
  const defs = each("$defs") ?? each("definitions");
  if (defs) return defs;

  for (const key of NEVER) if (has(key)) return miss(key, "by the grammar (llama.cpp's converter ignores it)");

  const type = node.type;
  if (has("$ref")) return ignored([...STRING_KEYS, ...NUMBER_KEYS, ...ARRAY_KEYS, ...OBJECT_KEYS, "type", "enum", "const", "allOf", "anyOf", "oneOf", "uniqueItems"], "beside $ref (the converter follows the reference only)");
  if (has("anyOf") || has("oneOf")) {
    const key = has("oneOf") ? "oneOf" : "anyOf";
    const beside = ignored([...STRING_KEYS, ...NUMBER_KEYS, ...ARRAY_KEYS, ...OBJECT_KEYS, "type", "enum", "const", "allOf", key === "oneOf" ? "anyOf" : "oneOf"], `beside ${key} (the converter holds the output to one of the alternatives only: move it into each)`);
    if (beside) return beside;
    // The grammar writes one alternative (anyOf); oneOf also forbids matching a second one.
    const overlap = key === "oneOf" && Array.isArray(node.oneOf) ? overlappingAlternatives(node.oneOf as unknown[], root) : undefined;
    if (overlap) {
      const [i, j] = overlap;
      return miss("oneOf", `where alternatives ${i} and ${j} may both match (the grammar writes one alternative as anyOf would, and cannot keep it from matching another: tell them apart by type, by const or enum values, or by a required property with distinct const values, or use anyOf)`);
    }
    return each(key);
  }
  if (Array.isArray(type)) {
    for (const t of type) {
      const found = visit({ ...node, type: t }, path, root);
      if (found) return found;
    }
    return undefined;
  }
  // A listed value: the output is one of them (values the other keywords forbid make the schema unsatisfiable).
  if (has("const") || has("enum")) return undefined;

  const additional = node.additionalProperties;
  if ((type === undefined || type === "object") && (has("properties") || (has("additionalProperties") && additional !== true))) {
    const found = ignored(["allOf"], "beside properties (the converter builds the object from properties only)") ?? objectCounts(node, path);
    if (found) return found;
    const required = Array.isArray(node.required) ? (node.required as unknown[]) : [];
    if (!has("properties") && required.length > 0) return miss("required", "without properties (name each required property under properties)");
    return each("properties") ?? (typeof additional === "object" ? sub("additionalProperties", additional) : undefined);
  }
  if ((type === undefined || type === "object" || type === "string") && has("allOf")) {
    const beside = ignored([...STRING_KEYS, ...NUMBER_KEYS, ...ARRAY_KEYS, "minProperties", "maxProperties", "required", "additionalProperties"], "beside allOf (the converter merges the properties of allOf's members only)");
    if (beside) return beside;
    const members = node.allOf as unknown[];
    for (const [i, member] of members.entries()) {
      const at = `${path}.allOf[${i}]`;
      const alternatives = member !== null && typeof member === "object" && Array.isArray((member as Node).anyOf) ? ((member as Node).anyOf as unknown[]) : [member];
      for (const m of alternatives) {
        const part = (m ?? {}) as Node;
        if (part.$ref !== undefined) continue;
        if (part.properties === undefined && part.enum === undefined) return { at, reason: "allOf is enforced only as a merge of objects' properties (or an intersection of enums): this member would be ignored" };
        const extra = Object.keys(part).find((k) => !["properties", "required", "type", "additionalProperties", "enum", "title", "description"].includes(k) && ([...STRING_KEYS, ...NUMBER_KEYS, ...ARRAY_KEYS, ...OBJECT_KEYS, ...ANY_KEYS] as readonly string[]).includes(k));
        if (extra) return { at: `${at}.${extra}`, reason: `${extra} is not enforced inside allOf (the converter merges the members' properties only)` };
        const props = part.properties && typeof part.properties === "object" ? Object.entries(part.properties as object) : [];
        for (const [name, value] of props) {
          const found = visit(value, `${at}.properties.${name}`, root);
          if (found) return found;
        }
      }
    }
    return undefined;
  }
  if ((type === undefined || type === "array") && (has("items") || has("prefixItems"))) {
    if (has("items") && has("prefixItems")) return miss("prefixItems", "beside items (the converter reads items only)");
    const items = has("items") ? node.items : node.prefixItems;
    const key = has("items") ? "items" : "prefixItems";
    if (Array.isArray(items)) {
      const n = items.length;
      if (typeof node.minItems === "number" && node.minItems > n) return miss("minItems", `on a tuple of ${n} items (the converter writes exactly ${n})`);
      if (typeof node.maxItems === "number" && node.maxItems < n) return miss("maxItems", `on a tuple of ${n} items (the converter writes exactly ${n})`);
      if (node.uniqueItems === true && n > 1) return miss("uniqueItems", "by the grammar (llama.cpp's converter ignores it)");
      return each(key);
    }
    if (node.uniqueItems === true && !(typeof node.maxItems === "number" && node.maxItems <= 1)) return miss("uniqueItems", "by the grammar (llama.cpp's converter ignores it)");
    return sub(key, items);
  }
  if (type === undefined || type === "string") {
    if (has("pattern")) {
      const unsafe = typeof node.pattern === "string" ? jsonUnsafePattern(node.pattern) : undefined;
      if (unsafe) return { at: `${path}.pattern`, reason: `the pattern is not enforced: ${unsafe}` };
      const unsupported = typeof node.pattern === "string" ? unsupportedPattern(translatePattern(node.pattern)) : undefined;
      if (unsupported) return { at: `${path}.pattern`, reason: `the pattern is not enforced: ${unsupported} (llama.cpp's converter would accept any string)` };
      // A format beside it is read as an annotation (JSON Schema's default): the pattern decides.
      return ignored(["minLength", "maxLength"], "beside pattern (the converter holds the string to the pattern only: fold it into the pattern)");
    }
    const format = node.format;
    if (typeof format === "string" && FORMATS.test(format)) return ignored(["minLength", "maxLength"], `beside format ${format} (the converter holds the string to the format only)`);
    if (has("format")) return miss("format", `(llama.cpp's converter has rules for uuid, date, time and date-time only${type === "string" ? "; give a pattern instead" : ""})`);
    if (type === "string") return undefined; // lengths: enforced
  }
  if (type === "integer") {
    for (const key of ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"] as const) {
      if (has(key) && !Number.isSafeInteger(node[key])) return miss(key, "unless it is an integer (the converter rounds an integer's bounds)");
    }
    if (has("minimum") && has("exclusiveMinimum")) return miss("exclusiveMinimum", "beside minimum (the converter reads minimum only)");
    if (has("maximum") && has("exclusiveMaximum")) return miss("exclusiveMaximum", "beside maximum (the converter reads maximum only)");
    if (has("multipleOf") && node.multipleOf !== 1) return miss("multipleOf", "by the grammar (llama.cpp's converter ignores it)");
    return undefined;
  }
  if (type === "number") return ignored(NUMBER_KEYS, "on numbers (llama.cpp's converter bounds integers only: use type integer, or drop the bound)");
  if (type === "object") return objectCounts(node, path) ?? ignored(["required"], "on an object without properties (the converter writes any object: declare the properties)");
  if (type === "array") {
    if (typeof node.minItems === "number" && node.minItems > 0) return miss("minItems", "without items (the converter writes any array: give items)");
    if (typeof node.maxItems === "number") return miss("maxItems", "without items (the converter writes any array: give items)");
    if (node.uniqueItems === true) return miss("uniqueItems", "by the grammar (llama.cpp's converter ignores it)");
    return undefined;
  }
  if (type === undefined) {
    // No rule of its own: the converter writes any JSON value.
    return ignored([...NUMBER_KEYS, "minLength", "maxLength", "minItems", "maxItems", "uniqueItems", "required", "minProperties", "maxProperties"], "without a type (the converter writes any JSON value: give the type)");
  }
  return undefined;
}

/** minProperties and maxProperties, which the grammar meets only where its required and declared properties do. */
function objectCounts(node: Node, path: string): Unenforced | undefined {
  const properties = node.properties && typeof node.properties === "object" ? Object.keys(node.properties) : [];
  const required = Array.isArray(node.required) ? new Set((node.required as unknown[]).filter((r) => properties.includes(r as string))) : new Set();
  const open = node.additionalProperties === true || (typeof node.additionalProperties === "object" && node.additionalProperties !== null) || (node.properties === undefined && node.additionalProperties === undefined);
  if (typeof node.minProperties === "number" && node.minProperties > required.size) {
    return { at: `${path}.minProperties`, reason: `minProperties is not enforced: the grammar requires only the ${required.size} required properties (list more under required)` };
  }
  if (typeof node.maxProperties === "number" && (open || properties.length > node.maxProperties)) {
    return { at: `${path}.maxProperties`, reason: `maxProperties is not enforced: the grammar allows ${open ? "any number of" : `all ${properties.length} declared`} properties` };
  }
  return undefined;
}

/**
 * Why a pattern's literal characters would break the JSON string: the converter writes them
 * unescaped, so a quote, a backslash or a control character it requires ends the string early or
 * makes it invalid (classes that merely allow them are narrowed instead: engine/schema-patterns.ts).
 */
function jsonUnsafePattern(pattern: string): string | undefined {
  let inClass = false;
  let negated = false;
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i];
    // Inside a negated class these characters are excluded, which is safe.
    const safe = inClass && negated;
    if (c === "[" && !inClass) {
      inClass = true;
      negated = pattern[i + 1] === "^";
    } else if (c === "]" && inClass) inClass = false;
    else if (c === '"' && !safe) return "it allows a quote, which the grammar would put in the JSON string unescaped";
    else if (c === "\\") {
      const e = pattern[++i] ?? "";
      if (!safe && (e === "\\" || e === '"' || /[tnrfv0]/.test(e) || /^(x[01]|u00[01])/.test(pattern.slice(i, i + 4)))) {
        return `it allows the escape \\${e} (a backslash, quote or control character), which the grammar would put in the JSON string unescaped`;
      }
    }
  }
  return undefined;
}

/**
 * Why llama.cpp's converter would not translate `pattern` (it then accepts any string), or
 * undefined where it does: the same scan as its _pattern_to_rule, which supports anchored
 * patterns of literals, `.`, groups, `(?:…)`, classes, alternation and quantifiers, with only the
 * escapes GBNF has (\t \r \n \\ \" \[ \] \xHH \uHHHH and escaped metacharacters; flock first
 * spells out \d, \w, \s and escaped punctuation: engine/schema-patterns.ts), no lookarounds,
 * back-references or anchors inside. Invalid patterns fail elsewhere.
 */
export function unsupportedPattern(pattern: string): string | undefined {
  if (pattern.length < 2 || !pattern.startsWith("^") || !pattern.endsWith("$")) return "it is not anchored with ^ and $";
  const s = pattern.slice(1, -1);
  const METACHARACTERS = "^$.[](){}|*+?";
  const NON_LITERAL = new Set(METACHARACTERS);
  const escapeLength = (i: number): number => {
    if (i + 1 >= s.length || s[i] !== "\\") return 0;
    const hex = { x: 2, u: 4, U: 8 }[s[i + 1]];
    if (hex === undefined) return 't r n \\ " [ ]'.split(" ").includes(s[i + 1]) ? 2 : 0;
    return /^[0-9a-fA-F]+$/.test(s.slice(i + 2, i + 2 + hex)) && i + 2 + hex <= s.length ? 2 + hex : 0;
  };
  let depth = 0;
  for (let i = 0; i < s.length; ) {
    const c = s[i];
    if (c === "." || c === "|" || c === "*" || c === "+" || c === "?") i++;
    else if (c === "(") {
      i++;
      if (s[i] === "?") {
        if (s[i + 1] !== ":") return "it has a lookaround, a named group or inline flags";
        i += 2;
      }
      if (++depth > 100) return "it nests too deep";
    } else if (c === ")") {
      i++;
      depth--;
    } else if (c === "^" || c === "$") return "it has an anchor inside";
    else if (c === "[") {
      i++;
      while (i < s.length && s[i] !== "]") {
        if (s[i] === "\\") {
          const n = escapeLength(i);
          if (n === 0) return `it has the escape ${s.slice(i, i + 2)} in a character class (GBNF has none: spell it out, e.g. 0-9 or \\x2D)`;
          i += n;
        } else i++;
      }
      if (i >= s.length) return undefined; // invalid: the converter refuses it
      i++;
    } else if (c === "{") {
      const close = s.indexOf("}", i);
      if (close < 0) return "it has an unterminated {";
      const nums = s.slice(i + 1, close).split(",");
      if (nums.length !== 1 && nums.length !== 2) return "it has a repetition with a wrong number of values";
      if ((nums.length === 1 ? nums : nums.filter((x) => x !== "")).some((x) => !/^\s*[+-]?\d/.test(x))) return "it has a repetition with an invalid count";
      i = close + 1;
    } else {
      let literal = 0;
      while (i < s.length) {
        if (s[i] === "\\") {
          if (i === s.length - 1) return undefined; // invalid: the converter refuses it
          if (METACHARACTERS.includes(s[i + 1])) i += 2;
          else {
            const n = escapeLength(i);
            if (n === 0) return `it has the escape ${s.slice(i, i + 2)} (GBNF has none: spell it out, e.g. [0-9] for \\d)`;
            i += n;
          }
          literal++;
        } else if (s[i] === '"') {
          i++;
          literal++;
        } else if (!NON_LITERAL.has(s[i]) && (i === s.length - 1 || literal === 0 || s[i + 1] === "." || !NON_LITERAL.has(s[i + 1]))) {
          i++;
          literal++;
        } else break;
      }
      if (literal === 0) return `it has a character the converter does not read here: ${c}`;
    }
  }
  return undefined;
}

type Kind = "null" | "boolean" | "integer" | "number" | "string" | "array" | "object";

/** The JSON type of a value; numbers with a fractional part are "number", whole ones "integer". */
function kindOf(value: unknown): Kind {
  if (value === null) return "null";
  if (Array.isArray(value)) return "array";
  if (typeof value === "number") return Number.isInteger(value) ? "integer" : "number";
  return typeof value as Kind;
}

/** JSON text with object keys sorted: equal for equal JSON values. */
function canonical(value: unknown): string {
  if (value === null || typeof value !== "object") return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map(canonical).join(",")}]`;
  return `{${Object.keys(value).sort().map((k) => `${JSON.stringify(k)}:${canonical((value as Node)[k])}`).join(",")}}`;
}

/** A schema with its local $ref followed (into $defs or definitions of the root), or undefined where it cannot be. */
function resolved(schema: unknown, root: unknown, depth = 0): Node | undefined {
  if (schema === null || typeof schema !== "object" || Array.isArray(schema)) return undefined;
  const node = schema as Node;
  if (typeof node.$ref !== "string") return node;
  const match = /^#\/(\$defs|definitions)\/([^/]+)$/.exec(node.$ref);
  const defs = match && root !== null && typeof root === "object" ? (root as Node)[match[1]] : undefined;
  if (!match || depth > 16 || defs === null || typeof defs !== "object") return undefined;
  return resolved((defs as Node)[decodeURIComponent(match[2]).replace(/~1/g, "/").replace(/~0/g, "~")], root, depth + 1);
}

/** The values a schema accepts where it lists them (const or enum). */
function listedValues(node: Node): Set<string> | undefined {
  if (node.const !== undefined) return new Set([canonical(node.const)]);
  return Array.isArray(node.enum) ? new Set(node.enum.map(canonical)) : undefined;
}

/** The JSON types a schema accepts, or undefined where it accepts any (a validator skips the keywords of other types). */
function acceptedKinds(node: Node): Set<Kind> | undefined {
  if (node.const !== undefined) return new Set([kindOf(node.const)]);
  if (Array.isArray(node.enum)) return new Set(node.enum.map(kindOf));
  const types = typeof node.type === "string" ? [node.type] : Array.isArray(node.type) ? (node.type as string[]) : undefined;
  if (!types) return undefined;
  // A whole number is an integer and a number alike.
  return new Set(types.flatMap((t): Kind[] => (t === "number" ? ["number", "integer"] : [t as Kind])));
}

const disjointSets = (a: Set<string>, b: Set<string>) => [...a].every((v) => !b.has(v));

/** Whether no object valid against `a` is valid against `b`: a property one requires whose values the two keep apart, or that the other forbids. */
function objectsDisjoint(a: Node, b: Node, root: unknown): boolean {
  const required = (n: Node) => (Array.isArray(n.required) ? (n.required as unknown[]).filter((r): r is string => typeof r === "string") : []);
  const property = (n: Node, name: string) => (n.properties && typeof n.properties === "object" ? (n.properties as Node)[name] : undefined);
  const forbids = (n: Node, name: string) => n.additionalProperties === false && property(n, name) === undefined;
  for (const [x, y] of [
    [a, b],
    [b, a],
  ]) {
    for (const name of required(x)) {
      if (forbids(y, name)) return true;
      if (!required(y).includes(name)) continue;
      const px = resolved(property(x, name), root);
      const py = resolved(property(y, name), root);
      const vx = px && listedValues(px);
      const vy = py && listedValues(py);
      if (vx && vy && disjointSets(vx, vy)) return true;
    }
  }
  return false;
}

/**
 * Two alternatives of a oneOf that some value may match both of, as [i, j], or undefined where
 * every pair is provably apart: by the types they accept, the values they list, or (objects) a
 * required property with distinct listed values — a discriminator — or one the other forbids.
 */
function overlappingAlternatives(alternatives: unknown[], root: unknown): [number, number] | undefined {
  const nodes = alternatives.map((a) => resolved(a, root));
  for (let i = 0; i < nodes.length; i++) {
    for (let j = i + 1; j < nodes.length; j++) {
      const a = nodes[i];
      const b = nodes[j];
      if (!a || !b) return [i, j];
      const ka = acceptedKinds(a);
      const kb = acceptedKinds(b);
      const shared = ka && kb ? [...ka].filter((k) => kb.has(k)) : undefined;
      if (shared && shared.length === 0) continue;
      const va = listedValues(a);
      const vb = listedValues(b);
      if (va && vb && disjointSets(va, vb)) continue;
      if (shared && shared.every((k) => k === "object") && objectsDisjoint(a, b, root)) continue;
      return [i, j];
    }
  }
  return undefined;
}
