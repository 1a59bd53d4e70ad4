// Stop sequences across token boundaries: what scan() reports, and the text a caller that
// releases up to safeUntil (and stops at stopAt) ends up emitting.
import { describe, expect, it } from "vitest";
import { StopMatcher } from "../../../decoding/stop.js";

/** Feeds chunks the way a decoder does and returns what it would have released. */
function stream(stops: string[], chunks: string[]): { released: string[]; stopped: boolean; rest: string } {
  const matcher = new StopMatcher(stops);
  let text = "";
  let from = 0;
  const released: string[] = [];
  for (const chunk of chunks) {
    text += chunk;
    const scan = matcher.scan(text, from);
    const end = "stopAt" in scan ? scan.stopAt : scan.safeUntil;
    expect(end).toBeGreaterThanOrEqual(from);
    expect(end).toBeLessThanOrEqual(text.length);
    released.push(text.slice(from, end));
    from = end;
    if ("stopAt" in scan) return { released, stopped: true, rest: "" };
  }
  return { released, stopped: false, rest: text.slice(from) };
}

describe("StopMatcher.scan", () => {
  it("finds a stop sequence in the unreleased text", () => {
    expect(new StopMatcher(["STOP"]).scan("abc STOP def", 0)).toEqual({ stopAt: 4 });
    expect(new StopMatcher(["STOP"]).scan("abc STOP", 4)).toEqual({ stopAt: 4 });
  });

  it("looks only at text from `from` on", () => {
    expect(new StopMatcher(["STOP"]).scan("STOP and more", 5)).toEqual({ safeUntil: 13 });
  });

  it("holds back a suffix that could start a stop sequence", () => {
    const m = new StopMatcher(["STOP"]);
    expect(m.scan("Hello S", 0)).toEqual({ safeUntil: 6 });
    expect(m.scan("Hello STO", 6)).toEqual({ safeUntil: 6 });
    expect(m.scan("Hello STOP", 6)).toEqual({ stopAt: 6 });
  });

  it("releases held text once it can no longer start a stop sequence", () => {
    const m = new StopMatcher(["STOP"]);
    expect(m.scan("Hello STOx", 6)).toEqual({ safeUntil: 10 });
    // "aab" inside "aaab": after "aaa" only the last "aa" can still begin the stop
    expect(new StopMatcher(["aab"]).scan("xaaa", 0)).toEqual({ safeUntil: 2 });
    // the held part shrinks to the longest suffix that is still a prefix: "STS" → keep "S"
    expect(m.scan("Hello STS", 6)).toEqual({ safeUntil: 8 });
  });

  it("holds back the longest candidate, so a stop is never partly released", () => {
    expect(new StopMatcher(["aab"]).scan("xaa", 0)).toEqual({ safeUntil: 1 });
    expect(new StopMatcher(["abcd"]).scan("xabcab", 0)).toEqual({ safeUntil: 4 });
    expect(new StopMatcher(["STOP"]).scan("ST", 2)).toEqual({ safeUntil: 2 });
  });

  it("matches a stop sequence split across several pushes", () => {
    const r = stream(["</end>"], ["The answer", " is 4<", "/e", "n", "d> and more"]);
    expect(r).toEqual({ released: ["The answer", " is 4", "", "", ""], stopped: true, rest: "" });
    expect(r.released.join("")).toBe("The answer is 4");
  });

  it("releases a false start in full once it diverges", () => {
    const r = stream(["</end>"], ["a</e", "nx", " b"]);
    expect(r.stopped).toBe(false);
    expect(r.released.join("") + r.rest).toBe("a</enx b");
    expect(r.released).toEqual(["a", "</enx", " b"]);
  });

  it("with several stop sequences, the earliest match wins whatever their order", () => {
    expect(new StopMatcher(["world", "lo"]).scan("hello world", 0)).toEqual({ stopAt: 3 });
    expect(new StopMatcher(["lo", "world"]).scan("hello world", 0)).toEqual({ stopAt: 3 });
    expect(new StopMatcher(["xyz", "ab"]).scan("123a", 0)).toEqual({ safeUntil: 3 });
    expect(new StopMatcher(["xyz", "ab"]).scan("12xy", 0)).toEqual({ safeUntil: 2 });
  });

  it("releases everything at once with no stop sequences (empty strings do not count)", () => {
    expect(new StopMatcher([]).scan("abc", 1)).toEqual({ safeUntil: 3 });
    expect(new StopMatcher([""]).scan("abc", 0)).toEqual({ safeUntil: 3 });
    expect(stream(["", "Z"], ["ab", "c"])).toEqual({ released: ["ab", "c"], stopped: false, rest: "" });
  });

  it("never releases any part of a stop sequence, for every way of splitting the text", () => {
    const text = "say ababc then abc";
    const stops = ["abc", "then"];
    const expected = "say ab"; // "abc" first completes at index 6
    for (let cut1 = 1; cut1 < text.length; cut1++) {
      for (let cut2 = cut1 + 1; cut2 <= text.length; cut2++) {
        const r = stream(stops, [text.slice(0, cut1), text.slice(cut1, cut2), text.slice(cut2)]);
        expect(r.stopped).toBe(true);
        expect(r.released.join("")).toBe(expected);
      }
    }
  });
});
