// How a routed module weighs its experts — the same computation flock's llama.cpp patch
// performs in the graph (engine/native/patches, llama-flock.cpp): scores for retrieval, and the
// top-k weights a module keeps from its softmax, for reporting the engine's routing traces.
import type { RoutingMethod } from "./config.js";

export interface ExpertWeight {
  expert: number;
  weight: number;
}

/** LN without affine: (v − mean) / sqrt(var + 1e-5). */
export function standardise(v: ArrayLike<number>): Float64Array {
  let mean = 0;
  for (let i = 0; i < v.length; i++) mean += v[i];
  mean /= v.length;
  let variance = 0;
  for (let i = 0; i < v.length; i++) variance += (v[i] - mean) ** 2;
  variance /= v.length;
  const inv = 1 / Math.sqrt(variance + 1e-5);
  return Float64Array.from(v, (x) => (x - mean) * inv);
}

/** PHATGOOSE: LN(x)·LN(v_i)/√d; Arrow: |x·v_i|. */
export function routingScores(method: RoutingMethod, x: ArrayLike<number>, gates: readonly ArrayLike<number>[]): number[] {
  const input = method === "phatgoose" ? standardise(x) : x;
  return gates.map((gate) => {
    const v = method === "phatgoose" ? standardise(gate) : gate;
    let dot = 0;
    for (let i = 0; i < x.length; i++) dot += input[i] * v[i];
    return method === "phatgoose" ? dot / Math.sqrt(x.length) : Math.abs(dot);
  });
}

/** A module's softmax over the experts, the top k kept and renormalised, most weight first. */
export function topWeights(probabilities: ArrayLike<number>, topK: number): ExpertWeight[] {
  const order = Array.from(probabilities, (p, i) => ({ expert: i, weight: p }))
    .sort((a, b) => b.weight - a.weight || a.expert - b.expert)
    .slice(0, Math.min(topK, probabilities.length));
  const mass = order.reduce((acc, o) => acc + o.weight, 0);
  return order.map((o) => ({ expert: o.expert, weight: mass > 0 ? o.weight / mass : 1 / order.length }));
}
