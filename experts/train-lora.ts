// LoRA experts trained inside llama.cpp (issue #23): a rank-r adapter on a frozen GGUF base,
// trained with llama.cpp's own optimizer (AdamW, llama_opt_init / llama_opt_epoch) by flock's
// native extension (engine/native/addon/AddonFlockTrain.cpp), written as an ordinary llama.cpp
// LoRA GGUF that flock's experts, routing and fusion load as they are. docs/training.md.
import { readFileSync } from "node:fs";
import type { Llama } from "node-llama-cpp";
import { FlockError } from "../engine/errors.js";

/** The modules a fresh adapter adapts unless told otherwise (llama-style tensor names). */
export const DEFAULT_LORA_MODULES = ["attn_q", "attn_output", "ffn_gate", "ffn_up", "ffn_down"] as const;

export type TrainDocument = string | Uint32Array;

export interface TrainLoraOptions {
  /** The base GGUF (frozen). */
  modelPath: string;
  /** Where the trained adapter GGUF is written. */
  out: string;
  /**
   * Training documents: text (tokenized with the base's vocabulary and packed "doc EOS doc EOS",
   * BOS before the first where the vocabulary adds one) or tokens, taken as they are.
   */
  train: readonly TrainDocument[];
  /** Held-out documents of the same domain. */
  validation: readonly TrainDocument[];
  modules?: readonly string[];
  rank?: number;
  /** LoRA alpha (scale alpha / rank); default: the rank (scale 1). */
  alpha?: number;
  epochs?: number;
  /** AdamW's learning rate (default 1e-4). */
  learningRate?: number;
  /** Cosine decay to this learning rate over the epochs (default: constant). */
  learningRateMin?: number;
  weightDecay?: number;
  /** Tokens per training window (llama.cpp rounds it up to a multiple of 256). */
  contextSize?: number;
  /** Start of one training window to the next (default: half a window). */
  stride?: number;
  threads?: number;
  seed?: number;
  gpuLayers?: number;
  /** An adapter GGUF (f32 tensors) to continue training instead of a fresh one. */
  init?: string;
  /** Where the adapter is written after every epoch, before onEpoch hears of it. */
  checkpoint?: string;
  /** Where AdamW's state (its step count and moments) is written after every epoch, beside the checkpoint. */
  optimizerCheckpoint?: string;
  /**
   * Epochs already done (default 0): resuming a run from its checkpoint (given as init), the
   * learning-rate schedule and the shuffling of the training windows go on from this epoch.
   */
  startEpoch?: number;
  /**
   * AdamW's state to go on with: the optimizerCheckpoint of the run being resumed. With it, a
   * resumed run takes the steps the uninterrupted run would have; without, its moments start at zero.
   */
  initOptimizer?: string;
  /** After each epoch; an exception it throws stops the training there (the checkpoint kept). */
  onEpoch?: (epoch: TrainEpoch) => void;
  /** After each optimizer step (train) or validation window. */
  onStep?: (step: TrainStep) => void;
}

export interface TrainEpoch {
  epoch: number;
  /** Mean token cross-entropy (nats) over the epoch's training windows, as they were trained. */
  trainLoss: number;
  /** Mean token cross-entropy (nats) over the validation windows after the epoch. */
  validationLoss: number;
  seconds: number;
  learningRate?: number;
}

export interface TrainStep {
  epoch: number;
  train: boolean;
  step: number;
  steps: number;
  loss: number;
  seconds: number;
}

export interface TrainLoraResult {
  contextSize: number;
  trainWindows: number;
  validationWindows: number;
  trainTokens: number;
  /** Adapter tensors trained (an A and a B per adapted module). */
  tensors: number;
  parameters: number;
  alpha: number;
  /** Validation loss of the untrained adapter (B = 0: the base's). */
  initialValidationLoss: number;
  epochs: TrainEpoch[];
}

type NativeTrainLora = (
  options: Omit<TrainLoraOptions, "onEpoch" | "onStep" | "train" | "validation"> & { train: TrainDocument[]; validation: TrainDocument[] },
  onEpoch?: (epoch: number, trainLoss: number, validationLoss: number, seconds: number) => void,
  onStep?: (epoch: number, train: boolean, step: number, steps: number, loss: number, seconds: number) => void,
) => TrainLoraResult;

function nativeTrainLora(llama: Llama): NativeTrainLora | undefined {
  const fn = (llama as unknown as { _bindings?: Record<string, unknown> })._bindings?.flockTrainLora;
  return typeof fn === "function" ? (fn as NativeTrainLora) : undefined;
}

/** Whether the loaded native build can train adapters (flock's addon with AddonFlockTrain.cpp). */
export function hasTrainLora(llama: Llama): boolean {
  return nativeTrainLora(llama) !== undefined;
}

/**
 * Trains the adapter and writes it to `options.out`. Synchronous: it blocks the event loop for
 * the whole run (callbacks are called in between steps), so run it from a CLI or a worker.
 */
export function trainLora(llama: Llama, options: TrainLoraOptions): TrainLoraResult {
  const native = nativeTrainLora(llama);
  if (!native) throw new FlockError("unsupported", "this native build cannot train adapters (run npm run build:native)");
  const { onEpoch, onStep, ...rest } = options;
  return native(
    { ...rest, train: [...options.train], validation: [...options.validation], modules: options.modules ? [...options.modules] : undefined },
    onEpoch ? (epoch, trainLoss, validationLoss, seconds) => onEpoch({ epoch, trainLoss, validationLoss, seconds }) : undefined,
    onStep ? (epoch, train, step, steps, loss, seconds) => onStep({ epoch, train, step, steps, loss, seconds }) : undefined,
  );
}

/**
 * Documents of a training file: .jsonl, one JSON object a line with "text" (or "prompt" and
 * "completion", or chat "messages" whose contents are joined); otherwise plain text, one
 * document per paragraph (blank-line separated).
 */
export function readTrainingDocuments(path: string): string[] {
  const content = readFileSync(path, "utf8");
  if (/\.jsonl$/i.test(path)) {
    return content
      .split("\n")
      .map((line, i) => [line.trim(), i + 1] as const)
      .filter(([line]) => line.length > 0)
      .map(([line, n]) => {
        let row: unknown;
        try {
          row = JSON.parse(line);
        } catch {
          throw new FlockError("invalid_request", `${path}:${n}: not JSON`);
        }
        const text = documentOf(row);
        if (text === undefined) throw new FlockError("invalid_request", `${path}:${n}: expected "text", "prompt"/"completion" or "messages"`);
        return text;
      });
  }
  return content
    .split(/\n\s*\n/)
    .map((p) => p.trim())
    .filter((p) => p.length > 0);
}

function documentOf(row: unknown): string | undefined {
  if (typeof row !== "object" || row === null) return undefined;
  const r = row as Record<string, unknown>;
  if (typeof r.text === "string") return r.text;
  if (typeof r.prompt === "string" && typeof r.completion === "string") return r.prompt + r.completion;
  if (Array.isArray(r.messages)) {
    const parts = r.messages.map((m) => (typeof m === "object" && m !== null && typeof (m as { content?: unknown }).content === "string" ? (m as { content: string }).content : ""));
    return parts.filter((p) => p.length > 0).join("\n");
  }
  return undefined;
}

/**
 * Holds out the last `fraction` of the documents (at least one) for validation; a single
 * document is cut at a whitespace near (1 - fraction) of its length.
 */
export function splitValidation(documents: readonly string[], fraction: number): { train: string[]; validation: string[] } {
  if (!(fraction > 0 && fraction < 1)) throw new FlockError("invalid_request", "the validation fraction must be between 0 and 1");
  if (documents.length === 0) throw new FlockError("invalid_request", "no training documents");
  if (documents.length === 1) {
    const text = documents[0];
    let cut = Math.floor(text.length * (1 - fraction));
    const space = text.indexOf(" ", cut);
    if (space > 0) cut = space;
    return { train: [text.slice(0, cut)], validation: [text.slice(cut).trimStart()] };
  }
  const held = Math.max(1, Math.round(documents.length * fraction));
  return { train: documents.slice(0, documents.length - held), validation: documents.slice(documents.length - held) };
}
