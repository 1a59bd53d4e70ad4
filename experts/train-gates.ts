// PHATGOOSE gate training inside llama.cpp (issue #23; Muqeeth et al. 2024, "Learning to Route
// Among Specialized Experts for Zero-Shot Generalization"): an expert's LoRA stays frozen and one
// gate vector v per adapted module is trained on the expert's own data, the module's output
// becoming W x + σ(v · x) · scale · B A x, v starting at zeros (σ = ½). flock's native extension
// (engine/native/addon/AddonFlockTrain.cpp, patches/llama-cpp-opt-gates.diff) adds the gates to
// llama.cpp's training graph and trains them alone with llama.cpp's optimizer (AdamW). The gates
// then route at inference: the routed library reads them from the gate file this writes.
// docs/training.md.
import type { Llama } from "node-llama-cpp";
import { FlockError } from "../engine/errors.js";
import { writeGateFile } from "./gates.js";
import type { TrainDocument, TrainStep } from "./train-lora.js";

/**
 * Defaults: the authors' 100 steps; their learning rate is 5e-3 on batches of many sequences,
 * a flock step is one window of `contextSize` tokens, the optimizer AdamW. Adam moves every gate
 * entry whose gradient keeps its sign by about the learning rate per step, whatever the
 * gradient's size, so the rate sets how far from zero (σ = ½) the gates get in 100 steps: at
 * 1e-2 up to about ±1 per entry. On the forged routing experts 5e-3 improves an expert's own
 * held-out loss about half as much as 1e-2 (0.026 against 0.047 nats; docs/training.md).
 */
export const GATE_DEFAULTS = { steps: 100, learningRate: 1e-2, contextSize: 256 } as const;

export interface TrainGatesOptions {
  /** The base GGUF (frozen). */
  modelPath: string;
  /** The expert's LoRA adapter GGUF (frozen). */
  adapterPath: string;
  /** The gate file written (.gguf or .safetensors); scratch files go beside it. */
  out: string;
  /** The expert's own data: text (packed "doc EOS doc EOS") or tokens. */
  train: readonly TrainDocument[];
  /** Held-out documents: the loss before and after training is reported. */
  validation?: readonly TrainDocument[];
  /** Optimizer steps, one training window each (default 100). */
  steps?: number;
  /** The optimizer (default adamw). */
  optimizer?: "adamw" | "sgd";
  /** The optimizer's learning rate (default 1e-2). */
  learningRate?: number;
  weightDecay?: number;
  /** The adapter's scale while training (default 1). */
  scale?: number;
  contextSize?: number;
  stride?: number;
  threads?: number;
  seed?: number;
  gpuLayers?: number;
  onStep?: (step: TrainStep) => void;
}

export interface TrainGatesResult {
  /** Module (llama.cpp base tensor name) → trained gate. */
  gates: Map<string, Float32Array>;
  steps: number;
  contextSize: number;
  trainWindows: number;
  trainTokens: number;
  /** Gate values trained (the sum of the adapted modules' input widths). */
  parameters: number;
  /** Mean token cross-entropy over the training steps, as they were trained. */
  trainLoss: number;
  /** Held-out loss with σ = ½ on every module (zero gates), and after training. */
  initialValidationLoss?: number;
  validationLoss?: number;
  seconds: number;
  /**
   * Modules whose gate stayed at zero: no gradient reached it (attn_k and attn_v of architectures
   * with sliding-window KV caches: docs/training.md). Routing scores such a gate 0 everywhere.
   */
  untrained: string[];
}

type NativeTrainGates = (
  options: Omit<TrainGatesOptions, "onStep" | "train" | "validation"> & { train: TrainDocument[]; validation?: TrainDocument[] },
  onStep?: (epoch: number, train: boolean, step: number, steps: number, loss: number, seconds: number) => void,
) => Omit<TrainGatesResult, "gates" | "untrained"> & { gates: Record<string, Float32Array> };

export interface GradientCheckOptions {
  modelPath: string;
  adapterPath: string;
  /** Which parameters: the gates of a gated copy of the adapter, or its A and B. */
  params: "gates" | "lora";
  /** One window: contextSize + 1 tokens. */
  tokens: Uint32Array;
  contextSize?: number;
  /** Finite-difference step (default 1e-2). */
  epsilon?: number;
  /** Entries of largest |g| checked per tensor (default 2). */
  elements?: number;
  /** Parameter tensors checked, in name order (default all). */
  tensors?: number;
  threads?: number;
  gpuLayers?: number;
  scale?: number;
}

export interface GradientCheck {
  loss: number;
  /** The loss again after the SGD step was undone (equal to `loss`: the step is reversible). */
  lossAfterRestore: number;
  parameters: number;
  checks: Array<{ tensor: string; index: number; analytic: number; numeric: number }>;
}

interface Bindings {
  flockTrainGates?: NativeTrainGates;
  flockTrainGradientCheck?: (options: GradientCheckOptions) => GradientCheck;
}

const bindings = (llama: Llama) => ((llama as unknown as { _bindings?: Bindings })._bindings ?? {}) as Bindings;

/** Whether the loaded native build can train gates (flock's addon with llama-cpp-opt-gates). */
export function hasTrainGates(llama: Llama): boolean {
  return typeof bindings(llama).flockTrainGates === "function";
}

/**
 * Trains the expert's gates and writes the gate file. Synchronous: it blocks the event loop for
 * the whole run (onStep is called between steps), so run it from a CLI or a worker.
 */
export function trainGates(llama: Llama, options: TrainGatesOptions): TrainGatesResult {
  const native = bindings(llama).flockTrainGates;
  if (typeof native !== "function") throw new FlockError("unsupported", "this native build cannot train gates (run npm run build:native)");
  const { onStep, ...rest } = options;
  const raw = native(
    { ...rest, train: [...options.train], validation: options.validation ? [...options.validation] : undefined },
    onStep ? (epoch, train, step, steps, loss, seconds) => onStep({ epoch, train, step, steps, loss, seconds }) : undefined,
  );
  const gates = new Map(Object.entries(raw.gates).sort(([a], [b]) => a.localeCompare(b)));
  const untrained = raw.steps > 0 ? [...gates].filter(([, g]) => g.every((x) => x === 0)).map(([m]) => m) : [];
  writeGateFile(options.out, [...gates].map(([module, gate]) => ({ module, gate })), "phatgoose");
  return { ...raw, gates, untrained };
}

/**
 * The training graph's gradient (one SGD step, learning rate 1) against central finite
 * differences of the loss, for the gates or the adapter's A and B: the wiring's proof.
 */
export function gradientCheck(llama: Llama, options: GradientCheckOptions): GradientCheck {
  const native = bindings(llama).flockTrainGradientCheck;
  if (typeof native !== "function") throw new FlockError("unsupported", "this native build cannot train gates (run npm run build:native)");
  return native(options);
}
