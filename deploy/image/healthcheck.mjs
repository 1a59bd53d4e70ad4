// The images' HEALTHCHECK: GET /health on loopback, healthy on 200 (flock answers 503 while
// models load and once it is shutting down). The port is FLOCK_PORT's (the image sets 8080):
// change the port with FLOCK_PORT, not --port, or this probe misses it. With
// --health-requires-key the first key of FLOCK_API_KEYS is sent (keys given only by flag, key
// file or config file are not visible here; override the healthcheck then).
const port = process.env.FLOCK_PORT || "8080";
const key = (process.env.FLOCK_API_KEYS ?? "")
  .split(",")
  .map((k) => k.trim())
  .find((k) => k.length > 0);
try {
  const res = await fetch(`http://127.0.0.1:${port}/health`, {
    headers: key ? { authorization: `Bearer ${key}` } : {},
    signal: AbortSignal.timeout(4000),
  });
  process.exit(res.status === 200 ? 0 : 1);
} catch {
  process.exit(1);
}
