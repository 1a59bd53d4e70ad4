// A served model: weights plus one context, composed of the pool that lends its sequences
// (sequence-pool.ts) and its text side (tokenizer.ts: tokenizer, detokenizer, chat template).
// What stays here is loading, capabilities, failure (RPC) and disposal.
import { type LlamaContext, type LlamaModel } from "node-llama-cpp";
import { AdapterCache, type AdapterLease } from "./adapter-cache.js";
import { BatchDecoder, BatchedSequence } from "./batch.js";
import { type ChatMessage, ChatTemplate, type RenderedPrompt, type TemplateKwargs, type ToolDefinition } from "./chat-template.js";
import { FlockError } from "./errors.js";
import { GrammarCompiler } from "./grammar.js";
import { type FusionGridKernel, fusionGridKernel, grammarKernels, type RawOutputs, rawOutputs, type RoutedLoraConfig, setRoutedLoras } from "./native.js";
import { EngineSequence, NodeLlamaCppSequence, type Sequence, type SequenceCache } from "./sequence.js";
import { SequencePool } from "./sequence-pool.js";
import { Tokenizer } from "./tokenizer.js";

export type { ChatMessage, RenderedPrompt, ToolCall, ToolCallSyntax, ToolDefinition } from "./chat-template.js";

/** What the loaded binary can do beyond public node-llama-cpp (the native extension). */
export interface Capabilities {
  rawLogits: boolean;
  /** The fusion objective's grid search compiled in the addon. */
  fusionKernel: boolean;
  hiddenStates: boolean;
  routedLora: boolean;
  /** The samplers' per-position math (softmax) in the addon instead of TypeScript. */
  nativeSampling: boolean;
  /** Grammar masks and llama.cpp's JSON-schema converter (constrained decoding). */
  grammar: boolean;
  /** llama.cpp's RPC backend: other machines hold a model's layers. */
  rpc: boolean;
}

/** What loading one model takes: the config's model entry (pipelines/model-entry.ts) is one. */
export interface ModelLoadOptions {
  id: string;
  path: string;
  /** Adapters applied to every sequence of the context. */
  lora: readonly { path: string; scale: number }[];
  contextSize: number | "auto";
  parallel: number;
  threads?: number;
  gpuLayers: "auto" | "max" | number;
  batchSize?: number;
  maxQueue?: number;
  /** Whether plain requests may use the addon's generation loop (default true). */
  generationLoop?: boolean;
  /** RPC servers ("host:port") that hold the model's layers. */
  rpc?: readonly string[];
}

/** The smallest context "auto" settles for before loading fails for lack of memory. */
const MIN_AUTO_CONTEXT = 1024;

/** Where contexts made without an engine's cache (tests, tools) keep their adapters. */
const sharedAdapters = new AdapterCache();

export class LoadedModel {
  /** Lends the context's sequences, busy or free (their KV cells count in kvCacheUsage). */
  private readonly pool: SequencePool<Sequence>;
  /** Decodes for the sequences on flock's contexts (none on node-llama-cpp's fallback path). */
  private readonly batches: BatchDecoder | null = null;
  /** Tokenizer, detokenizer and chat template. */
  readonly tokenizer: Tokenizer;
  private disposed = false;
  /** Why the model cannot serve (an RPC server that holds its layers failed); null while it can. */
  private failed: string | null = null;
  /** The LoRA adapters the context applies (a model entry's `lora`), released once it is freed. */
  private adapters: AdapterLease | null = null;
  /** Compiles grammars for constrained decoding; null where the build lacks the grammar kernels. */
  readonly grammars: GrammarCompiler | null;
  /** Told how long each acquisition waited for a sequence, in seconds (0 when one was idle). */
  set onAcquire(observer: ((waitedSeconds: number, signal?: AbortSignal) => void) | null) {
    this.pool.onAcquire = observer;
  }
  /** Told how many sequences each llama.cpp batch of this context carries, and whether the generation loop ran it (flock's contexts only). */
  set onBatch(observer: ((sequences: number, loop: boolean) => void) | null) {
    if (this.batches) this.batches.onBatch = observer;
  }

  private constructor(
    readonly id: string,
    readonly weights: LlamaModel,
    private readonly context: LlamaContext,
    readonly parallel: number,
    readonly threads: number,
    /** Logits come from flock's native addon (else node-llama-cpp's probabilities path). */
    readonly rawLogits: boolean,
    /** Acquisitions that may wait for a sequence at once; more are refused (overloaded). */
    readonly maxQueue: number,
    /** Sequences can return final hidden states (evaluateWithHidden). */
    readonly hasHiddenStates: boolean,
    /** Reads decoded positions and takes back logits arrays decoders are done with (flock's addon only). */
    outputs?: RawOutputs,
    /** The RPC servers that hold its layers and which of them failed since they connected. */
    private readonly rpc?: { endpoints: readonly string[]; failed: (endpoints: readonly string[]) => string[] },
  ) {
    this.tokenizer = new Tokenizer(weights, new ChatTemplate(id, weights));
    const sequences: SequenceCache[] = [];
    if (outputs) {
      // flock drives the context's sequence ids 0…parallel−1 itself (engine/batch.ts).
      const batches = (this.batches = new BatchDecoder(context, outputs, () => this.runningSequences, rpc ? () => this.checkRpc() : undefined));
      for (let id = 0; id < parallel; id++) sequences.push(new BatchedSequence(batches, id));
    } else {
      for (let i = 0; i < parallel; i++) sequences.push(new NodeLlamaCppSequence(context.getSequence(), this.vocabularySize));
    }
    this.pool = new SequencePool<Sequence>(id, sequences, maxQueue, (seq, release) => new EngineSequence(seq, this.contextSize, rawLogits, release, outputs?.recycle));
    const kernels = grammarKernels(weights.llama);
    this.grammars = kernels ? new GrammarCompiler(weights, kernels) : null;
  }

  static async create(
    weights: LlamaModel,
    entry: ModelLoadOptions,
    threads: number,
    capabilities: Capabilities,
    options: { hiddenStates?: boolean; routing?: RoutedLoraConfig; rpcFailed?: (endpoints: readonly string[]) => string[]; adapters?: AdapterCache } = {},
  ): Promise<LoadedModel> {
    // "auto": node-llama-cpp sizes the context from the memory it finds free, up to the training
    // context (and no smaller than what a short chat needs).
    const train = weights.trainContextSize;
    const contextSize = entry.contextSize === "auto" ? { min: Math.min(train, MIN_AUTO_CONTEXT), max: train } : Math.min(entry.contextSize, train);
    const context = await weights.createContext({
      contextSize,
      sequences: entry.parallel,
      threads: { ideal: threads, min: threads },
      batchSize: entry.batchSize,
      // No `lora` here: node-llama-cpp's adapter cache never frees (engine/adapter-cache.ts).
      failedCreationRemedy: false,
    });
    let adapters: AdapterLease | null = null;
    if (entry.lora.length > 0) {
      try {
        adapters = await (options.adapters ?? sharedAdapters).attach(weights, entry.path, context, entry.lora);
      } catch (err) {
        await context.dispose();
        throw err;
      }
    }
    // Routing traces travel with the hidden states, so a traced routed context has both.
    const traced = options.routing?.trace === true;
    const hasHiddenStates = capabilities.rawLogits && (options.hiddenStates === true || traced);
    const outputs = capabilities.rawLogits ? rawOutputs(context, { hiddenStates: hasHiddenStates, routedAdapters: traced ? options.routing!.adapters.length : 0 }) : undefined;
    if (options.routing) {
      try {
        setRoutedLoras(context, options.routing);
      } catch (cause) {
        await context.dispose();
        await adapters?.release();
        throw new FlockError("invalid_request", `model ${entry.id}: routed LoRA could not be set up (${(cause as Error).message})`, null, { cause });
      }
    }
    const rpc = entry.rpc?.length && options.rpcFailed ? { endpoints: entry.rpc, failed: options.rpcFailed } : undefined;
    if (entry.rpc?.length && !(rpc && outputs)) {
      await context.dispose();
      await adapters?.release();
      throw new FlockError("unsupported", `model ${entry.id}: serving over RPC needs flock's native build (run npm run build:native)`);
    }
    const model = new LoadedModel(entry.id, weights, context, entry.parallel, threads, capabilities.rawLogits, entry.maxQueue ?? Infinity, hasHiddenStates, outputs, rpc);
    model.adapters = adapters;
    if (model.batches && entry.generationLoop === false) model.batches.generationLoop = false;
    return model;
  }

  /** Tokens one sequence can hold (prompt + completion). */
  get contextSize(): number {
    return this.context.contextSize;
  }
  /** The context the model was trained with (GGUF metadata). */
  get trainContextSize(): number {
    return this.weights.trainContextSize;
  }
  /** Width of the final hidden state (what the output projection reads). */
  get embeddingSize(): number {
    return this.weights.embeddingVectorSize;
  }
  get vocabularySize(): number {
    return this.tokenizer.vocabularySize;
  }
  get gpuLayers(): number {
    return this.weights.gpuLayers;
  }
  get chatTemplateName(): string {
    return this.tokenizer.chatTemplateName;
  }
  /** Sequences not serving a request right now. */
  get idleSequences(): number {
    return this.pool.idle;
  }
  /**
   * What the context holds in memory (KV cache, compute buffers), as node-llama-cpp estimates it
   * when it reserves memory for the context; weights and adapters are shared and not counted.
   */
  get memoryBytes(): { ram: number; vram: number } {
    return this.disposed ? { ram: 0, vram: 0 } : this.context.memoryUsage;
  }
  /**
   * The share of the KV cache's cells that hold tokens: those of running sequences and the
   * cached prefixes idle ones keep for reuse (0 to 1).
   */
  get kvCacheUsage(): number {
    if (this.disposed) return 0;
    const held = this.pool.sequences.reduce((sum, seq) => sum + seq.tokens.length, 0);
    return held / (this.context.contextSize * this.parallel);
  }
  /** Sequences serving a request right now. */
  get runningSequences(): number {
    return this.pool.running;
  }
  /** Acquisitions waiting for a sequence. */
  get waitingSequences(): number {
    return this.pool.waiting;
  }

  /**
   * Admission control, for callers that must refuse work before they start answering (an SSE
   * stream cannot turn into a 429 later): reserves `choices` sequences' worth of capacity
   * (parallel sequences plus maxQueue waiting places) if the reservations left room, and returns
   * the function that gives them back; null when the model is full. Synchronous, so a check
   * and its reservation cannot interleave with another request's.
   */
  admit(choices: number): (() => void) | null {
    if (this.failed) throw this.failure();
    if (this.disposed) return null;
    return this.pool.admit(choices);
  }
  /** Most choices one request can ever be admitted with. */
  get capacity(): number {
    return this.pool.capacity;
  }

  /** flock's compiled fusion-objective kernel, when the native addon is loaded. */
  get fusionGridKernel(): FusionGridKernel | undefined {
    return this.rawLogits ? fusionGridKernel(this.context) : undefined;
  }

  // The text side, delegated to the tokenizer (callers keep calling model.tokenize etc.).
  /** Whether `other` tokenizes identically (same token texts in the same order). */
  sameVocabulary(other: LoadedModel): boolean {
    return this.tokenizer.sameVocabulary(other.tokenizer);
  }
  /** Bytes of text one token can stand for, at most (Tokenizer.maxTokenBytes). */
  get maxTokenBytes(): number {
    return this.tokenizer.maxTokenBytes;
  }
  tokenizePrompt(text: string): number[] {
    return this.tokenizer.tokenizePrompt(text);
  }
  tokenize(text: string, options: { addSpecial: boolean; parseSpecial: boolean }): number[] {
    return this.tokenizer.tokenize(text, options);
  }
  renderChat(messages: readonly ChatMessage[], kwargs?: TemplateKwargs, tools?: readonly ToolDefinition[]): RenderedPrompt {
    return this.tokenizer.renderChat(messages, kwargs, tools);
  }
  detokenize(tokens: readonly number[], context?: readonly number[]): string {
    return this.tokenizer.detokenize(tokens, context);
  }
  tokenText(token: number): string {
    return this.tokenizer.tokenText(token);
  }

  tokenBytes(token: number, text?: string): number[] {
    return this.tokenizer.tokenBytes(token, text);
  }
  isEndOfGeneration(token: number): boolean {
    return this.tokenizer.isEndOfGeneration(token);
  }

  /** Why the model cannot serve (its RPC server failed), or null. */
  get unavailable(): string | null {
    return this.failed;
  }

  private failure(): FlockError {
    return new FlockError("unavailable", `model ${this.id} is unavailable: ${this.failed}`);
  }

  /**
   * After each decode of a model whose layers RPC servers hold: a server that failed during it
   * left zeros for results, so the decode fails, and so does every request after it. The layers
   * the server held are gone with it: server/server.ts loads the model again once it is back.
   */
  private checkRpc(): FlockError | null {
    if (!this.failed) {
      const failed = this.rpc!.failed(this.rpc!.endpoints);
      if (failed.length === 0) return null;
      this.failed = `the RPC server${failed.length > 1 ? "s" : ""} ${failed.join(", ")} holding its layers failed`;
      this.pool.rejectWaiters(this.failure());
    }
    return this.failure();
  }

  /**
   * Waits for an idle sequence, preferring the one whose cached tokens share the longest prefix
   * with `prompt` (SequencePool.acquire: bounded queue, `overloaded` past maxQueue waiters).
   */
  acquire(prompt: readonly number[], signal?: AbortSignal): Promise<Sequence> {
    if (this.failed) return Promise.reject(this.failure());
    if (this.disposed) return Promise.reject(new FlockError("unavailable", `model ${this.id} is shutting down`));
    return this.pool.acquire(prompt, signal);
  }

  /** Whether the context has been freed (shutdown, or a retired variant). */
  get isDisposed(): boolean {
    return this.disposed;
  }

  /**
   * Disposes the context once no request holds a sequence. For contexts replaced while requests
   * may still be using them; a request that was handed this context just before still gets its
   * sequence (the first check waits a macrotask, past the microtasks between lookup and acquire).
   */
  retire(): void {
    this.pool.onAllIdle = () => void this[Symbol.asyncDispose]();
    setImmediate(() => {
      if (this.pool.running === 0 && this.pool.waiting === 0) void this[Symbol.asyncDispose]();
    });
  }

  async [Symbol.asyncDispose](): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    this.pool.rejectWaiters(new FlockError("unavailable", `model ${this.id} is shutting down`));
    await this.batches?.idle();
    await this.context.dispose();
    // Only now: until the context is freed, llama.cpp's context points at the adapters.
    await this.adapters?.release();
  }
}
