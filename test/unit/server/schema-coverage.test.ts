// What the grammar enforces of a JSON schema (server/schema-coverage.ts) and the patterns flock
// rewrites for llama.cpp's converter (engine/schema-patterns.ts).
import { zodResponseFormat } from "openai/helpers/zod";
import { describe, expect, it } from "vitest";
import { z } from "zod";
import { translatePattern, translatePatterns } from "../../../engine/schema-patterns.js";
import { unenforcedKeyword, unsupportedPattern } from "../../../server/schema-coverage.js";

describe("translatePattern", () => {
  const patterns = [
    "^\\d{2,4}$",
    "^\\w+\\s\\d+$",
    "^.{1,5}$",
    "^[^@]+@[^@]+$",
    "^[\\w.\\-]+$",
    "^\\D\\W$",
    "^(?:[A-Za-z0-9_'+\\-]+\\.)?[A-Za-z0-9_+-]@a*$",
    "^[\\s\\d]+$",
  ];
  const alphabet = ['"', "\\", "\n", "\t", "\u2028", " ", "a", "Z", "_", "-", ".", "@", "'", "+", "0", "7", "é"];

  it("matches only strings the original matches, and none a JSON string cannot hold unescaped (random strings)", () => {
    let seed = 7;
    const random = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
    for (const pattern of patterns) {
      const original = new RegExp(pattern);
      const translated = translatePattern(pattern);
      expect(unsupportedPattern(translated), pattern).toBeUndefined();
      const rewritten = new RegExp(translated);
      let matched = 0;
      for (let n = 0; n < 20_000; n++) {
        const length = 1 + Math.floor(random() * 6);
        const text = Array.from({ length }, () => alphabet[Math.floor(random() * alphabet.length)]).join("");
        if (!rewritten.test(text)) continue;
        matched++;
        expect(original.test(text), `${pattern} → ${translated} on ${JSON.stringify(text)}`).toBe(true);
        expect(text, translated).not.toMatch(/["\\\x00-\x1F]/);
      }
      expect(matched, pattern).toBeGreaterThan(0);
    }
  });

  it("rewrites patterns in subschemas only, never in const or enum values", () => {
    const schema = { type: "object", properties: { a: { type: "string", pattern: "^\\d$" }, b: { const: { pattern: "^\\d$" } } }, anyOf: [{ pattern: "^\\w$" }] };
    expect(translatePatterns(schema)).toEqual({
      type: "object",
      properties: { a: { type: "string", pattern: "^[0-9]$" }, b: { const: { pattern: "^\\d$" } } },
      anyOf: [{ pattern: "^[A-Za-z0-9_]$" }],
    });
    expect(schema.properties.a.pattern).toBe("^\\d$");
  });
});

describe("unenforcedKeyword", () => {
  it.for([
    [{ type: "number", maximum: 1 }, "s.maximum"],
    [{ type: "integer", minimum: 0.5 }, "s.minimum"],
    [{ type: "integer", minimum: 0, exclusiveMinimum: 3 }, "s.exclusiveMinimum"],
    [{ type: "integer", multipleOf: 3 }, "s.multipleOf"],
    [{ type: "array", items: { type: "string" }, uniqueItems: true }, "s.uniqueItems"],
    [{ type: "array", prefixItems: [{}, {}], minItems: 3 }, "s.minItems"],
    [{ not: { const: 1 } }, "s.not"],
    [{ if: { const: 1 }, then: { const: 1 } }, "s.if"],
    [{ type: "array", items: {}, contains: { const: 1 } }, "s.contains"],
    [{ type: "object", properties: { a: {} }, minProperties: 1 }, "s.minProperties"],
    [{ type: "object", properties: { a: {} }, additionalProperties: true, maxProperties: 3 }, "s.maxProperties"],
    [{ type: "object", required: ["a"] }, "s.required"],
    [{ type: "object", patternProperties: { "^x": {} } }, "s.patternProperties"],
    [{ type: "string", format: "ipv6" }, "s.format"],
    [{ format: "uri" }, "s.format"],
    [{ type: "string", format: "date", minLength: 3 }, "s.minLength"],
    [{ minLength: 3 }, "s.minLength"],
    [{ $ref: "#/$defs/a", type: "string", $defs: { a: { type: "string" } } }, "s.type"],
    [{ allOf: [{ type: "string", minLength: 1 }] }, "s.allOf[0]"],
    [{ type: "object", properties: { a: { type: "array", items: { type: "number", minimum: 0 } } } }, "s.properties.a.items.minimum"],
    [{ type: ["number", "null"], minimum: 0 }, "s.minimum"],
  ] as const)("%j: not enforced at %s", ([schema, at]) => {
    expect(unenforcedKeyword(schema, "s")?.at).toBe(at);
  });

  describe("oneOf (written as anyOf: one alternative)", () => {
    const cat = { type: "object", properties: { kind: { const: "cat" }, meows: { type: "boolean" } }, required: ["kind", "meows"] };
    const dog = { type: "object", properties: { kind: { enum: ["dog", "puppy"] } }, required: ["kind"] };
    it.for([
      { oneOf: [{ type: "string" }, { type: "integer" }] },
      { oneOf: [{ const: "a" }, { const: "b" }, { type: "null" }] },
      { oneOf: [{ type: "string", enum: ["x"] }, { type: ["null", "boolean"] }] },
      // A discriminator, as pydantic writes a tagged union.
      { $defs: { Cat: cat, Dog: dog }, oneOf: [{ $ref: "#/$defs/Cat" }, { $ref: "#/$defs/Dog" }], discriminator: { propertyName: "kind" } },
      // A property one alternative requires and the other forbids.
      {
        oneOf: [
          { type: "object", properties: { a: { type: "string" } }, required: ["a"], additionalProperties: false },
          { type: "object", properties: { b: { type: "string" } }, required: ["b"], additionalProperties: false },
        ],
      },
    ])("%j: enforced, its alternatives exclude each other", (schema) => {
      expect(unenforcedKeyword(schema, "s")).toBeUndefined();
    });

    it.for([
      { oneOf: [{ type: "number" }, { type: "integer" }] },
      { oneOf: [{ type: "string" }, { type: "string", maxLength: 3 }] },
      { oneOf: [{ enum: [1, 2] }, { enum: [2, 3] }] },
      { oneOf: [{ type: "string" }, {}] },
      { oneOf: [{ type: "object", properties: { a: { type: "string" } } }, { type: "object", properties: { b: { type: "string" } } }] },
      { $defs: { Cat: cat }, oneOf: [{ $ref: "#/$defs/Cat" }, { $ref: "#/$defs/Cat" }] },
      { oneOf: [{ $ref: "#/$defs/missing" }, { type: "null" }] },
    ])("%j: not enforced, two alternatives may both match", (schema) => {
      const found = unenforcedKeyword(schema, "s");
      expect(found?.at).toBe("s.oneOf");
      expect(found?.reason).toMatch(/may both match/);
    });
  });

  it.for([
    { type: "integer", minimum: 0, maximum: 9, multipleOf: 1 },
    { type: ["integer", "null"], exclusiveMinimum: 0 },
    { type: "array", items: {}, maxItems: 1, uniqueItems: true },
    { type: "array", prefixItems: [{}, {}], minItems: 2, maxItems: 2 },
    { type: "object", properties: { a: {}, b: {} }, required: ["a"], minProperties: 1, maxProperties: 2 },
    { type: "string", format: "date-time" },
    { type: "string", format: "email", pattern: "^[a-z]+@[a-z]+$" },
    { type: "string", pattern: "^\\d+$" },
    { type: "string", minLength: 1, maxLength: 3 },
    { anyOf: [{ type: "string", maxLength: 3 }, { type: "null" }], description: "annotations are fine" },
    { type: "number", description: "a number", title: "n", examples: [1] },
    { enum: [1, 2], minimum: 5 },
    { type: "integer", "x-unknown": true },
  ])("%j: enforced", (schema) => {
    expect(unenforcedKeyword(schema, "s")).toBeUndefined();
  });

  it("zod's strict schemas through the SDK helper are enforced", () => {
    const Everything = z.object({
      n: z.int().min(1).max(9),
      s: z.string().max(5).nullable(),
      e: z.enum(["a", "b"]),
      tags: z.array(z.string().max(3)).min(1).max(2),
      at: z.iso.datetime(),
      day: z.iso.date(),
      mail: z.email(),
      id: z.uuid(),
      ip: z.ipv4(),
      either: z.union([z.int(), z.literal("none")]),
      nested: z.object({ k: z.boolean() }),
    });
    expect(unenforcedKeyword(zodResponseFormat(Everything, "e").json_schema.schema, "s")).toBeUndefined();
    expect(unenforcedKeyword(zodResponseFormat(z.object({ w: z.number().min(0) }), "w").json_schema.schema, "s")?.at).toBe("s.properties.w.minimum");
    expect(unenforcedKeyword(zodResponseFormat(z.object({ m: z.email().max(40) }), "m").json_schema.schema, "s")?.at).toBe("s.properties.m.maxLength");
  });
});
