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

const log = createLogger(config.logLevel, undefined, config.logFormat);
// An error nothing caught leaves the process in an unknown state (a sequence held, a lock
// taken): log it and exit non-zero, for the supervisor to restart a clean one.
// The requests in flight are named so their clients' failures can be matched to this exit.
let inFlight: () => string[] = () => [];
const die = (kind: string) => (err: unknown) => {
  log.fatal({ err, inFlight: inFlight() }, `${kind}: exiting`);
  process.exit(70);
};
process.on("uncaughtException", die("uncaught exception"));
process.on("unhandledRejection", die("unhandled rejection"));
const server = await startServer(config, log);
inFlight = () => server.inFlight();
// A model that cannot be loaded stops the server: the log line has the details, stderr the gist.
server.ready.catch((err: unknown) => {
  console.error(`flock: cannot start: ${(err as Error).message}`);
  process.exit(1);
});

// The first SIGTERM/SIGINT drains (requests in flight get shutdownTimeout seconds); a second one
// cancels what is still running at once. Either way predictors are saved and the exit code is 0.
let signals = 0;
const shutdown = (signal: string) => {
  signals++;
  if (signals > 1) {
    log.warn({ signal }, "second signal: cancelling requests in flight now");
    void server.close(0);
    return;
  }
  log.info({ signal, deadlineSeconds: config.shutdownTimeout }, "shutting down");
  server.close().then(
    () => {
      log.info("shut down");
      process.exit(0);
    },
    (err: unknown) => {
      log.error({ err }, "shutdown failed");
      process.exit(1);
    },
  );
};
process.on("SIGINT", () => shutdown("SIGINT"));
process.on("SIGTERM", () => shutdown("SIGTERM"));
