/**
 * Event format v1: build, sign, encode, decode, verify, id.
 *
 * An event is the deterministic CBOR array
 * `[1, group, author, ts, kind, tags, payload, sig]`; its id is SHA-256 of
 * its bytes exactly as stored and sent. {@linkcode decodeEvent} refuses any
 * byte string that is not the one deterministic encoding of its value, so one
 * logical event has exactly one id.
 *
 * Group manifests (kind 0) and the group id rule live here too:
 * `gid = SHA-256(cbor(["xf-group", owner, nonce]))`.
 *
 * @module
 */

import { bytesEqual, toHex } from "../core/bytes.ts";
import { sha256 } from "@noble/hashes/sha2";
import { CborReader, encodeCbor } from "./cbor.ts";
import { type KeyPair, sign, verify } from "./ed25519.ts";
import { XfError } from "../core/errors.ts";
import { LIMITS } from "../core/limits.ts";

/** The event format version, the first element of every event. */
export const EVENT_VERSION = 1;
/** Kind of a group manifest. */
export const KIND_MANIFEST = 0;
/** Kind of a membership change. */
export const KIND_MEMBERSHIP = 1;
/** Kind of a tombstone (storage/deletion.ts). */
export const KIND_TOMBSTONE = 2;
/** Kind of a group settings event (retention). */
export const KIND_SETTINGS = 3;
/** Kinds below this are reserved for the engine. */
export const APP_KIND_MIN = 16;
/** Group policy: anyone may read and write. */
export const POLICY_OPEN = 0;
/** Group policy: only members may read and write. */
export const POLICY_CLOSED = 1;
/** Length of a group manifest nonce. */
export const NONCE_BYTES = 16;

/** A tag: a `[name, value]` pair of strings. */
export type Tag = [string, string];

/** An event before it is signed. */
export interface UnsignedEvent {
  group: Uint8Array;
  author: Uint8Array;
  ts: number;
  kind: number;
  tags: Tag[];
  payload: Uint8Array;
}

/** A signed event. */
export interface Event extends UnsignedEvent {
  sig: Uint8Array;
}

/** An event with its bytes and id, as it travels through the pipeline. */
export interface StoredEvent extends Event {
  id: Uint8Array;
  bytes: Uint8Array;
  /** The signed bytes, when the event was decoded from its encoding. */
  signed?: Uint8Array;
}

/** The limits the decoder checks (a subset of {@linkcode LIMITS}). */
export interface EventLimits {
  event_bytes_max: number;
  event_tags_max: number;
  tag_bytes_max: number;
}

/** The bytes an author signs: the first seven elements as a 7-element array. */
export function signingBytes(e: UnsignedEvent): Uint8Array {
  return encodeCbor([EVENT_VERSION, e.group, e.author, e.ts, e.kind, e.tags, e.payload]);
}

/** The deterministic CBOR of a signed event. */
export function encodeEvent(e: Event): Uint8Array {
  return encodeCbor([EVENT_VERSION, e.group, e.author, e.ts, e.kind, e.tags, e.payload, e.sig]);
}

/** Event id: SHA-256 of the event's bytes. */
export function eventId(bytes: Uint8Array): Uint8Array {
  return sha256(bytes);
}

/**
 * Sign an event with the author's key pair (the author field is set from it).
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { generateKeyPair } from "./ed25519.ts";
 * import { signEvent, verifyEvent } from "./event.ts";
 * const kp = await generateKeyPair();
 * const e = await signEvent(kp, { group: new Uint8Array(32), ts: 1, kind: 16, tags: [], payload: new Uint8Array() });
 * assert(await verifyEvent(e));
 * ```
 */
export async function signEvent(key: KeyPair, e: Omit<UnsignedEvent, "author">): Promise<StoredEvent> {
  const unsigned: UnsignedEvent = { ...e, author: key.publicKey };
  const sig = await sign(key, signingBytes(unsigned));
  const bytes = encodeEvent({ ...unsigned, sig });
  return { ...unsigned, sig, bytes, id: eventId(bytes) };
}

/** True when the event's signature is valid for its author. */
export function verifyEvent(e: Event & { signed?: Uint8Array }): Promise<boolean> {
  return verify(e.author, e.sig, e.signed ?? signingBytes(e));
}

function bad(message: string): never {
  throw new XfError("BAD_EVENT", message);
}

/**
 * Decode event bytes strictly: deterministic CBOR, the v1 shape, the field
 * types and the size limits. The signature is not checked here.
 *
 * Throws {@linkcode XfError} with code `EMPTY_BODY`, `BAD_CBOR`,
 * `NOT_DETERMINISTIC`, `BAD_EVENT` or `EVENT_TOO_LARGE`. Pass `id` when the
 * caller already hashed the bytes.
 */
export function decodeEvent(bytes: Uint8Array, limits: EventLimits = LIMITS, id?: Uint8Array): StoredEvent {
  if (bytes.length === 0) throw new XfError("EMPTY_BODY", "Cannot decode event: no bytes");
  if (bytes.length > limits.event_bytes_max) {
    throw new XfError(
      "EVENT_TOO_LARGE",
      `Cannot accept event of ${bytes.length} bytes: the limit is ${limits.event_bytes_max}`,
    );
  }
  const r = new CborReader(bytes);
  if (r.peekMajor() !== 4) bad("Cannot decode event: not a CBOR array");
  const n = r.array();
  if (n !== 8) bad(`Cannot decode event: array of ${n} elements, expected 8`);
  if (r.peekMajor() !== 0) bad("Cannot decode event: version is not an unsigned integer");
  const version = r.uint();
  if (version !== EVENT_VERSION) bad(`Cannot decode event: version "${version}" is not 1`);
  const group = field(r, 2, "group", 32);
  const author = field(r, 2, "author", 32);
  const ts = field(r, 0, "ts");
  const kind = field(r, 0, "kind");
  if (r.peekMajor() !== 4) bad("Cannot decode event: tags is not an array");
  const nTags = r.array();
  if (nTags > limits.event_tags_max) bad(`Cannot decode event: ${nTags} tags, the limit is ${limits.event_tags_max}`);
  const tags: Tag[] = [];
  for (let i = 0; i < nTags; i++) {
    if (r.peekMajor() !== 4 || r.array() !== 2) bad(`Cannot decode event: tag ${i} is not a 2-element array`);
    const pair: string[] = [];
    for (let j = 0; j < 2; j++) {
      if (r.peekMajor() !== 3) bad(`Cannot decode event: tag ${i} element ${j} is not a text string`);
      const start = r.pos;
      const s = r.text();
      const span = r.pos - start;
      const len = span - (span <= 24 ? 1 : span <= 256 + 1 ? 2 : span <= 65536 + 2 ? 3 : 5);
      if (len > limits.tag_bytes_max) {
        bad(`Cannot decode event: tag ${i} string of ${len} bytes is over the limit ${limits.tag_bytes_max}`);
      }
      pair.push(s);
    }
    tags.push(pair as Tag);
  }
  const payload = field(r, 2, "payload");
  const sigStart = r.pos;
  const sig = field(r, 2, "sig", 64);
  if (!r.done()) throw new XfError("BAD_CBOR", `Cannot decode event: ${bytes.length - r.pos} bytes after the array`);
  // The bytes are deterministic, so the signed 7-element array is the same bytes with a 7-element head.
  const signed = new Uint8Array(sigStart);
  signed.set(bytes.subarray(0, sigStart));
  signed[0] = 0x87;
  return { group, author, ts, kind, tags, payload, sig, bytes, id: id ?? eventId(bytes), signed };
}

function field(r: CborReader, major: 0, name: string): number;
function field(r: CborReader, major: 2, name: string, len?: number): Uint8Array;
function field(r: CborReader, major: 0 | 2, name: string, len?: number): number | Uint8Array {
  const found = r.peekMajor();
  if (found !== major) {
    bad(
      `Cannot decode event: ${name} is major type ${found}, expected ${
        major === 0 ? "an unsigned integer" : "a byte string"
      }`,
    );
  }
  if (major === 0) {
    const h = r.head();
    if (typeof h.arg === "bigint") bad(`Cannot decode event: ${name} "${h.arg}" is over 2^53`);
    return h.arg;
  }
  const b = r.bytes();
  if (len !== undefined && b.length !== len) bad(`Cannot decode event: ${name} is ${b.length} bytes, expected ${len}`);
  return b;
}

/**
 * The `ts` and `kind` of event bytes without decoding them, or null when
 * the bytes do not start like a v1 event. For events already checked by
 * {@linkcode decodeEvent} (actors route them as bytes).
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { encodeEvent, peekEvent } from "./event.ts";
 * const bytes = encodeEvent({
 *   group: new Uint8Array(32), author: new Uint8Array(32), ts: 300, kind: 17, tags: [],
 *   payload: new Uint8Array(), sig: new Uint8Array(64),
 * });
 * assert(peekEvent(bytes)?.ts === 300 && peekEvent(bytes)?.kind === 17);
 * ```
 */
export function peekEvent(bytes: Uint8Array): { ts: number; kind: number } | null {
  // [0x88, 0x01, 0x58 0x20 group(32), 0x58 0x20 author(32), ts, kind, ...]
  if (bytes[0] !== 0x88 || bytes[1] !== 1 || bytes[2] !== 0x58 || bytes[3] !== 0x20) return null;
  if (bytes[36] !== 0x58 || bytes[37] !== 0x20) return null;
  let p = 70;
  const uint = (): number => {
    const b = bytes[p++];
    if (b === undefined || b >> 5 !== 0) return -1;
    const info = b & 0x1f;
    if (info < 24) return info;
    const size = info === 24 ? 1 : info === 25 ? 2 : info === 26 ? 4 : info === 27 ? 8 : 0;
    if (!size || p + size > bytes.length) return -1;
    let v = 0;
    for (let i = 0; i < size; i++) v = v * 256 + bytes[p++]!;
    return v;
  };
  const ts = uint();
  const kind = uint();
  return ts < 0 || kind < 0 ? null : { ts, kind };
}

/** A group manifest's payload. */
export interface Manifest {
  nonce: Uint8Array;
  name: string;
  policy: number;
}

/** Encode a manifest payload: `[nonce, name, policy]`. */
export function encodeManifest(m: Manifest): Uint8Array {
  return encodeCbor([m.nonce, m.name, m.policy]);
}

/** Decode and check a manifest payload; throws `BAD_MANIFEST`. */
export function decodeManifest(payload: Uint8Array): Manifest {
  try {
    const r = new CborReader(payload);
    if (r.array() !== 3) throw new Error("not a 3-element array");
    const nonce = r.bytes().slice();
    if (nonce.length !== NONCE_BYTES) throw new Error(`nonce is ${nonce.length} bytes, expected ${NONCE_BYTES}`);
    const name = r.text();
    const policy = r.uint();
    if (policy !== POLICY_OPEN && policy !== POLICY_CLOSED) throw new Error(`policy "${policy}" is not 0 or 1`);
    if (!r.done()) throw new Error("bytes after the array");
    return { nonce, name, policy };
  } catch (e) {
    throw new XfError("BAD_MANIFEST", `Cannot decode group manifest: ${(e as Error).message}`);
  }
}

/** The group id for an owner and nonce: SHA-256 of `cbor(["xf-group", owner, nonce])`. */
export function groupIdOf(owner: Uint8Array, nonce: Uint8Array): Uint8Array {
  return sha256(encodeCbor(["xf-group", owner, nonce]));
}

/**
 * Make and sign a new group's manifest; the group id is derived from it.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { generateKeyPair } from "./ed25519.ts";
 * import { createGroup } from "./event.ts";
 * const owner = await generateKeyPair();
 * const { gid, manifest } = await createGroup(owner, { name: "friends", policy: 0 });
 * assert(gid.length === 32 && manifest.kind === 0);
 * ```
 */
export async function createGroup(
  owner: KeyPair,
  options: { name: string; policy: number; ts?: number; nonce?: Uint8Array },
): Promise<{ gid: Uint8Array; manifest: StoredEvent }> {
  const nonce = options.nonce ?? crypto.getRandomValues(new Uint8Array(NONCE_BYTES));
  const gid = groupIdOf(owner.publicKey, nonce);
  const payload = encodeManifest({ nonce, name: options.name, policy: options.policy });
  const manifest = await signEvent(owner, {
    group: gid,
    ts: options.ts ?? Date.now(),
    kind: KIND_MANIFEST,
    tags: [],
    payload,
  });
  return { gid, manifest };
}

/** Check a decoded manifest event: its group id must follow from author and nonce. */
export function checkManifestEvent(e: Event): Manifest {
  const m = decodeManifest(e.payload);
  const gid = groupIdOf(e.author, m.nonce);
  if (!bytesEqual(gid, e.group)) {
    throw new XfError("BAD_MANIFEST", "Cannot accept group manifest: group id does not follow from owner and nonce");
  }
  return m;
}

/**
 * The JSON view of an event, for people: hex ids, keys, payload and signature (the query route and SSE records).
 *
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { eventJson, signEvent } from "./event.ts";
 * import { generateKeyPair } from "./ed25519.ts";
 * const e = await signEvent(await generateKeyPair(), {
 *   group: new Uint8Array(32), ts: 1, kind: 16, tags: [], payload: new Uint8Array([0xab]),
 * });
 * assertEquals(eventJson(e.bytes).payload, "ab");
 * ```
 */
export function eventJson(bytes: Uint8Array) {
  const e = decodeEvent(bytes, { event_bytes_max: bytes.length, event_tags_max: 1 << 16, tag_bytes_max: 1 << 16 });
  return {
    id: toHex(e.id),
    group: toHex(e.group),
    author: toHex(e.author),
    ts: e.ts,
    kind: e.kind,
    tags: e.tags,
    payload: toHex(e.payload),
    sig: toHex(e.sig),
  };
}
