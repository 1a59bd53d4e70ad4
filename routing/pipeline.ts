// Request → pipeline resolution: which model(s) and which decoder serve a model id.
import { plainDecode } from "../decoding/plain.js";
import type { DecodeStep, GenerationRequest } from "../decoding/types.js";
import { FlockError } from "../models/errors.js";
import type { LoadedModel } from "../models/model.js";

export interface Pipeline {
  /** The model id clients use. */
  readonly id: string;
  readonly kind: "plain";
  /** The model whose tokenizer, chat template and context window apply. */
  readonly model: LoadedModel;
  generate(request: GenerationRequest): AsyncGenerator<DecodeStep>;
}

export function plainPipeline(model: LoadedModel): Pipeline {
  return { id: model.id, kind: "plain", model, generate: (request) => plainDecode(model, request) };
}

export class PipelineRegistry {
  private readonly pipelines = new Map<string, Pipeline>();
  private readonly created = Math.floor(Date.now() / 1000);

  add(pipeline: Pipeline): void {
    if (this.pipelines.has(pipeline.id)) throw new FlockError("invalid_request", `model id ${pipeline.id} is configured twice`);
    this.pipelines.set(pipeline.id, pipeline);
  }

  resolve(id: string): Pipeline {
    const pipeline = this.pipelines.get(id);
    if (!pipeline) {
      throw new FlockError("model_not_found", `The model \`${id}\` does not exist or you do not have access to it.`, "model");
    }
    return pipeline;
  }

  list(): Array<{ id: string; created: number; pipeline: Pipeline }> {
    return [...this.pipelines.values()].map((pipeline) => ({ id: pipeline.id, created: this.created, pipeline }));
  }
}
