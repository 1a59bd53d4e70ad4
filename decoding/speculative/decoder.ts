// The speculative decoder: a draft model proposes candidates (as many as the candidate-length
// policy allows), the target scores them all in one batch, the verifier keeps a lossless prefix —
// by rejection sampling, or by coupled keyed noise (verifier.ts has both).
//
// Cache invariants, with `all` = prompt + generated tokens:
// - the target's cache holds a prefix of `all`; each round evaluates the committed tokens it
//   lacks (at least the last one) followed by the candidates, with logits at every position
//   from the last committed token on;
// - the draft's cache likewise holds a prefix of `all` (plus candidates from the last round,
//   rolled back to what was accepted); each round it catches up, then drafts.
import { constrainedDraw, type TokenConstraint } from "../constraint.js";
import { TokenHistory } from "../history.js";
import type { Sequence } from "../../engine/sequence.js";
import type { Rng } from "../rng.js";
import { type TokenDraws, tokenDraws } from "../noise.js";
import { OutputAssembler } from "../output.js";
import { describeLogprobs, type LogprobModel } from "../plain.js";
import { adjustLogits, drawFrom, samplingDistribution, type SamplingParams, softmax } from "../sampler.js";
import type { DecodeStep, DecodingModel, GenerationRequest, SpeculativeTokenDetail, TokenOrigin } from "../types.js";
import { candidateFeatures, type DraftFeatures, preDrawFeatures } from "./features.js";
import type { CandidateLengthPolicy } from "./policies.js";
import type { AcceptancePredictor } from "./predictors.js";
import type { RoundCosts } from "./costs.js";
import type { SpeculativeStats } from "./stats.js";
import { type LookupSettings, PromptLookup } from "./lookup.js";
import { oneHot, PredictionAligner } from "./prediction.js";
import { type BufferPool, distributionPool } from "../../engine/buffers.js";
import { samplingRegime } from "./settings.js";
import { EXPLORE_LENGTH, TextAcceptance, type TextProposal, type TextProposer, type TextSource } from "./text-proposals.js";
import { type Verification, type VerificationMode, verify, verifyCoupled } from "./verifier.js";

export interface SpeculativeSetup {
  target: LogprobModel;
  /** Proposes candidates, unless the request brings a prediction or lookup is on (then none is needed). */
  draft: DecodingModel | null;
  /** Prompt lookup's settings: when on, it proposes in the rounds where it promises more than the draft. */
  lookup?: LookupSettings | null;
  /** The model's record of how text proposals fared (it prices them); a fresh one by default. */
  textAcceptance?: TextAcceptance;
  /** A fresh policy for this request (policies keep per-candidate state). */
  policy: CandidateLengthPolicy;
  /** Trained from every verified position; null when the policy uses none. */
  predictor: AcceptancePredictor | null;
  /** Upper bound on the draft's candidates per round whatever the policy says (text proposers cap their own). */
  maxCandidates: number;
  stats: SpeculativeStats;
  /** Timings of draft steps and target passes are recorded here. */
  costs: RoundCosts;
  verification: VerificationMode;
}

/** Recent acceptance starts optimistic and follows the soft labels. */
const RECENT_START = 0.7;
const RECENT_DECAY = 0.9;

/**
 * Evaluates `all`'s tokens the cache lacks (at least the last), then `extra`; returns the
 * logits from the last committed token on, and how many tokens the pass evaluated.
 */
async function catchUp(
  seq: Sequence,
  all: readonly number[],
  extra: readonly number[],
  withHidden = false,
): Promise<{ logits: Float32Array[]; hidden?: Float32Array[]; evaluated: number }> {
  const reuse = Math.min(seq.sharedPrefix(all), all.length - 1);
  await seq.truncate(reuse);
  const feed = all.slice(reuse);
  const tokens = [...feed, ...extra];
  const positions = Array.from({ length: extra.length + 1 }, (_, i) => feed.length - 1 + i);
  const evaluated = feed.length + extra.length;
  if (withHidden) return { ...(await seq.evaluateWithHidden(tokens, positions)), evaluated };
  return { logits: await seq.evaluate(tokens, positions), evaluated };
}

/**
 * One draft step over `tokens` (a candidate, and the text a grammar forces after it, in one
 * batch): the next-token logits after the last, and the hidden state behind them when asked.
 */
async function draftStep(seq: Sequence, tokens: readonly number[], withHidden: boolean): Promise<{ logits: Float32Array; hidden?: Float32Array }> {
  const last = [tokens.length - 1];
  if (!withHidden) return { logits: (await seq.evaluate(tokens, last))[0] };
  const { logits, hidden } = await seq.evaluateWithHidden(tokens, last);
  return { logits: logits[0], hidden: hidden[0] };
}

/**
 * What one round proposes, and what the policy and the predictor saw of it. Under a grammar,
 * wherever it allows a single token, that token is proposed directly, the draft's candidates
 * around it: it needs no draft step (the draft reads it in a batch with the candidate before
 * it), and its proposal is what the masked draft would propose, q one-hot on it; the masked
 * target agrees, so it is always accepted. Per-candidate arrays hold undefined at forced
 * candidates.
 */
interface DraftedRound {
  candidates: number[];
  /** The draft's distribution each candidate was drawn from (rejection sampling reads them). */
  draftDistributions: Array<Float64Array | undefined>;
  features: Array<DraftFeatures | undefined>;
  /** P̂ of each candidate, kept only for detail. */
  predictions: Array<number | undefined>;
  /** The positions of the draft's own candidates, in order (the others were forced). */
  drawnAt: number[];
  /**
   * Constrained requests: the grammar's state before each candidate and after the last (the
   * one before it again when the last ends the generation: nothing follows it).
   */
  states?: TokenConstraint[];
}

/**
 * One round's candidates after `all`, at most `budget`: with `drawing`, the draft's, as many as
 * the policy allows. Every candidate drawn is proposed: the policy decides whether to draft a
 * position before its draw, and only whether to draft another after it (policies.ts says why).
 * The policy counts the draft's candidates only (k is the k-th drawn).
 */
async function draftRound(round: {
  setup: SpeculativeSetup;
  seq: Sequence;
  all: readonly number[];
  history: TokenHistory;
  params: SamplingParams;
  draws: TokenDraws;
  coupled: boolean;
  budget: number;
  /** Whether the draft proposes this round (the policy may skip rounds; forced text needs no draft). */
  drawing: boolean;
  /** Recent acceptance (a feature of the predictors). */
  recent: number;
  detail: boolean;
  ends: (token: number) => boolean;
  /** The committed grammar state of a constrained request: candidates are drawn masked. */
  constraint?: TokenConstraint;
  /** Where the round's draft distributions come from (the decoder takes them back after verification). */
  pool: BufferPool<Float64Array>;
}): Promise<DraftedRound> {
  const { setup, seq, all, params, draws, budget } = round;
  const { policy, predictor, stats, costs } = setup;
  const drafted: DraftedRound = { candidates: [], draftDistributions: [], features: [], predictions: [], drawnAt: [], ...(round.constraint && { states: [round.constraint] }) };
  const draftHistory = round.history.clone();
  let ended = false;
  const full = () => ended || drafted.candidates.length >= budget;
  /**
   * Proposes the tokens the grammar forces from the last state on, up to the budget; returns
   * them. Rejection sampling masks the draft at every position anyway, so it asks for the mask
   * where it is not cached; a coupled draw masks nothing, so it uses only masks already known.
   */
  const proposeForced = (): number[] => {
    const states = drafted.states;
    const forced: number[] = [];
    for (let y: number | undefined; states && !full() && (y = states[states.length - 1].forcedToken(!round.coupled)) !== undefined; ) {
      const before = states[states.length - 1];
      forced.push(y);
      drafted.candidates.push(y);
      drafted.draftDistributions.push(undefined);
      drafted.features.push(undefined);
      drafted.predictions.push(undefined);
      draftHistory.push(y);
      ended = round.ends(y);
      states.push(ended ? before : advanced(before, y));
    }
    return forced;
  };
  const forcedFirst = proposeForced();
  if (!round.drawing || full()) return drafted;

  policy.begin();
  // A predictor that reads hidden states gets the one that produced each candidate, and if it
  // asks, the one at the candidate: then the draft evaluates each candidate before the decision
  // (the step it would take next anyway; only a round's last one is extra).
  const withHidden = predictor?.needsHidden === true;
  const evaluateFirst = predictor?.needsCandidateHidden === true;
  const catchUpStarted = performance.now();
  const first = await catchUp(seq, all, forcedFirst, withHidden);
  costs.observeDraftStep(performance.now() - catchUpStarted);
  let draftLogits = first.logits[forcedFirst.length];
  let draftHidden = first.hidden?.[forcedFirst.length];
  const timedStep = async (tokens: readonly number[]) => {
    const started = performance.now();
    const next = await draftStep(seq, tokens, withHidden);
    costs.observeDraftStep(performance.now() - started);
    return next;
  };
  let adjustBuffer: Float32Array | undefined;
  let judgedBuffer: Float64Array | undefined;
  for (let k = 1; !full(); k++) {
    const at = drafted.candidates.length;
    // Used up within the iteration: one buffer each serves every position.
    const adjusted = (adjustBuffer = adjustLogits(draftLogits, params, draftHistory, adjustBuffer));
    // Under a grammar, rejection sampling compares masked q with masked p: the draft's q is
    // masked in full. A coupled draw needs no q: it checks its ranked tokens (constraint.ts),
    // and the policy reads the unmasked distribution, known before the draw either way.
    const state = drafted.states?.[at];
    if (state && !round.coupled) state.mask(adjusted);
    const q = samplingDistribution(adjusted, params, round.pool.take(adjusted.length));
    // At temperature 0, q is one-hot; the predictor needs the draft's actual confidence.
    const greedy = params.temperature === 0;
    const judged = greedy ? (judgedBuffer = softmax(adjusted, judgedBuffer)) : q;
    const before = preDrawFeatures(judged, adjusted, greedy ? 1 : params.temperature, k, round.recent);
    before.hidden = draftHidden;
    before.context = draftHistory.last;
    before.greedy = greedy;
    if (policy.beforeDraw?.(k, before) === "stop") {
      stats.recordDeclined();
      break;
    }
    // The candidate's position in prompt + output keys its noise in coupled mode.
    const position = all.length + at;
    const y = !round.coupled ? drawFrom(q, draws.rng) : state ? constrainedDraw(adjusted, params, state, draws, position) : draws.sample(adjusted, params, position);
    const f = candidateFeatures(before, judged, y);
    const next = evaluateFirst ? await timedStep([y]) : undefined;
    f.candidateHidden = next?.hidden;
    const decision = policy.afterDraw(k, f);
    drafted.candidates.push(y);
    drafted.draftDistributions.push(q);
    drafted.features.push(f);
    drafted.predictions.push(round.detail ? policy.lastPrediction : undefined);
    drafted.drawnAt.push(at);
    draftHistory.push(y);
    if (drafted.states) drafted.states.push(round.ends(y) ? drafted.states[at] : advanced(drafted.states[at], y));
    ended = round.ends(y);
    if (decision === "stop") break;
    // Tokens the grammar forces after the candidate join the round; the draft reads them with
    // the candidate, in one step, and drafts on after them.
    const forced = proposeForced();
    if (full()) break;
    const unread = next ? forced : [y, ...forced];
    // The position's logits are read: the next step may write into them.
    seq.recycle?.([draftLogits]);
    if (unread.length > 0) ({ logits: draftLogits, hidden: draftHidden } = await timedStep(unread));
    else ({ logits: draftLogits, hidden: draftHidden } = next!);
  }
  seq.recycle?.([draftLogits]);
  // Forced tokens after the draft's last candidate cost no draft step: they end the round.
  proposeForced();
  return drafted;
}

/** A copy of `state` advanced past `token`. */
function advanced(state: TokenConstraint, token: number): TokenConstraint {
  const next = state.clone();
  next.accept(token);
  return next;
}

/**
 * Text proposals under a grammar: the candidates up to the first the grammar forbids (it could
 * only be rejected), with the grammar's state before each and after the last.
 */
function constrainProposals(candidates: readonly number[], state: TokenConstraint, ends: (token: number) => boolean): { candidates: number[]; states: TokenConstraint[] } {
  const states = [state];
  const kept: number[] = [];
  for (const y of candidates) {
    const before = states[states.length - 1];
    if (!before.allows(y)) break;
    kept.push(y);
    if (ends(y)) {
      states.push(before);
      break;
    }
    states.push(advanced(before, y));
  }
  return { candidates: kept, states };
}

export async function* speculativeDecode(setup: SpeculativeSetup, request: GenerationRequest): AsyncGenerator<DecodeStep> {
  const { target, draft, policy, predictor, stats, costs, verification } = setup;
  const coupled = verification === "coupled";
  let constraint = request.constraint?.clone();
  const targetSeq = await target.acquire(request.prompt, request.signal);
  let draftSeq: Sequence | undefined;
  // A Predicted Output (prediction.ts) proposes instead of the draft; prompt lookup (lookup.ts)
  // proposes in the rounds where its candidates promise a better rate than the draft's recent
  // rounds yielded. Text proposals are priced whole (costs.ts) from how such proposals fared.
  const text: TextProposer | null =
    request.prediction && request.prediction.length > 0 ? new PredictionAligner(request.prediction) : setup.lookup?.enabled ? new PromptLookup(setup.lookup) : null;
  const drafting = draft !== null && text?.source !== "prediction";
  const textAcceptance = setup.textAcceptance ?? new TextAcceptance();
  const pool = distributionPool();
  const regime = samplingRegime(request.sampling.temperature, verification);
  try {
    if (drafting) draftSeq = await draft.acquire(request.prompt, request.signal);
    else if (!text) throw new Error("speculative decoding without a draft needs a prediction or prompt lookup");
    const params = request.sampling;
    // Coupled verification needs keyed noise, seeded or not.
    const draws = tokenDraws({ ...request, keyedNoise: request.keyedNoise === true || coupled });
    const output = new OutputAssembler(target, request.prompt, request.stopStrings);
    const stopTokens = new Set(request.stopTokens);
    const ends = (token: number) => target.isEndOfGeneration(token) || stopTokens.has(token);
    const history = TokenHistory.after(request.prompt);
    const all = [...request.prompt];
    const contextSize = Math.min(targetSeq.contextSize, draftSeq?.contextSize ?? Infinity);
    let generated = 0;
    let recent = RECENT_START;
    const detail = request.speculative?.detail === true;
    let round = -1;

    /**
     * The text proposal worth proposing this round: the candidates the cost rule keeps (a
     * deterministic proposal is judged whole, nothing is drawn), if they promise at least the
     * rate of the draft's recent rounds; null otherwise.
     */
    const textOffer = (room: number): (TextProposal & { source: TextSource }) | null => {
      if (!text) return null;
      // Beside a draft, text must beat the yield of the draft's recent rounds, and leaves it a
      // round now and then to measure that yield again.
      if (drafting && costs.draftDue(regime)) return null;
      const proposal = text.propose(all, room);
      if (proposal.tokens.length === 0) return null;
      if (text.priced === false) return { ...proposal, source: text.source };
      const { length, rate } = costs.textRound(textAcceptance.chances(regime, text.source, proposal));
      if (length > 0 && rate >= (drafting ? (costs.draftedRate(regime) ?? 0) : 0)) return { tokens: proposal.tokens.slice(0, length), match: proposal.match, source: text.source };
      // A run of declined offers: propose the start of this one, to learn what such offers yield now.
      if (textAcceptance.explores(regime, text.source)) return { tokens: proposal.tokens.slice(0, EXPLORE_LENGTH), match: proposal.match, source: text.source };
      textAcceptance.declined(regime, text.source);
      return null;
    };

    while (true) {
      if (request.signal?.aborted) return;
      round++;
      // The caller's budget: tokens left to generate (one is always the recovered/bonus token)
      // and room in both caches; the draft's is capped by its settings, text caps its own.
      const room = Math.max(0, Math.min(request.maxTokens - generated - 1, contextSize - all.length));
      const budget = Math.min(setup.maxCandidates, room);
      const nothing: DraftedRound = { candidates: [], draftDistributions: [], features: [], predictions: [], drawnAt: [], ...(constraint && { states: [constraint] }) };
      const proposed = (candidates: number[]): DraftedRound => (constraint ? { ...nothing, ...constrainProposals(candidates, constraint, ends) } : { ...nothing, candidates });
      let offer = room === 0 ? null : textOffer(room);
      // Under a grammar, text is proposed up to the first token the grammar forbids; an offer
      // it forbids outright leaves the round to the draft.
      const fromText = offer ? proposed(offer.tokens) : null;
      if (fromText?.candidates.length === 0) offer = null;
      const drawnRound = budget > 0 && !offer && drafting;
      const drawing = drawnRound && policy.skipRound?.() !== true;
      if (drawnRound && !drawing) stats.recordSkipped();
      const { candidates, draftDistributions, features, predictions, states, drawnAt } = offer
        ? fromText!
        : drawnRound
          ? await draftRound({ setup, seq: draftSeq!, all, history, params, draws, coupled, budget, drawing, recent, detail, ends, constraint, pool })
          : nothing;
      const forced = drawnRound ? candidates.length - drawnAt.length : 0;

      // Verify: one target batch scores every candidate plus the position after them.
      const passStarted = performance.now();
      const { logits: targetLogits, evaluated } = await catchUp(targetSeq, all, candidates);
      costs.observeTargetPass(evaluated, performance.now() - passStarted);
      // Text proposals (a prediction, lookup) and forced tokens are deterministic: one-hot q.
      const proposals = coupled ? [] : candidates.map((y, i) => draftDistributions[i] ?? oneHot(targetLogits[0].length, y, pool.takeZeroed(targetLogits[0].length)));
      const verdict = judge(targetLogits, candidates, proposals, history, params, states, coupled ? { keyed: draws, position: all.length } : { rng: draws.rng }, pool);
      // Verification was the last reader of the round's distributions (proposals holds the
      // draft's, unless coupled verification needed none of them).
      pool.give(coupled ? draftDistributions : proposals);
      features.forEach((f, i) => {
        if (!f) return;
        predictor?.observe(f, verdict.acceptanceProbabilities[i]);
        recent = RECENT_DECAY * recent + (1 - RECENT_DECAY) * verdict.acceptanceProbabilities[i];
      });
      stats.recordRound(candidates.length, verdict.accepted, verification, forced, offer?.source);
      if (offer) {
        textAcceptance.observe(regime, offer.source, offer.match, verdict.acceptanceProbabilities);
        costs.observeTextRound(regime);
      }
      // What drafting yields (the policy's and the lookup's yardstick); the policy learns from
      // the draft's candidates, not from text proposals.
      if (drawing) costs.observeDraftedRound(regime, drawnAt.length, candidates.length, verdict.accepted + 1);
      if (drawnRound) {
        const drawnAccepted = drawnAt.filter((i) => i < verdict.accepted).length;
        policy.end?.(drawnAt.length, drawnAccepted, drawnAt.map((i) => verdict.acceptanceProbabilities[i]));
      }

      // Emit the accepted tokens and the recovered/bonus one, ending early on EOS, a stop
      // sequence or max_tokens.
      const emitted = [...candidates.slice(0, verdict.accepted), verdict.next];
      if (states && !ends(verdict.next)) constraint = advanced(states[verdict.accepted], verdict.next);
      // The round's other grammar states are done with: free them now, not at garbage collection.
      for (const state of new Set(states)) if (state !== constraint) state.release();
      const origins: TokenOrigin[] = [...candidates.slice(0, verdict.accepted).map((_, i): TokenOrigin => (features[i] || offer ? "accepted" : "forced")), verdict.nextKind];
      const step: DecodeStep = {
        tokens: [],
        text: "",
        logprobs: [],
        speculative: { drafted: candidates.length, forced, accepted: verdict.accepted, origins: [], verification, ...(offer && { source: offer.source }) },
      };
      const details = detail ? roundDetail(target, all, candidates, verdict.accepted, origins, features, verdict.acceptanceProbabilities, predictions, round) : undefined;
      if (details) step.speculative!.detail = [];
      for (const [j, token] of emitted.entries()) {
        generated++;
        history.push(token);
        all.push(token);
        step.tokens.push(token);
        step.speculative!.origins.push(origins[j]);
        if (details) step.speculative!.detail!.push(details[j]);
        const endOfGeneration = ends(token);
        const logprob = endOfGeneration || request.topLogprobs === null ? undefined : describeLogprobs(target, targetLogits[j], token, request.topLogprobs);
        const limitReached = generated >= request.maxTokens || all.length >= contextSize;
        const { text, logprobs, finishReason } = output.emit(token, logprob, { endOfGeneration, limitReached });
        step.text += text;
        step.logprobs!.push(...logprobs);
        if (finishReason) {
          yield { ...step, finishReason };
          return;
        }
      }
      text?.advance?.(emitted, all.slice(request.prompt.length));
      // Verification and the logprobs were the last readers of the round's target logits.
      targetSeq.recycle?.(targetLogits);
      yield step;
    }
  } finally {
    constraint?.release();
    targetSeq.release();
    draftSeq?.release();
  }

}

/**
 * Verifies one round from the target's logits at each candidate position and the one after:
 * position i's distribution (or keyed draw) sees the penalties of the candidates before it.
 * `keyed` (coupled mode) draws the target's keyed token at each candidate position; without it,
 * rejection sampling with `rng`.
 */
function judge(
  targetLogits: readonly Float32Array[],
  candidates: readonly number[],
  draftDistributions: readonly Float64Array[],
  committed: TokenHistory,
  sampling: SamplingParams,
  states: readonly TokenConstraint[] | undefined,
  draw: { keyed: TokenDraws; position: number } | { rng: Rng },
  pool: BufferPool<Float64Array>,
): Verification {
  const targetHistory = committed.clone();
  // Each position's adjusted logits are used up before the next position's: one buffer.
  let adjustBuffer: Float32Array | undefined;
  const adjustedAt = (i: number) => {
    const adjusted = (adjustBuffer = adjustLogits(targetLogits[i], sampling, targetHistory, adjustBuffer));
    if (i < candidates.length) targetHistory.push(candidates[i]);
    return adjusted;
  };
  if ("keyed" in draw) {
    // The target's keyed draw at each candidate position (masked, under a grammar).
    const at = (i: number) => draw.position + i;
    const keyedAt = (i: number) => (states ? constrainedDraw(adjustedAt(i), sampling, states[i], draw.keyed, at(i)) : draw.keyed.sample(adjustedAt(i), sampling, at(i)));
    return verifyCoupled(candidates, targetLogits.map((_, i) => keyedAt(i)));
  }
  const maskedAt = (i: number) => {
    const adjusted = adjustedAt(i);
    states?.[i].mask(adjusted);
    return adjusted;
  };
  const targetDistributions = targetLogits.map((_, i) => samplingDistribution(maskedAt(i), sampling, pool.take(targetLogits[i].length)));
  const verdict = verify(candidates, draftDistributions, targetDistributions, draw.rng);
  pool.give(targetDistributions);
  return verdict;
}

/**
 * The per-token account of one round (flock.speculative.detail): accepted candidates with the
 * draft's probability, verification's acceptance chance and the predictor's P̂; a recovered
 * token with the candidate it replaced. `committed` is the text before the round.
 */
function roundDetail(
  target: DecodingModel,
  committed: readonly number[],
  candidates: readonly number[],
  accepted: number,
  origins: readonly TokenOrigin[],
  features: ReadonlyArray<DraftFeatures | undefined>,
  acceptance: readonly number[],
  predictions: ReadonlyArray<number | undefined>,
  round: number,
): SpeculativeTokenDetail[] {
  const drafted = candidates.length;
  return origins.map((origin, j) => {
    const entry: SpeculativeTokenDetail = { origin, round, drafted };
    if (j < drafted) {
      // Forced text was proposed with certainty.
      const judged = { draftProbability: features[j]?.chosen ?? 1, acceptanceProbability: acceptance[j], ...withPrediction(predictions[j]) };
      if (origin === "accepted") Object.assign(entry, judged);
      else {
        const context = [...committed, ...candidates.slice(0, j)];
        entry.rejected = { token: candidates[j], text: target.detokenize([candidates[j]], context), ...judged };
      }
    }
    return entry;
  });
}

const withPrediction = (p: number | undefined) => (p === undefined ? {} : { predictedAcceptance: p });
