// npm run train:acceptance -- --target T.gguf --draft D.gguf --out head.json [options]
// Trains the SpecDec++ acceptance head for a target/draft pair from speculative rollouts.
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { z } from "zod";
import { defaultThreads, Engine } from "../engine/engine.js";
import { ModelEntry } from "../pipelines/model-entry.js";
import { TokenEmbeddings } from "../decoding/speculative/embeddings.js";
import { collectSamples, trainHead, weightedLoss } from "../decoding/speculative/train-head.js";

const usage = `usage: npm run train:acceptance -- --target T.gguf --draft D.gguf --out head.json
  [--prompts FILE]      one prompt per line (default: a small built-in set)
  [--candidates N]      drafted tokens per round in the rollouts (default 8)
  [--tokens N]          tokens generated per prompt (default 64)
  [--temperature T]     sampling temperature of the rollouts (default 1)
  [--blocks N]          residual blocks of the head (default 1)
  [--epochs N]          training epochs (default 20)
  [--candidate V]       how the head sees the drafted token: hidden (the draft's hidden state at
                        it, the authors' input; costs a draft step per round) or embedding (its
                        token embedding; free, needs more rollouts to generalize) (default hidden)
  [--threads N]         CPU threads per model (default: cores - 1)
  [--seed N]`;

const Flags = z.object({
  target: z.string().min(1),
  draft: z.string().min(1),
  out: z.string().min(1),
  prompts: z.string().optional(),
  candidates: z.coerce.number().int().min(1).max(32).default(8),
  tokens: z.coerce.number().int().min(1).default(64),
  temperature: z.coerce.number().min(0).max(2).default(1),
  blocks: z.coerce.number().int().min(0).max(8).default(1),
  epochs: z.coerce.number().int().min(1).default(20),
  candidate: z.enum(["hidden", "embedding"]).default("hidden"),
  threads: z.coerce.number().int().min(1).default(defaultThreads()),
  seed: z.coerce.number().int().min(0).default(1),
});

const DEFAULT_PROMPTS = [
  "Once upon a time",
  "The weather today is",
  "Write a short poem about the sea.",
  "Explain how a bicycle works.",
  "List three uses of copper.",
  "The capital of France is",
  "In the kitchen, the cook",
  "def fibonacci(n):",
  "Translate to French: good morning",
  "The history of astronomy begins",
  "A recipe for bread needs",
  "Summarize the plot of a detective story.",
];

const { values } = parseArgs({
  options: Object.fromEntries(
    ["target", "draft", "out", "prompts", "candidates", "tokens", "temperature", "blocks", "epochs", "candidate", "threads", "seed"].map((k) => [k, { type: "string" as const }]),
  ),
  strict: true,
});
const parsed = Flags.safeParse(values);
if (!parsed.success) {
  console.error(`train:acceptance: ${parsed.error.issues.map((i) => `--${i.path.join(".")}: ${i.message}`).join("; ")}\n${usage}`);
  process.exit(2);
}
const flags = parsed.data;

const engine = await Engine.create({ gpu: "auto", threads: flags.threads });
if (!engine.capabilities.hiddenStates) {
  console.error("train:acceptance: the acceptance head needs the draft's hidden states, which this build lacks (run npm run build:native)");
  process.exit(1);
}
const target = await engine.load(ModelEntry.parse({ id: "target", path: flags.target, parallel: 1 }));
const draft = await engine.load(ModelEntry.parse({ id: "draft", path: flags.draft, parallel: 1 }), { hiddenStates: true });
if (!target.sameVocabulary(draft)) {
  console.error("train:acceptance: the draft's vocabulary differs from the target's");
  process.exit(1);
}
const texts = flags.prompts ? readFileSync(flags.prompts, "utf8").split("\n").filter((l) => l.trim()) : DEFAULT_PROMPTS;
const prompts = texts.map((t) => target.tokenizePrompt(t));

const started = performance.now();
const embeddings = flags.candidate === "embedding" ? await TokenEmbeddings.load(flags.draft) : undefined;
const samples = await collectSamples(target, draft, prompts, { candidates: flags.candidates, tokensPerPrompt: flags.tokens, temperature: flags.temperature, seed: flags.seed, embeddings });
console.log(`collected ${samples.length} verified positions from ${prompts.length} prompts in ${((performance.now() - started) / 1000).toFixed(1)} s`);
const holdout = samples.filter((_, i) => i % 10 === 0);
const train = samples.filter((_, i) => i % 10 !== 0);
const { head, losses } = trainHead(train, { blocks: flags.blocks, epochs: flags.epochs, batchSize: 32, learningRate: 3e-3, rejectionWeight: 6, seed: flags.seed, candidate: flags.candidate });
const heldOut = weightedLoss((h) => head.predict(h), holdout);
let constant = Infinity;
for (let c = 0.01; c < 1; c += 0.01) constant = Math.min(constant, weightedLoss(() => c, holdout));
console.log(`training loss ${losses[0].toFixed(4)} → ${losses.at(-1)!.toFixed(4)}; held-out loss ${heldOut.toFixed(4)} (best constant ${constant.toFixed(4)})`);
head.save(flags.out, { ...flags, samples: samples.length, heldOutLoss: heldOut, bestConstantLoss: constant });
console.log(`wrote ${flags.out}`);
await engine[Symbol.asyncDispose]();
