// The draft's token embeddings (token_embd.weight), as the acceptance head reads them: each row
// RMS-normalized, as a LLaMA block normalizes its input before using it. They tell the head
// which token was drafted without a draft step (the hidden state at the token would cost one).
// Kept as the file stores them (F32, F16, BF16 or Q8_0); a row is decoded when it is read.
import { FlockError } from "../../engine/errors.js";
import { decodeInto, readStoredTensor, type StoredTensor } from "../../engine/gguf/reader.js";

const TENSOR = "token_embd.weight";

export class TokenEmbeddings {
  readonly width: number;
  readonly vocabularySize: number;

  constructor(private readonly stored: StoredTensor) {
    [this.width, this.vocabularySize] = stored.dims;
  }

  static async load(ggufPath: string): Promise<TokenEmbeddings> {
    let stored: StoredTensor | undefined;
    try {
      stored = await readStoredTensor(ggufPath, TENSOR);
    } catch (err) {
      throw new FlockError("invalid_request", `the acceptance head reads the draft's token embeddings, which cannot be read from ${ggufPath}: ${(err as Error).message}`);
    }
    if (!stored) throw new FlockError("invalid_request", `the acceptance head reads the draft's token embeddings; ${ggufPath} has no ${TENSOR}`);
    return new TokenEmbeddings(stored);
  }

  /** Writes token's normalized embedding into out from offset. */
  write(token: number, out: Float32Array, offset: number): void {
    if (!(token >= 0 && token < this.vocabularySize)) throw new RangeError(`token ${token} is outside the draft's ${this.vocabularySize} embeddings`);
    decodeInto(this.stored.type, this.stored.bytes, token * this.width, this.width, out, offset);
    let squares = 0;
    for (let i = offset; i < offset + this.width; i++) squares += out[i] * out[i];
    const scale = 1 / Math.sqrt(squares / this.width + 1e-6);
    for (let i = offset; i < offset + this.width; i++) out[i] *= scale;
  }
}
