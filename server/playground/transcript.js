// @ts-check
// One streamed answer, token by token: the text and logprobs OpenAI's chunks carry, and the
// per-token detail of flock's response extension (speculative origin, fusion expert and α,
// routed experts), joined by position. Each list arrives in generation order, so entry i of every
// list is generated token i; text may lag behind the detail (stop sequences are held back) and
// never arrives for the end-of-generation token, which the detail still accounts for.

/**
 * @typedef {{ token: number, text: string, draft_probability: number, acceptance_probability: number, predicted_acceptance?: number }} RejectedCandidate
 * @typedef {{ origin: "accepted" | "forced" | "recovered" | "bonus", round: number, drafted: number, draft_probability?: number, acceptance_probability?: number, predicted_acceptance?: number, rejected?: RejectedCandidate }} SpeculativeDetail
 * @typedef {{ expert: string | null, alpha: number }} FusionDetail
 * @typedef {Array<{ expert: string, weight: number }>} ExpertWeights
 * @typedef {{ experts: ExpertWeights, groups?: Record<string, ExpertWeights> } | null} RoutingDetail
 * @typedef {{ text: string, logprob: number }} Alternative
 * @typedef {{
 *   text: string | null,
 *   logprob: number | null,
 *   top: Alternative[],
 *   speculative?: SpeculativeDetail,
 *   fusion?: FusionDetail,
 *   routing?: RoutingDetail,
 * }} TokenRecord
 * @typedef {"speculative" | "fusion" | "routing"} Feature
 */

/** @type {Feature[]} */
export const FEATURES = ["speculative", "fusion", "routing"];

export class Transcript {
  /** @param {"chat" | "completion"} endpoint */
  constructor(endpoint) {
    this.endpoint = endpoint;
    /** @type {TokenRecord[]} */
    this.tokens = [];
    /** The answer's text as the deltas carry it (stop sequences already cut). */
    this.content = "";
    /** @type {string | null} */
    this.finishReason = null;
    /** The final chunk's `flock` extension (summaries, and the whole detail again). @type {any} */
    this.summary = null;
    /** @type {{ prompt_tokens: number, completion_tokens: number } | null} */
    this.usage = null;
    /** Tokens with text so far; the rest of `tokens` are known only from the detail. */
    this.released = 0;
    /** @type {Record<Feature, number>} */
    this.cursors = { speculative: 0, fusion: 0, routing: 0 };
    /** The lowest token index changed since the view last drew (Infinity: nothing). */
    this.dirtyFrom = Infinity;
    this.startedAt = performance.now();
    /** @type {number | null} */
    this.firstTokenAt = null;
    /** @type {number | null} */
    this.lastTokenAt = null;
  }

  /** @param {number} i */
  slot(i) {
    while (this.tokens.length <= i) this.tokens.push({ text: null, logprob: null, top: [] });
    this.dirtyFrom = Math.min(this.dirtyFrom, i);
    return this.tokens[i];
  }

  /**
   * Folds one stream event into the transcript.
   * @param {any} chunk
   */
  add(chunk) {
    if (chunk.usage) this.usage = chunk.usage;
    const choice = chunk.choices?.[0];
    if (!choice) return;
    const before = this.tokens.length;
    if (choice.finish_reason) {
      this.finishReason = choice.finish_reason;
      this.summary = chunk.flock ?? null;
      // The final summary repeats the whole detail: fill in whatever a chunk did not carry.
      for (const feature of FEATURES) {
        const all = this.summary?.[feature]?.tokens;
        if (Array.isArray(all)) this.addDetail(feature, all.slice(this.cursors[feature]));
      }
    } else {
      this.addText(choice);
      for (const feature of FEATURES) {
        const tokens = chunk.flock?.[feature]?.tokens;
        if (Array.isArray(tokens)) this.addDetail(feature, tokens);
      }
    }
    if (this.tokens.length > before) {
      this.lastTokenAt = performance.now();
      this.firstTokenAt ??= this.lastTokenAt;
    }
  }

  /** @param {any} choice */
  addText(choice) {
    const text = this.endpoint === "chat" ? choice.delta?.content : choice.text;
    if (typeof text === "string") this.content += text;
    // Tool calls arrive whole at the end of the choice: the name, then the arguments.
    for (const call of (this.endpoint === "chat" && choice.delta?.tool_calls) || []) {
      if (call.function?.name) this.content += `${this.content ? "\n" : ""}→ ${call.function.name} `;
      if (call.function?.arguments) this.content += call.function.arguments;
    }
    for (const entry of logprobEntries(this.endpoint, choice.logprobs)) {
      Object.assign(this.slot(this.released++), entry);
    }
  }

  /**
   * @param {Feature} feature
   * @param {any[]} entries
   */
  addDetail(feature, entries) {
    for (const entry of entries) this.slot(this.cursors[feature]++)[feature] = entry;
  }

  get done() {
    return this.finishReason !== null;
  }

  /** Which features reported per-token detail. */
  get features() {
    return FEATURES.filter((f) => this.cursors[f] > 0 || this.summary?.[f]);
  }

  /** Decode speed after the first token, in tokens per second (null until there are two). */
  get tokensPerSecond() {
    if (this.firstTokenAt === null || this.lastTokenAt === null || this.tokens.length < 2) return null;
    const seconds = (this.lastTokenAt - this.firstTokenAt) / 1000;
    return seconds > 0 ? (this.tokens.length - 1) / seconds : null;
  }

  /** Rounds from the per-token detail: what the draft proposed and what survived. */
  rounds() {
    /** @type {Array<{ drafted: number, accepted: number, emitted: number }>} */
    const rounds = [];
    for (const t of this.tokens) {
      const s = t.speculative;
      if (!s) continue;
      const r = (rounds[s.round] ??= { drafted: s.drafted, accepted: 0, emitted: 0 });
      r.emitted++;
      if (s.origin === "accepted" || s.origin === "forced") r.accepted++;
    }
    return rounds.filter((r) => r !== undefined);
  }

  /** Speculative figures so far: from the detail while streaming, the server's own at the end. */
  speculativeStats() {
    const rounds = this.rounds();
    const final = this.summary?.speculative;
    const drafted = final ? final.drafted_tokens : rounds.reduce((a, r) => a + r.drafted, 0);
    const accepted = final ? final.accepted_tokens : rounds.reduce((a, r) => a + r.accepted, 0);
    const count = final ? final.rounds : rounds.length;
    let predicted = 0;
    let actual = 0;
    let judged = 0;
    for (const t of this.tokens) {
      const s = t.speculative;
      const j = s?.origin === "accepted" ? s : s?.rejected;
      if (j?.predicted_acceptance === undefined || j.acceptance_probability === undefined) continue;
      predicted += j.predicted_acceptance;
      actual += j.acceptance_probability;
      judged++;
    }
    return {
      rounds: count,
      drafted,
      accepted,
      acceptanceRate: drafted > 0 ? accepted / drafted : null,
      meanCandidateLength: count > 0 ? drafted / count : null,
      tokensPerRound: count > 0 ? this.tokens.filter((t) => t.speculative).length / count : null,
      meanPredicted: judged > 0 ? predicted / judged : null,
      meanAcceptance: judged > 0 ? actual / judged : null,
    };
  }

  /** α at every fused token, with its expert. */
  alphas() {
    return this.tokens.flatMap((t) => (t.fusion ? [t.fusion] : []));
  }

  /**
   * Tokens per expert: the active fusion expert of each token ("none": α = 0), or for routed
   * models the summed routing weight of each expert over the tokens (top-k weights sum to 1).
   * @returns {{ kind: "fusion" | "routing", usage: Map<string, number> } | null}
   */
  expertUsage() {
    const usage = new Map();
    if (this.cursors.routing > 0) {
      for (const t of this.tokens) for (const e of t.routing?.experts ?? []) usage.set(e.expert, (usage.get(e.expert) ?? 0) + e.weight);
      return { kind: "routing", usage };
    }
    if (this.cursors.fusion > 0) {
      for (const t of this.tokens) if (t.fusion) usage.set(t.fusion.expert ?? "none", (usage.get(t.fusion.expert ?? "none") ?? 0) + 1);
      return { kind: "fusion", usage };
    }
    return null;
  }
}

/**
 * Per-token text, logprob and alternatives, from either endpoint's logprobs shape.
 * @param {"chat" | "completion"} endpoint
 * @param {any} logprobs
 * @returns {Array<{ text: string, logprob: number, top: Alternative[] }>}
 */
export function logprobEntries(endpoint, logprobs) {
  if (!logprobs) return [];
  if (endpoint === "chat") {
    return (logprobs.content ?? []).map((/** @type {any} */ e) => ({
      text: e.token,
      logprob: e.logprob,
      top: (e.top_logprobs ?? []).map((/** @type {any} */ t) => ({ text: t.token, logprob: t.logprob })),
    }));
  }
  const tokens = logprobs.tokens ?? [];
  return tokens.map((/** @type {string} */ text, /** @type {number} */ i) => ({
    text,
    logprob: logprobs.token_logprobs?.[i] ?? null,
    top: Object.entries(logprobs.top_logprobs?.[i] ?? {}).map(([t, lp]) => ({ text: t, logprob: Number(lp) })),
  }));
}
