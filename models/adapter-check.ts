// A LoRA adapter checked against its base model before llama.cpp loads it. llama.cpp refuses an
// adapter that does not fit, but says why only in its own log ("tensor 'output.weight' has
// incorrect shape (hint: maybe wrong base model?)"); node-llama-cpp's error names the file and
// nothing else. Reading the two GGUF headers (no tensor data) lets flock's error say what is
// wrong: not an adapter, another architecture, or a module whose shape the base does not have.
import { type LlamaModel, readGgufFileInfo } from "node-llama-cpp";
import { FlockError } from "./errors.js";
import { metadataValue } from "./gguf/reader.js";

/** Throws a FlockError naming the model id, the adapter file and what does not fit. */
export async function checkAdapter(modelId: string, base: LlamaModel, basePath: string, adapterPath: string): Promise<void> {
  const fail = (reason: string) => new FlockError("invalid_request", `model ${modelId}: the LoRA adapter ${adapterPath} ${reason}`);
  let info;
  try {
    info = await readGgufFileInfo(adapterPath, { logWarnings: false });
  } catch (err) {
    throw fail(`cannot be read: ${(err as Error).message}`);
  }
  const type = metadataValue(info.metadata, "general.type");
  if (type !== "adapter" || metadataValue(info.metadata, "adapter.type") !== "lora") {
    throw fail(`is not a LoRA adapter (general.type is ${JSON.stringify(type ?? null)})`);
  }
  const architecture = metadataValue(info.metadata, "general.architecture");
  const baseArchitecture = metadataValue(base.fileInfo.metadata, "general.architecture");
  if (architecture !== baseArchitecture) throw fail(`is for ${String(architecture)}; ${basePath} is ${String(baseArchitecture)}`);

  const baseShapes = new Map((base.fileInfo.fullTensorInfo ?? []).map((t) => [t.name, t.dimensions.map(Number)]));
  if (baseShapes.size === 0) return; // nothing to compare against: llama.cpp still checks
  const tensors = new Map((info.fullTensorInfo ?? []).map((t) => [t.name, t.dimensions.map(Number)]));
  for (const [name, a] of tensors) {
    if (!name.endsWith(".lora_a")) continue;
    const module = name.slice(0, -".lora_a".length);
    const b = tensors.get(`${module}.lora_b`);
    const shape = baseShapes.get(module);
    if (!shape) throw fail(`adapts ${module}, which ${basePath} does not have: it was built for another base model`);
    if (!b) throw fail(`has ${module}.lora_a but no ${module}.lora_b`);
    // ggml order: W is [in, out], A is [in, rank], B is [rank, out].
    if (a[0] !== shape[0] || b[1] !== shape[1] || a[1] !== b[0]) {
      throw fail(`expects ${module} to be ${a[0]}×${b[1]}, in ${basePath} it is ${shape[0]}×${shape[1]}: it was built for another base model`);
    }
  }
}
