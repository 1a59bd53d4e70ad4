// Structured JSON logs (pino). Every line of a request carries its requestId: handlers log
// through the per-request child logger that app.ts creates (c.get("log")).
import { pino } from "pino";

export type Logger = pino.Logger;

/** A logger at `level`, writing JSON lines to stdout or to `destination` (tests capture lines). */
export function createLogger(level: string, destination?: pino.DestinationStream): Logger {
  const options = { level, base: { service: "flock" } };
  return destination ? pino(options, destination) : pino(options);
}
