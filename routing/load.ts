// Builds the pipeline a configured model entry asks for.
import { join } from "node:path";
import { DraftConfidencePredictor, OnlineLogisticPredictor } from "../decoding/speculative/predictors.js";
import type { Engine } from "../models/engine.js";
import { ModelEntry } from "../models/registry.js";
import { type Pipeline, type PipelineRegistry, plainPipeline, speculativePipeline } from "./pipeline.js";

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
  return speculativePipeline(target, draft, spec, predictor);
}

export function savePredictors(registry: PipelineRegistry): void {
  for (const { pipeline } of registry.list()) {
    if (pipeline.kind === "speculative" && pipeline.predictor instanceof OnlineLogisticPredictor) pipeline.predictor.save();
  }
}
