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
 * An announced address must pass {@linkcode checkPeerAddress}: a `ws://` or
 * `wss://` host and port, nothing that points inside the host's network
 * stack or at a cloud metadata service.
 *
 * @module
 */

import { bytesEqual, toHex } from "../../core/bytes.ts";
import { ID_BYTES, KEY_BYTES } from "./constants.ts";
import {
  ADDR_BYTES_MAX,
  ANNOUNCE_FUTURE_MS,
  ANNOUNCE_TTL_MS,
  LIMITS,
  RECORD_GROUPS_MAX,
  RECORDS_PER_GROUP_MAX,
  VERIFIED_NODES_MAX,
} from "../../core/limits.ts";

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
 * - `BAD_RECORD`: wrong field sizes, non-integer numbers, `expires` before `ts`, an address
 *   {@linkcode checkPeerAddress} refuses
 * - `UNSIGNED`: no signature (missing, not 64 bytes, or all zeros)
 * - `BAD_SIGNATURE`: the signature does not verify against `nodeKey`
 * - `NOT_SIGNER`: sent by a peer other than `nodeKey` (one node cannot announce for another)
 * - `EXPIRED`: `expires` is not after now
 * - `TTL_TOO_LONG`: `expires` is more than {@linkcode ANNOUNCE_TTL_MS} after `ts`
 * - `TS_IN_FUTURE`: `ts` is more than {@linkcode ANNOUNCE_FUTURE_MS} ahead of now
 * - `STALE`: the store holds a record of the same node at least as new
 * - `GROUP_FULL`: the group already has {@linkcode RECORDS_PER_GROUP_MAX} live records, all verified
 * - `ADDR_FULL`: the group already has `dht_records_per_addr_max` records announced from the sender's network address
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
  | "ADDR_FULL"
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
/** `ignoreBOM`: a leading U+FEFF stays in `addr`, so a decoded record re-encodes to its bytes. */
const decoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

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
 * import { announce, generateKeyPair } from "./records.ts";
 * import { ANNOUNCE_TTL_MS } from "../../core/limits.ts";
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

/** Host names of cloud metadata services (lower case, no trailing dot). */
const METADATA_HOSTS: ReadonlySet<string> = new Set([
  "metadata",
  "metadata.google.internal",
  "metadata.goog",
  "instance-data",
  "instance-data.ec2.internal",
]);

/** Why an IPv4 address, as its 4 bytes, cannot be announced; null if it can. Loopback and private ranges can. */
function ipv4Problem(b: readonly number[]): string | null {
  const [a = 0, x = 0] = b;
  if (a === 0) return "it is unspecified (0.0.0.0/8)";
  if (a === 169 && x === 254) return "it is link-local (169.254.0.0/16, where cloud metadata services answer)";
  if (a >= 224 && a <= 239) return "it is multicast (224.0.0.0/4)";
  if (a >= 240) return "it is reserved or broadcast (240.0.0.0/4)";
  if (b.join(".") === "100.100.100.200") return "it is a cloud metadata address";
  return null;
}

/** The 8 16-bit words of an IPv6 address in hex notation (as the URL parser writes it), or null. */
function ipv6Words(s: string): number[] | null {
  const halves = s.split("::");
  if (halves.length > 2) return null;
  const words = (h: string) =>
    h === "" ? [] : h.split(":").map((w) => /^[0-9a-f]{1,4}$/i.test(w) ? parseInt(w, 16) : NaN);
  const head = words(halves[0]!), tail = halves.length === 2 ? words(halves[1]!) : [];
  const fill = 8 - head.length - tail.length;
  if (halves.length === 2 ? fill < 1 : fill !== 0) return null;
  const out = [...head, ...new Array<number>(halves.length === 2 ? fill : 0).fill(0), ...tail];
  return out.some(Number.isNaN) ? null : out;
}

/** Why an IPv6 address, as its 8 words, cannot be announced; null if it can. */
function ipv6Problem(w: readonly number[]): string | null {
  const v4 = (hi: number, lo: number) => [hi >> 8, hi & 255, lo >> 8, lo & 255];
  const zeros = (from: number, to: number) => w.slice(from, to).every((x) => x === 0);
  if (zeros(0, 8)) return "it is unspecified (::)";
  if ((w[0]! & 0xffc0) === 0xfe80) return "it is link-local (fe80::/10)";
  if ((w[0]! & 0xff00) === 0xff00) return "it is multicast (ff00::/8)";
  if (w.join(":") === [0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254].join(":")) return "it is a cloud metadata address";
  // IPv4 inside IPv6 (mapped ::ffff:0:0/96, NAT64 64:ff9b::/96, compatible ::/96 except ::1) follows the IPv4 rules.
  const mapped = zeros(0, 5) && w[5] === 0xffff;
  const nat64 = w[0] === 0x64 && w[1] === 0xff9b && zeros(2, 6);
  const compatible = zeros(0, 6) && !(w[6] === 0 && w[7] === 1);
  return mapped || nat64 || compatible ? ipv4Problem(v4(w[6]!, w[7]!)) : null;
}

/**
 * Why `url` cannot be announced as a node's address, or null if it can. An
 * announceable address is a `ws://` or `wss://` URL with a host and an
 * optional port, no path (or a bare "/"), query, fragment or credentials, in
 * the canonical form the WHATWG URL parser writes (so `ws://2852039166` or
 * `ws://HOST:80` are refused rather than read two ways), at most
 * {@linkcode ADDR_BYTES_MAX} bytes. Its host may not be unspecified
 * (`0.0.0.0/8`, `::`), link-local (`169.254.0.0/16`, `fe80::/10`),
 * multicast, broadcast or reserved (`224.0.0.0/3`, `ff00::/8`), or a cloud
 * metadata service (`169.254.169.254`, `fd00:ec2::254`, `100.100.100.200`,
 * `metadata`, `metadata.google.internal`, …), also when written as IPv4
 * inside IPv6; port 0 is refused. Loopback and private addresses are
 * allowed. Names are not resolved: a name that resolves to a refused
 * address passes.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { checkPeerAddress } from "./records.ts";
 * assert(checkPeerAddress("ws://127.0.0.1:7878") === null);
 * assert(checkPeerAddress("wss://node.example.org") === null);
 * assert(checkPeerAddress("http://169.254.169.254/latest") !== null);
 * assert(checkPeerAddress("ws://0.0.0.0:7878") !== null);
 * ```
 */
export function checkPeerAddress(url: string): string | null {
  if (typeof url !== "string" || url === "") return "it is empty";
  const bytes = encoder.encode(url).length;
  if (bytes > ADDR_BYTES_MAX) return `it is ${bytes} bytes, over ${ADDR_BYTES_MAX}`;
  if (!/^wss?:\/\/[^/?#@\s\\]+\/?$/i.test(url)) {
    return "it is not a ws:// or wss:// address of a host and port, with no path, query or credentials";
  }
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return "it does not parse as a URL";
  }
  const canonical = u.href.replace(/\/$/, "");
  if (url.replace(/\/$/, "") !== canonical) return `it is not in canonical form ("${canonical}")`;
  if (u.port === "0") return "its port is 0";
  const host = u.hostname;
  if (host.startsWith("[")) {
    const w = ipv6Words(host.slice(1, -1));
    return w ? ipv6Problem(w) : "its IPv6 host does not parse";
  }
  const v4 = /^(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(host);
  if (v4) return ipv4Problem(v4.slice(1).map(Number));
  if (METADATA_HOSTS.has(host.replace(/\.$/, ""))) return "it names a cloud metadata service";
  return null;
}

/**
 * The bucket a request's remote network address counts in, for the
 * per-address caps: an IPv4 address as is, an IPv6 address by its /64
 * (one host usually holds a whole /64; IPv4-mapped ones as IPv4), and an
 * unknown one ("" or absent) as the one shared bucket `"?"`.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { remoteBucket } from "./records.ts";
 * assert(remoteBucket("2001:db8:1:2::7") === remoteBucket("[2001:db8:1:2:ffff::1]"));
 * assert(remoteBucket("::ffff:10.0.0.1") === "10.0.0.1");
 * assert(remoteBucket(undefined) === "?");
 * ```
 */
export function remoteBucket(remote: string | undefined): string {
  if (!remote) return "?";
  const s = remote.replace(/^\[|\]$/g, "").replace(/%.*$/, "").toLowerCase();
  if (!s.includes(":")) return s.slice(0, 64);
  const dotted = /^(.*:)(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(s);
  const w = ipv6Words(
    dotted
      ? `${dotted[1]}${((+dotted[2]! << 8) | +dotted[3]!).toString(16)}:${
        ((+dotted[4]! << 8) | +dotted[5]!).toString(16)
      }`
      : s,
  );
  if (!w) return s.slice(0, 64);
  if (w.slice(0, 5).every((x) => x === 0) && w[5] === 0xffff) {
    return [w[6]! >> 8, w[6]! & 255, w[7]! >> 8, w[7]! & 255].join(".");
  }
  return `${w.slice(0, 4).map((x) => x.toString(16)).join(":")}::/64`;
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
  if (checkPeerAddress(r.addr) !== null) return "BAD_RECORD";
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
  /** Records per group announced from one remote network address at most; default `dht_records_per_addr_max`. */
  perAddrMax?: number;
}

/** Options of {@linkcode AnnouncementStore.put}. */
export interface PutOptions extends CheckOptions {
  /**
   * The network address an announce request came from (its socket's remote
   * IP; "" when unknown). Records announced from one address (see
   * {@linkcode remoteBucket}) are capped per group. Leave it out for records
   * relayed in find-peers answers and for our own.
   */
  remote?: string;
  /** The node is known to answer at `r.addr` (our own record, say); else {@linkcode AnnouncementStore.verify} decides. */
  verified?: boolean;
}

/** What the store knows of a held record besides the record. */
export interface HeldInfo {
  /** When the store began to hold records of this node for this group, without a lapse (ms). */
  firstSeen: number;
  /** Whether the node answered a request of ours at the record's address. */
  verified: boolean;
  /** The {@linkcode remoteBucket} the record was announced from; "" if relayed or our own. */
  remote: string;
}

interface Held extends HeldInfo {
  r: AnnounceRecord;
  /** Order of arrival, breaking ties of `firstSeen`. */
  seq: number;
}

const trimSlash = (url: string) => url.replace(/\/+$/, "");

/** Long-lived verified records first: verified, then held longest, then arrived first. */
const trustOrder = (a: Held, b: Held) =>
  Number(b.verified) - Number(a.verified) || a.firstSeen - b.firstSeen || a.seq - b.seq;

/**
 * The newest valid announcement per (group, node), in memory. Expired
 * records are dropped as they are met and by {@linkcode AnnouncementStore.prune}.
 *
 * Like a Kademlia bucket, the store prefers long-lived contacts that
 * answered us over newcomers, so a crowd of fresh keys cannot push members
 * out. A record is *verified* when its node answered a request of ours at
 * the record's address ({@linkcode AnnouncementStore.verify}). A group that
 * is full takes a newcomer only in place of an expired record or of the
 * youngest unverified one; verified records are never evicted, and when
 * every record is verified the newcomer is refused (`GROUP_FULL`). Records
 * announced from one remote network address are capped per group
 * (`ADDR_FULL`). {@linkcode AnnouncementStore.ranked} lists verified and
 * long-lived records first.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { announce, AnnouncementStore, generateKeyPair } from "./records.ts";
 * const { publicKey, privateKey } = await generateKeyPair();
 * const group = new Uint8Array(32).fill(7);
 * const r = await announce({ group, nodeKey: publicKey, addr: "ws://a", root: new Uint8Array(32), count: 3 }, privateKey, 0);
 * const store = new AnnouncementStore();
 * assert((await store.put(r, 0, { sender: publicKey, remote: "10.0.0.1" })).ok);
 * assert(store.get(group, 1).length === 1);
 * store.verify(publicKey, "ws://a");
 * assert(store.info(group, publicKey)?.verified);
 * ```
 */
export class AnnouncementStore {
  /** Live records per group at most. */
  readonly perGroupMax: number;
  /** Groups at most. */
  readonly groupsMax: number;
  /** Records per group announced from one remote address at most. */
  readonly perAddrMax: number;
  #groups = new Map<string, Map<string, Held>>();
  /** Node key (hex) → the address it answered us at, least recently verified first. */
  #verified = new Map<string, string>();
  #size = 0;
  #seq = 0;

  /** An empty store. */
  constructor(options: StoreOptions = {}) {
    this.perGroupMax = options.perGroupMax ?? RECORDS_PER_GROUP_MAX;
    this.groupsMax = options.groupsMax ?? RECORD_GROUPS_MAX;
    this.perAddrMax = options.perAddrMax ?? LIMITS.dht_records_per_addr_max;
    for (
      const [name, v] of [
        ["perGroupMax", this.perGroupMax],
        ["groupsMax", this.groupsMax],
        ["perAddrMax", this.perAddrMax],
      ] as const
    ) {
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
   * Keep `r` if it is valid at `now`, newer than the node's record held for
   * the group, and there is room (see the class doc). `sender`, if given,
   * must be `r.nodeKey`.
   */
  async put(r: AnnounceRecord, now: number, options: PutOptions = {}): Promise<PutResult> {
    const remote = options.remote === undefined ? "" : remoteBucket(options.remote);
    const early = cheapCheck(r, now, options) ?? this.#admit(r, now, remote).code;
    if (early) return { ok: false, code: early };
    if (!(await verifyRecord(r))) return { ok: false, code: "BAD_SIGNATURE" };
    // The store may have changed while the signature was checked.
    const late = this.#admit(r, now, remote);
    if (late.code) return { ok: false, code: late.code };
    const g = toHex(r.group);
    let recs = this.#groups.get(g);
    if (!recs) {
      recs = new Map();
      this.#groups.set(g, recs);
    }
    if (late.evict !== undefined) {
      recs.delete(late.evict);
      this.#size--;
    }
    const n = toHex(r.nodeKey);
    const held = recs.get(n);
    const replaced = held !== undefined;
    if (!replaced) this.#size++;
    const addr = trimSlash(r.addr);
    const lapsed = !held || held.r.expires <= now;
    recs.set(n, {
      r: {
        group: r.group.slice(),
        nodeKey: r.nodeKey.slice(),
        addr: r.addr,
        root: r.root.slice(),
        count: r.count,
        ts: r.ts,
        expires: r.expires,
        sig: r.sig.slice(),
      },
      firstSeen: lapsed ? now : held.firstSeen,
      verified: options.verified === true || this.#verified.get(n) === addr ||
        (!lapsed && held.verified && trimSlash(held.r.addr) === addr),
      remote: remote || (held?.remote ?? ""),
      seq: ++this.#seq,
    });
    return { ok: true, replaced };
  }

  /**
   * The node `nodeKey` answered a request of ours at `addr` (it proved its
   * key there): its records with that address, held now or later, are
   * verified. The store remembers the last {@linkcode VERIFIED_NODES_MAX} nodes.
   */
  verify(nodeKey: Uint8Array, addr: string): void {
    const n = toHex(nodeKey), a = trimSlash(addr);
    this.#verified.delete(n);
    if (this.#verified.size >= VERIFIED_NODES_MAX) this.#verified.delete(this.#verified.keys().next().value!);
    this.#verified.set(n, a);
    for (const recs of this.#groups.values()) {
      const h = recs.get(n);
      if (h && trimSlash(h.r.addr) === a) h.verified = true;
    }
  }

  /** The live records of a group at `now`, newest first. */
  get(group: Uint8Array, now: number): AnnounceRecord[] {
    return this.#live(group, now).sort((a, b) => b.r.ts - a.r.ts).map((h) => ({ ...h.r }));
  }

  /** The live records of a group at `now`, verified first, then those held longest. */
  ranked(group: Uint8Array, now: number): AnnounceRecord[] {
    return this.#live(group, now).sort(trustOrder).map((h) => ({ ...h.r }));
  }

  /** The live record of one node in a group at `now`, if held. */
  getOne(group: Uint8Array, nodeKey: Uint8Array, now: number): AnnounceRecord | undefined {
    const h = this.#groups.get(toHex(group))?.get(toHex(nodeKey));
    return h && h.r.expires > now ? { ...h.r } : undefined;
  }

  /** What the store knows of a node's record in a group, if it holds one. */
  info(group: Uint8Array, nodeKey: Uint8Array): HeldInfo | undefined {
    const h = this.#groups.get(toHex(group))?.get(toHex(nodeKey));
    return h && { firstSeen: h.firstSeen, verified: h.verified, remote: h.remote };
  }

  /** Drop every record expired at `now`; returns how many were dropped. */
  prune(now: number): number {
    const before = this.#size;
    for (const [g, recs] of this.#groups) this.#pruneGroup(g, recs, now);
    return before - this.#size;
  }

  #live(group: Uint8Array, now: number): Held[] {
    const g = toHex(group);
    const recs = this.#groups.get(g);
    if (!recs) return [];
    this.#pruneGroup(g, recs, now);
    return [...recs.values()];
  }

  /**
   * Whether the store has room for `r` announced from `remote` and holds
   * nothing newer from its node; `evict` names the record `r` would replace.
   */
  #admit(r: AnnounceRecord, now: number, remote: string): { code?: RecordCode; evict?: string } {
    const g = toHex(r.group);
    const recs = this.#groups.get(g);
    if (!recs) {
      if (this.#groups.size < this.groupsMax) return {};
      this.prune(now);
      return this.#groups.size < this.groupsMax ? {} : { code: "TOO_MANY_GROUPS" };
    }
    const n = toHex(r.nodeKey);
    const held = recs.get(n);
    if (held && held.r.expires > now && held.r.ts >= r.ts) return { code: "STALE" };
    if (remote) {
      let from = 0;
      for (const [k, h] of recs) if (k !== n && h.remote === remote && h.r.expires > now) from++;
      if (from >= this.perAddrMax) return { code: "ADDR_FULL" };
    }
    if (held || recs.size < this.perGroupMax) return {};
    this.#pruneGroup(g, recs, now);
    if (recs.size < this.perGroupMax) return {};
    // Full of live records: the youngest unverified one makes room; verified ones never do.
    let victim: [string, Held] | undefined;
    for (const e of recs) if (!e[1].verified && (!victim || trustOrder(e[1], victim[1]) > 0)) victim = e;
    return victim ? { evict: victim[0] } : { code: "GROUP_FULL" };
  }

  #pruneGroup(g: string, recs: Map<string, Held>, now: number): void {
    for (const [n, h] of recs) {
      if (h.r.expires <= now) {
        recs.delete(n);
        this.#size--;
      }
    }
    if (recs.size === 0) this.#groups.delete(g);
  }
}
