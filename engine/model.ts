// A served model: weights plus one context whose sequences are pooled, with the tokenizer and
// detokenizer that decoding needs (the chat template is chat-template.ts).
import { type LlamaContext, type LlamaModel, type Token } from "node-llama-cpp";
import { BatchDecoder, BatchedSequence } from "./batch.js";
import { type ChatMessage, ChatTemplate, type RenderedPrompt, type TemplateKwargs, type ToolDefinition } from "./chat-template.js";
import { FlockError } from "./errors.js";
import { GrammarCompiler } from "./grammar.js";
import { type FusionGridKernel, fusionGridKernel, grammarKernels, type RawOutputs, rawOutputs, type RoutedLoraConfig, setRoutedLoras } from "./native.js";
import { EngineSequence, NodeLlamaCppSequence, type SequenceCache, sharedPrefixLength } from "./sequence.js";

export type { ChatMessage, RenderedPrompt, ToolCall, ToolCallSyntax, ToolDefinition } from "./chat-template.js";

interface Waiter {
  prompt: readonly number[];
  /** performance.now() when it started waiting (queue time). */
  since: number;
  resolve: (seq: EngineSequence) => void;
  reject: (err: unknown) => void;
  signal?: AbortSignal;
  onAbort?: () => void;
}

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
  /** RPC servers ("host:port") that hold the model's layers. */
  rpc?: readonly string[];
}

/** The smallest context "auto" settles for before loading fails for lack of memory. */
const MIN_AUTO_CONTEXT = 1024;

export class LoadedModel {
  private readonly free: SequenceCache[] = [];
  /** Every sequence of the context, busy or free (their KV cells, for kvCacheUsage). */
  private readonly sequences: SequenceCache[] = [];
  /** Decodes for the sequences on flock's contexts (none on node-llama-cpp's fallback path). */
  private readonly batches: BatchDecoder | null = null;
  private readonly waiters: Waiter[] = [];
  private readonly chatTemplate: ChatTemplate;
  private disposed = false;
  private retiring = false;
  /** Why the model cannot serve (an RPC server that holds its layers failed); null while it can. */
  private failed: string | null = null;
  /** Choices admitted by `admit` and not yet done (running or waiting). */
  private admitted = 0;
  /** Compiles grammars for constrained decoding; null where the build lacks the grammar kernels. */
  readonly grammars: GrammarCompiler | null;
  /** Told how long each acquisition waited for a sequence, in seconds (0 when one was idle). */
  onAcquire: ((waitedSeconds: number) => void) | null = null;
  /** Told how many sequences each llama.cpp batch of this context carries (flock's contexts only). */
  set onBatch(observer: ((sequences: number) => void) | null) {
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
    private readonly outputs?: RawOutputs,
    /** The RPC servers that hold its layers and which of them failed since they connected. */
    private readonly rpc?: { endpoints: readonly string[]; failed: (endpoints: readonly string[]) => string[] },
  ) {
    if (outputs) {
      // flock drives the context's sequence ids 0…parallel−1 itself (engine/batch.ts).
      const batches = (this.batches = new BatchDecoder(context, outputs, () => this.runningSequences, rpc ? () => this.checkRpc() : undefined));
      for (let id = 0; id < parallel; id++) this.sequences.push(new BatchedSequence(batches, id));
    } else {
      for (let i = 0; i < parallel; i++) this.sequences.push(new NodeLlamaCppSequence(context.getSequence(), this.vocabularySize));
    }
    this.free.push(...this.sequences);
    this.chatTemplate = new ChatTemplate(id, weights);
    const kernels = grammarKernels(weights.llama);
    this.grammars = kernels ? new GrammarCompiler(weights, kernels) : null;
  }

  static async create(
    weights: LlamaModel,
    entry: ModelLoadOptions,
    threads: number,
    capabilities: Capabilities,
    options: { hiddenStates?: boolean; routing?: RoutedLoraConfig; rpcFailed?: (endpoints: readonly string[]) => string[] } = {},
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
      lora: entry.lora.length > 0 ? { adapters: entry.lora.map((l) => ({ filePath: l.path, scale: l.scale })) } : undefined,
      failedCreationRemedy: false,
    });
    // Routing traces travel with the hidden states, so a traced routed context has both.
    const traced = options.routing?.trace === true;
    const hasHiddenStates = capabilities.rawLogits && (options.hiddenStates === true || traced);
    const outputs = capabilities.rawLogits ? rawOutputs(context, { hiddenStates: hasHiddenStates, routedAdapters: traced ? options.routing!.adapters.length : 0 }) : undefined;
    if (options.routing) {
      try {
        setRoutedLoras(context, options.routing);
      } catch (cause) {
        await context.dispose();
        throw new FlockError("invalid_request", `model ${entry.id}: routed LoRA could not be set up (${(cause as Error).message})`, null, { cause });
      }
    }
    const rpc = entry.rpc?.length && options.rpcFailed ? { endpoints: entry.rpc, failed: options.rpcFailed } : undefined;
    if (entry.rpc?.length && !(rpc && outputs)) {
      await context.dispose();
      throw new FlockError("unsupported", `model ${entry.id}: serving over RPC needs flock's native build (run npm run build:native)`);
    }
    return new LoadedModel(entry.id, weights, context, entry.parallel, threads, capabilities.rawLogits, entry.maxQueue ?? Infinity, hasHiddenStates, outputs, rpc);
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
    return this.weights.fileInfo.metadata.tokenizer?.ggml?.tokens?.length ?? 0;
  }
  get gpuLayers(): number {
    return this.weights.gpuLayers;
  }
  get chatTemplateName(): string {
    return this.chatTemplate.name;
  }
  /** Sequences not serving a request right now. */
  get idleSequences(): number {
    return this.free.length;
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
    const held = this.sequences.reduce((sum, seq) => sum + seq.tokens.length, 0);
    return held / (this.context.contextSize * this.parallel);
  }
  /** Sequences serving a request right now. */
  get runningSequences(): number {
    return this.parallel - this.free.length;
  }
  /** Acquisitions waiting for a sequence. */
  get waitingSequences(): number {
    return this.waiters.length;
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
    if (this.admitted + choices > this.parallel + this.maxQueue) return null;
    this.admitted += choices;
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.admitted -= choices;
    };
  }
  /** Most choices one request can ever be admitted with. */
  get capacity(): number {
    return this.parallel + this.maxQueue;
  }

  /** flock's compiled fusion-objective kernel, when the native addon is loaded. */
  get fusionGridKernel(): FusionGridKernel | undefined {
    return this.rawLogits ? fusionGridKernel(this.context) : undefined;
  }

  /** Whether `other` tokenizes identically (same token texts in the same order). */
  sameVocabulary(other: LoadedModel): boolean {
    const mine = this.weights.fileInfo.metadata.tokenizer?.ggml?.tokens;
    const theirs = other.weights.fileInfo.metadata.tokenizer?.ggml?.tokens;
    return mine !== undefined && theirs !== undefined && mine.length === theirs.length && mine.every((t, i) => t === theirs[i]);
  }

  private longestTokenBytes: number | undefined;

  /**
   * An upper bound on the bytes of text one token stands for: the UTF-8 length of the longest
   * token text in the vocabulary, plus one for a leading space a tokenizer may add (byte-level
   * BPE spells each byte with one character, SentencePiece spells a space as three bytes, byte
   * tokens as six: none is shorter than what it decodes to). Infinity without the token list.
   */
  get maxTokenBytes(): number {
    if (this.longestTokenBytes === undefined) {
      const tokens = this.weights.fileInfo.metadata.tokenizer?.ggml?.tokens;
      this.longestTokenBytes = tokens && tokens.length > 0 ? tokens.reduce((m, t) => Math.max(m, Buffer.byteLength(t)), 0) + 1 : Infinity;
    }
    return this.longestTokenBytes;
  }

  /** Tokenizes user text; special-token text in it stays plain text. Adds BOS as the model wants. */
  tokenizePrompt(text: string): number[] {
    return this.tokenize(text, { addSpecial: true, parseSpecial: false });
  }

  /**
   * Tokenizes text as llama-server's /tokenize does: BOS only with `addSpecial` (and when the
   * model wants one), special-token text parsed as those tokens with `parseSpecial`.
   */
  tokenize(text: string, options: { addSpecial: boolean; parseSpecial: boolean }): number[] {
    const tokens: number[] = this.weights.tokenize(text, options.parseSpecial);
    const bos = this.weights.tokens.bos;
    return options.addSpecial && this.weights.tokens.shouldPrependBosToken && bos !== null ? [bos, ...tokens] : tokens;
  }

  /** Renders a conversation with the model's own chat template, ready for the assistant's turn. */
  renderChat(messages: readonly ChatMessage[], kwargs?: TemplateKwargs, tools?: readonly ToolDefinition[]): RenderedPrompt {
    return this.chatTemplate.render(messages, kwargs, tools);
  }

  detokenize(tokens: readonly number[], context?: readonly number[]): string {
    return this.weights.detokenize(tokens as Token[], false, context as Token[] | undefined);
  }

  /** A token's own text, special tokens spelled out (for logprobs). */
  tokenText(token: number): string {
    return this.weights.detokenize([token as Token], true);
  }

  isEndOfGeneration(token: number): boolean {
    return this.weights.isEogToken(token as Token);
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
      this.rejectWaiters(this.failure());
    }
    return this.failure();
  }

  /**
   * Waits for an idle sequence, preferring the one whose cached tokens share the longest prefix
   * with `prompt` (its KV cache is reused). Rejects when `signal` aborts while waiting, and with
   * `overloaded` when maxQueue acquisitions are already waiting (the queue is bounded: a server
   * that accepts everything only converts overload into timeouts).
   */
  acquire(prompt: readonly number[], signal?: AbortSignal): Promise<EngineSequence> {
    if (this.failed) return Promise.reject(this.failure());
    if (this.disposed) return Promise.reject(new FlockError("unavailable", `model ${this.id} is shutting down`));
    if (signal?.aborted) return Promise.reject(signal.reason);
    const seq = this.takeBestFree(prompt);
    if (seq) {
      this.onAcquire?.(0);
      return Promise.resolve(this.wrap(seq));
    }
    if (this.waiters.length >= this.maxQueue) {
      return Promise.reject(new FlockError("overloaded", `model ${this.id} is busy: ${this.waiters.length} requests are already waiting; retry shortly`));
    }
    return new Promise((resolve, reject) => {
      const waiter: Waiter = { prompt, since: performance.now(), resolve, reject, signal };
      if (signal) {
        waiter.onAbort = () => {
          const i = this.waiters.indexOf(waiter);
          if (i >= 0) this.waiters.splice(i, 1);
          reject(signal.reason);
        };
        signal.addEventListener("abort", waiter.onAbort, { once: true });
      }
      this.waiters.push(waiter);
    });
  }

  private takeBestFree(prompt: readonly number[]): SequenceCache | undefined {
    if (this.free.length === 0) return undefined;
    let best = 0;
    let bestShared = -1;
    this.free.forEach((seq, i) => {
      const shared = sharedPrefixLength(seq.tokens, prompt);
      if (shared > bestShared) [best, bestShared] = [i, shared];
    });
    return this.free.splice(best, 1)[0];
  }

  private wrap(seq: SequenceCache): EngineSequence {
    return new EngineSequence(seq, this.contextSize, this.rawLogits, () => this.release(seq), this.outputs?.recycle);
  }

  private release(seq: SequenceCache): void {
    const waiter = this.waiters.shift();
    if (!waiter) {
      this.free.push(seq);
      if (this.retiring && this.free.length === this.parallel) void this[Symbol.asyncDispose]();
      return;
    }
    if (waiter.onAbort) waiter.signal?.removeEventListener("abort", waiter.onAbort);
    this.onAcquire?.((performance.now() - waiter.since) / 1000);
    waiter.resolve(this.wrap(seq));
  }

  /** Every waiting acquisition fails with `err`. */
  private rejectWaiters(err: FlockError): void {
    for (const waiter of this.waiters.splice(0)) {
      if (waiter.onAbort) waiter.signal?.removeEventListener("abort", waiter.onAbort);
      waiter.reject(err);
    }
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
    this.retiring = true;
    setImmediate(() => {
      if (this.free.length === this.parallel && this.waiters.length === 0) void this[Symbol.asyncDispose]();
    });
  }

  async [Symbol.asyncDispose](): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    this.rejectWaiters(new FlockError("unavailable", `model ${this.id} is shutting down`));
    await this.batches?.idle();
    await this.context.dispose();
  }
}
