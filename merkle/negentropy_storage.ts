/**
 * The storage side of negentropy set reconciliation: the rank-based
 * {@linkcode NegentropyStorage} interface that the {@linkcode Reconciler} in
 * `negentropy.ts` runs over, and {@linkcode VectorStorage}, a sorted array
 * that computes fingerprints by scanning (the reference the Merkle index is
 * checked against). The other backend is the Merkle index itself:
 * `MerkleTree` (`tree.ts`) implements the same interface, with fingerprints in
 * O(log N). Sums and fingerprints are `_sum.ts` and `fingerprint.ts`, shared
 * by both. {@linkcode SubRange} narrows either to a time range `[since, until)`
 * (partial sync).
 *
 * Items are ordered by `ts`, then by `id` bytes lexicographically. A
 * fingerprint of a range is the first 16 bytes of SHA-256 over the 32-byte
 * little-endian sum (mod 2^256) of the range's ids, followed by the number of
 * ids as a negentropy varint.
 *
 * @module
 */

import { VECTOR_ITEMS_MAX } from "../core/limits.ts";
import { FINGERPRINT_BYTES, fingerprintOf } from "./fingerprint.ts";
import { ID_BYTES } from "./item.ts";
import { sumAdd, sumAddBytes, sumSub, sumToBytes } from "./_sum.ts";

export { FINGERPRINT_BYTES, ID_BYTES };

/**
 * One item, or a bound between items.
 *
 * As an item, `ts` is a non-negative safe integer and `id` is 32 bytes. As a
 * bound, `ts` may be `Infinity` (the end of the key space) and `id` may be a
 * prefix of 0 to 32 bytes; an item whose id starts with that prefix sorts
 * after the bound.
 */
export interface NegentropyItem {
  /** Timestamp, the first sort key. */
  ts: number;
  /** Id bytes (or, in a bound, a prefix of them), the second sort key. */
  id: Uint8Array;
}

/**
 * A sorted set of items addressed by rank, as the reconciler needs it.
 * Ranks run from 0 to `size() - 1` in `(ts, id)` order; ranges are half-open
 * `[begin, end)`. A Merkle tree answers `fingerprint` in O(log N).
 */
export interface NegentropyStorage {
  /** Number of items. */
  size(): number;
  /** The item at rank `i` (`0 <= i < size()`). */
  getItem(i: number): NegentropyItem;
  /**
   * Call `cb` on each item of `[begin, end)` in order, with its rank; stop
   * early when `cb` returns `false`.
   */
  iterate(
    begin: number,
    end: number,
    cb: (item: NegentropyItem, i: number) => boolean | void,
  ): void;
  /** The first rank in `[begin, end)` whose item is `>= bound`, or `end`. */
  findLowerBound(begin: number, end: number, bound: NegentropyItem): number;
  /** The 16-byte fingerprint of the items in `[begin, end)`. */
  fingerprint(begin: number, end: number): Uint8Array;
}

/**
 * Compare two items or bounds by `ts`, then by `id` bytes (a proper prefix
 * sorts first). Returns a negative number, zero or a positive number.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { compareItems } from "./negentropy_storage.ts";
 * const a = { ts: 5, id: new Uint8Array([1, 2]) };
 * const b = { ts: 5, id: new Uint8Array([1]) };
 * assert(compareItems(b, a) < 0);
 * ```
 */
export function compareItems(a: NegentropyItem, b: NegentropyItem): number {
  if (a.ts !== b.ts) return a.ts < b.ts ? -1 : 1;
  const x = a.id, y = b.id;
  const n = Math.min(x.length, y.length);
  for (let i = 0; i < n; i++) {
    const d = x[i]! - y[i]!;
    if (d !== 0) return d;
  }
  return x.length - y.length;
}

/**
 * A running sum of ids mod 2^256, as eight little-endian 32-bit words; the
 * building block of fingerprints. A Merkle node keeps one per subtree and
 * combines them with {@linkcode IdSum.addSum}.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { IdSum } from "./negentropy_storage.ts";
 * const s = new IdSum();
 * s.add(new Uint8Array(32).fill(1));
 * assert(s.fingerprint(1).length === 16);
 * ```
 */
export class IdSum {
  /** The eight 32-bit words of the sum, least significant first. */
  readonly words: Uint32Array = new Uint32Array(8);

  /** Add a 32-byte id (its bytes read as a little-endian 256-bit number). */
  add(id: Uint8Array): void {
    if (id.length !== ID_BYTES) {
      throw new RangeError(
        `Cannot add id of ${id.length} bytes to IdSum: expected ${ID_BYTES}`,
      );
    }
    sumAddBytes(this.words, id, 0);
  }

  /** Add another sum (mod 2^256). */
  addSum(other: IdSum): void {
    sumAdd(this.words, other.words);
  }

  /** Subtract another sum (mod 2^256), e.g. to turn prefix sums into a range sum. */
  subtractSum(other: IdSum): void {
    sumSub(this.words, other.words);
  }

  /** The 32 little-endian bytes of the sum. */
  bytes(): Uint8Array {
    return sumToBytes(this.words);
  }

  /** The fingerprint of a range of `count` ids whose sum this is. */
  fingerprint(count: number): Uint8Array {
    return fingerprintOf(this.words, count);
  }
}

const TWO_32 = 2 ** 32;
const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;
/** Items summed per column before carries are folded (2^20 * 2^32 < 2^53). */
const SUM_CHUNK_ITEMS_MAX = 2 ** 20;

/**
 * A sorted array of items: `insert` them in any order, `seal`, then use it
 * as a {@linkcode NegentropyStorage}. Fingerprints are computed by scanning
 * the range, O(range size); it is the reference backend for tests and for
 * checking the Merkle index.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { VectorStorage } from "./negentropy_storage.ts";
 * const s = new VectorStorage();
 * s.insert(2, new Uint8Array(32).fill(7));
 * s.insert(1, new Uint8Array(32).fill(9));
 * s.seal();
 * assert(s.size() === 2 && s.getItem(0).ts === 1);
 * ```
 */
export class VectorStorage implements NegentropyStorage {
  #sealed = false;
  #n = 0;
  #ts: Float64Array = new Float64Array(1024);
  #ids: Uint8Array = new Uint8Array(1024 * ID_BYTES);
  #words: Uint32Array | null = null;

  /** Add an item; only before {@linkcode VectorStorage.seal}. The id is copied. */
  insert(ts: number, id: Uint8Array): void {
    if (this.#sealed) {
      throw new Error("Cannot insert into VectorStorage: already sealed");
    }
    if (!Number.isSafeInteger(ts) || ts < 0) {
      throw new RangeError(
        `Cannot insert item with ts "${ts}": not a non-negative safe integer`,
      );
    }
    if (id.length !== ID_BYTES) {
      throw new RangeError(
        `Cannot insert item with id of ${id.length} bytes: expected ${ID_BYTES}`,
      );
    }
    if (this.#n >= VECTOR_ITEMS_MAX) {
      throw new RangeError(
        `Cannot insert item: VectorStorage holds at most ${VECTOR_ITEMS_MAX}`,
      );
    }
    if (this.#n === this.#ts.length) {
      const ts2 = new Float64Array(this.#ts.length * 2);
      ts2.set(this.#ts);
      this.#ts = ts2;
      const ids2 = new Uint8Array(this.#ids.length * 2);
      ids2.set(this.#ids);
      this.#ids = ids2;
    }
    this.#ts[this.#n] = ts;
    this.#ids.set(id, this.#n * ID_BYTES);
    this.#n++;
  }

  /** Sort the items and make the storage usable; throws on a duplicate item. */
  seal(): void {
    if (this.#sealed) {
      throw new Error("Cannot seal VectorStorage: already sealed");
    }
    const n = this.#n, ts = this.#ts, ids = this.#ids;
    // Sort ranks by (ts, first 4 id bytes), falling back to the full id.
    const head = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      const o = i * ID_BYTES;
      head[i] = ids[o]! * 2 ** 24 + ids[o + 1]! * 2 ** 16 +
        ids[o + 2]! * 2 ** 8 + ids[o + 3]!;
    }
    const cmp = (a: number, b: number): number => {
      const d = ts[a]! - ts[b]! || head[a]! - head[b]!;
      if (d !== 0) return d;
      const oa = a * ID_BYTES, ob = b * ID_BYTES;
      for (let k = 4; k < ID_BYTES; k++) {
        const e = ids[oa + k]! - ids[ob + k]!;
        if (e !== 0) return e;
      }
      return 0;
    };
    const order = new Uint32Array(n);
    for (let i = 0; i < n; i++) order[i] = i;
    order.sort(cmp);
    const sortedTs = new Float64Array(n);
    const sortedIds = new Uint8Array(n * ID_BYTES);
    for (let i = 0; i < n; i++) {
      const j = order[i]!;
      if (i > 0 && cmp(order[i - 1]!, j) === 0) {
        throw new RangeError(
          `Cannot seal VectorStorage: duplicate item at ts ${ts[j]}`,
        );
      }
      sortedTs[i] = ts[j]!;
      sortedIds.set(
        ids.subarray(j * ID_BYTES, (j + 1) * ID_BYTES),
        i * ID_BYTES,
      );
    }
    this.#ts = sortedTs;
    this.#ids = sortedIds;
    this.#words = LITTLE_ENDIAN ? new Uint32Array(sortedIds.buffer, 0, n * 8) : null;
    this.#sealed = true;
  }

  /** Number of items. */
  size(): number {
    this.#checkSealed();
    return this.#n;
  }

  /** The item at rank `i`; its `id` is a view into the storage, do not modify. */
  getItem(i: number): NegentropyItem {
    this.#checkSealed();
    if (!Number.isInteger(i) || i < 0 || i >= this.#n) {
      throw new RangeError(
        `Cannot get item ${i}: out of range [0, ${this.#n})`,
      );
    }
    return {
      ts: this.#ts[i]!,
      id: this.#ids.subarray(i * ID_BYTES, (i + 1) * ID_BYTES),
    };
  }

  /** Call `cb` on each item of `[begin, end)` in order; stop when it returns `false`. */
  iterate(
    begin: number,
    end: number,
    cb: (item: NegentropyItem, i: number) => boolean | void,
  ): void {
    this.#checkRange(begin, end);
    for (let i = begin; i < end; i++) {
      const item = {
        ts: this.#ts[i]!,
        id: this.#ids.subarray(i * ID_BYTES, (i + 1) * ID_BYTES),
      };
      if (cb(item, i) === false) break;
    }
  }

  /** The first rank in `[begin, end)` whose item is `>= bound`, or `end`. */
  findLowerBound(begin: number, end: number, bound: NegentropyItem): number {
    this.#checkRange(begin, end);
    const ts = this.#ts, ids = this.#ids, bid = bound.id;
    let lo = begin, hi = end;
    while (lo < hi) {
      const mid = lo + ((hi - lo) >>> 1);
      let less: boolean;
      const t = ts[mid]!;
      if (t !== bound.ts) {
        less = t < bound.ts;
      } else {
        // Item id (32 bytes) vs bound id (prefix): item < bound only if a byte is smaller.
        less = false;
        const o = mid * ID_BYTES;
        for (let k = 0; k < bid.length; k++) {
          const d = ids[o + k]! - bid[k]!;
          if (d !== 0) {
            less = d < 0;
            break;
          }
        }
      }
      if (less) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** The fingerprint of `[begin, end)`, computed by summing every id in it. */
  fingerprint(begin: number, end: number): Uint8Array {
    this.#checkRange(begin, end);
    const sum = new IdSum();
    const words = this.#words;
    if (words === null) {
      for (let i = begin; i < end; i++) {
        sum.add(this.#ids.subarray(i * ID_BYTES, (i + 1) * ID_BYTES));
      }
      return sum.fingerprint(end - begin);
    }
    const part = new IdSum();
    const cols = new Float64Array(8);
    for (let start = begin; start < end; start += SUM_CHUNK_ITEMS_MAX) {
      const stop = Math.min(end, start + SUM_CHUNK_ITEMS_MAX);
      let c0 = 0, c1 = 0, c2 = 0, c3 = 0, c4 = 0, c5 = 0, c6 = 0, c7 = 0;
      for (let i = start, o = start * 8; i < stop; i++, o += 8) {
        c0 += words[o]!;
        c1 += words[o + 1]!;
        c2 += words[o + 2]!;
        c3 += words[o + 3]!;
        c4 += words[o + 4]!;
        c5 += words[o + 5]!;
        c6 += words[o + 6]!;
        c7 += words[o + 7]!;
      }
      cols[0] = c0, cols[1] = c1, cols[2] = c2, cols[3] = c3;
      cols[4] = c4, cols[5] = c5, cols[6] = c6, cols[7] = c7;
      let carry = 0;
      for (let k = 0; k < 8; k++) {
        const v = cols[k]! + carry;
        const low = v % TWO_32;
        part.words[k] = low;
        carry = (v - low) / TWO_32;
      }
      sum.addSum(part);
    }
    return sum.fingerprint(end - begin);
  }

  #checkSealed(): void {
    if (!this.#sealed) throw new Error("Cannot read VectorStorage: not sealed");
  }

  #checkRange(begin: number, end: number): void {
    this.#checkSealed();
    if (
      !Number.isInteger(begin) || !Number.isInteger(end) || begin < 0 ||
      begin > end || end > this.#n
    ) {
      throw new RangeError(
        `Cannot use range [${begin}, ${end}): outside [0, ${this.#n})`,
      );
    }
  }
}

/**
 * The items of a storage whose `ts` lies in `[since, until)`, as a storage of
 * their own (the C++ reference's `SubRange`): ranks run from 0 over just
 * those items, so a {@linkcode Reconciler} built on it initiates and answers
 * over that time range only. Both sides of a reconciliation must use the same
 * range. `until` may be `Infinity` (no upper end).
 *
 * The range's ranks in the underlying storage are found again on every
 * {@linkcode SubRange.size} call, which the reconciler makes first in every
 * message; so the underlying storage may change between messages (as a
 * node's Merkle index does), not during one.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { SubRange, VectorStorage } from "./negentropy_storage.ts";
 * const s = new VectorStorage();
 * for (const ts of [5, 10, 15, 20]) s.insert(ts, new Uint8Array(32).fill(ts));
 * s.seal();
 * const day = new SubRange(s, 10, 20);
 * assert(day.size() === 2 && day.getItem(0).ts === 10 && day.getItem(1).ts === 15);
 * ```
 */
export class SubRange implements NegentropyStorage {
  readonly #base: NegentropyStorage;
  readonly #since: NegentropyItem;
  readonly #until: NegentropyItem;
  #begin = 0;
  #end = 0;

  /** The items of `base` with `since <= ts < until`; throws a `RangeError` unless `0 <= since <= until`. */
  constructor(base: NegentropyStorage, since: number, until: number = Infinity) {
    if (!Number.isSafeInteger(since) || since < 0) {
      throw new RangeError(`Cannot make a range from "${since}": not a non-negative safe integer`);
    }
    if (until !== Infinity && (!Number.isSafeInteger(until) || until < since)) {
      throw new RangeError(`Cannot make a range to "${until}": not a safe integer at or after ${since}`);
    }
    this.#base = base;
    this.#since = { ts: since, id: new Uint8Array(0) };
    this.#until = { ts: until, id: new Uint8Array(0) };
    this.size();
  }

  /** Number of items in the range (their ranks in the underlying storage are found again). */
  size(): number {
    const n = this.#base.size();
    this.#begin = this.#since.ts === 0 ? 0 : this.#base.findLowerBound(0, n, this.#since);
    this.#end = this.#until.ts === Infinity ? n : this.#base.findLowerBound(this.#begin, n, this.#until);
    return this.#end - this.#begin;
  }

  /** The item at rank `i` of the range. */
  getItem(i: number): NegentropyItem {
    this.#check(i, i + 1);
    return this.#base.getItem(this.#begin + i);
  }

  /** Call `cb` on each item of `[begin, end)` of the range, with its rank in the range. */
  iterate(begin: number, end: number, cb: (item: NegentropyItem, i: number) => boolean | void): void {
    this.#check(begin, end);
    const off = this.#begin;
    this.#base.iterate(off + begin, off + end, (item, i) => cb(item, i - off));
  }

  /** The first rank in `[begin, end)` of the range whose item is `>= bound`, or `end`. */
  findLowerBound(begin: number, end: number, bound: NegentropyItem): number {
    this.#check(begin, end);
    return this.#base.findLowerBound(this.#begin + begin, this.#begin + end, bound) - this.#begin;
  }

  /** The fingerprint of `[begin, end)` of the range. */
  fingerprint(begin: number, end: number): Uint8Array {
    this.#check(begin, end);
    return this.#base.fingerprint(this.#begin + begin, this.#begin + end);
  }

  #check(begin: number, end: number): void {
    const n = this.#end - this.#begin;
    if (!Number.isInteger(begin) || !Number.isInteger(end) || begin < 0 || begin > end || end > n) {
      throw new RangeError(`Cannot use range [${begin}, ${end}): outside [0, ${n})`);
    }
  }
}
