// npm run bench:grammar [-- --json FILE]
// What a JSON-schema constraint costs per position at real vocabulary sizes (llama.cpp's
// tokenizers without weights: 32,000, 128,256 and 151,936 tokens), through flock's own path
// (engine/grammar.ts, decoding/constraint.ts): llama.cpp's grammar, masked in the addon.
// A valid JSON instance of the schema is tokenized; at each of its positions, logits are drawn
// (Gaussian, σ = 6, the sampler benchmark's "peaked") and either the instance's next token is
// made the most likely ("follows": a model that mostly writes what the grammar allows) or not
// ("strays": the model's favourite is whatever the noise says, almost always forbidden).
// Per position, seeded draws at T = 1: the draw alone, one grammar check, one mask — llama.cpp's
// own pass, and flock's on the first request with the schema and on later ones (masks are cached
// per grammar state) — each timed alone (so the draws' allocations do not land in the grammar's
// time); and how many checks and masks flock's constrained draw makes (it checks the draw's
// ranked tokens and masks only when none is allowed), which give its grammar cost per position
// once the masks are cached; and that cost timed on the first request with the schema.
import { tmpdir } from "node:os";
import { join } from "node:path";
import { getLlama, LlamaLogLevel, type LlamaModel, type Token } from "node-llama-cpp";
import { constrainedDraw, type TokenConstraint } from "../decoding/constraint.js";
import { tokenDraws } from "../decoding/noise.js";
import { createRng } from "../decoding/rng.js";
import { DEFAULT_SAMPLING } from "../decoding/sampler.js";
import { GrammarCompiler, type GrammarState } from "../engine/grammar.js";
import { grammarKernels, installSamplingKernels } from "../engine/native.js";
import { vocabFile } from "../forge/tokenizers.js";
import { BOAT_INSTANCE, BOAT_SCHEMA } from "./json-workload.js";
import { jsonPathArg, printTable, writeReport, type BenchReport } from "./report.js";

const ROUNDS = 5;
const out = jsonPathArg("grammar.json");
const VOCABULARIES = ["llama-spm", "llama-bpe", "qwen2"] as const;
const SCHEMA = BOAT_SCHEMA;
const INSTANCE = BOAT_INSTANCE;

const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
const kernels = grammarKernels(llama);
if (!kernels) throw new Error("the native extension lacks the grammar kernels: npm run build:native");
installSamplingKernels(llama);
const rng = createRng(3);
const gaussian = () => Math.sqrt(-2 * Math.log(1 - rng.next())) * Math.cos(2 * Math.PI * rng.next());
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const params = { ...DEFAULT_SAMPLING, temperature: 1 };
const keyed = tokenDraws({ seed: 1, keyedNoise: true });
const draw = (position: number) => (logits: Float32Array) => keyed.sample(logits, params, position);

/**
 * The instance as a model following the grammar would write it: at each position the longest
 * token the grammar allows whose text the instance continues with (a tokenizer would add a
 * leading space where the grammar allows none).
 */
function writeAsModel(model: LlamaModel, compiler: GrammarCompiler, vocabulary: number): number[] {
  const after = model.tokenize("a");
  const pieces = Array.from({ length: vocabulary }, (_, t) => model.detokenize([t as Token], false, after));
  const state = compiler.compile({ jsonSchema: SCHEMA });
  const tokens: number[] = [];
  for (let at = 0; at < INSTANCE.length; ) {
    let best = -1;
    for (let t = 0; t < vocabulary; t++) {
      const piece = pieces[t];
      if (piece.length > 0 && (best < 0 || piece.length > pieces[best].length) && INSTANCE.startsWith(piece, at) && state.allows(t)) best = t;
    }
    if (best < 0) throw new Error(`no token the grammar allows continues the instance at ${at}`);
    tokens.push(best);
    state.accept(best);
    at += pieces[best].length;
  }
  return tokens;
}

/** A grammar state that counts its checks and masks, and the time they take. */
function counting(state: GrammarState): TokenConstraint & { calls: { checks: number; masks: number; ms: number } } {
  const calls = { checks: 0, masks: 0, ms: 0 };
  const timed = <T>(call: () => T): T => {
    const started = performance.now();
    const result = call();
    calls.ms += performance.now() - started;
    return result;
  };
  return {
    calls,
    allows: (token) => (calls.checks++, timed(() => state.allows(token))),
    forcedToken: (computeMask) => state.forcedToken(computeMask),
    mask: (logits) => (calls.masks++, timed(() => state.mask(logits))),
    accept: (token) => state.accept(token),
    clone: () => counting(state.clone()),
    release: () => state.release(),
  };
}

const rows: BenchReport["rows"] = [];
for (const name of VOCABULARIES) {
  const model = await llama.loadModel({ modelPath: vocabFile(name, join(tmpdir(), "flock-vocab")), vocabOnly: true });
  const compiler = new GrammarCompiler(model, kernels);
  const vocabulary = model.fileInfo.metadata.tokenizer?.ggml?.tokens?.length ?? 0;
  const tokens = writeAsModel(model, compiler, vocabulary);
  for (const shape of ["follows", "strays"] as const) {
    const positions = tokens.map((next) => {
      const logits = Float32Array.from({ length: vocabulary }, () => 6 * gaussian());
      if (shape === "follows") {
        let max = -Infinity;
        for (const l of logits) max = Math.max(max, l);
        logits[next] = max + 4;
      }
      return logits;
    });
    // How many positions the grammar forces (allows one token).
    let forced = 0;
    const walk = compiler.compile({ jsonSchema: SCHEMA });
    for (const next of tokens) {
      const masked = new Float32Array(vocabulary);
      walk.mask(masked);
      if (masked.reduce((n, l) => (l > -Infinity ? n + 1 : n), 0) === 1) forced++;
      walk.accept(next);
    }
    // flock's constrained draws, counting the grammar calls they make.
    const counted = counting(compiler.compile({ jsonSchema: SCHEMA }));
    positions.forEach((logits, i) => {
      constrainedDraw(new Float32Array(logits), params, counted, keyed, i);
      counted.accept(tokens[i]);
    });
    // Per round, each alone so the draws' allocations do not land in the grammar's time: the
    // draws; one check per position (a fresh grammar: llama.cpp's check of one token); a mask
    // per position on a fresh grammar (the first request with a schema: each state's first
    // visit is a grammar pass over the vocabulary, later visits are found in the cache), then
    // again from the same start (every later request with that schema: all found).
    const drawMs: number[] = [];
    const checkMs: number[] = [];
    const llamaMaskMs: number[] = [];
    const firstMaskMs: number[] = [];
    const cachedMaskMs: number[] = [];
    const firstGrammarMs: number[] = [];
    let distinctStates = 0;
    const maskWalk = (start: GrammarState) => {
      const masks = start.clone();
      const scratch = new Float32Array(vocabulary);
      let spent = 0;
      positions.forEach((logits, i) => {
        scratch.set(logits);
        const started = performance.now();
        masks.mask(scratch);
        spent += performance.now() - started;
        masks.accept(tokens[i]);
      });
      masks.release();
      return spent / tokens.length;
    };
    for (let round = 0; round < ROUNDS; round++) {
      let started = performance.now();
      positions.forEach((logits, i) => draw(i)(logits));
      drawMs.push((performance.now() - started) / tokens.length);
      const checks = compiler.compile({ jsonSchema: SCHEMA });
      let spent = 0;
      for (const token of tokens) {
        started = performance.now();
        checks.allows(token);
        spent += performance.now() - started;
        checks.accept(token);
      }
      checkMs.push(spent / tokens.length);
      llamaMaskMs.push(maskWalk(compiler.compile({ jsonSchema: SCHEMA }, { maskCache: false })));
      const start = compiler.compile({ jsonSchema: SCHEMA });
      const missesBefore = compiler.maskCacheStats().misses;
      firstMaskMs.push(maskWalk(start));
      distinctStates = compiler.maskCacheStats().misses - missesBefore;
      cachedMaskMs.push(maskWalk(start));
      // flock's constrained draws on the first request with the schema: their checks and masks,
      // each mask computed at its state's first visit.
      const first = counting(compiler.compile({ jsonSchema: SCHEMA }));
      positions.forEach((logits, i) => {
        constrainedDraw(new Float32Array(logits), params, first, keyed, i);
        first.accept(tokens[i]);
      });
      firstGrammarMs.push(first.calls.ms / tokens.length);
    }
    const [check, llamaMask, firstMask, cachedMask] = [median(checkMs), median(llamaMaskMs), median(firstMaskMs), median(cachedMaskMs)];
    rows.push({
      vocabulary,
      tokenizer: name,
      logits: shape,
      positions: tokens.length,
      states: distinctStates,
      forced: forced / tokens.length,
      checks: counted.calls.checks / tokens.length,
      masked: counted.calls.masks / tokens.length,
      drawMs: median(drawMs),
      checkMs: check,
      llamaMaskMs: llamaMask,
      firstMaskMs: firstMask,
      cachedMaskMs: cachedMask,
      grammarMs: (counted.calls.checks * check + counted.calls.masks * cachedMask) / tokens.length,
      firstGrammarMs: median(firstGrammarMs),
    });
    console.error(`${name} ${shape}: draw ${median(drawMs).toFixed(3)} ms, check ${check.toFixed(4)} ms, mask ${llamaMask.toFixed(3)} ms llama.cpp, ${firstMask.toFixed(3)} ms first, ${cachedMask.toFixed(4)} ms cached (${distinctStates} states); ${counted.calls.checks} checks, ${counted.calls.masks} masks over ${tokens.length} positions`);
  }
  await model.dispose();
}

printTable(rows);
writeReport(out, {
  benchmark: "grammar",
  command: "npm run bench:grammar",
  settings: {
    rounds: ROUNDS,
    statistic: "median over rounds of ms per position",
    columns: {
      forced: "share of positions where the grammar allows one token",
      checks: "grammar checks per position in flock's constrained draw (it checks the draw's ranked tokens first)",
      masked: "share of positions where none of them was allowed and the vocabulary was masked",
      drawMs: "a keyed draw at T = 1 from the logits, unconstrained",
      checkMs: "one grammar check of a token",
      states: "distinct grammar states the instance passes through (masks computed on the first walk)",
      llamaMaskMs: "a mask per position by llama.cpp's own pass (llama_sampler_apply over every token, decoding each token's text each time): uncached",
      firstMaskMs: "a mask per position, first request with the schema: flock's walk over the trie of the pre-decoded vocabulary at each state's first visit, a cached mask after",
      cachedMaskMs: "a mask per position, any later request with the schema: every state's mask found in the model's cache",
      grammarMs: "flock's grammar cost per position once the schema's masks are cached: checks × checkMs + masked × cachedMaskMs",
      firstGrammarMs: "flock's grammar cost per position on the first request with the schema: the constrained draws' checks and masks, timed, each mask computed at its state's first visit",
    },
    schema: SCHEMA,
    instance: INSTANCE,
  },
  rows,
});
