// npm run forge -- --out DIR [--preset demo|spec|spec-compute] [--seed N] [--tokenizer NAME | --vocab-size N] [--block-weights TYPE]
import { parseArgs } from "node:util";
import { z } from "zod";
import { BLOCK_WEIGHTS } from "../forge/compile.js";
import { forge, PRESETS } from "../forge/presets.js";
import { readTokenizer, TOKENIZERS, type TokenizerName } from "../forge/tokenizers.js";
import { defaultCacheDir } from "../server/config.js";

const Flags = z.object({
  out: z.string().min(1),
  preset: z.enum(Object.keys(PRESETS) as [keyof typeof PRESETS, ...Array<keyof typeof PRESETS>]).default("demo"),
  seed: z.coerce.number().int().nonnegative().default(1),
  "vocab-size": z.coerce.number().int().positive().optional(),
  tokenizer: z.enum(Object.keys(TOKENIZERS) as [TokenizerName, ...TokenizerName[]]).optional(),
  "cache-dir": z.string().min(1).default(defaultCacheDir()),
  "block-weights": z.enum(BLOCK_WEIGHTS).optional(),
});

const usage = `usage: npm run forge -- --out DIR [--preset NAME] [--seed N] [--tokenizer NAME | --vocab-size N] [--block-weights ${BLOCK_WEIGHTS.join("|")}]
presets:
${Object.entries(PRESETS).map(([name, what]) => `  ${name.padEnd(12)} ${what}`).join("\n")}
tokenizers (a real vocabulary instead of the forge's own 679 tokens; --vocab-size pads the forge's own;
--cache-dir: where llama.cpp's vocabulary file is unpacked if build:native has not, default ~/.cache/flock):
${Object.entries(TOKENIZERS).map(([name, t]) => `  ${name.padEnd(12)} ${t.about}`).join("\n")}`;

const { values } = parseArgs({
  options: {
    out: { type: "string" },
    preset: { type: "string" },
    seed: { type: "string" },
    "vocab-size": { type: "string" },
    tokenizer: { type: "string" },
    "cache-dir": { type: "string" },
    "block-weights": { type: "string" },
    help: { type: "boolean", short: "h" },
  },
});
if (values.help) {
  console.log(usage);
  process.exit(0);
}
const flags = Flags.safeParse(values);
if (!flags.success) {
  console.error(`forge: ${flags.error.issues.map((i) => `--${i.path.join(".")}: ${i.message}`).join("; ")}\n${usage}`);
  process.exit(2);
}
if (flags.data.tokenizer && flags.data["vocab-size"]) {
  console.error(`forge: --tokenizer and --vocab-size exclude each other (a real tokenizer has its own size)\n${usage}`);
  process.exit(2);
}
const started = performance.now();
const tokenizer = flags.data.tokenizer ? await readTokenizer(flags.data.tokenizer, flags.data["cache-dir"]) : undefined;
const manifest = forge({
  outDir: flags.data.out,
  preset: flags.data.preset,
  seed: flags.data.seed,
  vocabSize: flags.data["vocab-size"],
  tokenizer,
  blockWeights: flags.data["block-weights"],
});
const files = [...Object.values(manifest.models), ...Object.values(manifest.adapters)].map((m) => m.file);
console.log(`forged ${files.length} files (${flags.data.preset}, vocabulary ${manifest.vocab.tokens.length}, tokenizer ${manifest.vocab.tokenizer}) into ${flags.data.out} in ${((performance.now() - started) / 1000).toFixed(1)} s`);
for (const f of files) console.log(`  ${f}`);
