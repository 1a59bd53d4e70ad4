// OpenAI response and chunk shapes, built from decode steps.
import { randomUUID } from "node:crypto";
import type { DecodeStep, FinishReason, FusionToken, RoutingToken, SpeculativeTokenDetail, TokenLogprob } from "../decoding/types.js";

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

export function usageOf(promptTokens: number, completionTokens: number): Usage {
  return { prompt_tokens: promptTokens, completion_tokens: completionTokens, total_tokens: promptTokens + completionTokens };
}

export function completionId(kind: "chatcmpl" | "cmpl"): string {
  return `${kind}-${randomUUID().replaceAll("-", "")}`;
}

export const nowSeconds = (): number => Math.floor(Date.now() / 1000);

const bytesOf = (text: string): number[] => [...Buffer.from(text, "utf8")];

/** Chat `logprobs.content` entries. */
export function chatLogprobs(entries: readonly TokenLogprob[]) {
  return entries.map((e) => ({
    token: e.text,
    logprob: e.logprob,
    bytes: e.bytes ?? bytesOf(e.text),
    top_logprobs: e.top.map((t) => ({ token: t.text, logprob: t.logprob, bytes: t.bytes ?? bytesOf(t.text) })),
  }));
}

/** Legacy completions `logprobs` object; `offset` is where this text starts in the choice. */
export function completionLogprobs(entries: readonly TokenLogprob[], offset: number) {
  const text_offset: number[] = [];
  let at = offset;
  for (const e of entries) {
    text_offset.push(at);
    at += e.text.length;
  }
  return {
    tokens: entries.map((e) => e.text),
    token_logprobs: entries.map((e) => e.logprob),
    top_logprobs: entries.map((e) => Object.fromEntries(e.top.map((t) => [t.text, t.logprob]))),
    text_offset,
  };
}

/** Speculative counters of one choice or a whole response, and its per-token detail when the decoder reported it. */
export class SpeculativeTally {
  rounds = 0;
  drafted = 0;
  /** Of the drafted, text a grammar forced (proposed without the draft). */
  forced = 0;
  accepted = 0;
  /** How the rounds were verified (one mode per request). */
  verification: "rejection" | "coupled" | null = null;
  readonly tokens: SpeculativeTokenDetail[] = [];
  /** Candidates and accepted ones by proposer: the draft (with the grammar's), or text (lookup, a prediction). */
  readonly bySource = new Map<string, { drafted: number; accepted: number }>();

  add(other: {
    drafted: number;
    forced?: number;
    accepted: number;
    rounds?: number;
    verification?: "rejection" | "coupled" | null;
    detail?: readonly SpeculativeTokenDetail[];
    source?: string;
    bySource?: ReadonlyMap<string, { drafted: number; accepted: number }>;
  }): void {
    this.rounds += other.rounds ?? 1;
    this.verification = other.verification ?? this.verification;
    this.drafted += other.drafted;
    this.forced += other.forced ?? 0;
    this.accepted += other.accepted;
    if (other.detail) this.tokens.push(...other.detail);
    const counts = other.bySource ?? new Map([[other.source ?? "draft", { drafted: other.drafted, accepted: other.accepted }]]);
    for (const [source, n] of counts) {
      const known = this.bySource.get(source) ?? { drafted: 0, accepted: 0 };
      this.bySource.set(source, { drafted: known.drafted + n.drafted, accepted: known.accepted + n.accepted });
    }
  }

  /** Per proposer, once text (lookup, a prediction) has proposed anything. */
  private sources() {
    const text = [...this.bySource].some(([source, n]) => source !== "draft" && n.drafted > 0);
    if (!text) return {};
    const sources = Object.fromEntries([...this.bySource].filter(([, n]) => n.drafted > 0).map(([source, n]) => [source, { drafted_tokens: n.drafted, accepted_tokens: n.accepted }]));
    return { sources };
  }

  /** The `flock.speculative` response extension; per-token detail when asked for. */
  summary(detail: boolean) {
    return {
      ...(this.verification ? { verification: this.verification } : {}),
      rounds: this.rounds,
      drafted_tokens: this.drafted,
      forced_tokens: this.forced,
      accepted_tokens: this.accepted,
      acceptance_rate: this.drafted === 0 ? 0 : this.accepted / this.drafted,
      mean_candidate_length: this.rounds === 0 ? 0 : this.drafted / this.rounds,
      ...this.sources(),
      ...(detail ? { tokens: this.tokens.map(speculativeTokenJSON) } : {}),
    };
  }

  toJSON() {
    return this.summary(false);
  }
}

/** One token of `flock.speculative.tokens`, in the API's snake_case. */
export function speculativeTokenJSON(d: SpeculativeTokenDetail) {
  const judged = (j: { draftProbability?: number; acceptanceProbability?: number; predictedAcceptance?: number }) => ({
    ...(j.draftProbability !== undefined ? { draft_probability: j.draftProbability } : {}),
    ...(j.acceptanceProbability !== undefined ? { acceptance_probability: j.acceptanceProbability } : {}),
    ...(j.predictedAcceptance !== undefined ? { predicted_acceptance: j.predictedAcceptance } : {}),
  });
  return {
    origin: d.origin,
    round: d.round,
    drafted: d.drafted,
    ...judged(d),
    ...(d.rejected ? { rejected: { token: d.rejected.token, text: d.rejected.text, ...judged(d.rejected) } } : {}),
  };
}

/** Fusion summary of one choice or a whole response: steps per active expert, mean α. */
export class FusionTally {
  readonly tokens: FusionToken[] = [];

  add(tokens: readonly FusionToken[]): void {
    this.tokens.push(...tokens);
  }

  /** The `flock.fusion` response extension; per-token detail when asked for. */
  summary(detail: boolean) {
    const experts: Record<string, number> = {};
    for (const t of this.tokens) experts[t.expert ?? "none"] = (experts[t.expert ?? "none"] ?? 0) + 1;
    const meanAlpha = this.tokens.length === 0 ? 0 : this.tokens.reduce((a, t) => a + t.alpha, 0) / this.tokens.length;
    return { steps: this.tokens.length, experts, mean_alpha: meanAlpha, ...(detail ? { tokens: this.tokens } : {}) };
  }
}

/** Expert usage of one choice or a whole response (each token: mean weight over the routed modules). */
export class RoutingTally {
  readonly tokens: Array<RoutingToken | null> = [];

  add(tokens: ReadonlyArray<RoutingToken | null>): void {
    this.tokens.push(...tokens);
  }

  /**
   * The `flock.routing` response extension: per expert, the tokens it had weight on and its
   * share of all known tokens' weight (shares sum to 1); per-token detail when asked for.
   */
  summary(options: RoutingExtension, detail: boolean) {
    const experts: Record<string, { tokens: number; share: number }> = {};
    const known = this.tokens.filter((t) => t !== null);
    for (const t of known) {
      for (const { expert, weight } of t.experts) {
        const e = (experts[expert] ??= { tokens: 0, share: 0 });
        e.tokens += 1;
        e.share += weight;
      }
    }
    // Divided once at the end: a sole expert's share is exactly 1, not a sum of rounded 1/n.
    for (const e of Object.values(experts)) e.share /= known.length;
    return {
      mode: options.mode,
      method: options.method,
      tokens_reported: known.length,
      experts,
      ...(detail ? { tokens: this.tokens } : {}),
    };
  }
}

export interface RoutingExtension {
  mode: string;
  method: string;
}

/** Accumulates one choice. */
export class ChoiceAccumulator {
  text = "";
  tokens = 0;
  logprobs: TokenLogprob[] = [];
  finishReason: FinishReason | null = null;
  speculative: SpeculativeTally | null = null;
  fusion: FusionTally | null = null;
  routing: RoutingTally | null = null;

  /**
   * `keepLogprobs`: whether the whole response needs them at the end; a stream sends each step's
   * as it goes, and keeping them all (20 alternatives a token) would cost megabytes per choice.
   */
  constructor(private readonly keepLogprobs = true) {}

  add(step: DecodeStep): void {
    this.text += step.text;
    this.tokens += step.tokens.length;
    if (step.logprobs && this.keepLogprobs) this.logprobs.push(...step.logprobs);
    if (step.finishReason) this.finishReason = step.finishReason;
    if (step.speculative) (this.speculative ??= new SpeculativeTally()).add(step.speculative);
    if (step.fusion) (this.fusion ??= new FusionTally()).add(step.fusion);
    if (step.routing) (this.routing ??= new RoutingTally()).add(step.routing);
  }
}

export interface ExtensionOptions {
  /** flock.speculative.detail: how each token came to be. */
  speculativeDetail?: boolean;
  /** flock.fusion.detail: per-token fusion choices. */
  fusionDetail?: boolean;
  /** Routed models: the request's routing mode and the pipeline's method. */
  routing?: RoutingExtension;
  /** flock.routing.detail: per-token experts. */
  routingDetail?: boolean;
}

/** The response-level `flock` extension, or nothing when no feature reported anything. */
export function responseExtension(choices: readonly ChoiceAccumulator[], options: ExtensionOptions = {}): { flock?: object } {
  const flock: Record<string, object> = {};
  const speculative = choices.filter((c) => c.speculative);
  if (speculative.length > 0) {
    const detail = options.speculativeDetail === true;
    if (choices.length === 1) flock.speculative = speculative[0].speculative!.summary(detail);
    else {
      const total = new SpeculativeTally();
      for (const c of speculative) total.add(c.speculative!);
      flock.speculative = { ...total.summary(false), ...(detail ? { choices: speculative.map((c) => c.speculative!.summary(true)) } : {}) };
    }
  }
  const fused = choices.filter((c) => c.fusion);
  if (fused.length > 0) {
    if (choices.length === 1) flock.fusion = fused[0].fusion!.summary(options.fusionDetail === true);
    else flock.fusion = { ...mergeFusion(fused).summary(false), ...(options.fusionDetail ? { choices: fused.map((c) => c.fusion!.summary(true)) } : {}) };
  }
  const routed = choices.filter((c) => c.routing);
  if (routed.length > 0 && options.routing) {
    const detail = options.routingDetail === true;
    if (choices.length === 1) flock.routing = routed[0].routing!.summary(options.routing, detail);
    else {
      const total = new RoutingTally();
      for (const c of routed) total.add(c.routing!.tokens);
      flock.routing = { ...total.summary(options.routing, false), ...(detail ? { choices: routed.map((c) => c.routing!.summary(options.routing!, true)) } : {}) };
    }
  }
  return Object.keys(flock).length > 0 ? { flock } : {};
}

function mergeFusion(choices: readonly ChoiceAccumulator[]): FusionTally {
  const total = new FusionTally();
  for (const c of choices) total.add(c.fusion!.tokens);
  return total;
}

/** The `flock` extension on a choice's final stream chunk. */
export function choiceExtension(choice: ChoiceAccumulator, options: ExtensionOptions = {}): { flock?: object } {
  const flock: Record<string, object> = {};
  if (choice.speculative) flock.speculative = choice.speculative.summary(options.speculativeDetail === true);
  if (choice.fusion) flock.fusion = choice.fusion.summary(options.fusionDetail === true);
  if (choice.routing && options.routing) flock.routing = choice.routing.summary(options.routing, options.routingDetail === true);
  return Object.keys(flock).length > 0 ? { flock } : {};
}

/**
 * The `flock` extension of a stream chunk that carries a decode step: the step's tokens' detail,
 * for each feature whose detail the request asked for, so a client sees it as it happens. The
 * choice's final chunk repeats all of it in the summary.
 */
export function stepExtension(step: DecodeStep, options: ExtensionOptions = {}): { flock?: object } {
  const flock: Record<string, object> = {};
  if (options.speculativeDetail && step.speculative?.detail?.length) flock.speculative = { tokens: step.speculative.detail.map(speculativeTokenJSON) };
  if (options.fusionDetail && step.fusion?.length) flock.fusion = { tokens: step.fusion };
  if (options.routingDetail && step.routing?.length) flock.routing = { tokens: step.routing };
  return Object.keys(flock).length > 0 ? { flock } : {};
}

/**
 * A stream chunk builder for choice `index`: the endpoint's envelope (id, object, created,
 * model), that choice's fields, `usage: null` when the client asked for usage, then extras.
 */
export function chunkFor(envelope: object, usageField: object, index: number): (fields: object, extra?: object) => object {
  return (fields, extra = {}) => ({ ...envelope, choices: [{ index, ...fields }], ...usageField, ...extra });
}

/**
 * The stream chunks of one decode step: its content, when it has text, logprobs or detail to
 * show (a step whose text is held back, or that ended with EOS, still reports its tokens'
 * detail), and the choice's finish chunk when the step ends it. `content` and `finish` give
 * the choice fields each endpoint spells its own way (`delta` for chat, `text` for completions).
 */
export function streamedStep(
  chunk: (choice: object, extra: object) => object,
  step: DecodeStep,
  choice: ChoiceAccumulator,
  options: ExtensionOptions,
  content: () => object,
  finish: object,
): object[] {
  const chunks: object[] = [];
  const detail = stepExtension(step, options);
  if (step.text.length > 0 || (step.logprobs?.length ?? 0) > 0 || detail.flock) chunks.push(chunk({ ...content(), finish_reason: null }, detail));
  if (step.finishReason) chunks.push(chunk({ ...finish, finish_reason: step.finishReason }, choiceExtension(choice, options)));
  return chunks;
}
