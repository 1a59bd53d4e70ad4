// npm run train:expert -- --model BASE.gguf --data FILE.txt|FILE.jsonl --out ADAPTER.gguf [options]
// Trains a LoRA expert on a frozen GGUF base inside llama.cpp (AdamW; experts/train-lora.ts) and
// writes it as an ordinary llama.cpp LoRA adapter. Prints the loss per epoch. docs/training.md.
import { existsSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { getLlama } from "node-llama-cpp";
import { z } from "zod";
import { defaultThreads } from "../engine/engine.js";
import { DEFAULT_LORA_MODULES, hasTrainLora, readTrainingDocuments, splitValidation, trainLora } from "../experts/train-lora.js";

const usage = `usage: npm run train:expert -- --model BASE.gguf --data FILE.txt|FILE.jsonl --out ADAPTER.gguf
  [--rank N]          LoRA rank (default 8)
  [--alpha X]         LoRA alpha; the adapter's scale is alpha / rank (default: the rank)
  [--modules LIST]    comma-separated module names (default ${DEFAULT_LORA_MODULES.join(",")})
  [--epochs N]        passes over the training text (default 3)
  [--lr X]            AdamW learning rate (default 1e-4)
  [--lr-min X]        cosine decay to this rate by the last epoch (default: constant)
  [--weight-decay X]  AdamW weight decay (default 0)
  [--context N]       tokens per training window, a multiple of 256 (default 256)
  [--stride N]        tokens from one training window to the next (default: half the context)
  [--validation F]    fraction of the documents held out for validation (default 0.1)
  [--init FILE]       continue training this adapter (f32 tensors) instead of a fresh one
  [--resume]          go on from the last finished epoch of a run that was stopped (Ctrl-C),
                      exactly as the run would have gone on: its checkpoint is
                      ADAPTER.checkpoint.gguf with AdamW's state in
                      ADAPTER.checkpoint.optimizer.gguf, written after every epoch
  [--threads N]       CPU threads (default: cores - 1)
  [--seed N]          initialisation and shuffling seed (default 1)
A .txt file is one document per paragraph; a .jsonl file one object a line with "text"
(or "prompt" and "completion", or chat "messages").`;

const Flags = z.object({
  model: z.string().min(1),
  data: z.string().min(1),
  out: z.string().regex(/\.gguf$/i, "the adapter file ends in .gguf"),
  rank: z.coerce.number().int().min(1).default(8),
  alpha: z.coerce.number().positive().optional(),
  modules: z.string().optional(),
  epochs: z.coerce.number().int().min(0).default(3),
  lr: z.coerce.number().positive().default(1e-4),
  "lr-min": z.coerce.number().positive().optional(),
  "weight-decay": z.coerce.number().min(0).max(1).default(0),
  context: z.coerce.number().int().min(1).default(256),
  stride: z.coerce.number().int().min(1).optional(),
  validation: z.coerce.number().gt(0).lt(1).default(0.1),
  init: z.string().min(1).optional(),
  threads: z.coerce.number().int().min(1).default(defaultThreads()),
  seed: z.coerce.number().int().min(0).default(1),
});

function fail(message: string): never {
  console.error(`train:expert: ${message}\n${usage}`);
  process.exit(2);
}

const names = ["model", "data", "out", "rank", "alpha", "modules", "epochs", "lr", "lr-min", "weight-decay", "context", "stride", "validation", "init", "threads", "seed"] as const;
const { values } = parseArgs({
  options: { ...(Object.fromEntries(names.map((n) => [n, { type: "string" }])) as Record<(typeof names)[number], { type: "string" }>), resume: { type: "boolean" } },
  strict: true,
});
const { resume, ...given } = values;
const parsed = Flags.safeParse(given);
if (!parsed.success) fail(parsed.error.issues.map((i) => `--${i.path.join(".")}: ${i.message}`).join("; "));
const flags = parsed.data;

// After every epoch the adapter is written to the checkpoint and the run's settings and progress
// beside it; --resume reads them back. What the run trains must not change in between.
const checkpoint = flags.out.replace(/\.gguf$/i, ".checkpoint.gguf");
const optimizerCheckpoint = flags.out.replace(/\.gguf$/i, ".checkpoint.optimizer.gguf");
const checkpointState = flags.out.replace(/\.gguf$/i, ".checkpoint.json");
const { threads: _threads, ...settings } = flags;
let startEpoch = 0;
if (resume) {
  if (flags.init) fail("--resume continues the run's own checkpoint: leave out --init");
  if (!existsSync(checkpointState) || !existsSync(checkpoint) || !existsSync(optimizerCheckpoint)) fail(`nothing to resume: no checkpoint ${checkpoint} with its optimizer state (they are written after the first epoch)`);
  const state = JSON.parse(readFileSync(checkpointState, "utf8")) as { epochsDone: number; settings: Record<string, unknown> };
  const changed = Object.keys({ ...settings, ...state.settings }).filter((k) => JSON.stringify((settings as Record<string, unknown>)[k]) !== JSON.stringify(state.settings[k]));
  if (changed.length > 0) fail(`the stopped run had other settings (${changed.map((k) => `--${k}`).join(", ")}): resume with the same ones`);
  startEpoch = state.epochsDone;
}

let documents: string[];
try {
  documents = readTrainingDocuments(flags.data);
} catch (err) {
  fail((err as Error).message);
}
const { train, validation } = splitValidation(documents, flags.validation);
const modules = flags.modules?.split(",").map((m) => m.trim()).filter((m) => m.length > 0);

const llama = await getLlama({ gpu: "auto" });
if (!hasTrainLora(llama)) fail("this native build cannot train adapters: run npm run build:native");

const tty = process.stderr.isTTY;
let trainSeconds = 0;
const started = performance.now();
console.log(
  `train:expert: ${flags.model} ← ${flags.data} (${train.length} training, ${validation.length} validation documents); ` +
    (flags.init ? `continuing ${flags.init} (its rank, alpha and modules)` : `rank ${flags.rank}, alpha ${flags.alpha ?? flags.rank}`) +
    `, ${flags.epochs} epochs, lr ${flags.lr}` +
    (resume ? `; resuming after epoch ${startEpoch} from ${checkpoint}` : "; Ctrl-C stops, --resume goes on from the last finished epoch"),
);
try {
  const result = trainLora(llama, {
    modelPath: flags.model,
    out: flags.out,
    train,
    validation,
    modules,
    rank: flags.rank,
    alpha: flags.alpha,
    epochs: flags.epochs,
    learningRate: flags.lr,
    learningRateMin: flags["lr-min"],
    weightDecay: flags["weight-decay"],
    contextSize: flags.context,
    stride: flags.stride,
    threads: flags.threads,
    seed: flags.seed,
    init: resume ? checkpoint : flags.init,
    checkpoint,
    optimizerCheckpoint,
    startEpoch,
    initOptimizer: resume ? optimizerCheckpoint : undefined,
    onStep: (s) => {
      if (s.train) trainSeconds = s.seconds;
      if (!tty) return;
      const width = 30;
      const done = Math.round((s.step / s.steps) * width);
      process.stderr.write(
        `\r  ${s.train ? `epoch ${s.epoch + 1}` : "validation"} [${"=".repeat(done)}${" ".repeat(width - done)}] ${s.step}/${s.steps}  loss ${s.loss.toFixed(4)}  ${s.seconds.toFixed(1)} s\x1b[K`,
      );
      if (s.step === s.steps) process.stderr.write("\r\x1b[K");
    },
    onEpoch: (e) => {
      writeFileSync(checkpointState, JSON.stringify({ epochsDone: e.epoch + 1, settings }));
      console.log(
        `epoch ${e.epoch + 1}/${flags.epochs}  train loss ${e.trainLoss.toFixed(4)}  validation loss ${e.validationLoss.toFixed(4)} ` +
          `(perplexity ${Math.exp(e.validationLoss).toFixed(2)})  ${e.seconds.toFixed(1)} s`,
      );
    },
  });
  for (const file of [checkpoint, optimizerCheckpoint, checkpointState]) rmSync(file, { force: true });
  const tokensPerSecond = trainSeconds > 0 ? (result.trainWindows * result.contextSize) / trainSeconds : 0;
  console.log(
    `train:expert: ${result.tensors / 2} modules, ${result.parameters} parameters; ${result.trainWindows} training and ${result.validationWindows} validation windows of ${result.contextSize} tokens; ` +
      `validation loss ${resume ? "at the checkpoint" : "before training"} ${result.initialValidationLoss.toFixed(4)}`,
  );
  console.log(
    `train:expert: wrote ${flags.out} in ${((performance.now() - started) / 1000).toFixed(1)} s` +
      (tokensPerSecond > 0 ? `, ${Math.round(tokensPerSecond)} training tokens/s (last epoch)` : "") +
      `, peak memory ${(process.resourceUsage().maxRSS / 1024).toFixed(0)} MiB`,
  );
} catch (err) {
  fail((err as Error).message);
}
