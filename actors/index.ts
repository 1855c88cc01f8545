/**
 * Stage 4, index: the one actor that owns the RocksDB handle. Each write
 * holds the events by id, the per-group time and arrival indexes, new
 * groups, membership state, the deleted set (tombstones: `storage/deletion.ts`),
 * retention settings, the Merkle pages and the WAL checkpoint — all or
 * nothing. Between writes it forgets the events past each group's retention
 * boundary (`storage/retention.ts`) in bounded writes of its own. An event
 * already held is skipped, so a batch delivered twice (after a restart) is
 * indexed once.
 *
 * The logic is index group commit: batches that arrive while a write runs
 * are written together by the next (at most `index_batch_events_max`
 * events). Writes are not synced: the WAL is what makes events durable, and
 * its segments are deleted only once RocksDB has flushed what they cover to
 * its table files (`index.durable`, see storage/wal_retention.ts). Reads (requests from the root) wait until the index
 * holds every event acknowledged before them (read your writes).
 *
 * Takes: `put` (data, from wal-flush); `written` (its write's answer); `pruned` (a retention write's).
 * Sends: `advertise` ← `indexed`; `ingest` ← `release` (signal); `decode` ← `retained` (signal: a group's
 * retention boundary moved); reports `indexed`. Answers: `index.has` (ingest's request port), and the reads
 * and group loads of `IndexCall` from the root.
 *
 * @module
 */

import type { CommonEffect, HostContext, Input, StageLogic, StageModule } from "./stage.ts";
import type { IndexPut } from "./wal_flush.ts";
import { type FilterBuilt, PRESENCE, type Presence, type Release } from "./ingest.ts";
import type { LoadedGroup, RetainedSignal, TargetWire } from "./decode.ts";
import { type BatchItem, type EventBatch, packBatch, unpackBatch } from "./batch.ts";
import {
  ABSENT_GROUPS_MAX,
  DELETED_FILTER_IDS_MIN,
  GROUP_INFO_MAX,
  type Limits,
  QUERY_FETCH_KEYS_MAX,
  QUERY_SCAN_MAX,
} from "../core/limits.ts";
import { FlushTracker, type Kv, type KvOp, MemoryKv } from "../storage/kv.ts";
import { openRocks } from "../storage/kv_rocks.ts";
import {
  arrivalKey,
  arrivalPrefix,
  COMPACT_HIGH,
  COMPACT_LOW,
  eventKey,
  groupKey,
  KS,
  metaKey,
  peerKey,
  prefixEnd,
  timeKey,
  timeKeyFloor,
  u64be,
} from "../storage/keys.ts";
import { ReconcileSessions } from "../storage/reconcile.ts";
import {
  APP_KIND_MIN,
  checkManifestEvent,
  decodeEvent,
  KIND_MANIFEST,
  KIND_MEMBERSHIP,
  peekEvent,
  type StoredEvent,
} from "../storage/event.ts";
import { type TargetInfo, targetOf } from "../storage/deletion.ts";
import { GroupState } from "../storage/membership.ts";
import { fromHex, toHex } from "../core/bytes.ts";
import { XfError } from "../core/errors.ts";
import { fsckDeleted, GroupTrees, MERKLE_FORMAT } from "../storage/merkle_store.ts";
import { isForgettableKind, type SettingsRecord } from "../storage/retention.ts";
import { IdFilter } from "../storage/id_filter.ts";
import {
  buildDeletedFilter,
  deletedEntries,
  deletedSetOps,
  forgetOps,
  intact,
  isDeleted,
  loadSettings,
  planSettings,
  planWriteDeletions,
  SETTINGS_PREFIX,
  settingsOp,
  treeBoundary,
} from "../storage/deleted_set.ts";
import {
  decodeGroup,
  encodeGroup,
  encodeGroupState,
  type GroupRecord,
  loadGroupState,
  membersKey,
} from "../storage/group_record.ts";

/** A batch index hands to advertise: events newly indexed, with their arrival seqs. */
export interface AdvertiseIndexed {
  type: "indexed";
  batch: EventBatch;
}

/** What a write did. */
export interface Written {
  type: "written";
  toks: number[];
  /** Live events in the write (not replayed). */
  n: number;
  replayN: number;
  lastSeq: number;
  /** Ids newly held, then ids already held (32 bytes each). */
  stored: Uint8Array;
  duplicates: Uint8Array;
  /** Ids now deleted: targets forgotten, and events refused because a tombstone held deletes them. */
  deleted: Uint8Array;
  /** Tombstones refused or dropped (a target they name may not be deleted by their signer). */
  dropped: Uint8Array;
  /** The newly held events, for subscribers. */
  fresh: EventBatch | null;
}

/** Events a retention prune forgot (ingest forgets them as recently stored), and boundaries that moved (decode). */
export interface Pruned {
  type: "pruned";
  ids: Uint8Array;
  retained: RetainedSignal | null;
}

/** Messages the index takes. */
export type IndexIn = Input<IndexPut> | Written | FilterBuilt | Pruned;

/** Effects the index asks for. */
export type IndexEffect =
  | CommonEffect<"advertise" | "decode">
  | { do: "write"; toks: number[]; batches: { batch: EventBatch; replay: boolean }[] };

/** The index's logic state: batches waiting for the next write. */
export interface IndexState {
  limits: Limits;
  waiting: { tok: number; batch: EventBatch; replay: boolean }[];
  writing: boolean;
  checkpoint: number;
}

function nextWrite(st: IndexState): IndexEffect[] {
  if (st.writing || st.waiting.length === 0) return [];
  let n = 0;
  let k = 0;
  while (
    k < st.waiting.length &&
    (k === 0 || n + st.waiting[k]!.batch.ends.length <= st.limits.index_batch_events_max)
  ) {
    n += st.waiting[k]!.batch.ends.length;
    k++;
  }
  const take = st.waiting.splice(0, k);
  st.writing = true;
  return [{
    do: "write",
    toks: take.map((t) => t.tok),
    batches: take.map((t) => ({ batch: t.batch, replay: t.replay })),
  }];
}

/** The index stage's logic. */
export const logic: StageLogic<IndexState, IndexIn, IndexEffect> = {
  // Batches that arrive while a write runs are written together by the next.
  concurrency: 8,
  init: (config) => ({ limits: config.limits, waiting: [], writing: false, checkpoint: 0 }),
  receive(st, msg) {
    if (msg.type === "input") {
      st.waiting.push({ tok: msg.tok, batch: msg.msg.batch, replay: msg.msg.replay });
      return nextWrite(st);
    }
    if (msg.type === "filter") return [{ do: "signal", to: "ingest", msg }];
    if (msg.type === "pruned") {
      const out: IndexEffect[] = [];
      if (msg.ids.length) {
        out.push({ do: "signal", to: "ingest", msg: { type: "release", ids: msg.ids, stored: false } });
      }
      if (msg.retained) out.push({ do: "signal", to: "decode", msg: msg.retained });
      return out;
    }
    st.writing = false;
    st.checkpoint = Math.max(st.checkpoint, msg.lastSeq);
    const effects: IndexEffect[] = [{
      do: "report",
      msg: { type: "indexed", n: msg.n, replayN: msg.replayN, lastSeq: st.checkpoint, stored: msg.stored.length / 32 },
    }];
    const ids = new Uint8Array(msg.stored.length + msg.duplicates.length);
    ids.set(msg.stored);
    ids.set(msg.duplicates, msg.stored.length);
    if (ids.length) {
      effects.push({ do: "signal", to: "ingest", msg: { type: "release", ids, stored: true } satisfies Release });
    }
    if (msg.deleted.length) {
      effects.push({
        do: "signal",
        to: "ingest",
        msg: { type: "release", ids: msg.deleted, stored: false, deleted: true } satisfies Release,
      });
    }
    if (msg.dropped.length) {
      effects.push({ do: "signal", to: "ingest", msg: { type: "release", ids: msg.dropped, stored: false } });
    }
    if (msg.fresh) effects.push({ do: "send", to: "advertise", msg: { type: "indexed", batch: msg.fresh } });
    for (const tok of msg.toks) effects.push({ do: "done", tok });
    return [...effects, ...nextWrite(st)];
  },
};

/** Index's config. */
export interface IndexConfig {
  /** RocksDB directory; `null` keeps everything in memory (tests). */
  dir: string | null;
  limits: Limits;
}

/** A query over one group's events. */
export interface EventQuery {
  gid: string;
  since?: number;
  until?: number;
  kinds?: number[];
  authors?: string[];
  limit: number;
  cursor?: string;
  /** Leave out events indexed after this arrival seq (a stream's snapshot). */
  maxSeq?: number;
}

/** What `GET /v1/groups` and `GET /v1/groups/:gid/members` show of a group. */
export interface GroupInfoView {
  id: string;
  name: string;
  policy: number;
  owner: string;
  count: number;
  root: string;
  members: { key: string; role: "owner" | "admin" | "member" }[];
}

/** A page of a group's events in arrival order (streams resume by arrival seq). */
export interface ArrivalQuery {
  gid: string;
  /** Events indexed after this arrival seq. */
  after: number;
  limit: number;
  since?: number;
  kinds?: number[];
  authors?: string[];
}

/** Messages the index stage takes. */
export type IndexMsg = { type: "index.put"; batch: EventBatch; replay?: boolean };

/** Requests the index answers. */
export type IndexCall =
  | { type: "index.has"; ids: Uint8Array }
  | { type: "index.deletedIn"; id: string }
  | { type: "index.targets"; ids: Uint8Array }
  | { type: "index.groups"; gids: string[] }
  | { type: "index.get"; id: string }
  | { type: "index.query"; query: EventQuery }
  | { type: "index.arrivals"; query: ArrivalQuery }
  | { type: "index.lastArrival"; gid: string }
  | { type: "index.groupInfo"; gids: string[]; key: string }
  | { type: "index.checkpoint" }
  | { type: "index.skip"; seqs: Float64Array }
  | { type: "index.durable" }
  | { type: "index.drop"; ids: Uint8Array }
  | { type: "index.merkle"; gid: string }
  | { type: "index.proof"; gid: string; id: string }
  | { type: "index.fsck"; gid: string }
  | { type: "index.scan" }
  | { type: "index.fsckDeleted" }
  | { type: "index.retained"; gid: string }
  | { type: "index.getMany"; ids: Uint8Array; bytesMax?: number }
  | {
    type: "index.reconcile";
    gid: string;
    /** Initiator sessions keep their state here between messages; null for a responder. */
    session: string | null;
    /** The peer's message; null to initiate. */
    msg: Uint8Array | null;
    frameSizeLimit?: number;
    /**
     * Partial sync: reconcile only the events with `since <= ts < until` (absent: 0 and no upper end). An
     * initiator session keeps the range it started with.
     */
    since?: number;
    until?: number;
  }
  | { type: "index.listGroups" }
  | { type: "index.admission"; gid: string }
  | { type: "index.peers.load"; gid: string }
  | { type: "index.peers.save"; gid: string; table: Uint8Array }
  | { type: "index.access"; gid: string; key: string }
  | { type: "index.groupStates"; gids: string[] }
  | { type: "index.stats" }
  | { type: "index.totals" };

const CHECKPOINT = metaKey("checkpoint");
/** Seqs indexed (or set aside) above the checkpoint, past a hole (`SeqRanges.above`, `encodeRanges`). */
const ABOVE = metaKey("above-checkpoint");

const ZERO_ID = new Uint8Array(32);
/** The peers keyspace holds one record per group under this id: the DHT routing table (JSON). */
const ROUTING_TABLE_ID = new Uint8Array(32);
const NO_BYTES = new Uint8Array(0);

/**
 * The fields the index needs from a live event that decode already checked:
 * group, author, ts, kind. Null for engine kinds (decoded in full) or an
 * unexpected shape.
 */
function liveEvent(bytes: Uint8Array, id: Uint8Array): StoredEvent | null {
  const head = peekEvent(bytes);
  if (!head || head.kind < APP_KIND_MIN) return null;
  return {
    group: bytes.subarray(4, 36),
    author: bytes.subarray(38, 70),
    ts: head.ts,
    kind: head.kind,
    tags: [],
    payload: NO_BYTES,
    sig: NO_BYTES,
    bytes,
    id,
  };
}

/** Every event id in the store, in a filter sized for twice as many (null if the store went away). */
async function buildFilter(kv: Kv, limits: Limits): Promise<IdFilter | null> {
  // Two keys-only passes over the events keyspace (nothing else is touched, so writes and replay go on meanwhile):
  // one to size the filter (room to double, at least a million ids), one to fill it.
  const lo = new Uint8Array([KS.event]);
  const range = { gte: lo, lt: prefixEnd(lo), values: false };
  let held = 0;
  for await (const _ of kv.range(range)) held++;
  const f = IdFilter.sized(Math.max(1_000_000, 2 * held), limits.ingest_id_filter_bytes_max);
  for await (const [k] of kv.range(range)) f.add(k.subarray(1));
  // Deleted ids too: a deleted event that arrives again is asked of the index, which answers "deleted".
  const d = new Uint8Array([KS.deleted]);
  for await (const [k] of kv.range({ gte: d, lt: prefixEnd(d), values: false })) f.add(k.subarray(1, 33));
  return f;
}

/**
 * Seqs handled above a contiguous checkpoint, as ranges; `peek` adds and says where the checkpoint would be. The
 * ranges left above the checkpoint (`above`) are written with it (`encodeRanges`), so a restarted index still knows
 * what it indexed past a hole: else, once the hole is filled, its checkpoint would stop below those seqs for good
 * (nothing sends them again) and every read waiting for an acknowledged seq would wait with it.
 */
export class SeqRanges {
  #ranges: [number, number][] = [];
  #next: number;
  constructor(public checkpoint: number, ranges: readonly (readonly [number, number])[] = []) {
    this.#next = checkpoint;
    for (const [lo, hi] of ranges) {
      if (hi <= checkpoint || lo > hi) continue;
      const from = Math.max(lo, checkpoint + 1);
      if (this.#ranges.length && this.#ranges.at(-1)![1] >= from - 1) {
        this.#ranges.at(-1)![1] = Math.max(this.#ranges.at(-1)![1], hi);
      } else this.#ranges.push([from, hi]);
    }
  }

  /** The ranges `commit` leaves above the checkpoint (a hole below each). */
  above(): [number, number][] {
    const r = this.#ranges;
    const rest = r[0] && r[0][1] === this.#next && this.#next > this.checkpoint ? r.slice(1) : r;
    return rest.map(([lo, hi]) => [lo, hi]);
  }

  /** Add seqs (tentatively: `commit` makes it stick) and answer the checkpoint they would give. */
  peek(seqs: Iterable<number>): number {
    for (const q of seqs) {
      if (q <= this.checkpoint) continue;
      const r = this.#ranges;
      let i = 0;
      while (i < r.length && r[i]![1] < q - 1) i++;
      if (i < r.length && r[i]![0] <= q + 1) {
        r[i]![0] = Math.min(r[i]![0], q);
        r[i]![1] = Math.max(r[i]![1], q);
        if (i + 1 < r.length && r[i + 1]![0] <= r[i]![1] + 1) {
          r[i]![1] = Math.max(r[i]![1], r[i + 1]![1]);
          r.splice(i + 1, 1);
        }
      } else r.splice(i, 0, [q, q]);
    }
    const head = this.#ranges[0];
    this.#next = head && head[0] === this.checkpoint + 1 ? head[1] : this.checkpoint;
    return this.#next;
  }

  /** The checkpoint `peek` computed becomes the checkpoint. */
  commit(): number {
    if (this.#ranges[0] && this.#ranges[0][1] === this.#next) this.#ranges.shift();
    this.checkpoint = this.#next;
    return this.checkpoint;
  }

  /** Ranges waiting above the checkpoint (a hole below them). */
  get holes(): number {
    return this.#ranges.length;
  }
}

/** The ranges above the checkpoint as stored beside it: two u64 (first, last seq) per range. */
export function encodeRanges(ranges: readonly (readonly [number, number])[]): Uint8Array {
  const out = new Uint8Array(16 * ranges.length);
  const v = new DataView(out.buffer);
  ranges.forEach(([lo, hi], i) => {
    v.setBigUint64(16 * i, BigInt(lo));
    v.setBigUint64(16 * i + 8, BigInt(hi));
  });
  return out;
}

/** `encodeRanges` read back (a value of the wrong length reads as no ranges: the checkpoint alone stands). */
export function decodeRanges(b: Uint8Array | undefined): [number, number][] {
  if (!b || b.length % 16 !== 0) return [];
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const out: [number, number][] = [];
  for (let i = 0; i < b.length; i += 16) out.push([Number(v.getBigUint64(i)), Number(v.getBigUint64(i + 8))]);
  return out;
}

/** The index's runtime: RocksDB, the Merkle pages, and the reads. */
export const effects = (ctx: HostContext) => {
  let kv: Kv | null = null;
  let limits!: Limits;
  let checkpoint = 0;
  /** Seqs indexed above the checkpoint (ranges), so the checkpoint only moves over seqs all indexed. */
  let contiguous = new SeqRanges(0);
  /** RocksDB's checkpoint when this stage opened it: a replayed record up to it should be held already. */
  let openedAt = 0;
  /** Which checkpoint is in RocksDB's table files (the WAL keeps what is only in RocksDB's log). */
  let flushes: FlushTracker | null = null;
  let trees: GroupTrees | null = null;
  const groups = new Map<string, GroupRecord | null>();
  const absentGroups = new Set<string>();
  let waiters: { seq: number; resolve(): void }[] = [];
  const caughtUp = (seq: number) => new Promise<void>((resolve) => waiters.push({ seq, resolve }));
  const wake = () => {
    const ready = waiters.filter((w) => w.seq <= checkpoint);
    waiters = waiters.filter((w) => w.seq > checkpoint);
    for (const w of ready) w.resolve();
  };
  const reconciles = new ReconcileSessions();
  const states = new Map<string, GroupState>();
  /** Retention settings in force per group (null: none), loaded once; `retaining`: the groups that have some. */
  const settings = new Map<string, SettingsRecord | null>();
  const retaining = new Set<string>();
  /** Per retaining group: its boundary as last computed (told to decode), and how far prunes have forgotten. */
  const bounds = new Map<string, number>();
  const prunedTo = new Map<string, number>();
  const pruning = new Set<string>();
  let pruneTimer: ReturnType<typeof setInterval> | null = null;
  /** Prunes scheduled to start (cleared at stop). */
  const soon = new Set<ReturnType<typeof setTimeout>>();
  const later = (fn: () => void) => {
    const t = setTimeout(() => (soon.delete(t), fn()), 0);
    soon.add(t);
  };

  async function settingsOf(gid: string): Promise<SettingsRecord | null> {
    if (settings.has(gid)) return settings.get(gid)!;
    const rec = await loadSettings(kv!, gid);
    settings.set(gid, rec);
    return rec;
  }

  /** The lowest `ts` group `gid` retains (0: everything), from its settings and its Merkle set alone. */
  async function retainedOf(gid: string): Promise<number> {
    const s = await settingsOf(gid);
    if (!s || !(await group(gid))) return 0;
    return treeBoundary(s, await trees!.tree(gid));
  }

  /** Recompute the boundaries of `gids` (retaining groups); tell decode those that moved, prune those that rose. */
  async function rebound(gids: Iterable<string>): Promise<void> {
    const moved: string[] = [];
    const ts: number[] = [];
    for (const gid of gids) {
      if (!retaining.has(gid)) continue;
      const b = await retainedOf(gid);
      if (bounds.get(gid) === b) continue;
      bounds.set(gid, b);
      moved.push(gid);
      ts.push(b);
      if (b < (prunedTo.get(gid) ?? 0)) prunedTo.set(gid, 0); // the boundary went down (its newest event deleted)
      if (b > (prunedTo.get(gid) ?? 0)) later(() => prune(gid));
    }
    if (moved.length) {
      ctx.receive({ type: "pruned", ids: new Uint8Array(0), retained: { type: "retained", gids: moved, ts } });
    }
  }

  /** Forget group `gid`'s application events older than its boundary, in bounded writes between the others. */
  async function prune(gid: string): Promise<void> {
    if (pruning.has(gid) || !kv) return;
    pruning.add(gid);
    try {
      // Between two retention writes the index's own writes go first (the lock is fair: they queued meanwhile).
      while (kv && pruneTimer !== null && (await serial(() => pruneBatch(gid))) > 0) {
        await new Promise<void>((r) => later(r));
      }
    } catch (e) {
      if (kv) console.error(`Retention prune of group ${gid} failed: ${(e as Error).message}`);
    } finally {
      pruning.delete(gid);
    }
  }

  /** One retention write: at most `retention_prune_events_max` events forgotten (forgetOps, as deletion does). */
  async function pruneBatch(gid: string): Promise<number> {
    if (!kv) return 0;
    const b = await retainedOf(gid);
    const from = Math.min(prunedTo.get(gid) ?? 0, b);
    if (b <= from) return 0;
    const g = fromHex(gid)!;
    const list: TargetInfo[] = [];
    let keys: Uint8Array[] = [];
    let reached = from;
    let complete = true;
    const drain = async () => {
      const values = await kv!.getMany(keys.map((k) => eventKey(k.subarray(41, 73))));
      keys.forEach((k, i) => {
        const v = values[i];
        // Damaged bytes could read as a kind retention keeps, and the prune would pass the event for good.
        if (v) intact(v, k.subarray(41, 73), `prune group "${gid}"`);
        const t = v && targetOf(v, k.slice(41, 73));
        if (t && isForgettableKind(t.kind)) list.push(t);
      });
      keys = [];
    };
    for await (const [k] of kv.range({ gte: timeKeyFloor(g, from), lt: timeKeyFloor(g, b), values: false })) {
      if (list.length >= limits.retention_prune_events_max) {
        complete = false;
        break;
      }
      keys.push(k.slice());
      reached = Number(new DataView(k.buffer, k.byteOffset + 33, 8).getBigUint64(0));
      if (keys.length === QUERY_FETCH_KEYS_MAX) await drain();
    }
    if (keys.length) await drain();
    // Below `reached` only engine events are left once this write lands (the index refuses app events past the
    // boundary, so none arrives behind the scan).
    const done = complete ? b : reached;
    if (list.length === 0) {
      prunedTo.set(gid, done);
      return 0;
    }
    const ops = await forgetOps(kv, list);
    const merkle = await trees!.update([], list);
    for (const o of merkle.ops) ops.push(o);
    try {
      await kv.batch(ops, { sync: false });
    } catch (e) {
      trees!.forget();
      throw e;
    }
    merkle.commit();
    prunedTo.set(gid, done);
    flushes!.written(ops.length, checkpoint, checkpoint);
    stats.forgotten += list.length;
    forgot(list.length);
    const ids = new Uint8Array(list.length * 32);
    list.forEach((t, i) => ids.set(t.id, i * 32));
    ctx.receive({ type: "pruned", ids, retained: null });
    return list.length;
  }

  /** A group's membership state (loaded once), or null for an unknown group. */
  async function stateOf(gid: string): Promise<GroupState | null> {
    const hit = states.get(gid);
    if (hit) return hit;
    const g = await group(gid);
    if (!g) return null;
    const st = loadGroupState(g, await kv!.get(membersKey(gid)));
    states.set(gid, st);
    return st;
  }
  /** `restored`: replayed events RocksDB had lost though its checkpoint covered them (a damaged log). */
  const stats = {
    batches: 0,
    stored: 0,
    duplicates: 0,
    corrupt: 0,
    batchEvents: 0,
    restored: 0,
    deleted: 0,
    forgotten: 0,
    /** Background compactions started after `compact_after_forgotten` forgotten events, and finished. */
    compactions: 0,
    compactionsDone: 0,
    compactMs: 0,
  };
  /** Events forgotten since the last compaction started, and the one running (if any). */
  let forgottenSinceCompact = 0;
  let compacting: Promise<void> | null = null;
  /** Aborted by a stop: a compaction still waiting for reads to end gives up. */
  const compactStop = new AbortController();
  /**
   * `n` events were forgotten: after `compact_after_forgotten` of them, rewrite the whole store in the background.
   * It first waits (at most `compact_wait_reads_ms`) for the reads open now to end, as a snapshot older than the
   * deletes would keep their values; then every table file is rewritten, the bottommost level's too (what an earlier
   * compaction kept for a snapshot goes now). RocksDB compacts on its own threads; writes go on meanwhile (the call
   * is not awaited by any write). One at a time.
   */
  function forgot(n: number): void {
    forgottenSinceCompact += n;
    if (compacting || forgottenSinceCompact < limits.compact_after_forgotten || !kv) return;
    forgottenSinceCompact = 0;
    stats.compactions++;
    const t0 = performance.now();
    // No key of any keyspace is [0x00] or eight 0xff bytes (keyspaces are one ASCII letter, then at least one byte).
    compacting = kv.compact(COMPACT_LOW, COMPACT_HIGH, {
      whole: true,
      waitReadsMs: limits.compact_wait_reads_ms,
      signal: compactStop.signal,
    })
      .then(() => void (stats.compactionsDone++, stats.compactMs += performance.now() - t0))
      .catch(() => {/* the store closed under it, or a read error: RocksDB compacts on its own later */})
      .finally(() => void (compacting = null));
  }
  /** Every id the deleted set names (a Bloom filter): only a "maybe" costs a read of the deleted set. */
  let deletedFilter = IdFilter.sized(DELETED_FILTER_IDS_MIN);

  async function group(gid: string): Promise<GroupRecord | null> {
    if (groups.has(gid)) return groups.get(gid)!;
    // Groups not held are remembered too (bounded): an unknown group costs what a held one does, so the time
    // of an answer does not tell a closed group from one that does not exist. A manifest indexed later lands
    // in `groups`, which is looked at first.
    if (absentGroups.has(gid)) return null;
    const b = fromHex(gid);
    if (!b || b.length !== 32) return null;
    const v = await kv!.get(groupKey(b));
    const rec = v ? decodeGroup(v) : null;
    if (rec) groups.set(gid, rec);
    else {
      if (absentGroups.size >= ABSENT_GROUPS_MAX) absentGroups.delete(absentGroups.values().next().value!);
      absentGroups.add(gid);
    }
    return rec;
  }

  /** One write: decode what is new, build every keyspace's ops and the Merkle pages, write them at once. */
  async function write(toks: number[], batches: { batch: EventBatch; replay: boolean }[]): Promise<Written> {
    const items: BatchItem[] = [];
    let replayN = 0;
    for (const { batch, replay } of batches) {
      const list = unpackBatch(batch);
      if (replay) replayN += list.length;
      for (const it of list) items.push(replay ? { ...it, id: ZERO_ID } : it);
    }
    return await serial(() => put(toks, items, replayN));
  }

  /** Writes and retention prunes run one at a time (both change the Merkle trees and the store). */
  let lock: Promise<unknown> = Promise.resolve();
  function serial<T>(fn: () => Promise<T>): Promise<T> {
    const p = lock.then(fn);
    lock = p.catch(() => {});
    return p;
  }

  async function put(toks: number[], items: BatchItem[], replayN: number): Promise<Written> {
    const events: { it: BatchItem; ev: StoredEvent; hex: string }[] = [];
    const seen = new Set<string>();
    for (const it of items) {
      // Live events passed decode: read the few fields the index needs. Replayed WAL records and
      // engine kinds (manifests, membership, tombstones) get the full strict decode.
      let ev = it.id === ZERO_ID ? null : liveEvent(it.bytes, it.id);
      if (!ev) {
        try {
          ev = decodeEvent(it.bytes, { ...limits, event_bytes_max: Math.max(limits.event_bytes_max, it.bytes.length) });
        } catch {
          stats.corrupt++; // a WAL record that is not an event is never indexed
          continue;
        }
      }
      const hex = toHex(ev.id);
      if (seen.has(hex)) continue;
      seen.add(hex);
      events.push({ it, ev, hex });
    }
    let existing: (Uint8Array | undefined | null)[];
    try {
      existing = await kv!.getMany(events.map((e) => eventKey(e.ev.id)));
    } catch (e) {
      // A damaged table block: one by one. A replayed event that cannot be read is written again from the WAL
      // (null: its id is in the tree already); a live one stays unreadable (fsck lists it, a peer restores it).
      if (!items.some((it) => it.id === ZERO_ID)) throw e;
      existing = [];
      for (const { ev } of events) existing.push(await kv!.get(eventKey(ev.id)).catch(() => null));
    }
    const unreadable = new Set(events.filter((_, i) => existing[i] === null).map((e) => e.hex));
    const candidates = events.filter((_, i) => !existing[i]);
    const ops: KvOp[] = [];
    const newGroups: [string, GroupRecord][] = [];
    for (const { ev, hex } of candidates) {
      if (ev.kind !== KIND_MANIFEST) continue;
      const gid = toHex(ev.group);
      if (!(await group(gid)) && !newGroups.some(([g]) => g === gid)) {
        const m = checkManifestEvent(ev);
        const rec = { owner: toHex(ev.author), policy: m.policy, name: m.name, manifest: hex };
        newGroups.push([gid, rec]);
        ops.push({ type: "put", key: groupKey(ev.group), value: encodeGroup(rec) });
      }
    }
    // Membership events change their group's state, written in the same batch (they are never deleted, so
    // every one is stored; deletions below are judged against the state with them).
    const changed = new Map<string, GroupState>();
    for (const { ev } of candidates) {
      if (ev.kind !== KIND_MEMBERSHIP) continue;
      const gid = toHex(ev.group);
      let st = changed.get(gid) ?? (await stateOf(gid));
      if (!st) {
        const rec = newGroups.find(([g]) => g === gid)?.[1];
        if (!rec) continue; // no manifest: decode would not have let it through
        st = new GroupState(fromHex(rec.owner)!, rec.policy);
      }
      // Copy before changing, so a failed write leaves the cached state as it was.
      if (!changed.has(gid)) st = GroupState.fromJSON(st.toJSON());
      try {
        st.apply([ev]);
      } catch {
        stats.corrupt++;
        continue;
      }
      changed.set(gid, st);
    }
    for (const [gid, st] of changed) {
      ops.push({ type: "put", key: membersKey(gid), value: encodeGroupState(st) });
    }
    // A group's membership with this write's own membership events (a group this write creates: its owner's).
    const stateIn = async (gid: string) => {
      const st = changed.get(gid) ?? (await stateOf(gid));
      if (st) return st;
      const rec = newGroups.find(([g]) => g === gid)?.[1];
      return rec ? new GroupState(fromHex(rec.owner)!, rec.policy) : null;
    };
    // Application events past their group's retention boundary are not stored (decode refuses them EXPIRED; these
    // passed it before it learned the boundary moved).
    const expired = candidates.filter((c) =>
      isForgettableKind(c.ev.kind) && c.ev.ts < (bounds.get(toHex(c.ev.group)) ?? 0)
    );
    const current = expired.length ? candidates.filter((c) => !expired.includes(c)) : candidates;
    // Tombstones and the deleted set: which events are stored, refused or forgotten (storage/deletion.ts).
    const plan = await planWriteDeletions(kv!, limits, current, stateIn, (id) => deletedFilter.mayHave(id));
    const fresh = plan.keep.map((i) => current[i]!);
    // Settings events: the latest valid one by (ts, id) is the group's retention.
    const newSettings = await planSettings(fresh, stateIn, settingsOf);
    for (const [gid, rec] of newSettings) ops.push(settingsOp(gid, rec));
    for (const { ev, it } of fresh) {
      ops.push({ type: "put", key: eventKey(ev.id), value: ev.bytes });
      ops.push({ type: "put", key: timeKey(ev.group, ev.ts, ev.id), value: u64be(it.seq) });
      ops.push({ type: "put", key: arrivalKey(ev.group, it.seq), value: ev.id });
    }
    for (const o of await forgetOps(kv!, plan.forget)) ops.push(o);
    for (const o of deletedSetOps(plan)) ops.push(o);
    // A replayed event RocksDB lost though its checkpoint covered it: RocksDB's log dropped a batch, and
    // Merkle pages written with it may be gone too. Its group's tree is rebuilt from the time index.
    const restoredGroups = new Set<string>();
    let restored = 0;
    for (const { ev, it, hex } of fresh) {
      if (it.id !== ZERO_ID || it.seq > openedAt) continue;
      restored++;
      if (!unreadable.has(hex)) restoredGroups.add(toHex(ev.group));
    }
    const merkle = await trees!.update(
      fresh.filter((f) => !restoredGroups.has(toHex(f.ev.group)) && !unreadable.has(f.hex)).map((f) => f.ev),
      plan.forget.filter((f) => !restoredGroups.has(toHex(f.group))),
    );
    for (const o of merkle.ops) ops.push(o);
    const rebuilt = [];
    for (const gid of restoredGroups) {
      const r = await trees!.rebuild(
        gid,
        fresh.filter((f) => toHex(f.ev.group) === gid).map((f) => f.ev),
        plan.forget.filter((f) => toHex(f.group) === gid),
      );
      for (const o of r.ops) ops.push(o);
      rebuilt.push(r);
    }
    // The checkpoint is contiguous: every seq up to it is indexed. A batch lost on its way (two crashes close
    // together) leaves a hole the checkpoint stops at, so a resend from the WAL (after a restart) fills it.
    const nextCheckpoint = contiguous.peek(items.map((it) => it.seq));
    ops.push({ type: "put", key: CHECKPOINT, value: u64be(nextCheckpoint) });
    ops.push({ type: "put", key: ABOVE, value: encodeRanges(contiguous.above()) });
    try {
      // Not synced: the WAL keeps these events until RocksDB has flushed them to its tables (`index.durable`).
      await kv!.batch(ops, { sync: false });
    } catch (e) {
      trees!.forget(); // the write failed: pages reload from what RocksDB holds
      throw e;
    }
    merkle.commit();
    for (const r of rebuilt) r.commit();
    for (const c of plan.changes) if (c.confirmed !== null) deletedFilter.add(c.target);
    if (deletedFilter.count > 2 * deletedFilter.capacity) deletedFilter = await buildDeletedFilter(kv!);
    stats.restored += restored;
    stats.deleted += plan.forget.length;
    if (plan.forget.length) forgot(plan.forget.length);
    flushes!.written(ops.length, checkpoint, nextCheckpoint);
    checkpoint = contiguous.commit();
    wake();
    for (const [g, rec] of newGroups) groups.set(g, rec), absentGroups.delete(g);
    for (const [g, st] of changed) states.set(g, st);
    for (const [g, rec] of newSettings) settings.set(g, rec), retaining.add(g);
    await rebound(new Set(fresh.map((f) => toHex(f.ev.group))));
    stats.batches++;
    stats.batchEvents += items.length;
    stats.stored += fresh.length;
    stats.duplicates += events.length - candidates.length;
    const ids = (list: Uint8Array[]) => {
      const out = new Uint8Array(list.length * 32);
      list.forEach((id, i) => out.set(id, i * 32));
      return out;
    };
    const refused = [...plan.refused.map((i) => current[i]!.ev.id)];
    const dropped = [
      ...plan.rejected.map((r) => current[r.index]!.ev.id),
      ...plan.dropped,
      ...expired.map((c) => c.ev.id),
    ];
    return {
      type: "written",
      toks,
      n: items.length - replayN,
      replayN,
      lastSeq: checkpoint,
      stored: ids(fresh.map((f) => f.ev.id)),
      duplicates: ids(events.filter((_, i) => existing[i]).map((e) => e.ev.id)),
      deleted: ids([...plan.deleted, ...refused]),
      dropped: ids(dropped),
      fresh: fresh.length ? packBatch(fresh.map((f) => ({ ...f.it, id: f.ev.id }))) : null,
    };
  }

  async function query(q: EventQuery): Promise<{ events: Uint8Array[]; cursor: string | null; seqs: number[] }> {
    const gid = fromHex(q.gid)!;
    const limit = Math.min(q.limit, limits.query_limit_max);
    const lower = q.cursor ? { gt: timeKeyFromCursor(gid, q.cursor) } : { gte: timeKeyFloor(gid, q.since ?? 0) };
    const upper = q.until !== undefined
      ? { lt: timeKeyFloor(gid, q.until + 1) }
      : { lt: prefixEnd(timeKeyFloor(gid, 0).subarray(0, 33)) };
    const filtered = (q.kinds?.length ?? 0) > 0 || (q.authors?.length ?? 0) > 0;
    const out: Uint8Array[] = [];
    const seqs: number[] = [];
    let scanned = 0;
    let lastKey: Uint8Array | null = null;
    let more = false;
    let keys: Uint8Array[] = [];
    let keySeqs: number[] = [];
    // Fetch and filter QUERY_FETCH_KEYS_MAX keys at a time; stop at `limit` matches or the scan bound.
    const drain = async () => {
      const values = await kv!.getMany(keys.map((k) => eventKey(k.subarray(41, 73))));
      for (let j = 0; j < keys.length; j++) {
        if (out.length >= limit) {
          more = true;
          break;
        }
        const v = values[j];
        lastKey = keys[j]!;
        if (!v) continue;
        // Indexed after the stream's snapshot: the stream sends it live instead.
        if (q.maxSeq !== undefined && keySeqs[j]! > q.maxSeq) continue;
        if (filtered) {
          const ev = decodeEvent(v, { ...limits, event_bytes_max: v.length });
          if (q.kinds?.length && !q.kinds.includes(ev.kind)) continue;
          if (q.authors?.length && !q.authors.includes(toHex(ev.author))) continue;
        }
        out.push(v);
        seqs.push(keySeqs[j]!);
      }
      keys = [];
      keySeqs = [];
    };
    for await (const [k, v] of kv!.range({ ...lower, ...upper })) {
      if (out.length >= limit || scanned >= QUERY_SCAN_MAX) {
        more = true;
        break;
      }
      keys.push(k.slice());
      // Entries written before the arrival index existed have no seq (0).
      keySeqs.push(v.length === 8 ? Number(new DataView(v.buffer, v.byteOffset, 8).getBigUint64(0)) : 0);
      scanned++;
      if (keys.length === QUERY_FETCH_KEYS_MAX || (!filtered && out.length + keys.length >= limit)) await drain();
    }
    if (keys.length) await drain();
    const lk = lastKey as Uint8Array | null;
    return { events: out, cursor: more && lk ? toHex(lk.subarray(33, 73)) : null, seqs };
  }

  /** A group's events in the order this node indexed them, after arrival seq `after`. */
  async function arrivals(
    q: ArrivalQuery,
  ): Promise<{ events: Uint8Array[]; seqs: number[]; last: number; more: boolean }> {
    const gid = fromHex(q.gid)!;
    const limit = Math.min(q.limit, limits.query_limit_max);
    const ids: Uint8Array[] = [];
    const idSeqs: number[] = [];
    let last = q.after;
    let more = false;
    for await (
      const [k, v] of kv!.range({
        gt: arrivalKey(gid, q.after),
        lt: prefixEnd(arrivalPrefix(gid)),
        limit: QUERY_SCAN_MAX,
      })
    ) {
      if (ids.length >= QUERY_SCAN_MAX) break;
      ids.push(v.slice());
      idSeqs.push(Number(new DataView(k.buffer, k.byteOffset + 33, 8).getBigUint64(0)));
    }
    const values = await kv!.getMany(ids.map((id) => eventKey(id)));
    const events: Uint8Array[] = [];
    const seqs: number[] = [];
    for (let j = 0; j < values.length; j++) {
      if (events.length >= limit) {
        more = true;
        break;
      }
      last = idSeqs[j]!;
      const b = values[j];
      if (!b) continue;
      if (q.since !== undefined || q.kinds?.length || q.authors?.length) {
        const ev = decodeEvent(b, { ...limits, event_bytes_max: b.length });
        if (q.since !== undefined && ev.ts < q.since) continue;
        if (q.kinds?.length && !q.kinds.includes(ev.kind)) continue;
        if (q.authors?.length && !q.authors.includes(toHex(ev.author))) continue;
      }
      events.push(b);
      seqs.push(idSeqs[j]!);
    }
    if (ids.length >= QUERY_SCAN_MAX) more = true;
    return { events, seqs, last, more };
  }

  /** The highest arrival seq of a group (0 if none). */
  async function lastArrival(gidHex: string): Promise<number> {
    const gid = fromHex(gidHex)!;
    for await (
      const [k] of kv!.range({ gte: arrivalPrefix(gid), lt: prefixEnd(arrivalPrefix(gid)), reverse: true, limit: 1 })
    ) {
      return Number(new DataView(k.buffer, k.byteOffset + 33, 8).getBigUint64(0));
    }
    return 0;
  }

  function timeKeyFromCursor(gid: Uint8Array, cursor: string): Uint8Array {
    const b = fromHex(cursor);
    if (!b || b.length !== 40) throw new XfError("BAD_QUERY", `Cannot use cursor "${cursor}": not 80 hex digits`);
    const ts = Number(new DataView(b.buffer).getBigUint64(0));
    return timeKey(gid, ts, b.subarray(8));
  }

  return {
    async start(st: IndexState, config: { limits: Limits; dir?: unknown }) {
      limits = config.limits;
      const dir = config.dir as string | null;
      if (dir) await Deno.mkdir(dir, { recursive: true });
      kv = dir ? await openRocks(dir) : new MemoryKv();
      const cp = await kv.get(CHECKPOINT);
      checkpoint = cp ? Number(new DataView(cp.buffer, cp.byteOffset, 8).getBigUint64(0)) : 0;
      openedAt = checkpoint;
      contiguous = new SeqRanges(checkpoint, decodeRanges(await kv.get(ABOVE)));
      flushes = new FlushTracker(kv, checkpoint);
      trees = new GroupTrees(kv);
      // Trees written by an older format are rebuilt from the time index before anything reads them.
      const migrated = await trees.migrate();
      if (migrated.length > 0) console.error(`Rebuilt ${migrated.length} Merkle trees in format ${MERKLE_FORMAT}`);
      deletedFilter = await buildDeletedFilter(kv);
      // Groups with retention settings: pruned now and every retention_prune_ms.
      for await (const [k] of kv.range({ gte: SETTINGS_PREFIX, lt: prefixEnd(SETTINGS_PREFIX), values: false })) {
        retaining.add(new TextDecoder().decode(k.subarray(SETTINGS_PREFIX.length)));
      }
      const visit = () => {
        serial(() => rebound([...retaining])).catch(() => {});
        for (const gid of retaining) prune(gid);
      };
      pruneTimer = setInterval(visit, limits.retention_prune_ms);
      later(visit);
      Deno.unrefTimer(pruneTimer);
      st.checkpoint = checkpoint;
      // In the background: the filter of every id held, for ingest (until it arrives ingest asks for each batch).
      buildFilter(kv, limits).then(
        (f) => f && ctx.receive({ type: "filter", bits: f.bits, count: f.count } satisfies FilterBuilt),
        () => {/* the store closed under it: ingest keeps asking */},
      );
    },
    async run(eff: IndexEffect): Promise<IndexIn | void> {
      if (eff.do === "write") return await write(eff.toks, eff.batches);
    },
    async call(raw: { type: string } & Record<string, unknown>) {
      const msg = raw as unknown as IndexCall & { after?: number };
      if (msg.after && checkpoint < msg.after) await caughtUp(msg.after);
      switch (msg.type) {
        case "index.has": {
          // Held, deleted (a confirmed entry in the deleted set), or absent. An id only pending tombstones name
          // is absent here: it goes on, and the index's write judges those tombstones against it.
          const ids: Uint8Array[] = [];
          for (let i = 0; i < msg.ids.length; i += 32) ids.push(msg.ids.subarray(i, i + 32));
          const held = await kv!.getMany(ids.map((id) => eventKey(id)));
          const out: Presence[] = [];
          for (let i = 0; i < ids.length; i++) {
            if (held[i] !== undefined) out.push(PRESENCE.held);
            else if (deletedFilter.mayHave(ids[i]!) && await isDeleted(kv!, ids[i]!)) out.push(PRESENCE.deleted);
            else out.push(PRESENCE.absent);
          }
          return out;
        }
        case "index.deletedIn": {
          // The group of a tombstone that deleted this event here (a confirmed entry), or null.
          const id = fromHex(msg.id);
          if (!id || id.length !== 32) {
            throw new XfError("BAD_EVENT_ID", `Cannot read event "${msg.id}": not 64 hex digits`);
          }
          if (!deletedFilter.mayHave(id)) return null;
          for (const [x, confirmed] of await deletedEntries(kv!, id)) {
            if (!confirmed) continue;
            const b = await kv!.get(eventKey(fromHex(x)!));
            if (b && b.length >= 36) return toHex(b.subarray(4, 36));
          }
          return null;
        }
        case "index.targets": {
          // Decode judges a tombstone against the targets held here: group, author, kind of each (null: not held).
          const ids: Uint8Array[] = [];
          for (let i = 0; i < msg.ids.length; i += 32) ids.push(msg.ids.subarray(i, i + 32));
          const got = await kv!.getMany(ids.map((id) => eventKey(id)));
          return got.map((b, i): TargetWire => {
            // Damaged bytes fail the answer: decode then counts the targets as not held and the index judges.
            if (b) intact(b, ids[i]!, "judge a tombstone");
            const t = b && targetOf(b, ids[i]!);
            return t ? { group: toHex(t.group), author: toHex(t.author), kind: t.kind, ts: t.ts } : null;
          });
        }
        case "index.groups":
          return await Promise.all(msg.gids.map(async (g) => {
            const r = await group(g);
            return r ? { owner: r.owner, policy: r.policy } : null;
          }));
        case "index.get": {
          const id = fromHex(msg.id);
          if (!id || id.length !== 32) {
            throw new XfError("BAD_EVENT_ID", `Cannot read event "${msg.id}": not 64 hex digits`);
          }
          return (await kv!.get(eventKey(id))) ?? null;
        }
        case "index.query":
          if (!(await group(msg.query.gid))) return null;
          return await query(msg.query);
        case "index.arrivals":
          if (!(await group(msg.query.gid))) return null;
          return await arrivals(msg.query);
        case "index.lastArrival":
          return await lastArrival(msg.gid);
        case "index.groupInfo": {
          // Name, policy, count, root and roles of the groups `key` may read (others are left out).
          const key = fromHex(msg.key || "00".repeat(32));
          const out: GroupInfoView[] = [];
          for (const gid of msg.gids.slice(0, GROUP_INFO_MAX)) {
            const g = await group(gid);
            const st = await stateOf(gid);
            if (!g || !st || !key || key.length !== 32 || !st.canRead(key)) continue;
            const r = await trees!.root(gid);
            const admins = new Set(st.admins());
            const members = [
              { key: g.owner, role: "owner" as const },
              ...[...new Set([...st.admins(), ...st.members()])].filter((k) => k !== g.owner).sort().map((k) => ({
                key: k,
                role: admins.has(k) ? "admin" as const : "member" as const,
              })),
            ];
            out.push({
              id: gid,
              name: g.name,
              policy: g.policy,
              owner: g.owner,
              count: r.count,
              root: r.root,
              members,
            });
          }
          return out;
        }
        case "index.checkpoint":
          return checkpoint;
        case "index.skip": {
          // A poison event set aside as a dead letter (actors/root.ts `dead`): its seq counts as handled, so the
          // checkpoint does not wait on it. Between writes (a write's checkpoint is computed and stored in one piece),
          // and stored even when a hole below keeps the checkpoint where it is (`ABOVE`).
          const seqs = [...(msg.seqs as unknown as Float64Array)].filter((q) => Number.isSafeInteger(q) && q > 0);
          return await serial(async () => {
            const next = contiguous.peek(seqs);
            await kv!.batch([
              { type: "put", key: CHECKPOINT, value: u64be(next) },
              { type: "put", key: ABOVE, value: encodeRanges(contiguous.above()) },
            ], { sync: false });
            flushes!.written(2, checkpoint, next);
            checkpoint = contiguous.commit();
            wake();
            return checkpoint;
          });
        }
        case "index.drop": {
          // Damaged events leave the events keyspace (their ids stay in the Merkle tree): a peer's copy is
          // then stored like a new event, and the damaged bytes are never served.
          const ops: KvOp[] = [];
          for (let i = 0; i < msg.ids.length; i += 32) {
            ops.push({ type: "del", key: eventKey(msg.ids.subarray(i, i + 32)) });
          }
          await kv!.batch(ops, { sync: true });
          return ops.length;
        }
        case "index.durable":
          // The checkpoint RocksDB holds in its table files: the WAL may drop what it covers.
          return flushes!.durable();
        case "index.merkle":
          if (!(await group(msg.gid))) return null;
          return await trees!.root(msg.gid);
        case "index.proof":
          if (!(await group(msg.gid))) return null;
          return await trees!.prove(msg.gid, msg.id);
        case "index.fsck":
          if (!(await group(msg.gid))) return null;
          return await trees!.fsck(msg.gid);
        case "index.retained":
          return await retainedOf(msg.gid);
        case "index.fsckDeleted":
          return await fsckDeleted(kv!);
        case "index.scan": {
          // Read every key and value once (RocksDB verifies each block's checksum): fsck's store-wide pass.
          let keys = 0;
          let last: Uint8Array | null = null;
          try {
            for await (const [k] of kv!.range({})) {
              keys++;
              last = k.slice();
            }
            return { ok: true, keys };
          } catch (e) {
            return {
              ok: false,
              keys,
              problem: `RocksDB unreadable after ${keys} keys (last key ${last ? toHex(last) : "none"}): ${
                (e as Error).message
              }`,
            };
          }
        }
        case "index.getMany": {
          const keys: Uint8Array[] = [];
          for (let i = 0; i < msg.ids.length; i += 32) keys.push(eventKey(msg.ids.subarray(i, i + 32)));
          if (msg.bytesMax === undefined) return (await kv!.getMany(keys)).map((v) => v ?? null);
          // Bounded in bytes: answers a prefix of the ids, stopping once bytesMax is passed.
          const out: (Uint8Array | null)[] = [];
          let bytes = 0;
          for (let i = 0; i < keys.length && bytes < msg.bytesMax; i += 64) {
            for (const v of await kv!.getMany(keys.slice(i, i + 64))) {
              if (bytes >= msg.bytesMax) break;
              out.push(v ?? null);
              bytes += v?.length ?? 0;
            }
          }
          return out;
        }
        case "index.reconcile": {
          // A group this node does not hold yet reconciles as the empty set (joining).
          const known = await group(msg.gid);
          if (!known && !msg.session) return null;
          const opts = {
            ...(msg.frameSizeLimit !== undefined ? { frameSizeLimit: msg.frameSizeLimit } : {}),
            ...(msg.since !== undefined ? { since: msg.since } : {}),
            ...(msg.until !== undefined ? { until: msg.until } : {}),
          };
          return reconciles.step(known ? await trees!.tree(msg.gid) : null, msg.session, msg.msg, opts);
        }
        case "index.access": {
          const st = await stateOf(msg.gid);
          const key = fromHex(msg.key || "00".repeat(32));
          // `exists` is for the node's own decisions; callers never show it to a reader who may not read.
          if (!st || !key || key.length !== 32 || !st.canRead(key)) {
            return { exists: !!st, readable: false, root: "", count: 0, policy: -1 };
          }
          const r = await trees!.root(msg.gid);
          return { exists: true, readable: true, root: r.root, count: r.count, policy: st.policy };
        }
        case "index.groupStates": {
          // Decode's first touch of a group since start: its owner, policy and membership, or null.
          const out: LoadedGroup[] = [];
          for (const gid of msg.gids.slice(0, limits.decode_groups_max)) {
            const s = await stateOf(gid);
            const retained = s && (await settingsOf(gid)) ? await retainedOf(gid) : 0;
            out.push(retained ? [gid, s ? s.toJSON() : null, retained] : [gid, s ? s.toJSON() : null]);
          }
          return out;
        }
        case "index.peers.load": {
          const g = fromHex(msg.gid);
          if (!g || g.length !== 32) throw new XfError("BAD_GROUP_ID", `Cannot load peers of group "${msg.gid}"`);
          return (await kv!.get(peerKey(g, ROUTING_TABLE_ID))) ?? null;
        }
        case "index.peers.save": {
          const g = fromHex(msg.gid);
          if (!g || g.length !== 32) throw new XfError("BAD_GROUP_ID", `Cannot save peers of group "${msg.gid}"`);
          await kv!.batch([{ type: "put", key: peerKey(g, ROUTING_TABLE_ID), value: msg.table }], { sync: true });
          return true;
        }
        case "index.admission": {
          // What a peer needs first to accept a group's other events: its manifest, then its membership events.
          const g = await group(msg.gid);
          const st = await stateOf(msg.gid);
          if (!g || !st) return [];
          const ids = [g.manifest, ...st.toJSON().events.map((e) => e.id)].map((h) => eventKey(fromHex(h)!));
          return (await kv!.getMany(ids)).filter((v): v is Uint8Array => v !== undefined);
        }
        case "index.listGroups": {
          const out: string[] = [];
          const lo = new Uint8Array([KS.group]);
          for await (const [k] of kv!.range({ gte: lo, lt: prefixEnd(lo) })) out.push(toHex(k.subarray(1)));
          return out;
        }
        case "index.totals": {
          // Groups held and events in them (the sum of their Merkle counts), for /metrics.
          let n = 0, events = 0;
          const lo = new Uint8Array([KS.group]);
          for await (const [k] of kv!.range({ gte: lo, lt: prefixEnd(lo) })) {
            n++;
            events += await trees!.count(toHex(k.subarray(1)));
          }
          return { groups: n, events };
        }
        case "index.stats":
          return { ...stats, checkpoint, groups: groups.size };
      }
      throw new XfError("INTERNAL", `Index cannot answer "${(msg as { type: string }).type}"`);
    },
    async stop() {
      if (pruneTimer !== null) clearInterval(pruneTimer);
      pruneTimer = null;
      for (const t of soon) clearTimeout(t);
      soon.clear();
      // A prune in progress finishes its write first; then the Merkle journals are checkpointed, so the next
      // start replays none (a failure here loses nothing: the journals stay, and replay at the next load).
      await serial(async () => {
        if (kv === null || trees === null) return;
        const c = trees.checkpointAll();
        if (c.ops.length === 0) return;
        try {
          await kv.batch(c.ops, { sync: true });
          c.commit();
        } catch (e) {
          console.error(`Merkle checkpoint at stop failed (the journal stays): ${(e as Error).message}`);
        }
      });
      // A background compaction finishes before RocksDB closes under it (one still waiting for reads gives up).
      compactStop.abort();
      await compacting;
      await kv?.close();
      kv = null;
    },
  };
};

export default { logic, effects } satisfies StageModule<IndexState, IndexIn, IndexEffect>;
