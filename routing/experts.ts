// The expert library of one base model: LoRA adapters with their gates, validated against the
// base when they are added (at startup or through the admin endpoints), so a bad expert is a
// clear error that leaves everything else serving.
import { adapterMismatch, type BaseShapes } from "../models/adapter-check.js";
import { FlockError } from "../models/errors.js";
import { readGgufTensors } from "../models/gguf/reader.js";
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

const invalid = (spec: ExpertSpec, reason: string) => new FlockError("invalid_request", `expert ${spec.name}: ${reason}`, "experts");

/** Reads and checks an expert against its base; throws a FlockError naming what is wrong. */
export async function loadExpert(spec: ExpertSpec, base: BaseShapes): Promise<Expert> {
  if (!/^[\w.-]+$/.test(spec.name)) throw invalid(spec, "names use letters, digits and . _ -");
  let adapter;
  try {
    adapter = await readGgufTensors(spec.lora, (name) => name.endsWith(".lora_a") || name.endsWith(".lora_b"));
  } catch (err) {
    throw invalid(spec, `cannot read the adapter ${spec.lora}: ${(err as Error).message}`);
  }
  const mismatch = adapterMismatch(spec.lora, { metadata: adapter.metadata, dims: new Map([...adapter.tensors].map(([name, t]) => [name, t.dims])) }, base);
  if (mismatch) throw invalid(spec, mismatch);
  const arrow: Gates = new Map();
  for (const [name, a] of adapter.tensors) {
    if (!name.endsWith(".lora_a")) continue;
    const module = name.slice(0, -".lora_a".length);
    const [inDim, outDim] = base.modules.get(module)!;
    arrow.set(module, arrowGate(a.data, adapter.tensors.get(`${module}.lora_b`)!.data, a.dims[1], inDim, outDim));
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
    readonly base: BaseShapes,
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
