// llama.cpp rpc-server processes on loopback for bench:rpc and test/rpc.test.ts (the binary from
// engine/native/llama-tools.ts), one thread each.
import { type ChildProcess, spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { freePort } from "./replica-set.js";

export interface RpcServer {
  endpoint: string;
  port: number;
  process: ChildProcess;
}

/** An rpc-server on `port` (a free one if not given), once the port listens. */
export async function startRpcServer(binary: string, port?: number): Promise<RpcServer> {
  port ??= await freePort();
  const child = spawn(binary, ["-H", "127.0.0.1", "-p", String(port), "-t", "1"], { stdio: "ignore" });
  // Ready once its port listens. (Not by connecting: it serves one client at a time, and a
  // connection that sends nothing can hold it.)
  const hexPort = `:${port.toString(16).toUpperCase().padStart(4, "0")}`;
  for (let i = 0; ; i++) {
    if (child.exitCode !== null) throw new Error(`rpc-server exited (${child.exitCode})`);
    const listening = readFileSync("/proc/net/tcp", "utf8").split("\n").some((line) => line.split(/\s+/)[2]?.endsWith(hexPort) && line.split(/\s+/)[4] === "0A");
    if (listening) break;
    if (i > 300) throw new Error("rpc-server did not listen in 30 s");
    await new Promise((r) => setTimeout(r, 100));
  }
  return { endpoint: `127.0.0.1:${port}`, port, process: child };
}
