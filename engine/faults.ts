// Test-mode fault injection: makes the engine fail in the middle of a generation, so the
// reliability suite can check that such a failure reaches the client as an OpenAI-shaped error
// and that the server keeps serving. Off unless the process runs with NODE_ENV=test and
// FLOCK_FAULTS=1; then a request opts in with the header `x-flock-fault: engine-error-after=N`
// (or `x-flock-fault: gc`: a full garbage collection before the request is served).
//
// The fault travels with the request's async context (AsyncLocalStorage), not through the
// decoders' arguments: every pipeline (plain, speculative, fusion, routed) reaches the engine
// through EngineSequence, which is the one place that checks it.
import { AsyncLocalStorage } from "node:async_hooks";

export const FAULT_HEADER = "x-flock-fault";

/** One request's fault plan and how far it has got. */
export interface FaultPlan {
  /** The engine evaluations (that produce logits) this request may run before one throws. */
  engineErrorAfter: number;
  /** Evaluations run so far (all of the request's sequences and models together). */
  evaluations: number;
}

/** The error an injected fault throws: a plain Error, as an unexpected engine failure would be. */
export class InjectedEngineFault extends Error {
  constructor(after: number) {
    super(`injected engine fault after ${after} evaluations (FLOCK_FAULTS)`);
    this.name = "InjectedEngineFault";
  }
}

const current = new AsyncLocalStorage<FaultPlan>();
let injected = 0;

/** Whether this process honours fault headers: NODE_ENV=test and FLOCK_FAULTS=1, read at each call. */
export function faultsEnabled(env: NodeJS.ProcessEnv = process.env): boolean {
  return env.NODE_ENV === "test" && env.FLOCK_FAULTS === "1";
}

/** Parses a fault header (`engine-error-after=N`, N ≥ 0); null when it is not one. */
export function parseFault(header: string | undefined): FaultPlan | null {
  const m = header?.trim().match(/^engine-error-after=(\d{1,9})$/);
  return m ? { engineErrorAfter: Number(m[1]), evaluations: 0 } : null;
}

/** Runs `fn` (and everything it starts) under `plan`. */
export function withFault<T>(plan: FaultPlan, fn: () => T): T {
  return current.run(plan, fn);
}

/** Whether the current request carries a fault plan. */
export function faultPlanned(): boolean {
  return current.getStore() !== undefined;
}

/**
 * Called by the engine before each evaluation that produces logits: throws when the current
 * request's plan says this one fails.
 */
export function engineFaultPoint(): void {
  const plan = current.getStore();
  if (!plan) return;
  if (plan.evaluations >= plan.engineErrorAfter) {
    injected++;
    throw new InjectedEngineFault(plan.engineErrorAfter);
  }
  plan.evaluations++;
}

/**
 * A full garbage collection, when node runs with --expose-gc: the reliability suite asks for one
 * (header `x-flock-fault: gc`) before it reads the RSS, so that it compares memory in use
 * rather than the garbage collector's timing. False when gc is not exposed.
 */
export function collectGarbage(): boolean {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (!gc) return false;
  gc();
  return true;
}

/** Faults thrown so far in this process. */
export function injectedFaults(): number {
  return injected;
}
