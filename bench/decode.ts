// npm run bench:decode [-- --json FILE]
// Plain decoding cost per token on the forged demo model: the full-distribution path flock's
// TypeScript samplers use (node-llama-cpp's probabilities Map) against a token sampled inside
// llama.cpp, at the demo vocabulary and at 32k, with 1 and 2 threads.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { getLlama, LlamaLogLevel, type Token } from "node-llama-cpp";
import { forge } from "../models/forge/presets.js";
import { jsonPathArg, printTable, writeReport, type BenchReport } from "./report.js";

const TOKENS = 200;
const out = jsonPathArg("decode.json");
const dir = mkdtempSync(join(tmpdir(), "flock-bench-decode-"));
const llama = await getLlama({ gpu: false, maxThreads: 0, logLevel: LlamaLogLevel.error });
const rows: BenchReport["rows"] = [];

try {
  for (const vocabSize of [0, 32000]) {
    const vdir = join(dir, String(vocabSize));
    const manifest = forge({ outDir: vdir, preset: "demo", vocabSize });
    const model = await llama.loadModel({ modelPath: join(vdir, manifest.models["flock-demo"].file) });
    for (const threads of [1, 2]) {
      const context = await model.createContext({ contextSize: 512, threads: { ideal: threads, min: threads } });
      const seq = context.getSequence();
      const measure = async (what: { probabilities?: boolean; token?: boolean }) => {
        await seq.clearHistory();
        await seq.controlledEvaluate([manifest.vocab.bos as Token]);
        const started = performance.now();
        let token = manifest.vocab.bos;
        for (let i = 0; i < TOKENS; i++) {
          const [r] = await seq.controlledEvaluate([[token as Token, { generateNext: what }]]);
          // Feed a fixed, valid continuation: the cost is what is measured, not the text.
          token = r?.next?.token ?? manifest.vocab.bos + ((i % 50) + 300);
        }
        return (performance.now() - started) / TOKENS;
      };
      const sampled = await measure({ token: true });
      const distribution = await measure({ probabilities: true });
      const vocabulary = manifest.vocab.tokens.length;
      rows.push({ vocabulary, threads, path: "token sampled in llama.cpp", msPerToken: sampled, tokensPerSecond: 1000 / sampled, ratio: 1 });
      rows.push({ vocabulary, threads, path: "full distribution (Map)", msPerToken: distribution, tokensPerSecond: 1000 / distribution, ratio: distribution / sampled });
      await context.dispose();
    }
    await model.dispose();
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}

printTable(rows);
writeReport(out, { benchmark: "decode", command: "npm run bench:decode", settings: { tokens: TOKENS, model: "flock-demo (4 layers, d=128)" }, rows });
