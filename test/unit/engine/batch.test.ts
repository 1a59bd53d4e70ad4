// engine/batch.ts's scheduling against a fake of the addon's batch calls that checks what
// llama.cpp requires: one decode at a time, consecutive positions per sequence, cache cuts only
// between decodes. The real path runs in every integration test.
import type { LlamaContext } from "node-llama-cpp";
import { describe, expect, it } from "vitest";
import { BatchDecoder, BatchedSequence } from "../../../engine/batch.js";
import type { PositionOutput } from "../../../engine/native.js";

class FakeAddon {
  /** Each decoded batch: [sequence, position, token] per slot. */
  readonly batches: Array<Array<[number, number, number]>> = [];
  /** Cells each sequence holds: the tokens by position. */
  readonly cells = new Map<number, number[]>();
  running = false;
  /** Decodes that succeed before one fails (none fails while undefined). */
  failAfter: number | undefined;
  private batch: Array<[number, number, number, boolean]> = [];
  private capacity = 0;
  private decoded: Array<[number, number, number, boolean]> = [];

  initBatch(size: number): void {
    if (this.running) throw new Error("initBatch during a decode");
    this.batch = [];
    this.capacity = size;
  }
  addToBatch(sequence: number, first: number, tokens: Uint32Array, logitIndexes: Uint32Array): Uint32Array {
    if (this.batch.length + tokens.length > this.capacity) throw new Error("batch overflow");
    const wanted = new Set(logitIndexes);
    const indexes: number[] = [];
    tokens.forEach((token, i) => {
      if (wanted.has(i)) indexes.push(this.batch.length);
      this.batch.push([sequence, first + i, token, wanted.has(i)]);
    });
    return Uint32Array.from(indexes);
  }
  async decodeBatch(): Promise<void> {
    if (this.running) throw new Error("two decodes at once");
    this.running = true;
    await new Promise((resolve) => setTimeout(resolve, 1));
    this.running = false;
    const batch = this.batch;
    if (this.failAfter !== undefined && this.failAfter-- === 0) throw new Error("no KV slot");
    for (const [sequence, position, token] of batch) {
      const held = this.cells.get(sequence) ?? [];
      if (position !== held.length) throw new Error(`sequence ${sequence}: position ${position} after ${held.length} cells`);
      held.push(token);
      this.cells.set(sequence, held);
    }
    this.batches.push(batch.map(([s, p, t]) => [s, p, t]));
    this.decoded = batch;
  }
  removeTokenCellsFromSequence(sequence: number, start: number, end: number): boolean {
    if (this.running) throw new Error("cache cut during a decode");
    expect(end).toBe(-1);
    this.cells.get(sequence)?.splice(start);
    return true;
  }
  /** What flock reads at a batch index: the token and position decoded there. */
  read(index: number): PositionOutput {
    const [, position, token, output] = this.decoded[index];
    if (!output) throw new Error(`no output at batch index ${index}`);
    return Float32Array.of(token, position);
  }
}

function setup(batchSize: number, busy: number) {
  const addon = new FakeAddon();
  const context = { _ctx: addon, batchSize } as unknown as LlamaContext;
  const decoder = new BatchDecoder(context, { read: (i) => addon.read(i), recycle: () => undefined }, () => busy);
  const sizes: number[] = [];
  decoder.onBatch = (n) => sizes.push(n);
  return { addon, decoder, sizes, sequence: (id: number) => new BatchedSequence(decoder, id) };
}

describe("BatchDecoder", () => {
  it("splits an input longer than the batch size over several decodes and returns the wanted outputs in order", async () => {
    const { addon, sequence } = setup(4, 1);
    const seq = sequence(0);
    const tokens = [10, 11, 12, 13, 14, 15, 16, 17, 18, 19];
    const outputs = await seq.append(tokens, [9, 3]);
    expect(addon.batches.map((b) => b.length)).toEqual([4, 4, 2]);
    expect(outputs.map((o) => [...(o as Float32Array)])).toEqual([
      [19, 9],
      [13, 3],
    ]);
    expect(seq.tokens).toEqual(tokens);
    expect(addon.cells.get(0)).toEqual(tokens);
  });

  it("packs the busy sequences' tokens into one decode, a short step before a long prompt's share", async () => {
    const { addon, sizes, sequence } = setup(4, 2);
    const [a, b] = [sequence(0), sequence(1)];
    const prompt = Array.from({ length: 9 }, (_, i) => 100 + i);
    const long = a.append(prompt, [8]);
    const step = b.append([7], [0]);
    const [stepOut] = await step;
    // B's one token went with the first batch, beside three of A's nine.
    expect(addon.batches[0]).toEqual([
      [1, 0, 7],
      [0, 0, 100],
      [0, 1, 101],
      [0, 2, 102],
    ]);
    expect([...(stepOut as Float32Array)]).toEqual([7, 0]);
    expect(addon.batches.length).toBe(1);
    const [longOut] = await long;
    expect([...(longOut as Float32Array)]).toEqual([108, 8]);
    expect(sizes[0]).toBe(2);
    expect(addon.cells.get(0)).toEqual(prompt);
  });

  it("waits a turn of the event loop for busy sequences that have not queued yet", async () => {
    const { addon, sizes, sequence } = setup(8, 2);
    const [a, b] = [sequence(0), sequence(1)];
    const first = a.append([1], [0]);
    await Promise.resolve();
    expect(addon.running).toBe(false);
    const second = b.append([2], [0]);
    await Promise.all([first, second]);
    expect(sizes).toEqual([2]);
    // With one busy sequence a decode starts at once.
    const alone = setup(8, 1);
    const pending = alone.sequence(0).append([1], [0]);
    await Promise.resolve();
    await Promise.resolve();
    expect(alone.addon.running).toBe(true);
    await pending;
  });

  it("cuts a cache only between decodes", async () => {
    const { addon, decoder, sequence } = setup(8, 2);
    const [a, b] = [sequence(0), sequence(1)];
    await Promise.all([a.append([1, 2, 3], []), b.append([4, 5, 6], [])]);
    const decoding = a.append([7], [0]);
    // The batch starts after this turn of the event loop (b is busy but has not queued).
    while (!addon.running) await new Promise((resolve) => setImmediate(resolve));
    // The fake throws on a cut while a decode runs; this one waits for it.
    await Promise.all([b.cut(1), decoding]);
    expect(addon.cells.get(1)).toEqual([4]);
    expect(b.tokens).toEqual([4]);
    await decoder.idle();
  });

  it("a failed decode rejects with llama.cpp's reason and leaves the cache as the sequence records it", async () => {
    const { addon, sequence } = setup(4, 1);
    const seq = sequence(0);
    await seq.append([1, 2], []);
    // Of six tokens, the first four decode and the last two fail.
    addon.failAfter = 1;
    const failing = seq.append([3, 4, 5, 6, 7, 8], [5]);
    await expect(failing).rejects.toThrow(/llama_decode failed: no KV slot/);
    expect(addon.batches.at(-1)).toEqual([
      [0, 2, 3],
      [0, 3, 4],
      [0, 4, 5],
      [0, 5, 6],
    ]);
    expect(seq.tokens).toEqual([1, 2]);
    expect(addon.cells.get(0)).toEqual([1, 2]);
    // The sequence goes on from there.
    const [out] = await seq.append([9], [0]);
    expect([...(out as Float32Array)]).toEqual([9, 2]);
  });
});
