// npm run fit:gates -- --base BASE.gguf --lora EXPERT.gguf --text DOMAIN.txt --out EXPERT.gates.gguf [--method average|phatgoose]
// Fits an expert's gates and writes a gate file the routed library loads.
//   --method average (the default): the "average activation" baseline, the mean module input
//     over the expert's domain text (experts/fit-gates.ts); the output layer's adapters only.
//   --method phatgoose: the authors' gate training inside llama.cpp (experts/train-gates.ts): the
//     expert's LoRA frozen, one gate per adapted module trained from zeros on its own text.
// docs/training.md, docs/experts.md.
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { getLlama } from "node-llama-cpp";
import { z } from "zod";
import { defaultThreads, Engine } from "../engine/engine.js";
import { readGgufTensors } from "../engine/gguf/reader.js";
import { ModelEntry } from "../pipelines/model-entry.js";
import { averageActivation, FITTABLE_MODULES } from "../experts/fit-gates.js";
import { writeGateFile } from "../experts/gates.js";
import { GATE_DEFAULTS, hasTrainGates, trainGates } from "../experts/train-gates.js";
import { readTrainingDocuments, splitValidation } from "../experts/train-lora.js";

const usage = `usage: npm run fit:gates -- --base BASE.gguf --lora EXPERT.gguf --text FILE [--text FILE...] --out GATES.gguf|GATES.safetensors
  [--method M]        average (default): the mean module input over the text (output-layer adapters only);
                      phatgoose: gates trained inside llama.cpp, the expert frozen (every adapted module)
  [--context N]       tokens per window (average: default 2048; phatgoose: default ${GATE_DEFAULTS.contextSize}, a multiple of 256)
  [--threads N]       CPU threads (default: cores - 1)
phatgoose only:
  [--steps N]         optimizer steps, one window each (default ${GATE_DEFAULTS.steps})
  [--lr X]            learning rate (default ${GATE_DEFAULTS.learningRate})
  [--optimizer O]     adamw (default) or sgd
  [--validation F]    fraction of the documents held out to report the loss before and after (default 0.1; 0: none)
  [--scale X]         the adapter's scale while training (default 1)
  [--seed N]          window order seed (default 1)
With phatgoose, a .txt file is one document per paragraph, a .jsonl file one object a line with
"text" (or "prompt" and "completion", or chat "messages"), as for train:expert.`;

const Flags = z.object({
  base: z.string().min(1),
  lora: z.string().min(1),
  text: z.array(z.string().min(1)).min(1),
  out: z.string().regex(/\.(gguf|safetensors)$/i, "the gate file ends in .gguf or .safetensors"),
  method: z.enum(["average", "phatgoose"]).default("average"),
  context: z.coerce.number().int().min(16).optional(),
  threads: z.coerce.number().int().min(1).default(defaultThreads()),
  steps: z.coerce.number().int().min(0).default(GATE_DEFAULTS.steps),
  lr: z.coerce.number().positive().default(GATE_DEFAULTS.learningRate),
  optimizer: z.enum(["adamw", "sgd"]).default("adamw"),
  validation: z.coerce.number().min(0).lt(1).default(0.1),
  scale: z.coerce.number().positive().default(1),
  seed: z.coerce.number().int().min(0).default(1),
});

function fail(message: string): never {
  console.error(`fit:gates: ${message}\n${usage}`);
  process.exit(2);
}

const { values } = parseArgs({
  options: {
    base: { type: "string" },
    lora: { type: "string" },
    text: { type: "string", multiple: true },
    out: { type: "string" },
    method: { type: "string" },
    context: { type: "string" },
    threads: { type: "string" },
    steps: { type: "string" },
    lr: { type: "string" },
    optimizer: { type: "string" },
    validation: { type: "string" },
    scale: { type: "string" },
    seed: { type: "string" },
  },
  strict: true,
});
const parsed = Flags.safeParse(values);
if (!parsed.success) fail(parsed.error.issues.map((i) => `--${i.path.join(".")}: ${i.message}`).join("; "));
const flags = parsed.data;

const adapter = await readGgufTensors(flags.lora, (name) => name.endsWith(".lora_a")).catch((err: Error) => fail(`cannot read ${flags.lora}: ${err.message}`));
const modules = [...adapter.tensors.keys()].map((name) => name.slice(0, -".lora_a".length));

if (flags.method === "phatgoose") await phatgoose();
else await average();

async function average(): Promise<void> {
  const unobservable = modules.filter((m) => !(FITTABLE_MODULES as readonly string[]).includes(m));
  if (unobservable.length > 0) {
    fail(
      `${flags.lora} adapts ${unobservable.slice(0, 3).join(", ")}${unobservable.length > 3 ? ` and ${unobservable.length - 3} more` : ""}; ` +
        `average-activation gates can be fitted for ${FITTABLE_MODULES.join(", ")} only (the engine exposes no other module's input). ` +
        `Train PHATGOOSE gates instead: --method phatgoose (docs/training.md).`,
    );
  }
  const texts = flags.text.map((file) => readFileSync(file, "utf8"));
  const engine = await Engine.create({ gpu: "auto", threads: flags.threads });
  try {
    const base = await engine.load(ModelEntry.parse({ id: "base", path: flags.base, contextSize: flags.context ?? 2048, parallel: 1 }), { hiddenStates: true });
    const { gate, tokens } = await averageActivation(base, texts);
    writeGateFile(flags.out, modules.map((module) => ({ module, gate })), "average-activation");
    console.log(`fit:gates: ${flags.out}: average-activation gates for ${modules.join(", ")} from ${tokens} tokens of ${texts.length} text file(s)`);
  } finally {
    await engine[Symbol.asyncDispose]();
  }
}

async function phatgoose(): Promise<void> {
  let documents: string[];
  try {
    documents = flags.text.flatMap((file) => readTrainingDocuments(file));
  } catch (err) {
    fail((err as Error).message);
  }
  const { train, validation } = flags.validation > 0 ? splitValidation(documents, flags.validation) : { train: documents, validation: [] };
  const llama = await getLlama({ gpu: "auto" });
  if (!hasTrainGates(llama)) fail("this native build cannot train gates: run npm run build:native");
  console.log(
    `fit:gates: PHATGOOSE gates for ${modules.length} module(s) of ${flags.lora} on ${flags.base} ← ${train.length} training, ${validation.length} validation documents; ` +
      `${flags.steps} steps, ${flags.optimizer} lr ${flags.lr}`,
  );
  const tty = process.stderr.isTTY;
  const started = performance.now();
  try {
    const r = trainGates(llama, {
      modelPath: flags.base,
      adapterPath: flags.lora,
      out: flags.out,
      train,
      validation,
      steps: flags.steps,
      learningRate: flags.lr,
      optimizer: flags.optimizer,
      scale: flags.scale,
      contextSize: flags.context ?? GATE_DEFAULTS.contextSize,
      threads: flags.threads,
      seed: flags.seed,
      onStep: (s) => {
        if (!tty || !s.train) return;
        const width = 30;
        const done = Math.round((s.step / s.steps) * width);
        process.stderr.write(`\r  [${"=".repeat(done)}${" ".repeat(width - done)}] ${s.step}/${s.steps}  loss ${s.loss.toFixed(4)}  ${s.seconds.toFixed(1)} s\x1b[K`);
        if (s.step === s.steps) process.stderr.write("\r\x1b[K");
      },
    });
    const tokensPerSecond = r.seconds > 0 ? (r.steps * r.contextSize) / r.seconds : 0;
    console.log(
      `fit:gates: ${r.gates.size} gates, ${r.parameters} values; ${r.steps} steps over ${r.trainWindows} windows of ${r.contextSize} tokens; train loss ${r.trainLoss.toFixed(4)}` +
        (r.validationLoss !== undefined ? `; validation loss ${r.initialValidationLoss!.toFixed(4)} with zero gates (σ = ½) → ${r.validationLoss.toFixed(4)}` : ""),
    );
    if (r.untrained.length > 0) {
      console.warn(`fit:gates: no gradient reached ${r.untrained.length} gate(s) (${r.untrained.slice(0, 3).join(", ")}${r.untrained.length > 3 ? ", …" : ""}): they stay zero (docs/training.md: limits)`);
    }
    console.log(
      `fit:gates: wrote ${flags.out} in ${((performance.now() - started) / 1000).toFixed(1)} s` +
        (tokensPerSecond > 0 ? `, ${Math.round(tokensPerSecond)} training tokens/s` : "") +
        `, peak memory ${(process.resourceUsage().maxRSS / 1024).toFixed(0)} MiB`,
    );
  } catch (err) {
    fail((err as Error).message);
  }
}
