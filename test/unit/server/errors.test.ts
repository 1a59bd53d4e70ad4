// Client-facing error messages: server paths are cut to file names, routes and the rest pass.
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { FlockError } from "../../../engine/errors.js";
import { HttpError, toOpenAIError, withoutServerPaths } from "../../../server/errors.js";

describe("withoutServerPaths", () => {
  const dir = mkdtempSync(join(tmpdir(), "flock-errors-"));
  const file = join(dir, "adapter.gguf");
  writeFileSync(file, "");

  it("cuts paths on this machine to their file names, wherever they sit in the message", () => {
    expect(withoutServerPaths(`cannot read the LoRA adapter ${file}: bad magic`)).toBe("cannot read the LoRA adapter adapter.gguf: bad magic");
    expect(withoutServerPaths(`model x: cannot create a context for ${file} with ${join(dir, "b.gguf")}, ${join(dir, "c.gguf")}.`)).toBe(
      "model x: cannot create a context for adapter.gguf with b.gguf, c.gguf.",
    );
    expect(withoutServerPaths(`("${file}")`)).toBe('("adapter.gguf")');
    expect(withoutServerPaths("got `root` from /etc/passwd")).toBe("got `root` from passwd");
    expect(withoutServerPaths(`no such file ${join(dir, "missing", "deeper.gguf")}`)).toBe("no such file deeper.gguf");
  });

  it("leaves routes, URLs, relative paths and fractions alone", () => {
    for (const message of [
      "Unknown request URL: GET /v1/chat/completion.",
      "remove flock.speculative from /v1/models/abc",
      "see https://platform.openai.com/docs/api-reference",
      "relative/path/model.gguf",
      "top_p 1/2 and 3/4",
    ]) {
      expect(withoutServerPaths(message)).toBe(message);
    }
  });

  it("applies to every error a client sees, not to what the server logs", () => {
    const err = new FlockError("invalid_request", `cannot read ${file}`);
    expect(toOpenAIError(err).body.error.message).toBe("cannot read adapter.gguf");
    expect(err.message).toContain(dir);
    expect(toOpenAIError(new HttpError(503, "service_unavailable", null, `loading ${file}`)).body.error.message).toBe("loading adapter.gguf");
  });
});
