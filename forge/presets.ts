// Forge presets: sets of GGUF files over one vocabulary plus a manifest that states their
// exact next-token distributions, so tests and benchmarks can compare against closed forms.
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { createRng, type Rng } from "../decoding/rng.js";
import {
  acceptancePerState,
  type Chain,
  chainFromCounts,
  corpus,
  countTransitions,
  documentTokens,
  greedyAgreementPerState,
  mixRows,
  perturbChain,
  smoothChain,
  stateLayout,
  supportOf,
} from "./chain.js";
import { type BlockWeights, chainDeltaLora, type ModelShape, shapeFor, writeChainModel, writeLoraAdapter } from "./compile.js";
import { writeDomainContextModel } from "./domain-context.js";
import { writeGateFile } from "../experts/gates.js";
import { document, DOMAINS, domainWords, renderText } from "./language.js";
import { FORGE_FORMAT, type Manifest } from "./manifest.js";
import { speculativePair } from "./spec-pair.js";
import type { RealTokenizer } from "./tokenizers.js";
import { buildVocab, languagePieces, realVocab, SPACE } from "./vocab.js";

export interface ForgeOptions {
  outDir: string;
  preset: PresetName;
  seed?: number;
  /** Pad the forge's own vocabulary with unused tokens to this size. */
  vocabSize?: number;
  /** A real tokenizer (readTokenizer) instead of the forge's own 679-token vocabulary. */
  tokenizer?: RealTokenizer;
  /**
   * Storage of every chain model's block matrices, instead of each preset's own (f16 in the
   * demo): quantized bases for tests of llama.cpp's quantized kernels and buffer types.
   */
  blockWeights?: BlockWeights;
}

export const PRESETS = {
  demo: "the demo language model, a draft for it, four domain LoRA experts, and the fusion set",
  spec: "a target/draft pair for speculative benchmarks: the target costs many times the draft, no greedy cycles, varied acceptance; the target is memory-bound (as LLMs are on GPUs)",
  "spec-compute": "the spec pair with a small q8_0 target instead, compute-bound on CPUs (verifying k tokens costs several target steps)",
} as const;
export type PresetName = keyof typeof PRESETS;

const SMOOTHING = 0.05;
/** How far a domain expert's rows for shared words lean from the base towards its domain. */
const SHARED_TILT = 0.3;
/** Weak (small) models: each row mixed with uniform over its support by this much. */
const WEAK_SMOOTHING = 0.2;

/**
 * Perturbs each row slightly so that every state has a clear, unique argmax (greedy tests).
 * Rows shared with `inheritedFrom` (states a domain never visits) stay as they are.
 */
function breakTies(chain: Chain, rng: Rng, inheritedFrom?: Chain): Chain {
  const rows = chain.rows.map((row, state) => {
    if (row === inheritedFrom?.rows[state]) return row;
    const w = row.probs.map((p) => p * (1 + 0.1 * rng.next()));
    const top = w.indexOf(Math.max(...w));
    const runnerUp = Math.max(...w.filter((_, i) => i !== top));
    if (w[top] < runnerUp * 1.01) w[top] = runnerUp * 1.01;
    const total = w.reduce((a, b) => a + b, 0);
    return { tokens: [...row.tokens], probs: w.map((x) => x / total) };
  });
  return { ...chain, rows };
}

export function forge(options: ForgeOptions): Manifest {
  const seed = options.seed ?? 1;
  const rng = createRng(seed);
  if (options.tokenizer && options.vocabSize) throw new Error("forge: a real tokenizer has its own vocabulary size; vocabSize pads only the forge's own");
  const vocab = options.tokenizer ? realVocab(options.tokenizer, languagePieces()) : buildVocab(languagePieces(), options.vocabSize ?? 0);
  const layout = stateLayout(vocab);
  const V = vocab.tokens.length;
  mkdirSync(options.outDir, { recursive: true });

  // Training text for the chains, and held-out text (separate stream) for evaluations.
  const byDomain = DOMAINS.map((d) => corpus(rng, vocab, [d], 400));
  const allCounts = countTransitions(layout, byDomain.flat());
  const support = supportOf(allCounts);
  const base = breakTies(chainFromCounts(layout, V, allCounts, support, SMOOTHING), rng);
  // A domain expert knows its own words' continuations; on words every domain shares
  // ("the", "she", ".") it only leans towards its domain, as a domain fine-tune of a general
  // model does — so experts agree on general language and differ where their domain shows.
  const domainChains = byDomain.map((docs, i) => {
    const counted = chainFromCounts(layout, V, countTransitions(layout, docs), support, SMOOTHING, base);
    const own = new Set(domainWords(DOMAINS[i]).map((w) => layout.stateOfToken[vocab.idOf(SPACE + w)]));
    const rows = counted.rows.map((row, state) =>
      own.has(state) || row === base.rows[state] ? row : mixRows(base.rows[state], row, SHARED_TILT),
    );
    return breakTies({ ...counted, rows }, rng, base);
  });

  const chains: Record<string, Chain> = { base };
  DOMAINS.forEach((d, i) => (chains[d.name] = domainChains[i]));
  const manifest: Manifest = {
    format: FORGE_FORMAT,
    preset: options.preset,
    seed,
    vocab: {
      tokenizer: vocab.tokenizer,
      tokens: vocab.tokens,
      bos: vocab.bos,
      eos: vocab.eos,
      imStart: vocab.imStart,
      imEnd: vocab.imEnd,
    },
    states: { names: layout.stateNames, ofToken: [...layout.stateOfToken] },
    chains: {},
    models: {},
    adapters: {},
    pairs: [],
    domains: [],
  };

  const heldOut = createRng(seed ^ 0x5eed);
  manifest.domains = DOMAINS.map((d) => ({
    name: d.name,
    heldOutText: renderText(document(heldOut, [d], 12)),
  }));
  manifest.mixedText = renderText(document(heldOut, DOMAINS, 24));
  manifest.mixedTokens = documentTokens(vocab, document(createRng(seed ^ 0xd0c), DOMAINS, 24));

  const addModel = (id: string, chainName: string, chain: Chain, presetShape: ModelShape, role: string, contextual = false): void => {
    const file = `${id}.gguf`;
    const shape = options.blockWeights ? { ...presetShape, blockWeights: options.blockWeights } : presetShape;
    writeChainModel(join(options.outDir, file), id, vocab, chain, shape, seed + Object.keys(manifest.models).length, contextual);
    chains[chainName] = chain;
    manifest.models[id] = { file, chain: chainName, role, shape, analytic: !contextual };
  };
  const addAdapter = (id: string, baseId: string, baseChain: string, chainName: string, chain: Chain, domain: string): void => {
    const file = `${id}.gguf`;
    const baseShape = manifest.models[baseId].shape;
    writeLoraAdapter(join(options.outDir, file), id, [chainDeltaLora(chains[baseChain], chain, baseShape.embeddingDim)]);
    chains[chainName] = chain;
    manifest.adapters[id] = { file, base: baseId, chain: chainName, domain };
  };

  if (options.preset === "demo") {
    const states = layout.stateNames.length;
    addModel("flock-demo", "base", base, shapeFor(states, { layers: 4, ffnDim: 512 }), "base model; target of the demo pair; strong base for fusion");
    const draft = perturbChain(base, rng, () => rng.pick([0.05, 0.2, 0.5, 0.8]));
    addModel("flock-demo-draft", "draft", draft, shapeFor(states), "draft for flock-demo");
    manifest.pairs.push(pairOf("flock-demo", "flock-demo-draft", base, draft));
    DOMAINS.forEach((d, i) => addAdapter(`flock-demo-${d.name}`, "flock-demo", "base", d.name, domainChains[i], d.name));
    // Fusion: a weaker small model of the same text (smoothed rows) with weaker experts.
    const weak = smoothChain(base, WEAK_SMOOTHING);
    addModel("flock-weak", "weak", weak, shapeFor(states), "weak (small) base for fusion");
    DOMAINS.forEach((d, i) => addAdapter(`flock-weak-${d.name}`, "flock-weak", "weak", `weak-${d.name}`, smoothChain(domainChains[i], WEAK_SMOOTHING), d.name));
    addModel("flock-contextual", "base", base, shapeFor(states, { layers: 2 }), "random attention and FFN outputs: logits depend on the whole context (KV-cache tests); not analytic", true);

    // Routed experts: a base whose residual carries the recent text's domain, the domain experts
    // as LoRAs over it, and each expert's PHATGOOSE gate (its domain's dimension).
    const domainOfState = layout.stateNames.map((piece) => DOMAINS.findIndex((d) => domainWords(d).some((w) => SPACE + w === piece)));
    const routing = writeDomainContextModel(join(options.outDir, "flock-routing-base.gguf"), "flock-routing-base", vocab, base, domainOfState, DOMAINS.length);
    manifest.models["flock-routing-base"] = {
      file: "flock-routing-base.gguf",
      chain: "base",
      role: "base for routed experts: its residual carries the recent text's domain (not exactly analytic)",
      shape: { ...shapeFor(states), embeddingDim: routing.embeddingDim },
      analytic: false,
    };
    // An embedding model: the same weights, mean-pooled; its vectors carry the text's domains.
    writeDomainContextModel(join(options.outDir, "flock-embed.gguf"), "flock-embed", vocab, base, domainOfState, DOMAINS.length, { meanPooling: true });
    manifest.models["flock-embed"] = {
      file: "flock-embed.gguf",
      chain: "base",
      role: "embedding model (mean pooling over the routing base's hidden states, which carry the recent text's domain)",
      shape: { ...shapeFor(states), embeddingDim: routing.embeddingDim },
      analytic: false,
    };
    DOMAINS.forEach((d, i) => {
      const id = `flock-routing-${d.name}`;
      writeLoraAdapter(join(options.outDir, `${id}.gguf`), id, [chainDeltaLora(base, domainChains[i], routing.embeddingDim)]);
      const gate = new Float32Array(routing.embeddingDim);
      gate[routing.domainDims[i]] = 1;
      writeGateFile(join(options.outDir, `${id}.gates.gguf`), [{ module: "output.weight", gate }]);
      manifest.adapters[id] = { file: `${id}.gguf`, base: "flock-routing-base", chain: d.name, domain: d.name, gates: `${id}.gates.gguf` };
    });
  } else {
    const states = layout.stateNames.length;
    const pair = speculativePair(layout, V, (state) => vocab.idOf(layout.stateNames[state]), rng, { disagreement: 0.25 });
    // spec: one wide float32 layer; its 117 MB of weights, read once per pass, far exceed a CPU's
    // caches, so a pass is bound by memory bandwidth (as a real LLM's is on a GPU) and verifying
    // a few tokens costs little more than one — the regime speculative decoding is for.
    // spec-compute: 12 narrow q8_0 layers (45 MB), bound by arithmetic on a CPU core.
    const targetShape =
      options.preset === "spec-compute"
        ? shapeFor(states, { embeddingDim: 512, layers: 12, ffnDim: 1536, blockWeights: "q8_0" })
        : shapeFor(states, { embeddingDim: 2048, layers: 1, ffnDim: 2048, blockWeights: "f32" });
    addModel("flock-spec-target", "spec-target", pair.target, targetShape, "costly target");
    addModel("flock-spec-draft", "spec-draft", pair.draft, shapeFor(states), "cheap draft");
    manifest.pairs.push(pairOf("flock-spec-target", "flock-spec-draft", pair.target, pair.draft));
  }

  for (const [name, chain] of Object.entries(chains)) {
    manifest.chains[name] = chain.rows.map((row) => row.tokens.map((t, i) => [t, row.probs[i]] as [number, number]));
  }
  writeFileSync(join(options.outDir, "manifest.json"), JSON.stringify(manifest));
  return manifest;
}

function pairOf(target: string, draft: string, targetChain: Chain, draftChain: Chain): Manifest["pairs"][number] {
  return {
    target,
    draft,
    acceptancePerState: acceptancePerState(targetChain, draftChain),
    greedyAgreementPerState: greedyAgreementPerState(targetChain, draftChain),
  };
}
