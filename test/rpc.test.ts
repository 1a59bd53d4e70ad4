// One model's layers on two llama.cpp rpc-server processes (built from the same llama.cpp source
// as flock's engine) on loopback: greedy output equals the local model's token for token; an
// rpc-server killed mid-request ends that request with a clean error, the model reports itself
// unavailable (GET /health 503) while the server keeps serving its other models, and once the
// rpc-server is back flock loads the model onto it again.
import type { ChildProcess } from "node:child_process";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { freePort } from "../bench/replica-set.js";
import { type RpcServer, startRpcServer } from "../bench/rpc-server.js";
import { llamaToolBinary } from "../engine/native/llama-tools.js";
import { ServerConfig } from "../server/config.js";
import { createLogger } from "../server/logger.js";
import { type FlockServer, startServer } from "../server/server.js";
import { forgedManifest, forgedPath } from "./helpers/server.js";

const native = process.env.FLOCK_REQUIRE_NATIVE === "1" || process.env.FLOCK_RPC_TEST === "1";

function kill(child: ChildProcess, signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  const exited = new Promise<void>((r) => child.once("exit", () => r()));
  child.kill(signal);
  return exited;
}

describe.runIf(native)("a model on llama.cpp RPC servers", { timeout: 120_000 }, () => {
  let binary: string;
  const servers: RpcServer[] = [];
  let flock: FlockServer;
  let client: OpenAI;
  const manifest = forgedManifest();
  const model = forgedPath(manifest.models["flock-demo"].file);
  const eos = String(manifest.vocab.eos);

  /** flock serving the model locally as "local" and on `rpc` as "split" (not yet ready). */
  const flockWith = (rpc: string[], local = true) =>
    startServer(
      ServerConfig.parse({
        port: 0,
        gpu: "off",
        threads: 1,
        logLevel: "silent",
        playground: false,
        models: [...(local ? [{ id: "local", path: model, contextSize: 512, parallel: 2 }] : []), { id: "split", path: model, contextSize: 512, parallel: 2, rpc }],
      }),
      createLogger("silent"),
    );
  const startFlock = async () => {
    const server = await flockWith(servers.map((s) => s.endpoint));
    await server.ready;
    return server;
  };

  beforeAll(async () => {
    binary = llamaToolBinary("rpc-server"); // built once per llama.cpp commit (minutes)
    servers.push(await startRpcServer(binary), await startRpcServer(binary));
    flock = await startFlock();
    client = new OpenAI({ baseURL: `${flock.url}/v1`, apiKey: "unused", maxRetries: 0 });
  }, 900_000);

  afterAll(async () => {
    await flock?.close(0);
    await Promise.all(servers.map((s) => kill(s.process)));
  });

  const greedy = async (c: OpenAI, id: string, prompt: string) => {
    const res = await c.completions.create({ model: id, prompt, max_tokens: 40, temperature: 0, logprobs: 1, logit_bias: { [eos]: -100 } });
    return res.choices[0].logprobs!.tokens!;
  };

  it("generates exactly what the local model generates, greedy, token for token", async () => {
    for (const prompt of ["The cook", "The diver", "The scientist", "The worker"]) {
      const local = await greedy(client, "local", prompt);
      const split = await greedy(client, "split", prompt);
      expect(local.length).toBe(40);
      expect(split).toEqual(local);
    }
    const status = await (await fetch(`${flock.url}/health`)).json();
    expect(status).toEqual({ status: "ok", models: ["local", "split"] });
  });

  it("a server killed mid-request fails that request cleanly and marks the model unavailable", async () => {
    const stream = await client.completions.create({ model: "split", prompt: "The cook", max_tokens: 400, temperature: 0, stream: true, logit_bias: { [eos]: -100 } });
    let chunks = 0;
    let failure: unknown = null;
    try {
      for await (const chunk of stream) {
        if (chunk.choices[0]?.text) chunks++;
        if (chunks === 3) await kill(servers[1].process, "SIGKILL");
      }
    } catch (err) {
      failure = err;
    }
    expect(chunks).toBeGreaterThanOrEqual(3);
    expect(chunks).toBeLessThan(400);
    expect(failure, "the stream ended with an error").toBeInstanceOf(OpenAI.APIError);
    expect((failure as Error).message).toMatch(new RegExp(`RPC server ${servers[1].endpoint}`));

    const health = await fetch(`${flock.url}/health`);
    expect(health.status).toBe(503);
    expect(await health.json()).toMatchObject({ status: "unhealthy", unavailable: [{ id: "split", detail: expect.stringContaining(servers[1].endpoint) }] });

    const refused = await client.completions.create({ model: "split", prompt: "The cook", max_tokens: 4 }).catch((err: unknown) => err);
    expect(refused).toBeInstanceOf(OpenAI.APIError);
    expect((refused as InstanceType<typeof OpenAI.APIError>).status).toBe(503);
    expect((refused as Error).message).toMatch(/model split is unavailable: the RPC server .* failed/);

    // The process and its other models go on.
    expect((await greedy(client, "local", "The diver")).length).toBe(40);
  });

  it("once the server is back, flock loads the model onto it again and serves it", async () => {
    servers[1] = await startRpcServer(binary, servers[1].port);
    let health: { status?: string } = {};
    for (let i = 0; i < 150 && health.status !== "ok"; i++) {
      await new Promise((r) => setTimeout(r, 200));
      health = (await (await fetch(`${flock.url}/health`)).json()) as { status?: string };
    }
    expect(health).toEqual({ status: "ok", models: ["local", "split"] });
    expect(await greedy(client, "split", "The worker")).toEqual(await greedy(client, "local", "The worker"));
  });

  it("an unreachable server is refused at load with a named error", async () => {
    const port = await freePort();
    const server = await flockWith([`127.0.0.1:${port}`], false);
    await expect(server.ready).rejects.toThrow(new RegExp(`model split: cannot reach the RPC server 127.0.0.1:${port}`));
    await server.close(0);
  });
});

// Where it does not run, say so: a skipped suite should not look like a passed one.
describe.runIf(!native)("a model on llama.cpp RPC servers", () => {
  it.skip("needs flock's native build (FLOCK_REQUIRE_NATIVE=1 or FLOCK_RPC_TEST=1)", () => {});
});
