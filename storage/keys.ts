/**
 * Keyspaces: the binding has no column families, so each concern is a
 * one-byte key prefix. Integers are big-endian so byte order is numeric
 * order.
 *
 * | prefix | key                         | value                          |
 * |--------|-----------------------------|--------------------------------|
 * | `e`    | id(32)                      | event bytes                    |
 * | `t`    | gid(32) ts(8) id(32)        | arrival seq(8) (time index)    |
 * | `a`    | gid(32) seq(8)              | id(32) (arrival index)         |
 * | `g`    | gid(32)                     | group record (CBOR)            |
 * | `m`    | gid(32) page hash(32)       | Merkle page                    |
 * | `j`    | gid(32) seq(8)              | Merkle journal record          |
 * | `x`    | name (ASCII)                | node metadata (checkpoint …)   |
 * | `p`    | gid(32) node id(32)         | peer record (CBOR)             |
 * | `d`    | target id(32) tombstone(32) | 1 byte: 1 confirmed, 0 pending |
 * | `u`    | gid(32) id(32)              | empty: a replica's event not yet held by a node |
 *
 * The deleted set (`d`): one entry per target a held tombstone names. Confirmed: the target was held here (or
 * arrived later) and that tombstone may delete it; pending: the target was never seen here, so the tombstone is
 * judged against it when it arrives (storage/deletion.ts).
 *
 * @module
 */

/** Keyspace prefixes. */
export const KS = {
  event: 0x65,
  time: 0x74,
  arrival: 0x61,
  group: 0x67,
  merkle: 0x6d,
  meta: 0x78,
  peer: 0x70,
  deleted: 0x64,
  unsent: 0x75,
  journal: 0x6a,
} as const;

/** The prefix byte then the parts, in one allocation (keys are built for every event: no temporaries). */
function concat(prefix: number, ...parts: Uint8Array[]): Uint8Array {
  let n = 1;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  out[0] = prefix;
  let off = 1;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

/** The prefix byte, `part`, then `n` as 8 bytes big-endian ({@linkcode u64be}), and `tail` if given. */
function concatU64(prefix: number, part: Uint8Array, n: number, tail?: Uint8Array): Uint8Array {
  const out = new Uint8Array(1 + part.length + 8 + (tail?.length ?? 0));
  out[0] = prefix;
  out.set(part, 1);
  writeU64be(out, 1 + part.length, n);
  if (tail) out.set(tail, 1 + part.length + 8);
  return out;
}

/** Write `n` as 8 bytes big-endian at `out[off]` (a safe non-negative integer without BigInt; else as `BigInt(n)`). */
function writeU64be(out: Uint8Array, off: number, n: number): void {
  if (Number.isSafeInteger(n) && n >= 0) {
    const hi = Math.floor(n / 0x100000000);
    const lo = n >>> 0;
    out[off] = hi >>> 24;
    out[off + 1] = (hi >>> 16) & 0xff;
    out[off + 2] = (hi >>> 8) & 0xff;
    out[off + 3] = hi & 0xff;
    out[off + 4] = lo >>> 24;
    out[off + 5] = (lo >>> 16) & 0xff;
    out[off + 6] = (lo >>> 8) & 0xff;
    out[off + 7] = lo & 0xff;
  } else new DataView(out.buffer, out.byteOffset + off, 8).setBigUint64(0, BigInt(n));
}

/**
 * The 8-byte big-endian unsigned integer at `b[off]` as a number (as
 * `Number(getBigUint64)` gives it, without a DataView or a BigInt: the time
 * index is read key by key).
 */
export function readU64be(b: Uint8Array, off: number): number {
  const hi = ((b[off]! << 24) | (b[off + 1]! << 16) | (b[off + 2]! << 8) | b[off + 3]!) >>> 0;
  const lo = ((b[off + 4]! << 24) | (b[off + 5]! << 16) | (b[off + 6]! << 8) | b[off + 7]!) >>> 0;
  return hi * 0x100000000 + lo;
}

/** 8-byte big-endian unsigned integer. */
export function u64be(n: number): Uint8Array {
  const b = new Uint8Array(8);
  writeU64be(b, 0, n);
  return b;
}

/** Key of an event by id. */
export const eventKey = (id: Uint8Array): Uint8Array => concat(KS.event, id);
/** Key in a group's time index. */
export const timeKey = (gid: Uint8Array, ts: number, id: Uint8Array): Uint8Array => concatU64(KS.time, gid, ts, id);
/** Lowest time-index key of a group at `ts`. */
export const timeKeyFloor = (gid: Uint8Array, ts: number): Uint8Array => concatU64(KS.time, gid, ts);
/**
 * Key in a group's arrival index: the WAL sequence number under which this node first indexed the event, so
 * a stream can resume exactly where it left off, whatever the events' timestamps.
 */
export const arrivalKey = (gid: Uint8Array, seq: number): Uint8Array => concatU64(KS.arrival, gid, seq);
/** Lowest arrival-index key of a group. */
export const arrivalPrefix = (gid: Uint8Array): Uint8Array => concat(KS.arrival, gid);
/** Key of a group record. */
export const groupKey = (gid: Uint8Array): Uint8Array => concat(KS.group, gid);
/** Key of a Merkle page. */
export const merkleKey = (gid: Uint8Array, hash: Uint8Array): Uint8Array => concat(KS.merkle, gid, hash);
/** Lowest key of a group's Merkle pages. */
export const merklePrefix = (gid: Uint8Array): Uint8Array => concat(KS.merkle, gid);
/** Key of a record of a group's Merkle journal (changes since its stored pages, storage/merkle_store.ts). */
export const journalKey = (gid: Uint8Array, seq: number): Uint8Array => concatU64(KS.journal, gid, seq);
/** Lowest key of a group's Merkle journal. */
export const journalPrefix = (gid: Uint8Array): Uint8Array => concat(KS.journal, gid);
/** Key of a metadata entry. */
export const metaKey = (name: string): Uint8Array => concat(KS.meta, new TextEncoder().encode(name));
/** Key of a peer record. */
export const peerKey = (gid: Uint8Array, nodeId: Uint8Array): Uint8Array => concat(KS.peer, gid, nodeId);

/** Key in the deleted set: `target` named by the tombstone `tomb`. */
export const deletedKey = (target: Uint8Array, tomb: Uint8Array): Uint8Array => concat(KS.deleted, target, tomb);
/** Lowest deleted-set key of a target (every tombstone naming it follows). */
export const deletedPrefix = (target: Uint8Array): Uint8Array => concat(KS.deleted, target);
/** Deleted-set entry values. */
export const DELETED_PENDING: Uint8Array = Uint8Array.of(0);
/** The target was held here, or arrived, and the tombstone may delete it. */
export const DELETED_CONFIRMED: Uint8Array = Uint8Array.of(1);
/** Key of a replica's event that no node is known to hold yet (published offline, or not yet confirmed). */
export const unsentKey = (gid: Uint8Array, id: Uint8Array): Uint8Array => concat(KS.unsent, gid, id);
/** Lowest unsent key of a group. */
export const unsentPrefix = (gid: Uint8Array): Uint8Array => concat(KS.unsent, gid);

/**
 * The ends of the index's whole-store compaction (`Kv.compact` with `whole`): below and above every key of every
 * keyspace (a keyspace is one ASCII letter, then at least one byte). The compaction writes a tombstone at each.
 */
export const COMPACT_LOW: Uint8Array = Uint8Array.of(0x00);
export const COMPACT_HIGH: Uint8Array = new Uint8Array(8).fill(0xff);

/** The smallest key greater than every key that starts with `prefix`. */
export function prefixEnd(prefix: Uint8Array): Uint8Array {
  const out = prefix.slice();
  for (let i = out.length - 1; i >= 0; i--) {
    if (out[i]! < 0xff) {
      out[i]!++;
      return out.subarray(0, i + 1);
    }
  }
  return new Uint8Array([0xff, 0xff]);
}
