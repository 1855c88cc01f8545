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
import type { Kv, KvOp, KvRange } from "./kv.ts";

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
    if (this.closed) return this.refused();
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
