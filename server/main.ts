// Entry point: npm start -- [options]
import { ConfigError, loadConfig, USAGE } from "./config.js";
import { createLogger } from "./logger.js";
import { startServer } from "./server.js";

let config;
try {
  config = loadConfig(process.argv.slice(2));
} catch (err) {
  if (!(err instanceof ConfigError)) throw err;
  console.error(`flock: ${err.message}\n\n${USAGE}`);
  process.exit(2);
}
if (config === null) {
  console.log(USAGE);
  process.exit(0);
}

const log = createLogger(config.logLevel);
const server = await startServer(config, log);
server.ready.catch(() => process.exit(1));

const shutdown = async (signal: string) => {
  log.info({ signal }, "shutting down");
  await server.close();
  process.exit(0);
};
process.once("SIGINT", () => void shutdown("SIGINT"));
process.once("SIGTERM", () => void shutdown("SIGTERM"));
