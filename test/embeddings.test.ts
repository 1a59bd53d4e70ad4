// POST /v1/embeddings through the official SDK, on the forged embedding model: its mean-pooled
// hidden states carry the text's domain, so texts of one domain lie closer together than texts
// of two. Vectors are unit-length, identical as floats and as base64, in the order of the inputs,
// the same for a text and its token ids; generation and embedding models refuse each other's
// endpoints.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { forgedManifest, forgedPath, startTestServer, type TestServer } from "./helpers/server.js";

let t: TestServer;
beforeAll(async () => {
  const manifest = forgedManifest();
  t = await startTestServer({
    models: [
      { id: "flock-demo", path: forgedPath(manifest.models["flock-demo"].file), parallel: 1 },
      { id: "flock-embed", path: forgedPath(manifest.models["flock-embed"].file), embeddings: true },
    ],
    auth: { apiKeys: [], adminKey: "admin", healthRequiresKey: false, metricsRequiresKey: false },
  });
});
afterAll(() => t?.close());

const dot = (a: readonly number[], b: readonly number[]) => a.reduce((s, x, i) => s + x * b[i], 0);

async function post(path: string, body: Record<string, unknown>) {
  const res = await fetch(`${t.url}${path}`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  return { status: res.status, body: (await res.json()) as Record<string, any> };
}

describe("client.embeddings.create", () => {
  it("gives unit vectors of the model's width, in the order of the inputs, with usage", async () => {
    const texts = t.manifest.domains.map((d) => d.heldOutText.split(". ").slice(0, 2).join(". "));
    const res = await t.client.embeddings.create({ model: "flock-embed", input: texts });
    const width = t.manifest.models["flock-embed"].shape.embeddingDim;
    expect(res.data.map((d) => d.index)).toEqual(texts.map((_, i) => i));
    for (const d of res.data) {
      expect(d.embedding).toHaveLength(width);
      expect(Math.abs(Math.sqrt(dot(d.embedding, d.embedding)) - 1)).toBeLessThan(1e-5);
    }
    expect(res.model).toBe("flock-embed");
    expect(res.usage.prompt_tokens).toBeGreaterThan(texts.length);
    expect(res.usage.total_tokens).toBe(res.usage.prompt_tokens);
    // One at a time: the same vectors.
    for (const [i, text] of texts.entries()) {
      const one = await t.client.embeddings.create({ model: "flock-embed", input: text });
      expect(one.data[0].embedding).toEqual(res.data[i].embedding);
    }
  });

  it("places texts of one domain closer together than texts of two (the pooled states carry the domain)", async () => {
    const halves = t.manifest.domains.map((d) => {
      const sentences = d.heldOutText.split(". ");
      const mid = Math.floor(sentences.length / 2);
      return [sentences.slice(0, mid).join(". "), sentences.slice(mid).join(". ")];
    });
    const res = await t.client.embeddings.create({ model: "flock-embed", input: halves.flat() });
    const v = (domain: number, half: number) => res.data[domain * 2 + half].embedding;
    for (let a = 0; a < halves.length; a++) {
      const same = dot(v(a, 0), v(a, 1));
      for (let b = 0; b < halves.length; b++) {
        if (b !== a) expect(same, `${t.manifest.domains[a].name} vs ${t.manifest.domains[b].name}`).toBeGreaterThan(dot(v(a, 0), v(b, 1)));
      }
    }
  });

  it("float and base64 encodings carry the same float32 values; token ids embed as their text does, BOS added where the model wants it", async () => {
    const text = "The cook mixes the soup";
    const floats = await post("/v1/embeddings", { model: "flock-embed", input: text, encoding_format: "float" });
    const b64 = await post("/v1/embeddings", { model: "flock-embed", input: [text], encoding_format: "base64" });
    const bytes = Buffer.from(b64.body.data[0].embedding as string, "base64");
    const decoded = Array.from(new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4));
    expect(decoded).toEqual(floats.body.data[0].embedding);
    const tokens = (await post("/tokenize", { model: "flock-demo", content: text, add_special: true })).body.tokens as number[];
    expect(tokens[0]).toBe(t.manifest.vocab.bos);
    const byIds = await post("/v1/embeddings", { model: "flock-embed", input: [tokens, tokens.slice(1), tokens.slice(2)], encoding_format: "float" });
    expect(byIds.body.data[0].embedding).toEqual(floats.body.data[0].embedding);
    expect(byIds.body.data[1].embedding).toEqual(floats.body.data[0].embedding);
    expect(byIds.body.data[2].embedding).not.toEqual(floats.body.data[0].embedding);
    // usage counts the tokens evaluated, BOS included.
    expect(byIds.body.usage.prompt_tokens).toBe(tokens.length * 3 - 1);
    expect(floats.body.usage.prompt_tokens).toBe(tokens.length);
  });
});

describe("what each kind of model refuses", () => {
  it("an embedding model generates nothing, a generation model embeds nothing; both say where to go", async () => {
    const chat = await post("/v1/chat/completions", { model: "flock-embed", messages: [{ role: "user", content: "hi" }] });
    expect(chat.status).toBe(400);
    expect(chat.body.error.message).toContain("/v1/embeddings");
    const embed = await post("/v1/embeddings", { model: "flock-demo", input: "hi" });
    expect(embed.status).toBe(400);
    expect(embed.body.error.message).toContain("embeddings: true");
    expect((await post("/v1/embeddings", { model: "nope", input: "hi" })).body.error.code).toBe("model_not_found");
  });

  it("refuses empty input, other dimensions, ids outside the vocabulary and input past the context", async () => {
    expect((await post("/v1/embeddings", { model: "flock-embed", input: "" })).body.error.param).toBe("input");
    expect((await post("/v1/embeddings", { model: "flock-embed", input: "x", dimensions: 8 })).body.error).toMatchObject({ code: "unsupported_parameter", param: "dimensions" });
    expect((await post("/v1/embeddings", { model: "flock-embed", input: [1, 10_000_000] })).body.error.param).toBe("input");
    const long = await post("/v1/embeddings", { model: "flock-embed", input: `The${" cook the".repeat(3000)}` });
    expect(long.body.error).toMatchObject({ code: "context_length_exceeded", param: "input" });
  });

  it("lists the embedding model with its kind and width, in /v1/models and /admin/status", async () => {
    const status = (await (await fetch(`${t.url}/admin/status`, { headers: { authorization: "Bearer admin" } })).json()) as { embeddingModels: unknown[] };
    expect(status.embeddingModels).toEqual([{ id: "flock-embed", contextSize: 4096, dimensions: t.manifest.models["flock-embed"].shape.embeddingDim }]);
    const models = await t.client.models.list();
    expect(models.data.find((m) => m.id === "flock-embed")).toMatchObject({ flock: { kind: "embedding", dimensions: t.manifest.models["flock-embed"].shape.embeddingDim } });
  });
});
