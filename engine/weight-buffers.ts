// Where llama.cpp put each model file's weights, read from its load log: after
// "llama_model_loader: loaded meta data with … from <path> (version …)" come one line per buffer
// the weights fill, "load_tensors: <buffer type> model buffer size = <n> MiB" — CPU or CPU_Mapped
// (plain, or mapped from the file), CPU_REPACK (Q4_0/IQ4_NL/… repacked for AVX2, AVX-512 or
// NEON kernels), AMX, CUDA0, Vulkan0, RPC[host:port], … The compiled-in features only say which
// buffer types a build could use; these lines say which ones a model does.
import { resolve } from "node:path";

const LOADING = /^llama_model_loader: loaded meta data with .* from (.+) \(version .*\)\s*$/;
const BUFFER = /^load_tensors:\s+(\S+) model buffer size =\s*([\d.]+) MiB/;

export class WeightBufferLog {
  private loading: string | null = null;
  private readonly byFile = new Map<string, Record<string, number>>();

  /** Feeds one message of llama.cpp's log (a message may hold several lines). */
  observe(message: string): void {
    for (const line of message.split("\n")) {
      const loading = LOADING.exec(line);
      if (loading) {
        this.loading = resolve(loading[1]);
        this.byFile.set(this.loading, {});
        continue;
      }
      const buffer = this.loading === null ? null : BUFFER.exec(line);
      if (buffer) {
        const sizes = this.byFile.get(this.loading!)!;
        sizes[buffer[1]] = (sizes[buffer[1]] ?? 0) + Number(buffer[2]);
      }
    }
  }

  /**
   * The buffer types holding the weights of `path` at its latest load, with their sizes in MiB;
   * undefined where its load log was not seen.
   */
  of(path: string): Record<string, number> | undefined {
    const sizes = this.byFile.get(resolve(path));
    return sizes && Object.keys(sizes).length > 0 ? { ...sizes } : undefined;
  }
}
