/**
 * The DHT's format constants: id and key sizes. Its limits and times (k, α,
 * table, lookup and record bounds) are in `core/limits.ts`.
 *
 * @module
 */

/** Bytes of a node id: SHA-256 of the node's Ed25519 public key (SPEC). */
export const ID_BYTES = 32;

/** Bytes of an Ed25519 public key. */
export const KEY_BYTES = 32;

/** Bits of a node id, and so the most buckets a routing table can have. */
export const ID_BITS: number = ID_BYTES * 8;
