/**
 * The tree as a negentropy storage: the interface of nostr-tools'
 * `NegentropyStorageVector` (items as `{ timestamp, id }`, ranges by rank),
 * so a negentropy v1 reconciler can run on the Merkle index directly.
 *
 * @module
 */

import type { MerkleTree } from "./tree.ts";

/** An item as negentropy names it. */
export interface NegentropyItem {
  /** The item ts. */
  timestamp: number;
  /** The item id (or, in a bound, an id prefix). */
  id: Uint8Array;
}

/** The storage interface a negentropy v1 reconciler reads. */
export interface NegentropyStorage {
  /** Number of items. */
  size(): number;
  /** Item of rank `i`. */
  getItem(i: number): NegentropyItem;
  /** Call `cb` for ranks `begin..end` until it returns a falsy value. */
  iterate(begin: number, end: number, cb: (item: NegentropyItem, i: number) => boolean): void;
  /** Rank of the first item at or after `bound`, within `begin..end`. */
  findLowerBound(begin: number, end: number, bound: NegentropyItem): number;
  /** 16-byte fingerprint of ranks `begin..end`. */
  fingerprint(begin: number, end: number): Uint8Array;
}

/**
 * View `tree` as a negentropy storage. The view reads the tree live; do not
 * insert while a reconciliation is using it.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { MerkleTree } from "./tree.ts";
 * import { negentropyStorage } from "./negentropy.ts";
 * const storage = negentropyStorage(new MerkleTree({ get: () => undefined }, null));
 * assert(storage.size() === 0 && storage.fingerprint(0, 0).length === 16);
 * ```
 */
export function negentropyStorage(tree: MerkleTree): NegentropyStorage {
  const checkRange = (begin: number, end: number) => {
    if (begin > end || end > tree.size()) throw new RangeError(`Cannot read negentropy range '${begin}..${end}'`);
  };
  return {
    size: () => tree.size(),
    getItem: (i) => {
      const { ts, id } = tree.getItem(i);
      return { timestamp: ts, id };
    },
    iterate: (begin, end, cb) => {
      checkRange(begin, end);
      tree.iterate(begin, end, ({ ts, id }, i) => Boolean(cb({ timestamp: ts, id }, i)));
    },
    findLowerBound: (begin, end, bound) => {
      checkRange(begin, end);
      const r = tree.findLowerBound({ ts: bound.timestamp, id: bound.id });
      return Math.min(Math.max(r, begin), end);
    },
    fingerprint: (begin, end) => tree.fingerprint(begin, end),
  };
}
