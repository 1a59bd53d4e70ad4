// JSON-schema patterns rewritten into the regular-expression subset llama.cpp's converter
// translates to GBNF. The converter knows only GBNF's own escapes (\t \r \n \\ \" \[ \] \xHH
// \uHHHH and escaped metacharacters) and accepts any string for a pattern with another (its
// warning goes to stderr), so the escapes clients' schemas are full of — zod's email, date-time
// and the like — would hold nothing. Each rewrite matches exactly the strings the escape does, or
// (\s) a subset of them, so output that meets the rewritten pattern meets the client's.

/**
 * What the converter writes for a pattern goes into the JSON string unescaped, so a character
 * the pattern allows must be one a JSON string may hold as it is: not a quote, a backslash or a
 * control character. Every class that could match one (., negated classes, \D, \W) leaves them out.
 */
const JSON_UNSAFE = String.raw`"\\\x00-\x1F`;
/** An escape outside a character class, rewritten. */
const OUTSIDE: Record<string, string> = {
  d: "[0-9]",
  D: `[^0-9${JSON_UNSAFE}]`,
  w: "[A-Za-z0-9_]",
  W: `[^A-Za-z0-9_${JSON_UNSAFE}]`,
  // JavaScript's \s also matches tabs, newlines and Unicode spaces: a space is a subset.
  s: "[ ]",
};
/** An escape inside a character class: a range list; \s only where the class is not negated. */
const INSIDE: Record<string, string> = { d: "0-9", w: "A-Za-z0-9_" };
/** `.`: any character but line terminators, as JavaScript's, less the JSON-unsafe ones. */
const DOT = String.raw`[^${JSON_UNSAFE}\x7F\u2028\u2029]`;
const hex = (c: string) => `\\x${c.charCodeAt(0).toString(16).toUpperCase().padStart(2, "0")}`;

/**
 * `pattern` in the subset the converter translates, matching the same strings or a subset of
 * them: \d, \w, \s and escaped punctuation spelled out, and ., negated classes, \D and \W kept
 * from quotes, backslashes and control characters (which would break the JSON string).
 */
export function translatePattern(pattern: string): string {
  let out = "";
  let inClass = false;
  let negated = false;
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i];
    if (c !== "\\" || i + 1 >= pattern.length) {
      if (!inClass && c === "[") {
        inClass = true;
        negated = pattern[i + 1] === "^";
      } else if (inClass && c === "]") {
        inClass = false;
        if (negated) out += JSON_UNSAFE;
      } else if (!inClass && c === ".") {
        out += DOT;
        continue;
      }
      out += c;
      continue;
    }
    const e = pattern[++i];
    if (inClass) {
      if (INSIDE[e]) out += INSIDE[e];
      else if (e === "s" && !negated) out += " ";
      // Punctuation escaped in a class is the character itself: GBNF writes it in hex (a "-"
      // bare would make a range; "^" first would negate).
      else if (/[-./^$|?*+(){}!@#%&,:;<=>'~`_]/.test(e)) out += hex(e);
      else out += `\\${e}`;
    } else if (OUTSIDE[e]) out += OUTSIDE[e];
    else if (/[-/!@#%&,:;<=>'~`_]/.test(e)) out += e;
    else out += `\\${e}`;
  }
  return out;
}

const SCHEMA_MAPS = ["properties", "$defs", "definitions", "patternProperties", "dependentSchemas"];
const SCHEMA_LISTS = ["anyOf", "oneOf", "allOf", "prefixItems"];
const SCHEMA_VALUES = ["items", "additionalProperties", "not", "contains", "if", "then", "else", "propertyNames"];

/** A copy of `schema` with every subschema's pattern translated (values such as const and enum untouched). */
export function translatePatterns(schema: unknown): unknown {
  if (schema === null || typeof schema !== "object" || Array.isArray(schema)) return schema;
  const node = { ...(schema as Record<string, unknown>) };
  if (typeof node.pattern === "string") node.pattern = translatePattern(node.pattern);
  for (const key of SCHEMA_MAPS) {
    const map = node[key];
    if (map !== null && typeof map === "object" && !Array.isArray(map)) node[key] = Object.fromEntries(Object.entries(map).map(([k, v]) => [k, translatePatterns(v)]));
  }
  for (const key of SCHEMA_LISTS) if (Array.isArray(node[key])) node[key] = (node[key] as unknown[]).map(translatePatterns);
  for (const key of SCHEMA_VALUES) {
    if (Array.isArray(node[key])) node[key] = (node[key] as unknown[]).map(translatePatterns);
    else if (node[key] !== undefined) node[key] = translatePatterns(node[key]);
  }
  return node;
}
