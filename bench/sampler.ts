// npm run bench:sampler [-- --json FILE]
// flock's per-position sampling work in TypeScript at real vocabulary sizes (32,000, 128,256,
// 151,936): logit bias and penalties, the sampling distribution (temperature, top-k, top-p,
// min-p) and the draw. Variants side by side, interleaved. Unseeded draws (a sequential RNG):
// the distribution truncated after a sort of the whole vocabulary (`full sort`, the reference
// in test/helpers) against flock's sampler, which sorts only the head of the distribution.
// Seeded draws (keyed noise): Gumbel-max over every token (two logarithms each, the reference)
// against flock's exponential race, which takes logarithms only for tokens that can still win.
// Each flock variant runs three times: all in TypeScript, with the softmax in the native
// extension (flockSoftmax, what speculative decoding's distributions use), and as one native
// call (flockSampleToken, what a server with the extension samples with). Logits are Gaussian with a
// scale chosen per row: `peaked` (σ = 6: about 1.4 nats of entropy at 151,936, as a real model
// usually is) and `flat` (σ = 2: about 10 nats, a nucleus of tens of thousands of tokens, the
// worst case for flock's cut).
import { getLlama, LlamaLogLevel } from "node-llama-cpp";
import { keyedSample, PositionNoise, positionKey } from "../decoding/noise.js";
import { samplingKernels, useSamplingKernels, type SamplingKernels } from "../engine/native.js";
import { TokenHistory } from "../decoding/history.js";
import { adjustLogits, drawFrom, samplingDistribution, sampleToken, DEFAULT_SAMPLING, type SamplingParams } from "../decoding/sampler.js";
import { createRng } from "../decoding/rng.js";
import { fullSortDistribution, gumbelMaxSample } from "../test/helpers/reference-sampler.js";
import { jsonPathArg, printTable, writeReport, type BenchReport } from "./report.js";

const POSITIONS = 40;
const ROUNDS = 5;
const out = jsonPathArg("sampler.json");
const rng = createRng(7);
const gaussian = () => Math.sqrt(-2 * Math.log(1 - rng.next())) * Math.cos(2 * Math.PI * rng.next());

const settings: Array<[string, Partial<SamplingParams>]> = [
  ["T = 1", { temperature: 1 }],
  ["T = 1, top_p 0.95", { temperature: 1, topP: 0.95 }],
  ["llama-server defaults (T 0.8, top_k 40, top_p 0.95, min_p 0.05)", { temperature: 0.8, topK: 40, topP: 0.95, minP: 0.05 }],
];
const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
const native = samplingKernels(llama);
if (!native.softmax || !native.sampleToken) console.warn("the native extension lacks flock's sampling kernels (npm run build:native): native rows are skipped");
/** A flock variant with the given kernels installed: none (TypeScript), the softmax, or the whole draw. */
const withKernels =
  (installed: SamplingKernels, run: (adjusted: Float32Array, params: SamplingParams, position: number) => number) =>
  (adjusted: Float32Array, params: SamplingParams, position: number) => {
    useSamplingKernels(installed);
    return run(adjusted, params, position);
  };
const softmaxOnly = { softmax: native.softmax };
const unseeded = (adjusted: Float32Array, params: SamplingParams) => sampleToken(adjusted, params, rng);
const seeded = (adjusted: Float32Array, params: SamplingParams, position: number) =>
  keyedSample(adjusted, params, new PositionNoise(positionKey({ seed: 1, choice: 0 }, position)));

type Variant =
  | "full sort"
  | "flock"
  | "flock, native softmax"
  | "flock, native draw"
  | "Gumbel-max (seeded)"
  | "flock (seeded)"
  | "flock, native softmax (seeded)"
  | "flock, native draw (seeded)";
/** One position's work: adjusted logits in, a token out. */
const variants: Record<Variant, (adjusted: Float32Array, params: SamplingParams, position: number) => number> = {
  "full sort": (adjusted, params) => drawFrom(fullSortDistribution(adjusted, params), rng),
  flock: withKernels({}, unseeded),
  "flock, native softmax": withKernels(softmaxOnly, unseeded),
  "flock, native draw": withKernels(native, unseeded),
  "Gumbel-max (seeded)": (adjusted, params, position) => gumbelMaxSample(adjusted, params, positionKey({ seed: 1, choice: 0 }, position)),
  "flock (seeded)": withKernels({}, seeded),
  "flock, native softmax (seeded)": withKernels(softmaxOnly, seeded),
  "flock, native draw (seeded)": withKernels(native, seeded),
};
const names = (Object.keys(variants) as Variant[]).filter((name) => (native.softmax && native.sampleToken) || !name.includes("native"));

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const rows: BenchReport["rows"] = [];
for (const vocabulary of [32_000, 128_256, 151_936]) {
  for (const [shape, sigma] of [["peaked", 6], ["flat", 2]] as const) {
    const positions = Array.from({ length: POSITIONS }, () => Float32Array.from({ length: vocabulary }, () => sigma * gaussian()));
    for (const [setting, overrides] of settings) {
      const params: SamplingParams = { ...DEFAULT_SAMPLING, ...overrides, logitBias: new Map([[11, 2], [13, -100]]), presencePenalty: 0.5 };
      const counts = TokenHistory.of([], [5, 17, 17, 17]);
      const times = Object.fromEntries((Object.keys(variants) as Variant[]).map((name) => [name, [] as number[]])) as Record<Variant, number[]>;
      for (let round = 0; round < ROUNDS; round++) {
        // Rotate which variant goes first so that drift falls on all of them.
        for (const name of names.map((_, i) => names[(i + round) % names.length])) {
          const started = performance.now();
          positions.forEach((logits, position) => variants[name](adjustLogits(logits, params, counts), params, position));
          times[name].push((performance.now() - started) / POSITIONS);
        }
      }
      const kept = positions.reduce((n, logits) => n + samplingDistribution(adjustLogits(logits, params, counts), params).filter((p) => p > 0).length, 0);
      const ms = (name: Variant) => (times[name].length > 0 ? median(times[name]) : null);
      const ratio = (a: number | null, b: number | null) => (a !== null && b !== null ? a / b : null);
      const [full, flock, nativeSoftmax, nativeDraw, gumbel, race, nativeSoftmaxRace, nativeDrawRace] = (Object.keys(variants) as Variant[]).map(ms);
      rows.push({
        vocabulary,
        logits: shape,
        sampling: setting,
        tokensKept: Math.round(kept / POSITIONS),
        fullSortMs: full,
        flockMs: flock,
        nativeSoftmaxMs: nativeSoftmax,
        nativeDrawMs: nativeDraw,
        speedup: ratio(full, nativeDraw ?? flock),
        gumbelMaxSeededMs: gumbel,
        flockSeededMs: race,
        nativeSoftmaxSeededMs: nativeSoftmaxRace,
        nativeDrawSeededMs: nativeDrawRace,
        seededSpeedup: ratio(gumbel, nativeDrawRace ?? race),
      });
      console.error(`${vocabulary} ${shape} ${setting}: ${full} → ${flock} (native ${nativeDraw}) ms; seeded ${gumbel} → ${race} (native ${nativeDrawRace}) ms`);
    }
  }
}

printTable(rows);
writeReport(out, {
  benchmark: "sampler",
  command: "npm run bench:sampler",
  settings: { positions: POSITIONS, rounds: ROUNDS, statistic: "median over rounds of ms per position", includes: "adjustLogits, the distribution and the draw (unseeded: sampleToken; seeded: keyedSample)" },
  rows,
});
