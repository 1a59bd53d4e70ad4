// The fusion decoder: a strong model, a small base and small experts evaluate every token
// together; each step solves α (solver.ts), samples from the fused distribution with the usual
// sampler settings, and feeds the token to all of them.
import { TokenHistory } from "../history.js";
import { tokenDraws } from "../noise.js";
import type { Sequence } from "../../engine/sequence.js";
import { OutputAssembler } from "../output.js";
import { describeLogprobs, type LogprobModel } from "../plain.js";
import { constrainedDraw } from "../constraint.js";
import { adjustLogits } from "../sampler.js";
import type { DecodeStep, DecodingModel, GenerationRequest } from "../types.js";
import { fuseLogits, solveFusion } from "./solver.js";
import type { FusionSettings } from "./config.js";

export interface FusionExpert {
  name: string;
  model: DecodingModel;
}

/** Pipeline-wide counters, read by responses' summaries, /metrics and benchmarks. */
export class FusionStats {
  steps = 0;
  alphaSum = 0;
  /** Wall time spent evaluating the models (all of them, concurrently) and choosing α. */
  evaluateMs = 0;
  solveMs = 0;
  /** Steps in which each expert was active ("none": α = 0). */
  readonly chosen = new Map<string, number>();

  record(expert: string | null, alpha: number): void {
    this.steps++;
    this.alphaSum += alpha;
    const key = expert ?? "none";
    this.chosen.set(key, (this.chosen.get(key) ?? 0) + 1);
  }
}

export interface FusionSetup {
  strong: LogprobModel;
  base: DecodingModel;
  experts: readonly FusionExpert[];
  settings: FusionSettings;
  stats: FusionStats;
}

/** The experts a request selected, in configuration order. */
export function selectExperts(experts: readonly FusionExpert[], names: readonly string[] | undefined): FusionExpert[] {
  return names === undefined ? [...experts] : experts.filter((e) => names.includes(e.name));
}

/** One step's choice: which experts shift the strong logits, and by how much. */
export function chooseFusion(
  settings: FusionSettings,
  strong: Float32Array,
  base: Float32Array,
  experts: readonly Float32Array[],
): { active: Array<{ index: number; alpha: number }>; expert: number; alpha: number } {
  if (settings.mode === "static") {
    return { active: experts.map((_, index) => ({ index, alpha: settings.alpha })), expert: experts.length === 1 ? 0 : -1, alpha: settings.alpha };
  }
  const choice = solveFusion(strong, base, experts, { grid: settings.grid, supportMargin: settings.supportMargin ?? undefined, kernel: settings.kernel });
  return { active: choice.expert >= 0 ? [{ index: choice.expert, alpha: choice.alpha }] : [], expert: choice.expert, alpha: choice.alpha };
}

export async function* fusionDecode(setup: FusionSetup, request: GenerationRequest): AsyncGenerator<DecodeStep> {
  const overrides = request.fusion ?? {};
  const settings: FusionSettings = { ...setup.settings, ...(overrides.mode ? { mode: overrides.mode } : {}), ...(overrides.alpha !== undefined ? { alpha: overrides.alpha } : {}) };
  const experts = selectExperts(setup.experts, overrides.experts);
  const models = [setup.strong, setup.base, ...experts.map((e) => e.model)];
  // Always acquired in the same order, so concurrent requests cannot deadlock across pools.
  const sequences: Sequence[] = [];
  const constraint = request.constraint?.clone();
  try {
    for (const model of models) sequences.push(await model.acquire(request.prompt, request.signal));
    const draws = tokenDraws(request);
    const output = new OutputAssembler(setup.strong, request.prompt, request.stopStrings);
    const stopTokens = new Set(request.stopTokens);
    const history = TokenHistory.after(request.prompt);
    let logits = await Promise.all(sequences.map((seq) => seq.prefill(request.prompt)));
    const stats = setup.stats;
    const contextSize = Math.min(...sequences.map((s) => s.contextSize));

    let fusedBuffer: Float32Array | undefined;
    let adjustBuffer: Float32Array | undefined;
    for (let generated = 1; ; generated++) {
      if (request.signal?.aborted) return;
      const [strong, base, ...expertLogits] = logits;
      const solveStarted = performance.now();
      const choice = chooseFusion(settings, strong, base, expertLogits);
      stats.solveMs += performance.now() - solveStarted;
      // Both used up within the iteration: one buffer each serves every position.
      const fused = (fusedBuffer = fuseLogits(strong, base, choice.active.map(({ index, alpha }) => ({ logits: expertLogits[index], alpha })), fusedBuffer));
      const position = request.prompt.length + generated - 1;
      const adjusted = (adjustBuffer = adjustLogits(fused, request.sampling, history, adjustBuffer));
      // The grammar masks the fused distribution; α is chosen on the unconstrained ones.
      const token = constraint ? constrainedDraw(adjusted, request.sampling, constraint, draws, position) : draws.sample(adjusted, request.sampling, position);
      history.push(token);
      const expertName =
        choice.expert >= 0 ? experts[choice.expert].name : choice.active.length > 0 ? choice.active.map(({ index }) => experts[index].name).join("+") : null;
      stats.record(expertName, choice.alpha);
      const fusion = { expert: expertName, alpha: choice.alpha };
      const endOfGeneration = setup.strong.isEndOfGeneration(token) || stopTokens.has(token);
      if (!endOfGeneration) constraint?.accept(token);
      const logprob = endOfGeneration || request.topLogprobs === null ? undefined : describeLogprobs(setup.strong, fused, token, request.topLogprobs);
      const limitReached = generated >= request.maxTokens || sequences[0].length + 1 > contextSize;
      const { text, logprobs, finishReason } = output.emit(token, logprob, { endOfGeneration, limitReached });
      yield { tokens: [token], text, logprobs, ...(finishReason && { finishReason }), fusion: [fusion] };
      if (finishReason) return;
      // Every model sees the token; their evaluations run concurrently.
      const evaluateStarted = performance.now();
      // This position's logits are read: the next evaluations may write into them.
      sequences.forEach((seq, i) => seq.recycle?.([logits[i]]));
      logits = await Promise.all(sequences.map(async (seq) => (await seq.evaluate([token], [0]))[0]));
      stats.evaluateMs += performance.now() - evaluateStarted;
    }
  } finally {
    constraint?.release();
    for (const seq of sequences) seq.release();
  }
}
