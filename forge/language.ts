// The forge's own little language: four domains that share function words and a grammar, so
// that documents read as (simple) English to a person trying the demo, while every domain has
// words of its own — the property routing and fusion tests rely on (a token's domain can be
// told from the token, and mixed documents interleave domains sentence by sentence).
import type { Rng } from "../decoding/rng.js";

export interface Domain {
  name: string;
  subjects: readonly string[];
  verbs: readonly string[];
  objects: readonly string[];
  adjectives: readonly string[];
  places: readonly string[];
}

export const DOMAINS: readonly Domain[] = [
  {
    name: "kitchen",
    subjects: ["cook", "baker", "chef", "waiter"],
    verbs: ["mixes", "heats", "slices", "tastes", "serves", "boils"],
    objects: ["soup", "bread", "onion", "cake", "sauce", "rice", "pie"],
    adjectives: ["hot", "sweet", "fresh", "spicy"],
    places: ["oven", "pot", "pan", "kitchen"],
  },
  {
    name: "harbor",
    subjects: ["sailor", "captain", "diver", "crew"],
    verbs: ["ties", "pulls", "rows", "anchors", "fixes", "loads"],
    objects: ["rope", "net", "boat", "sail", "mast", "crate", "anchor"],
    adjectives: ["salty", "wet", "heavy", "old"],
    places: ["dock", "harbor", "deck", "bay"],
  },
  {
    name: "sky",
    subjects: ["scientist", "pilot", "child", "owl"],
    verbs: ["watches", "tracks", "counts", "maps", "sees", "finds"],
    objects: ["star", "moon", "comet", "planet", "cloud", "orbit", "galaxy"],
    adjectives: ["bright", "distant", "pale", "silver"],
    places: ["sky", "night", "dawn", "telescope"],
  },
  {
    name: "garden",
    subjects: ["worker", "farmer", "neighbor", "rabbit"],
    verbs: ["plants", "waters", "cuts", "picks", "digs", "grows"],
    objects: ["rose", "fern", "seed", "carrot", "hedge", "tree", "weed"],
    adjectives: ["green", "tall", "tiny", "wild"],
    places: ["garden", "field", "yard", "greenhouse"],
  },
];

const DETERMINERS = ["the", "a"] as const;
const PREPOSITIONS = ["in", "on", "near", "by"] as const;
const CONNECTIVES = ["then", "and", "so"] as const;
const PRONOUNS = ["she", "he"] as const;

/** The words only this domain uses. */
export function domainWords(d: Domain): string[] {
  return [...d.subjects, ...d.verbs, ...d.objects, ...d.adjectives, ...d.places];
}

/** Every word of the language, lower case; sentence starts add capitalised forms. */
export function allWords(): string[] {
  const words = new Set<string>([...DETERMINERS, ...PREPOSITIONS, ...CONNECTIVES, ...PRONOUNS]);
  for (const d of DOMAINS) for (const w of domainWords(d)) words.add(w);
  return [...words];
}

/** Words that may start a sentence (capitalised when they do). */
export const SENTENCE_STARTERS: readonly string[] = ["the", "a", "she", "he", "then", "so"];

function nounPhrase(rng: Rng, nouns: readonly string[], adjectives: readonly string[]): string[] {
  const phrase: string[] = [rng.pick(DETERMINERS)];
  if (rng.next() < 0.35) phrase.push(rng.pick(adjectives));
  phrase.push(rng.pick(nouns));
  return phrase;
}

/** One sentence of a domain as lower-case words plus the final ".". */
export function sentence(rng: Rng, domain: Domain): string[] {
  const words: string[] = [];
  if (rng.next() < 0.2) words.push(rng.pick(["then", "so"]));
  if (rng.next() < 0.3) words.push(rng.pick(PRONOUNS));
  else words.push(...nounPhrase(rng, domain.subjects, domain.adjectives));
  words.push(rng.pick(domain.verbs));
  words.push(...nounPhrase(rng, domain.objects, domain.adjectives));
  if (rng.next() < 0.5) words.push(rng.pick(PREPOSITIONS), "the", rng.pick(domain.places));
  if (rng.next() < 0.25) words.push("and", rng.pick(domain.verbs), ...nounPhrase(rng, domain.objects, domain.adjectives));
  words.push(".");
  return words;
}

/** A document: sentences from one domain, or interleaving domains when `domains` has several. */
export function document(rng: Rng, domains: readonly Domain[], sentences: number): string[][] {
  const out: string[][] = [];
  for (let i = 0; i < sentences; i++) out.push(sentence(rng, domains[i % domains.length]));
  return out;
}

/** Renders sentences as text the way the tokenizer sees it (capitalised sentence starts). */
export function renderText(sentences: readonly (readonly string[])[]): string {
  return sentences
    .map((s) => s.map((w, i) => (i === 0 ? capitalize(w) : w)).join(" ").replace(/ \./g, "."))
    .join(" ");
}

export function capitalize(word: string): string {
  return word.charAt(0).toUpperCase() + word.slice(1);
}
