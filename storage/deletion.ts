/**
 * Deletion: the pure rules of tombstones (kind 2, `KIND_TOMBSTONE` in `event.ts`), shared by the decode stage,
 * the index and (later) a browser replica.
 *
 * A tombstone's payload is the deterministic CBOR array of 1 to {@linkcode TOMBSTONE_TARGETS_MAX} target event
 * ids, each a 32-byte byte string, none twice ({@linkcode encodeTombstone}, {@linkcode decodeTombstone}; anything
 * else is `BAD_EVENT`).
 *
 * Rules ({@linkcode mayDelete}):
 * - Only application events (kind ≥ 16) may be deleted. Manifests (0), membership events (1), tombstones (2)
 *   and settings (3) never are, so who may write, read and delete never changes after the fact, and a deletion
 *   cannot be undone by deleting its tombstone.
 * - A target may be deleted by its author, or by the group's owner or an admin as of the tombstone's `ts`.
 * - A target must be an event of the tombstone's own group.
 *
 * A tombstone is judged against every target held where it arrives: one target it may not delete refuses it
 * whole (`FORBIDDEN`). A target not held there cannot be judged yet; it is recorded as pending and judged when it
 * arrives (see the README, "Deleting events", for why every node then ends with the same set).
 *
 * @module
 */

import { bytesEqual, fromHex, toHex } from "../core/bytes.ts";
import { XfError } from "../core/errors.ts";
import { TOMBSTONE_TARGETS_MAX } from "../core/limits.ts";
import { CborReader, encodeCbor } from "./cbor.ts";
import { APP_KIND_MIN, KIND_MANIFEST, KIND_MEMBERSHIP, KIND_SETTINGS, KIND_TOMBSTONE, peekEvent } from "./event.ts";
import type { GroupState } from "./membership.ts";

const ID_BYTES = 32;

/** What a deletion rule needs of a tombstone: its group, signer and `ts`. */
export interface TombstoneSigner {
  group: Uint8Array;
  author: Uint8Array;
  ts: number;
}

/** What a deletion rule needs of a target: its id, group, author and kind (`ts` to forget it). */
export interface TargetInfo {
  id: Uint8Array;
  group: Uint8Array;
  author: Uint8Array;
  kind: number;
  ts: number;
}

/** The verdict of {@linkcode mayDelete}. */
export type DeleteJudgement = { ok: true } | { ok: false; code: "FORBIDDEN"; message: string };

function bad(what: string): never {
  throw new XfError("BAD_EVENT", `Cannot decode tombstone payload: ${what}`);
}

/**
 * Encode a tombstone payload: the deterministic CBOR array of the target ids, in the order given. Throws
 * {@linkcode XfError} `BAD_EVENT` for no target, more than {@linkcode TOMBSTONE_TARGETS_MAX}, an id that is not
 * 32 bytes, or an id named twice.
 *
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { decodeTombstone, encodeTombstone } from "./deletion.ts";
 * const id = new Uint8Array(32).fill(7);
 * assertEquals(decodeTombstone(encodeTombstone([id])), [id]);
 * ```
 */
export function encodeTombstone(targets: readonly Uint8Array[]): Uint8Array {
  checkTargets(targets, "encode");
  return encodeCbor([...targets]);
}

function checkTargets(targets: readonly Uint8Array[], verb: string) {
  const what = `Cannot ${verb} tombstone payload`;
  if (targets.length === 0) throw new XfError("BAD_EVENT", `${what}: no target id (1 to ${TOMBSTONE_TARGETS_MAX})`);
  if (targets.length > TOMBSTONE_TARGETS_MAX) {
    throw new XfError("BAD_EVENT", `${what}: ${targets.length} target ids, the limit is ${TOMBSTONE_TARGETS_MAX}`);
  }
  const seen = new Set<string>();
  targets.forEach((t, i) => {
    if (!(t instanceof Uint8Array) || t.length !== ID_BYTES) {
      throw new XfError("BAD_EVENT", `${what}: target ${i} is ${t?.length ?? "not"} bytes, expected ${ID_BYTES}`);
    }
    const hex = toHex(t);
    if (seen.has(hex)) throw new XfError("BAD_EVENT", `${what}: target "${hex}" is named twice`);
    seen.add(hex);
  });
}

/**
 * Decode a tombstone payload strictly: a deterministic CBOR array of 1 to {@linkcode TOMBSTONE_TARGETS_MAX}
 * distinct 32-byte byte strings and nothing after it. The ids are views into `payload`. Throws
 * {@linkcode XfError} `BAD_EVENT` otherwise.
 *
 * @example
 * ```ts
 * import { assertThrows } from "@std/assert";
 * import { decodeTombstone } from "./deletion.ts";
 * assertThrows(() => decodeTombstone(new Uint8Array([0x80])), Error, "no target id"); // []
 * ```
 */
export function decodeTombstone(payload: Uint8Array): Uint8Array[] {
  if (!(payload instanceof Uint8Array) || payload.length === 0) bad("no bytes");
  const out: Uint8Array[] = [];
  try {
    const r = new CborReader(payload);
    if (r.peekMajor() !== 4) bad("not a CBOR array");
    const n = r.array();
    if (n > TOMBSTONE_TARGETS_MAX) bad(`${n} target ids, the limit is ${TOMBSTONE_TARGETS_MAX}`);
    for (let i = 0; i < n; i++) {
      if (r.peekMajor() !== 2) bad(`target ${i} is not a byte string`);
      out.push(r.bytes());
    }
    if (!r.done()) bad(`${payload.length - r.pos} bytes after the array`);
  } catch (e) {
    if (e instanceof XfError && e.code === "BAD_EVENT") throw e;
    bad((e as Error).message.replace(/^Cannot decode CBOR /, ""));
  }
  checkTargets(out, "decode");
  return out;
}

/** True for kinds a tombstone may delete: application events (kind ≥ 16), never the engine's own kinds. */
export function isDeletableKind(kind: number): boolean {
  return kind >= APP_KIND_MIN;
}

function kindName(kind: number): string {
  if (kind === KIND_MANIFEST) return "a group manifest";
  if (kind === KIND_MEMBERSHIP) return "a membership event";
  if (kind === KIND_TOMBSTONE) return "a tombstone";
  if (kind === KIND_SETTINGS) return "a settings event";
  return `an engine event (kind ${kind})`;
}

/**
 * May the tombstone `tomb` (in a group whose membership is `state`) delete `target`? Yes when the target is an
 * application event of the same group and the tombstone's signer is its author, or the owner or an admin at the
 * tombstone's `ts`. Otherwise `FORBIDDEN`, with a message that says which rule.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { mayDelete } from "./deletion.ts";
 * import { GroupState } from "./membership.ts";
 * const owner = new Uint8Array(32).fill(1), alice = new Uint8Array(32).fill(2), bob = new Uint8Array(32).fill(3);
 * const group = new Uint8Array(32), state = new GroupState(owner, 0);
 * const post = { id: new Uint8Array(32).fill(9), group, author: alice, kind: 16, ts: 5 };
 * assert(mayDelete(state, { group, author: alice, ts: 10 }, post).ok); // the author
 * assert(mayDelete(state, { group, author: owner, ts: 10 }, post).ok); // the owner
 * assert(!mayDelete(state, { group, author: bob, ts: 10 }, post).ok); // anyone else
 * ```
 */
export function mayDelete(state: GroupState, tomb: TombstoneSigner, target: TargetInfo): DeleteJudgement {
  const id = toHex(target.id);
  if (!bytesEqual(tomb.group, target.group)) {
    return {
      ok: false,
      code: "FORBIDDEN",
      message: `Cannot delete event "${id}": it is in group "${toHex(target.group)}", not the tombstone's group`,
    };
  }
  if (!isDeletableKind(target.kind)) {
    return {
      ok: false,
      code: "FORBIDDEN",
      message: `Cannot delete event "${id}": it is ${
        kindName(target.kind)
      }, and manifests, membership events, tombstones and settings may never be deleted`,
    };
  }
  if (bytesEqual(tomb.author, target.author) || state.isAdmin(tomb.author, tomb.ts)) return { ok: true };
  return {
    ok: false,
    code: "FORBIDDEN",
    message: `Cannot delete event "${id}": signer "${
      toHex(tomb.author)
    }" is not its author, nor the owner or an admin at ts "${tomb.ts}"`,
  };
}

/**
 * The fields the deletion rules need of event bytes already checked by `decodeEvent` (stored or decoded):
 * id, group, author, kind and ts, as views into `bytes`. Null when the bytes do not start like a v1 event.
 */
export function targetOf(bytes: Uint8Array, id: Uint8Array): TargetInfo | null {
  const head = peekEvent(bytes);
  if (!head) return null;
  return { id, group: bytes.subarray(4, 36), author: bytes.subarray(38, 70), kind: head.kind, ts: head.ts };
}

/** An event of one index write, in the order the write takes them; `targets` for a tombstone. */
export interface WriteEvent extends TargetInfo {
  targets?: Uint8Array[];
}

/** A tombstone held before the write: its signer's fields and its targets. */
export interface HeldTombstone {
  signer: TargetInfo;
  targets: Uint8Array[];
}

/** What {@linkcode planDeletions} needs read from the store before a write (hex ids as keys). */
export interface DeletionInput {
  /** The write's new events, in order. */
  events: readonly WriteEvent[];
  /** Events held before the write that the write's tombstones name (absent: not held; `tombstones` are held too). */
  held: ReadonlyMap<string, TargetInfo>;
  /** Deleted-set entries held for the write's event ids: target → tombstone → confirmed. */
  entries: ReadonlyMap<string, ReadonlyMap<string, boolean>>;
  /** Held tombstones those entries name. */
  tombstones: ReadonlyMap<string, HeldTombstone>;
  /** A group's membership state (with the write's own membership events), null if unknown. */
  state(gid: Uint8Array): GroupState | null;
}

/** What one index write does about deletion. */
export interface DeletionPlan {
  /** Positions in `events` to store. */
  keep: number[];
  /** Positions refused because a tombstone held may delete them (`DELETED`). */
  refused: number[];
  /** Positions of tombstones refused because a target held may not be deleted by their signer. */
  rejected: { index: number; message: string }[];
  /** Events held before the write to forget: targets deleted, and tombstones found invalid. */
  forget: TargetInfo[];
  /** Deleted-set changes: `confirmed` true or false puts the entry, null removes it. */
  changes: { target: Uint8Array; tomb: Uint8Array; confirmed: boolean | null }[];
  /** Ids that are now confirmed deleted (targets removed or refused), for the duplicate filters. */
  deleted: Uint8Array[];
  /** Tombstones dropped (held before, or kept earlier in this write) because a target they name arrived that they may not delete. */
  dropped: Uint8Array[];
}

/**
 * Decide, for one index write, what its events do to the deleted set, in the write's order (the index is the
 * final authority: decode judged each tombstone only against the targets held when it passed).
 *
 * For each event in order:
 * 1. If tombstones held name its id: if one of them may delete it, it is refused (`DELETED`) and those entries
 *    become confirmed. If none may, each of them was invalid: it is dropped (forgotten like a deleted event, but
 *    its own id does not enter the deleted set) and every entry it made is removed (its other targets may come
 *    back by sync); the event is then stored.
 * 2. A tombstone: if a target held (before the write or earlier in it) may not be deleted by its signer, the
 *    tombstone is refused. Otherwise each held target is forgotten and its entry confirmed; each target not held
 *    gets a pending entry.
 *
 * Pure: every read is in `input`.
 */
export function planDeletions(input: DeletionInput): DeletionPlan {
  const { events } = input;
  const present = new Map<string, TargetInfo | null>();
  const heldBefore = (hex: string) => input.held.get(hex) ?? input.tombstones.get(hex)?.signer ?? null;
  const heldNow = (hex: string) => present.has(hex) ? present.get(hex)! : heldBefore(hex);
  const position = new Map<string, number>();
  events.forEach((e, i) => position.set(toHex(e.id), i));
  const entries = new Map<string, Map<string, boolean>>();
  const entriesOf = (hex: string) => {
    let m = entries.get(hex);
    if (!m) entries.set(hex, m = new Map(input.entries.get(hex) ?? []));
    return m;
  };
  const tombs = new Map<string, HeldTombstone>(input.tombstones);
  const changes = new Map<string, { target: Uint8Array; tomb: Uint8Array; confirmed: boolean | null }>();
  const setEntry = (target: Uint8Array, tomb: Uint8Array, confirmed: boolean | null) => {
    const th = toHex(target), xh = toHex(tomb);
    const m = entriesOf(th);
    if (confirmed === null) m.delete(xh);
    else m.set(xh, confirmed);
    changes.set(th + xh, { target, tomb, confirmed });
  };
  const keep = new Set<number>();
  const forget = new Map<string, TargetInfo>();
  const deleted = new Map<string, Uint8Array>();
  const dropped: Uint8Array[] = [];
  const refused: number[] = [];
  const rejected: { index: number; message: string }[] = [];
  const remove = (hex: string, info: TargetInfo) => {
    present.set(hex, null);
    if (heldBefore(hex)) forget.set(hex, info);
    else keep.delete(position.get(hex)!);
  };
  const judge = (signer: TargetInfo, target: TargetInfo): DeleteJudgement => {
    const st = input.state(signer.group);
    if (!st) return { ok: false, code: "FORBIDDEN", message: `Cannot delete event "${toHex(target.id)}": no group` };
    return mayDelete(st, signer, target);
  };
  events.forEach((e, i) => {
    const hex = toHex(e.id);
    const named = entries.get(hex) ?? input.entries.get(hex);
    if (named && named.size) {
      const valid: string[] = [];
      const invalid: string[] = [];
      for (const xh of named.keys()) {
        const t = tombs.get(xh);
        if (t && judge(t.signer, e).ok) valid.push(xh);
        else invalid.push(xh);
      }
      if (valid.length) {
        for (const xh of valid) if (!named.get(xh)) setEntry(e.id, tombs.get(xh)!.signer.id, true);
        refused.push(i);
        deleted.set(hex, e.id);
        return;
      }
      for (const xh of invalid) {
        const t = tombs.get(xh);
        if (!t) {
          // An entry whose tombstone is not held (it cannot be judged): it goes.
          setEntry(e.id, fromHex(xh)!, null);
          continue;
        }
        for (const target of t.targets) setEntry(target, t.signer.id, null);
        if (heldNow(xh)) remove(xh, t.signer);
        tombs.delete(xh);
        dropped.push(t.signer.id);
      }
    }
    if (e.targets) {
      for (const target of e.targets) {
        const h = heldNow(toHex(target));
        if (!h) continue;
        const j = judge(e, h);
        if (!j.ok) {
          rejected.push({ index: i, message: j.message });
          return;
        }
      }
      for (const target of e.targets) {
        const th = toHex(target);
        const h = heldNow(th);
        if (h) {
          remove(th, h);
          deleted.set(th, target);
        }
        setEntry(target, e.id, h !== null);
      }
      tombs.set(hex, { signer: e, targets: e.targets });
    }
    present.set(hex, e);
    keep.add(i);
  });
  return {
    keep: [...keep].sort((a, b) => a - b),
    refused,
    rejected,
    forget: [...forget.values()],
    changes: [...changes.values()],
    deleted: [...deleted.values()],
    dropped,
  };
}
