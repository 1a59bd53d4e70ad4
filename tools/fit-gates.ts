// npm run fit:gates -- --base BASE.gguf --lora EXPERT.gguf --text DOMAIN.txt --out EXPERT.gates.gguf
// Fits an expert's gates as the "average activation" baseline (the mean module input over its
// domain text) and writes a gate file flock loads like trained PHATGOOSE gates.
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { z } from "zod";
import { defaultThreads, Engine } from "../engine/engine.js";
import { readGgufTensors } from "../engine/gguf/reader.js";
import { ModelEntry } from "../pipelines/model-entry.js";
import { averageActivation, FITTABLE_MODULES } from "../experts/fit-gates.js";
import { writeGateFile } from "../experts/gates.js";

const usage = `usage: npm run fit:gates -- --base BASE.gguf --lora EXPERT.gguf --text FILE [--text FILE...] --out GATES.gguf|GATES.safetensors
  [--context N]   tokens per window (default 2048)
  [--threads N]   CPU threads (default: cores - 1)`;

const Flags = z.object({
  base: z.string().min(1),
  lora: z.string().min(1),
  text: z.array(z.string().min(1)).min(1),
  out: z.string().regex(/\.(gguf|safetensors)$/i, "the gate file ends in .gguf or .safetensors"),
  context: z.coerce.number().int().min(16).default(2048),
  threads: z.coerce.number().int().min(1).default(defaultThreads()),
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
    context: { type: "string" },
    threads: { type: "string" },
  },
  strict: true,
});
const parsed = Flags.safeParse(values);
if (!parsed.success) fail(parsed.error.issues.map((i) => `--${i.path.join(".")}: ${i.message}`).join("; "));
const flags = parsed.data;

const adapter = await readGgufTensors(flags.lora, (name) => name.endsWith(".lora_a")).catch((err: Error) => fail(`cannot read ${flags.lora}: ${err.message}`));
const modules = [...adapter.tensors.keys()].map((name) => name.slice(0, -".lora_a".length));
const unobservable = modules.filter((m) => !(FITTABLE_MODULES as readonly string[]).includes(m));
if (unobservable.length > 0) {
  fail(
    `${flags.lora} adapts ${unobservable.slice(0, 3).join(", ")}${unobservable.length > 3 ? ` and ${unobservable.length - 3} more` : ""}; ` +
      `average-activation gates can be fitted for ${FITTABLE_MODULES.join(", ")} only (the engine exposes no other module's input). ` +
      `Train PHATGOOSE gates with the authors' code and export them (docs/experts.md: gate files).`,
  );
}

const texts = flags.text.map((file) => readFileSync(file, "utf8"));
const engine = await Engine.create({ gpu: "auto", threads: flags.threads });
try {
  const base = await engine.load(ModelEntry.parse({ id: "base", path: flags.base, contextSize: flags.context, parallel: 1 }), { hiddenStates: true });
  const { gate, tokens } = await averageActivation(base, texts);
  writeGateFile(flags.out, modules.map((module) => ({ module, gate })), "average-activation");
  console.log(`fit:gates: ${flags.out}: average-activation gates for ${modules.join(", ")} from ${tokens} tokens of ${texts.length} text file(s)`);
} finally {
  await engine[Symbol.asyncDispose]();
}
