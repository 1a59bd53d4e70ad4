// npm run rpc-server [-- --host 127.0.0.1] [--port 50052] [--threads N] [--cache]
//
// llama.cpp's rpc-server, built from the same llama.cpp source as flock's engine (once, cached in
// ~/.cache/flock), for the machines that hold a model's layers: a model entry's "rpc" lists them
// (docs/scale-out.md). llama.cpp's RPC protocol has no authentication and no encryption: anyone
// who reaches the port can run computations and read what it holds, so bind it to a private
// network that only flock reaches.
import { spawn } from "node:child_process";
import { isIP } from "node:net";
import { availableParallelism } from "node:os";
import { parseArgs } from "node:util";
import { llamaToolBinary } from "../engine/native/llama-tools.js";

const { values } = parseArgs({
  options: {
    host: { type: "string", default: "127.0.0.1" },
    port: { type: "string", default: "50052" },
    threads: { type: "string" },
    cache: { type: "boolean", default: false },
    help: { type: "boolean", short: "h", default: false },
  },
});
if (values.help) {
  console.log("usage: npm run rpc-server -- [--host 127.0.0.1] [--port 50052] [--threads N] [--cache]");
  process.exit(0);
}
const port = Number(values.port);
if (!Number.isInteger(port) || port < 1 || port > 65535) {
  console.error(`rpc-server: --port ${values.port} is not a port`);
  process.exit(2);
}
const loopback = values.host === "localhost" || (isIP(values.host) !== 0 && /^(127\.|::1$)/.test(values.host));
if (!loopback) console.error(`rpc-server: WARNING: listening on ${values.host}; llama.cpp's RPC is unauthenticated and unencrypted, so this address must be on a private network only flock reaches`);

const binary = llamaToolBinary("rpc-server");
const threads = values.threads ?? String(Math.max(1, availableParallelism() - 1));
const args = ["-H", values.host, "-p", String(port), "-t", threads, ...(values.cache ? ["-c"] : [])];
const child = spawn(binary, args, { stdio: "inherit" });
for (const signal of ["SIGINT", "SIGTERM"] as const) process.on(signal, () => child.kill(signal));
child.on("exit", (code, signal) => process.exit(code ?? (signal ? 1 : 0)));
