// The LoRA adapters llama.cpp holds for flock's contexts (a model entry's `lora`, and the single,
// merge and retrieval baselines of an expert library), loaded once per file version, counted by
// the contexts that use them, and freed when the last of those contexts goes.
//
// node-llama-cpp keeps its own cache (LlamaModel._getOrLoadLora): a Map keyed by the resolved
// path, never freed while the model lives. Through it a deleted expert stayed in memory, and a
// file replaced at the same path was served stale. flock therefore never passes `lora` to
// createContext: it loads the adapters itself with the same addon calls node-llama-cpp makes
// (AddonModelLora, AddonModel.loadLora, AddonContext.setLoras, all in node-llama-cpp's stock
// addon, typed in its dist/bindings/AddonTypes.d.ts) and frees them with AddonModelLora.dispose
// (llama_adapter_lora_free). Routed contexts need none of this: flock's addon copies their
// adapters into its own tensors and frees the files' adapters at once (AddonFlock.cpp).
import { realpath, stat } from "node:fs/promises";
import { statSync } from "node:fs";
import type { LlamaContext, LlamaModel } from "node-llama-cpp";

/** node-llama-cpp's addon objects this module reaches (internal: `_llama._bindings`, `_model`, `_ctx`). */
interface NativeLora {
  readonly disposed: boolean;
  dispose(): Promise<void>;
}
interface NativeModelSide {
  _llama: { _bindings: { AddonModelLora: new (model: unknown, filePath: string) => NativeLora } };
  _model: { loadLora(lora: NativeLora): Promise<void> };
}
interface NativeContextSide {
  _ctx: { setLoras(loras: NativeLora[], scales: number[]): void };
}

/** One version of an adapter file: where it really is (links resolved) and what it was when read. */
export interface AdapterFile {
  path: string;
  size: number;
  mtimeMs: number;
  /** The inode: a file renamed over the old one with its mtime kept is still another file. */
  ino: number;
}

/** One loaded adapter, as GET /admin/status lists it. */
export interface AdapterUsage {
  /** The base model's file it was loaded for. */
  model: string;
  path: string;
  size: number;
  mtimeMs: number;
  /** Contexts using it (a context that applies the same file twice counts twice). */
  refs: number;
  /** Whether the file on disk is still this version (false: replaced or deleted since). */
  current: boolean;
}

/** What a context holds: released once, when the context has been freed. */
export interface AdapterLease {
  release(): Promise<void>;
}

interface Entry {
  key: string;
  modelPath: string;
  file: AdapterFile;
  refs: number;
  lora: Promise<NativeLora>;
}

/** The version of `path` now on disk; throws as fs does when it cannot be read. */
export async function adapterFile(path: string): Promise<AdapterFile> {
  const real = await realpath(path);
  const info = await stat(real);
  return { path: real, size: info.size, mtimeMs: info.mtimeMs, ino: info.ino };
}

export class AdapterCache {
  /** Shareable adapters by model and file version; an entry leaves when its last context goes. */
  private readonly entries = new Map<string, Entry>();
  /** Every adapter loaded and not yet freed, shareable or not (one whose file changed while loading). */
  private readonly live = new Set<Entry>();
  private readonly modelIds = new WeakMap<LlamaModel, number>();
  private nextModelId = 0;
  /** Adapters read from disk, and adapters freed, since start. */
  loads = 0;
  frees = 0;

  /**
   * Loads `adapters` for a new context of `model` (or shares those already loaded for the same
   * file versions) and sets them on `context`. The lease must be released after the context is
   * disposed: llama.cpp's context points at the adapters it was given.
   */
  async attach(model: LlamaModel, modelPath: string, context: LlamaContext, adapters: ReadonlyArray<{ path: string; scale: number }>): Promise<AdapterLease> {
    const held: Entry[] = [];
    let released = false;
    const release = async () => {
      if (released) return;
      released = true;
      await Promise.all(held.map((entry) => this.unref(entry)));
    };
    try {
      for (const adapter of adapters) held.push(this.ref(model, modelPath, await adapterFile(adapter.path)));
      const loras = await Promise.all(held.map((entry) => entry.lora));
      (context as unknown as NativeContextSide)._ctx.setLoras(loras, adapters.map((a) => a.scale));
    } catch (err) {
      await release();
      throw err;
    }
    return { release };
  }

  /** Loaded adapters with their reference counts, and totals since start (GET /admin/status). */
  status(): { loaded: AdapterUsage[]; loads: number; frees: number } {
    const loaded = [...this.live].map(({ modelPath, file, refs }) => ({ model: modelPath, path: file.path, size: file.size, mtimeMs: file.mtimeMs, refs, current: onDisk(file) }));
    return { loaded, loads: this.loads, frees: this.frees };
  }

  private ref(model: LlamaModel, modelPath: string, file: AdapterFile): Entry {
    let id = this.modelIds.get(model);
    if (id === undefined) this.modelIds.set(model, (id = this.nextModelId++));
    const key = JSON.stringify([id, file.path, file.size, file.mtimeMs, file.ino]);
    let entry = this.entries.get(key);
    if (!entry) {
      const created: Entry = { key, modelPath, file, refs: 0, lora: this.load(model, file) };
      entry = created;
      this.entries.set(key, created);
      this.live.add(created);
      created.lora.then(
        async () => {
          // The file changed while llama.cpp read it: what was read may not be this version, so
          // the contexts that asked keep it, and no later context shares it.
          if (!onDisk(file) && this.entries.get(key) === created) this.entries.delete(key);
        },
        () => {
          if (this.entries.get(key) === created) this.entries.delete(key);
          this.live.delete(created);
        },
      );
    }
    entry.refs++;
    return entry;
  }

  private async unref(entry: Entry): Promise<void> {
    if (--entry.refs > 0) return;
    // No context uses it: freed now, whether its expert was deleted, its file replaced, or its
    // contexts merely retired (loading it again costs a read of the file, small beside a context).
    if (this.entries.get(entry.key) === entry) this.entries.delete(entry.key);
    const lora = await entry.lora.catch(() => null);
    if (!lora || !this.live.delete(entry)) return;
    this.frees++;
    if (!lora.disposed) await lora.dispose().catch(() => undefined);
  }

  private async load(model: LlamaModel, file: AdapterFile): Promise<NativeLora> {
    const native = model as unknown as NativeModelSide;
    const lora = new native._llama._bindings.AddonModelLora(native._model, file.path);
    await native._model.loadLora(lora);
    this.loads++;
    return lora;
  }
}

function onDisk(file: AdapterFile): boolean {
  try {
    const now = statSync(file.path);
    return now.size === file.size && now.mtimeMs === file.mtimeMs && now.ino === file.ino;
  } catch {
    return false;
  }
}
