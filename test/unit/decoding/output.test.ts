// Incremental detokenization and output assembly with a fake byte-level vocabulary: each token
// id stands for a byte sequence, and a token list decodes like a real byte-fallback/BPE
// tokenizer does (incomplete UTF-8 at the end becomes U+FFFD).
import { describe, expect, it } from "vitest";
import { IncrementalDetokenizer } from "../../../decoding/detokenizer.js";
import { OutputAssembler, type Released } from "../../../decoding/output.js";
import type { DecodingModel, TokenLogprob } from "../../../decoding/types.js";
import { createRng } from "../../../decoding/rng.js";

const FFFD = "\uFFFD";

/** A vocabulary built on the fly: `tokenize` assigns ids to the byte chunks it is given. */
class FakeVocab {
  readonly bytes: Buffer[] = [];
  readonly calls: Array<{ tokens: number[]; context: number[] }> = [];
  add(chunk: Buffer | string): number {
    this.bytes.push(typeof chunk === "string" ? Buffer.from(chunk, "utf8") : chunk);
    return this.bytes.length - 1;
  }
  /** Splits `text`'s UTF-8 bytes at the given sizes (cycled) into new tokens. */
  tokenize(text: string, sizes: number[]): number[] {
    const buf = Buffer.from(text, "utf8");
    const ids: number[] = [];
    for (let at = 0, i = 0; at < buf.length; i++) {
      const size = sizes[i % sizes.length];
      ids.push(this.add(buf.subarray(at, at + size)));
      at += size;
    }
    return ids;
  }
  detokenize = (tokens: readonly number[], context: readonly number[] = []): string => {
    this.calls.push({ tokens: [...tokens], context: [...context] });
    return new TextDecoder().decode(Buffer.concat(tokens.map((t) => this.bytes[t])));
  };
  model(): DecodingModel {
    return {
      id: "fake",
      contextSize: 1 << 16,
      acquire: () => Promise.reject(new Error("not used")),
      detokenize: this.detokenize,
      isEndOfGeneration: () => false,
    };
  }
}

const entry = (token: number): TokenLogprob => ({ token, text: `t${token}`, logprob: -token, top: [] });

function detokenizeAll(vocab: FakeVocab, tokens: number[]): string[] {
  const d = new IncrementalDetokenizer(vocab.detokenize);
  return [...tokens.map((t) => d.push(t)), d.flush()];
}

describe("IncrementalDetokenizer", () => {
  it("holds a character split over single-byte tokens until its last byte (2, 3 and 4 bytes)", () => {
    for (const ch of ["é", "€", "😀"]) {
      const vocab = new FakeVocab();
      const pieces = detokenizeAll(vocab, vocab.tokenize(`a${ch}b`, [1]));
      const bytes = Buffer.byteLength(ch);
      // "a", then nothing until the character completes, then it whole, then "b", then flush ""
      expect(pieces).toEqual(["a", ...Array(bytes - 1).fill(""), ch, "b", ""]);
    }
  });

  it("passes the preceding tokens (prompt, then committed output) as context", () => {
    const vocab = new FakeVocab();
    const prompt = vocab.tokenize("hi", [1]);
    const out = vocab.tokenize("é!", [1]);
    const d = new IncrementalDetokenizer(vocab.detokenize, prompt);
    out.forEach((t) => d.push(t));
    expect(vocab.calls.map((c) => c.context)).toEqual([prompt, prompt, [...prompt, out[0], out[1]]]);
    expect(vocab.calls.map((c) => c.tokens)).toEqual([[out[0]], [out[0], out[1]], [out[2]]]);
  });

  it("flush() gives out an unfinished character at the end of generation", () => {
    const vocab = new FakeVocab();
    const d = new IncrementalDetokenizer(vocab.detokenize);
    expect(d.push(vocab.add(Buffer.from([0xe2, 0x82])))).toBe("");
    expect(d.flush()).toBe(FFFD);
    expect(d.flush()).toBe("");
  });

  it("never emits half a character for 2-byte tokens over mixed 3- and 4-byte characters", () => {
    // bytes of "€😀€": character ends at 3, 7, 10; token ends at 2, 4, 6, 8, 10
    const vocab = new FakeVocab();
    const pieces = detokenizeAll(vocab, vocab.tokenize("€😀€", [2]));
    expect(pieces.join("")).toBe("€😀€");
    for (const piece of pieces) expect(piece).not.toContain(FFFD);
  });

  it("never emits half a character for random text cut into 1-4 byte tokens", () => {
    const rng = createRng(11);
    const alphabet = ["a", " ", "é", "ß", "€", "中", "😀", "𝄞"];
    for (let trial = 0; trial < 200; trial++) {
      const text = Array.from({ length: 12 }, () => rng.pick(alphabet)).join("");
      const vocab = new FakeVocab();
      const sizes = Array.from({ length: 7 }, () => 1 + rng.int(4));
      const pieces = detokenizeAll(vocab, vocab.tokenize(text, sizes));
      expect(pieces.join(""), `${JSON.stringify(text)} cut ${sizes}`).toBe(text);
      for (const piece of pieces) expect(piece, `${JSON.stringify(text)} cut ${sizes}`).not.toContain(FFFD);
    }
  });
});

describe("OutputAssembler", () => {
  function run(chunks: Array<string | Buffer>, stops: string[]) {
    const vocab = new FakeVocab();
    const ids = chunks.map((c) => vocab.add(c));
    const out = new OutputAssembler(vocab.model(), [], stops);
    const steps: Released[] = [];
    for (const id of ids) {
      const r = out.push(id, entry(id));
      steps.push(r);
      if (r.stopped) return { steps, ids, final: null };
    }
    return { steps, ids, final: out.finish() };
  }
  const tokensOf = (r: Released) => r.logprobs.map((l) => l.token);

  it("releases each token's logprob entry with its text, after stop hold-back", () => {
    const { steps, final } = run(["ab", "S", "T", "c"], ["STOP"]);
    expect(steps.map((s) => s.text)).toEqual(["ab", "", "", "STc"]);
    expect(steps.map(tokensOf)).toEqual([[0], [], [], [1, 2, 3]]);
    expect(steps.every((s) => !s.stopped)).toBe(true);
    expect(final).toEqual({ text: "", logprobs: [], stopped: false });
  });

  it("never emits the stop sequence and drops the entries of tokens after it", () => {
    const { steps, final } = run(["x", "ST", "OP", "y"], ["STOP"]);
    expect(final).toBeNull();
    expect(steps.map((s) => s.text)).toEqual(["x", "", ""]);
    expect(steps.map(tokensOf)).toEqual([[0], [], []]);
    expect(steps.at(-1)!.stopped).toBe(true);
  });

  it("keeps the entry of a token whose text starts before the stop sequence", () => {
    const one = run(["aSTOPb"], ["STOP"]);
    expect(one.steps).toEqual([{ text: "a", logprobs: [entry(0)], stopped: true }]);
    const two = run(["xS", "TOP"], ["STOP"]);
    expect(two.steps.map((s) => s.text)).toEqual(["x", ""]);
    expect(two.steps.flatMap(tokensOf)).toEqual([0]);
  });

  it("releases a multi-byte character and the entries of all its tokens together", () => {
    const { steps, final } = run([Buffer.from([0xe2]), Buffer.from([0x82]), Buffer.from([0xac]), "!"], []);
    expect(steps.map((s) => s.text)).toEqual(["", "", "€", "!"]);
    expect(steps.map(tokensOf)).toEqual([[], [], [0, 1, 2], [3]]);
    expect(final!.text).toBe("");
  });

  it("matches a stop sequence that is a multi-byte character split over tokens", () => {
    const { steps } = run(["ok", Buffer.from([0xe2, 0x82]), Buffer.from([0xac]), "more"], ["€"]);
    expect(steps.map((s) => s.text)).toEqual(["ok", "", ""]);
    expect(steps.at(-1)!.stopped).toBe(true);
    expect(steps.flatMap(tokensOf)).toEqual([0]);
  });

  it("finish() releases held-back text and its entries when no stop completed", () => {
    const { steps, final } = run(["one", " ST", "O"], ["STOP"]);
    expect(steps.map((s) => s.text)).toEqual(["one", " ", ""]);
    expect(final).toEqual({ text: "STO", logprobs: [entry(2)], stopped: false });
    expect([...steps.flatMap(tokensOf), ...tokensOf(final!)]).toEqual([0, 1, 2]);
  });

  it("finish() releases a trailing token with no text of its own", () => {
    const { steps, final } = run(["a", ""], []);
    expect(steps.map(tokensOf)).toEqual([[0], []]);
    expect(final).toEqual({ text: "", logprobs: [entry(1)], stopped: false });
  });

  it("emits exactly the text before the first stop, one entry per token, for any byte-fallback split", () => {
    const text = "Grüße € 😀 done.</s> never";
    const expected = text.slice(0, text.indexOf("</s>"));
    const rng = createRng(5);
    for (let trial = 0; trial < 100; trial++) {
      // whole characters or runs of ASCII per token; non-ASCII characters become single-byte tokens
      const chunks: Array<string | Buffer> = [];
      for (let i = 0; i < text.length; ) {
        const ch = String.fromCodePoint(text.codePointAt(i)!);
        if (ch.length === 1 && ch < "\x80") {
          let end = i + 1;
          for (const max = i + 1 + rng.int(3); end < max && text.charCodeAt(end) < 0x80; ) end++;
          chunks.push(text.slice(i, end));
          i = end;
        } else {
          for (const byte of Buffer.from(ch, "utf8")) chunks.push(Buffer.from([byte]));
          i += ch.length;
        }
      }
      const { steps, ids, final } = run(chunks, ["</s>"]);
      const released = steps.map((s) => s.text).join("");
      expect(final).toBeNull();
      expect(released).toBe(expected);
      expect(released).not.toContain(FFFD);
      const entries = steps.flatMap(tokensOf);
      const stopToken = steps.length - 1;
      // every token before the one that completed "</s>" whose bytes start before "</s>" has its entry, in order
      const startOfStop = Buffer.byteLength(expected);
      let offset = 0;
      const expectedEntries: number[] = [];
      for (const id of ids.slice(0, stopToken + 1)) {
        if (offset < startOfStop) expectedEntries.push(id);
        offset += typeof chunks[id] === "string" ? Buffer.byteLength(chunks[id] as string) : (chunks[id] as Buffer).length;
      }
      expect(entries).toEqual(expectedEntries);
    }
  });
});

describe("OutputAssembler.emit", () => {
  const setup = (chunks: string[], stops: string[]) => {
    const vocab = new FakeVocab();
    const ids = chunks.map((c) => vocab.add(c));
    return { ids, out: new OutputAssembler(vocab.model(), [], stops) };
  };
  const going = { endOfGeneration: false, limitReached: false };

  it("an end-of-generation token stops without its own text, releasing what was held", () => {
    const { ids, out } = setup(["a S", "<eos>"], ["STOP"]);
    expect(out.emit(ids[0], entry(ids[0]), going)).toEqual({ text: "a ", logprobs: [entry(0)], stopped: false });
    expect(out.emit(ids[1], entry(ids[1]), { endOfGeneration: true, limitReached: true })).toEqual({ text: "S", logprobs: [], stopped: false, finishReason: "stop" });
  });

  it("a stop sequence the token completes ends with stop, even at the limit", () => {
    const { ids, out } = setup(["x ST", "OP y"], ["STOP"]);
    out.emit(ids[0], entry(ids[0]), going);
    expect(out.emit(ids[1], entry(ids[1]), { endOfGeneration: false, limitReached: true })).toEqual({ text: "", logprobs: [], stopped: true, finishReason: "stop" });
  });

  it("at the limit, releases the token and everything held, ending with length", () => {
    const { ids, out } = setup(["one S", "T"], ["STOP"]);
    expect(out.emit(ids[0], entry(ids[0]), going).finishReason).toBeUndefined();
    expect(out.emit(ids[1], entry(ids[1]), { endOfGeneration: false, limitReached: true })).toEqual({
      text: "ST",
      logprobs: [entry(1)],
      stopped: false,
      finishReason: "length",
    });
  });
});
