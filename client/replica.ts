/**
 * The device as a peer: {@linkcode openReplica} keeps a replica of some
 * groups on this device (IndexedDB in a browser), with the node's own
 * Merkle index (`storage/replica_store.ts`), and syncs it with one or more
 * nodes over `/v1/sync` exactly as nodes sync with each other: the same
 * encrypted handshake (`net/secure.ts`, the replica's identity is the
 * user's key, so a closed group's node lets in a member), the same
 * negentropy reconciliation from the replica's own index and the same
 * session (`net/sync.ts`, the replica as initiator), then live events both
 * ways.
 *
 * - **Offline first.** `publish` signs and stores at once, marked unsent
 *   (persisted); `query` and `subscribe` read the replica, so an app renders
 *   with no network. Unsent events go out by sync (a node lacks them, so
 *   reconciliation sends them; nothing is sent twice to a node that holds
 *   one) and are marked sent once a later reconciliation shows a node holds
 *   them (a confirming session follows {@linkcode REPLICA_CONFIRM_MS} after
 *   events went out).
 * - **Nodes.** Each node is dialed and kept: on a drop it is dialed again
 *   with backoff ({@linkcode PEER_BACKOFF_BASE_MS} doubling up to
 *   `peer_backoff_max_ms`), at once when the browser says it is online. A
 *   node the replica dials holds its groups for it: the replica sends it
 *   their events (pin its key with `{url, key}` to refuse any other). A
 *   group created on this device is handed to a node by HTTP first (a node
 *   takes a new group only by its manifest, never from a peer's sync).
 * - **Checks off the main thread.** Every event (received or published) is
 *   hashed, decoded and verified by the store's checker. Pass `worker` (the
 *   bundled `xaeroflux-replica-worker.js`) and the whole replica runs in a
 *   Worker ({@linkcode RemoteReplica} is the page's side): the main thread
 *   does none of the sync's work.
 * - **Window.** `window: {days, events}` keeps only recent app events. A
 *   window of days is reconciled as a range (partial sync,
 *   {@linkcode Replica.syncRange}): older events are never fetched, and
 *   after each sync the replica prunes those that aged out (their ids stay
 *   in the Merkle set, so they are not fetched again). A window of `events`
 *   syncs the whole group and prunes to the newest N.
 *
 * @module
 */

import { type CheckedBatch, type EventChecker, type ReplicaQuery, ReplicaStore } from "../storage/replica_store.ts";
import { type Kv, MemoryKv } from "../storage/kv.ts";
import { openIndexedDb } from "../storage/kv_idb.ts";
import { ByteBudget, type SyncHost, type SyncReport, SyncSession } from "../net/sync.ts";
import { socketChannel } from "../net/channel.ts";
import { fromWire, type WireError, XfError } from "../core/errors.ts";
import {
  LIMITS,
  PEER_BACKOFF_BASE_MS,
  PEER_CONNECT_MS,
  REPLICA_CONFIRM_MS,
  REPLICA_NODES_MAX,
  REPLICA_WORKER_CALL_MS,
} from "../core/limits.ts";
import { toHex } from "../core/bytes.ts";
import { sha256 } from "@noble/hashes/sha2";
import {
  RemoteReplica,
  type ReplicaNode,
  type ReplicaProgress,
  type ReplicaSession,
  type ReplicaTraffic,
} from "./replica_remote.ts";
import type { KeyPair } from "../storage/ed25519.ts";
import {
  type ClientEvent,
  type EventDraft,
  groupHex,
  readEvent,
  settingsDraft,
  signEvent,
  tombstoneDraft,
} from "./event.ts";
import type { Settings } from "../storage/retention.ts";
import { XfClientError } from "./errors.ts";
import { XfClient } from "./client.ts";

export { REPLICA_CONFIRM_MS };

export type { ReplicaNode, ReplicaProgress, ReplicaSession, ReplicaTraffic };
export { RemoteReplica };

/** Options of {@linkcode openReplica}. */
export interface ReplicaOptions {
  /** The user's key: signs what is published and proves membership in the handshake. */
  key: KeyPair;
  /** Groups to hold and sync (hex ids). */
  groups?: string[];
  /** Keep only recent app events: the last `days` days and/or the newest `events` events of each group. */
  window?: { days?: number; events?: number };
  /**
   * Where the replica lives: a {@linkcode Kv}, or the name of an IndexedDB database. Default: IndexedDB
   * `xaeroflux-replica` where the runtime has it, else memory.
   */
  store?: Kv | string;
  /** Nodes to sync with (at most {@linkcode REPLICA_NODES_MAX}); none: offline until {@linkcode Replica.addNode}. */
  nodes?: ReplicaNode[];
  /**
   * A Worker (or its script URL) running `client/replica_worker.ts` (bundled as `xaeroflux-replica-worker.js`):
   * the whole replica runs there and {@linkcode openReplica} answers a {@linkcode RemoteReplica}; `store` must
   * then be an IndexedDB name. Default: this thread.
   */
  worker?: Worker | string | URL;
  /** A Worker (or its URL) running `client/replica_worker.ts` that only checks events (ids, signatures). */
  checkWorker?: Worker | string | URL;
  /** The clock (default `Date.now`). */
  now?: () => number;
}

interface NodeLink {
  url: string;
  key: string | null;
  session: SyncSession | null;
  stop: boolean;
  attempts: number;
  /** When a confirming session should run (0: none due). */
  confirmAt: number;
  /** Ids each group's last reconciliation with this node sent (to tell a refused event from a new one). */
  lastSent: Map<string, Set<string>>;
  wake: (() => void) | null;
  lastError: string;
  /** Events sent to this node by sessions that ended. */
  sentBefore: number;
  /** What sessions that ended moved: sessions, bytes on the wire, reconciliation messages. */
  before: { sessions: number; bytesIn: number; bytesOut: number; negRounds: number };
}

/** A replica: see the module doc. Events: `progress` (detail: {@linkcode ReplicaProgress}), `synced`, `error`. */
export class Replica extends EventTarget {
  readonly store: ReplicaStore;
  readonly key: KeyPair;
  #groups: string[];
  readonly #window: ReplicaOptions["window"];
  readonly #nodes: NodeLink[] = [];
  readonly #memory = new ByteBudget(LIMITS.sync_memory_bytes_max);
  readonly #progress = new Map<string, { missing: number; received: number; done: boolean }>();
  readonly #syncedGroups = new Set<string>();
  readonly #now: () => number;
  readonly #indexedDb: boolean;
  #unsent = 0;
  #closed = false;
  #onOnline = () => this.#wakeAll();
  #release: () => void;

  /** @internal Use {@linkcode openReplica}. */
  constructor(
    store: ReplicaStore,
    options: ReplicaOptions & { indexedDb: boolean; release: () => void },
  ) {
    super();
    this.store = store;
    this.key = options.key;
    this.#groups = [...new Set((options.groups ?? []).map((g) => groupHex(g)))];
    this.#window = options.window;
    this.#now = options.now ?? Date.now;
    this.#indexedDb = options.indexedDb;
    this.#release = options.release;
    const g = globalThis as { addEventListener?: (t: string, f: () => void) => void };
    g.addEventListener?.("online", this.#onOnline);
  }

  /** Groups held and synced. */
  groups(): string[] {
    return [...this.#groups];
  }

  /** Count unsent events (at open, and after some were marked sent). */
  async init(): Promise<void> {
    let n = 0;
    for (const g of this.#groups) n += (await this.store.unsent(g)).length;
    this.#unsent = n;
  }

  // ---- writing (offline first) ----

  /**
   * Sign an event of `gid` with the replica's key and store it here at once (durably, marked unsent);
   * it goes to nodes by sync. Throws {@linkcode XfClientError} with the code when the replica refuses it
   * (`FORBIDDEN` for a non-member of a closed group, `UNKNOWN_GROUP` for a group not held …).
   */
  async publish(gid: string | Uint8Array, draft: EventDraft): Promise<ClientEvent> {
    const e = await signEvent(this.key, gid, draft);
    await this.add([e.bytes]);
    return e;
  }

  /**
   * Delete events of group `gid` (1 to 256 ids, hex or bytes), as `XfClient.delete` does: sign a tombstone (kind 2)
   * naming them and store it here at once; the targets held leave the store, its Merkle set and the unsent events,
   * and each is refused `DELETED` if it arrives again. Throws {@linkcode XfClientError} `FORBIDDEN` when a target
   * held is not the replica key's own and the key is not the owner's or an admin's (or it is an engine event).
   */
  async delete(
    gid: string | Uint8Array,
    ids: readonly (string | Uint8Array)[],
    options: { ts?: number } = {},
  ): Promise<ClientEvent> {
    return await this.publish(gid, tombstoneDraft(ids, options.ts));
  }

  /**
   * Set group `gid`'s retention, as `XfClient.setRetention` does (the replica's key must be the owner's or an
   * admin's, else `FORBIDDEN`): sign a settings event (kind 3) and store it here at once; this replica, like every
   * node, then forgets the group's application events past the boundary.
   */
  async setRetention(
    gid: string | Uint8Array,
    settings: Settings,
    options: { ts?: number } = {},
  ): Promise<ClientEvent> {
    return await this.publish(gid, settingsDraft(settings, options.ts));
  }

  /**
   * Store signed events made elsewhere (a group's manifest, another key's event) as published here:
   * checked like any, marked unsent. Throws the first refusal's code; the others are stored.
   */
  async add(events: Uint8Array[]): Promise<void> {
    const res = await this.store.apply(events, { local: true });
    const stored = res.filter((r) => r.status === "stored");
    for (const r of stored) {
      const gid = toHex(events[r.idx]!.subarray(4, 36));
      if (!this.#groups.includes(gid)) this.#groups.push(gid);
    }
    this.#unsent += stored.length;
    if (stored.length) {
      this.#emitProgress();
      // Connected nodes get them live; a confirming session then marks them sent.
      for (const n of this.#nodes) {
        if (n.session?.state === "ready") n.confirmAt = this.#now() + REPLICA_CONFIRM_MS;
      }
      this.#wakeAll();
    }
    const bad = res.find((r) => r.status === "rejected");
    if (bad) throw new XfClientError(bad.code as never, bad.message ?? "Cannot store event");
  }

  // ---- reading (local first) ----

  /** A group's events held here, in `(ts, id)` order (or newest first with `reverse`). */
  async query(gid: string | Uint8Array, q: ReplicaQuery = {}): Promise<ClientEvent[]> {
    const g = groupHex(gid);
    return await Promise.all((await this.store.query(g, q)).map((b) => readEvent(b, { group: g })));
  }

  /**
   * Call `onEvents` with a group's events held here (`backfill`, default true), then with each batch
   * newly stored (received from a node or published here). Returns the unsubscribe.
   */
  subscribe(
    gid: string | Uint8Array,
    onEvents: (events: ClientEvent[]) => void,
    options: { backfill?: boolean | ReplicaQuery } = {},
  ): () => void {
    const g = groupHex(gid);
    let chain = Promise.resolve();
    return this.subscribeBytes(g, (bytes) => {
      // In order, each batch once read.
      chain = chain.then(() => Promise.all(bytes.map((b) => readEvent(b, { group: g })))).then(onEvents, () => {});
    }, options.backfill ?? true);
  }

  /** {@linkcode Replica.subscribe} with events as their bytes (what a Worker hands its page). */
  subscribeBytes(gid: string, onEvents: (events: Uint8Array[]) => void, backfill: boolean | ReplicaQuery): () => void {
    let live: Uint8Array[][] | null = [];
    const unsub = this.store.subscribe(gid, (bytes) => live ? live.push(bytes) : onEvents(bytes));
    (backfill ? this.store.query(gid, backfill === true ? {} : backfill) : Promise.resolve([])).then((first) => {
      const seen = new Set(first.map((b) => toHex(sha256(b))));
      if (first.length) onEvents(first);
      const queued = live ?? [];
      live = null;
      for (const l of queued) {
        const rest = l.filter((b) => !seen.has(toHex(sha256(b))));
        if (rest.length) onEvents(rest);
      }
    }, () => {});
    return unsub;
  }

  /** Root, count and depth of a group's Merkle tree here. */
  root(gid: string | Uint8Array): Promise<{ root: string; count: number; depth: number }> {
    return this.store.root(groupHex(gid));
  }

  /** Bytes this replica takes on disk: the browser's estimate for IndexedDB, else keys and values summed. */
  async bytesOnDisk(): Promise<number> {
    const nav = (globalThis as { navigator?: { storage?: { estimate?: () => Promise<{ usage?: number }> } } })
      .navigator;
    if (this.#indexedDb && nav?.storage?.estimate) {
      const e = await nav.storage.estimate();
      if (typeof e.usage === "number") return e.usage;
    }
    return await this.store.bytes();
  }

  /** Progress over every node (also sent as `progress` events). */
  progress(): ReplicaProgress {
    let missing = 0, received = 0, remaining = 0;
    for (const p of this.#progress.values()) {
      missing += p.missing;
      received += p.received;
      if (!p.done) remaining += Math.max(0, p.missing - p.received);
    }
    let sent = 0;
    for (const n of this.#nodes) sent += n.sentBefore + (n.session?.stats.eventsSent ?? 0);
    return {
      missing,
      received,
      remaining,
      sent,
      unsent: this.#unsent,
      online: this.#nodes.filter((n) => n.session?.state === "ready").length,
      synced: this.#groups.every((g) => this.#syncedGroups.has(g)),
    };
  }

  /** The current session of each node: its counts (frames, bytes, rounds, events) and bytes on the wire. */
  sessions(): ReplicaSession[] {
    return this.#nodes.filter((n) => n.session).map((n) => ({
      node: n.url,
      peer: n.session!.peer,
      stats: { ...n.session!.stats },
      wire: { ...n.session!.secure.wire },
    }));
  }

  /** Per node, since the replica opened: sessions, bytes on the wire both ways, reconciliation messages. */
  traffic(): ReplicaTraffic[] {
    return this.#nodes.map((n) => {
      const s = n.session;
      return {
        node: n.url,
        sessions: n.before.sessions + (s ? 1 : 0),
        bytesIn: n.before.bytesIn + (s?.secure.wire.bytesIn ?? 0),
        bytesOut: n.before.bytesOut + (s?.secure.wire.bytesOut ?? 0),
        negRounds: n.before.negRounds + (s?.stats.negRounds ?? 0),
      };
    });
  }

  /** Resolves once every group has completed a sync with some node; rejects with `TIMEOUT` after `ms`. */
  whenSynced(ms = 30_000): Promise<void> {
    if (this.progress().synced) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.removeEventListener("synced", on);
        reject(new XfClientError("TIMEOUT", `Replica did not finish syncing within ${ms} ms`));
      }, ms);
      const on = () => {
        if (!this.progress().synced) return;
        clearTimeout(timer);
        this.removeEventListener("synced", on);
        resolve();
      };
      this.addEventListener("synced", on);
    });
  }

  /**
   * The time range of a group this replica reconciles (partial sync): from the window's start, if it has one
   * in days; else all of it. A window of `events` is kept by pruning alone.
   */
  syncRange(_gid: string): { since?: number; until?: number } {
    const days = this.#window?.days;
    return days !== undefined ? { since: this.#now() - days * 86_400_000 } : {};
  }

  // ---- nodes ----

  /** Dial a node and keep syncing with it (reconnecting with backoff) until {@linkcode Replica.close}. */
  addNode(node: ReplicaNode): void {
    if (this.#nodes.length >= REPLICA_NODES_MAX) {
      throw new XfClientError("OVERLOADED", `Cannot add node: a replica dials at most ${REPLICA_NODES_MAX}`);
    }
    const n = typeof node === "string" ? { url: node } : node;
    if (!/^(https?|wss?):\/\/[^\s/]+/.test(n.url)) {
      throw new TypeError(`Cannot use node URL "${n.url}": expected http(s):// or ws(s)://host:port`);
    }
    if (n.key !== undefined && !/^[0-9a-f]{64}$/.test(n.key)) {
      throw new TypeError(`Cannot pin node key "${n.key}": expected 64 hex digits`);
    }
    const link: NodeLink = {
      url: n.url.replace(/\/+$/, ""),
      key: n.key ?? null,
      session: null,
      stop: false,
      attempts: 0,
      confirmAt: 0,
      lastSent: new Map(),
      wake: null,
      lastError: "",
      sentBefore: 0,
      before: { sessions: 0, bytesIn: 0, bytesOut: 0, negRounds: 0 },
    };
    this.#nodes.push(link);
    this.#dial(link);
  }

  /** Stop dialing; close every session, the Worker it started and the store. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const g = globalThis as { removeEventListener?: (t: string, f: () => void) => void };
    g.removeEventListener?.("online", this.#onOnline);
    for (const n of this.#nodes) {
      n.stop = true;
      n.session?.close("replica closing");
      n.wake?.();
    }
    this.#release();
    await this.store.close();
  }

  #wakeAll() {
    for (const n of this.#nodes) n.wake?.();
  }

  #sleep(n: NodeLink, ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(done, ms);
      function done() {
        clearTimeout(t);
        n.wake = null;
        resolve();
      }
      n.wake = done;
    });
  }

  async #dial(n: NodeLink): Promise<void> {
    while (!n.stop && !this.#closed) {
      try {
        let s = await this.#connect(n);
        n.attempts = 0;
        n.confirmAt = 0;
        await this.#syncAll(n, s);
        while (!n.stop && s.state !== "closed") {
          const due = n.confirmAt ? Math.max(0, n.confirmAt - this.#now()) : 1000;
          await this.#sleep(n, Math.min(due, 1000));
          if (n.stop || closed(s) || !n.confirmAt || this.#now() < n.confirmAt) continue;
          // Events went out: a fresh reconciliation shows which the node holds now (they are marked sent).
          n.confirmAt = 0;
          const s2 = await this.#connect(n);
          await this.#syncAll(n, s2);
          s.close("replaced by a confirming session");
          s = s2;
        }
      } catch (e) {
        n.lastError = (e as Error).message;
        this.dispatchEvent(new CustomEvent("error", { detail: { node: n.url, message: n.lastError } }));
      }
      n.session?.close("reconnecting");
      if (n.session) this.#retire(n, n.session);
      n.session = null;
      this.#emitProgress();
      if (n.stop || this.#closed) break;
      n.attempts++;
      const wait = Math.min(LIMITS.peer_backoff_max_ms, PEER_BACKOFF_BASE_MS * 2 ** Math.min(n.attempts, 10)) *
        (0.5 + Math.random() / 2);
      await this.#sleep(n, wait);
    }
  }

  /** A session of `n` ended or was replaced: keep what it moved. */
  #retire(n: NodeLink, s: SyncSession) {
    n.sentBefore += s.stats.eventsSent;
    n.before.sessions++;
    n.before.bytesIn += s.secure.wire.bytesIn;
    n.before.bytesOut += s.secure.wire.bytesOut;
    n.before.negRounds += s.stats.negRounds;
  }

  /** One session with a node: WebSocket, handshake (the key pinned, if given). */
  async #connect(n: NodeLink): Promise<SyncSession> {
    const url = `${n.url.replace(/^http/, "ws")}/v1/sync`;
    const ws = new WebSocket(url);
    const ch = socketChannel(ws);
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        ws.close();
        reject(new XfClientError("PEER_UNREACHABLE", `Cannot connect to "${n.url}" within ${PEER_CONNECT_MS} ms`));
      }, PEER_CONNECT_MS);
      ws.addEventListener("open", () => {
        clearTimeout(timer);
        resolve();
      });
      ws.addEventListener("close", () => {
        clearTimeout(timer);
        reject(new XfClientError("PEER_UNREACHABLE", `Cannot connect to "${n.url}"`));
      });
    });
    const s = new SyncSession(this.#host(n), ch, "client", n.url);
    if (!(await s.ready())) {
      throw new XfClientError("BAD_AUTH", `Node "${n.url}" refused the handshake: ${s.closeReason}`);
    }
    if (n.stop || this.#closed) {
      s.close("replica closing");
      throw new XfClientError("SHUTTING_DOWN", "The replica closed");
    }
    if (n.key && s.peer !== n.key) {
      s.close("not the pinned node");
      throw new XfClientError("BAD_AUTH", `Node "${n.url}" proved key "${s.peer}", not the pinned "${n.key}"`);
    }
    const prev = n.session;
    n.session = s;
    if (prev && prev !== s) {
      this.#retire(n, prev);
      prev.close("replaced");
    }
    this.#emitProgress();
    return s;
  }

  /** Reconcile every group with the node (new groups handed over by HTTP first), then prune to the window. */
  async #syncAll(n: NodeLink, s: SyncSession): Promise<void> {
    await Promise.all(this.#groups.map(async (gid) => {
      await this.#handOver(n, gid);
      // Partial sync: a window of days reconciles only its range.
      await s.sync(gid, this.syncRange(gid));
    }));
    if (s.state === "closed") throw new XfClientError("PEER_UNREACHABLE", `Session closed: ${s.closeReason}`);
    if (this.#window) {
      const since = this.syncRange("").since;
      for (const gid of this.#groups) {
        const w = {
          ...(since !== undefined ? { since } : {}),
          ...(this.#window.events !== undefined ? { keepEvents: this.#window.events } : {}),
        };
        while ((await this.store.prune(gid, w)) > 0);
      }
    }
  }

  /** A group made here whose manifest no node holds yet: POSTed with its membership (a node takes it no other way). */
  async #handOver(n: NodeLink, gid: string): Promise<void> {
    const rec = await this.store.group(gid);
    if (!rec || !(await this.store.unsent(gid)).includes(rec.manifest)) return;
    const head = await this.store.admission(gid);
    const client = new XfClient(n.url.replace(/^ws/, "http"), { key: this.key });
    const res = await client.publish(gid, head);
    const held = res.filter((r) => r.status !== "rejected").map((r) => r.id);
    await this.store.markSent(gid, held);
    await this.init();
  }

  /** The session's view of the replica: the store, and what this node's sessions learn. */
  #host(n: NodeLink): SyncHost {
    const store = this.store;
    const sentNow = new Map<string, Set<string>>();
    const unsentAtStart = new Map<string, string[]>();
    return {
      key: this.key,
      limits: LIMITS,
      memory: this.#memory,
      // The node we dialed holds our groups for us: it may have their events (a pinned key narrows who).
      access: async (gid, peer) => ({ ...(await store.access(gid, peer)), readable: true }),
      // Reconcile only what both sides retain: from the window's start or the group's retention boundary.
      retained: async (gid) => Math.max(this.syncRange(gid).since ?? 0, await store.retained(gid)),
      reconcile: async (gid, session, msg, range) => {
        // Unsent events as the reconciliation starts: only these can be shown held by it (one published
        // meanwhile may be past the ranges already compared).
        if (session && msg === null) unsentAtStart.set(gid, await store.unsent(gid));
        const res = await store.reconcile(gid, session, msg, range);
        if (!res || !session) return res;
        let sent = sentNow.get(gid);
        if (!sent) sentNow.set(gid, sent = new Set());
        for (const h of res.have) sent.add(toHex(h));
        if (res.output === null) {
          sentNow.delete(gid);
          await this.#confirm(n, gid, unsentAtStart.get(gid) ?? [], sent);
          unsentAtStart.delete(gid);
        }
        return res;
      },
      getMany: (ids, bytesMax) => store.getMany(ids, bytesMax),
      admission: (gid) => store.admission(gid),
      submit: async (gid, events) => {
        const res = await store.apply(events, { gid });
        if (res.some((r) => r.status === "stored")) this.#emitProgress();
        return res;
      },
      subscribe: (gid, cb) => {
        const unsub = store.subscribe(gid, cb);
        return Promise.resolve(() => Promise.resolve(unsub()));
      },
      groups: () => Promise.resolve(this.groups()),
      report: (ev) => this.#report(n, ev),
    };
  }

  /** A reconciliation with `n` ended: unsent events of `gid` it did not have to send are held there. */
  async #confirm(n: NodeLink, gid: string, unsent: string[], sent: Set<string>) {
    const held = unsent.filter((id) => !sent.has(id));
    if (held.length) {
      await this.store.markSent(gid, held);
      await this.init();
    }
    // Events sent that were not sent last time: confirm them shortly. The same ones again: the node refuses them.
    const before = n.lastSent.get(gid) ?? new Set();
    if ([...sent].some((id) => !before.has(id))) n.confirmAt = this.#now() + REPLICA_CONFIRM_MS;
    n.lastSent.set(gid, sent);
  }

  #report(n: NodeLink, ev: SyncReport) {
    if (ev.type === "progress") {
      const key = `${n.url} ${ev.gid}`;
      const prev = this.#progress.get(key);
      // A new session starts its counts again: keep what earlier sessions moved.
      const base = prev && prev.done && !ev.done ? prev : null;
      this.#progress.set(key, {
        missing: ev.missing + (base?.missing ?? 0),
        received: ev.received + (base?.received ?? 0),
        done: ev.done,
      });
      if (ev.done && !this.#syncedGroups.has(ev.gid)) {
        this.#syncedGroups.add(ev.gid);
        this.dispatchEvent(new CustomEvent("synced", { detail: { gid: ev.gid, node: n.url } }));
      }
    }
    this.#emitProgress();
  }

  #emitProgress() {
    this.dispatchEvent(new CustomEvent("progress", { detail: this.progress() }));
  }
}

/**
 * Open a replica (see the module doc) and start syncing with its nodes.
 *
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { MemoryKv } from "../storage/kv.ts";
 * import { createGroup } from "../storage/event.ts";
 * import { generateKeyPair } from "./keys.ts";
 * import { textPayload } from "./payload.ts";
 * import { openReplica } from "./replica.ts";
 * const key = await generateKeyPair();
 * const { gid, manifest } = await createGroup(key, { name: "notes", policy: 1 });
 * const replica = await openReplica({ key, store: new MemoryKv() }); // no nodes: offline
 * await replica.add([manifest.bytes]);
 * await replica.publish(gid, { kind: 16, payload: textPayload("written offline") });
 * assertEquals((await replica.query(gid)).length, 2);
 * assertEquals(replica.progress().unsent, 2);
 * await replica.close();
 * ```
 */
export function openReplica(options: ReplicaOptions & { worker: Worker | string | URL }): Promise<RemoteReplica>;
export function openReplica(options: ReplicaOptions): Promise<Replica>;
export async function openReplica(options: ReplicaOptions): Promise<Replica | RemoteReplica> {
  if (options.worker !== undefined) {
    if (options.store !== undefined && typeof options.store !== "string") {
      throw new TypeError("Cannot run a replica in a Worker over a Kv object: pass an IndexedDB name as store");
    }
    const own = typeof options.worker === "string" || options.worker instanceof URL;
    const w = own ? new Worker(options.worker as string | URL, { type: "module" }) : options.worker as Worker;
    return await RemoteReplica.open(w, own, {
      seed: options.key.seed,
      groups: (options.groups ?? []).map((g) => groupHex(g)),
      ...(options.window ? { window: options.window } : {}),
      ...(typeof options.store === "string" ? { store: options.store } : {}),
      nodes: options.nodes ?? [],
    });
  }
  let kv: Kv;
  let indexedDb = false;
  const hasIdb = (globalThis as { indexedDB?: unknown }).indexedDB !== undefined;
  if (typeof options.store === "string" || (options.store === undefined && hasIdb)) {
    kv = await openIndexedDb(typeof options.store === "string" ? options.store : "xaeroflux-replica");
    indexedDb = true;
  } else kv = options.store ?? new MemoryKv();
  let checker: EventChecker | undefined;
  let release = () => {};
  if (options.checkWorker !== undefined) {
    const own = typeof options.checkWorker === "string" || options.checkWorker instanceof URL;
    const w = own ? new Worker(options.checkWorker as string | URL, { type: "module" }) : options.checkWorker as Worker;
    const c = workerChecker(w);
    checker = c.check;
    release = () => {
      c.stop();
      if (own) w.terminate();
    };
  }
  const store = await ReplicaStore.open(kv, {
    ...(checker ? { checker } : {}),
    ...(options.now ? { now: options.now } : {}),
  });
  const r = new Replica(store, { ...options, indexedDb, release });
  await r.init();
  for (const n of options.nodes ?? []) r.addNode(n);
  return r;
}

/**
 * An {@linkcode EventChecker} that runs in a Worker running `client/replica_worker.ts`: each batch goes
 * as one buffer (transferred), answers come back by call id; a call unanswered in
 * {@linkcode REPLICA_WORKER_CALL_MS} fails with `TIMEOUT`, a Worker error fails every call under way.
 */
export function workerChecker(worker: Worker): { check: EventChecker; stop(): void } {
  let next = 1;
  const calls = new Map<
    number,
    { resolve(r: CheckedBatch): void; reject(e: Error): void; timer: ReturnType<typeof setTimeout> }
  >();
  const failAll = (e: Error) => {
    for (const c of calls.values()) {
      clearTimeout(c.timer);
      c.reject(e);
    }
    calls.clear();
  };
  worker.onmessage = (
    ev: MessageEvent<{ id: number; ids?: Uint8Array; errors?: (WireError | null)[]; error?: WireError }>,
  ) => {
    const c = calls.get(ev.data.id);
    if (!c) return;
    calls.delete(ev.data.id);
    clearTimeout(c.timer);
    if (ev.data.error) c.reject(fromWire(ev.data.error));
    else c.resolve({ ids: ev.data.ids!, errors: ev.data.errors! });
  };
  worker.onerror = (ev) => {
    ev.preventDefault();
    failAll(new XfError("INTERNAL", `The replica's check Worker failed: ${ev.message}`));
  };
  const check: EventChecker = (events) =>
    new Promise((resolve, reject) => {
      const id = next++;
      let total = 0;
      for (const e of events) total += e.length;
      const bytes = new Uint8Array(total);
      const ends = new Uint32Array(events.length);
      let off = 0;
      events.forEach((e, i) => {
        bytes.set(e, off);
        ends[i] = off += e.length;
      });
      const timer = setTimeout(() => {
        calls.delete(id);
        reject(new XfError("TIMEOUT", `The replica's check Worker did not answer within ${REPLICA_WORKER_CALL_MS} ms`));
      }, REPLICA_WORKER_CALL_MS);
      calls.set(id, { resolve, reject, timer });
      worker.postMessage({ id, op: "check", bytes, ends }, [bytes.buffer, ends.buffer]);
    });
  return { check, stop: () => failAll(new XfError("SHUTTING_DOWN", "The replica closed")) };
}

/** Whether a session has ended (read afresh after an await). */
const closed = (s: SyncSession): boolean => s.state === "closed";
