// Builds the pipeline a configured model entry asks for.
import { join } from "node:path";
import { DraftConfidencePredictor, OnlineLogisticPredictor } from "../decoding/speculative/predictors.js";
import type { Engine } from "../models/engine.js";
import { ModelEntry } from "../models/registry.js";
import { candidateCap } from "../decoding/speculative/settings.js";
import type { EngineSequence } from "../models/sequence.js";
import { type Pipeline, type PipelineRegistry, plainPipeline, type SpeculativePipeline, speculativePipeline } from "./pipeline.js";

/** Where a speculative model id keeps its online acceptance predictor. */
export function predictorFile(stateDir: string, modelId: string): string {
  return join(stateDir, "acceptance", `${modelId.replace(/[^\w.-]+/g, "_")}.json`);
}

export async function loadPipeline(engine: Engine, entry: ModelEntry, stateDir: string): Promise<Pipeline> {
  const target = await engine.load(entry);
  const spec = entry.speculative;
  if (!spec) return plainPipeline(target);
  // The draft gets its own context with as many sequences as the target, so a request that
  // holds a target sequence always finds a draft sequence.
  const draft = await engine.load(
    ModelEntry.parse({ id: `${entry.id}:draft`, path: spec.draft, contextSize: entry.contextSize, parallel: entry.parallel, threads: spec.threads ?? entry.threads, gpuLayers: entry.gpuLayers }),
  );
  const predictor = spec.predictor === "online" ? new OnlineLogisticPredictor({ file: predictorFile(stateDir, entry.id) }) : new DraftConfidencePredictor();
  const pipeline = speculativePipeline(target, draft, spec, predictor);
  if (spec.threshold === "auto") await calibrateCosts(pipeline);
  return pipeline;
}

export function savePredictors(registry: PipelineRegistry): void {
  for (const { pipeline } of registry.list()) {
    if (pipeline.kind === "speculative" && pipeline.predictor instanceof OnlineLogisticPredictor) pipeline.predictor.save();
  }
}

/**
 * Times draft steps and target passes of every candidate length before serving, so the
 * cost-aware SpecDec++ rule has its cost table from the first request.
 */
export async function calibrateCosts(pipeline: SpeculativePipeline): Promise<void> {
  const bos = pipeline.model.weights.tokens.bos ?? 0;
  const filler = (n: number) => Array.from({ length: n }, (_, i) => (bos + 1 + i) % Math.max(2, pipeline.model.vocabularySize));
  const target = await pipeline.model.acquire([]);
  const draft = await pipeline.draft.acquire([]);
  try {
    await target.syncTo([bos]);
    await draft.syncTo([bos]);
    const timed = async (seq: EngineSequence, tokens: number[]) => {
      const started = performance.now();
      await seq.evaluate(tokens, tokens.map((_, i) => i));
      const ms = performance.now() - started;
      await seq.truncate(1);
      return ms;
    };
    await pipeline.costs.calibrate(
      () => timed(draft, filler(1)),
      (n) => timed(target, filler(n)),
      candidateCap(pipeline.settings) + 1,
    );
  } finally {
    target.release();
    draft.release();
  }
}
