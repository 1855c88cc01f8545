/**
 * A Bloom filter of event ids: "certainly not held" or "maybe held". Ids
 * are SHA-256 digests, so their bytes are already uniform: the k probe
 * positions are read straight from the id (no hashing). The ingest stage
 * keeps one so that a fresh event — nearly every event — needs no lookup
 * in the index before it goes on; only a "maybe" is asked of the index.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { IdFilter } from "./id_filter.ts";
 * const f = IdFilter.sized(1000);
 * const id = crypto.getRandomValues(new Uint8Array(32));
 * assert(!f.mayHave(id));
 * f.add(id);
 * assert(f.mayHave(id));
 * ```
 *
 * @module
 */

/** Probes per id. */
export const ID_FILTER_PROBES = 7;
/** Bits per id a filter is sized for (with 7 probes: about 0.05 % false "maybe" at capacity). */
export const ID_FILTER_BITS_PER_ID = 16;

/** A Bloom filter over 32-byte ids. */
export class IdFilter {
  /** Ids added (the filter answers "maybe" more often past `capacity`). */
  count = 0;
  readonly #mask: number;

  constructor(readonly bits: Uint8Array) {
    const n = bits.length * 8;
    if (n < 8 || (n & (n - 1)) !== 0) throw new RangeError(`IdFilter: ${n} bits is not a power of two`);
    this.#mask = n - 1;
  }

  /** A filter for `ids` ids, its size a power of two, at most `bytesMax` bytes. */
  static sized(ids: number, bytesMax = 64 * 1024 * 1024): IdFilter {
    let bytes = 1024;
    while (bytes * 8 < ids * ID_FILTER_BITS_PER_ID && bytes * 2 <= bytesMax) bytes *= 2;
    return new IdFilter(new Uint8Array(bytes));
  }

  /** Ids it holds at its designed false-positive rate. */
  get capacity(): number {
    return (this.bits.length * 8) / ID_FILTER_BITS_PER_ID;
  }

  #probe(id: Uint8Array, i: number): number {
    const o = i * 4;
    return ((id[o]! | (id[o + 1]! << 8) | (id[o + 2]! << 16) | (id[o + 3]! << 24)) >>> 0) & this.#mask;
  }

  add(id: Uint8Array): void {
    for (let i = 0; i < ID_FILTER_PROBES; i++) {
      const b = this.#probe(id, i);
      this.bits[b >>> 3]! |= 1 << (b & 7);
    }
    this.count++;
  }

  /** False: certainly never added. True: maybe. */
  mayHave(id: Uint8Array): boolean {
    for (let i = 0; i < ID_FILTER_PROBES; i++) {
      const b = this.#probe(id, i);
      if ((this.bits[b >>> 3]! & (1 << (b & 7))) === 0) return false;
    }
    return true;
  }
}
