/**
 * Deletion and retention over a {@linkcode Kv}: the reads and ops that the node's index (`actors/index.ts`) and a
 * browser replica (`replica_store.ts`) both run around the pure rules of `deletion.ts` and `retention.ts`, so the
 * two hold the same deleted set (`d` keyspace), the same settings record (`x` keyspace, `settings:<gid>`) and forget
 * events the same way. One copy: neither keeps its own.
 *
 * - {@linkcode planWriteDeletions}: read what `planDeletions` needs for one write's new events, then plan.
 * - {@linkcode deletedSetOps}: the deleted-set puts and deletes of a plan.
 * - {@linkcode forgetOps}: the ops that forget held events (bytes, time index, arrival index when there is one).
 * - {@linkcode planSettings}: which of a write's settings events becomes its group's retention.
 * - {@linkcode treeBoundary}: a group's retention boundary from its settings and its Merkle set.
 *
 * @module
 */

import { sha256 } from "@noble/hashes/sha2";
import { bytesEqual, fromHex, toHex } from "../core/bytes.ts";
import { XfError } from "../core/errors.ts";
import { DELETED_FILTER_IDS_MIN, type Limits } from "../core/limits.ts";
import type { Kv, KvOp } from "./kv.ts";
import {
  arrivalKey,
  DELETED_CONFIRMED,
  DELETED_PENDING,
  deletedKey,
  deletedPrefix,
  eventKey,
  KS,
  metaKey,
  prefixEnd,
  timeKey,
} from "./keys.ts";
import { decodeEvent, KIND_SETTINGS, KIND_TOMBSTONE, type StoredEvent } from "./event.ts";
import {
  decodeTombstone,
  type DeletionPlan,
  type HeldTombstone,
  planDeletions,
  type TargetInfo,
  targetOf,
} from "./deletion.ts";
import { decodeSettings, isNewerSettings, judgeSettings, retentionBoundary, type SettingsRecord } from "./retention.ts";
import type { GroupState } from "./membership.ts";
import { IdFilter } from "./id_filter.ts";

/** Key of a group's retention settings in force (JSON {@linkcode SettingsRecord}): the latest valid settings event's. */
export const settingsKey = (gid: string): Uint8Array => metaKey(`settings:${gid}`);
/** Lowest settings key: every group's follows. */
export const SETTINGS_PREFIX: Uint8Array = metaKey("settings:");

/** A group's settings record as stored under {@linkcode settingsKey}, or null. */
export async function loadSettings(kv: Kv, gid: string): Promise<SettingsRecord | null> {
  const raw = await kv.get(settingsKey(gid));
  return raw ? JSON.parse(new TextDecoder().decode(raw)) as SettingsRecord : null;
}

/** The put that stores a group's settings record. */
export function settingsOp(gid: string, rec: SettingsRecord): KvOp {
  return { type: "put", key: settingsKey(gid), value: new TextEncoder().encode(JSON.stringify(rec)) };
}

/** The deleted-set entries of one id: tombstone (hex) → confirmed. */
export async function deletedEntries(kv: Kv, id: Uint8Array): Promise<Map<string, boolean>> {
  const out = new Map<string, boolean>();
  const lo = deletedPrefix(id);
  for await (const [k, v] of kv.range({ gte: lo, lt: prefixEnd(lo) })) {
    if (k.length === 65) out.set(toHex(k.subarray(33, 65)), v[0] === 1);
  }
  return out;
}

/** True when a confirmed entry of the deleted set names `id`. */
export async function isDeleted(kv: Kv, id: Uint8Array): Promise<boolean> {
  for (const confirmed of (await deletedEntries(kv, id)).values()) if (confirmed) return true;
  return false;
}

/** A filter of every target the deleted set names, sized for twice as many (at least `DELETED_FILTER_IDS_MIN`). */
export async function buildDeletedFilter(kv: Kv, min = DELETED_FILTER_IDS_MIN): Promise<IdFilter> {
  const lo = new Uint8Array([KS.deleted]);
  const range = { gte: lo, lt: prefixEnd(lo), values: false };
  let n = 0;
  for await (const _ of kv.range(range)) n++;
  const f = IdFilter.sized(Math.max(min, 2 * n));
  for await (const [k] of kv.range(range)) f.add(k.subarray(1, 33));
  return f;
}

/** A write's new event for {@linkcode planWriteDeletions}: decoded (payload read for tombstones), with its hex id. */
export interface WriteCandidate {
  ev: StoredEvent;
  hex: string;
}

/**
 * What a write's new events do to the deleted set: read what `planDeletions` needs (the deleted-set entries of ids
 * `mayHave` may name, the targets its tombstones name, the tombstones those entries name) and plan. `stateOf`
 * answers a group's membership with the write's own membership events (null: no group).
 */
export async function planWriteDeletions(
  kv: Kv,
  limits: Limits,
  candidates: readonly WriteCandidate[],
  stateOf: (gid: string) => Promise<GroupState | null>,
  mayHave: (id: Uint8Array) => boolean,
): Promise<DeletionPlan> {
  const maybe = candidates.filter((c) => mayHave(c.ev.id));
  const tombstones = candidates.filter((c) => c.ev.kind === KIND_TOMBSTONE);
  if (maybe.length === 0 && tombstones.length === 0) {
    return {
      keep: candidates.map((_, i) => i),
      refused: [],
      rejected: [],
      forget: [],
      changes: [],
      deleted: [],
      dropped: [],
    };
  }
  const entries = new Map<string, Map<string, boolean>>();
  for (const c of maybe) {
    const m = await deletedEntries(kv, c.ev.id);
    if (m.size) entries.set(c.hex, m);
  }
  const inWrite = new Set(candidates.map((c) => c.hex));
  const targetsOf = new Map<string, Uint8Array[]>();
  for (const c of tombstones) {
    try {
      targetsOf.set(c.hex, decodeTombstone(c.ev.payload));
    } catch {
      targetsOf.set(c.hex, []); // a replayed record decode never admitted: it names nothing
    }
  }
  // Events held before the write that its tombstones name.
  const want = new Map<string, Uint8Array>();
  for (const ts of targetsOf.values()) {
    for (const t of ts) {
      const h = toHex(t);
      if (!inWrite.has(h)) want.set(h, t);
    }
  }
  const held = new Map<string, TargetInfo>();
  const wantIds = [...want.values()];
  const got = wantIds.length ? await kv.getMany(wantIds.map((id) => eventKey(id))) : [];
  got.forEach((b, i) => {
    if (b) intact(b, wantIds[i]!);
    const info = b && targetOf(b, wantIds[i]!);
    if (info) held.set(toHex(wantIds[i]!), info);
  });
  // Tombstones held that the entries name.
  const named = new Set<string>();
  for (const m of entries.values()) for (const x of m.keys()) if (!inWrite.has(x)) named.add(x);
  const heldTombs = new Map<string, HeldTombstone>();
  const namedIds = [...named].map((h) => fromHex(h)!);
  const tb = namedIds.length ? await kv.getMany(namedIds.map((id) => eventKey(id))) : [];
  tb.forEach((b, i) => {
    if (!b) return;
    intact(b, namedIds[i]!);
    try {
      const ev = decodeEvent(b, { ...limits, event_bytes_max: b.length });
      heldTombs.set(toHex(namedIds[i]!), {
        signer: targetOf(b, namedIds[i]!)!,
        targets: decodeTombstone(ev.payload),
      });
    } catch { /* not a tombstone: its entries cannot be judged and go */ }
  });
  // Every group involved, with the write's own membership events.
  const states = new Map<string, GroupState | null>();
  const gids = new Set([
    ...candidates.map((c) => toHex(c.ev.group)),
    ...[...heldTombs.values()].map((t) => toHex(t.signer.group)),
  ]);
  for (const gid of gids) states.set(gid, await stateOf(gid));
  return planDeletions({
    events: candidates.map((c) => ({
      id: c.ev.id,
      group: c.ev.group,
      author: c.ev.author,
      kind: c.ev.kind,
      ts: c.ev.ts,
      ...(targetsOf.has(c.hex) ? { targets: targetsOf.get(c.hex)! } : {}),
    })),
    held,
    entries,
    tombstones: heldTombs,
    state: (g) => states.get(toHex(g)) ?? null,
  });
}

/**
 * Throw `STORAGE_CORRUPTION` unless `bytes`, read from the store as event `id`, hash to it. A plan acts on what it
 * reads (a target's author, kind and `ts`, a tombstone's signer and targets): bytes damaged on the way from the disk
 * once dropped a valid tombstone for good (its signer read as another key, so "it may not delete" the target sent
 * again; found by the simulation, tests/_sim_net.ts). The write fails whole, as on a read error, and is tried again.
 * The index's retention prune and its answers to decode's tombstone checks read through it too.
 */
export function intact(bytes: Uint8Array, id: Uint8Array, doing = "plan deletions"): void {
  if (bytesEqual(sha256(bytes), id)) return;
  throw new XfError(
    "STORAGE_CORRUPTION",
    `Cannot ${doing}: event "${toHex(id)}" read from the store does not hash to its id`,
  );
}

/** The deleted-set ops of a plan: a put per entry made or confirmed, a delete per entry removed. */
export function deletedSetOps(plan: DeletionPlan): KvOp[] {
  return plan.changes.map((c): KvOp => {
    const key = deletedKey(c.target, c.tomb);
    return c.confirmed === null
      ? { type: "del", key }
      : { type: "put", key, value: c.confirmed ? DELETED_CONFIRMED : DELETED_PENDING };
  });
}

/**
 * The ops that forget events held: their bytes, time-index entries and, where the time entry's value is an arrival
 * seq (a node's), arrival-index entries. Their Merkle removal goes with the write's other tree changes. Deletion and
 * retention, on a node and on a replica, forget through this one function.
 */
export async function forgetOps(kv: Kv, list: readonly TargetInfo[]): Promise<KvOp[]> {
  if (list.length === 0) return [];
  const tkeys = list.map((e) => timeKey(e.group, e.ts, e.id));
  const seqs = await kv.getMany(tkeys);
  const ops: KvOp[] = [];
  list.forEach((e, i) => {
    ops.push({ type: "del", key: eventKey(e.id) });
    ops.push({ type: "del", key: tkeys[i]! });
    const v = seqs[i];
    // A replica's entries, and a node's written before the arrival index existed, have no seq.
    if (v && v.length === 8) {
      ops.push({
        type: "del",
        key: arrivalKey(e.group, Number(new DataView(v.buffer, v.byteOffset, 8).getBigUint64(0))),
      });
    }
  });
  return ops;
}

/**
 * The settings in force after a write, for each group whose settings change: of the write's stored settings events
 * (in order), each that decodes, whose signer is the owner or an admin at its `ts` (`stateOf`, with the write's own
 * membership events) and that is newer by `(ts, id)` than the record in force (`currentOf`) replaces it.
 */
export async function planSettings(
  fresh: readonly WriteCandidate[],
  stateOf: (gid: string) => Promise<GroupState | null>,
  currentOf: (gid: string) => Promise<SettingsRecord | null>,
): Promise<Map<string, SettingsRecord>> {
  const out = new Map<string, SettingsRecord>();
  for (const { ev, hex } of fresh) {
    if (ev.kind !== KIND_SETTINGS) continue;
    const gid = toHex(ev.group);
    let s;
    try {
      s = decodeSettings(ev.payload);
    } catch {
      continue; // a replayed record decode never admitted
    }
    const st = await stateOf(gid);
    if (!st || !judgeSettings(st, ev).ok) continue;
    if (!isNewerSettings(ev.ts, hex, out.get(gid) ?? await currentOf(gid))) continue;
    out.set(gid, { ...s, ts: ev.ts, id: hex });
  }
  return out;
}

/** What {@linkcode treeBoundary} reads of a group's Merkle set: its size and its items in `(ts, id)` order. */
export interface SortedSet {
  size(): number;
  getItem(i: number): { ts: number };
}

/** The lowest `ts` a group retains (0: everything), from its settings and its Merkle set alone. */
export function treeBoundary(s: SettingsRecord | null, tree: SortedSet): number {
  if (!s) return 0;
  const n = tree.size();
  if (n === 0) return 0;
  // A set of exactly N events has its oldest as the N-th newest: the boundary stays where a prune to N left it (with
  // `>`, it fell to 0 once the prune was done, and what was forgotten was taken again from a peer, back and forth).
  const nth = s.retention_events !== undefined && n >= s.retention_events
    ? tree.getItem(n - s.retention_events).ts
    : null;
  return retentionBoundary(s, tree.getItem(n - 1).ts, nth);
}
