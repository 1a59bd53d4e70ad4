// Request → pipeline resolution: which model(s) and which decoder serve a model id.
import type { EmbeddingModel } from "../engine/embedding.js";
import { plainDecode } from "../decoding/plain.js";
import { speculativeDecode } from "../decoding/speculative/decoder.js";
import type { OnlineLogisticPredictor, AcceptancePredictor } from "../decoding/speculative/predictors.js";
import { acceptanceCalibrations } from "../decoding/speculative/calibration.js";
import { buildPolicy, candidateCap, samplingRegime, verificationFor } from "../decoding/speculative/settings.js";
import type { SpeculativeSettings } from "../decoding/speculative/config.js";
import { FusionStats, fusionDecode } from "../decoding/fusion/decoder.js";
import type { FusionSettings } from "../decoding/fusion/config.js";
import { RoundCosts } from "../decoding/speculative/costs.js";
import { FixedLengthPolicy } from "../decoding/speculative/policies.js";
import { LOOKUP_DEFAULTS, type LookupSettings } from "../decoding/speculative/lookup.js";
import { TextAcceptance } from "../decoding/speculative/text-proposals.js";
import { SpeculativeStats } from "../decoding/speculative/stats.js";
import type { DecodeStep, GenerationRequest } from "../decoding/types.js";
import { FlockError } from "../engine/errors.js";
import type { LoadedModel } from "../engine/model.js";
import type { RoutingMethod, RoutingOverrides, RoutingSettings } from "../experts/config.js";
import type { ExpertLibrary } from "../experts/library.js";
import { routedDecode, type RoutedSetup, type VariantCache } from "../experts/routed.js";

/** What a pipeline generates from: what every decoder takes, plus the routing a routed pipeline takes. */
export interface PipelineRequest extends GenerationRequest {
  /** Per-request routing settings (ignored by pipelines without an expert library). */
  routing?: RoutingOverrides;
}

interface PipelineBase {
  /** The model id clients use. */
  readonly id: string;
  /** The model whose tokenizer, chat template and context window apply. */
  readonly model: LoadedModel;
  generate(request: PipelineRequest): AsyncGenerator<DecodeStep>;
}

export interface PlainPipeline extends PipelineBase {
  readonly kind: "plain";
  /** Measured target passes (they price a prediction's and prompt lookup's candidates). */
  readonly costs: RoundCosts;
  /** Rounds that a prediction or prompt lookup proposed in (vLLM's spec_decode_* schema). */
  readonly stats: SpeculativeStats;
}

export interface SpeculativePipeline extends PipelineBase {
  readonly kind: "speculative";
  readonly draft: LoadedModel;
  readonly settings: SpeculativeSettings;
  readonly predictor: AcceptancePredictor;
  /** Pipeline-wide counters (vLLM's spec_decode_* schema). */
  readonly stats: SpeculativeStats;
  /** Measured draft and target costs (they set SpecDec++'s threshold in auto mode). */
  readonly costs: RoundCosts;
}

export interface FusionPipeline extends PipelineBase {
  readonly kind: "fusion";
  readonly base: LoadedModel;
  readonly experts: ReadonlyArray<{ name: string; model: LoadedModel }>;
  readonly settings: FusionSettings;
  /** Pipeline-wide counters: steps, α, steps per active expert. */
  readonly stats: FusionStats;
}

export interface RoutedPipeline extends PipelineBase {
  readonly kind: "routed";
  /** How routed modules score experts. */
  readonly method: RoutingMethod;
  /** The base model's experts (shared with the base's other routed pipeline). */
  readonly library: ExpertLibrary;
  readonly settings: RoutingSettings;
  /** The contexts requests run on, one per routing configuration (shared with the library). */
  readonly variants: VariantCache;
}

export type Pipeline = PlainPipeline | SpeculativePipeline | FusionPipeline | RoutedPipeline;

/** The contexts a pipeline owns (a routed pipeline's variants belong to its library). */
export function pipelineModels(pipeline: Pipeline): LoadedModel[] {
  switch (pipeline.kind) {
    case "speculative":
      return [pipeline.model, pipeline.draft];
    case "fusion":
      return [pipeline.model, pipeline.base, ...pipeline.experts.map((e) => e.model)];
    default:
      return [pipeline.model];
  }
}

/**
 * A plain model decodes alone, or with a Predicted Output speculates from it: the target verifies
 * the prediction's tokens in batches (coupled noise for seeded requests, so the text is the same
 * as without the prediction; rejection sampling otherwise).
 */
export function plainPipeline(model: LoadedModel, lookup: LookupSettings = LOOKUP_DEFAULTS): PlainPipeline {
  const stats = new SpeculativeStats();
  const costs = new RoundCosts();
  const textAcceptance = new TextAcceptance();
  return {
    id: model.id,
    kind: "plain",
    model,
    costs,
    stats,
    generate(request) {
      return decodeWithoutDraft(model, request, { ...lookup, ...request.lookup }, { stats, costs, textAcceptance });
    },
  };
}

/**
 * The target without a draft: alone, or with a request's prediction or prompt lookup proposing
 * (priced by the model's costs, verified as one-hot proposals).
 */
function decodeWithoutDraft(
  model: LoadedModel,
  request: PipelineRequest,
  lookup: LookupSettings,
  state: { stats: SpeculativeStats; costs: RoundCosts; textAcceptance: TextAcceptance },
): AsyncGenerator<DecodeStep> {
  const predicted = request.prediction !== undefined && request.prediction.length > 0;
  if (!predicted && !lookup.enabled) return plainDecode(model, request);
  const verification = request.keyedNoise === true ? "coupled" : "rejection";
  // No draft: the policy and the draft's cap go unused (text proposals are priced by the costs).
  const policy = new FixedLengthPolicy(0);
  return speculativeDecode({ target: model, draft: null, lookup, policy, predictor: null, maxCandidates: 0, verification, ...state }, request);
}

export function speculativePipeline(
  target: LoadedModel,
  draft: LoadedModel,
  settings: SpeculativeSettings,
  predictor: AcceptancePredictor | OnlineLogisticPredictor,
  lookup: LookupSettings = LOOKUP_DEFAULTS,
): SpeculativePipeline {
  if (!target.sameVocabulary(draft)) {
    throw new FlockError("invalid_request", `model ${target.id}: the draft's vocabulary differs from the target's; speculative decoding needs the same tokenizer`);
  }
  const stats = new SpeculativeStats();
  const costs = new RoundCosts();
  // The cost-aware policy's recalibration of P̂, learned across the model's requests.
  const calibrations = acceptanceCalibrations();
  const textAcceptance = new TextAcceptance();
  return {
    id: target.id,
    kind: "speculative",
    model: target,
    draft,
    settings,
    predictor,
    stats,
    costs,
    generate(request) {
      const { enabled, ...overrides } = request.speculative ?? {};
      // The draft off: a prediction or prompt lookup still proposes.
      if (enabled === false) return decodeWithoutDraft(target, request, { ...lookup, ...request.lookup }, { stats, costs, textAcceptance });
      const effective = { ...settings, ...overrides };
      const verification = verificationFor(settings, overrides, request.keyedNoise === true);
      const policy = buildPolicy(effective, predictor, costs, calibrations, samplingRegime(request.sampling.temperature, verification));
      // Prompt lookup, when on, proposes in the rounds where it promises more than the draft.
      return speculativeDecode({ target, draft, lookup: { ...lookup, ...request.lookup }, textAcceptance, policy, predictor, maxCandidates: candidateCap(effective), stats, costs, verification }, request);
    },
  };
}

export function fusionPipeline(
  strong: LoadedModel,
  base: LoadedModel,
  experts: ReadonlyArray<{ name: string; model: LoadedModel }>,
  settings: FusionSettings,
): FusionPipeline {
  for (const small of [base, ...experts.map((e) => e.model)]) {
    if (!strong.sameVocabulary(small)) {
      throw new FlockError("invalid_request", `model ${strong.id}: ${small.id} has a different vocabulary; logit fusion needs one tokenizer for all models`);
    }
  }
  const stats = new FusionStats();
  const setup = { strong, base, experts, settings, stats };
  return { id: strong.id, kind: "fusion", model: strong, base, experts, settings, stats, generate: (request) => fusionDecode(setup, request) };
}

/**
 * `<base>+<method>`: the base model with its experts routed per token and module. `base` serves
 * tokenization, the chat template and admission; generation runs on the variant contexts.
 */
export function routedPipeline(base: LoadedModel, setup: RoutedSetup): RoutedPipeline {
  return {
    id: `${base.id}+${setup.method}`,
    kind: "routed",
    model: base,
    method: setup.method,
    library: setup.library,
    settings: setup.settings,
    variants: setup.variants,
    generate: (request) => routedDecode(setup, request),
  };
}

/** The served model ids: generation pipelines and embedding models. */
export class PipelineRegistry {
  private readonly pipelines = new Map<string, Pipeline>();
  private readonly embedders = new Map<string, EmbeddingModel>();
  private readonly created = Math.floor(Date.now() / 1000);

  add(pipeline: Pipeline): void {
    this.checkNew(pipeline.id);
    this.pipelines.set(pipeline.id, pipeline);
  }

  /** Serves `pipeline` in place of the one with its id (a model loaded again). */
  replace(pipeline: Pipeline): void {
    if (!this.pipelines.has(pipeline.id)) throw notFound(pipeline.id);
    this.pipelines.set(pipeline.id, pipeline);
  }

  addEmbedding(model: EmbeddingModel): void {
    this.checkNew(model.id);
    this.embedders.set(model.id, model);
  }

  private checkNew(id: string): void {
    if (this.pipelines.has(id) || this.embedders.has(id)) throw new FlockError("invalid_request", `model id ${id} is configured twice`);
  }

  /** The pipeline that generates for `id` (chat, completions, Responses). */
  resolve(id: string): Pipeline {
    const pipeline = this.pipelines.get(id);
    if (pipeline) return pipeline;
    if (this.embedders.has(id)) throw new FlockError("invalid_request", `model ${id} serves embeddings only: use POST /v1/embeddings`, "model");
    throw notFound(id);
  }

  /** The embedding model served as `id`. */
  resolveEmbedding(id: string): EmbeddingModel {
    const model = this.embedders.get(id);
    if (model) return model;
    if (this.pipelines.has(id)) throw new FlockError("invalid_request", `model ${id} is not served for embeddings (a model entry with embeddings: true is)`, "model");
    throw notFound(id);
  }

  list(): Array<{ id: string; created: number; pipeline: Pipeline }> {
    return [...this.pipelines.values()].map((pipeline) => ({ id: pipeline.id, created: this.created, pipeline }));
  }

  embeddingList(): Array<{ id: string; created: number; model: EmbeddingModel }> {
    return [...this.embedders.values()].map((model) => ({ id: model.id, created: this.created, model }));
  }
}

const notFound = (id: string) => new FlockError("model_not_found", `The model \`${id}\` does not exist or you do not have access to it.`, "model");
