/**
 * The RocksDB backend of {@linkcode Kv} (the node's store). npm `rocksdb` is
 * callback-based, unmaintained upstream and has no column families, so the
 * engine sees it only through the small interface in `kv.ts`. Only the index
 * actor opens the handle: RocksDB allows one per process.
 *
 * @module
 */

import rocksdb from "rocksdb";
import { Buffer } from "node:buffer";
import { XfError } from "../core/errors.ts";
import type { CompactOptions, Kv, KvOp, KvRange } from "./kv.ts";

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

/**
 * Reads open now: each holds a RocksDB snapshot (the binding takes one for every iterator and `getMany`), and a
 * compaction that runs while a snapshot older than a delete exists keeps the deleted value beside its tombstone.
 */
type OpenRead = { ended: Promise<void> };

class RocksKv implements Kv {
  private closed = false;
  private readonly reads = new Set<OpenRead>();
  constructor(private readonly db: RocksHandle) {}

  /** Count a read (and its snapshot) as open until the answer's `end()`. */
  private openRead(): { end(): void } {
    let end!: () => void;
    const r: OpenRead = { ended: new Promise<void>((resolve) => (end = resolve)) };
    this.reads.add(r);
    return { end: () => void (this.reads.delete(r), end()) };
  }

  /** A closed store's answer: a rejection, as every backend gives. */
  private refused(): Promise<never> {
    return Promise.reject(this.closedError());
  }

  private closedError(): XfError {
    return new XfError("SHUTTING_DOWN", `Cannot use RocksDB: it is closed`);
  }

  private check() {
    if (this.closed) throw this.closedError();
  }

  get(key: Uint8Array): Promise<Uint8Array | undefined> {
    if (this.closed) return this.refused();
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
    if (this.closed) return this.refused();
    if (keys.length === 0) return Promise.resolve([]);
    const read = this.openRead();
    return new Promise((resolve, reject) => {
      this.db.getMany(
        keys.map(buf),
        { asBuffer: true },
        ((err, vs?: (Buffer | undefined)[]) => {
          read.end();
          if (err) return reject(storageError("read from RocksDB", err));
          resolve(vs!.map((v) => (v ? u8(v) : undefined)));
        }) as Cb<(Buffer | undefined)[]>,
      );
    });
  }

  batch(ops: KvOp[], options: { sync?: boolean } = {}): Promise<void> {
    if (this.closed) return this.refused();
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
    if (r.readAheadBytes !== undefined) opts.highWaterMark = r.readAheadBytes;
    const it = this.db.iterator(opts);
    const read = this.openRead();
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
      read.end();
    }
  }

  async compact(start: Uint8Array, end: Uint8Array, options: CompactOptions = {}): Promise<void> {
    if (this.closed) return this.refused();
    if (options.whole) {
      // The snapshots of reads open now may be older than the deletes this compaction is for: wait for them to end
      // (reads opened from now on see those deletes already), at most `waitReadsMs`.
      const open = [...this.reads].map((r) => r.ended);
      if (open.length) {
        let timer: ReturnType<typeof setTimeout> | undefined;
        let onAbort = () => {};
        await Promise.race([
          Promise.all(open),
          new Promise<void>((resolve) => (timer = setTimeout(resolve, options.waitReadsMs ?? 0))),
          new Promise<void>((resolve) => options.signal?.addEventListener("abort", onAbort = () => resolve())),
        ]);
        clearTimeout(timer);
        options.signal?.removeEventListener("abort", onAbort);
      }
      if (options.signal?.aborted) return;
      // RocksDB's CompactRange leaves the files of the bottommost level as they are (the binding cannot ask for
      // `bottommost_level_compaction`), so what an earlier compaction kept for a snapshot would stay for good. A
      // tombstone at each end of the range lands in one level-0 file spanning all of it: compacting that file down
      // takes every file of every level it overlaps, so each one is rewritten and drops what no snapshot needs.
      await this.batch([{ type: "del", key: start }, { type: "del", key: end }]);
      if (this.closed) return this.refused();
    }
    return await new Promise((resolve, reject) => {
      this.db.compactRange(buf(start), buf(end), (err: Error | null) => {
        if (err) return reject(storageError("compact RocksDB", err));
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
