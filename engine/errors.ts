// Domain errors every layer can raise. Each carries a `kind`; server/ maps kinds to HTTP
// status codes and OpenAI error bodies in one place.
export type FlockErrorKind =
  | "invalid_request"
  | "context_length_exceeded"
  | "model_not_found"
  | "not_found"
  | "conflict"
  | "unsupported"
  | "overloaded"
  | "unavailable"
  | "internal";

export class FlockError extends Error {
  constructor(
    readonly kind: FlockErrorKind,
    message: string,
    readonly param: string | null = null,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = "FlockError";
  }
}
