/**
 * Items of the Merkle index and their order.
 *
 * An item is an event's `(ts, id)`: `ts` in milliseconds (a non-negative
 * safe integer, below 2^53) and `id` the event's 32-byte SHA-256. Items are
 * ordered by `ts`, then by `id` bytes lexicographically, which is the byte
 * order of {@linkcode itemKey} (8-byte big-endian `ts`, then the id).
 *
 * @module
 */

import { assertItem, compareKeyAt } from "./_util.ts";

/** Bytes in an event id, and in every node of the tree. */
export const ID_BYTES = 32;

/** Bytes in an item key: 8-byte big-endian `ts` and the 32-byte id. */
export const KEY_BYTES: number = 8 + ID_BYTES;

/** One indexed event: its timestamp (ms) and its 32-byte id. */
export interface Item {
  /** Milliseconds since the Unix epoch, a non-negative safe integer. */
  ts: number;
  /** The event id, 32 bytes. */
  id: Uint8Array;
}

/**
 * A search bound: like an {@linkcode Item}, but the id may be a prefix
 * (shorter than 32 bytes, as in negentropy bounds; a prefix sorts before its
 * extensions) and `ts` may be `Number.MAX_VALUE` (past every item).
 */
export interface Bound {
  /** Timestamp of the bound. */
  ts: number;
  /** Id, or id prefix, of the bound. */
  id: Uint8Array;
}

/**
 * Compare two items (or an item and a bound) in index order: negative if
 * `a` sorts first, zero if equal, positive if after.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { compareItems } from "./item.ts";
 * const a = { ts: 1, id: new Uint8Array(32) };
 * const b = { ts: 1, id: new Uint8Array(32).fill(1) };
 * assert(compareItems(a, b) < 0);
 * ```
 */
export function compareItems(a: Item, b: Bound): number {
  return compareKeyAt(a.ts, a.id, 0, b);
}

/**
 * The 40-byte key of an item (8-byte big-endian `ts`, then the id), whose
 * byte order is the index order.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { itemKey } from "./item.ts";
 * const key = itemKey({ ts: 258, id: new Uint8Array(32) });
 * assert(key.length === 40 && key[6] === 1 && key[7] === 2);
 * ```
 */
export function itemKey(item: Item): Uint8Array {
  assertItem(item, "item");
  const key = new Uint8Array(KEY_BYTES);
  const view = new DataView(key.buffer);
  view.setUint32(0, Math.floor(item.ts / 2 ** 32));
  view.setUint32(4, item.ts >>> 0);
  key.set(item.id, 8);
  return key;
}
