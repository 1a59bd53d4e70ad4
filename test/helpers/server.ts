// Starts a real flock server on an ephemeral port over the forged models, with an official
// OpenAI client pointed at it.
import { join } from "node:path";
import OpenAI from "openai";
import { inject } from "vitest";
import { readManifest, type Manifest } from "../../forge/manifest.js";
import { type ServerConfigInput, ServerConfig } from "../../server/config.js";
import { createLogger } from "../../server/logger.js";
import { type FlockServer, startServer } from "../../server/server.js";

export interface TestServer {
  server: FlockServer;
  client: OpenAI;
  url: string;
  manifest: Manifest;
  forgeDir: string;
  close(): Promise<void>;
}

export function forgedPath(file: string): string {
  return join(inject("forgeDir"), file);
}

/** The manifest of the models the test run forged (before a server is started with them). */
export function forgedManifest(): Manifest {
  return readManifest(inject("forgeDir"));
}

export async function startTestServer(overrides: Partial<ServerConfigInput> = {}): Promise<TestServer> {
  const forgeDir = inject("forgeDir");
  const manifest = readManifest(forgeDir);
  const config = ServerConfig.parse({
    port: 0,
    gpu: "off",
    threads: 1,
    logLevel: "silent",
    cacheDir: join(forgeDir, "state"),
    models: [
      { id: "flock-demo", path: join(forgeDir, manifest.models["flock-demo"].file), parallel: 4 },
      { id: "kitchen", path: join(forgeDir, manifest.models["flock-demo"].file), lora: [{ path: join(forgeDir, manifest.adapters["flock-demo-kitchen"].file) }], parallel: 2 },
      { id: "small", path: join(forgeDir, manifest.models["flock-demo"].file), contextSize: 64, parallel: 1 },
      {
        id: "spec",
        path: join(forgeDir, manifest.models["flock-demo"].file),
        parallel: 2,
        speculative: { draft: join(forgeDir, manifest.models["flock-demo-draft"].file) },
      },
    ],
    ...overrides,
  });
  const server = await startServer(config, createLogger(config.logLevel));
  await server.ready;
  const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0 });
  return { server, client, url: server.url, manifest, forgeDir, close: () => server.close() };
}
