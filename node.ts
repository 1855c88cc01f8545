/**
 * A node as a library object: the root actor with its pipeline, and the
 * calls an embedding app makes (publish, get, query, subscribe, Merkle
 * root and proofs, metrics, close).
 *
 * @module
 */

import { fromHex, toHex } from "./core/bytes.ts";
import { Pipeline, type PipelineOptions, STAGES } from "./actors/root.ts";
import type { EventResult } from "./actors/batch.ts";
import type { SubscriptionFilter } from "./actors/advertise.ts";
import type { ArrivalQuery, EventQuery } from "./actors/index.ts";
import type { DeletedSetReport, FsckResult } from "./storage/merkle_store.ts";
import { encodeEvent, type Event } from "./storage/event.ts";
import { generateKeyPair, type KeyPair } from "./storage/ed25519.ts";
import { NodeSync } from "./net/peers.ts";
import type { MerkleRootInfo, NodeCore, NodeHealth } from "./net/node_api.ts";
import type { AppNode } from "./net/app.ts";
import { DhtService } from "./net/dht/service.ts";
import { XfError } from "./core/errors.ts";
import { cborArrayOf } from "./storage/cbor.ts";

/** The CBOR array of already-encoded items that a batch body is (one implementation, in storage/cbor.ts). */
export { cborArrayOf };
import { Histogram } from "./actors/histogram.ts";
import { VERSION } from "./version.ts";
import { sha256 } from "@noble/hashes/sha2";
import { FSCK_TIMEOUT_FACTOR_MAX, METRICS_STAGE_CALL_MS } from "./core/limits.ts";

/** Options of {@linkcode openNode}. */
export type NodeOptions = PipelineOptions & {
  /** The node's Ed25519 identity (peers and clients see its public key); a fresh one if absent. */
  key?: KeyPair;
  /** Groups this node serves beyond those it holds (synced from peers on start). */
  groups?: string[];
};

export type { MerkleRootInfo, NodeHealth };

/** A running node. */
export class XfNode implements NodeCore, AppNode {
  #sync: NodeSync | null = null;
  #dht: DhtService | null = null;
  /** Where peers reach this node, `ws://host:port` ("" until it listens); announced in the DHT. */
  publicUrl = "";
  /** Per event stored from a peer's frame: seconds from the frame's arrival to stored. */
  readonly syncDeliverySeconds: Histogram = new Histogram();
  /** Per live batch written to a client stream: seconds from the hub receiving it (indexed) to the write. */
  readonly streamDeliverySeconds: Histogram = new Histogram();
  /** When the node opened (performance.now() ms). */
  readonly #opened = performance.now();
  #disk: { bytes: number; at: number; walking: Promise<number> | null } = { bytes: -1, at: 0, walking: null };
  #totals: { groups: number; events: number; at: number } | null = null;

  /** @internal */
  constructor(readonly pipeline: Pipeline, readonly key: KeyPair, private readonly extraGroups: string[] = []) {}

  /** Peer sync: sessions, peers, progress events (`node.sync.events`). */
  get sync(): NodeSync {
    return this.#sync ??= new NodeSync(this, this.extraGroups);
  }

  /** The per-group DHT: routing tables, announcements, lookups, discovery (`node.dht.join(gid, bootstrap)`). */
  get dht(): DhtService {
    return this.#dht ??= new DhtService(this);
  }

  /**
   * Resolves once `gid` has been synced with a peer (dialed with `node.sync.dial(url)` or found through the DHT)
   * and is held here: await it before the first post to a group that is joining.
   */
  whenSynced(gid: string, timeoutMs?: number): Promise<void> {
    return this.sync.whenSynced(gid, timeoutMs);
  }

  /** Whether `key` (hex; "" for nobody) may read the group, with its root and count. */
  access(
    gid: string,
    key: string,
  ): Promise<{ exists: boolean; readable: boolean; root: string; count: number; policy: number }> {
    return this.pipeline.index({ type: "index.access", gid, key });
  }

  /** The node's limits in force. */
  get limits(): Pipeline["limits"] {
    return this.pipeline.limits;
  }

  /**
   * Publish one event or several; resolves with one result per event, in
   * order, once each is durable (`stored`), a `duplicate`, or `rejected`.
   */
  publish(events: Uint8Array | Event | (Uint8Array | Event)[], gid?: Uint8Array): Promise<EventResult[]> {
    const list = Array.isArray(events) ? events : [events];
    const bytes = list.map((e) => (e instanceof Uint8Array ? e : encodeEvent(e)));
    return this.pipeline.submit(gid ?? null, Array.isArray(events) ? cborArrayOf(bytes) : bytes[0]!);
  }

  /**
   * Submit a raw request body (an event or a CBOR array of events), as HTTP does: `reader` (the token's hex key,
   * "" anonymous) must be able to see the group `gid`, else the request is UNKNOWN_GROUP; null skips the check.
   */
  submit(gid: Uint8Array | null, body: Uint8Array, reader: string | null = null): Promise<EventResult[]> {
    return this.pipeline.submit(gid, body, reader);
  }

  /** One event's bytes by hex id, or null. */
  get(id: string): Promise<Uint8Array | null> {
    return this.pipeline.index<Uint8Array | null>({ type: "index.get", id });
  }

  /**
   * The lowest `ts` group `gid` retains (0: everything, or no such group): application events older are forgotten
   * and refused (`EXPIRED`). A function of the group's settings and event set alone, so peers holding the same set
   * agree; the range both of two peers retain is `[max of their boundaries, ∞)`.
   */
  retained(gid: string): Promise<number> {
    return this.pipeline.index<number>({ type: "index.retained", gid });
  }

  /**
   * The hex group of the tombstone that deleted event `id` here, or null when no tombstone held deleted it (an
   * event never seen, or one only a tombstone not yet judged against it names).
   */
  deletedIn(id: string): Promise<string | null> {
    return this.pipeline.index<string | null>({ type: "index.deletedIn", id });
  }

  /** A page of a group's events in `(ts, id)` order; null if the group is unknown. */
  query(q: EventQuery): Promise<{ events: Uint8Array[]; cursor: string | null; seqs: number[] } | null> {
    return this.pipeline.index({ type: "index.query", query: q });
  }

  /** A page of a group's events in the order this node indexed them, after arrival seq `q.after`. */
  arrivals(
    q: ArrivalQuery,
  ): Promise<{ events: Uint8Array[]; seqs: number[]; last: number; more: boolean } | null> {
    return this.pipeline.index({ type: "index.arrivals", query: q });
  }

  /** The highest arrival seq of a group's events on this node (0 if none). */
  lastArrival(gid: string): Promise<number> {
    return this.pipeline.index({ type: "index.lastArrival", gid });
  }

  /** Merkle root of a group; null if the group is unknown. */
  merkle(gid: string): Promise<MerkleRootInfo | null> {
    return this.pipeline.index({ type: "index.merkle", gid });
  }

  /** Inclusion proof of an event in a group; null if either is unknown. */
  proof(gid: string, id: string): Promise<Uint8Array | null> {
    return this.pipeline.index({ type: "index.proof", gid, id });
  }

  /**
   * Check a group: rebuild its tree from its time index and compare every page, and read and hash every event
   * the tree or the index names; lists damaged or missing events (restorable from peers: their ids are known).
   * Null if the group is unknown.
   */
  fsck(gid: string): Promise<FsckResult | null> {
    return this.pipeline.index(
      { type: "index.fsck", gid },
      this.pipeline.limits.request_timeout_ms * FSCK_TIMEOUT_FACTOR_MAX,
    );
  }

  /**
   * Ids of damaged events each group waits to get back from peers (see {@linkcode XfNode.restore}); in memory
   * only: after a restart, `restore` (fsck) finds them again, as events missing from the store.
   */
  readonly restoring: Map<string, Set<string>> = new Map();

  /**
   * Check a group (as {@linkcode XfNode.fsck}) and ask peers for what is damaged: every damaged or missing event
   * whose id is known is dropped from the store (its id stays in the Merkle tree) and asked for by id (`want`)
   * from every peer this node syncs the group with, now and in later sessions, until one sends it (its id is
   * the SHA-256 of its bytes, so any peer's copy is verifiable). Null if the group is unknown.
   */
  async restore(gid: string): Promise<{ damaged: number; asked: number } | null> {
    const f = await this.fsck(gid);
    if (!f) return null;
    const ids = f.damaged.filter((d) => d.restorable).map((d) => d.id);
    if (ids.length === 0) return { damaged: f.damagedCount, asked: 0 };
    const flat = new Uint8Array(ids.length * 32);
    ids.forEach((h, i) => flat.set(fromHex(h)!, i * 32));
    await this.pipeline.index({ type: "index.drop", ids: flat });
    this.pipeline.release(flat, false);
    const set = this.restoring.get(gid) ?? new Set<string>();
    for (const h of ids) set.add(h);
    this.restoring.set(gid, set);
    this.sync.want(gid, ids.map((h) => fromHex(h)!));
    return { damaged: f.damagedCount, asked: ids.length };
  }

  /** Check the deleted set whole: every entry's tombstone is held and names it, and no deleted event is held. */
  fsckDeleted(): Promise<DeletedSetReport> {
    return this.pipeline.index(
      { type: "index.fsckDeleted" },
      this.pipeline.limits.request_timeout_ms * FSCK_TIMEOUT_FACTOR_MAX,
    );
  }

  /** Read every key and value of the store once (each block's checksum is verified); the first failure. */
  scan(): Promise<{ ok: boolean; keys: number; problem?: string }> {
    return this.pipeline.index(
      { type: "index.scan" },
      this.pipeline.limits.request_timeout_ms * FSCK_TIMEOUT_FACTOR_MAX,
    );
  }

  /**
   * Receive events as they are indexed, with the arrival seq each was indexed under (what a stream resumes
   * from); returns the unsubscribe function.
   */
  subscribe(
    filter: SubscriptionFilter,
    cb: (events: Uint8Array[], seqs: number[]) => void,
  ): Promise<() => Promise<void>> {
    return this.pipeline.subscribe(filter, cb);
  }

  /** Seconds since the node opened. */
  uptime(): number {
    return (performance.now() - this.#opened) / 1000;
  }

  /** Liveness and readiness of every stage, and who this node is (key, node id, version, uptime). */
  health(): NodeHealth {
    const stages: Record<string, { state: string; mailbox: number; restarts: number }> = {};
    for (const s of STAGES) {
      const c = this.pipeline.supervisor.child(s);
      const mailbox = (this.pipeline.lastTimings[s]?.mailbox ?? 0) +
        (s === "ingest" ? this.pipeline.waitingBytes() : 0);
      stages[s] = { state: c.state, mailbox, restarts: c.stats.restarts };
    }
    const ready = this.pipeline.state === "ready" && Object.values(stages).every((s) => s.state === "up");
    return {
      status: this.pipeline.state,
      ready,
      stages,
      recovery: this.pipeline.recovery,
      key: toHex(this.key.publicKey),
      nodeId: toHex(sha256(this.key.publicKey)),
      version: VERSION,
      uptime: Math.round(this.uptime()),
      storage: this.pipeline.storageFull ? "full" : "ok",
      deadLetters: { count: this.pipeline.counters.deadLetters, recent: this.pipeline.deadLetters.slice(-10) },
    };
  }

  /**
   * Bytes under the data directory, walked at most every `metrics_disk_walk_ms` (the walk runs in the
   * background meanwhile; only the first one is awaited).
   */
  async #dataBytes(): Promise<number> {
    const d = this.#disk;
    const stale = d.bytes < 0 || performance.now() - d.at >= this.limits.metrics_disk_walk_ms;
    if (stale && !d.walking) {
      d.walking = walkBytes(this.pipeline.opts.dataDir, this.limits.metrics_disk_walk_entries_max).then((n) => {
        d.bytes = n;
        d.at = performance.now();
        return n;
      }).finally(() => d.walking = null);
    }
    return d.bytes < 0 && d.walking ? await d.walking : d.bytes;
  }

  /** Groups held and events in them (sum of Merkle counts), counted at most every `metrics_totals_ms`. */
  async #groupTotals(): Promise<{ groups: number; events: number }> {
    const t = this.#totals;
    if (t && performance.now() - t.at < this.limits.metrics_totals_ms) return t;
    const r = await this.pipeline.index<{ groups: number; events: number }>({ type: "index.totals" });
    this.#totals = { ...r, at: performance.now() };
    return r;
  }

  /** Prometheus text exposition of the node's figures. */
  async metrics(): Promise<string> {
    const p = this.pipeline;
    const c = p.counters;
    const lines: string[] = [];
    const metric = (name: string, type: string, help: string, samples: [string, number][]) => {
      lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
      for (const [labels, v] of samples) lines.push(`${name}${labels} ${v}`);
    };
    const histogram = (name: string, help: string, h: Histogram) => {
      lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} histogram`, ...h.lines(name));
    };
    metric("xf_build_info", "gauge", "Version of this node and of Deno", [[
      `{version="${VERSION}",deno="${Deno.version.deno}"}`,
      1,
    ]]);
    metric("xf_storage_full", "gauge", "1 while the disk is full and writes are refused with STORAGE_FULL", [[
      "",
      this.pipeline.storageFull ? 1 : 0,
    ]]);
    metric("xf_uptime_seconds", "gauge", "Seconds since the node opened", [[
      "",
      Math.round(this.uptime() * 1000) / 1000,
    ]]);
    const timings = await p.timings();
    metric(
      "xf_mailbox_depth",
      "gauge",
      "Batches in each stage's mailbox or in service",
      STAGES.map((s) => [`{stage="${s}"}`, timings[s]?.mailbox ?? 0]),
    );
    for (
      const [kind, help] of [
        ["queue", "Per batch: seconds from its send by the stage before to its start in this stage (queue wait)"],
        ["service", "Per batch: seconds from its start in this stage to its end (service time)"],
      ] as const
    ) {
      lines.push(`# HELP xf_stage_${kind}_seconds ${help}`, `# TYPE xf_stage_${kind}_seconds histogram`);
      for (const s of STAGES) {
        const d = timings[s]?.[kind];
        if (!d) continue;
        const h = new Histogram();
        h.merge(d);
        for (const l of h.lines(`xf_stage_${kind}_seconds`)) {
          lines.push(l.replace(/^(\w+?)(\{|\s)/, (_m, n, c) => `${n}{stage="${s}"${c === "{" ? "," : "} "}`));
        }
      }
    }
    metric(
      "xf_memory_reliefs_total",
      "counter",
      "Garbage collections asked of every isolate as RSS neared the budget",
      [[
        "",
        p.memoryReliefs,
      ]],
    );
    metric("xf_dead_letters_total", "counter", "Batches set aside after crashing a stage twice", [[
      "",
      c.deadLetters,
    ]]);
    metric(
      "xf_index_isolations_total",
      "counter",
      "Acknowledged events of batches the index crashed on twice, sent to it again one at a time from the WAL",
      [["", c.isolated]],
    );
    metric(
      "xf_stage_restarts_total",
      "counter",
      "Restarts of each stage",
      STAGES.map((s) => [`{stage="${s}"}`, p.supervisor.child(s).stats.restarts]),
    );
    metric("xf_requests_total", "counter", "Publish requests admitted", [["", c.requests]]);
    metric("xf_requests_overloaded_total", "counter", "Requests refused with 503", [["", c.overloaded]]);
    metric("xf_events_in_total", "counter", "Events received", [["", c.eventsIn]]);
    metric("xf_events_out_total", "counter", "Events answered, by status", [
      ['{status="stored"}', c.stored],
      ['{status="duplicate"}', c.duplicates],
      ['{status="rejected"}', Object.values(c.rejected).reduce((a, b) => a + b, 0)],
    ]);
    metric(
      "xf_events_rejected_total",
      "counter",
      "Rejected events by code",
      Object.entries(c.rejected).map(([k, v]) => [`{code="${k}"}`, v]),
    );
    metric("xf_inflight_events", "gauge", "Events admitted and not yet indexed", [["", p.inflight()]]);
    metric("xf_events_indexed_total", "counter", "Events written to the index", [["", c.indexed]]);
    metric(
      "xf_index_batches_total",
      "counter",
      "RocksDB index batches (mean events per batch: xf_events_indexed_total / xf_index_batches_total)",
      [["", c.indexBatches]],
    );
    histogram(
      "xf_ack_seconds",
      "Per event acknowledged (stored or duplicate): seconds from its request's admission to its durable acknowledgement",
      p.ackSeconds,
    );
    histogram(
      "xf_sync_delivery_seconds",
      "Per event stored from a peer's events frame: seconds from the frame's arrival to stored",
      this.syncDeliverySeconds,
    );
    histogram(
      "xf_stream_delivery_seconds",
      "Per live batch written to a client stream: seconds from the stream hub receiving it (indexed) to the write",
      this.streamDeliverySeconds,
    );
    try {
      const t = await this.#groupTotals();
      metric("xf_groups", "gauge", "Groups this node holds", [["", t.groups]]);
      metric("xf_events", "gauge", "Events this node holds: the sum of its groups' Merkle counts", [["", t.events]]);
    } catch { /* index down: missing from this scrape */ }
    metric("xf_data_bytes", "gauge", "Bytes of files under the data directory (walked at most every 30 s)", [[
      "",
      Math.max(0, await this.#dataBytes()),
    ]]);
    try {
      const w = await p.supervisor.child("wal_flush").call<
        { syncs: number; records: number; bytes: number; lastSeq: number; checkpoint: number }
      >(
        { type: "wal.stats" },
        METRICS_STAGE_CALL_MS,
      );
      metric("xf_wal_syncs_total", "counter", "WAL fdatasync calls (group commits)", [["", w.syncs]]);
      metric(
        "xf_wal_records_total",
        "counter",
        "WAL records appended (mean records per group commit: xf_wal_records_total / xf_wal_syncs_total)",
        [["", w.records]],
      );
      metric("xf_wal_last_seq", "gauge", "Last WAL sequence number", [["", w.lastSeq]]);
      metric("xf_wal_checkpoint_seq", "gauge", "WAL sequence number the index holds", [["", w.checkpoint]]);
    } catch { /* stage down: its figures are missing from this scrape */ }
    if (this.#sync) {
      const sc = this.#sync.counters;
      metric("xf_sync_sessions", "gauge", "Open sync sessions", [["", this.#sync.sessions.size]]);
      metric("xf_sync_sessions_total", "counter", "Sync sessions opened", [["", sc.sessionsOpened]]);
      metric("xf_sync_sessions_refused_total", "counter", "Sync sessions refused (limit)", [["", sc.sessionsRefused]]);
      metric("xf_sync_events_received_total", "counter", "Events received from peers", [["", sc.eventsReceived]]);
      metric("xf_sync_missing_events", "gauge", "Events found missing and asked of peers (current syncs)", [[
        "",
        sc.missing,
      ]]);
      metric("xf_sync_received_events", "gauge", "Of those, received (never more than xf_sync_missing_events)", [[
        "",
        sc.received,
      ]]);
      metric("xf_sync_remaining_events", "gauge", "Of those, still to come", [["", sc.progressRemaining]]);
    }
    if (this.#dht) lines.push(...(await this.#dht.metrics()));
    return lines.join("\n") + "\n";
  }

  /** Stop cleanly: peers are told, in-flight writes finish, the WAL is synced, RocksDB is closed. */
  async close(): Promise<void> {
    await this.#dht?.close();
    this.#sync?.close();
    return await this.pipeline.stop();
  }
}

/** Bytes of the files under `dir`, visiting at most `entriesMax` entries (symbolic links are not followed). */
async function walkBytes(dir: string, entriesMax: number): Promise<number> {
  let bytes = 0, seen = 0;
  const stack = [dir];
  while (stack.length && seen < entriesMax) {
    const d = stack.pop()!;
    try {
      for await (const e of Deno.readDir(d)) {
        if (++seen > entriesMax) break;
        const path = `${d}/${e.name}`;
        if (e.isDirectory) stack.push(path);
        else if (e.isFile) bytes += await Deno.lstat(path).then((s) => s.size, () => 0);
      }
    } catch { /* gone meanwhile, or unreadable: not counted */ }
  }
  return bytes;
}

/**
 * Open a node in-process: starts the stages (as Workers by default),
 * recovers the WAL, and returns when ready.
 *
 * @example
 * ```ts ignore
 * import { openNode } from "./mod.ts";
 * const node = await openNode({ dataDir: await Deno.makeTempDir() });
 * await node.close();
 * ```
 */
export async function openNode(opts: NodeOptions): Promise<XfNode> {
  const p = new Pipeline(opts);
  try {
    await p.start();
  } catch (e) {
    await p.stop().catch(() => {});
    throw e instanceof XfError ? e : new XfError("INTERNAL", `Cannot start node: ${(e as Error).message}`);
  }
  return new XfNode(p, opts.key ?? await generateKeyPair(), opts.groups ?? []);
}

export { fromHex, toHex };
