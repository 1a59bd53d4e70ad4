// A model served for embeddings (POST /v1/embeddings): node-llama-cpp's embedding context over
// the GGUF, pooled as the GGUF says (mean, CLS, last; a decoder without a pooling type gives its
// last token's), L2-normalised as OpenAI's and llama-server's embeddings are. One context
// evaluates one input at a time; a bounded queue refuses the rest.
import type { LlamaEmbeddingContext, LlamaModel, Token } from "node-llama-cpp";
import { FlockError } from "./errors.js";

export class EmbeddingModel {
  private pending = 0;

  constructor(
    readonly id: string,
    private readonly weights: LlamaModel,
    private readonly context: LlamaEmbeddingContext,
    readonly contextSize: number,
    /** Inputs that may wait for the context; more are refused (overloaded). */
    readonly maxQueue: number,
  ) {}

  /** The vector's length. */
  get dimensions(): number {
    return this.weights.embeddingVectorSize;
  }

  get vocabularySize(): number {
    return this.weights.fileInfo.metadata.tokenizer?.ggml?.tokens?.length ?? 0;
  }

  /** Bytes of text one token can stand for, at most (as Tokenizer.maxTokenBytes): bounds a text's tokens from below before tokenizing. */
  get maxTokenBytes(): number {
    const tokens = this.weights.fileInfo.metadata.tokenizer?.ggml?.tokens;
    this.longestTokenBytes ??= tokens && tokens.length > 0 ? tokens.reduce((m, t) => Math.max(m, Buffer.byteLength(t)), 0) + 1 : Infinity;
    return this.longestTokenBytes;
  }
  private longestTokenBytes: number | undefined;

  /** Text as tokens, special-token text kept plain (embed() adds the BOS and EOS the model expects). */
  tokenize(text: string): number[] {
    return this.weights.tokenize(text, false);
  }

  /**
   * The unit-length embedding of each input, in order, and the tokens evaluated (node-llama-cpp
   * adds the BOS, and for some vocabularies the EOS, the model expects). Admission is all or
   * nothing: a batch that would overfill the queue, or whose inputs do not all fit the context,
   * is refused before any input is evaluated.
   */
  async embed(inputs: readonly (readonly number[])[]): Promise<{ vectors: Float32Array[]; tokens: number }> {
    if (this.pending + inputs.length > this.maxQueue + 1) {
      throw new FlockError("overloaded", `model ${this.id} is busy: ${this.pending} inputs are already waiting; retry shortly`);
    }
    const lengths = inputs.map((input) => this.context.calculateInputLength([...input] as Token[]));
    const tooLong = lengths.findIndex((length) => length >= this.contextSize);
    if (tooLong >= 0) {
      throw new FlockError("context_length_exceeded", `This model's maximum context length is ${this.contextSize} tokens. However, input ${tooLong} has ${lengths[tooLong]} tokens. Please reduce the length of the input.`, "input");
    }
    this.pending += inputs.length;
    let left = inputs.length;
    try {
      const vectors: Float32Array[] = [];
      for (const input of inputs) {
        const { vector } = await this.context.getEmbeddingFor([...input] as Token[]);
        vectors.push(normalized(vector));
        left--;
        this.pending--;
      }
      return { vectors, tokens: lengths.reduce((n, length) => n + length, 0) };
    } finally {
      this.pending -= left;
    }
  }
}

function normalized(vector: readonly number[]): Float32Array {
  let norm = 0;
  for (const x of vector) norm += x * x;
  norm = Math.sqrt(norm);
  const out = new Float32Array(vector.length);
  for (let i = 0; i < vector.length; i++) out[i] = norm > 0 ? vector[i] / norm : 0;
  return out;
}
