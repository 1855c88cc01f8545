/**
 * The node's side of peer sync: it answers `GET /v1/sync` sessions, keeps
 * outgoing connections to its `--peer` list (reconnecting with backoff after
 * a drop), knows which peers hold which groups (`GET /v1/groups/:gid/peers`),
 * and publishes sync progress to `/metrics` and to library users.
 *
 * @module
 */

import { fromHex, toHex } from "../core/bytes.ts";
import type { NodeCore } from "./node_api.ts";
import { XfError } from "../core/errors.ts";
import { sha256 } from "@noble/hashes/sha2";
import { Authenticator } from "./auth.ts";
import { encodeFrame } from "./frames.ts";
import type { EventResult } from "../actors/batch.ts";
import { log, short } from "../actors/log.ts";
import {
  ByteBudget,
  checkRange,
  type FrameChannel,
  type SessionStats,
  type SyncHost,
  type SyncOptions,
  type SyncRange,
  type SyncReport,
  SyncSession,
} from "./sync.ts";
import { socketChannel } from "./channel.ts";
import { PEER_BACKOFF_BASE_MS, PEER_CONNECT_MS, PEERS_PER_GROUP_MAX } from "../core/limits.ts";

/** A peer as this node knows it, per group. */
export interface PeerInfo {
  /** Node id: SHA-256 of the peer's public key. */
  nodeId: string;
  key: string;
  addr: string;
  lastSeen: number;
  syncedRoot: string;
}

export { channelPair, socketChannel } from "./channel.ts";

/** Sync figures for /metrics. */
export interface SyncCounters {
  sessionsOpened: number;
  sessionsRefused: number;
  eventsReceived: number;
  eventsSent: number;
  missing: number;
  received: number;
  progressRemaining: number;
}

/** A closed session's line: who, why, and what moved. */
function logLost(s: SyncSession, opened = Date.now()) {
  const summary = {
    node: short(s.peer),
    addr: s.addr || s.remote || "-",
    reason: s.closeReason,
    received: s.stats.eventsReceived,
    stored: s.stats.eventsStored,
    rejected: s.stats.eventsRejected,
    sent: s.stats.eventsSent,
    bytesIn: s.stats.bytesIn,
    bytesOut: s.stats.bytesOut,
    durationMs: Date.now() - opened,
  };
  if (s.peer) log.sync.info("peer lost", summary);
  else log.sync.debug("sync session closed before the handshake", summary);
}

/** The node's sync side. */
export class NodeSync implements SyncHost {
  /** HTTP challenges and bearer tokens (peer sessions prove themselves in their handshake instead). */
  readonly auth: Authenticator;
  /** Outbound bytes queued for all peers together (`sync_memory_bytes_max`). */
  readonly memory: ByteBudget;
  readonly sessions = new Set<SyncSession>();
  readonly peers = new Map<string, Map<string, PeerInfo>>();
  readonly counters: SyncCounters = {
    sessionsOpened: 0,
    sessionsRefused: 0,
    eventsReceived: 0,
    eventsSent: 0,
    missing: 0,
    received: 0,
    progressRemaining: 0,
  };
  /** Library users listen here: `progress`, `peer` and `closed` events (CustomEvent with the report as detail). */
  readonly events = new EventTarget();
  private dialers = new Map<
    string,
    { stop: boolean; session: SyncSession | null; attempts: number; first: Promise<void> }
  >();
  /** Groups that completed a sync with at least one peer. */
  private synced = new Set<string>();
  private progress = new Map<string, { missing: number; received: number }>();
  /** When each session opened, for its summary line. */
  private opened = new WeakMap<SyncSession, number>();

  constructor(readonly node: NodeCore, readonly extraGroups: string[] = []) {
    this.auth = new Authenticator(node.key);
    this.memory = new ByteBudget(node.limits.sync_memory_bytes_max);
  }

  get key() {
    return this.node.key;
  }
  get limits() {
    return this.node.limits;
  }

  async access(gid: string, peer: Uint8Array) {
    const a = await this.node.access(gid, toHex(peer));
    return { exists: a.exists, readable: a.readable, root: a.root, count: a.count };
  }

  reconcile(gid: string, session: string | null, msg: Uint8Array | null, range?: SyncRange) {
    return this.node.pipeline.index<{ output: Uint8Array | null; have: Uint8Array[]; need: Uint8Array[] } | null>({
      type: "index.reconcile",
      gid,
      session,
      msg,
      ...(range && range.since > 0 ? { since: range.since } : {}),
      ...(range && range.until !== Infinity ? { until: range.until } : {}),
    });
  }

  retained(gid: string): Promise<number> {
    return this.node.retained(gid);
  }

  async getMany(ids: Uint8Array, bytesMax?: number) {
    return await this.node.pipeline.index<(Uint8Array | null)[]>({
      type: "index.getMany",
      ids: ids.slice(),
      ...(bytesMax !== undefined ? { bytesMax } : {}),
    });
  }

  admission(gid: string): Promise<Uint8Array[]> {
    return this.node.pipeline.index<Uint8Array[]>({ type: "index.admission", gid });
  }

  /** Ids of this node's damaged events of a group, to ask every peer for (see `XfNode.restore`). */
  restore(gid: string): Uint8Array[] {
    return [...(this.node.restoring.get(gid) ?? [])].map((h) => fromHex(h)!);
  }

  /** Ask every session that syncs `gid` for these ids now (later sessions ask when they subscribe). */
  want(gid: string, ids: Uint8Array[]): void {
    for (const s of this.sessions) s.want(gid, ids);
  }

  async submit(gid: string, events: Uint8Array[]) {
    this.counters.eventsReceived += events.length;
    // The pipeline takes at most http_batch_events_max events per request.
    const max = this.limits.http_batch_events_max;
    const parts: Promise<EventResult[]>[] = [];
    for (let i = 0; i < events.length; i += max) parts.push(this.node.publish(events.slice(i, i + max), fromHex(gid)!));
    const out: EventResult[] = [];
    for (const [k, r] of (await Promise.all(parts)).entries()) {
      for (const x of r) out.push({ ...x, idx: x.idx + k * max });
    }
    // A damaged event a peer sent back: restored.
    const waiting = this.node.restoring.get(gid);
    if (waiting) {
      for (const r of out) if (r.status === "stored" && r.id) waiting.delete(r.id);
      if (waiting.size === 0) this.node.restoring.delete(gid);
    }
    return out;
  }

  subscribe(gid: string, cb: (events: Uint8Array[]) => void) {
    return this.node.subscribe({ gid }, cb);
  }

  async groups(): Promise<string[]> {
    const held = await this.node.pipeline.index<string[]>({ type: "index.listGroups" });
    return [...new Set([...held, ...this.extraGroups])];
  }

  observeDelivery(seconds: number, n: number): void {
    this.node.syncDeliverySeconds.observe(seconds, n);
  }

  report(ev: SyncReport): void {
    if (ev.type === "peer") {
      let m = this.peers.get(ev.gid);
      if (!m) this.peers.set(ev.gid, m = new Map());
      if (m.size >= PEERS_PER_GROUP_MAX && !m.has(ev.node)) m.delete(m.keys().next().value!);
      m.set(ev.node, {
        nodeId: toHex(sha256(fromHex(ev.node)!)),
        key: ev.node,
        addr: ev.addr || m.get(ev.node)?.addr || "",
        lastSeen: Date.now(),
        syncedRoot: ev.root,
      });
    } else if (ev.type === "progress") {
      this.progress.set(`${ev.gid}/${ev.node}`, { missing: ev.missing, received: ev.received });
      let missing = 0, received = 0;
      for (const p of this.progress.values()) {
        missing += p.missing;
        received += p.received;
      }
      this.counters.missing = missing;
      this.counters.received = received;
      this.counters.progressRemaining = Math.max(0, missing - received);
      if (ev.done) {
        this.progress.delete(`${ev.gid}/${ev.node}`);
        if (this.synced.size < 100_000) this.synced.add(ev.gid);
      }
      const m = this.peers.get(ev.gid)?.get(ev.node);
      if (m) m.lastSeen = Date.now();
      // A completed sync: what we hold now is what we reconciled to with this peer (its synced root).
      if (m && ev.done && ev.missing === ev.received) {
        this.node.merkle(ev.gid).then((r) => r && (m.syncedRoot = r.root), () => {});
      }
    } else if (ev.type === "closed") {
      for (const s of this.sessions) {
        if (s.state !== "closed") continue;
        this.sessions.delete(s);
        logLost(s, this.opened.get(s));
      }
    }
    this.events.dispatchEvent(new CustomEvent(ev.type, { detail: ev }));
  }

  /** The peers known for a group. */
  peersOf(gid: string): PeerInfo[] {
    return [...(this.peers.get(gid)?.values() ?? [])];
  }

  /** Serve one incoming connection from `remote` (the socket's remote host, for per-address limits). */
  accept(ch: FrameChannel, remote = ""): SyncSession | null {
    const fromAddr = [...this.sessions].filter((s) => s.role === "server" && s.remote === remote).length;
    if (this.sessions.size >= this.limits.sync_sessions_max || fromAddr >= this.limits.sync_sessions_per_addr_max) {
      this.counters.sessionsRefused++;
      const why = fromAddr >= this.limits.sync_sessions_per_addr_max
        ? `${fromAddr} sync sessions from this address`
        : "too many sync sessions";
      ch.send(encodeFrame("error", { code: "OVERLOADED", message: `Cannot accept a session: ${why}` }));
      ch.close(`OVERLOADED: ${why}`, 1008);
      return null;
    }
    const s = new SyncSession(this, ch, "server", "", remote);
    this.track(s);
    return s;
  }

  private track(s: SyncSession) {
    this.counters.sessionsOpened++;
    this.sessions.add(s);
    this.opened.set(s, Date.now());
    s.ready().then((ok) => {
      if (ok) log.sync.info("peer connected", { node: short(s.peer), addr: s.addr || s.remote || "-", role: s.role });
    });
  }

  /**
   * Connect to a peer once, sync the given groups (default: every group served), and return the session. With
   * `since` and/or `until` (ms), only that range of each group (partial sync, see `SyncSession.sync`).
   */
  async connect(url: string, groups?: string[], options: SyncOptions = {}): Promise<SyncSession> {
    checkRange(options); // a bad range fails before dialing
    let ws: WebSocket;
    try {
      ws = new WebSocket(`${url.replace(/\/$/, "")}/v1/sync`);
    } catch (e) {
      throw new XfError("BAD_QUERY", `Cannot connect to "${url}": ${(e as Error).message}`);
    }
    const ch = socketChannel(ws);
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        ws.close();
        reject(new XfError("PEER_UNREACHABLE", `Cannot connect to "${url}" within ${PEER_CONNECT_MS / 1000} s`));
      }, PEER_CONNECT_MS);
      ws.onopen = () => {
        clearTimeout(timer);
        resolve();
      };
      ws.addEventListener("close", () => {
        clearTimeout(timer);
        reject(new XfError("PEER_UNREACHABLE", `Cannot connect to "${url}"`));
      });
    });
    const s = new SyncSession(this, ch, "client", url);
    this.track(s);
    if (!(await s.ready())) {
      const code = /^(TIMEOUT|OVERLOADED)/.test(s.closeReason) ? s.closeReason.split(":")[0] as "TIMEOUT" : "BAD_AUTH";
      throw new XfError(code, `Peer "${url}" refused the handshake: ${s.closeReason}`);
    }
    const list = groups ?? await this.groups();
    await Promise.all(list.map((g) => s.sync(g, options)));
    return s;
  }

  /**
   * Keep a connection to `url` open: sync every group, stay for live events, reconnect with backoff.
   * Resolves once the first connection has reconciled every group (and keeps dialing after that).
   */
  dial(url: string): Promise<void> {
    const existing = this.dialers.get(url);
    if (existing) return existing.first;
    let firstDone!: () => void;
    const first = new Promise<void>((r) => firstDone = r);
    const d = { stop: false, session: null as SyncSession | null, attempts: 0, first };
    this.dialers.set(url, d);
    const loop = async () => {
      while (!d.stop) {
        try {
          d.session = await this.connect(url);
          d.attempts = 0;
          firstDone();
          await new Promise<void>((resolve) => {
            const check = () => (d.session?.state === "closed" || d.stop ? resolve() : setTimeout(check, 250));
            check();
          });
        } catch { /* retried below */ }
        if (d.stop) break;
        d.attempts++;
        const wait = Math.min(this.limits.peer_backoff_max_ms, PEER_BACKOFF_BASE_MS * 2 ** Math.min(d.attempts, 10)) *
          (0.5 + Math.random() / 2);
        await new Promise((r) => setTimeout(r, wait));
      }
      firstDone();
    };
    loop();
    return first;
  }

  /**
   * Resolves once a sync of `gid` with some peer has completed (reconciled, and every event it lacked received),
   * or at once if one already has; rejects with `TIMEOUT` after `timeoutMs`.
   */
  async whenSynced(gid: string, timeoutMs = 30_000): Promise<void> {
    // A refused subscription also ends a sync: only one after which the group is held here counts.
    const held = async () => this.synced.has(gid) && (await this.node.merkle(gid)) !== null;
    if (await held()) return;
    return await new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.events.removeEventListener("progress", on);
        reject(new XfError("TIMEOUT", `Group "${gid}" did not finish syncing with any peer within ${timeoutMs} ms`));
      }, timeoutMs);
      const on = (e: Event) => {
        const r = (e as CustomEvent<SyncReport>).detail;
        if (r.type !== "progress" || r.gid !== gid || !r.done) return;
        held().then((ok) => {
          if (!ok) return;
          clearTimeout(timer);
          this.events.removeEventListener("progress", on);
          resolve();
        });
      };
      this.events.addEventListener("progress", on);
    });
  }

  /** Stop dialing and close every session. */
  close(): void {
    for (const d of this.dialers.values()) {
      d.stop = true;
      d.session?.close("node stopping");
    }
    this.dialers.clear();
    for (const s of this.sessions) s.close("node stopping");
    this.sessions.clear();
  }

  /** Stats of every open session. */
  sessionStats(): { peer: string; role: string; stats: SessionStats }[] {
    return [...this.sessions].map((s) => ({ peer: s.peer, role: s.role, stats: s.stats }));
  }
}
