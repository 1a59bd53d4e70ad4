// OpenAI's logprobs shapes (server/format.ts): `bytes` are a token's raw bytes where the decoder
// reported them (part of a character), else its text's UTF-8.
import { describe, expect, it } from "vitest";
import { chatLogprobs } from "../../../server/format.js";

describe("chat logprobs", () => {
  it("give a partial character's raw bytes, not the replacement character's", () => {
    const [entry] = chatLogprobs([
      { token: 7, text: "\uFFFD", bytes: [0xf0, 0xa0], logprob: -0.5, top: [{ token: 8, text: "a", logprob: -1 }, { token: 9, text: "\uFFFD", bytes: [0x9c], logprob: -2 }] },
    ]);
    expect(entry.bytes).toEqual([0xf0, 0xa0]);
    expect(entry.top_logprobs.map((t) => t.bytes)).toEqual([[0x61], [0x9c]]);
    expect(chatLogprobs([{ token: 1, text: "é", logprob: 0, top: [] }])[0].bytes).toEqual([0xc3, 0xa9]);
  });
});
