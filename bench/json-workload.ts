// The JSON workload the constrained benchmarks share (bench:grammar, bench:spec:json): a schema
// of the kind structured-output requests carry, and a valid instance of it.
export const BOAT_SCHEMA = {
  type: "object",
  properties: {
    name: { type: "string", maxLength: 24 },
    kind: { enum: ["sloop", "ketch", "dinghy", "schooner"] },
    crew: { type: "integer", minimum: 1, maximum: 40 },
    moored: { type: "boolean" },
    ports: { type: "array", items: { type: "string", maxLength: 16 }, maxItems: 4 },
  },
  required: ["name", "kind", "crew", "moored", "ports"],
  additionalProperties: false,
};

export const BOAT_INSTANCE = '{"name": "Evening Star", "kind": "schooner", "crew": 12, "moored": false, "ports": ["Lisbon", "Porto", "Vigo"]}';
