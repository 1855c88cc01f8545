/**
 * The node's DHT side: it answers `GET /v1/dht` sessions, keeps one Kademlia
 * routing table per group (persisted in RocksDB's peers keyspace through the index actor), runs
 * iterative lookups over real connections, stores and serves signed
 * announcements, and runs {@linkcode Discovery} for the groups it joins.
 *
 * Closed groups stay closed: a request about a group is answered only if the
 * authenticated peer may read it here; anyone else gets the answer an
 * unknown group gets (`UNKNOWN_GROUP`, same message), so it learns nothing.
 *
 * @module
 */

import {
  DHT_IDLE_MS,
  DHT_SAVE_DELAY_MS,
  K_BUCKET,
  RATE_ADDRS_MAX,
  RATE_PEERS_MAX,
  REFRESH_BUCKETS_MAX,
  RESPONSE_CONTACTS_MAX,
} from "../../core/limits.ts";
import { bytesEqual, fromHex, toHex } from "../../core/bytes.ts";
import type { CborValue } from "../../storage/cbor.ts";
import { XfError } from "../../core/errors.ts";
import { socketChannel } from "../peers.ts";
import type { FrameChannel } from "../secure.ts";
import { encodeFrame } from "../frames.ts";
import { ID_BITS } from "./constants.ts";
import { Lookup } from "./lookup.ts";
import {
  announce,
  AnnouncementStore,
  type AnnounceRecord,
  checkPeerAddress,
  decodeRecord,
  encodeRecord,
  remoteBucket,
} from "./records.ts";
import {
  type Contact,
  nodeIdOf,
  RoutingTable,
  tableAnswered,
  tableHeard,
  tablePinged,
  tableUnanswered,
} from "./routing.ts";
import { type DhtFrame, type DhtHost, type DhtOp, type DhtPeer, DhtSession, field, isBytes } from "./rpc.ts";
import { type DhtNode, Discovery } from "./discovery.ts";

export type { DhtNode };

/** DHT figures for /metrics. */
export interface DhtCounters {
  sessionsOpened: number;
  sessionsRefused: number;
  requestsIn: number;
  requestsOut: number;
  refused: number;
  rateLimited: number;
  lookups: number;
  announcesSent: number;
}

/** Options of a {@linkcode DhtService}. */
export interface DhtServiceOptions {
  /** The clock, ms since the epoch. */
  now?: () => number;
}

/** One group's DHT state. */
interface GroupDht {
  gid: Uint8Array;
  hex: string;
  table: RoutingTable;
  saveTimer: ReturnType<typeof setTimeout> | undefined;
  saving: Promise<void>;
}

const unknownGroup = (hex: string) => new XfError("UNKNOWN_GROUP", `Group "${hex}" is not known to this node`);
const isGid = isBytes(32);

function normalize(url: string): string {
  return url.replace(/\/+$/, "");
}

/** The node's DHT: sessions, per-group routing tables, announcements, lookups, discovery. */
export class DhtService implements DhtHost {
  /** This node's id: SHA-256 of its public key. */
  readonly selfId: Uint8Array;
  /** Announcements held, of every group. */
  readonly store: AnnouncementStore;
  readonly counters: DhtCounters = {
    sessionsOpened: 0,
    sessionsRefused: 0,
    requestsIn: 0,
    requestsOut: 0,
    refused: 0,
    rateLimited: 0,
    lookups: 0,
    announcesSent: 0,
  };
  readonly sessions: Set<DhtSession> = new Set();
  #now: () => number;
  #groups = new Map<string, Promise<GroupDht>>();
  #outgoing = new Map<string, Promise<DhtSession>>();
  #rates = new Map<string, { tokens: number; at: number }>();
  #addrRates = new Map<string, { tokens: number; at: number }>();
  /** Our own address that failed {@linkcode checkPeerAddress}, once said. */
  #unannounceable = "";
  #discoveries = new Map<string, Discovery>();
  #sweeper: ReturnType<typeof setInterval> | undefined;
  #closed = false;

  constructor(readonly node: DhtNode, options: DhtServiceOptions = {}) {
    this.selfId = nodeIdOf(node.key.publicKey);
    this.#now = options.now ?? Date.now;
    this.store = new AnnouncementStore({ perAddrMax: node.limits.dht_records_per_addr_max });
  }

  get key(): DhtNode["key"] {
    return this.node.key;
  }
  get limits(): DhtNode["limits"] {
    return this.node.limits;
  }
  /** Our address as peers should dial it ("" until the node listens). */
  addr(): string {
    return normalize(this.node.publicUrl ?? "");
  }

  // ---- serving ----

  /** Serve one incoming connection from remote address `remote`; null (and closed) past the session limits. */
  accept(ch: FrameChannel, remote = ""): DhtSession | null {
    const fromAddr = [...this.sessions].filter((s) => s.role === "server" && s.remote === remote).length;
    if (
      this.#closed || this.sessions.size >= this.limits.dht_sessions_max ||
      fromAddr >= this.limits.dht_sessions_per_addr_max
    ) {
      this.counters.sessionsRefused++;
      const why = fromAddr >= this.limits.dht_sessions_per_addr_max
        ? `${fromAddr} DHT sessions from this address`
        : "too many DHT sessions";
      ch.send(encodeFrame("error", { code: "OVERLOADED", message: `Cannot accept a session: ${why}` }));
      ch.close(`OVERLOADED: ${why}`);
      return null;
    }
    const s = new DhtSession(this, ch, "server", remote);
    this.counters.sessionsOpened++;
    this.sessions.add(s);
    this.#sweeper ??= setInterval(() => this.#sweep(), DHT_IDLE_MS / 2);
    return s;
  }

  /**
   * @internal The rate limit: one token bucket per peer key
   * (`dht_requests_per_sec_max` deep, refilled at that rate) and, when the
   * request's remote network address is known, one per address
   * (`dht_requests_per_addr_per_sec_max`; an IPv6 /64 counts as one
   * address), so fresh keys from one host share its budget. A request
   * takes a token from both or from neither.
   */
  admit(peer: Uint8Array, remote?: string): boolean {
    this.counters.requestsIn++;
    const now = this.#now();
    const byKey = this.#bucket(this.#rates, toHex(peer), RATE_PEERS_MAX, this.limits.dht_requests_per_sec_max, now);
    const byAddr = remote
      ? this.#bucket(
        this.#addrRates,
        remoteBucket(remote),
        RATE_ADDRS_MAX,
        this.limits.dht_requests_per_addr_per_sec_max,
        now,
      )
      : undefined;
    if (byKey.tokens < 1 || (byAddr && byAddr.tokens < 1)) {
      this.counters.rateLimited++;
      return false;
    }
    byKey.tokens--;
    if (byAddr) byAddr.tokens--;
    return true;
  }

  /** The refilled token bucket of `id`, made most recently used; the least recently used is forgotten past `max`. */
  #bucket(
    rates: Map<string, { tokens: number; at: number }>,
    id: string,
    max: number,
    rate: number,
    now: number,
  ): { tokens: number; at: number } {
    let b = rates.get(id);
    if (b) rates.delete(id);
    else {
      if (rates.size >= max) rates.delete(rates.keys().next().value!);
      b = { tokens: rate, at: now };
    }
    rates.set(id, b);
    b.tokens = Math.min(rate, b.tokens + (Math.max(0, now - b.at) / 1000) * rate);
    b.at = now;
    return b;
  }

  /** @internal */
  closed(s: DhtSession): void {
    this.sessions.delete(s);
  }

  /** @internal Answer one request of an authenticated peer. */
  async handle(peer: DhtPeer, op: DhtOp, f: DhtFrame): Promise<Record<string, CborValue | undefined>> {
    try {
      return await this.#answer(peer, op, f);
    } catch (e) {
      this.counters.refused++;
      throw e;
    }
  }

  async #answer(peer: DhtPeer, op: DhtOp, f: DhtFrame): Promise<Record<string, CborValue | undefined>> {
    const now = this.#now();
    switch (op) {
      case "ping":
        return { node: this.key.publicKey };
      case "find_node": {
        const g = await this.#member(field<Uint8Array>(f, "gid", isGid, "32 bytes"), peer.key);
        const target = field<Uint8Array>(f, "target", isBytes(32), "32 bytes");
        this.#heard(g, peer);
        return { contacts: g.table.closest(target, K_BUCKET).map((c) => [c.key, c.addr]) };
      }
      case "announce": {
        const bytes = field<Uint8Array>(f, "record", isBytes(), "bytes");
        const r = decodeRecord(bytes);
        if (!r) throw new XfError("BAD_RECORD", "Cannot accept announcement: the record does not parse");
        // Membership first: a non-member learns nothing about a closed group, not even that a record is bad.
        const g = await this.#member(r.group, peer.key);
        const res = await this.store.put(r, now, { sender: peer.key, remote: peer.remote ?? "" });
        if (!res.ok) {
          throw new XfError(
            res.code,
            `Cannot accept announcement of node "${toHex(r.nodeKey).slice(0, 16)}…": ${res.code.toLowerCase()}`,
          );
        }
        this.#heard(g, peer);
        this.#discoveries.get(g.hex)?.onRecord();
        return { stored: true };
      }
      case "find_peers": {
        const g = await this.#member(field<Uint8Array>(f, "gid", isGid, "32 bytes"), peer.key);
        this.#heard(g, peer);
        // Verified and long-lived members first: a crowd of fresh keys cannot crowd them out of the answer.
        const recs = this.store.ranked(g.gid, now).slice(0, this.limits.dht_answer_records_max);
        return { records: recs.map(encodeRecord) };
      }
      case "find_providers": {
        const g = await this.#member(field<Uint8Array>(f, "gid", isGid, "32 bytes"), peer.key);
        const root = f.get("root");
        if (root !== undefined && !isBytes(32)(root)) {
          throw new XfError("BAD_FRAME", 'DHT frame "req" needs root as 32 bytes');
        }
        this.#heard(g, peer);
        // Verified members first, most events first among them; then the rest, likewise.
        const verified = (r: AnnounceRecord) => Number(this.store.info(g.gid, r.nodeKey)?.verified ?? false);
        const recs = this.store.ranked(g.gid, now)
          .filter((r) => root ? bytesEqual(r.root, root as Uint8Array) : r.count > 0)
          .sort((a, b) => verified(b) - verified(a) || b.count - a.count)
          .slice(0, this.limits.dht_answer_records_max);
        return { records: recs.map(encodeRecord) };
      }
    }
  }

  /** The group's state if `peer` may read it here; else `UNKNOWN_GROUP`, as for a group not held. */
  async #member(gid: Uint8Array, peer: Uint8Array): Promise<GroupDht> {
    const hex = toHex(gid);
    const a = await this.node.access(hex, toHex(peer));
    if (!a.readable) throw unknownGroup(hex);
    return await this.group(hex);
  }

  /** A member that told us an announceable address made a request: it goes into the table. */
  #heard(g: GroupDht, peer: DhtPeer): void {
    if (!peer.addr || peer.addr === this.addr() || checkPeerAddress(peer.addr) !== null) return;
    this.#insert(g, { id: nodeIdOf(peer.key), key: peer.key, addr: peer.addr, lastSeen: this.#now() });
  }

  #insert(g: GroupDht, c: Contact): void {
    if (tableHeard(g.table, c, (old) => this.#pingOld(g, old))) this.#touch(g);
  }

  /** Ping-before-replace: the newcomer takes the slot only if the old contact is gone. */
  #pingOld(g: GroupDht, old: Contact): void {
    this.ping(old.addr, old.key).then(
      () => tablePinged(g.table, old, true, this.#now()),
      () => tablePinged(g.table, old, false, this.#now()) && this.#touch(g),
    );
  }

  // ---- routing tables ----

  /** The group's DHT state, its routing table loaded from disk on first use. */
  group(hex: string): Promise<GroupDht> {
    let p = this.#groups.get(hex);
    if (!p) {
      p = this.#load(hex);
      this.#groups.set(hex, p);
    }
    return p;
  }

  /** The contacts of a group's routing table. */
  async contacts(gid: string): Promise<Contact[]> {
    return (await this.group(gid)).table.contacts();
  }

  async #load(hex: string): Promise<GroupDht> {
    const gid = fromHex(hex);
    if (!gid || gid.length !== 32) throw new XfError("BAD_GROUP_ID", `Cannot use group id "${hex.slice(0, 80)}"`);
    let table = new RoutingTable(this.selfId);
    try {
      // The index actor owns RocksDB: the table lives in its peers keyspace.
      const saved = await this.node.pipeline.index<Uint8Array | null>({ type: "index.peers.load", gid: hex });
      if (saved) {
        const loaded = RoutingTable.fromJSON(JSON.parse(new TextDecoder().decode(saved)));
        // A table saved under another identity is of no use.
        if (bytesEqual(loaded.self, this.selfId)) table = loaded;
      }
    } catch { /* none yet, or unreadable: start empty */ }
    return { gid, hex, table, saveTimer: undefined, saving: Promise.resolve() };
  }

  #touch(g: GroupDht): void {
    if (g.saveTimer !== undefined || this.#closed) return;
    g.saveTimer = setTimeout(() => {
      g.saveTimer = undefined;
      this.#save(g);
    }, DHT_SAVE_DELAY_MS);
  }

  /** Save the table in RocksDB (the index actor's peers keyspace, one synced write). */
  #save(g: GroupDht): Promise<void> {
    g.saving = g.saving.then(async () => {
      try {
        const table = new TextEncoder().encode(JSON.stringify(g.table.toJSON()));
        await this.node.pipeline.index({ type: "index.peers.save", gid: g.hex, table });
      } catch (e) {
        console.error(`Cannot save the DHT routing table of group "${g.hex}": ${(e as Error).message}`);
      }
    });
    return g.saving;
  }

  // ---- asking others ----

  async #session(url: string): Promise<DhtSession> {
    url = normalize(url);
    if (this.#closed) throw new XfError("SHUTTING_DOWN", "The DHT is stopping");
    if (url === this.addr()) throw new XfError("BAD_QUERY", `Cannot ask "${url}": it is this node`);
    for (;;) {
      let p = this.#outgoing.get(url);
      if (!p) {
        const fresh = this.#open(url);
        p = fresh;
        this.#outgoing.set(url, fresh);
        fresh.catch(() => this.#outgoing.get(url) === fresh && this.#outgoing.delete(url));
      }
      const s = await p;
      if (s.state !== "closed") return s;
      if (this.#outgoing.get(url) === p) this.#outgoing.delete(url);
    }
  }

  async #open(url: string): Promise<DhtSession> {
    if (this.sessions.size >= this.limits.dht_sessions_max) {
      throw new XfError("OVERLOADED", `Cannot open a DHT session to "${url}": ${this.sessions.size} are open`);
    }
    let ws: WebSocket;
    try {
      ws = new WebSocket(`${url}/v1/dht`);
    } catch (e) {
      throw new XfError("BAD_QUERY", `Cannot connect to "${url}": ${(e as Error).message}`);
    }
    const ch = socketChannel(ws);
    const ms = this.limits.dht_request_timeout_ms;
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        ws.close();
        reject(new XfError("TIMEOUT", `Cannot connect to "${url}" within ${ms} ms`));
      }, ms);
      ws.addEventListener("open", () => {
        clearTimeout(timer);
        resolve();
      });
      ws.addEventListener("close", () => {
        clearTimeout(timer);
        reject(new XfError("PEER_UNREACHABLE", `Cannot connect to "${url}"`));
      });
    });
    const s = new DhtSession(this, ch, "client");
    this.counters.sessionsOpened++;
    this.sessions.add(s);
    this.#sweeper ??= setInterval(() => this.#sweep(), DHT_IDLE_MS / 2);
    if (!(await s.ready())) throw new XfError("BAD_AUTH", `Node "${url}" refused the DHT handshake: ${s.closeReason}`);
    if (bytesEqual(s.peerKey!, this.key.publicKey)) {
      s.close("that is me");
      throw new XfError("BAD_QUERY", `Cannot ask "${url}": it is this node`);
    }
    return s;
  }

  #sweep(): void {
    const now = Date.now();
    for (const s of this.sessions) {
      // Ours close when unused; theirs when the peer asks nothing for dht_idle_ms (a held slot is not free).
      if (s.role === "client" && s.inflight === 0 && now - s.lastUsed > DHT_IDLE_MS) s.close("idle");
      if (s.role === "server" && now - s.lastUsed > this.limits.dht_idle_ms) s.close("idle");
    }
  }

  /**
   * Send one request to the node at `url` (over a pooled session). If `key`
   * is given, the node there must prove that key (else `BAD_AUTH`).
   */
  async request(
    url: string,
    op: DhtOp,
    fields: Record<string, CborValue | undefined> = {},
    key?: Uint8Array,
  ): Promise<{ peer: Uint8Array; res: DhtFrame }> {
    const s = await this.#session(url);
    if (key && !bytesEqual(s.peerKey!, key)) {
      throw new XfError("BAD_AUTH", `Node at "${url}" is not the node "${toHex(key).slice(0, 16)}…"`);
    }
    this.counters.requestsOut++;
    const res = await s.request(op, fields);
    // It answered at this address with its proven key: its announcements with this address are verified.
    this.store.verify(s.peerKey!, normalize(url));
    return { peer: s.peerKey!, res };
  }

  /** Ping the node at `url`; resolves with its key (checked against `key` if given). */
  async ping(url: string, key?: Uint8Array): Promise<Uint8Array> {
    return (await this.request(url, "ping", {}, key)).peer;
  }

  /** Ask one contact for the contacts it knows closest to `target`. */
  async #findNode(g: GroupDht, url: string, target: Uint8Array, key?: Uint8Array) {
    const { peer, res } = await this.request(url, "find_node", { gid: g.gid, target }, key);
    const raw = res.get("contacts");
    const now = this.#now();
    const contacts: Contact[] = [];
    if (Array.isArray(raw)) {
      for (const x of raw.slice(0, RESPONSE_CONTACTS_MAX)) {
        if (!Array.isArray(x) || !isBytes(32)(x[0]) || typeof x[1] !== "string") continue;
        // A contact we would dial at a metadata, link-local or unspecified address is dropped.
        if (checkPeerAddress(x[1]) !== null) continue;
        const k = x[0] as Uint8Array;
        contacts.push({ id: nodeIdOf(k), key: k, addr: normalize(x[1]), lastSeen: now });
      }
    }
    return { peer, contacts };
  }

  /**
   * Learn a group's DHT from bootstrap addresses: each is asked for the
   * contacts closest to this node and, if it answers, enters the table.
   * Returns how many answered.
   */
  async bootstrap(gid: string, urls: string[]): Promise<number> {
    const g = await this.group(gid);
    const results = await Promise.allSettled(
      urls.map(normalize).filter((u) => u !== this.addr()).map(async (url) => {
        const { peer } = await this.#findNode(g, url, this.selfId);
        const contact = { id: nodeIdOf(peer), key: peer, addr: url, lastSeen: this.#now() };
        if (tableAnswered(g.table, contact, this.#now(), (old) => this.#pingOld(g, old))) this.#touch(g);
      }),
    );
    return results.filter((r) => r.status === "fulfilled").length;
  }

  /** Iterative lookup in a group's DHT: the k closest members to `target` that answered. */
  async lookup(gid: string, target: Uint8Array): Promise<Contact[]> {
    const g = await this.group(gid);
    this.counters.lookups++;
    const lk = new Lookup(this.selfId);
    lk.start(target, g.table.closest(target));
    const inflight = new Set<Promise<void>>();
    for (;;) {
      for (const req of lk.next()) {
        const to = req.to;
        const p: Promise<void> = this.#findNode(g, to.addr, target, to.key).then(
          ({ contacts }) => {
            lk.onResponse(to.id, contacts.filter((c) => c.addr !== this.addr()));
            if (tableAnswered(g.table, to, this.#now(), (old) => this.#pingOld(g, old))) this.#touch(g);
          },
          () => {
            lk.onTimeout(to.id);
            if (tableUnanswered(g.table, to.id)) this.#touch(g);
          },
        ).finally(() => inflight.delete(p));
        inflight.add(p);
      }
      if (lk.done() || inflight.size === 0 || this.#closed) break;
      await Promise.race(inflight);
    }
    return lk.result();
  }

  /** Refresh a group's buckets: one lookup of a random id in each, farthest first (at most {@linkcode REFRESH_BUCKETS_MAX}). */
  async refresh(gid: string): Promise<void> {
    const g = await this.group(gid);
    const n = Math.min(g.table.bucketCount(), REFRESH_BUCKETS_MAX, ID_BITS);
    for (let i = 0; i < n && !this.#closed; i++) {
      // A random id sharing exactly i leading bits with ours.
      const t = crypto.getRandomValues(new Uint8Array(32));
      for (let b = 0; b <= i; b++) {
        const bit = (this.selfId[b >> 3]! >> (7 - (b & 7))) & 1;
        const want = b === i ? bit ^ 1 : bit;
        t[b >> 3] = (t[b >> 3]! & ~(1 << (7 - (b & 7)))) | (want << (7 - (b & 7)));
      }
      await this.lookup(gid, t);
    }
  }

  /**
   * Sign this node's announcement for a group (its address, Merkle root and
   * count) and store it at the k members closest to the group id, and here.
   * Null if the node has no address yet, or one that peers would refuse
   * ({@linkcode checkPeerAddress}, e.g. `ws://0.0.0.0:PORT` when listening
   * on every interface; said once). Returns how many accepted it.
   */
  async announce(gid: string): Promise<{ record: AnnounceRecord; stored: number } | null> {
    const addr = this.addr();
    if (!addr) return null;
    const why = checkPeerAddress(addr);
    if (why !== null) {
      if (this.#unannounceable !== addr) {
        this.#unannounceable = addr;
        console.warn(`Cannot announce this node in the DHT at "${addr}": ${why}; set a public address peers can dial`);
      }
      return null;
    }
    const g = await this.group(gid);
    const m = await this.node.merkle(gid);
    const root = (m && fromHex(m.root)) || new Uint8Array(32);
    const now = this.#now();
    const record = await announce(
      {
        group: g.gid,
        nodeKey: this.key.publicKey,
        addr,
        root: root.length === 32 ? root : new Uint8Array(32),
        count: m?.count ?? 0,
      },
      this.key.privateKey,
      now,
    );
    await this.store.put(record, now, { sender: this.key.publicKey, verified: true });
    const closest = await this.lookup(gid, g.gid);
    const bytes = encodeRecord(record);
    const sent = await Promise.allSettled(
      closest.map((c) => this.request(c.addr, "announce", { record: bytes }, c.key)),
    );
    this.counters.announcesSent += closest.length;
    return { record, stored: sent.filter((r) => r.status === "fulfilled").length };
  }

  /** Keep the valid records of an answer that belong to `gid`. */
  async #keep(gid: Uint8Array, raw: unknown): Promise<void> {
    if (!Array.isArray(raw)) return;
    const now = this.#now();
    for (const b of raw.slice(0, this.limits.dht_answer_records_max)) {
      const r = b instanceof Uint8Array ? decodeRecord(b) : null;
      if (r && bytesEqual(r.group, gid)) await this.store.put(r, now); // STALE and bad ones are dropped
    }
  }

  async #ask(gid: string, op: "find_peers" | "find_providers", fields: Record<string, CborValue | undefined>) {
    const g = await this.group(gid);
    const closest = await this.lookup(gid, g.gid);
    await Promise.allSettled(closest.map(async (c) => {
      const { res } = await this.request(c.addr, op, { gid: g.gid, ...fields }, c.key);
      await this.#keep(g.gid, res.get("records"));
    }));
    return g;
  }

  /** The group's members: live announcements from the members closest to the group id, and our own. */
  async findPeers(gid: string): Promise<AnnounceRecord[]> {
    const g = await this.#ask(gid, "find_peers", {});
    return this.store.get(g.gid, this.#now());
  }

  /** Members holding the events under `root` (any events, if no root), most events first. */
  async findProviders(gid: string, root?: Uint8Array): Promise<AnnounceRecord[]> {
    const g = await this.#ask(gid, "find_providers", { root });
    return this.store.get(g.gid, this.#now())
      .filter((r) => root ? bytesEqual(r.root, root) : r.count > 0)
      .sort((a, b) => b.count - a.count);
  }

  // ---- discovery ----

  /**
   * Join a group's DHT from `bootstrap` addresses and keep sync connections
   * to the members it finds; see {@linkcode Discovery}. Idempotent.
   */
  join(gid: string, bootstrap: string[] = []): Discovery {
    let d = this.#discoveries.get(gid);
    if (!d) {
      if (this.#closed) throw new XfError("SHUTTING_DOWN", "The DHT is stopping");
      d = new Discovery(this, gid, bootstrap.map(normalize));
      this.#discoveries.set(gid, d);
      d.start();
    }
    return d;
  }

  /** The discovery of a group, if joined. */
  discovery(gid: string): Discovery | undefined {
    return this.#discoveries.get(gid);
  }

  /** Stop discovery, close every session, save every routing table. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#sweeper);
    for (const d of this.#discoveries.values()) d.stop();
    for (const s of this.sessions) s.close("node stopping");
    this.sessions.clear();
    const saves: Promise<void>[] = [];
    for (const p of this.#groups.values()) {
      const g = await p.catch(() => null);
      if (!g) continue;
      if (g.saveTimer !== undefined) {
        clearTimeout(g.saveTimer);
        g.saveTimer = undefined;
        saves.push(this.#save(g));
      }
    }
    await Promise.all(saves);
  }

  /** Prometheus lines of the DHT figures. */
  async metrics(): Promise<string[]> {
    let contacts = 0;
    for (const p of this.#groups.values()) contacts += (await p.catch(() => null))?.table.size() ?? 0;
    const c = this.counters;
    const out: string[] = [];
    const metric = (name: string, type: string, help: string, v: number) =>
      out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`, `${name} ${v}`);
    metric("xf_dht_sessions", "gauge", "Open DHT sessions", this.sessions.size);
    metric("xf_dht_contacts", "gauge", "Contacts in the routing tables of every group", contacts);
    metric("xf_dht_records", "gauge", "Announcements held", this.store.size());
    metric("xf_dht_requests_in_total", "counter", "DHT requests received", c.requestsIn);
    metric("xf_dht_requests_out_total", "counter", "DHT requests sent", c.requestsOut);
    metric("xf_dht_requests_refused_total", "counter", "DHT requests refused (any code)", c.refused);
    metric("xf_dht_rate_limited_total", "counter", "DHT requests refused with RATE_LIMITED", c.rateLimited);
    metric("xf_dht_lookups_total", "counter", "Iterative lookups run", c.lookups);
    return out;
  }
}
