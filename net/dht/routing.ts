/**
 * The Kademlia routing table of one group's DHT: pure data, no sockets, no
 * timers. Time comes in as arguments; pings are the caller's to send.
 *
 * A node id is SHA-256 of the node's Ed25519 public key; distance is XOR.
 * Buckets hold at most {@linkcode K_BUCKET} contacts, least recently seen
 * first. Only the bucket that covers the local id is split (as in the
 * Kademlia paper and k-bucket), so bucket `i < last` holds contacts whose id
 * shares exactly `i` leading bits with the local id and the last bucket holds
 * the rest. A full bucket does not evict: {@linkcode RoutingTable.insert}
 * names its least recently seen contact for the caller to ping, and the
 * newcomer replaces it only if the caller reports the ping
 * {@linkcode RoutingTable.failed}.
 *
 * @module
 */

import { ADDR_BYTES_MAX, K_BUCKET, ROUTING_ENTRIES_MAX, ROUTING_FAILURES_MAX } from "../../core/limits.ts";
import { bytesEqual, fromHex, toHex } from "../../core/bytes.ts";
import { sha256 } from "@noble/hashes/sha2";
import { XfError } from "../../core/errors.ts";
import { ID_BITS, ID_BYTES, KEY_BYTES } from "./constants.ts";

export { ID_BYTES } from "./constants.ts";

/** A node as the routing table knows it. */
export interface Contact {
  /** Node id: SHA-256 of `key`, 32 bytes. */
  id: Uint8Array;
  /** The node's Ed25519 public key, 32 bytes. */
  key: Uint8Array;
  /** Where to reach it, e.g. `ws://10.0.0.7:7878`. */
  addr: string;
  /** When it was last heard from, ms (the caller's clock). */
  lastSeen: number;
}

/** Why {@linkcode RoutingTable.insert} refused a contact. */
export type InsertRefusal =
  /** The contact is the local node. */
  | "SELF"
  /** Wrong id or key length, id not SHA-256 of key, bad address or time. */
  | "BAD_CONTACT"
  /** The table already holds {@linkcode ROUTING_ENTRIES_MAX} contacts. */
  | "TABLE_FULL";

/** What {@linkcode RoutingTable.insert} did. */
export type InsertResult =
  /** The contact is new and now in the table. */
  | { status: "added" }
  /** The contact was known: its address and last-seen time were refreshed. */
  | { status: "updated" }
  /**
   * Its bucket is full: ping `ping` (the least recently seen contact), then
   * report {@linkcode RoutingTable.seen} or {@linkcode RoutingTable.failed}.
   * The newcomer takes the slot only if the ping fails.
   */
  | { status: "pending"; ping: Contact }
  /**
   * Its bucket is full and a ping is already out for that bucket: the
   * newcomer replaces the earlier candidate and waits on the same ping.
   */
  | { status: "queued" }
  /** Not inserted, for the given reason. */
  | { status: "refused"; code: InsertRefusal };

/** Options of a {@linkcode RoutingTable}. */
export interface RoutingTableOptions {
  /** Contacts per bucket; default {@linkcode K_BUCKET}. */
  k?: number;
  /** Contacts in the table at most; default {@linkcode ROUTING_ENTRIES_MAX}. */
  entriesMax?: number;
  /**
   * Check on insert that each id is SHA-256 of its key (default true). Only
   * a caller that derived the ids itself, such as a simulation, turns it off.
   */
  verifyIds?: boolean;
}

/** The persisted form of one contact (hex bytes). */
export interface ContactJSON {
  /** Node id, 64 hex digits. */
  id: string;
  /** Public key, 64 hex digits. */
  key: string;
  /** Address. */
  addr: string;
  /** Last seen, ms. */
  lastSeen: number;
}

/** The persisted form of a routing table, from {@linkcode RoutingTable.toJSON}. */
export interface RoutingTableJSON {
  /** Format version, 1. */
  v: 1;
  /** The local node id, 64 hex digits. */
  self: string;
  /** Every contact, least recently seen first within each bucket. */
  contacts: ContactJSON[];
}

/**
 * The node id of an Ed25519 public key: its SHA-256.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { nodeIdOf } from "./routing.ts";
 * assert(nodeIdOf(new Uint8Array(32)).length === 32);
 * ```
 */
export function nodeIdOf(publicKey: Uint8Array): Uint8Array {
  return sha256(publicKey);
}

/**
 * XOR distance of two ids of the same length.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { xorDistance } from "./routing.ts";
 * assert(xorDistance(new Uint8Array([6]), new Uint8Array([3]))[0] === 5);
 * ```
 */
export function xorDistance(a: Uint8Array, b: Uint8Array): Uint8Array {
  if (a.length !== b.length) {
    throw new RangeError(`Cannot take XOR distance: lengths "${a.length}" and "${b.length}" differ`);
  }
  const out = new Uint8Array(a.length);
  for (let i = 0; i < a.length; i++) out[i] = a[i]! ^ b[i]!;
  return out;
}

/**
 * Order two ids by XOR distance to `target`: negative if `a` is closer, 0 if
 * equal. All three must have the same length (not checked).
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { compareDistance } from "./routing.ts";
 * const t = new Uint8Array([0]);
 * assert(compareDistance(t, new Uint8Array([1]), new Uint8Array([2])) < 0);
 * ```
 */
export function compareDistance(target: Uint8Array, a: Uint8Array, b: Uint8Array): number {
  for (let i = 0; i < target.length; i++) {
    const t = target[i]!;
    const d = (a[i]! ^ t) - (b[i]! ^ t);
    if (d !== 0) return d;
  }
  return 0;
}

/**
 * How many leading bits two ids share (their length in bits if equal).
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { commonPrefixLength } from "./routing.ts";
 * assert(commonPrefixLength(new Uint8Array([0b1010_0000]), new Uint8Array([0b1011_0000])) === 3);
 * ```
 */
export function commonPrefixLength(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a[i]! ^ b[i]!;
    if (x !== 0) return i * 8 + Math.clz32(x) - 24;
  }
  return n * 8;
}

/** A contact as held in a bucket: with its failures in a row. */
interface Held extends Contact {
  fails: number;
}

interface Bucket {
  /** Least recently seen first. */
  contacts: Held[];
  /** A ping out for `old`; `candidate` takes its slot if the ping fails. */
  pending: { old: Held; candidate: Contact } | null;
}

function bitAt(id: Uint8Array, i: number): number {
  return (id[i >> 3]! >> (7 - (i & 7))) & 1;
}

function prefix32(id: Uint8Array): number {
  return ((id[0]! << 24) | (id[1]! << 16) | (id[2]! << 8) | id[3]!) >>> 0;
}

function copy(c: Contact): Contact {
  return { id: c.id, key: c.key, addr: c.addr, lastSeen: c.lastSeen };
}

function positiveInt(name: string, v: number | undefined, dflt: number): number {
  if (v === undefined) return dflt;
  if (!Number.isSafeInteger(v) || v < 1) {
    throw new RangeError(`Cannot make routing table: ${name} "${v}" is not a positive integer`);
  }
  return v;
}

const encoder = new TextEncoder();

/**
 * The routing table of one node in one group's DHT.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { nodeIdOf, RoutingTable } from "./routing.ts";
 * const key = (n: number) => new Uint8Array(32).fill(n);
 * const table = new RoutingTable(nodeIdOf(key(0)));
 * for (let n = 1; n <= 5; n++) {
 *   table.insert({ id: nodeIdOf(key(n)), key: key(n), addr: `sim:${n}`, lastSeen: n });
 * }
 * assert(table.size() === 5);
 * assert(table.closest(nodeIdOf(key(3)), 1)[0]?.addr === "sim:3");
 * ```
 */
export class RoutingTable {
  /** The local node id. */
  readonly self: Uint8Array;
  /** Contacts per bucket. */
  readonly k: number;
  /** Contacts in the table at most. */
  readonly entriesMax: number;
  readonly #verifyIds: boolean;
  #buckets: Bucket[] = [{ contacts: [], pending: null }];
  #size = 0;

  /** An empty table for the node whose id is `self` (32 bytes). */
  constructor(self: Uint8Array, options: RoutingTableOptions = {}) {
    if (self.length !== ID_BYTES) {
      throw new RangeError(`Cannot make routing table: local id has "${self.length}" bytes, not ${ID_BYTES}`);
    }
    this.self = self.slice();
    this.k = positiveInt("k", options.k, K_BUCKET);
    this.entriesMax = positiveInt("entriesMax", options.entriesMax, ROUTING_ENTRIES_MAX);
    this.#verifyIds = options.verifyIds ?? true;
  }

  /** Contacts in the table. */
  size(): number {
    return this.#size;
  }

  /** Buckets in the table (1 to 256). */
  bucketCount(): number {
    return this.#buckets.length;
  }

  /** Contacts in each bucket, bucket 0 (farthest from the local id) first. */
  bucketSizes(): number[] {
    return this.#buckets.map((b) => b.contacts.length);
  }

  /** Whether the contact with this id is in the table. */
  has(id: Uint8Array): boolean {
    return this.get(id) !== undefined;
  }

  /** A copy of the contact with this id, if it is in the table. */
  get(id: Uint8Array): Contact | undefined {
    if (id.length !== ID_BYTES) return undefined;
    const b = this.#bucketOf(id);
    const c = b.contacts.find((x) => bytesEqual(x.id, id));
    return c && copy(c);
  }

  /** Copies of every contact, bucket by bucket, least recently seen first. */
  contacts(): Contact[] {
    return this.#buckets.flatMap((b) => b.contacts.map(copy));
  }

  /**
   * Add a contact the node heard from, or refresh it if known. A full bucket
   * answers `pending` with the contact to ping; see {@linkcode InsertResult}.
   */
  insert(contact: Contact): InsertResult {
    const bad = this.#check(contact);
    if (bad) return { status: "refused", code: bad };
    const c = copy(contact);
    for (;;) {
      const i = this.#indexOf(c.id);
      const b = this.#buckets[i]!;
      const at = b.contacts.findIndex((x) => bytesEqual(x.id, c.id));
      if (at >= 0) {
        const old = b.contacts[at]!;
        b.contacts.splice(at, 1);
        b.contacts.push({
          id: old.id,
          key: old.key,
          addr: c.addr,
          lastSeen: Math.max(old.lastSeen, c.lastSeen),
          fails: 0,
        });
        return { status: "updated" };
      }
      if (b.contacts.length < this.k) {
        if (this.#size >= this.entriesMax) return { status: "refused", code: "TABLE_FULL" };
        b.contacts.push({ ...c, fails: 0 });
        this.#size++;
        return { status: "added" };
      }
      if (i === this.#buckets.length - 1 && this.#buckets.length < ID_BITS) {
        this.#split();
        continue;
      }
      if (b.pending) {
        b.pending.candidate = c;
        return { status: "queued" };
      }
      const old = b.contacts[0]!;
      b.pending = { old, candidate: c };
      return { status: "pending", ping: copy(old) };
    }
  }

  /**
   * The contact answered at time `now`: it becomes the most recently seen of
   * its bucket, and a newcomer waiting on a ping to it is dropped. Returns
   * whether the contact is in the table.
   */
  seen(id: Uint8Array, now: number): boolean {
    if (id.length !== ID_BYTES) return false;
    const b = this.#bucketOf(id);
    const at = b.contacts.findIndex((x) => bytesEqual(x.id, id));
    if (at < 0) return false;
    const c = b.contacts[at]!;
    b.contacts.splice(at, 1);
    c.lastSeen = Math.max(c.lastSeen, now);
    c.fails = 0;
    b.contacts.push(c);
    if (b.pending && bytesEqual(b.pending.old.id, id)) b.pending = null;
    return true;
  }

  /**
   * The contact failed to answer a ping or request. If a newcomer waits on a
   * ping in its bucket, the newcomer takes its slot at once; otherwise it is
   * dropped after {@linkcode ROUTING_FAILURES_MAX} failures in a row (an
   * answer resets the count), so one lost message does not empty a bucket
   * that nobody could refill. Returns the newcomer that took the slot, if any.
   */
  failed(id: Uint8Array): Contact | undefined {
    if (id.length !== ID_BYTES) return undefined;
    const b = this.#bucketOf(id);
    const c = b.contacts.find((x) => bytesEqual(x.id, id));
    if (!c) {
      this.#remove(id);
      return undefined;
    }
    c.fails++;
    if (b.pending === null && c.fails < ROUTING_FAILURES_MAX) return undefined;
    return this.#remove(id).promoted;
  }

  /**
   * Drop a contact (e.g. a member removed from the group), or a newcomer
   * waiting on a ping. A newcomer waiting on a ping in the freed bucket takes
   * the slot. Returns whether either was there.
   */
  remove(id: Uint8Array): boolean {
    return this.#remove(id).removed;
  }

  /**
   * The `n` contacts closest to `target` by XOR distance, closest first.
   * Walks the buckets in distance order, so it sorts at most a few buckets.
   */
  closest(target: Uint8Array, n: number = this.k): Contact[] {
    if (target.length !== ID_BYTES) {
      throw new RangeError(`Cannot find closest contacts: target has "${target.length}" bytes, not ${ID_BYTES}`);
    }
    if (n <= 0) return [];
    const last = this.#buckets.length - 1;
    const c = commonPrefixLength(this.self, target);
    const first = Math.min(c, last);
    const out: Contact[] = [];
    const t0 = prefix32(target);
    const take = (group: readonly Contact[]) => {
      if (group.length === 0) return;
      // Sort by the first 32 bits of the distance, the full distance on a tie.
      const sorted = group.slice().sort((a, b) =>
        ((prefix32(a.id) ^ t0) >>> 0) - ((prefix32(b.id) ^ t0) >>> 0) || compareDistance(target, a.id, b.id)
      );
      for (const x of sorted) {
        if (out.length >= n) break;
        out.push(copy(x));
      }
    };
    // Bucket `first` shares more than `first` bits with the target: closest.
    take(this.#buckets[first]!.contacts);
    if (out.length < n && first < last) {
      // Buckets above it share exactly `c` bits with the target. Of buckets
      // j1 < j2, contacts agree with the local id up to bit j1, where those
      // of j2 keep its bit and those of j1 flip it; so j2 is the closer
      // bucket exactly when the target has the local id's bit j1.
      const above: number[] = [];
      for (let j = first + 1; j <= last; j++) if (this.#buckets[j]!.contacts.length > 0) above.push(j);
      above.sort((j1, j2) => {
        const lo = Math.min(j1, j2);
        const higherCloser = bitAt(target, lo) === bitAt(this.self, lo);
        return (j1 > j2) === higherCloser ? -1 : 1;
      });
      for (const j of above) {
        if (out.length >= n) break;
        take(this.#buckets[j]!.contacts);
      }
    }
    // Bucket i below it shares exactly i bits with the target: nearer first.
    for (let i = first - 1; i >= 0 && out.length < n; i--) take(this.#buckets[i]!.contacts);
    return out;
  }

  /** Copies of the contacts not seen since `now - maxAgeMs`, oldest first: ping or drop them. */
  stale(now: number, maxAgeMs: number): Contact[] {
    const cutoff = now - maxAgeMs;
    return this.#buckets
      .flatMap((b) => b.contacts.filter((c) => c.lastSeen < cutoff))
      .sort((a, b) => a.lastSeen - b.lastSeen)
      .map(copy);
  }

  /** The table as plain JSON-able data, for persistence. */
  toJSON(): RoutingTableJSON {
    return {
      v: 1,
      self: toHex(this.self),
      contacts: this.#buckets.flatMap((b) =>
        b.contacts.map((c) => ({ id: toHex(c.id), key: toHex(c.key), addr: c.addr, lastSeen: c.lastSeen }))
      ),
    };
  }

  /**
   * Rebuild a table from {@linkcode RoutingTable.toJSON} output. Contacts are
   * inserted oldest first; any that no longer fit are dropped. Throws
   * `STORAGE_CORRUPTION` if the data is malformed.
   *
   * @example
   * ```ts
   * import { assert } from "@std/assert";
   * import { nodeIdOf, RoutingTable } from "./routing.ts";
   * const key = (n: number) => new Uint8Array(32).fill(n);
   * const t = new RoutingTable(nodeIdOf(key(0)));
   * t.insert({ id: nodeIdOf(key(1)), key: key(1), addr: "sim:1", lastSeen: 1 });
   * const back = RoutingTable.fromJSON(JSON.parse(JSON.stringify(t)));
   * assert(back.size() === 1);
   * ```
   */
  static fromJSON(json: unknown, options: RoutingTableOptions = {}): RoutingTable {
    const corrupt = (what: string) => new XfError("STORAGE_CORRUPTION", `Cannot load routing table: ${what}`);
    if (typeof json !== "object" || json === null) throw corrupt("not an object");
    const j = json as Partial<Record<keyof RoutingTableJSON, unknown>>;
    if (j.v !== 1) throw corrupt(`version "${String(j.v)}" is not 1`);
    const self = typeof j.self === "string" ? fromHex(j.self) : null;
    if (!self || self.length !== ID_BYTES) throw corrupt(`local id "${String(j.self)}" is not 32 bytes of hex`);
    if (!Array.isArray(j.contacts)) throw corrupt("contacts is not an array");
    const table = new RoutingTable(self, options);
    const contacts: Contact[] = j.contacts.map((x: unknown, n: number) => {
      const cj = (typeof x === "object" && x !== null ? x : {}) as Partial<Record<keyof ContactJSON, unknown>>;
      const id = typeof cj.id === "string" ? fromHex(cj.id) : null;
      const key = typeof cj.key === "string" ? fromHex(cj.key) : null;
      if (!id || !key || typeof cj.addr !== "string" || typeof cj.lastSeen !== "number") {
        throw corrupt(`contact ${n} is malformed`);
      }
      return { id, key, addr: cj.addr, lastSeen: cj.lastSeen };
    });
    contacts.sort((a, b) => a.lastSeen - b.lastSeen);
    for (const [n, c] of contacts.entries()) {
      const r = table.insert(c);
      if (r.status === "refused" && r.code === "BAD_CONTACT") throw corrupt(`contact ${n} is not valid`);
      if (r.status === "pending" || r.status === "queued") table.#clearPending(c.id);
    }
    return table;
  }

  #remove(id: Uint8Array): { removed: boolean; promoted: Contact | undefined } {
    if (id.length !== ID_BYTES) return { removed: false, promoted: undefined };
    const b = this.#bucketOf(id);
    const p = b.pending;
    const at = b.contacts.findIndex((x) => bytesEqual(x.id, id));
    if (at < 0) {
      // Perhaps the newcomer waiting on a ping: drop it.
      if (p && bytesEqual(p.candidate.id, id)) {
        b.pending = null;
        return { removed: true, promoted: undefined };
      }
      return { removed: false, promoted: undefined };
    }
    b.contacts.splice(at, 1);
    this.#size--;
    if (!p) return { removed: true, promoted: undefined };
    b.pending = null;
    const r = this.insert(p.candidate);
    return { removed: true, promoted: r.status === "added" ? copy(p.candidate) : undefined };
  }

  #clearPending(id: Uint8Array): void {
    const b = this.#bucketOf(id);
    if (b.pending && bytesEqual(b.pending.candidate.id, id)) b.pending = null;
  }

  #check(c: Contact): InsertRefusal | null {
    if (!(c.id instanceof Uint8Array) || c.id.length !== ID_BYTES) return "BAD_CONTACT";
    if (!(c.key instanceof Uint8Array) || c.key.length !== KEY_BYTES) return "BAD_CONTACT";
    if (typeof c.addr !== "string" || c.addr.length === 0 || c.addr.length > ADDR_BYTES_MAX) return "BAD_CONTACT";
    // A UTF-16 code unit is at most 3 bytes of UTF-8: encode only when it could matter.
    if (c.addr.length * 3 > ADDR_BYTES_MAX && encoder.encode(c.addr).length > ADDR_BYTES_MAX) return "BAD_CONTACT";
    if (!Number.isFinite(c.lastSeen)) return "BAD_CONTACT";
    if (bytesEqual(c.id, this.self)) return "SELF";
    if (this.#verifyIds && !bytesEqual(nodeIdOf(c.key), c.id)) return "BAD_CONTACT";
    return null;
  }

  #indexOf(id: Uint8Array): number {
    return Math.min(commonPrefixLength(this.self, id), this.#buckets.length - 1);
  }

  #bucketOf(id: Uint8Array): Bucket {
    return this.#buckets[this.#indexOf(id)]!;
  }

  /** Split the last bucket: contacts sharing more bits with the local id move to a new last bucket. */
  #split(): void {
    const last = this.#buckets.length - 1;
    const b = this.#buckets[last]!;
    const near: Held[] = [];
    const far: Held[] = [];
    for (const c of b.contacts) (commonPrefixLength(this.self, c.id) > last ? near : far).push(c);
    const pending = b.pending;
    b.contacts = far;
    b.pending = null;
    this.#buckets.push({ contacts: near, pending: null });
    // The ping's outcome no longer matters once the bucket has room; re-place
    // the newcomer (it may land in either half).
    if (pending) this.insert(pending.candidate);
  }
}

// ---- The table's rules on the wire's events: one copy, followed by the node (service.ts) and the simulation ----

/**
 * A request came from `contact` (or it answered one, see {@linkcode tableAnswered}): it goes into the table. When its
 * bucket is full, the least recently seen contact is pinged through `ping` before it may be replaced
 * (Kademlia's ping-before-replace); report the ping's outcome with {@linkcode tablePinged}. Returns whether the table
 * changed.
 */
export function tableHeard(table: RoutingTable, contact: Contact, ping: (old: Contact) => void): boolean {
  const r = table.insert(contact);
  if (r.status === "pending") ping(r.ping);
  return r.status === "added" || r.status === "updated";
}

/** `contact` answered a request at `now`: it is in the table (as {@linkcode tableHeard}) and seen. Returns whether the table changed. */
export function tableAnswered(
  table: RoutingTable,
  contact: Contact,
  now: number,
  ping: (old: Contact) => void,
): boolean {
  const changed = tableHeard(table, { ...contact, lastSeen: now }, ping);
  table.seen(contact.id, now);
  return changed;
}

/** A request to `id` went unanswered: one more failure in a row (see `RoutingTable.failed`). Returns whether the table held it. */
export function tableUnanswered(table: RoutingTable, id: Uint8Array): boolean {
  if (!table.has(id)) return false;
  table.failed(id);
  return true;
}

/** The outcome of a ping-before-replace: seen at `now` if it answered, else a failure (its slot may go to the newcomer). */
export function tablePinged(table: RoutingTable, old: Contact, answered: boolean, now: number): boolean {
  if (answered) {
    table.seen(old.id, now);
    return false;
  }
  return tableUnanswered(table, old.id);
}
