// The sequence pool (engine/sequence-pool.ts) and the tokenizer unit (engine/tokenizer.ts), each
// without weights: the pool over fake cached sequences, the tokenizer over fake weights.
import { describe, expect, it } from "vitest";
import { FlockError } from "../../../engine/errors.js";
import { SequencePool } from "../../../engine/sequence-pool.js";
import type { SequenceCache } from "../../../engine/sequence.js";
import { Tokenizer, type TokenizerWeights } from "../../../engine/tokenizer.js";

const cached = (tokens: number[]): SequenceCache => ({ tokens, append: async () => [], cut: async () => {} });

/** A pool that lends { cache, release } so tests can see which sequence they got. */
function pool(caches: SequenceCache[], maxQueue = Infinity) {
  return new SequencePool("m", caches, maxQueue, (cache, release) => ({ cache, release }));
}

describe("sequence pool", () => {
  it("lends the idle sequence sharing the longest prefix with the prompt", async () => {
    const caches = [cached([1, 2]), cached([1, 2, 3, 4]), cached([5])];
    const p = pool(caches);
    expect((await p.acquire([1, 2, 3, 9])).cache).toBe(caches[1]);
    expect((await p.acquire([5, 6])).cache).toBe(caches[2]);
    expect([p.idle, p.running, p.waiting]).toEqual([1, 2, 0]);
  });

  it("queues past its sequences, hands a released one to the oldest waiter, and bounds the queue", async () => {
    const p = pool([cached([])], 1);
    const waits: number[] = [];
    p.onAcquire = (s) => waits.push(s);
    const first = await p.acquire([]);
    const second = p.acquire([]);
    expect(p.waiting).toBe(1);
    await expect(p.acquire([])).rejects.toMatchObject({ kind: "overloaded" });
    first.release();
    expect((await second).cache).toBe(first.cache);
    expect(waits).toHaveLength(2);
    expect(waits[0]).toBe(0);
  });

  it("drops an aborted waiter, and rejects the rest on rejectWaiters", async () => {
    const p = pool([cached([])]);
    const held = await p.acquire([]);
    const controller = new AbortController();
    const aborted = p.acquire([], controller.signal);
    const other = p.acquire([]);
    controller.abort(new Error("gone"));
    await expect(aborted).rejects.toThrow("gone");
    expect(p.waiting).toBe(1);
    p.rejectWaiters(new FlockError("unavailable", "closing"));
    await expect(other).rejects.toThrow("closing");
    let idle = 0;
    p.onAllIdle = () => idle++;
    held.release();
    expect([p.idle, idle]).toEqual([1, 1]);
  });

  it("admits up to sequences + maxQueue choices, and gives them back once", () => {
    const p = pool([cached([]), cached([])], 1);
    expect(p.capacity).toBe(3);
    const a = p.admit(2)!;
    expect(p.admit(2)).toBeNull();
    a();
    a(); // twice gives back once
    expect(p.admit(3)).not.toBeNull();
    expect(p.admit(1)).toBeNull();
  });
});

describe("tokenizer", () => {
  const vocabulary = ["<s>", "a", "▁héllo"];
  const weights = (bos: number | null, prepend: boolean, tokens = vocabulary) =>
    ({
      tokenize: (text: string) => [...text].map((c) => (c === "a" ? 1 : 2)),
      detokenize: (ids: readonly number[], special: boolean) => ids.map((t) => (special || t !== 0 ? tokens[t] : "")).join(""),
      tokens: { bos, shouldPrependBosToken: prepend },
      isEogToken: (t: number) => t === 0,
      fileInfo: { metadata: { tokenizer: { ggml: { tokens } } } },
    }) as unknown as TokenizerWeights;
  const template = { name: "fake", render: () => ({ prompt: "", tokens: [] }) as never };

  it("adds BOS only when asked and when the model wants one", () => {
    expect(new Tokenizer(weights(0, true), template).tokenizePrompt("ab")).toEqual([0, 1, 2]);
    expect(new Tokenizer(weights(0, true), template).tokenize("ab", { addSpecial: false, parseSpecial: false })).toEqual([1, 2]);
    expect(new Tokenizer(weights(0, false), template).tokenizePrompt("ab")).toEqual([1, 2]);
    expect(new Tokenizer(weights(null, true), template).tokenizePrompt("ab")).toEqual([1, 2]);
  });

  it("spells special tokens only in tokenText; knows its vocabulary", () => {
    const t = new Tokenizer(weights(0, true), template);
    expect(t.detokenize([0, 1])).toBe("a");
    expect(t.tokenText(0)).toBe("<s>");
    expect(t.isEndOfGeneration(0)).toBe(true);
    expect(t.vocabularySize).toBe(3);
    expect(t.chatTemplateName).toBe("fake");
    // "▁héllo" is 9 UTF-8 bytes, plus one for a leading space.
    expect(t.maxTokenBytes).toBe(10);
    expect(t.sameVocabulary(new Tokenizer(weights(0, true, [...vocabulary]), template))).toBe(true);
    expect(t.sameVocabulary(new Tokenizer(weights(0, true, ["<s>", "a", "b"]), template))).toBe(false);
  });
});
