// The SpecDec++ acceptance head: forward pass, trained by the weighted soft-label loss.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { TokenEmbeddings } from "../../../../decoding/speculative/embeddings.js";
import { F32, readGgufTensors } from "../../../../engine/gguf/reader.js";
import { gguf, TensorType, writeGguf } from "../../../../engine/gguf/writer.js";
import { AcceptanceHead, HeadPredictor, headInput } from "../../../../decoding/speculative/head.js";
import { type Sample, trainHead, weightedLoss } from "../../../../decoding/speculative/train-head.js";
import { createRng } from "../../../../decoding/rng.js";

function syntheticSamples(n: number, d: number, seed: number): Sample[] {
  const rng = createRng(seed);
  // Acceptance depends non-linearly on the hidden state: high when x0·x1 > 0.
  return Array.from({ length: n }, () => {
    const hidden = Float32Array.from({ length: d }, () => rng.next() * 2 - 1);
    const label = hidden[0] * hidden[1] > 0 ? 0.9 : 0.15;
    return { input: hidden, label };
  });
}

describe("acceptance head", () => {
  it("computes x ← x + SiLU(Wx + b) per block with shared weights, then σ(z_accept − z_reject)", () => {
    const d = 2;
    const head = new AcceptanceHead(d, 2, { weight: [0.5, -1, 2, 0.25], bias: [0.1, -0.2], out: [1, 0, 0, 1], outBias: [0.3, -0.1] });
    const silu = (u: number) => u / (1 + Math.exp(-u));
    let x = [0.4, -0.7];
    for (let b = 0; b < 2; b++) {
      const pre = [0.5 * x[0] - x[1] + 0.1, 2 * x[0] + 0.25 * x[1] - 0.2];
      x = [x[0] + silu(pre[0]), x[1] + silu(pre[1])];
    }
    const logit = x[1] - 0.1 - (x[0] + 0.3);
    expect(head.predict([0.4, -0.7])).toBeCloseTo(1 / (1 + Math.exp(-logit)), 12);
    // Zero inputs (skipped in the products) give what the full pass gives.
    for (const input of [[0, -0.7], [0.4, 0], [0, 0]]) {
      expect(head.predict(input)).toBeCloseTo(1 / (1 + Math.exp(-head.forward(input).logit)), 12);
    }
  });

  it("learns acceptance that depends on the pair of one-hot hidden states (before the candidate, at it)", () => {
    // A first-order draft's hidden states are one-hot states; acceptance depends on the pair.
    const states = 12;
    const rng = createRng(4);
    const table = Array.from({ length: states * states }, () => (rng.next() < 0.5 ? 0.95 : 0.2 + 0.3 * rng.next()));
    const samples = (n: number): Sample[] =>
      Array.from({ length: n }, () => {
        const [a, b] = [rng.int(states), rng.int(states)];
        const hidden = new Float32Array(2 * states);
        hidden[a] = 1;
        hidden[states + b] = 1;
        return { input: hidden, label: table[a * states + b] };
      });
    const { head } = trainHead(samples(6000), { blocks: 1, epochs: 30, batchSize: 32, learningRate: 0.01, rejectionWeight: 1, seed: 5 });
    const test = samples(1000);
    const mean = test.reduce((acc, s) => acc + s.label, 0) / test.length;
    const mse = (f: (s: Sample) => number) => test.reduce((acc, s) => acc + (f(s) - s.label) ** 2, 0) / test.length;
    // Neither state alone says it: the head must learn the interaction.
    expect(mse((s) => head.predict(s.input))).toBeLessThan(0.1 * mse(() => mean));
  });

  it("training lowers the weighted loss well below a constant predictor's, and generalises to held-out samples", () => {
    const train = syntheticSamples(3000, 8, 1);
    const test = syntheticSamples(1000, 8, 2);
    const { head, losses } = trainHead(train, { blocks: 2, epochs: 25, batchSize: 32, learningRate: 0.01, rejectionWeight: 6, seed: 3 });
    expect(losses.at(-1)!).toBeLessThan(losses[0]);
    // The best constant under this loss, found by scanning.
    let constant = Infinity;
    for (let c = 0.01; c < 1; c += 0.01) constant = Math.min(constant, weightedLoss(() => c, test));
    const trained = weightedLoss((h) => head.predict(h), test);
    expect(trained).toBeLessThan(constant * 0.8);
  });

  it("saves and loads; the predictor reads the hidden states before and at the candidate, or the candidate's normalized embedding", () => {
    const dir = mkdtempSync(join(tmpdir(), "head-"));
    try {
      const { head } = trainHead(syntheticSamples(200, 4, 5), { blocks: 1, epochs: 2, batchSize: 16, learningRate: 0.01, rejectionWeight: 6, seed: 1 });
      const file = join(dir, "head.json");
      head.save(file, { note: "test" });
      const loaded = AcceptanceHead.load(file);
      const h = Float32Array.from([0.3, -0.2, 0.9, 0.1]);
      expect(loaded.predict(h)).toBeCloseTo(head.predict(h), 12);
      expect(loaded.rejectionWeight).toBe(6);
      const features = { chosen: 0.5, top1: 0.5, margin: 0, entropy: 1, position: 1, recentAcceptance: 0.7, token: 2 };
      // The authors' view of the candidate: its hidden state, read after the one before it.
      expect(loaded.candidate).toBe("hidden");
      const byHidden = new HeadPredictor(loaded, null);
      expect(byHidden.needsCandidateHidden).toBe(true);
      expect(byHidden.predict({ ...features, hidden: h.subarray(0, 2), candidateHidden: h.subarray(2) })).toBeCloseTo(head.predict(h), 12);
      expect(() => byHidden.predict({ ...features, hidden: h.subarray(0, 2) })).toThrow(/hidden state at the candidate/);
      expect(() => byHidden.predict(features)).toThrow(/hidden state/);
      // The embedding view: three tokens with 2-wide embeddings; token 2's row [3, 4] has RMS √12.5.
      const rows = Float32Array.from([1, 0, 0, 1, 3, 4]);
      const embeddings = new TokenEmbeddings({ dims: [2, 3], type: F32, bytes: Buffer.from(rows.buffer) });
      expect(() => new HeadPredictor(loaded, embeddings)).toThrow(/takes no token embeddings/);
      const byEmbedding = trainHead(syntheticSamples(200, 4, 5), { blocks: 1, epochs: 2, batchSize: 16, learningRate: 0.01, rejectionWeight: 6, seed: 1, candidate: "embedding" }).head;
      byEmbedding.save(file, {});
      const loadedByEmbedding = AcceptanceHead.load(file);
      expect(loadedByEmbedding.candidate).toBe("embedding");
      expect(() => new HeadPredictor(loadedByEmbedding, null)).toThrow(/needs the draft's token embeddings/);
      const predictor = new HeadPredictor(loadedByEmbedding, embeddings);
      expect(predictor.needsCandidateHidden).toBe(false);
      const expected = Float32Array.from([0.3, -0.2, 3 / Math.sqrt(12.5 + 1e-6), 4 / Math.sqrt(12.5 + 1e-6)]);
      expect(headInput({ ...features, hidden: h.subarray(0, 2) }, embeddings)).toEqual(expected);
      expect(predictor.predict({ ...features, hidden: h.subarray(0, 2) })).toBeCloseTo(byEmbedding.predict(expected), 12);
      expect(() => predictor.predict({ ...features, token: 3, hidden: h.subarray(0, 2) })).toThrow(/outside the draft's 3 embeddings/);
      // Heads of version 1 read one hidden state: refused, with what to do.
      const old = join(dir, "old.json");
      writeFileSync(old, JSON.stringify({ ...JSON.parse(readFileSync(file, "utf8")), version: 1 }));
      expect(() => AcceptanceHead.load(old)).toThrow(/version 1 heads read one hidden state; retrain with npm run train:acceptance/);
      // Version 2 files written before the embedding view existed are hidden-state heads.
      const { candidate: _, ...withoutView } = JSON.parse(readFileSync(file, "utf8"));
      writeFileSync(old, JSON.stringify(withoutView));
      expect(AcceptanceHead.load(old).candidate).toBe("hidden");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("the head in serving", () => {
  it("starts as the head's P̂ and learns around it from verification's labels, with the head's rejection weight", () => {
    const { head } = trainHead(syntheticSamples(200, 4, 5), { blocks: 1, epochs: 2, batchSize: 16, learningRate: 0.01, rejectionWeight: 6, seed: 1 });
    const predictor = new HeadPredictor(head, null);
    const h = Float32Array.from([0.3, -0.2, 0.9, 0.1]);
    const at = (context: number, token: number) => ({ chosen: 0.5, top1: 0.5, margin: 0, entropy: 1, position: 1, recentAcceptance: 0.7, context, token, hidden: h.subarray(0, 2), candidateHidden: h.subarray(2) });
    expect(predictor.predict(at(3, 1))).toBeCloseTo(head.predict(h), 12);
    // The same hidden states, told apart by the candidate the head cannot see here.
    for (let i = 0; i < 3000; i++) {
      predictor.observe(at(3, 1), 1);
      predictor.observe(at(3, 2), 0.5);
    }
    expect(predictor.predict(at(3, 1))).toBeGreaterThan(0.95);
    // A soft label a = 1/2 under w = 6 settles where the weighted loss is least: a / (a + w(1 − a)) = 1/7.
    expect(predictor.predict(at(3, 2))).toBeCloseTo(1 / 7, 2);
  });

  it("keeps what serving learned in a file, for the head it was learned beside", () => {
    const dir = mkdtempSync(join(tmpdir(), "head-serving-"));
    try {
      const file = join(dir, "acceptance", "pair.head.json");
      const { head } = trainHead(syntheticSamples(200, 4, 5), { blocks: 1, epochs: 2, batchSize: 16, learningRate: 0.01, rejectionWeight: 6, seed: 1 });
      const h = Float32Array.from([0.3, -0.2, 0.9, 0.1]);
      const f = { chosen: 0.5, top1: 0.5, margin: 0, entropy: 1, position: 1, recentAcceptance: 0.7, context: 3, token: 1, hidden: h.subarray(0, 2), candidateHidden: h.subarray(2) };
      const serving = new HeadPredictor(head, null, file);
      for (let i = 0; i < 200; i++) serving.observe(f, 0);
      serving.save();
      expect(new HeadPredictor(head, null, file).predict(f)).toBe(serving.predict(f));
      expect(serving.predict(f)).toBeLessThan(0.1);
      // A retrained head starts from its own P̂.
      const retrained = trainHead(syntheticSamples(200, 4, 6), { blocks: 1, epochs: 2, batchSize: 16, learningRate: 0.01, rejectionWeight: 6, seed: 2 }).head;
      expect(new HeadPredictor(retrained, null, file).predict(f)).toBeCloseTo(retrained.predict(h), 12);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("the draft's token embeddings", () => {
  it("read rows of F32, F16 and Q8_0 files as the whole tensor decodes, RMS-normalized", async () => {
    const dir = mkdtempSync(join(tmpdir(), "embeddings-"));
    try {
      const [width, vocabulary] = [64, 5];
      const rng = createRng(3);
      const data = Float32Array.from({ length: width * vocabulary }, () => rng.next() * 2 - 1);
      for (const type of [TensorType.F32, TensorType.F16, TensorType.Q8_0]) {
        const file = join(dir, `e${type}.gguf`);
        const spec = { name: "token_embd.weight", dims: [width, vocabulary], type };
        writeGguf(file, [["general.architecture", gguf.str("llama")]], [spec], () => data);
        const whole = (await readGgufTensors(file)).tensors.get("token_embd.weight")!.data;
        const embeddings = await TokenEmbeddings.load(file);
        expect([embeddings.width, embeddings.vocabularySize]).toEqual([width, vocabulary]);
        for (let token = 0; token < vocabulary; token++) {
          const row = whole.subarray(token * width, (token + 1) * width);
          const rms = Math.sqrt(row.reduce((a, x) => a + x * x, 0) / width + 1e-6);
          const out = new Float32Array(width + 3);
          embeddings.write(token, out, 3);
          for (let i = 0; i < width; i++) expect(out[3 + i]).toBeCloseTo(row[i] / rms, 5);
        }
      }
      const none = join(dir, "none.gguf");
      writeGguf(none, [["general.architecture", gguf.str("llama")]], [{ name: "output.weight", dims: [width, vocabulary], type: TensorType.F32 }], () => data);
      await expect(TokenEmbeddings.load(none)).rejects.toThrow(/has no token_embd.weight/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
