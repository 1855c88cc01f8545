/**
 * The one small interface every store sits behind: get, getMany, an atomic
 * batch, an ordered range scan, compact, close. Keyspaces are key prefixes
 * (see `keys.ts`). Three backends implement it: RocksDB for the node
 * (`kv_rocks.ts`), IndexedDB for browsers (`kv_idb.ts`) and
 * {@linkcode MemoryKv} here, for tests and as the reference. One conformance
 * suite (`tests/kv_conformance_test.ts`) runs against all three, so the
 * Merkle tree, the event codec, membership and negentropy run unchanged on
 * each. This module uses no Deno or Node API (a browser bundles it).
 *
 * @module
 */

import { compareBytes } from "../core/bytes.ts";
import { XfError } from "../core/errors.ts";

/** One write of a batch. */
export type KvOp = { type: "put"; key: Uint8Array; value: Uint8Array } | { type: "del"; key: Uint8Array };

/** A key range; bounds are optional, `lt`/`lte` and `gt`/`gte` exclusive of each other. */
export interface KvRange {
  gt?: Uint8Array;
  gte?: Uint8Array;
  lt?: Uint8Array;
  lte?: Uint8Array;
  reverse?: boolean;
  limit?: number;
  /** False: keys only (values come back empty), which a scan of a large keyspace reads far faster. */
  values?: boolean;
  /** A long scan: read up to this many bytes ahead per step (RocksDB; others ignore it). For short reads leave it. */
  readAheadBytes?: number;
}

/** How {@linkcode Kv.compact} compacts. */
export interface CompactOptions {
  /**
   * Rewrite every table file holding keys of the range, the bottommost level's too, so that deleted values
   * and their tombstones are dropped wherever they are. It writes a tombstone at `start` and at `end`: both must
   * be keys the caller never holds. It first waits for the reads open when it was called to end (their snapshots
   * would keep deleted values), at most `waitReadsMs`; once `signal` aborts (a stop) it compacts nothing more.
   */
  whole?: boolean;
  waitReadsMs?: number;
  signal?: AbortSignal;
}

/** An ordered key-value store. */
export interface Kv {
  get(key: Uint8Array): Promise<Uint8Array | undefined>;
  getMany(keys: Uint8Array[]): Promise<(Uint8Array | undefined)[]>;
  /** Apply all ops atomically; with `sync` the batch is on disk when this resolves. */
  batch(ops: KvOp[], options?: { sync?: boolean }): Promise<void>;
  /** Entries in key order (or reverse) within the range. */
  range(range: KvRange): AsyncIterable<[Uint8Array, Uint8Array]>;
  /**
   * Flush what is in memory (RocksDB's memtable, covered until then only by RocksDB's own log) to table
   * files, and compact the keys `[start, end]`; resolves once done. With a one-key range it is a flush.
   * With `whole` (see {@linkcode CompactOptions}) every table file of the range is rewritten.
   */
  compact(start: Uint8Array, end: Uint8Array, options?: CompactOptions): Promise<void>;
  /**
   * RocksDB's memtables: entries in the active one, and how many full ones wait to be flushed to table
   * files. Absent where writes need no flush (memory).
   */
  memtable?(): { entries: number; immutable: number };
  close(): Promise<void>;
}

/**
 * Which of the index's writes are in RocksDB's table files, not only in its
 * log, learnt without forcing a flush (a forced one would compact, and need
 * disk space when there may be none): RocksDB switches to a new memtable by
 * itself once one is full and flushes the old one in the background. After
 * each write the tracker reads the active memtable's entry count: fewer
 * entries than before plus the write's own means the memtable was switched,
 * so every write before this one is in a memtable that RocksDB is flushing;
 * once no memtable waits to be flushed, they are in table files. Opening
 * RocksDB flushes what it recovered from its log, so the checkpoint read at
 * open starts out durable. See `wal_retention.ts` for why this matters.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { FlushTracker, MemoryKv } from "./kv.ts";
 * const t = new FlushTracker(new MemoryKv(), 5);
 * t.written(3, 5, 9); // a store without a memtable: every write is durable at once
 * assert(t.durable() === 9);
 * ```
 */
export class FlushTracker {
  #durable: number;
  #candidate: number;
  #entries: number;

  /** Track `kv`, whose checkpoint was `checkpointAtOpen` when it was opened. */
  constructor(private readonly kv: Kv, checkpointAtOpen: number) {
    this.#durable = this.#candidate = checkpointAtOpen;
    this.#entries = kv.memtable?.().entries ?? 0;
  }

  /** A synced write of `ops` entries moved the index's checkpoint from `before` to `after`. */
  written(ops: number, before: number, after: number): void {
    const m = this.kv.memtable?.();
    if (!m) {
      this.#durable = Math.max(this.#durable, after);
      return;
    }
    if (m.entries < this.#entries + ops) this.#candidate = Math.max(this.#candidate, before);
    this.#entries = m.entries;
    if (m.immutable === 0) this.#durable = Math.max(this.#durable, this.#candidate);
  }

  /** The highest checkpoint known to be in RocksDB's table files. */
  durable(): number {
    const m = this.kv.memtable?.();
    if (!m || m.immutable === 0) this.#durable = Math.max(this.#durable, this.#candidate);
    return this.#durable;
  }
}

/** An in-memory {@linkcode Kv} (sorted array), for tests and as the reference backend. */
export class MemoryKv implements Kv {
  private keys: Uint8Array[] = [];
  private values: Uint8Array[] = [];
  private closed = false;

  private find(key: Uint8Array): number {
    let lo = 0, hi = this.keys.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (compareBytes(this.keys[mid]!, key) < 0) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** A closed store's answer: a rejection, as every backend gives. */
  private refused(): Promise<never> {
    return Promise.reject(this.closedError());
  }

  private closedError(): XfError {
    return new XfError("SHUTTING_DOWN", `Cannot use the store: it is closed`);
  }

  private check() {
    if (this.closed) throw this.closedError();
  }

  get(key: Uint8Array): Promise<Uint8Array | undefined> {
    if (this.closed) return this.refused();
    const i = this.find(key);
    const k = this.keys[i];
    return Promise.resolve(k && compareBytes(k, key) === 0 ? this.values[i] : undefined);
  }

  async getMany(keys: Uint8Array[]): Promise<(Uint8Array | undefined)[]> {
    const out = [];
    for (const k of keys) out.push(await this.get(k));
    return out;
  }

  batch(ops: KvOp[]): Promise<void> {
    if (this.closed) return this.refused();
    for (const o of ops) {
      const i = this.find(o.key);
      const hit = this.keys[i] !== undefined && compareBytes(this.keys[i]!, o.key) === 0;
      if (o.type === "put") {
        if (hit) this.values[i] = o.value.slice();
        else {
          this.keys.splice(i, 0, o.key.slice());
          this.values.splice(i, 0, o.value.slice());
        }
      } else if (hit) {
        this.keys.splice(i, 1);
        this.values.splice(i, 1);
      }
    }
    return Promise.resolve();
  }

  async *range(r: KvRange): AsyncIterable<[Uint8Array, Uint8Array]> {
    this.check();
    // The entries in range as they are now (a write during the scan does not move it).
    let lo = r.gte ? this.find(r.gte) : r.gt ? this.find(r.gt) : 0;
    if (r.gt && lo < this.keys.length && compareBytes(this.keys[lo]!, r.gt) === 0) lo++;
    let hi = r.lte ? this.find(r.lte) : r.lt ? this.find(r.lt) : this.keys.length;
    if (r.lte && hi < this.keys.length && compareBytes(this.keys[hi]!, r.lte) === 0) hi++;
    if (hi <= lo) return;
    const keys = this.keys.slice(lo, hi), values = this.values.slice(lo, hi);
    const limit = Math.min(r.limit ?? Infinity, keys.length);
    const empty = new Uint8Array(0);
    for (let n = 0; n < limit; n++) {
      const i = r.reverse ? keys.length - 1 - n : n;
      yield [keys[i]!, r.values === false ? empty : values[i]!];
    }
  }

  compact(): Promise<void> {
    if (this.closed) return this.refused();
    return Promise.resolve();
  }

  close(): Promise<void> {
    this.closed = true;
    return Promise.resolve();
  }
}
