// A feature's per-request overrides, derived from the same zod fields as its configuration:
// the request spells them in snake_case (OpenAI's convention, `flock.speculative.p_min`), every
// one optional, and they come out camelCase like the configuration (`pMin`), so a setting is
// declared once, with its bounds, for the config file, the request and the decoder.
import { z } from "zod";

type Snake<S extends string> = S extends `${infer Head}${infer Tail}` ? `${Head extends Lowercase<Head> ? Head : `_${Lowercase<Head>}`}${Snake<Tail>}` : S;

type Fields = Record<string, z.ZodType>;
type RequestShape<F extends Fields> = { [K in keyof F & string as Snake<K>]: z.ZodOptional<F[K]> };
export type Overrides<F extends Fields> = { [K in keyof F]?: z.output<F[K]> };

const snake = (key: string) => key.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);

/** The request schema of a feature's fields: snake_case in, camelCase out, unset keys left out. */
export function requestOverrides<F extends Fields>(fields: F) {
  const names = Object.keys(fields);
  const shape = Object.fromEntries(names.map((key) => [snake(key), fields[key].optional()]));
  return z.strictObject(shape as RequestShape<F>).transform((request) => {
    const values = request as Record<string, unknown>;
    return Object.fromEntries(names.filter((key) => values[snake(key)] !== undefined).map((key) => [key, values[snake(key)]])) as Overrides<F>;
  });
}
