// The expert library of one base model: LoRA adapters with their gates, validated against the
// base when they are added (at startup or through the admin endpoints), so a bad expert is a
// clear error that leaves everything else serving.
import { readGgufFileInfo } from "node-llama-cpp";
import { FlockError } from "../models/errors.js";
import { metadataValue, readGgufTensors } from "../models/gguf/reader.js";
import { arrowGate, type Gates, readGateFile } from "./gates.js";

export interface ExpertSpec {
  name: string;
  /** The LoRA adapter (llama.cpp adapter GGUF). */
  lora: string;
  scale: number;
  /** A PHATGOOSE gate file; without one the expert routes by Arrow gates only. */
  gates?: string;
}

export interface Expert {
  readonly spec: ExpertSpec;
  /** Modules the adapter adapts (llama.cpp base tensor names). */
  readonly modules: readonly string[];
  /** Trained gates from the gate file, when there is one. */
  readonly phatgoose: Gates | null;
  /** Derived from the adapter (top right singular vector of B·A per module). */
  readonly arrow: Gates;
}

/** A base model's adaptable modules: tensor name → [input width, output width]. */
export type ModuleShapes = Map<string, [number, number]>;

export async function baseModuleShapes(path: string): Promise<{ architecture: string; modules: ModuleShapes }> {
  const info = await readGgufFileInfo(path, { logWarnings: false });
  const modules: ModuleShapes = new Map();
  for (const t of info.fullTensorInfo ?? []) {
    if (t.dimensions.length === 2 && t.name.endsWith(".weight")) modules.set(t.name, [Number(t.dimensions[0]), Number(t.dimensions[1])]);
  }
  return { architecture: String(metadataValue(info.metadata, "general.architecture")), modules };
}

const invalid = (spec: ExpertSpec, reason: string) => new FlockError("invalid_request", `expert ${spec.name}: ${reason}`, "experts");

/** Reads and checks an expert against its base; throws a FlockError naming what is wrong. */
export async function loadExpert(spec: ExpertSpec, base: { architecture: string; modules: ModuleShapes }): Promise<Expert> {
  if (!/^[\w.-]+$/.test(spec.name)) throw invalid(spec, "names use letters, digits and . _ -");
  let adapter;
  try {
    adapter = await readGgufTensors(spec.lora, (name) => name.endsWith(".lora_a") || name.endsWith(".lora_b"));
  } catch (err) {
    throw invalid(spec, `cannot read the adapter ${spec.lora}: ${(err as Error).message}`);
  }
  if (metadataValue(adapter.metadata, "adapter.type") !== "lora") throw invalid(spec, `${spec.lora} is not a LoRA adapter`);
  const architecture = metadataValue(adapter.metadata, "general.architecture");
  if (architecture !== base.architecture) {
    throw invalid(spec, `${spec.lora} is an adapter for ${String(architecture)}, the base model is ${base.architecture}`);
  }
  const arrow: Gates = new Map();
  for (const [name, a] of adapter.tensors) {
    if (!name.endsWith(".lora_a")) continue;
    const module = name.slice(0, -".lora_a".length);
    const b = adapter.tensors.get(`${module}.lora_b`);
    const shape = base.modules.get(module);
    if (!shape) throw invalid(spec, `adapts ${module}, which the base model does not have (an adapter for another base?)`);
    if (!b) throw invalid(spec, `${module} has lora_a but no lora_b`);
    const [inDim, outDim] = shape;
    const rank = a.dims[1];
    if (a.dims[0] !== inDim || b.dims[0] !== rank || b.dims[1] !== outDim) {
      throw invalid(spec, `${module} has shape ${a.dims.join("×")} / ${b.dims.join("×")}, the base's is ${inDim}×${outDim} (an adapter for another base?)`);
    }
    arrow.set(module, arrowGate(a.data, b.data, rank, inDim, outDim));
  }
  if (arrow.size === 0) throw invalid(spec, `${spec.lora} adapts no module`);

  let phatgoose: Gates | null = null;
  if (spec.gates) {
    try {
      phatgoose = await readGateFile(spec.gates);
    } catch (err) {
      throw invalid(spec, `cannot read the gate file: ${(err as Error).message}`);
    }
    for (const module of arrow.keys()) if (!phatgoose.has(module)) throw invalid(spec, `the gate file has no gate for ${module}`);
    for (const [module, gate] of phatgoose) {
      const shape = base.modules.get(module);
      if (!arrow.has(module)) throw invalid(spec, `the gate file has a gate for ${module}, which the adapter does not adapt`);
      if (gate.length !== shape![0]) throw invalid(spec, `the gate for ${module} has ${gate.length} values; the module's input has ${shape![0]}`);
      if (!gate.every(Number.isFinite)) throw invalid(spec, `the gate for ${module} is not finite (NaN or infinity)`);
    }
  }
  return { spec, modules: [...arrow.keys()], phatgoose, arrow };
}

/** The experts of one base model; changes bump `version` so routed contexts are rebuilt. */
export class ExpertLibrary {
  private readonly experts = new Map<string, Expert>();
  /** Configured experts that failed validation at startup (the rest serve without them). */
  readonly failed: Array<{ name: string; error: string }> = [];
  version = 0;

  constructor(
    readonly baseId: string,
    readonly base: { architecture: string; modules: ModuleShapes },
  ) {}

  get size(): number {
    return this.experts.size;
  }

  list(): Expert[] {
    return [...this.experts.values()];
  }

  get(name: string): Expert | undefined {
    return this.experts.get(name);
  }

  async add(spec: ExpertSpec): Promise<Expert> {
    if (this.experts.has(spec.name)) throw new FlockError("conflict", `model ${this.baseId} already has an expert named ${spec.name}`, "name");
    const expert = await loadExpert(spec, this.base);
    // Another add of the same name may have finished while this one read its files.
    if (this.experts.has(spec.name)) throw new FlockError("conflict", `model ${this.baseId} already has an expert named ${spec.name}`, "name");
    this.experts.set(spec.name, expert);
    this.version++;
    return expert;
  }

  remove(name: string): boolean {
    const removed = this.experts.delete(name);
    if (removed) this.version++;
    return removed;
  }

  /** Every module some expert adapts. */
  modules(): string[] {
    return [...new Set(this.list().flatMap((e) => e.modules))].sort();
  }

  /** Whether every expert has trained (PHATGOOSE) gates. */
  get allGated(): boolean {
    return this.size > 0 && this.list().every((e) => e.phatgoose !== null);
  }
}
