/**
 * A replica that runs in a Worker (`client/replica_worker.ts`: store, sync
 * sessions, checks, IndexedDB, the WebSocket), seen from the page through
 * {@linkcode RemoteReplica}: the same calls as a `Replica`, each a message.
 * The page's main thread then does none of the sync's work (decrypting,
 * hashing, verifying, the Merkle index, IndexedDB writes); it only reads
 * the events it asks for. Messages are plain data; errors cross as
 * `{name, code, message}` and are rebuilt as {@linkcode XfClientError}; a
 * call unanswered in {@linkcode REPLICA_WORKER_CALL_MS} fails with `TIMEOUT`.
 *
 * @module
 */

import type { WireError } from "../core/errors.ts";
import { REPLICA_PAGE_BYTES_MAX, REPLICA_WORKER_CALL_MS } from "../core/limits.ts";
import type { ReplicaQuery } from "../storage/replica_store.ts";
import type { SessionStats } from "../net/sync.ts";
import {
  type ClientEvent,
  type EventDraft,
  groupHex,
  readCheckedEvent,
  readEvent,
  settingsDraft,
  tombstoneDraft,
} from "./event.ts";
import type { Settings } from "../storage/retention.ts";
import { type ClientErrorCode, XfClientError } from "./errors.ts";

/** A node a replica syncs with: its URL (`http(s)://` or `ws(s)://`), and optionally its key (hex) pinned. */
export type ReplicaNode = string | { url: string; key?: string };

/** Sync progress of a replica, over every node. */
export interface ReplicaProgress {
  /** Events reconciliation found missing here. */
  missing: number;
  /** Of those, received. */
  received: number;
  /** Still to come in sessions under way. */
  remaining: number;
  /** Events sent to nodes (each node counted: one event sent to two nodes is 2). */
  sent: number;
  /** Events published here that no node is known to hold yet. */
  unsent: number;
  /** Nodes connected now. */
  online: number;
  /** Every group completed a sync with some node since the replica opened. */
  synced: boolean;
}

/** A session's figures, as `sessions()` answers. */
export interface ReplicaSession {
  node: string;
  peer: string;
  stats: SessionStats;
  wire: { bytesIn: number; bytesOut: number };
}

/** What a replica moved with one node since it opened. */
export interface ReplicaTraffic {
  node: string;
  sessions: number;
  bytesIn: number;
  bytesOut: number;
  /** Reconciliation (`neg`) messages, both ways. */
  negRounds: number;
}

/** What the page sends the Worker. */
export type ToWorker =
  | { id: number; op: "check"; bytes: Uint8Array; ends: Uint32Array }
  | {
    id: number;
    op: "open";
    seed: Uint8Array;
    groups: string[];
    window?: { days?: number; events?: number };
    store?: string;
    nodes: ReplicaNode[];
  }
  | { id: number; op: "call"; method: RemoteMethod; args: unknown[] }
  | { id: number; op: "subscribe"; sub: number; gid: string; backfill: boolean | ReplicaQuery }
  | { id: number; op: "unsubscribe"; sub: number };

/**
 * Events as one message carries them: their bytes end to end (`ends[i]` is where event `i` ends) and their ids
 * (32 bytes each, computed and checked by the Worker), in buffers the Worker transfers.
 */
export interface EventPack {
  bytes: Uint8Array;
  ends: Uint32Array;
  ids: Uint8Array;
}

/**
 * Split events (with their ids, 32 bytes each end to end) into packs of at most `maxBytes` bytes of events each
 * ({@linkcode REPLICA_PAGE_BYTES_MAX}; an event larger than that goes alone), in order: the Worker sends
 * one message per pack, so the page never decodes more than a pack in one task.
 */
export function packEvents(
  events: readonly Uint8Array[],
  ids: Uint8Array,
  maxBytes = REPLICA_PAGE_BYTES_MAX,
): EventPack[] {
  if (ids.length !== events.length * 32) throw new RangeError(`Cannot pack ${events.length} events: ids do not match`);
  const out: EventPack[] = [];
  let i = 0;
  while (i < events.length) {
    let j = i, total = 0;
    while (j < events.length && (j === i || total + events[j]!.length <= maxBytes)) total += events[j++]!.length;
    const bytes = new Uint8Array(total);
    const ends = new Uint32Array(j - i);
    let off = 0;
    for (let k = i; k < j; k++) {
      bytes.set(events[k]!, off);
      ends[k - i] = off += events[k]!.length;
    }
    out.push({ bytes, ends, ids: ids.slice(i * 32, j * 32) });
    i = j;
  }
  return out;
}

/** The events of a pack, read on the page (decoded, not hashed again: the Worker checked them). */
export function unpackEvents(p: EventPack, group?: string): ClientEvent[] {
  const out: ClientEvent[] = [];
  let start = 0;
  for (let i = 0; i < p.ends.length; i++) {
    const end = p.ends[i]!;
    const id = p.ids.subarray(i * 32, i * 32 + 32);
    out.push(readCheckedEvent(p.bytes.subarray(start, end), id, group === undefined ? {} : { group }));
    start = end;
  }
  return out;
}

/** What the Worker sends the page. */
export type FromWorker =
  | { id: number; result?: unknown; error?: WireError; ids?: Uint8Array; errors?: (WireError | null)[] }
  | { id: number; part: EventPack }
  | { event: "progress"; detail: ReplicaProgress }
  | { event: "synced" | "error"; detail: unknown }
  | { event: "events"; sub: number; pack: EventPack };

/** The calls a page may make of its Worker's replica. */
export const REMOTE_METHODS = [
  "publish",
  "add",
  "query",
  "root",
  "bytesOnDisk",
  "sessions",
  "whenSynced",
  "addNode",
  "groups",
  "progress",
  "stats",
  "traffic",
  "close",
] as const;
/** One of {@linkcode REMOTE_METHODS}. */
export type RemoteMethod = typeof REMOTE_METHODS[number];

/** Options of {@linkcode RemoteReplica.open}. */
export interface RemoteOptions {
  seed: Uint8Array;
  groups: string[];
  window?: { days?: number; events?: number };
  /** The IndexedDB database (default `xaeroflux-replica`). */
  store?: string;
  nodes: ReplicaNode[];
}

/** A replica in a Worker, seen from the page: see the module doc. Events: `progress`, `synced`, `error`. */
export class RemoteReplica extends EventTarget {
  readonly #w: Worker;
  readonly #own: boolean;
  #next = 1;
  #calls = new Map<
    number,
    {
      resolve(v: unknown): void;
      reject(e: Error): void;
      timer: ReturnType<typeof setTimeout>;
      group?: string;
      parts?: ClientEvent[];
    }
  >();
  #subs = new Map<number, { gid: string; cb: (events: ClientEvent[]) => void }>();
  #progress: ReplicaProgress = { missing: 0, received: 0, remaining: 0, sent: 0, unsent: 0, online: 0, synced: false };
  #closed = false;

  private constructor(worker: Worker, own: boolean) {
    super();
    this.#w = worker;
    this.#own = own;
    worker.onmessage = (ev: MessageEvent<FromWorker>) => this.#receive(ev.data);
    worker.onerror = (ev) => {
      ev.preventDefault();
      this.#failAll(new XfClientError("INTERNAL", `The replica's Worker failed: ${ev.message}`));
    };
  }

  /** Start the Worker's replica. */
  static async open(worker: Worker, own: boolean, options: RemoteOptions): Promise<RemoteReplica> {
    const r = new RemoteReplica(worker, own);
    try {
      r.#progress = await r.#ask<ReplicaProgress>({ op: "open", ...options }, REPLICA_WORKER_CALL_MS);
    } catch (e) {
      if (own) worker.terminate();
      throw e;
    }
    return r;
  }

  #receive(m: FromWorker) {
    if ("event" in m) {
      if (m.event === "events") {
        // One pack per message (at most REPLICA_PAGE_BYTES_MAX bytes), read and handed on in this task.
        const s = this.#subs.get(m.sub);
        if (!s) return;
        let events: ClientEvent[];
        try {
          events = unpackEvents(m.pack, s.gid);
        } catch (e) {
          this.dispatchEvent(new CustomEvent("error", { detail: (e as Error).message }));
          return;
        }
        s.cb(events);
        return;
      }
      if (m.event === "progress") this.#progress = m.detail;
      this.dispatchEvent(new CustomEvent(m.event, { detail: m.detail }));
      return;
    }
    const c = this.#calls.get(m.id);
    if (!c) return;
    if ("part" in m) {
      // A query's answer comes in packs before its reply: each read in its own task.
      try {
        c.parts!.push(...unpackEvents(m.part, c.group));
      } catch (e) {
        this.#calls.delete(m.id);
        clearTimeout(c.timer);
        c.reject(e as Error);
      }
      return;
    }
    this.#calls.delete(m.id);
    clearTimeout(c.timer);
    if (m.error) c.reject(new XfClientError(m.error.code as ClientErrorCode, m.error.message));
    else c.resolve(c.parts ?? m.result);
  }

  #failAll(e: Error) {
    for (const c of this.#calls.values()) {
      clearTimeout(c.timer);
      c.reject(e);
    }
    this.#calls.clear();
  }

  #ask<T>(msg: Record<string, unknown>, ms: number, group?: string): Promise<T> {
    if (this.#closed) return Promise.reject(new XfClientError("SHUTTING_DOWN", "Cannot use the replica: it is closed"));
    return new Promise<T>((resolve, reject) => {
      const id = this.#next++;
      const timer = setTimeout(() => {
        this.#calls.delete(id);
        reject(new XfClientError("TIMEOUT", `The replica's Worker did not answer "${String(msg.op)}" within ${ms} ms`));
      }, ms);
      this.#calls.set(id, {
        resolve: resolve as (v: unknown) => void,
        reject,
        timer,
        ...(group !== undefined ? { group, parts: [] } : {}),
      });
      this.#w.postMessage({ id, ...msg });
    });
  }

  #call<T>(method: RemoteMethod, args: unknown[] = [], ms = REPLICA_WORKER_CALL_MS): Promise<T> {
    return this.#ask<T>({ op: "call", method, args }, ms);
  }

  /** Sign and store an event at once (see `Replica.publish`). */
  async publish(gid: string | Uint8Array, draft: EventDraft): Promise<ClientEvent> {
    const g = groupHex(gid);
    return await readEvent(await this.#call<Uint8Array>("publish", [g, draft]), { group: g });
  }

  /** Delete events of a group: a tombstone, published here (see `Replica.delete`). */
  delete(
    gid: string | Uint8Array,
    ids: readonly (string | Uint8Array)[],
    options: { ts?: number } = {},
  ): Promise<ClientEvent> {
    return this.publish(gid, tombstoneDraft(ids, options.ts));
  }

  /** Set a group's retention: a settings event, published here (see `Replica.setRetention`). */
  setRetention(gid: string | Uint8Array, settings: Settings, options: { ts?: number } = {}): Promise<ClientEvent> {
    return this.publish(gid, settingsDraft(settings, options.ts));
  }

  /** Store signed events made elsewhere (see `Replica.add`). */
  add(events: Uint8Array[]): Promise<void> {
    return this.#call("add", [events]);
  }

  /** A group's events held here (they come in packs of at most `REPLICA_PAGE_BYTES_MAX` bytes). */
  query(gid: string | Uint8Array, q: ReplicaQuery = {}): Promise<ClientEvent[]> {
    const g = groupHex(gid);
    return this.#ask<ClientEvent[]>({ op: "call", method: "query", args: [g, q] }, REPLICA_WORKER_CALL_MS, g);
  }

  /** Held events, then each batch newly stored; returns the unsubscribe. */
  subscribe(
    gid: string | Uint8Array,
    onEvents: (events: ClientEvent[]) => void,
    options: { backfill?: boolean | ReplicaQuery } = {},
  ): () => void {
    const g = groupHex(gid);
    const sub = this.#next++;
    this.#subs.set(sub, { gid: g, cb: onEvents });
    this.#ask({ op: "subscribe", sub, gid: g, backfill: options.backfill ?? true }, REPLICA_WORKER_CALL_MS).catch(
      () => this.#subs.delete(sub),
    );
    return () => {
      if (!this.#subs.delete(sub)) return;
      this.#ask({ op: "unsubscribe", sub }, REPLICA_WORKER_CALL_MS).catch(() => {});
    };
  }

  /** Root, count and depth of a group's Merkle tree here. */
  root(gid: string | Uint8Array): Promise<{ root: string; count: number; depth: number }> {
    return this.#call("root", [groupHex(gid)]);
  }

  /** Bytes the replica takes on disk (the browser's estimate). */
  bytesOnDisk(): Promise<number> {
    return this.#call("bytesOnDisk");
  }

  /** The current session of each node. */
  sessions(): Promise<ReplicaSession[]> {
    return this.#call("sessions");
  }

  /** Progress as last reported by the Worker (also sent as `progress` events). */
  progress(): ReplicaProgress {
    return this.#progress;
  }

  /** Resolves once every group has completed a sync with some node. */
  whenSynced(ms = 30_000): Promise<void> {
    return this.#call("whenSynced", [ms], ms + REPLICA_WORKER_CALL_MS);
  }

  /** Dial another node. */
  addNode(node: ReplicaNode): Promise<void> {
    return this.#call("addNode", [node]);
  }

  /** Per node since the replica opened: sessions, bytes, reconciliation messages. */
  traffic(): Promise<ReplicaTraffic[]> {
    return this.#call("traffic");
  }

  /** The store's work counters (`ReplicaStore.stats`). */
  stats(): Promise<{ events: number; checkMs: number; writeMs: number; writes: number }> {
    return this.#call("stats");
  }

  /** Groups held and synced. */
  groups(): Promise<string[]> {
    return this.#call("groups");
  }

  /** Close the replica (and the Worker, if `openReplica` started it). */
  async close(): Promise<void> {
    if (this.#closed) return;
    await this.#call("close").catch(() => {});
    this.#closed = true;
    this.#failAll(new XfClientError("SHUTTING_DOWN", "The replica closed"));
    this.#subs.clear();
    if (this.#own) this.#w.terminate();
  }
}
