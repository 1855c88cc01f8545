/**
 * The IndexedDB backend of {@linkcode Kv}, for a replica in a browser (and,
 * through `fake-indexeddb`, in Deno's tests). One object store holds every
 * keyspace; keys are binary (IndexedDB compares binary keys byte by byte,
 * the order RocksDB uses), values are byte arrays.
 *
 * - `batch` is one read-write transaction: all of it or none. With `sync` it
 *   asks for `durability: "strict"` (the browser flushes before it reports
 *   the transaction complete); otherwise `"relaxed"`.
 * - `range` reads {@linkcode IDB_RANGE_CHUNK} entries per transaction and
 *   goes on after the last key it returned: an IndexedDB transaction ends as
 *   soon as its caller awaits anything else, and callers of `range` do.
 *   Entries written during a scan may therefore be seen by it (RocksDB's
 *   iterator sees a snapshot); no caller depends on either.
 *
 * Uses `idb`, a small, well-kept wrapper of the IndexedDB API, and no Deno
 * API.
 *
 * @module
 */

import { type IDBPDatabase, openDB } from "idb";
import { XfError } from "../core/errors.ts";
import type { Kv, KvOp, KvRange } from "./kv.ts";

/** Entries a range scan reads per IndexedDB transaction. */
export const IDB_RANGE_CHUNK = 512;

const STORE = "kv";

/**
 * The parts of the IndexedDB API this module names (Deno's own type library has no IndexedDB; a browser's
 * `IDBKeyRange` fits).
 */
interface KeyRanges {
  bound(lower: ArrayBuffer, upper: ArrayBuffer, lowerOpen?: boolean, upperOpen?: boolean): unknown;
  lowerBound(lower: ArrayBuffer, open?: boolean): unknown;
  upperBound(upper: ArrayBuffer, open?: boolean): unknown;
}
/** A key range as IndexedDB takes it. */
type IdbRange = unknown;

const toKey = (b: Uint8Array): ArrayBuffer =>
  b.byteOffset === 0 && b.byteLength === b.buffer.byteLength && b.buffer instanceof ArrayBuffer
    ? b.buffer
    : b.slice().buffer as ArrayBuffer;

const fromKey = (k: unknown): Uint8Array => {
  if (k instanceof ArrayBuffer) return new Uint8Array(k);
  if (ArrayBuffer.isView(k)) return new Uint8Array(k.buffer, k.byteOffset, k.byteLength).slice();
  throw new XfError("STORAGE_CORRUPTION", `Cannot read an IndexedDB key of type ${typeof k}: not binary`);
};

const fromValue = (v: unknown): Uint8Array => {
  if (v instanceof Uint8Array) return v;
  if (v instanceof ArrayBuffer) return new Uint8Array(v);
  throw new XfError("STORAGE_CORRUPTION", "Cannot read an IndexedDB value: not bytes");
};

function storageError(what: string, e: unknown): XfError {
  if (e instanceof XfError) return e;
  const name = (e as DOMException)?.name;
  if (name === "QuotaExceededError") {
    return new XfError("STORAGE_FULL", `Cannot ${what}: the browser's storage quota is used up`);
  }
  return new XfError("STORAGE_ERROR", `Cannot ${what}: ${(e as Error)?.message ?? e}`);
}

/**
 * Open (creating if needed) the IndexedDB database `name` as a {@linkcode Kv}. It uses the runtime's IndexedDB
 * globals (in Deno's tests, `import "fake-indexeddb/auto"` provides them).
 */
export async function openIndexedDb(name: string): Promise<Kv> {
  const g = globalThis as { indexedDB?: unknown; IDBKeyRange?: KeyRanges };
  if (!g.indexedDB || !g.IDBKeyRange) {
    throw new XfError("STORAGE_ERROR", `Cannot open IndexedDB "${name}": this runtime has no indexedDB`);
  }
  const ranges = g.IDBKeyRange;
  try {
    const db = await openDB(name, 1, {
      upgrade(db) {
        if (!db.objectStoreNames.contains(STORE)) db.createObjectStore(STORE);
      },
    });
    return new IndexedDbKv(db, ranges);
  } catch (e) {
    throw storageError(`open IndexedDB "${name}"`, e);
  }
}

/** The IndexedDB range of `r`: undefined for all keys, null for a range that holds none. */
function keyRange(K: KeyRanges, r: KvRange): IdbRange | undefined | null {
  const lower = r.gte ?? r.gt, upper = r.lte ?? r.lt;
  const lowerOpen = !r.gte && !!r.gt, upperOpen = !r.lte && !!r.lt;
  if (lower && upper) {
    // IndexedDB throws on an empty range; it holds nothing, which an empty scan says as well.
    const c = compare(lower, upper);
    if (c > 0 || (c === 0 && (lowerOpen || upperOpen))) return null;
    return K.bound(toKey(lower), toKey(upper), lowerOpen, upperOpen);
  }
  if (lower) return K.lowerBound(toKey(lower), lowerOpen);
  if (upper) return K.upperBound(toKey(upper), upperOpen);
  return undefined;
}

function compare(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i]! - b[i]!;
  return a.length - b.length;
}

class IndexedDbKv implements Kv {
  private closed = false;
  constructor(private readonly db: IDBPDatabase, private readonly ranges: KeyRanges) {}

  private check() {
    if (this.closed) throw new XfError("SHUTTING_DOWN", "Cannot use IndexedDB: it is closed");
  }

  async get(key: Uint8Array): Promise<Uint8Array | undefined> {
    this.check();
    try {
      const v = await this.db.get(STORE, toKey(key));
      return v === undefined ? undefined : fromValue(v);
    } catch (e) {
      throw storageError("read from IndexedDB", e);
    }
  }

  async getMany(keys: Uint8Array[]): Promise<(Uint8Array | undefined)[]> {
    this.check();
    if (keys.length === 0) return [];
    try {
      const tx = this.db.transaction(STORE, "readonly");
      const out = await Promise.all(keys.map((k) => tx.store.get(toKey(k))));
      await tx.done;
      return out.map((v) => (v === undefined ? undefined : fromValue(v)));
    } catch (e) {
      throw storageError("read from IndexedDB", e);
    }
  }

  async batch(ops: KvOp[], options: { sync?: boolean } = {}): Promise<void> {
    this.check();
    if (ops.length === 0) return;
    const tx = this.db.transaction(STORE, "readwrite", { durability: options.sync ? "strict" : "relaxed" });
    try {
      // Requests are queued in order without awaiting each; the transaction commits them all or none.
      const done = ops.map((o) =>
        o.type === "put" ? tx.store.put(o.value.slice(), toKey(o.key)) : tx.store.delete(toKey(o.key))
      );
      await Promise.all([...done, tx.done]);
    } catch (e) {
      try {
        tx.abort();
      } catch { /* already ended */ }
      throw storageError("write a batch to IndexedDB", e);
    }
  }

  async *range(r: KvRange): AsyncIterable<[Uint8Array, Uint8Array]> {
    this.check();
    const limit = r.limit ?? Infinity;
    const values = r.values !== false;
    const empty = new Uint8Array(0);
    let n = 0;
    // Each chunk is a fresh transaction that starts after the last key returned.
    let cur: KvRange = { ...r };
    while (n < limit) {
      const range = keyRange(this.ranges, cur);
      if (range === null) return;
      const want = Math.min(IDB_RANGE_CHUNK, limit - n);
      const chunk: [Uint8Array, Uint8Array][] = [];
      try {
        const tx = this.db.transaction(STORE, "readonly");
        const dir = r.reverse ? "prev" : "next";
        let cursor = values ? await tx.store.openCursor(range, dir) : await tx.store.openKeyCursor(range, dir);
        while (cursor && chunk.length < want) {
          chunk.push([
            fromKey(cursor.key),
            values ? fromValue((cursor as unknown as { value: unknown }).value) : empty,
          ]);
          cursor = await cursor.continue();
        }
        await tx.done;
      } catch (e) {
        throw storageError("iterate IndexedDB", e);
      }
      for (const e of chunk) {
        yield e;
        n++;
      }
      if (chunk.length < want) return;
      const last = chunk[chunk.length - 1]![0];
      cur = { ...cur };
      if (r.reverse) delete cur.lte, cur.lt = last;
      else delete cur.gte, cur.gt = last;
    }
  }

  compact(): Promise<void> {
    this.check();
    return Promise.resolve(); // the browser compacts its own files
  }

  close(): Promise<void> {
    if (!this.closed) this.db.close();
    this.closed = true;
    return Promise.resolve();
  }
}
