// Structured logs (pino). Every line of a request carries its requestId: handlers log through
// the per-request child logger that app.ts creates (c.get("log")). JSON lines for collectors;
// text (pino-pretty) for people reading a terminal.
import { pino } from "pino";
import pretty from "pino-pretty";

export type Logger = pino.Logger;
export type LogFormat = "text" | "json";

/**
 * A logger at `level`, writing to stdout or to `destination` (tests capture JSON lines). Without
 * a format: text when stdout is a terminal, JSON otherwise.
 */
export function createLogger(level: string, destination?: pino.DestinationStream, format?: LogFormat): Logger {
  const options = { level, base: { service: "flock" } };
  if (destination) return pino(options, destination);
  if ((format ?? (process.stdout.isTTY ? "text" : "json")) === "json") return pino(options);
  // Synchronous, so the last lines before an exit are not lost.
  return pino(options, pretty({ sync: true, colorize: process.stdout.isTTY === true, translateTime: "SYS:HH:MM:ss.l", ignore: "pid,hostname,service" }));
}
