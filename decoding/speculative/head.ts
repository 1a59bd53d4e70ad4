// The SpecDec++ authors' acceptance head: `blocks` residual blocks x ← x + SiLU(W x + b) sharing
// one W and b, then Linear(d, 2); P̂(accept) = softmax(·)[accept] = σ(z_accept − z_reject).
// Trained offline (train-head.ts, `npm run train:acceptance`) with their weighted soft-label
// loss: L = [w(1 − a)(−log(1 − P̂)) + a(−log P̂)] / [w(1 − a) + a], a = min(1, p(y)/q(y)), w = 6.
//
// Acceptance min(1, p(y)/q(y)) depends on the context and on the candidate y. The head's input x
// is the draft's final hidden state that produced y (the context), followed by one of two views
// of y (the file's `candidate`):
// - "hidden": the draft's final hidden state at y, as the authors read it (in a transformer it
//   carries y and its context). It exists only once the draft has evaluated y: the decoder
//   evaluates each candidate before deciding, a step wasted when the head stops the round.
// - "embedding": y's token embedding in the draft, RMS-normalized (as a LLaMA block normalizes
//   its input). Free — no draft step — but it says which token y is, not what it means in
//   context, so it needs more rollouts to generalize across tokens.
// The hidden state before y is there because a draft's hidden state can carry little context
// (the forge's first-order drafts' carry only the current token's state).
import { createHash } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { z } from "zod";
import type { TokenEmbeddings } from "./embeddings.js";
import type { DraftFeatures, PreDrawFeatures } from "./features.js";
import { type AcceptancePredictor, expectedOverTop, OnlineLogisticPredictor, sigmoid } from "./predictors.js";

export const HeadFile = z.object({
  /** 2: the input is [hidden state before y, a view of y] (version 1 heads read one hidden state). */
  version: z.literal(2, { error: "expected version 2 (version 1 heads read one hidden state; retrain with npm run train:acceptance)" }),
  /** The view of the candidate y in the input (files without it: "hidden"). */
  candidate: z.enum(["hidden", "embedding"]).default("hidden"),
  hiddenSize: z.int().min(1),
  blocks: z.int().min(0).max(8),
  /** d × d, row-major. */
  weight: z.array(z.number().finite()),
  bias: z.array(z.number().finite()),
  /** 2 × d: row 0 scores rejection, row 1 acceptance. */
  out: z.array(z.number().finite()),
  outBias: z.array(z.number().finite()).length(2),
  /** w of the weighted loss it was trained with (files without it: the authors' 6). */
  rejectionWeight: z.number().positive().default(6),
  /** How it was trained (for the record). */
  trainedOn: z.record(z.string(), z.unknown()).optional(),
});
export type HeadFile = z.infer<typeof HeadFile>;
export type CandidateView = HeadFile["candidate"];

const silu = (x: number) => x / (1 + Math.exp(-x));

export class AcceptanceHead {
  readonly d: number;
  readonly weight: Float64Array;
  readonly bias: Float64Array;
  readonly out: Float64Array;
  readonly outBias: Float64Array;
  /** predict()'s work vectors: the block's input, its output, its pre-activation. */
  private readonly scratch: [Float64Array, Float64Array, Float64Array];

  constructor(
    d: number,
    readonly blocks: number,
    init?: { weight: ArrayLike<number>; bias: ArrayLike<number>; out: ArrayLike<number>; outBias: ArrayLike<number> },
    /** w of the weighted loss its weights were (or will be) fitted with. */
    readonly rejectionWeight = 6,
    readonly candidate: CandidateView = "hidden",
  ) {
    this.d = d;
    this.weight = init ? Float64Array.from(init.weight) : new Float64Array(d * d);
    this.bias = init ? Float64Array.from(init.bias) : new Float64Array(d);
    this.out = init ? Float64Array.from(init.out) : new Float64Array(2 * d);
    this.outBias = init ? Float64Array.from(init.outBias) : new Float64Array(2);
    this.scratch = [new Float64Array(d), new Float64Array(d), new Float64Array(d)];
    if (this.weight.length !== d * d || this.bias.length !== d || this.out.length !== 2 * d) {
      throw new Error(`acceptance head: tensor sizes do not match hidden size ${d}`);
    }
  }

  static load(path: string): AcceptanceHead {
    const parsed = HeadFile.safeParse(JSON.parse(readFileSync(path, "utf8")));
    if (!parsed.success) throw new Error(`${path}: not an acceptance head file (${parsed.error.issues[0].message})`);
    const f = parsed.data;
    return new AcceptanceHead(f.hiddenSize, f.blocks, f, f.rejectionWeight, f.candidate);
  }

  save(path: string, trainedOn: Record<string, unknown>): void {
    const file: HeadFile = {
      version: 2,
      candidate: this.candidate,
      hiddenSize: this.d,
      blocks: this.blocks,
      weight: [...this.weight],
      bias: [...this.bias],
      out: [...this.out],
      outBias: [...this.outBias],
      rejectionWeight: this.rejectionWeight,
      trainedOn,
    };
    writeFileSync(path, JSON.stringify(file));
  }

  /** The activations of every block (for training) and the final acceptance logit z_acc − z_rej. */
  forward(h: ArrayLike<number>): { states: Float64Array[]; preActivations: Float64Array[]; logit: number } {
    const states = [Float64Array.from(h)];
    const preActivations: Float64Array[] = [];
    for (let block = 0; block < this.blocks; block++) {
      const pre = new Float64Array(this.d);
      const next = new Float64Array(this.d);
      this.block(states[block], pre, next);
      preActivations.push(pre);
      states.push(next);
    }
    return { states, preActivations, logit: this.acceptanceLogit(states[states.length - 1]) };
  }

  /** Identifies the weights (what serving learns beside a head belongs to that head). */
  get fingerprint(): string {
    const hash = createHash("sha256");
    for (const tensor of [this.weight, this.bias, this.out, this.outBias]) hash.update(new Uint8Array(tensor.buffer, tensor.byteOffset, tensor.byteLength));
    return hash.digest("hex").slice(0, 16);
  }

  /** P̂ = σ(logit(h)). */
  predict(h: ArrayLike<number>): number {
    return sigmoid(this.logit(h));
  }

  /** z_accept − z_reject: the forward pass without what training keeps (it reuses its work vectors). */
  logit(h: ArrayLike<number>): number {
    let [x, next] = this.scratch;
    const pre = this.scratch[2];
    for (let j = 0; j < this.d; j++) x[j] = h[j];
    for (let block = 0; block < this.blocks; block++) {
      this.block(x, pre, next);
      [x, next] = [next, x];
    }
    return this.acceptanceLogit(x);
  }

  /**
   * One residual block: pre = W x + b, next = x + SiLU(pre). The product skips zero inputs
   * (hidden states can be sparse: the forge's drafts' are one-hot); it costs O(d²) otherwise.
   */
  private block(x: Float64Array, pre: Float64Array, next: Float64Array): void {
    const d = this.d;
    pre.set(this.bias);
    for (let j = 0; j < d; j++) {
      const xj = x[j];
      if (xj === 0) continue;
      for (let i = 0, at = j; i < d; i++, at += d) pre[i] += this.weight[at] * xj;
    }
    for (let i = 0; i < d; i++) next[i] = x[i] + silu(pre[i]);
  }

  /** z_accept − z_reject of the output layer. */
  private acceptanceLogit(x: Float64Array): number {
    const d = this.d;
    let reject = this.outBias[0];
    let accept = this.outBias[1];
    for (let j = 0; j < d; j++) {
      reject += this.out[j] * x[j];
      accept += this.out[d + j] * x[j];
    }
    return accept - reject;
  }
}

/**
 * The head's input for a drafted token: the hidden state before it, then its hidden state
 * (without embeddings) or its normalized token embedding.
 */
export function headInput(features: DraftFeatures, embeddings: TokenEmbeddings | null, out?: Float32Array): Float32Array {
  const { hidden, candidateHidden } = features;
  if (!hidden) throw new Error("the acceptance head needs the draft's hidden state");
  if (!embeddings && !candidateHidden) throw new Error("the acceptance head needs the draft's hidden state at the candidate");
  const input = out ?? new Float32Array(hidden.length + (embeddings ? embeddings.width : candidateHidden!.length));
  input.set(hidden);
  if (embeddings) embeddings.write(features.token, input, hidden.length);
  else input.set(candidateHidden!, hidden.length);
  return input;
}

/**
 * SpecDec++ with the authors' head: needs the draft's hidden states (native extension). In
 * serving, the head's logit is one feature of an online model (predictors.ts: the draft's
 * statistics, per-token offsets) that starts as the head's P̂ and learns from verification's
 * labels, with the head's rejection weight, how far to trust it: a head trained on other text or
 * at another temperature adapts to what it serves. `file` keeps what serving learned, for this head.
 */
export class HeadPredictor implements AcceptancePredictor {
  readonly name = "head";
  readonly needsHidden = true;
  readonly needsCandidateHidden: boolean;
  private readonly input: Float32Array;
  private readonly online: OnlineLogisticPredictor;

  /** embeddings: the draft's, for a head whose candidate view is "embedding" (else null). */
  constructor(
    private readonly head: AcceptanceHead,
    private readonly embeddings: TokenEmbeddings | null,
    file?: string,
  ) {
    if ((head.candidate === "embedding") !== (embeddings !== null)) throw new Error(`a head with candidate view "${head.candidate}" ${embeddings ? "takes no" : "needs the draft's"} token embeddings`);
    this.needsCandidateHidden = head.candidate === "hidden";
    this.input = new Float32Array(head.d);
    const extra = { logit: (f: DraftFeatures) => this.head.logit(headInput(f, this.embeddings, this.input)), fingerprint: head.fingerprint };
    this.online = new OnlineLogisticPredictor({ rejectionWeight: head.rejectionWeight, file, extra });
  }

  get rejectionWeight(): number {
    return this.head.rejectionWeight;
  }

  predict(features: DraftFeatures): number {
    return this.online.predict(features);
  }

  /**
   * With the embedding view, P̂ of q's two most likely tokens (and the rest judged like the
   * second): a pre-draw expectation at two head evaluations. The hidden view needs the draft's
   * step at y, so it has none (the policy then extrapolates from the last prediction).
   */
  get expected(): ((before: PreDrawFeatures) => number) | undefined {
    if (!this.embeddings) return undefined;
    return (before) => expectedOverTop(before, (chosen, token) => this.predict({ ...before, chosen, token }), 2);
  }

  /** The head is trained offline; serving trains the online model around it. */
  observe(features: DraftFeatures, acceptance: number): void {
    this.online.observe(features, acceptance);
  }

  save(): void {
    this.online.save();
  }
}
