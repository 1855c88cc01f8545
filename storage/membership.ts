/**
 * Group membership state: a pure, synchronous fold over a group's membership
 * events (kind 1, `KIND_MEMBERSHIP` in `event.ts`).
 *
 * A membership event's payload is the deterministic CBOR of
 * `[action: uint, member: bstr(32)]`, with actions {@linkcode ACTION_ADD},
 * {@linkcode ACTION_REMOVE}, {@linkcode ACTION_MAKE_ADMIN} and
 * {@linkcode ACTION_REVOKE_ADMIN}. The state is the result of these events in
 * `(ts, id)` order (ts first, then id bytes lexicographically). Each event is
 * judged against the state just before it in that order.
 *
 * Rules (the choices SPEC leaves open):
 * - The owner is always a member and an admin, at every ts. An event that
 *   removes the owner or revokes the owner's admin right is refused by
 *   {@linkcode GroupState.judgeMembership} and has no effect in the fold;
 *   adding the owner or making the owner admin is accepted and changes
 *   nothing.
 * - Only the owner or an admin (as of the state just before the event) may
 *   sign a membership event. An event from anyone else is refused by
 *   `judgeMembership()` and, should it arrive anyway (sync from a peer that
 *   judged it against an older view), it has no effect in the fold.
 * - Admins can act on any key but the owner, including other admins and
 *   themselves.
 * - An admin is always a member: making a non-member admin also adds them;
 *   removing a member also revokes their admin right; revoking admin keeps
 *   the key a member.
 * - Events that change nothing (add a member, revoke a non-admin) are valid
 *   and have no effect.
 * - "Member at ts" means after every membership event with that ts or an
 *   earlier one: a key added at ts 100 may write at ts 100; a key removed at
 *   ts 100 may not.
 *
 * Events may arrive in any order (sync delivers them so): an admin's event
 * can arrive before the event that made them admin. {@linkcode GroupState}
 * keeps its log sorted and refolds from the first position an arrival
 * changed, so the state depends only on the set of events held.
 *
 * @module
 */

import { fromHex, toHex } from "../core/bytes.ts";
import { CborReader, encodeCbor } from "./cbor.ts";
import { XfError } from "../core/errors.ts";
import { KIND_MEMBERSHIP, POLICY_CLOSED, POLICY_OPEN } from "./event.ts";
import { MEMBERSHIP_EVENTS_MAX } from "../core/limits.ts";

/** Membership action: add a member. */
export const ACTION_ADD = 0;
/** Membership action: remove a member (this also revokes their admin right). */
export const ACTION_REMOVE = 1;
/** Membership action: make a key admin (this also makes it a member). */
export const ACTION_MAKE_ADMIN = 2;
/** Membership action: revoke a key's admin right (it stays a member). */
export const ACTION_REVOKE_ADMIN = 3;

const KEY_BYTES = 32;
const ID_BYTES = 32;

/** A membership action: 0 add, 1 remove, 2 make admin, 3 revoke admin. */
export type MembershipAction =
  | typeof ACTION_ADD
  | typeof ACTION_REMOVE
  | typeof ACTION_MAKE_ADMIN
  | typeof ACTION_REVOKE_ADMIN;

/** The decoded payload of a membership event. */
export interface Membership {
  /** What to do. */
  action: MembershipAction;
  /** The 32-byte public key it is done to. */
  member: Uint8Array;
}

/**
 * The fields of a membership event that membership state needs; a
 * `StoredEvent` fits. The caller has already checked the event's
 * signature, group and kind.
 */
export interface MembershipEvent {
  /** Milliseconds since the Unix epoch. */
  ts: number;
  /** The 32-byte event id. */
  id: Uint8Array;
  /** The 32-byte public key that signed the event. */
  author: Uint8Array;
  /** The deterministic CBOR of `[action, member]`. */
  payload: Uint8Array;
}

/** The verdict of {@linkcode GroupState.judgeMembership}. */
export type MembershipJudgement =
  | { ok: true }
  | { ok: false; code: "BAD_EVENT" | "FORBIDDEN"; message: string };

/** Options of a {@linkcode GroupState}. */
export interface GroupStateOptions {
  /** Most membership events held; default {@linkcode MEMBERSHIP_EVENTS_MAX}. */
  eventsMax?: number;
}

/** The persisted form of a {@linkcode GroupState} (plain JSON data). */
export interface GroupStateJSON {
  /** Format version, 1. */
  v: 1;
  /** The owner's public key, hex. */
  owner: string;
  /** {@linkcode POLICY_OPEN} or {@linkcode POLICY_CLOSED}. */
  policy: number;
  /** Every membership event held, in `(ts, id)` order. */
  events: Array<{ ts: number; id: string; author: string; action: MembershipAction; member: string }>;
}

function badPayload(what: string, cause?: unknown): never {
  throw new XfError(
    "BAD_EVENT",
    `Cannot decode membership payload: ${what}`,
    cause === undefined ? undefined : { cause },
  );
}

function isAction(a: unknown): a is MembershipAction {
  return a === ACTION_ADD || a === ACTION_REMOVE || a === ACTION_MAKE_ADMIN || a === ACTION_REVOKE_ADMIN;
}

/**
 * Encode a membership payload: the deterministic CBOR of `[action, member]`.
 * Throws {@linkcode XfError} `BAD_EVENT` when the action is not 0..3 or the
 * member is not 32 bytes.
 *
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { ACTION_ADD, decodeMembership, encodeMembership } from "./membership.ts";
 * const payload = encodeMembership({ action: ACTION_ADD, member: new Uint8Array(32) });
 * assertEquals(decodeMembership(payload).action, ACTION_ADD);
 * ```
 */
export function encodeMembership(m: Membership): Uint8Array {
  if (!isAction(m.action)) {
    throw new XfError("BAD_EVENT", `Cannot encode membership payload: action "${m.action}" is not 0, 1, 2 or 3`);
  }
  if (!(m.member instanceof Uint8Array) || m.member.length !== KEY_BYTES) {
    throw new XfError(
      "BAD_EVENT",
      `Cannot encode membership payload: member is ${m.member?.length ?? "not"} bytes, expected ${KEY_BYTES}`,
    );
  }
  return encodeCbor([m.action, m.member]);
}

/**
 * Decode a membership payload strictly: a deterministic CBOR array of an
 * action 0..3 and a 32-byte key, and nothing after it. The member is a copy.
 * Throws {@linkcode XfError} `BAD_EVENT` otherwise.
 *
 * @example
 * ```ts
 * import { assertThrows } from "@std/assert";
 * import { decodeMembership } from "./membership.ts";
 * // [4, h''] : action 4 does not exist, and the member is not 32 bytes
 * assertThrows(() => decodeMembership(new Uint8Array([0x82, 0x04, 0x40])), Error, "action \"4\"");
 * ```
 */
export function decodeMembership(payload: Uint8Array): Membership {
  const m = readMembership(payload);
  return { action: m.action, member: m.member.slice() };
}

/** The length of the one deterministic encoding: array head, action (< 24), bstr head (2), 32 bytes. */
const PAYLOAD_BYTES = 1 + 1 + 2 + KEY_BYTES;

/** {@linkcode decodeMembership} without the copy: `member` is a view into `payload`. */
function readMembership(payload: Uint8Array): Membership {
  if (!(payload instanceof Uint8Array) || payload.length === 0) badPayload("no bytes");
  let action: number;
  let member: Uint8Array;
  try {
    const r = new CborReader(payload);
    if (r.peekMajor() !== 4) badPayload("not a CBOR array");
    const n = r.array();
    if (n !== 2) badPayload(`array of ${n} elements, expected 2`);
    if (r.peekMajor() !== 0) badPayload("action is not an unsigned integer");
    action = r.uint();
    if (r.peekMajor() !== 2) badPayload("member is not a byte string");
    member = r.bytes();
    if (!r.done()) badPayload(`${payload.length - r.pos} bytes after the array`);
  } catch (e) {
    if (e instanceof XfError && e.code === "BAD_EVENT") throw e;
    badPayload((e as Error).message.replace(/^Cannot decode CBOR /, ""), e);
  }
  if (!isAction(action)) badPayload(`action "${action}" is not 0, 1, 2 or 3`);
  if (member.length !== KEY_BYTES) badPayload(`member is ${member.length} bytes, expected ${KEY_BYTES}`);
  // The reader already refuses long heads, indefinite lengths and trailing
  // bytes; a valid payload has exactly one encoding, of this length.
  if (payload.length !== PAYLOAD_BYTES) badPayload("not deterministic CBOR");
  return { action, member };
}

/** One membership event in the log, decoded. */
interface Entry {
  ts: number;
  /** Lower-case hex, whose string order is the bytes' lexicographic order. */
  id: string;
  author: string;
  action: MembershipAction;
  member: string;
}

/** One change of one key's status, made by the event `(ts, id)`. */
interface Change {
  ts: number;
  id: string;
  member: boolean;
  admin: boolean;
}

/** `(ts, id)` order; ids are same-length lower-case hex, so string order is byte order. */
function compareAt(aTs: number, aId: string, bTs: number, bId: string): number {
  return aTs !== bTs ? (aTs < bTs ? -1 : 1) : aId < bId ? -1 : aId > bId ? 1 : 0;
}

/** First index in `xs` (sorted by `(ts, id)`) whose `(ts, id)` is not before the given one. */
function lowerBound(xs: ReadonlyArray<{ ts: number; id: string }>, ts: number, id: string): number {
  let lo = 0;
  let hi = xs.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    const x = xs[mid]!;
    if (compareAt(x.ts, x.id, ts, id) < 0) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** First index in `xs` (sorted by ts) whose ts is after `ts`. */
function upperBoundTs(xs: ReadonlyArray<{ ts: number }>, ts: number): number {
  let lo = 0;
  let hi = xs.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (xs[mid]!.ts <= ts) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

const NONE: Readonly<Change> = Object.freeze({ ts: -1, id: "", member: false, admin: false });
const OWNER: Readonly<Change> = Object.freeze({ ts: -1, id: "", member: true, admin: true });

/**
 * The membership state of one group: who is a member and who is an admin,
 * now and at any past ts, folded from the group's membership events.
 *
 * `judgeMembership()` decides whether to accept a membership event on ingest;
 * `apply()` folds events held (in any order, duplicates ignored), and ignores
 * those without effect. `canWrite()` and `canRead()` apply the group's policy.
 * Keys are compared as bytes; lists are lower-case hex.
 *
 * Memory is bounded: at most `eventsMax` events, and at most one timeline
 * change per event. A query at a ts is a binary search in the key's timeline.
 * An event that arrives after events later than it in `(ts, id)` order
 * refolds the events after it, so deliver what sync brings as one batch.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { ACTION_ADD, ACTION_REMOVE, encodeMembership, GroupState } from "./membership.ts";
 * import { POLICY_CLOSED } from "./event.ts";
 *
 * const owner = new Uint8Array(32).fill(1);
 * const alice = new Uint8Array(32).fill(2);
 * const state = new GroupState(owner, POLICY_CLOSED);
 * const add = {
 *   ts: 100,
 *   id: new Uint8Array(32).fill(0xa0),
 *   author: owner,
 *   payload: encodeMembership({ action: ACTION_ADD, member: alice }),
 * };
 * const remove = {
 *   ts: 200,
 *   id: new Uint8Array(32).fill(0xb0),
 *   author: owner,
 *   payload: encodeMembership({ action: ACTION_REMOVE, member: alice }),
 * };
 * assert(state.judgeMembership(add).ok);
 * state.apply([remove, add]); // any order
 * assert(state.canWrite(alice, 150));
 * assert(!state.canWrite(alice, 200)); // removed at 200
 * assert(state.isMember(alice, 199) && !state.isMember(alice));
 * ```
 */
export class GroupState {
  /** The owner's public key. */
  readonly owner: Uint8Array;
  /** {@linkcode POLICY_OPEN} or {@linkcode POLICY_CLOSED}. */
  readonly policy: number;
  /** Most membership events this state holds. */
  readonly eventsMax: number;
  readonly #ownerHex: string;
  /** Every event held, sorted by `(ts, id)`. */
  #log: Entry[] = [];
  #ids = new Set<string>();
  /** Per key (hex): its status changes, sorted by `(ts, id)`; absent = never a member. */
  #timelines = new Map<string, Change[]>();

  /**
   * Empty state for a group, from its manifest's owner and policy. Throws
   * {@linkcode XfError} `BAD_MANIFEST` for an owner that is not 32 bytes or a
   * policy that is not 0 or 1.
   */
  constructor(owner: Uint8Array, policy: number, options: GroupStateOptions = {}) {
    if (!(owner instanceof Uint8Array) || owner.length !== KEY_BYTES) {
      throw new XfError(
        "BAD_MANIFEST",
        `Cannot make group state: owner is ${owner?.length ?? "not"} bytes, expected 32`,
      );
    }
    if (policy !== POLICY_OPEN && policy !== POLICY_CLOSED) {
      throw new XfError("BAD_MANIFEST", `Cannot make group state: policy "${policy}" is not 0 or 1`);
    }
    const max = options.eventsMax ?? MEMBERSHIP_EVENTS_MAX;
    if (!Number.isSafeInteger(max) || max < 0) {
      throw new TypeError(`Cannot make group state: eventsMax "${max}" is not a non-negative integer`);
    }
    this.owner = owner.slice();
    this.#ownerHex = toHex(owner);
    this.policy = policy;
    this.eventsMax = max;
  }

  /** Number of membership events held. */
  get size(): number {
    return this.#log.length;
  }

  /**
   * Fold membership events into the state, in any order; events already held
   * (same id) are skipped. Returns how many were new.
   *
   * The batch is checked first and applied whole or not at all: throws
   * {@linkcode XfError} `BAD_EVENT` for a malformed event or payload, and
   * `OVERLOADED` when the state would hold more than `eventsMax` events.
   * Events from a signer without the right are held but have no effect.
   */
  apply(events: Iterable<MembershipEvent>): number {
    const fresh: Entry[] = [];
    const seen = new Set<string>();
    for (const e of events) {
      const entry = toEntry(e);
      if (this.#ids.has(entry.id) || seen.has(entry.id)) continue;
      seen.add(entry.id);
      fresh.push(entry);
    }
    if (fresh.length === 0) return 0;
    if (this.#log.length + fresh.length > this.eventsMax) {
      throw new XfError(
        "OVERLOADED",
        `Cannot apply ${fresh.length} membership events: the group would hold ${
          this.#log.length + fresh.length
        }, the limit is ${this.eventsMax}`,
      );
    }
    fresh.sort((a, b) => compareAt(a.ts, a.id, b.ts, b.id));
    const log = this.#log;
    const first = fresh[0]!;
    const last = log[log.length - 1];
    let from: number;
    if (last === undefined || compareAt(last.ts, last.id, first.ts, first.id) < 0) {
      from = log.length;
      for (const x of fresh) log.push(x);
    } else {
      from = lowerBound(log, first.ts, first.id);
      const tail = log.splice(from);
      let i = 0;
      let j = 0;
      while (i < tail.length || j < fresh.length) {
        const a = tail[i];
        const b = fresh[j];
        if (b === undefined || (a !== undefined && compareAt(a.ts, a.id, b.ts, b.id) < 0)) {
          log.push(a!);
          i++;
        } else {
          log.push(b);
          j++;
        }
      }
      this.#truncate(first.ts, first.id);
    }
    for (const x of fresh) this.#ids.add(x.id);
    for (let k = from; k < log.length; k++) this.#step(log[k]!);
    return fresh.length;
  }

  /**
   * Judge a membership event for ingest, against the state just before it in
   * `(ts, id)` order: its payload must decode (else `BAD_EVENT`) and its
   * signer must be the owner or an admin, and it must not remove the owner or
   * revoke the owner's admin right (else `FORBIDDEN`). The state is not
   * changed; call {@linkcode GroupState.apply} to hold an accepted event.
   */
  judgeMembership(event: MembershipEvent): MembershipJudgement {
    let m: Membership;
    try {
      m = decodeMembership(event.payload);
    } catch (e) {
      if (e instanceof XfError) return { ok: false, code: "BAD_EVENT", message: e.message };
      throw e;
    }
    const author = toHex(event.author);
    if (author !== this.#ownerHex && !this.#before(author, event.ts, toHex(event.id)).admin) {
      return {
        ok: false,
        code: "FORBIDDEN",
        message: `Cannot apply membership event: signer "${author}" is not the owner or an admin at ts "${event.ts}"`,
      };
    }
    if (toHex(m.member) === this.#ownerHex && (m.action === ACTION_REMOVE || m.action === ACTION_REVOKE_ADMIN)) {
      return {
        ok: false,
        code: "FORBIDDEN",
        message: `Cannot apply membership event: the owner "${this.#ownerHex}" cannot be ${
          m.action === ACTION_REMOVE ? "removed" : "demoted"
        }`,
      };
    }
    return { ok: true };
  }

  /**
   * True when `key` is a member after every membership event with ts at most
   * `atTs` (default: all events held). The owner always is.
   */
  isMember(key: Uint8Array, atTs?: number): boolean {
    return this.#at(key, atTs).member;
  }

  /**
   * True when `key` is an admin after every membership event with ts at most
   * `atTs` (default: all events held). The owner always is.
   */
  isAdmin(key: Uint8Array, atTs?: number): boolean {
    return this.#at(key, atTs).admin;
  }

  /**
   * True when `author` may write an event stamped `ts`: anyone in an open
   * group; in a closed group, a member at `ts` (the owner always).
   */
  canWrite(author: Uint8Array, ts: number): boolean {
    return this.policy === POLICY_OPEN || this.isMember(author, ts);
  }

  /** True when `key` may read, sync or see the group: anyone if open, a current member if closed. */
  canRead(key: Uint8Array): boolean {
    return this.policy === POLICY_OPEN || this.isMember(key);
  }

  /** The current members, owner included, as sorted lower-case hex. */
  members(): string[] {
    return this.#current((c) => c.member);
  }

  /** The current admins, owner included, as sorted lower-case hex. */
  admins(): string[] {
    return this.#current((c) => c.admin);
  }

  /** The persisted form: owner, policy and every event held, in `(ts, id)` order. */
  toJSON(): GroupStateJSON {
    return {
      v: 1,
      owner: this.#ownerHex,
      policy: this.policy,
      events: this.#log.map((e) => ({ ts: e.ts, id: e.id, author: e.author, action: e.action, member: e.member })),
    };
  }

  /**
   * Rebuild a state from {@linkcode GroupState.toJSON}'s output. Throws
   * {@linkcode XfError} `STORAGE_CORRUPTION` when it is malformed.
   */
  static fromJSON(json: GroupStateJSON, options: GroupStateOptions = {}): GroupState {
    const corrupt = (what: string, cause?: unknown): never => {
      throw new XfError(
        "STORAGE_CORRUPTION",
        `Cannot load group state: ${what}`,
        cause === undefined ? undefined : { cause },
      );
    };
    if (typeof json !== "object" || json === null || json.v !== 1) corrupt(`version "${json?.v}" is not 1`);
    if (!Array.isArray(json.events)) corrupt("events is not an array");
    const owner = typeof json.owner === "string" ? fromHex(json.owner) : null;
    if (owner === null) corrupt(`owner "${json.owner}" is not hex`);
    try {
      const state = new GroupState(owner!, json.policy, options);
      const events: MembershipEvent[] = json.events.map((e, i) => {
        const id = typeof e?.id === "string" ? fromHex(e.id) : null;
        const author = typeof e?.author === "string" ? fromHex(e.author) : null;
        const member = typeof e?.member === "string" ? fromHex(e.member) : null;
        if (!id || !author || !member) return corrupt(`event ${i} has a field that is not hex`);
        return { ts: e.ts, id, author, payload: encodeMembership({ action: e.action, member }) };
      });
      state.apply(events);
      return state;
    } catch (e) {
      if (e instanceof XfError && e.code === "STORAGE_CORRUPTION") throw e;
      return corrupt((e as Error).message, e);
    }
  }

  /** Status of `key` (hex) just before the event `(ts, id)`. */
  #before(key: string, ts: number, id: string): Readonly<Change> {
    if (key === this.#ownerHex) return OWNER;
    const tl = this.#timelines.get(key);
    if (!tl) return NONE;
    return tl[lowerBound(tl, ts, id) - 1] ?? NONE;
  }

  /** Status of `key` after every event with ts at most `atTs` (all if undefined). */
  #at(key: Uint8Array, atTs: number | undefined): Readonly<Change> {
    const hex = toHex(key);
    if (hex === this.#ownerHex) return OWNER;
    const tl = this.#timelines.get(hex);
    if (!tl) return NONE;
    if (atTs === undefined) return tl[tl.length - 1] ?? NONE;
    return tl[upperBoundTs(tl, atTs) - 1] ?? NONE;
  }

  #current(pick: (c: Change) => boolean): string[] {
    const out = [this.#ownerHex];
    for (const [key, tl] of this.#timelines) {
      const c = tl[tl.length - 1];
      if (c && pick(c)) out.push(key);
    }
    return out.sort();
  }

  /** Drop every timeline change at or after `(ts, id)`, before refolding from there. */
  #truncate(ts: number, id: string): void {
    for (const [key, tl] of this.#timelines) {
      const last = tl[tl.length - 1]!;
      if (compareAt(last.ts, last.id, ts, id) < 0) continue;
      tl.length = lowerBound(tl, ts, id);
      if (tl.length === 0) this.#timelines.delete(key);
    }
  }

  /** Fold one event onto the current state (the last change of each timeline). */
  #step(e: Entry): void {
    if (e.author !== this.#ownerHex) {
      const signer = this.#timelines.get(e.author);
      if (!signer?.[signer.length - 1]?.admin) return;
    }
    if (e.member === this.#ownerHex) return;
    let tl = this.#timelines.get(e.member);
    const cur = tl?.[tl.length - 1] ?? NONE;
    let member = cur.member;
    let admin = cur.admin;
    switch (e.action) {
      case ACTION_ADD:
        member = true;
        break;
      case ACTION_REMOVE:
        member = admin = false;
        break;
      case ACTION_MAKE_ADMIN:
        member = admin = true;
        break;
      case ACTION_REVOKE_ADMIN:
        admin = false;
        break;
    }
    if (member === cur.member && admin === cur.admin) return;
    if (!tl) this.#timelines.set(e.member, tl = []);
    tl.push({ ts: e.ts, id: e.id, member, admin });
  }
}

/** Check and decode one event for the log; throws `BAD_EVENT`. */
function toEntry(e: MembershipEvent): Entry {
  if (!Number.isSafeInteger(e.ts) || e.ts < 0) {
    throw new XfError("BAD_EVENT", `Cannot apply membership event: ts "${e.ts}" is not a non-negative integer`);
  }
  if (!(e.id instanceof Uint8Array) || e.id.length !== ID_BYTES) {
    throw new XfError("BAD_EVENT", `Cannot apply membership event: id is ${e.id?.length ?? "not"} bytes, expected 32`);
  }
  if (!(e.author instanceof Uint8Array) || e.author.length !== KEY_BYTES) {
    throw new XfError(
      "BAD_EVENT",
      `Cannot apply membership event: author is ${e.author?.length ?? "not"} bytes, expected 32`,
    );
  }
  const m = readMembership(e.payload);
  return { ts: e.ts, id: toHex(e.id), author: toHex(e.author), action: m.action, member: toHex(m.member) };
}

/**
 * The one write-authorization rule, for every event but a manifest: a
 * membership event is judged by {@linkcode GroupState.judgeMembership} and,
 * when accepted, applied to `state` (so later events see it); any other
 * event needs {@linkcode GroupState.canWrite} at its `ts`.
 */
export function authorizeWrite(state: GroupState, ev: MembershipEvent & { kind: number }): MembershipJudgement {
  if (ev.kind === KIND_MEMBERSHIP) {
    const j = state.judgeMembership(ev);
    if (j.ok) state.apply([ev]);
    return j;
  }
  if (state.canWrite(ev.author, ev.ts)) return { ok: true };
  return {
    ok: false,
    code: "FORBIDDEN",
    message: `Cannot accept event: author "${toHex(ev.author)}" is not a member of the group at ts "${ev.ts}"`,
  };
}
