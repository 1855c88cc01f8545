/**
 * The one small interface RocksDB sits behind. npm `rocksdb` is
 * callback-based, unmaintained upstream and has no column families, so the
 * rest of the engine sees only {@linkcode Kv}: get, getMany, an atomic
 * batch, an ordered range scan, close. Keyspaces are key prefixes
 * (see `keys.ts`). {@linkcode MemoryKv} implements the same interface for
 * tests; one conformance suite runs against both.
 *
 * Only the index actor opens the RocksDB handle: RocksDB allows one per
 * process.
 *
 * @module
 */

import { compareBytes } from "../core/bytes.ts";
import rocksdb from "rocksdb";
import { Buffer } from "node:buffer";
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
   */
  compact(start: Uint8Array, end: Uint8Array): Promise<void>;
  /**
   * RocksDB's memtables: entries in the active one, and how many full ones wait to be flushed to table
   * files. Absent where writes need no flush (memory).
   */
  memtable?(): { entries: number; immutable: number };
  close(): Promise<void>;
}

type Cb<T = void> = (err: Error | null | undefined, v?: T) => void;
// deno-lint-ignore no-explicit-any
type RocksHandle = any;

function storageError(what: string, e: unknown): XfError {
  return new XfError("STORAGE_ERROR", `Cannot ${what}: ${(e as Error)?.message ?? e}`);
}

const u8 = (b: Buffer | Uint8Array): Uint8Array => new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
const buf = (b: Uint8Array): Buffer => Buffer.from(b.buffer, b.byteOffset, b.byteLength);

/** Open (creating if needed) a RocksDB database in `dir`. */
export function openRocks(dir: string): Promise<Kv> {
  const db: RocksHandle = rocksdb(dir);
  return new Promise((resolve, reject) => {
    db.open({ createIfMissing: true }, (err: Error | null) => {
      if (err && /lock/i.test(err.message) && /unavailable|hold|no locks/i.test(err.message)) {
        const where = dir.replace(/\/db\/?$/, "");
        return reject(
          new XfError(
            "STORAGE_ERROR",
            `Cannot open data directory "${where}": another process holds it (${err.message})`,
          ),
        );
      }
      if (err && /corrupt/i.test(err.message)) {
        return reject(new XfError("STORAGE_CORRUPTION", `Cannot open RocksDB at "${dir}": ${err.message}`));
      }
      if (err) return reject(storageError(`open RocksDB at "${dir}"`, err));
      resolve(new RocksKv(db));
    });
  });
}

class RocksKv implements Kv {
  private closed = false;
  constructor(private readonly db: RocksHandle) {}

  private check() {
    if (this.closed) throw new XfError("SHUTTING_DOWN", "Cannot use RocksDB: it is closed");
  }

  get(key: Uint8Array): Promise<Uint8Array | undefined> {
    this.check();
    return new Promise((resolve, reject) => {
      this.db.get(
        buf(key),
        { asBuffer: true, fillCache: true },
        ((err, v?: Buffer) => {
          if (err) {
            if (/NotFound/i.test(err.message)) return resolve(undefined);
            return reject(storageError("read from RocksDB", err));
          }
          resolve(v ? u8(v) : undefined);
        }) as Cb<Buffer>,
      );
    });
  }

  getMany(keys: Uint8Array[]): Promise<(Uint8Array | undefined)[]> {
    this.check();
    if (keys.length === 0) return Promise.resolve([]);
    return new Promise((resolve, reject) => {
      this.db.getMany(
        keys.map(buf),
        { asBuffer: true },
        ((err, vs?: (Buffer | undefined)[]) => {
          if (err) return reject(storageError("read from RocksDB", err));
          resolve(vs!.map((v) => (v ? u8(v) : undefined)));
        }) as Cb<(Buffer | undefined)[]>,
      );
    });
  }

  batch(ops: KvOp[], options: { sync?: boolean } = {}): Promise<void> {
    this.check();
    if (ops.length === 0) return Promise.resolve();
    const mapped = ops.map((o) =>
      o.type === "put" ? { type: "put", key: buf(o.key), value: buf(o.value) } : { type: "del", key: buf(o.key) }
    );
    return new Promise((resolve, reject) => {
      this.db.batch(mapped, { sync: options.sync ?? false }, (err: Error | null) => {
        if (err) return reject(storageError("write a batch to RocksDB", err));
        resolve();
      });
    });
  }

  async *range(r: KvRange): AsyncIterable<[Uint8Array, Uint8Array]> {
    this.check();
    const opts: Record<string, unknown> = {
      keyAsBuffer: true,
      valueAsBuffer: true,
      reverse: r.reverse ?? false,
      values: r.values ?? true,
    };
    for (const k of ["gt", "gte", "lt", "lte"] as const) if (r[k]) opts[k] = buf(r[k]!);
    if (r.limit !== undefined) opts.limit = r.limit;
    const it = this.db.iterator(opts);
    try {
      while (true) {
        const next = await new Promise<[Uint8Array, Uint8Array] | null>((resolve, reject) => {
          it.next((err: Error | null, k?: Buffer, v?: Buffer) => {
            if (err) return reject(storageError("iterate RocksDB", err));
            resolve(k === undefined ? null : [u8(k), v ? u8(v) : new Uint8Array(0)]);
          });
        });
        if (!next) return;
        yield next;
      }
    } finally {
      await new Promise<void>((resolve) => it.end(() => resolve()));
    }
  }

  compact(start: Uint8Array, end: Uint8Array): Promise<void> {
    this.check();
    return new Promise((resolve, reject) => {
      this.db.compactRange(buf(start), buf(end), (err: Error | null) => {
        if (err) return reject(storageError("flush RocksDB", err));
        resolve();
      });
    });
  }

  memtable(): { entries: number; immutable: number } {
    this.check();
    return {
      entries: Number(this.db.getProperty("rocksdb.num-entries-active-mem-table")),
      immutable: Number(this.db.getProperty("rocksdb.num-immutable-mem-table")),
    };
  }

  close(): Promise<void> {
    if (this.closed) return Promise.resolve();
    this.closed = true;
    return new Promise((resolve, reject) => {
      this.db.close((err: Error | null) => (err ? reject(storageError("close RocksDB", err)) : resolve()));
    });
  }
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

  private check() {
    if (this.closed) throw new XfError("SHUTTING_DOWN", "Cannot use the store: it is closed");
  }

  get(key: Uint8Array): Promise<Uint8Array | undefined> {
    this.check();
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
    this.check();
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
    const inRange = (k: Uint8Array) =>
      (!r.gt || compareBytes(k, r.gt) > 0) && (!r.gte || compareBytes(k, r.gte) >= 0) &&
      (!r.lt || compareBytes(k, r.lt) < 0) && (!r.lte || compareBytes(k, r.lte) <= 0);
    const snapshot = this.keys.map((k, i) => [k, this.values[i]!] as [Uint8Array, Uint8Array]).filter(([k]) =>
      inRange(k)
    );
    if (r.reverse) snapshot.reverse();
    const limit = r.limit ?? Infinity;
    let n = 0;
    for (const e of snapshot) {
      if (n++ >= limit) return;
      yield e;
    }
  }

  compact(): Promise<void> {
    this.check();
    return Promise.resolve();
  }

  close(): Promise<void> {
    this.closed = true;
    return Promise.resolve();
  }
}
