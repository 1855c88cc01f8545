/**
 * Events as the client hands them out: exact bytes, id, cursor, and the
 * fields (keys and ids as hex, payload as bytes). Encoding, decoding and
 * signing are the node's (`storage/event.ts`).
 *
 * @module
 */

import { fromHex, toHex } from "../core/bytes.ts";
import {
  decodeEvent,
  encodeEvent,
  eventId,
  KIND_SETTINGS,
  KIND_TOMBSTONE,
  signEvent as signStoredEvent,
  type StoredEvent,
  type Tag,
  verifyEvent,
} from "../storage/event.ts";
import { encodeTombstone } from "../storage/deletion.ts";
import { encodeSettings, type Settings } from "../storage/retention.ts";
import { type KeyPair } from "../storage/ed25519.ts";
import { XfClientError } from "./errors.ts";

export type { Tag };

/** A signed event as the client returns it. */
export interface ClientEvent {
  /** SHA-256 of `bytes`, hex. */
  id: string;
  /** Group id, hex. */
  group: string;
  /** Author's public key, hex. */
  author: string;
  /** Milliseconds since the Unix epoch. */
  ts: number;
  kind: number;
  tags: Tag[];
  payload: Uint8Array;
  /** Ed25519 signature, hex. */
  sig: string;
  /** The exact bytes (deterministic CBOR), as stored and sent. */
  bytes: Uint8Array;
  /**
   * The resume cursor after this event: the node's own (SSE `id:`) when it gave one, else 16 hex of `ts`
   * then the id (the query route's cursor).
   */
  cursor: string;
}

/** What {@linkcode signEvent} and the client's `sign` need: the author comes from the key. */
export interface EventDraft {
  kind: number;
  payload: Uint8Array;
  tags?: Tag[];
  /** Default: now. */
  ts?: number;
}

/** The JSON view of an event (hex strings), as the node's JSON routes and SSE send it. */
export interface EventJson {
  id: string;
  group: string;
  author: string;
  ts: number;
  kind: number;
  tags: Tag[];
  payload: string;
  sig: string;
}

/** Decoder bounds for events read from a node: the node already enforced its own limits. */
const READ_LIMITS = { event_bytes_max: 1 << 24, event_tags_max: 1 << 16, tag_bytes_max: 1 << 16 };

/**
 * The cursor of an event: 16 hex digits of `ts` as u64 big-endian, then its 64-hex id.
 *
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { eventCursor } from "./event.ts";
 * assertEquals(eventCursor(255, "ab".repeat(32)), "00000000000000ff" + "ab".repeat(32));
 * ```
 */
export function eventCursor(ts: number, id: string): string {
  return ts.toString(16).padStart(16, "0") + id;
}

function view(e: StoredEvent): ClientEvent {
  const id = toHex(e.id);
  return {
    id,
    group: toHex(e.group),
    author: toHex(e.author),
    ts: e.ts,
    kind: e.kind,
    tags: e.tags,
    payload: e.payload,
    sig: toHex(e.sig),
    bytes: e.bytes,
    cursor: eventCursor(e.ts, id),
  };
}

/**
 * Read an event from its exact bytes (strict deterministic CBOR, v1 shape);
 * the id is computed here. With `verify`, the signature is checked too.
 * Throws {@linkcode XfClientError} `BAD_RESPONSE`.
 *
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { generateKeyPair } from "./keys.ts";
 * import { readEvent, signEvent } from "./event.ts";
 * const me = await generateKeyPair();
 * const e = await signEvent(me, new Uint8Array(32), { kind: 16, payload: new Uint8Array([1]) });
 * assertEquals((await readEvent(e.bytes, { verify: true })).id, e.id);
 * ```
 */
export async function readEvent(
  bytes: Uint8Array,
  options: { verify?: boolean; group?: string } = {},
): Promise<ClientEvent> {
  let e: StoredEvent;
  try {
    e = decodeEvent(bytes, READ_LIMITS);
  } catch (err) {
    throw new XfClientError("BAD_RESPONSE", `Cannot read event: ${(err as Error).message}`, 0, { cause: err });
  }
  const ev = view(e);
  if (options.group !== undefined && ev.group !== options.group) {
    throw new XfClientError("BAD_RESPONSE", `Cannot accept event "${ev.id}": it is of group "${ev.group}"`);
  }
  if (options.verify && !(await verifyEvent(e))) {
    throw new XfClientError("BAD_RESPONSE", `Cannot accept event "${ev.id}": its signature does not verify`);
  }
  return ev;
}

/**
 * Read an event whose id a trusted checker already computed (a replica's Worker hashed and verified it): decoded
 * here, not hashed again. Throws {@linkcode XfClientError} `BAD_RESPONSE`.
 */
export function readCheckedEvent(bytes: Uint8Array, id: Uint8Array, options: { group?: string } = {}): ClientEvent {
  let e: StoredEvent;
  try {
    e = decodeEvent(bytes, READ_LIMITS, id);
  } catch (err) {
    throw new XfClientError("BAD_RESPONSE", `Cannot read event: ${(err as Error).message}`, 0, { cause: err });
  }
  const ev = view(e);
  if (options.group !== undefined && ev.group !== options.group) {
    throw new XfClientError("BAD_RESPONSE", `Cannot accept event "${ev.id}": it is of group "${ev.group}"`);
  }
  return ev;
}

/**
 * Rebuild an event's exact bytes from its JSON view (the encoding is
 * deterministic, so it is one), checking that they hash to its `id`.
 */
export function eventFromJson(j: EventJson, options: { verify?: boolean; group?: string } = {}): Promise<ClientEvent> {
  const b = (s: unknown, n?: number) => {
    const v = typeof s === "string" ? fromHex(s) : null;
    if (!v || (n !== undefined && v.length !== n)) throw new XfClientError("BAD_RESPONSE", "Cannot read event JSON");
    return v;
  };
  if (typeof j !== "object" || j === null || !Number.isSafeInteger(j.ts) || !Number.isSafeInteger(j.kind)) {
    throw new XfClientError("BAD_RESPONSE", "Cannot read event JSON: not an event view");
  }
  const bytes = encodeEvent({
    group: b(j.group, 32),
    author: b(j.author, 32),
    ts: j.ts,
    kind: j.kind,
    tags: j.tags,
    payload: b(j.payload),
    sig: b(j.sig, 64),
  });
  if (toHex(eventId(bytes)) !== j.id) {
    throw new XfClientError("BAD_RESPONSE", `Cannot accept event "${j.id}": its fields do not hash to its id`);
  }
  return readEvent(bytes, options);
}

/**
 * Sign an event of group `gid` with `key` (the author).
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { generateKeyPair } from "./keys.ts";
 * import { textPayload } from "./payload.ts";
 * import { signEvent } from "./event.ts";
 * const me = await generateKeyPair();
 * const e = await signEvent(me, "00".repeat(32), { kind: 16, payload: textPayload("hi") });
 * assert(e.id.length === 64 && e.bytes.length > 100);
 * ```
 */
export async function signEvent(key: KeyPair, gid: string | Uint8Array, draft: EventDraft): Promise<ClientEvent> {
  const e = await signStoredEvent(key, {
    group: groupBytes(gid),
    ts: draft.ts ?? Date.now(),
    kind: draft.kind,
    tags: draft.tags ?? [],
    payload: draft.payload,
  });
  return view(e);
}

/** A view of an event the node's own functions made (`storage/event.ts`). */
export function fromStored(e: StoredEvent): ClientEvent {
  return view(e);
}

/** A group id as 32 bytes; throws `TypeError` for anything else. */
export function groupBytes(gid: string | Uint8Array): Uint8Array {
  const b = typeof gid === "string" ? (/^[0-9a-f]{64}$/.test(gid) ? fromHex(gid) : null) : gid;
  if (!b || b.length !== 32) {
    throw new TypeError(`Cannot use group id "${String(gid).slice(0, 80)}": expected 64 hex digits`);
  }
  return b;
}

/** A group id as 64 lower-case hex digits. */
export function groupHex(gid: string | Uint8Array): string {
  return toHex(groupBytes(gid));
}

/**
 * The draft of a tombstone (kind 2) naming `ids` (1 to 256, hex or bytes), for `XfClient.delete` and
 * `Replica.delete`. Throws `TypeError` for an id that is not 32 bytes, `XfError` `BAD_EVENT` for no id, too many or
 * one named twice.
 */
export function tombstoneDraft(ids: readonly (string | Uint8Array)[], ts?: number): EventDraft {
  const targets = ids.map((id) => {
    const b = typeof id === "string" ? fromHex(id) : id;
    if (!b || b.length !== 32) {
      throw new TypeError(`Cannot delete event "${String(id).slice(0, 80)}": not 64 hex digits`);
    }
    return b;
  });
  return { kind: KIND_TOMBSTONE, payload: encodeTombstone(targets), ...(ts !== undefined ? { ts } : {}) };
}

/** The draft of a settings event (kind 3), for `XfClient.setRetention` and `Replica.setRetention`. */
export function settingsDraft(settings: Settings, ts?: number): EventDraft {
  return { kind: KIND_SETTINGS, payload: encodeSettings(settings), ...(ts !== undefined ? { ts } : {}) };
}
