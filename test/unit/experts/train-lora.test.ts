// Training files and splits for npm run train:expert (experts/train-lora.ts); the native
// training itself is test/train-expert.test.ts.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Llama } from "node-llama-cpp";
import { afterAll, describe, expect, it } from "vitest";
import { readTrainingDocuments, splitValidation, trainLora } from "../../../experts/train-lora.js";

const dir = mkdtempSync(join(tmpdir(), "flock-train-unit-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("training documents", () => {
  it("reads text as paragraphs and JSONL as text, prompt + completion or chat messages", () => {
    const txt = join(dir, "a.txt");
    writeFileSync(txt, "First paragraph\nstill first.\n\n\n  Second one.  \n\n");
    expect(readTrainingDocuments(txt)).toEqual(["First paragraph\nstill first.", "Second one."]);
    const jsonl = join(dir, "a.jsonl");
    writeFileSync(
      jsonl,
      [
        JSON.stringify({ text: "plain" }),
        "",
        JSON.stringify({ prompt: "Q: 1+1? ", completion: "A: 2" }),
        JSON.stringify({ messages: [{ role: "user", content: "hi" }, { role: "assistant", content: "hello" }] }),
      ].join("\n"),
    );
    expect(readTrainingDocuments(jsonl)).toEqual(["plain", "Q: 1+1? A: 2", "hi\nhello"]);
    writeFileSync(jsonl, `${JSON.stringify({ text: "ok" })}\n{"other": 1}\n`);
    expect(() => readTrainingDocuments(jsonl)).toThrow(/a\.jsonl:2/);
    writeFileSync(jsonl, "not json\n");
    expect(() => readTrainingDocuments(jsonl)).toThrow(/a\.jsonl:1: not JSON/);
  });

  it("holds out the last documents, or the end of a single one at a word boundary", () => {
    const docs = Array.from({ length: 10 }, (_, i) => `doc ${i}`);
    expect(splitValidation(docs, 0.2)).toEqual({ train: docs.slice(0, 8), validation: docs.slice(8) });
    expect(splitValidation(docs.slice(0, 2), 0.01)).toEqual({ train: ["doc 0"], validation: ["doc 1"] });
    const one = splitValidation(["aaaa bbbb cccc dddd eeee"], 0.3);
    expect(one.train[0] + " " + one.validation[0]).toBe("aaaa bbbb cccc dddd eeee");
    expect(one.validation[0]).toBe("eeee");
    expect(() => splitValidation(docs, 0)).toThrow();
    expect(() => splitValidation([], 0.1)).toThrow();
  });

  it("names the build that lacks the trainer", () => {
    expect(() => trainLora({ _bindings: {} } as unknown as Llama, { modelPath: "m", out: "o", train: [], validation: [] })).toThrow(/build:native/);
  });
});
