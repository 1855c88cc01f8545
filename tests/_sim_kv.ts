// A simulated disk for the many-node simulation (tests/_sim_net.ts): a Kv whose writes land in a page cache and are
// lost at a power loss unless synced, whose reads can fail or come back damaged, and which can be full. Every
// choice it makes draws from the random source it is given (the simulation's seed), so a run replays exactly.
//
// The model (RocksDB's, which IndexedDB's transactions match for what is used here):
// - A batch is atomic. It is visible to reads at once; it is durable once a batch with `sync` completes, which
//   makes every earlier batch durable too (RocksDB syncs its log, earlier writes included).
// - A power loss keeps the durable batches and a random prefix of the unsynced ones (a log keeps a prefix of
//   whole batches), then the disk is opened again; handles from before it fail (`SHUTTING_DOWN`).
// - Read faults: a read call fails (`STORAGE_ERROR`) or an event's value comes back with one byte flipped (events
//   are self-authenticating: only their bytes are damaged, never the store's own records, which the real backends
//   checksum). Damage is of the read, not of the platter: the next read is clean.
// - Full: every batch is refused (`STORAGE_FULL`), nothing of it written.
// - Latency: with a scheduler (`open(later)`), a batch lands after a random delay of simulated time (in order);
//   until then reads see the store without it. A power loss before it lands loses it whole.
import { fromHex, toHex } from "../core/bytes.ts";
import { XfError } from "../core/errors.ts";
import { type Kv, type KvOp, type KvRange, MemoryKv } from "../storage/kv.ts";
import { KS } from "../storage/keys.ts";

/** What a disk does wrong, by chance per call (0: never). */
export interface DiskFaults {
  /** A read call (get, getMany, range) fails with `STORAGE_ERROR`. */
  readError: number;
  /** An event value read comes back with one byte flipped. */
  damage: number;
  /** Every batch is refused with `STORAGE_FULL`. */
  full: boolean;
}

/** No faults. */
export const HEALTHY: Readonly<DiskFaults> = Object.freeze({ readError: 0, damage: 0, full: false });

/** Counters of what the disk did. */
export interface DiskStats {
  batches: number;
  syncs: number;
  /** Unsynced batches thrown away by power losses. */
  lost: number;
  readErrors: number;
  damaged: number;
  refused: number;
}

/** A disk: what survives power losses (see the module comment). */
export class SimDisk {
  faults: DiskFaults = { ...HEALTHY };
  /** Sabotage (tests of the simulation's checks): `sync` makes nothing durable. */
  ignoreSync = false;
  /** Sabotage: this share of event writes is silently left out of its batch. */
  skipEventWrites = 0;
  /** Sabotage: deletes of events' bytes are silently left out of their batch (what a store forgets stays). */
  keepEventDeletes = false;
  /** A batch lands this many ms (of simulated time) after it is issued, at most (with a scheduler). */
  writeLatencyMax = 0;
  readonly stats: DiskStats = { batches: 0, syncs: 0, lost: 0, readErrors: 0, damaged: 0, refused: 0 };
  /** Bumped by each power loss: handles from before it fail. */
  epoch = 0;
  /** Batches written so far, and how many of them are durable (a prefix). */
  seq = 0;
  durableSeq = 0;
  /** Hex key → value, as of the last sync. */
  #durable = new Map<string, Uint8Array>();
  /** Batches not yet synced, oldest first. */
  #pending: KvOp[][] = [];
  /** What reads see. */
  #view = new MemoryKv();
  /** The same, by hex key, for the simulation's synchronous checks. */
  #viewMap = new Map<string, Uint8Array>();
  readonly #rand: () => number;

  constructor(rand: () => number) {
    this.#rand = rand;
  }

  /**
   * A handle on the disk as it is now (a store opened on it). `later(ms, fn)` runs `fn` after `ms` of simulated
   * time (what a batch's latency waits on); without it batches land at once.
   */
  open(later?: (ms: number, fn: () => void) => void): SimKv {
    return new SimKv(this, this.epoch, later);
  }

  /** How long the next batch takes to land (ms of simulated time). */
  latency(): number {
    return this.writeLatencyMax > 0 && this.#rand() < 0.7 ? Math.floor(this.#rand() * (this.writeLatencyMax + 1)) : 0;
  }

  /** Whether reads see `key` now (no fault applies: the simulation's own check). */
  has(key: Uint8Array): boolean {
    return this.#viewMap.has(toHex(key));
  }

  /** The value reads see for `key` now, without faults. */
  peek(key: Uint8Array): Uint8Array | undefined {
    return this.#viewMap.get(toHex(key));
  }

  /** Keys (hex) reads see under a one-byte keyspace prefix followed by `rest` (hex), without faults. */
  *keys(prefix: number, rest = ""): Iterable<string> {
    const p = prefix.toString(16).padStart(2, "0") + rest;
    for (const k of this.#viewMap.keys()) if (k.startsWith(p)) yield k;
  }

  /** Entries held (what reads see), and unsynced batches waiting. */
  size(): { entries: number; pending: number } {
    return { entries: this.#viewMap.size, pending: this.#pending.length };
  }

  /**
   * The power goes: unsynced batches are lost but a random prefix of them (`keepAll`: a clean stop, all kept),
   * and every handle opened before fails from now on. Answers the last batch kept (batches after it, up to
   * `seq`, are gone); `seq` goes on from where it was, so a batch number is never reused.
   */
  powerLoss(keepAll = false): number {
    const keep = keepAll ? this.#pending.length : Math.floor(this.#rand() * (this.#pending.length + 1));
    const lost = this.#pending.length - keep;
    for (const ops of this.#pending.slice(0, keep)) applyTo(this.#durable, ops);
    this.#pending = [];
    this.stats.lost += lost;
    const kept = this.durableSeq + keep;
    this.durableSeq = this.seq;
    this.epoch++;
    // Reads see exactly what is durable, rebuilt in key order (hex order is byte order).
    this.#view = new MemoryKv();
    this.#viewMap = new Map();
    const keys = [...this.#durable.keys()].sort();
    const ops: KvOp[] = keys.map((k) => ({ type: "put", key: fromHex(k)!, value: this.#durable.get(k)! }));
    this.#view.batch(ops);
    for (const k of keys) this.#viewMap.set(k, this.#durable.get(k)!);
    return kept;
  }

  // ---- for SimKv ----

  /** Draw a read fault: throws `STORAGE_ERROR` when the dice say so. */
  readFault(what: string): void {
    if (this.faults.readError > 0 && this.#rand() < this.faults.readError) {
      this.stats.readErrors++;
      throw new XfError("STORAGE_ERROR", `Cannot read ${what}: simulated I/O error`);
    }
  }

  /** A value as read: damaged (one byte flipped) when it is an event's and the dice say so. */
  damaged(key: Uint8Array, v: Uint8Array | undefined): Uint8Array | undefined {
    if (!v || key[0] !== KS.event || this.faults.damage <= 0 || this.#rand() >= this.faults.damage) return v;
    this.stats.damaged++;
    const out = v.slice();
    const at = Math.floor(this.#rand() * out.length);
    out[at]! ^= 1 + Math.floor(this.#rand() * 255);
    return out;
  }

  view(): MemoryKv {
    return this.#view;
  }

  write(ops: KvOp[], sync: boolean): void {
    if (this.faults.full) {
      this.stats.refused++;
      throw new XfError("STORAGE_FULL", "Cannot write batch: simulated disk full");
    }
    const copy: KvOp[] = ops.map((o): KvOp =>
      o.type === "put"
        ? { type: "put", key: o.key.slice(), value: o.value.slice() }
        : { type: "del", key: o.key.slice() }
    ).filter((o) => !(this.skipEventWrites > 0 && o.key[0] === KS.event && this.#rand() < this.skipEventWrites))
      .filter((o) => !(this.keepEventDeletes && o.type === "del" && o.key[0] === KS.event));
    this.#view.batch(copy);
    applyTo(this.#viewMap, copy);
    this.seq++;
    this.stats.batches++;
    this.#pending.push(copy);
    if (sync && !this.ignoreSync) {
      for (const p of this.#pending) applyTo(this.#durable, p);
      this.#pending = [];
      this.durableSeq = this.seq;
      this.stats.syncs++;
    }
  }
}

function applyTo(m: Map<string, Uint8Array>, ops: KvOp[]): void {
  for (const o of ops) {
    if (o.type === "put") m.set(toHex(o.key), o.value);
    else m.delete(toHex(o.key));
  }
}

/** A handle on a {@linkcode SimDisk}: a {@linkcode Kv} with the disk's faults. */
export class SimKv implements Kv {
  #closed = false;
  constructor(
    readonly disk: SimDisk,
    readonly epoch: number,
    readonly later?: (ms: number, fn: () => void) => void,
  ) {}

  #live(): void {
    if (this.#closed || this.disk.epoch !== this.epoch) {
      throw new XfError("SHUTTING_DOWN", "Cannot use the store: it is closed (or the power went)");
    }
  }

  get(key: Uint8Array): Promise<Uint8Array | undefined> {
    try {
      this.#live();
      this.disk.readFault("a key");
    } catch (e) {
      return Promise.reject(e);
    }
    return this.disk.view().get(key).then((v) => this.disk.damaged(key, v));
  }

  async getMany(keys: Uint8Array[]): Promise<(Uint8Array | undefined)[]> {
    this.#live();
    this.disk.readFault(`${keys.length} keys`);
    const out = await this.disk.view().getMany(keys);
    return out.map((v, i) => this.disk.damaged(keys[i]!, v));
  }

  batch(ops: KvOp[], options: { sync?: boolean } = {}): Promise<void> {
    if (!this.later) {
      try {
        this.#live();
        this.disk.write(ops, options.sync === true);
      } catch (e) {
        return Promise.reject(e);
      }
      return Promise.resolve();
    }
    return new Promise<void>((resolve, reject) => {
      this.#queue.push({ ops, sync: options.sync === true, resolve, reject });
      if (this.#queue.length === 1) this.#next();
    });
  }

  /** Batches issued and not landed, in order: the first is under way. */
  #queue: { ops: KvOp[]; sync: boolean; resolve: () => void; reject: (e: unknown) => void }[] = [];

  #next(): void {
    const head = this.#queue[0];
    if (!head) return;
    const land = () => {
      this.#queue.shift();
      try {
        this.#live();
        this.disk.write(head.ops, head.sync);
        head.resolve();
      } catch (e) {
        head.reject(e);
      }
      this.#next();
    };
    const ms = this.disk.latency();
    if (ms === 0) land();
    else this.later!(ms, land);
  }

  async *range(r: KvRange): AsyncIterable<[Uint8Array, Uint8Array]> {
    this.#live();
    this.disk.readFault("a range");
    for await (const [k, v] of this.disk.view().range(r)) {
      this.#live();
      yield [k, r.values === false ? v : this.disk.damaged(k, v)!];
    }
  }

  compact(): Promise<void> {
    try {
      this.#live();
    } catch (e) {
      return Promise.reject(e);
    }
    return Promise.resolve();
  }

  close(): Promise<void> {
    this.#closed = true;
    return Promise.resolve();
  }
}
