/**
 * Signed announcement records of a group's DHT: "node `nodeKey` is a member
 * of `group`, reachable at `addr`, holding `count` events under Merkle root
 * `root`". Records are signed with Ed25519 by `nodeKey` (WebCrypto), expire
 * after {@linkcode ANNOUNCE_TTL_MS} unless refreshed, and an
 * {@linkcode AnnouncementStore} keeps the newest valid one per (group, node).
 *
 * The signed bytes are a fixed binary layout, big-endian:
 *
 * | field | bytes |
 * |---|---|
 * | domain `"xf-dht-announce-v1"` | 18 |
 * | group | 32 |
 * | nodeKey | 32 |
 * | root | 32 |
 * | count, ts, expires | 8 each (uint64) |
 * | length of addr | 2 (uint16) |
 * | addr, UTF-8 | ≤ {@linkcode ADDR_BYTES_MAX} |
 *
 * A record on the wire or on disk is those bytes followed by the 64-byte
 * signature ({@linkcode encodeRecord}).
 *
 * @module
 */

import {
  ADDR_BYTES_MAX,
  ANNOUNCE_FUTURE_MS,
  ANNOUNCE_TTL_MS,
  ID_BYTES,
  KEY_BYTES,
  RECORD_GROUPS_MAX,
  RECORDS_PER_GROUP_MAX,
} from "./limits.ts";
import { bytesEqual, toHex } from "./routing.ts";

export { ANNOUNCE_FUTURE_MS, ANNOUNCE_TTL_MS, RECORD_GROUPS_MAX, RECORDS_PER_GROUP_MAX } from "./limits.ts";

/** A signed announcement. */
export interface AnnounceRecord {
  /** The group id, 32 bytes. */
  group: Uint8Array;
  /** The announcing node's Ed25519 public key, 32 bytes; also the signer. */
  nodeKey: Uint8Array;
  /** Where to reach the node. */
  addr: string;
  /** The Merkle root of the group's events the node holds, 32 bytes. */
  root: Uint8Array;
  /** How many events are under `root`. */
  count: number;
  /** When it was made, ms since the Unix epoch. */
  ts: number;
  /** When it stops being valid, ms since the Unix epoch; at most `ts` + {@linkcode ANNOUNCE_TTL_MS}. */
  expires: number;
  /** Ed25519 signature by `nodeKey` over {@linkcode encodeRecordBody}, 64 bytes. */
  sig: Uint8Array;
}

/** An announcement before it is signed. */
export type UnsignedRecord = Omit<AnnounceRecord, "sig">;

/**
 * Why a record was refused, as a stable code:
 * - `BAD_RECORD`: wrong field sizes, non-integer numbers, `expires` before `ts`, address too long
 * - `UNSIGNED`: no signature (missing, not 64 bytes, or all zeros)
 * - `BAD_SIGNATURE`: the signature does not verify against `nodeKey`
 * - `NOT_SIGNER`: sent by a peer other than `nodeKey` (one node cannot announce for another)
 * - `EXPIRED`: `expires` is not after now
 * - `TTL_TOO_LONG`: `expires` is more than {@linkcode ANNOUNCE_TTL_MS} after `ts`
 * - `TS_IN_FUTURE`: `ts` is more than {@linkcode ANNOUNCE_FUTURE_MS} ahead of now
 * - `STALE`: the store holds a record of the same node at least as new
 * - `GROUP_FULL`: the group already has {@linkcode RECORDS_PER_GROUP_MAX} live records
 * - `TOO_MANY_GROUPS`: the store already holds {@linkcode RECORD_GROUPS_MAX} groups
 */
export type RecordCode =
  | "BAD_RECORD"
  | "UNSIGNED"
  | "BAD_SIGNATURE"
  | "NOT_SIGNER"
  | "EXPIRED"
  | "TTL_TOO_LONG"
  | "TS_IN_FUTURE"
  | "STALE"
  | "GROUP_FULL"
  | "TOO_MANY_GROUPS";

/** What {@linkcode AnnouncementStore.put} did. */
export type PutResult =
  | { ok: true; replaced: boolean }
  | { ok: false; code: RecordCode };

/** An Ed25519 identity: the raw public key and the private key. */
export interface KeyPair {
  /** The raw public key, 32 bytes. */
  publicKey: Uint8Array;
  /** The private key (extractable, so it can be saved as PKCS8). */
  privateKey: CryptoKey;
}

const ED25519 = { name: "Ed25519" } as const;
const DOMAIN = new TextEncoder().encode("xf-dht-announce-v1");
const SIG_BYTES = 64;
const HEAD_BYTES = DOMAIN.length + 3 * 32 + 3 * 8 + 2;
const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

/**
 * A fresh Ed25519 identity.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { generateKeyPair } from "./records.ts";
 * const { publicKey } = await generateKeyPair();
 * assert(publicKey.length === 32);
 * ```
 */
export async function generateKeyPair(): Promise<KeyPair> {
  const kp = await crypto.subtle.generateKey(ED25519, true, ["sign", "verify"]) as CryptoKeyPair;
  const publicKey = new Uint8Array(await crypto.subtle.exportKey("raw", kp.publicKey));
  return { publicKey, privateKey: kp.privateKey };
}

/**
 * Load an Ed25519 private key from PKCS8 bytes or a JWK.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { exportPrivateKey, generateKeyPair, importPrivateKey } from "./records.ts";
 * const { privateKey } = await generateKeyPair();
 * const again = await importPrivateKey(await exportPrivateKey(privateKey));
 * assert(again.type === "private");
 * ```
 */
export function importPrivateKey(key: Uint8Array | JsonWebKey): Promise<CryptoKey> {
  if (key instanceof Uint8Array) return crypto.subtle.importKey("pkcs8", key as BufferSource, ED25519, true, ["sign"]);
  return crypto.subtle.importKey("jwk", key, ED25519, true, ["sign"]);
}

/**
 * The PKCS8 bytes of an (extractable) Ed25519 private key.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { exportPrivateKey, generateKeyPair } from "./records.ts";
 * const { privateKey } = await generateKeyPair();
 * assert((await exportPrivateKey(privateKey)).length > 32);
 * ```
 */
export async function exportPrivateKey(key: CryptoKey): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.exportKey("pkcs8", key));
}

/** What is wrong with a record's fields, or null if their shape is right. */
function shapeProblem(r: UnsignedRecord): string | null {
  if (typeof r !== "object" || r === null) return "not an object";
  for (const [f, n] of [["group", ID_BYTES], ["nodeKey", KEY_BYTES], ["root", 32]] as const) {
    const v = r[f];
    if (!(v instanceof Uint8Array) || v.length !== n) return `${f} is not ${n} bytes`;
  }
  if (typeof r.addr !== "string" || r.addr.length === 0 || r.addr.length > ADDR_BYTES_MAX) {
    return `addr is not 1 to ${ADDR_BYTES_MAX} characters`;
  }
  for (const f of ["count", "ts", "expires"] as const) {
    const n = r[f];
    if (!Number.isSafeInteger(n) || n < 0) return `${f} "${n}" is not a non-negative safe integer`;
  }
  if (r.expires < r.ts) return `expires "${r.expires}" is before ts "${r.ts}"`;
  return null;
}

function shapeError(r: UnsignedRecord): RecordCode | null {
  return shapeProblem(r) === null ? null : "BAD_RECORD";
}

/**
 * The canonical bytes of a record, the ones that are signed. Throws a
 * `RangeError` naming the field if a field is malformed.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { encodeRecordBody } from "./records.ts";
 * const z = new Uint8Array(32);
 * const bytes = encodeRecordBody({ group: z, nodeKey: z, addr: "ws://a", root: z, count: 0, ts: 1, expires: 2 });
 * assert(bytes.length === 18 + 96 + 24 + 2 + 6);
 * ```
 */
export function encodeRecordBody(r: UnsignedRecord): Uint8Array {
  const problem = shapeProblem(r);
  if (problem) throw new RangeError(`Cannot encode announcement: ${problem}`);
  const addr = encoder.encode(r.addr);
  if (addr.length > ADDR_BYTES_MAX) {
    throw new RangeError(`Cannot encode announcement: addr is ${addr.length} bytes of UTF-8, over ${ADDR_BYTES_MAX}`);
  }
  const out = new Uint8Array(HEAD_BYTES + addr.length);
  const view = new DataView(out.buffer);
  let at = 0;
  for (const part of [DOMAIN, r.group, r.nodeKey, r.root]) {
    out.set(part, at);
    at += part.length;
  }
  for (const n of [r.count, r.ts, r.expires]) {
    view.setBigUint64(at, BigInt(n));
    at += 8;
  }
  view.setUint16(at, addr.length);
  out.set(addr, at + 2);
  return out;
}

/**
 * A record's bytes for the wire or disk: the canonical body, then the signature.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { decodeRecord, encodeRecord, generateKeyPair, signRecord } from "./records.ts";
 * const { publicKey, privateKey } = await generateKeyPair();
 * const z = new Uint8Array(32);
 * const r = await signRecord({ group: z, nodeKey: publicKey, addr: "ws://a", root: z, count: 0, ts: 1, expires: 2 }, privateKey);
 * assert(decodeRecord(encodeRecord(r))?.addr === "ws://a");
 * ```
 */
export function encodeRecord(r: AnnounceRecord): Uint8Array {
  const body = encodeRecordBody(r);
  if (!(r.sig instanceof Uint8Array) || r.sig.length !== SIG_BYTES) {
    throw new RangeError(`Cannot encode announcement: signature has "${r.sig?.length}" bytes, not ${SIG_BYTES}`);
  }
  const out = new Uint8Array(body.length + SIG_BYTES);
  out.set(body);
  out.set(r.sig, body.length);
  return out;
}

/**
 * Parse {@linkcode encodeRecord} bytes; null if malformed. The signature is
 * not checked here.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { decodeRecord } from "./records.ts";
 * assert(decodeRecord(new Uint8Array(3)) === null);
 * ```
 */
export function decodeRecord(bytes: Uint8Array): AnnounceRecord | null {
  if (bytes.length < HEAD_BYTES + SIG_BYTES) return null;
  if (!bytesEqual(bytes.subarray(0, DOMAIN.length), DOMAIN)) return null;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let at = DOMAIN.length;
  const take = (n: number) => bytes.slice(at, at += n);
  const group = take(32);
  const nodeKey = take(32);
  const root = take(32);
  const nums: number[] = [];
  for (let i = 0; i < 3; i++) {
    const n = view.getBigUint64(at);
    at += 8;
    if (n > BigInt(Number.MAX_SAFE_INTEGER)) return null;
    nums.push(Number(n));
  }
  const len = view.getUint16(at);
  at += 2;
  if (len > ADDR_BYTES_MAX || bytes.length !== at + len + SIG_BYTES) return null;
  let addr: string;
  try {
    addr = decoder.decode(bytes.subarray(at, at + len));
  } catch {
    return null;
  }
  at += len;
  const sig = take(SIG_BYTES);
  const r: AnnounceRecord = { group, nodeKey, addr, root, count: nums[0]!, ts: nums[1]!, expires: nums[2]!, sig };
  return shapeError(r) ? null : r;
}

/**
 * Sign a record with `privateKey`, which must belong to `fields.nodeKey`
 * (a mismatch yields a record that every store refuses).
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { generateKeyPair, signRecord, verifyRecord } from "./records.ts";
 * const { publicKey, privateKey } = await generateKeyPair();
 * const z = new Uint8Array(32);
 * const r = await signRecord({ group: z, nodeKey: publicKey, addr: "ws://a", root: z, count: 0, ts: 1, expires: 2 }, privateKey);
 * assert(await verifyRecord(r));
 * ```
 */
export async function signRecord(fields: UnsignedRecord, privateKey: CryptoKey): Promise<AnnounceRecord> {
  const body = encodeRecordBody(fields);
  const sig = new Uint8Array(await crypto.subtle.sign(ED25519, privateKey, body as BufferSource));
  return {
    group: fields.group,
    nodeKey: fields.nodeKey,
    addr: fields.addr,
    root: fields.root,
    count: fields.count,
    ts: fields.ts,
    expires: fields.expires,
    sig,
  };
}

/** What {@linkcode announce} needs besides the key and the clock. */
export interface AnnounceFields {
  /** The group id. */
  group: Uint8Array;
  /** The announcing node's public key. */
  nodeKey: Uint8Array;
  /** Where to reach it. */
  addr: string;
  /** Its Merkle root for the group. */
  root: Uint8Array;
  /** Events under that root. */
  count: number;
}

/**
 * A signed announcement made at `now` that lives {@linkcode ANNOUNCE_TTL_MS}.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { announce, ANNOUNCE_TTL_MS, generateKeyPair } from "./records.ts";
 * const { publicKey, privateKey } = await generateKeyPair();
 * const z = new Uint8Array(32);
 * const r = await announce({ group: z, nodeKey: publicKey, addr: "ws://a", root: z, count: 0 }, privateKey, 1000);
 * assert(r.expires === 1000 + ANNOUNCE_TTL_MS);
 * ```
 */
export function announce(fields: AnnounceFields, privateKey: CryptoKey, now: number): Promise<AnnounceRecord> {
  return signRecord({ ...fields, ts: now, expires: now + ANNOUNCE_TTL_MS }, privateKey);
}

/**
 * Whether the record's signature verifies against its `nodeKey`. False for
 * a malformed record or key, never throws.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { generateKeyPair, signRecord, verifyRecord } from "./records.ts";
 * const { publicKey, privateKey } = await generateKeyPair();
 * const z = new Uint8Array(32);
 * const r = await signRecord({ group: z, nodeKey: publicKey, addr: "ws://a", root: z, count: 0, ts: 1, expires: 2 }, privateKey);
 * assert(!(await verifyRecord({ ...r, count: 1 })));
 * ```
 */
export async function verifyRecord(r: AnnounceRecord): Promise<boolean> {
  if (shapeError(r) || !(r.sig instanceof Uint8Array) || r.sig.length !== SIG_BYTES) return false;
  try {
    const key = await crypto.subtle.importKey("raw", r.nodeKey as BufferSource, ED25519, false, ["verify"]);
    return await crypto.subtle.verify(ED25519, key, r.sig as BufferSource, encodeRecordBody(r) as BufferSource);
  } catch {
    return false;
  }
}

/** Options of {@linkcode checkRecord} and {@linkcode AnnouncementStore.put}. */
export interface CheckOptions {
  /**
   * The authenticated public key of the peer that sent the record in an
   * announce request. If given, it must be the record's `nodeKey`.
   * Leave it out for records relayed in find-peers answers.
   */
  sender?: Uint8Array;
}

function cheapCheck(r: AnnounceRecord, now: number, options: CheckOptions): RecordCode | null {
  const bad = shapeError(r);
  if (bad) return bad;
  if (encoder.encode(r.addr).length > ADDR_BYTES_MAX) return "BAD_RECORD";
  if (!(r.sig instanceof Uint8Array) || r.sig.length !== SIG_BYTES || r.sig.every((b) => b === 0)) return "UNSIGNED";
  if (options.sender !== undefined && !bytesEqual(options.sender, r.nodeKey)) return "NOT_SIGNER";
  if (r.expires <= now) return "EXPIRED";
  if (r.expires - r.ts > ANNOUNCE_TTL_MS) return "TTL_TOO_LONG";
  if (r.ts > now + ANNOUNCE_FUTURE_MS) return "TS_IN_FUTURE";
  return null;
}

/**
 * Why a record is not acceptable at `now`, or null if it is: shape,
 * signature, sender, expiry and clock checks (not freshness against a store).
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { announce, checkRecord, generateKeyPair } from "./records.ts";
 * const { publicKey, privateKey } = await generateKeyPair();
 * const z = new Uint8Array(32);
 * const r = await announce({ group: z, nodeKey: publicKey, addr: "ws://a", root: z, count: 0 }, privateKey, 0);
 * assert((await checkRecord(r, 0)) === null);
 * assert((await checkRecord(r, r.expires)) === "EXPIRED");
 * ```
 */
export async function checkRecord(
  r: AnnounceRecord,
  now: number,
  options: CheckOptions = {},
): Promise<RecordCode | null> {
  const bad = cheapCheck(r, now, options);
  if (bad) return bad;
  return (await verifyRecord(r)) ? null : "BAD_SIGNATURE";
}

/** Options of an {@linkcode AnnouncementStore}. */
export interface StoreOptions {
  /** Live records per group at most; default {@linkcode RECORDS_PER_GROUP_MAX}. */
  perGroupMax?: number;
  /** Groups at most; default {@linkcode RECORD_GROUPS_MAX}. */
  groupsMax?: number;
}

/**
 * The newest valid announcement per (group, node), in memory. Expired
 * records are dropped as they are met and by {@linkcode AnnouncementStore.prune}.
 * A full group refuses newcomers (`GROUP_FULL`) rather than evicting live
 * records, so a flood of fresh keys cannot push members out.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { announce, AnnouncementStore, generateKeyPair } from "./records.ts";
 * const { publicKey, privateKey } = await generateKeyPair();
 * const group = new Uint8Array(32).fill(7);
 * const r = await announce({ group, nodeKey: publicKey, addr: "ws://a", root: new Uint8Array(32), count: 3 }, privateKey, 0);
 * const store = new AnnouncementStore();
 * assert((await store.put(r, 0, { sender: publicKey })).ok);
 * assert(store.get(group, 1).length === 1);
 * ```
 */
export class AnnouncementStore {
  /** Live records per group at most. */
  readonly perGroupMax: number;
  /** Groups at most. */
  readonly groupsMax: number;
  #groups = new Map<string, Map<string, AnnounceRecord>>();
  #size = 0;

  /** An empty store. */
  constructor(options: StoreOptions = {}) {
    this.perGroupMax = options.perGroupMax ?? RECORDS_PER_GROUP_MAX;
    this.groupsMax = options.groupsMax ?? RECORD_GROUPS_MAX;
    for (const [name, v] of [["perGroupMax", this.perGroupMax], ["groupsMax", this.groupsMax]] as const) {
      if (!Number.isSafeInteger(v) || v < 1) {
        throw new RangeError(`Cannot make announcement store: ${name} "${v}" is not a positive integer`);
      }
    }
  }

  /** Records held (some may have expired since the last prune). */
  size(): number {
    return this.#size;
  }

  /** Groups with at least one record held. */
  groupCount(): number {
    return this.#groups.size;
  }

  /**
   * Keep `r` if it is valid at `now` and newer than the node's record held
   * for the group. `sender`, if given, must be `r.nodeKey`.
   */
  async put(r: AnnounceRecord, now: number, options: CheckOptions = {}): Promise<PutResult> {
    const early = cheapCheck(r, now, options) ?? this.#admit(r, now);
    if (early) return { ok: false, code: early };
    if (!(await verifyRecord(r))) return { ok: false, code: "BAD_SIGNATURE" };
    // The store may have changed while the signature was checked.
    const late = this.#admit(r, now);
    if (late) return { ok: false, code: late };
    const g = toHex(r.group);
    let recs = this.#groups.get(g);
    if (!recs) {
      recs = new Map();
      this.#groups.set(g, recs);
    }
    const n = toHex(r.nodeKey);
    const replaced = recs.has(n);
    if (!replaced) this.#size++;
    recs.set(n, {
      group: r.group.slice(),
      nodeKey: r.nodeKey.slice(),
      addr: r.addr,
      root: r.root.slice(),
      count: r.count,
      ts: r.ts,
      expires: r.expires,
      sig: r.sig.slice(),
    });
    return { ok: true, replaced };
  }

  /** The live records of a group at `now`, newest first. */
  get(group: Uint8Array, now: number): AnnounceRecord[] {
    const recs = this.#groups.get(toHex(group));
    if (!recs) return [];
    this.#pruneGroup(toHex(group), recs, now);
    return [...recs.values()].sort((a, b) => b.ts - a.ts).map((r) => ({ ...r }));
  }

  /** The live record of one node in a group at `now`, if held. */
  getOne(group: Uint8Array, nodeKey: Uint8Array, now: number): AnnounceRecord | undefined {
    const r = this.#groups.get(toHex(group))?.get(toHex(nodeKey));
    return r && r.expires > now ? { ...r } : undefined;
  }

  /** Drop every record expired at `now`; returns how many were dropped. */
  prune(now: number): number {
    const before = this.#size;
    for (const [g, recs] of this.#groups) this.#pruneGroup(g, recs, now);
    return before - this.#size;
  }

  /** Whether the store has room for `r` and holds nothing newer from its node. */
  #admit(r: AnnounceRecord, now: number): RecordCode | null {
    const g = toHex(r.group);
    const recs = this.#groups.get(g);
    if (!recs) {
      if (this.#groups.size < this.groupsMax) return null;
      this.prune(now);
      return this.#groups.size < this.groupsMax ? null : "TOO_MANY_GROUPS";
    }
    const held = recs.get(toHex(r.nodeKey));
    if (held && held.expires > now) return held.ts >= r.ts ? "STALE" : null;
    if (recs.size >= this.perGroupMax) {
      this.#pruneGroup(g, recs, now);
      if (recs.size >= this.perGroupMax) return "GROUP_FULL";
    }
    return null;
  }

  #pruneGroup(g: string, recs: Map<string, AnnounceRecord>, now: number): void {
    for (const [n, r] of recs) {
      if (r.expires <= now) {
        recs.delete(n);
        this.#size--;
      }
    }
    if (recs.size === 0) this.#groups.delete(g);
  }
}
