/**
 * Private helpers for the Merkle index tests: a seeded random source,
 * random items, and a Map-backed page store that applies writes.
 *
 * @module
 */

import { Prng, toHex } from "../core/bytes.ts";
import type { Item } from "./item.ts";
import { compareItems } from "./item.ts";
import type { PageStore, PageWrites } from "./tree.ts";

/** A seeded 32-bit random source (core/bytes.ts's mulberry32): `u32()` and `int(n)` in `0..n-1`. */
export function prng(seed: number): { u32(): number; int(n: number): number } {
  return new Prng(seed);
}

/** A random 32-byte id. */
export function randomId(rand: { u32(): number }): Uint8Array {
  const id = new Uint8Array(32);
  const v = new DataView(id.buffer);
  for (let i = 0; i < 8; i++) v.setUint32(i * 4, rand.u32());
  return id;
}

/** `n` random items with ts in `tsMin..tsMin+tsSpan-1`, unsorted. */
export function randomItems(
  rand: { u32(): number; int(n: number): number },
  n: number,
  tsMin = 1_700_000_000_000,
  tsSpan = 86_400_000,
): Item[] {
  return Array.from({ length: n }, () => ({ ts: tsMin + rand.int(tsSpan), id: randomId(rand) }));
}

/** A sorted, de-duplicated copy of `items`. */
export function sortedSet(items: readonly Item[]): Item[] {
  return items.slice().sort(compareItems).filter((x, i, all) => i === 0 || compareItems(all[i - 1]!, x) !== 0);
}

/** Shuffle `items` in place (Fisher–Yates) and return them. */
export function shuffle<T>(rand: { int(n: number): number }, items: T[]): T[] {
  for (let i = items.length - 1; i > 0; i--) {
    const j = rand.int(i + 1);
    [items[i], items[j]] = [items[j]!, items[i]!];
  }
  return items;
}

/** A Map-backed page store; `apply()` checks that every deleted page existed. */
export function mapStore(initial?: Map<string, Uint8Array>): {
  pages: Map<string, Uint8Array>;
  store: PageStore;
  apply(w: PageWrites): void;
} {
  const pages = new Map(initial ?? []);
  return {
    pages,
    store: { get: (h) => pages.get(toHex(h)) },
    apply(w) {
      for (const k of w.del) if (!pages.delete(k)) throw new Error(`Deleted page '${k}' was not stored`);
      for (const [k, v] of w.put) pages.set(k, v);
    },
  };
}

export { toHex };
