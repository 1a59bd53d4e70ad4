// The expert library of one base model: LoRA adapters with their gates, validated against the
// base when they are added (at startup or through the admin endpoints), so a bad expert is a
// clear error that leaves everything else serving.
import { adapterMismatch, type BaseShapes, readAdapterHeader } from "../engine/adapter-check.js";
import { FlockError } from "../engine/errors.js";
import { GgufHeaderError } from "../engine/gguf/header-check.js";
import { readGgufTensors } from "../engine/gguf/reader.js";
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

/** The largest LoRA rank an expert may have (its stacked A and B are held per module). */
export const MAX_EXPERT_RANK = 1024;
/** The most experts one library holds (each routed module scores every one per token). */
export const MAX_EXPERTS = 64;

/**
 * Why a file could not be read, without echoing its contents (a parser's message may quote the
 * first bytes of whatever file the path names).
 */
function unreadable(err: unknown): string {
  // The header check's findings name lengths, never bytes of the file.
  if (err instanceof GgufHeaderError) return err.message;
  const code = (err as NodeJS.ErrnoException).code;
  if (code === "ENOENT") return "no such file";
  if (code === "EACCES" || code === "EPERM") return "permission denied";
  if (code === "EISDIR") return "a directory, not a file";
  return "not a readable GGUF file";
}

/** Reads and checks an expert against its base; throws a FlockError naming what is wrong. */
export async function loadExpert(spec: ExpertSpec, base: BaseShapes): Promise<Expert> {
  if (!/^[\w.-]+$/.test(spec.name)) throw invalid(spec, "names use letters, digits and . _ -");
  // The header first: shapes are checked against the base before any tensor data is read.
  let header;
  try {
    header = await readAdapterHeader(spec.lora);
  } catch (err) {
    throw invalid(spec, `cannot read the adapter ${spec.lora}: ${unreadable(err)}`);
  }
  const mismatch = adapterMismatch(spec.lora, header, base);
  if (mismatch) throw invalid(spec, mismatch);
  const rank = Math.max(0, ...[...header.dims].filter(([name]) => name.endsWith(".lora_a")).map(([, dims]) => dims[1] ?? 0));
  if (rank > MAX_EXPERT_RANK) throw invalid(spec, `rank ${rank} is above the limit of ${MAX_EXPERT_RANK}`);
  let adapter;
  try {
    adapter = await readGgufTensors(spec.lora, (name) => name.endsWith(".lora_a") || name.endsWith(".lora_b"));
  } catch (err) {
    const claim = (err as Error).message.includes("past the end of the file") ? (err as Error).message : unreadable(err);
    throw invalid(spec, `cannot read the adapter ${spec.lora}: ${claim}`);
  }
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
      const message = (err as Error).message;
      // The gate reader's own findings (a missing or malformed gate) name no file contents.
      throw invalid(spec, `cannot read the gate file: ${err instanceof FlockError || /gate/i.test(message) ? message : unreadable(err)}`);
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
    if (this.experts.size >= MAX_EXPERTS) throw new FlockError("invalid_request", `model ${this.baseId} already has ${MAX_EXPERTS} experts, the most a library holds`, "name");
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
