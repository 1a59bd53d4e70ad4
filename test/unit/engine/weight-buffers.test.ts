// The buffer types of each model file, read from llama.cpp's load log (engine/weight-buffers.ts).
import { describe, expect, it } from "vitest";
import { WeightBufferLog } from "../../../engine/weight-buffers.js";

const loaded = (path: string) => `llama_model_loader: loaded meta data with 25 key-value pairs and 21 tensors from ${path} (version GGUF V3 (latest))`;
const buffer = (name: string, mib: string) => `load_tensors: ${name.padStart(12)} model buffer size = ${mib.padStart(8)} MiB`;

describe("WeightBufferLog", () => {
  it("attributes each load's buffer lines to the file named before them, summing repeats", () => {
    const log = new WeightBufferLog();
    log.observe(loaded("/m/a (copy).gguf"));
    log.observe("load_tensors: offloaded 0/3 layers to GPU");
    log.observe(buffer("CPU", "0.50"));
    // One message may carry several lines.
    log.observe(`${buffer("CPU_REPACK", "0.13")}\n${buffer("CPU_REPACK", "0.12")}\n`);
    log.observe(loaded("/m/b.gguf"));
    log.observe(buffer("CPU_Mapped", "1.56"));
    log.observe("sched_reserve:        CPU compute buffer size =     1.01 MiB");
    expect(log.of("/m/a (copy).gguf")).toEqual({ CPU: 0.5, CPU_REPACK: 0.25 });
    expect(log.of("/m/b.gguf")).toEqual({ CPU_Mapped: 1.56 });
    expect(log.of("/m/c.gguf")).toBeUndefined();
  });

  it("a file loaded again reports its latest load", () => {
    const log = new WeightBufferLog();
    log.observe(loaded("/m/a.gguf"));
    log.observe(buffer("CPU", "2.00"));
    log.observe(loaded("/m/a.gguf"));
    log.observe(buffer("RPC0[127.0.0.1:50052]", "2.00"));
    expect(log.of("/m/a.gguf")).toEqual({ "RPC0[127.0.0.1:50052]": 2 });
  });
});
