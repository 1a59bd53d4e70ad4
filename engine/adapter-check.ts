// Does a LoRA adapter fit its base model? llama.cpp refuses one that does not, but says why only
// in its own log ("tensor 'output.weight' has incorrect shape (hint: maybe wrong base model?)");
// node-llama-cpp's error names the file and nothing else. Comparing the GGUF headers lets
// flock's errors say what is wrong: not an adapter, another architecture, or a module whose
// shape the base does not have. Used for a model entry's plain LoRA adapters (engine.ts) and for
// the experts of a routed library (experts/library.ts).
import { type GgufFileInfo, readGgufFileInfo } from "node-llama-cpp";
import { checkGgufHeader } from "./gguf/header-check.js";
import { metadataValue } from "./gguf/reader.js";

/** A base model's adaptable modules: tensor name → [input width, output width]. */
export type ModuleShapes = Map<string, [number, number]>;

export interface BaseShapes {
  architecture: string;
  modules: ModuleShapes;
}

/** The architecture and 2-D weight shapes from a base model's GGUF header. */
export function baseShapesOf(info: Pick<GgufFileInfo, "metadata" | "fullTensorInfo">): BaseShapes {
  const modules: ModuleShapes = new Map();
  for (const t of info.fullTensorInfo ?? []) {
    if (t.dimensions.length === 2 && t.name.endsWith(".weight")) modules.set(t.name, [Number(t.dimensions[0]), Number(t.dimensions[1])]);
  }
  return { architecture: String(metadataValue(info.metadata, "general.architecture")), modules };
}

export async function baseModuleShapes(path: string): Promise<BaseShapes> {
  return baseShapesOf(await readGgufFileInfo(path, { logWarnings: false }));
}

/** The adapter's header as the check needs it: metadata, and each tensor's dimensions. */
export interface AdapterHeader {
  /** node-llama-cpp's nested metadata object. */
  metadata: unknown;
  dims: ReadonlyMap<string, readonly number[]>;
}

/** Why the adapter at `path` does not fit `base` (a sentence naming the file), or null when it fits. */
export function adapterMismatch(path: string, adapter: AdapterHeader, base: BaseShapes): string | null {
  if (metadataValue(adapter.metadata, "adapter.type") !== "lora") return `${path} is not a LoRA adapter`;
  const architecture = metadataValue(adapter.metadata, "general.architecture");
  if (architecture !== base.architecture) return `${path} is an adapter for ${String(architecture)}, the base model is ${base.architecture}`;
  for (const [name, a] of adapter.dims) {
    if (!name.endsWith(".lora_a")) continue;
    const module = name.slice(0, -".lora_a".length);
    const b = adapter.dims.get(`${module}.lora_b`);
    const shape = base.modules.get(module);
    if (!shape) return `${path} adapts ${module}, which the base model does not have (an adapter for another base?)`;
    if (!b) return `${path} has ${module}.lora_a but no ${module}.lora_b`;
    // ggml order: W is [in, out], A is [in, rank], B is [rank, out].
    const [inDim, outDim] = shape;
    if (a[0] !== inDim || b[0] !== a[1] || b[1] !== outDim) {
      return `${module} has shape ${a.join("×")} / ${b.join("×")} in ${path}, the base's is ${inDim}×${outDim} (an adapter for another base?)`;
    }
  }
  return null;
}

/** The header of the adapter file at `path` (no tensor data). */
export async function readAdapterHeader(path: string): Promise<AdapterHeader> {
  // Lengths checked against the file before node-llama-cpp allocates what they claim; one file
  // only (a name like x-00001-of-00002.gguf would make it read others).
  checkGgufHeader(path);
  const info = await readGgufFileInfo(path, { logWarnings: false, spliceSplitFiles: false });
  return { metadata: info.metadata, dims: new Map((info.fullTensorInfo ?? []).map((t) => [t.name, t.dimensions.map(Number)])) };
}
