// The engine: the only code that touches weights. It owns the node-llama-cpp instance, loads
// each GGUF file once, and hands out LoadedModels (one context per served model id).
import { availableParallelism } from "node:os";
import { getLlama, Llama, LlamaLogLevel, LlamaLogLevelGreaterThanOrEqual, type LlamaModel } from "node-llama-cpp";
import { AdapterCache } from "./adapter-cache.js";
import { adapterMismatch, baseShapesOf, readAdapterHeader } from "./adapter-check.js";
import { EmbeddingModel } from "./embedding.js";
import { FlockError } from "./errors.js";
import { type Capabilities, LoadedModel, type ModelLoadOptions } from "./model.js";
import { grammarKernels, hasFlockAddon, hasWeightCheck, installSamplingKernels, type RoutedLoraConfig, type RpcBackend, rpcBackend } from "./native.js";
import { checkWeights } from "./weight-check.js";
import { WeightBufferLog } from "./weight-buffers.js";

export type GpuSetting = "auto" | "off" | "cuda" | "vulkan" | "metal";

export interface EngineOptions {
  gpu: GpuSetting;
  /** Default CPU threads per context. */
  threads: number;
}

/**
 * On small machines node-llama-cpp's default thread count oversubscribes the CPU: measured
 * here on 2 cores, a 1-layer model took 0.41 ms/token with 1 thread, 13.8 ms with 2 and
 * 148 ms with the default. Leave one core to the event loop (HTTP, sampling, detokenizing).
 */
export function defaultThreads(cores = availableParallelism()): number {
  return Math.max(1, cores - 1);
}

/** One context the engine holds: its sequences in use and the memory it reserved. */
export interface ContextUsage {
  id: string;
  parallel: number;
  running: number;
  waiting: number;
  ramBytes: number;
  vramBytes: number;
}

export class Engine {
  private readonly weights = new Map<string, Promise<LlamaModel>>();
  private readonly loaded: LoadedModel[] = [];
  /** Weight loads under way (llama.cpp's info lines are logged while there are any). */
  private loading = 0;
  /** The LoRA adapters contexts apply, counted per context and freed with the last (GET /admin/status). */
  readonly adapters = new AdapterCache();

  private constructor(
    readonly llama: Llama,
    readonly options: EngineOptions,
    readonly capabilities: Capabilities,
    private readonly rpc: RpcBackend | undefined,
    private readonly buffers: WeightBufferLog,
  ) {}

  static async create(options: EngineOptions): Promise<Engine> {
    const buffers = new WeightBufferLog();
    const llama = await getLlama({
      // The local build (npm run build:native) or a prebuilt binary; never a download or a
      // compile at serving time.
      build: "never",
      gpu: options.gpu === "off" ? false : options.gpu,
      // 0: no global cap, so each context uses exactly the threads it asks for.
      maxThreads: 0,
      // llama.cpp's errors; while weights load (loadWeights), its info lines too, which name the
      // buffer types the weights land in (weight-buffers.ts). Only errors are printed.
      logLevel: LlamaLogLevel.error,
      logger: (level, message) => {
        buffers.observe(message);
        if (LlamaLogLevelGreaterThanOrEqual(level, LlamaLogLevel.error)) Llama.defaultConsoleLogger(level, message);
      },
      progressLogs: false,
    });
    await registerLogger(llama);
    const addon = hasFlockAddon(llama);
    const nativeSampling = installSamplingKernels(llama);
    const rpc = rpcBackend(llama);
    return new Engine(llama, options, { rawLogits: addon, fusionKernel: addon, hiddenStates: addon, routedLora: addon, nativeSampling, grammar: grammarKernels(llama) !== undefined, rpc: rpc !== undefined }, rpc, buffers);
  }

  /**
   * Runs every weight type of `files` once in a child process before anything is loaded
   * (engine/weight-check.ts); throws a FlockError naming what this machine cannot run. Returns
   * false, doing nothing, where the build lacks the check (node-llama-cpp's prebuilt binary).
   */
  async checkWeights(files: readonly string[], cacheFile: string | null): Promise<boolean> {
    if (!hasWeightCheck(this.llama)) return false;
    const gpu = this.options.gpu === "off" ? false : this.options.gpu;
    await checkWeights(files, { gpu, threads: this.options.threads, cacheFile, build: `${this.llama.buildType}\n${this.llama.systemInfo}` });
    return true;
  }

  /**
   * The CPU's instruction-set extensions compiled into ggml's CPU backend, and the extra buffer
   * types they make available (llama.cpp may place weights there: repacked layouts, AMX tiles),
   * as llama.cpp's system info lists them. Which ones a model's weights are in depends on their
   * types: weightBuffers() says.
   */
  cpuFeatures(): { features: string[]; extraBufferTypes: string[] } {
    const cpu = this.llama.systemInfo.split("|").map((f) => f.trim().replace(/^CPU : /, ""));
    const on = cpu.filter((f) => / = 1$/.test(f)).map((f) => f.replace(/ = 1$/, ""));
    const extraBufferTypes = [...(on.includes("REPACK") ? ["CPU_REPACK"] : []), ...(on.includes("AMX_INT8") ? ["AMX"] : [])];
    return { features: on.filter((f) => f !== "REPACK"), extraBufferTypes };
  }

  /**
   * The buffer types holding the weights of the file `path` (as loaded: CPU, CPU_Mapped,
   * CPU_REPACK, AMX, CUDA0, …) with their sizes in MiB, from llama.cpp's load log; undefined
   * where that log was not seen.
   */
  weightBuffers(path: string): Record<string, number> | undefined {
    return this.buffers.of(path);
  }

  /** A one-line description for the startup log. */
  describe(): { build: string; gpu: string | false; threads: number; capabilities: Capabilities; cpu: ReturnType<Engine["cpuFeatures"]>; missing?: string } {
    const missing = Object.entries(this.capabilities)
      .filter(([, has]) => !has)
      .map(([name]) => name);
    return {
      build: this.llama.buildType,
      gpu: this.llama.gpu,
      threads: this.options.threads,
      capabilities: this.capabilities,
      cpu: this.cpuFeatures(),
      ...(missing.length > 0 ? { missing: `${missing.join(", ")} unavailable in this build${this.capabilities.rawLogits ? "" : " (full distributions use node-llama-cpp's slower probabilities path; run npm run build:native)"}` } : {}),
    };
  }

  /** A model served for embeddings: its own embedding context (see embedding.ts). */
  async loadEmbedding(entry: ModelLoadOptions): Promise<EmbeddingModel> {
    const weights = await this.weightsFor(entry).catch((err: unknown) => {
      throw err instanceof FlockError ? new FlockError(err.kind, `model ${entry.id}: ${err.message}`) : err;
    });
    // One sequence: the training context fits (embedding models are small); a number caps it.
    const contextSize = entry.contextSize === "auto" ? weights.trainContextSize : Math.min(entry.contextSize, weights.trainContextSize);
    const context = await weights.createEmbeddingContext({ contextSize, threads: entry.threads ?? this.options.threads, batchSize: entry.batchSize }).catch((err: unknown) => {
      throw new FlockError("unavailable", `model ${entry.id}: cannot create an embedding context for ${entry.path}: ${(err as Error).message}`);
    });
    return new EmbeddingModel(entry.id, weights, context, contextSize, entry.maxQueue ?? 64);
  }

  /**
   * `hiddenStates`: this model's sequences also return final hidden states; `routing`: its
   * context applies routed LoRA. Both need the native extension.
   */
  async load(entry: ModelLoadOptions, options: { hiddenStates?: boolean; routing?: RoutedLoraConfig } = {}): Promise<LoadedModel> {
    if (options.hiddenStates && !this.capabilities.hiddenStates) {
      throw new FlockError("unsupported", `model ${entry.id} needs per-token hidden states, which this build lacks (run npm run build:native)`);
    }
    if (options.routing && !this.capabilities.routedLora) {
      throw new FlockError("unsupported", `model ${entry.id} needs routed LoRA, which this build lacks (run npm run build:native)`);
    }
    // Errors name the model id and the file: a startup that fails says which entry to fix.
    const weights = await this.weightsFor(entry).catch((err: unknown) => {
      throw err instanceof FlockError ? new FlockError(err.kind, `model ${entry.id}: ${err.message}`) : err;
    });
    for (const lora of entry.lora) await this.checkAdapter(entry.id, weights, lora.path);
    const model = await LoadedModel.create(weights, entry, entry.threads ?? this.options.threads, this.capabilities, { ...options, rpcFailed: this.rpc?.failed, adapters: this.adapters }).catch((err: unknown) => {
      if (err instanceof FlockError) throw err;
      throw new FlockError("unavailable", `model ${entry.id}: cannot create a context for ${entry.path}${entry.lora.length > 0 ? ` with ${entry.lora.map((l) => l.path).join(", ")}` : ""}: ${(err as Error).message}`);
    });
    // Retired contexts (routed variants) leave the list once freed.
    for (let i = this.loaded.length - 1; i >= 0; i--) if (this.loaded[i].isDisposed) this.loaded.splice(i, 1);
    this.loaded.push(model);
    return model;
  }

  /**
   * Every context the engine holds (served models, drafts, fusion's small models, routed
   * variants) and its sequences in use: GET /admin/status shows it, the reliability suite checks
   * that nothing stays allocated.
   */
  contexts(): ContextUsage[] {
    return this.loaded
      .filter((m) => !m.isDisposed)
      .map((m) => {
        const memory = m.memoryBytes;
        return { id: m.id, parallel: m.parallel, running: m.runningSequences, waiting: m.waitingSequences, ramBytes: memory.ram, vramBytes: memory.vram };
      });
  }

  /** Before llama.cpp loads an adapter: a FlockError naming the model id, the file and what does not fit. */
  private async checkAdapter(modelId: string, weights: LlamaModel, path: string): Promise<void> {
    const header = await readAdapterHeader(path).catch((err: unknown) => {
      throw new FlockError("invalid_request", `model ${modelId}: cannot read the LoRA adapter ${path}: ${(err as Error).message}`);
    });
    const mismatch = adapterMismatch(path, header, baseShapesOf(weights.fileInfo));
    if (mismatch) throw new FlockError("invalid_request", `model ${modelId}: ${mismatch}`);
  }

  /**
   * A file's weights, loaded once per file (and set of RPC servers). Without a GPU backend layers
   * stay on the CPU whatever gpuLayers says (the RPC backend compiled in would otherwise make
   * node-llama-cpp check a GPU's memory); with RPC servers every layer goes to them, spread by
   * their free memory, unless gpuLayers is a number.
   */
  private weightsFor(entry: Pick<ModelLoadOptions, "path" | "gpuLayers" | "rpc">): Promise<LlamaModel> {
    const { path } = entry;
    const rpc = entry.rpc?.length ? entry.rpc : undefined;
    const key = weightsKey(entry);
    let weights = this.weights.get(key);
    if (!weights) {
      weights = this.loadWeights(path, entry.gpuLayers, rpc).catch((cause: unknown) => {
        this.weights.delete(key);
        if (cause instanceof FlockError) throw cause;
        // llama.cpp's own reason (e.g. tensor data past the end of a truncated file) is in its
        // log; node-llama-cpp's message is often just "Failed to load model".
        const reason = (cause as Error).message;
        const why = /^failed to load model$/i.test(reason)
          ? "llama.cpp could not load it (corrupt or truncated?)"
          : cause instanceof RangeError // node-llama-cpp's GGUF header parser ran into nonsense
            ? `its GGUF header cannot be read (corrupt?): ${reason}`
            : reason;
        throw new FlockError("unavailable", `cannot load model file ${path}: ${why}`, null, { cause });
      });
      this.weights.set(key, weights);
    }
    return weights;
  }

  private async loadWeights(path: string, gpuLayers: ModelLoadOptions["gpuLayers"], rpc: readonly string[] | undefined): Promise<LlamaModel> {
    // llama.cpp's info lines while it loads: they name the buffer types the weights go to.
    this.loading++;
    this.llama.logLevel = LlamaLogLevel.info;
    try {
      return await this.loadWeightsLogged(path, gpuLayers, rpc);
    } finally {
      // Lines logged on the loading thread are delivered on this one: let them arrive first.
      await new Promise((resolve) => setImmediate(resolve));
      if (--this.loading === 0 && !this.llama.disposed) this.llama.logLevel = LlamaLogLevel.error;
    }
  }

  private async loadWeightsLogged(path: string, gpuLayers: ModelLoadOptions["gpuLayers"], rpc: readonly string[] | undefined): Promise<LlamaModel> {
    if (!rpc) return this.llama.loadModel({ modelPath: path, gpuLayers: this.llama.gpu === false ? 0 : gpuLayers });
    if (!this.rpc) throw new FlockError("unsupported", "serving over RPC needs flock's native build with llama.cpp's RPC backend (run npm run build:native)");
    try {
      this.rpc.setModelServers(path, rpc);
    } catch (cause) {
      throw new FlockError("unavailable", (cause as Error).message, null, { cause });
    }
    // RPC devices are not GPUs node-llama-cpp can measure: skip its memory checks.
    return this.llama.loadModel({ modelPath: path, gpuLayers: gpuLayers === "auto" ? "max" : gpuLayers, ignoreMemorySafetyChecks: true });
  }

  /**
   * Frees the weights loaded for `entry` on its RPC servers (after their contexts were freed), so
   * that loading it again connects afresh; each server serves one connection at a time.
   */
  async evictRpcWeights(entry: Pick<ModelLoadOptions, "path" | "rpc">): Promise<void> {
    if (!entry.rpc?.length) return;
    const key = weightsKey(entry);
    const weights = this.weights.get(key);
    this.weights.delete(key);
    await (await weights?.catch(() => undefined))?.dispose();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    for (const model of this.loaded.splice(0)) await model[Symbol.asyncDispose]();
    for (const weights of this.weights.values()) await (await weights.catch(() => undefined))?.dispose();
    this.weights.clear();
    await this.llama.dispose();
  }
}

/**
 * node-llama-cpp registers each new Llama's logger while releasing the previous one's native
 * callback, and that release, completing later, marks no callback as set: llama.cpp's lines then
 * bypass the logger (printed to stdout, or lost). Registering once more after the release has
 * completed keeps them coming, in a process that made a Llama before (tests, tools).
 */
async function registerLogger(llama: Llama): Promise<void> {
  const internals = llama as unknown as { _bindings: { setLogger(callback?: unknown): void }; _onAddonLog: unknown; _debug: boolean };
  // In debug mode llama.cpp prints straight to the console, and node-llama-cpp sets no callback.
  if (internals._debug || typeof internals._bindings?.setLogger !== "function") return;
  internals._bindings.setLogger(); // releases whichever callback is set
  for (let i = 0; i < 3; i++) await new Promise((resolve) => setImmediate(resolve));
  internals._bindings.setLogger(internals._onAddonLog);
}

/** Weights are shared by file, apart from those placed on RPC servers. */
function weightsKey(entry: Pick<ModelLoadOptions, "path" | "rpc">): string {
  return entry.rpc?.length ? `${entry.path}\u0000rpc:${entry.rpc.join(",")}` : entry.path;
}
