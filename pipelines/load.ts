// Builds the pipeline a configured model entry asks for.
import { join } from "node:path";
import { TokenEmbeddings } from "../decoding/speculative/embeddings.js";
import { AcceptanceHead, HeadPredictor } from "../decoding/speculative/head.js";
import { type AcceptancePredictor, DraftConfidencePredictor, OnlineLogisticPredictor } from "../decoding/speculative/predictors.js";
import { baseModuleShapes } from "../engine/adapter-check.js";
import type { Engine } from "../engine/engine.js";
import { FlockError } from "../engine/errors.js";
import type { LoadedModel } from "../engine/model.js";
import type { FusionEntry } from "../decoding/fusion/config.js";
import type { SpeculativeEntry } from "../decoding/speculative/config.js";
import type { ExpertsEntry } from "../experts/config.js";
import { ModelEntry } from "./model-entry.js";
import { candidateCap } from "../decoding/speculative/settings.js";
import type { Sequence } from "../engine/sequence.js";
import { ExpertLibrary } from "../experts/library.js";
import { fusionPipeline, type Pipeline, type PipelineRegistry, plainPipeline, routedPipeline, speculativePipeline } from "./pipeline.js";
import { PREDICTION_PER_ROUND } from "../decoding/speculative/prediction.js";
import type { RoundCosts } from "../decoding/speculative/costs.js";
import { VariantCache } from "../experts/routed.js";

/** Routed variant contexts are named `<model id>:variant-<n>`. */
const VARIANT_SEPARATOR = ":variant-";

/** The configured model a context belongs to (a routed variant belongs to its base entry). */
export function contextOwner(contextId: string): string {
  const at = contextId.indexOf(VARIANT_SEPARATOR);
  return at < 0 ? contextId : contextId.slice(0, at);
}

/** Where loading reports what it left out (the server's logger). */
export interface LoadLog {
  error(fields: object, message: string): void;
}

/** Where a speculative model id keeps what its acceptance predictor learns in serving (online, or around a head). */
export function predictorFile(stateDir: string, modelId: string, predictor: "online" | "head" = "online"): string {
  return join(stateDir, "acceptance", `${modelId.replace(/[^\w.-]+/g, "_")}${predictor === "head" ? ".head" : ""}.json`);
}

/** Every pipeline a configured entry serves: its own id, plus the routed ids of its expert library. */
export async function loadPipelines(engine: Engine, entry: ModelEntry, stateDir: string, log?: LoadLog): Promise<Pipeline[]> {
  const main = await loadPipeline(engine, entry, stateDir);
  if (!entry.experts) return [main];
  return [main, ...(await loadRouted(engine, entry, entry.experts, main.model, log))];
}

export async function loadPipeline(engine: Engine, entry: ModelEntry, stateDir: string): Promise<Pipeline> {
  if (entry.speculative && entry.fusion) throw new FlockError("invalid_request", `model ${entry.id}: speculative and fusion cannot be combined in one entry`);
  const target = await engine.load(entry);
  if (entry.fusion) return loadFusion(engine, entry, entry.fusion, target);
  const spec = entry.speculative;
  if (!spec) {
    const plain = plainPipeline(target, entry.lookup);
    // Prompt lookup on every request: price its rounds from the first one.
    if (entry.lookup?.enabled) await calibrateCosts(plain.model, null, plain.costs, Math.max(entry.lookup.maxCandidates, PREDICTION_PER_ROUND) + 1);
    return plain;
  }
  // The draft gets its own context with as many sequences as the target, so a request that
  // holds a target sequence always finds a draft sequence.
  const draft = await engine.load(
    ModelEntry.parse({ id: `${entry.id}:draft`, path: spec.draft, contextSize: entry.contextSize, parallel: entry.parallel, threads: spec.threads ?? entry.threads, gpuLayers: entry.gpuLayers }),
    { hiddenStates: spec.predictor === "head" },
  );
  const predictor = await buildPredictor(entry, spec, draft, stateDir);
  const pipeline = speculativePipeline(target, draft, spec, predictor, entry.lookup);
  if (spec.threshold === "auto" || entry.lookup?.enabled) await calibrateCosts(target, draft, pipeline.costs, Math.max(candidateCap(spec), entry.lookup?.enabled ? entry.lookup.maxCandidates : 0) + 1);
  return pipeline;
}

async function buildPredictor(entry: ModelEntry, spec: SpeculativeEntry, draft: LoadedModel, stateDir: string): Promise<AcceptancePredictor> {
  switch (spec.predictor) {
    case "online":
      return new OnlineLogisticPredictor({ file: predictorFile(stateDir, entry.id) });
    case "draft-confidence":
      return new DraftConfidencePredictor();
    case "head": {
      if (!spec.head) throw new FlockError("invalid_request", `model ${entry.id}: predictor "head" needs speculative.head, a file made by npm run train:acceptance`);
      let head: AcceptanceHead;
      try {
        head = AcceptanceHead.load(spec.head);
      } catch (err) {
        throw new FlockError("invalid_request", `model ${entry.id}: cannot load the acceptance head ${spec.head}: ${(err as Error).message}`);
      }
      // The head reads the draft's hidden state before the candidate, then the one at the
      // candidate or the candidate's token embedding.
      const embeddings = head.candidate === "embedding" ? await TokenEmbeddings.load(spec.draft) : null;
      const inputs = draft.embeddingSize + (embeddings?.width ?? draft.embeddingSize);
      if (head.d !== inputs) {
        const view = embeddings ? "hidden state and token embedding" : "two hidden states";
        throw new FlockError("invalid_request", `model ${entry.id}: the head ${spec.head} reads ${head.d} inputs, the draft's ${view} make ${inputs}`);
      }
      return new HeadPredictor(head, embeddings, predictorFile(stateDir, entry.id, "head"));
    }
  }
}

export function savePredictors(registry: PipelineRegistry): void {
  for (const { pipeline } of registry.list()) {
    if (pipeline.kind === "speculative") pipeline.predictor.save?.();
  }
}

/**
 * Times draft steps (where there is a draft) and target passes of every candidate length before
 * serving, so the cost-aware SpecDec++ rule, and the pricing of prompt lookup's rounds, have
 * their cost table from the first request.
 */
export async function calibrateCosts(model: LoadedModel, draftModel: LoadedModel | null, costs: RoundCosts, maxTokens: number): Promise<void> {
  const bos = model.weights.tokens.bos ?? 0;
  const filler = (n: number) => Array.from({ length: n }, (_, i) => (bos + 1 + i) % Math.max(2, model.vocabularySize));
  const target = await model.acquire([]);
  const draft = await draftModel?.acquire([]);
  try {
    await target.syncTo([bos]);
    await draft?.syncTo([bos]);
    const timed = async (seq: Sequence, tokens: number[]) => {
      const started = performance.now();
      await seq.evaluate(tokens, tokens.map((_, i) => i));
      const ms = performance.now() - started;
      await seq.truncate(1);
      return ms;
    };
    await costs.calibrate(draft ? () => timed(draft, filler(1)) : null, (n) => timed(target, filler(n)), maxTokens);
  } finally {
    target.release();
    draft?.release();
  }
}

/** The small base and each expert get their own context (an expert may be a LoRA over the base). */
async function loadFusion(engine: Engine, entry: ModelEntry, fusion: FusionEntry, strong: LoadedModel): Promise<Pipeline> {
  const small = (id: string, path: string, lora: Array<{ path: string; scale: number }>) =>
    engine.load(ModelEntry.parse({ id, path, lora, contextSize: entry.contextSize, parallel: entry.parallel, threads: fusion.threads ?? entry.threads, gpuLayers: entry.gpuLayers }));
  const base = await small(`${entry.id}:base`, fusion.base, []);
  const experts = [];
  for (const e of fusion.experts) {
    const model = await small(`${entry.id}:${e.name}`, e.path ?? fusion.base, e.lora ? [{ path: e.lora, scale: e.scale }] : []);
    experts.push({ name: e.name, model });
  }
  const names = new Set(fusion.experts.map((e) => e.name));
  if (names.size !== fusion.experts.length) throw new FlockError("invalid_request", `model ${entry.id}: fusion expert names must be unique`);
  return fusionPipeline(strong, base, experts, {
    mode: fusion.mode,
    alpha: fusion.alpha,
    grid: fusion.grid,
    supportMargin: fusion.supportMargin,
    kernel: strong.fusionGridKernel,
  });
}

/**
 * The expert library over the entry's model, checked expert by expert, and one routed pipeline
 * per method. Contexts are made on demand, one per routing configuration a request asks for.
 */
async function loadRouted(engine: Engine, entry: ModelEntry, experts: ExpertsEntry, base: LoadedModel, log?: LoadLog): Promise<Pipeline[]> {
  const library = new ExpertLibrary(entry.id, await baseModuleShapes(entry.path));
  for (const spec of experts.library) {
    try {
      await library.add(spec);
    } catch (err) {
      // One bad expert must not take the model (or the server) down: it is left out, logged,
      // and listed as failed by GET /admin/models/<id>/experts.
      if (!(err instanceof FlockError)) throw err;
      library.failed.push({ name: spec.name, error: err.message });
      log?.error({ model: entry.id, expert: spec.name, error: err.message }, "expert left out");
    }
  }
  let made = 0;
  const variants = new VariantCache(
    (spec) =>
      engine.load(
        ModelEntry.parse({
          id: `${entry.id}${VARIANT_SEPARATOR}${++made}`,
          path: entry.path,
          lora: spec.adapters,
          contextSize: entry.contextSize,
          parallel: entry.parallel,
          threads: entry.threads,
          gpuLayers: entry.gpuLayers,
          batchSize: entry.batchSize,
          generationLoop: entry.generationLoop,
        }),
        { hiddenStates: spec.hiddenStates, routing: spec.routing },
      ),
    experts.maxContexts,
  );
  const settings = { topK: experts.topK, temperature: experts.temperature };
  return experts.methods.map((method) => routedPipeline(base, { method, library, settings, variants }));
}
