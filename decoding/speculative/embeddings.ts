// The draft's token embeddings (token_embd.weight), as the acceptance head reads them: each row
// RMS-normalized, as a LLaMA block normalizes its input before using it. They tell the head
// which token was drafted without a draft step (the hidden state at the token would cost one).
import { FlockError } from "../../models/errors.js";
import { readGgufTensors } from "../../models/gguf/reader.js";

const TENSOR = "token_embd.weight";

export class TokenEmbeddings {
  constructor(
    /** vocabulary × width values, row-major. */
    private readonly rows: Float32Array,
    readonly width: number,
  ) {}

  static async load(ggufPath: string): Promise<TokenEmbeddings> {
    let tensor;
    try {
      tensor = (await readGgufTensors(ggufPath, (name) => name === TENSOR)).tensors.get(TENSOR);
    } catch (err) {
      throw new FlockError("invalid_request", `the acceptance head reads the draft's token embeddings, which cannot be read from ${ggufPath}: ${(err as Error).message}`);
    }
    if (!tensor) throw new FlockError("invalid_request", `the acceptance head reads the draft's token embeddings; ${ggufPath} has no ${TENSOR}`);
    return new TokenEmbeddings(tensor.data, tensor.dims[0]);
  }

  get vocabularySize(): number {
    return this.rows.length / this.width;
  }

  /** Writes token's normalized embedding into out from offset. */
  write(token: number, out: Float32Array, offset: number): void {
    if (!(token >= 0 && token < this.vocabularySize)) throw new RangeError(`token ${token} is outside the draft's ${this.vocabularySize} embeddings`);
    const row = this.rows.subarray(token * this.width, (token + 1) * this.width);
    let squares = 0;
    for (const x of row) squares += x * x;
    const scale = 1 / Math.sqrt(squares / this.width + 1e-6);
    for (let i = 0; i < this.width; i++) out[offset + i] = row[i] * scale;
  }
}
