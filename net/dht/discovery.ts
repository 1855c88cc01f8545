/**
 * Discovery drives sync: for one group, it joins the group's DHT from the
 * bootstrap addresses, looks up its own id and refreshes its buckets,
 * announces itself (address, Merkle root, count) to the members closest to
 * the group id, finds the group's members (`find_peers`), lists them among
 * the node's peers, and keeps sync connections to at most `peers_max` of
 * them — those whose announced root differs from ours first (they hold what
 * we lack) — replacing the ones that die.
 *
 * Rounds run at once, then after 1, 2, 4 … s up to `dht_discover_ms`; an
 * announcement received for the group triggers a choice of connections at
 * once. Announcements are refreshed every `dht_refresh_ms` (they live 20
 * minutes), and sooner when our root changed.
 *
 * @module
 */

import { fromHex, toHex } from "../../core/bytes.ts";
import type { SyncSession } from "../sync.ts";
import type { AnnouncementStore, AnnounceRecord } from "./records.ts";
import type { Contact } from "./routing.ts";
import type { NodeCore } from "../node_api.ts";
import type { NodeSync } from "../peers.ts";
import type { KeyPair } from "../../storage/ed25519.ts";
import type { Limits } from "../../core/limits.ts";
import { log, short } from "../../actors/log.ts";
import {
  CONNECT_ATTEMPTS_MAX,
  CONNECT_HEALTHY_MS,
  DEAD_MEMBERS_MAX,
  MEMBER_BACKOFF_BASE_MS,
} from "../../core/limits.ts";

/** The node as the DHT sees it: the calls `net/` makes of a node, and its peer sync (discovery dials found members). */
export type DhtNode = NodeCore & { readonly sync: NodeSync };

/** What discovery uses of the DHT (`DhtService` in `service.ts` is it; declared here so neither imports the other). */
export interface DiscoveryDht {
  readonly node: DhtNode;
  readonly key: KeyPair;
  readonly limits: Limits;
  readonly selfId: Uint8Array;
  readonly store: Pick<AnnouncementStore, "get">;
  /** Where this node is reached ("" if it announces none). */
  addr(): string;
  contacts(gid: string): Promise<Contact[]>;
  bootstrap(gid: string, urls: string[]): Promise<number>;
  lookup(gid: string, target: Uint8Array): Promise<Contact[]>;
  refresh(gid: string): Promise<void>;
  announce(gid: string): Promise<{ record: AnnounceRecord; stored: number } | null>;
  findPeers(gid: string): Promise<AnnounceRecord[]>;
}

/** A kept sync connection to one member. */
interface Conn {
  key: string;
  url: string;
  ts: number;
  stop: boolean;
  session: SyncSession | null;
  attempts: number;
}

/** Discovery of one group; made by `DhtService.join` (`service.ts`). */
export class Discovery {
  /** Rounds finished. */
  rounds = 0;
  /** The last error of a round, for diagnosis. */
  lastError = "";
  #stopped = false;
  #conns = new Map<string, Conn>();
  #dead = new Map<string, number>();
  #sleeps = new Set<{ timer: ReturnType<typeof setTimeout>; resolve: () => void }>();
  #lastRefresh = -Infinity;
  #lastAnnounce = -Infinity;
  #announcedRoot = "";
  #root = "";
  #considering = false;
  /** Set while this discovery itself reports a member, so its own reports are not taken for a sync subscription. */
  #reporting = false;
  /** Members found at the last logged round (-1 before the join). */
  #members = -1;

  constructor(readonly dht: DiscoveryDht, readonly gid: string, readonly bootstrapUrls: string[]) {}

  /** Start the rounds. */
  start(): void {
    this.#loop();
  }

  /** Stop rounds and close the connections it keeps. */
  stop(): void {
    this.#stopped = true;
    for (const s of this.#sleeps) {
      clearTimeout(s.timer);
      s.resolve();
    }
    this.#sleeps.clear();
    for (const c of this.#conns.values()) {
      c.stop = true;
      c.session?.close("node stopping");
    }
    this.#conns.clear();
  }

  /** Addresses of the members this discovery keeps sync connections to (not counting bootstrap ones). */
  connected(): string[] {
    return [...this.#conns.values()].map((c) => c.url);
  }

  /** @internal A member's announcement arrived: choose connections again, without network work. */
  onRecord(): void {
    if (this.#stopped) return;
    this.#consider(this.dht.store.get(fromHex(this.gid)!, Date.now()));
  }

  #sleep(ms: number): Promise<void> {
    if (this.#stopped) return Promise.resolve();
    return new Promise((resolve) => {
      const s = {
        timer: setTimeout(() => {
          this.#sleeps.delete(s);
          resolve();
        }, ms),
        resolve,
      };
      this.#sleeps.add(s);
    });
  }

  async #loop(): Promise<void> {
    let delay = 1000;
    while (!this.#stopped) {
      try {
        await this.round();
        this.lastError = "";
      } catch (e) {
        this.lastError = (e as Error).message;
      }
      this.rounds++;
      await this.#sleep(delay);
      delay = Math.min(delay * 2, this.dht.limits.dht_discover_ms);
    }
  }

  /** One round: (re)join and refresh when due, announce when due, find members, keep connections. */
  async round(): Promise<void> {
    const dht = this.dht;
    const now = Date.now();
    const refreshDue = now - this.#lastRefresh >= dht.limits.dht_refresh_ms;
    const contacts = await dht.contacts(this.gid);
    let answered = -1;
    if (refreshDue || contacts.length === 0) {
      answered = await dht.bootstrap(this.gid, this.bootstrapUrls);
      await dht.lookup(this.gid, dht.selfId);
      if (this.#stopped) return;
      if (refreshDue) {
        await dht.refresh(this.gid);
        this.#lastRefresh = now;
      }
    }
    if (this.#stopped) return;
    this.#root = (await dht.node.merkle(this.gid))?.root ?? "";
    const announceDue = now - this.#lastAnnounce >= dht.limits.dht_refresh_ms ||
      (this.#root !== this.#announcedRoot && now - this.#lastAnnounce >= dht.limits.dht_discover_ms);
    if (announceDue && dht.addr()) {
      await dht.announce(this.gid);
      this.#lastAnnounce = now;
      this.#announcedRoot = this.#root;
    }
    if (this.#stopped) return;
    const records = await dht.findPeers(this.gid);
    const self = toHex(dht.key.publicKey);
    const members = records.filter((r) => toHex(r.nodeKey) !== self).length;
    if (answered >= 0 || members !== this.#members) {
      const fields = {
        group: short(this.gid),
        bootstrap: this.bootstrapUrls.length,
        ...(answered >= 0 ? { answered } : {}),
        contacts: (await dht.contacts(this.gid)).length,
        members,
      };
      // The join and every change in the members found are worth a line; a quiet refresh is not.
      if (this.#members < 0) log.dht.info("dht joined", fields);
      else if (members !== this.#members) log.dht.info("dht members changed", fields);
      else log.dht.debug("dht refreshed", fields);
      this.#members = members;
    }
    this.#consider(records);
  }

  /** List the members among the node's peers and keep connections to the best of them. */
  #consider(records: AnnounceRecord[]): void {
    if (this.#stopped || this.#considering) return;
    this.#considering = true;
    try {
      const dht = this.dht;
      const sync = dht.node.sync;
      const self = toHex(dht.key.publicKey);
      const me = dht.addr();
      const live = records.filter((r) => toHex(r.nodeKey) !== self && r.addr !== me);
      const known = sync.peers.get(this.gid);
      for (const r of live) {
        const key = toHex(r.nodeKey);
        const prev = known?.get(key);
        // A member found through the DHT is a peer the node knows, synced or not yet.
        if (!prev || !prev.addr) {
          this.#reporting = true;
          try {
            sync.report({ type: "peer", gid: this.gid, node: key, addr: r.addr, root: prev?.syncedRoot ?? "" });
          } finally {
            this.#reporting = false;
          }
        }
      }
      // Connections to members whose announcements expired are let go.
      const liveKeys = new Set(live.map((r) => toHex(r.nodeKey)));
      for (const c of this.#conns.values()) {
        if (!liveKeys.has(c.key)) this.#drop(c);
      }
      const boot = new Set(this.bootstrapUrls.filter((u) => u !== me));
      const slots = Math.max(0, dht.limits.peers_max - boot.size);
      const differs = (r: AnnounceRecord) => (toHex(r.root) !== this.#root ? 1 : 0);
      const candidates = live
        .filter((r) => {
          const key = toHex(r.nodeKey);
          return !boot.has(r.addr) && !this.#conns.has(key) && !((this.#dead.get(key) ?? -1) >= r.ts);
        })
        .sort((a, b) => differs(b) - differs(a) || b.ts - a.ts);
      for (const r of candidates) {
        if (this.#conns.size >= slots) break;
        const c: Conn = { key: toHex(r.nodeKey), url: r.addr, ts: r.ts, stop: false, session: null, attempts: 0 };
        this.#conns.set(c.key, c);
        this.#run(c);
      }
    } finally {
      this.#considering = false;
    }
  }

  #drop(c: Conn): void {
    c.stop = true;
    c.session?.close("member gone");
    this.#conns.delete(c.key);
  }

  /** Keep one sync connection up; after {@linkcode CONNECT_ATTEMPTS_MAX} failures the member counts as dead. */
  async #run(c: Conn): Promise<void> {
    const sync = this.dht.node.sync;
    while (!c.stop && !this.#stopped) {
      const t0 = Date.now();
      // The member may not hold the group yet (it refuses the subscription): then ask again, less and less often.
      let subscribed = false;
      const onPeer = (ev: Event) => {
        const d = (ev as CustomEvent<{ gid: string; node: string }>).detail;
        if (d.gid === this.gid && d.node === c.key && !this.#reporting) subscribed = true;
      };
      sync.events.addEventListener("peer", onPeer);
      try {
        const s = c.session = await sync.connect(c.url, [this.gid]);
        if (c.stop || this.#stopped) {
          s.close("node stopping");
          break;
        }
        let retry = 1000, waited = 0;
        while (s.state !== "closed" && !c.stop && !this.#stopped) {
          await this.#sleep(250);
          waited += 250;
          if (!subscribed && waited >= retry) {
            waited = 0;
            retry = Math.min(2 * retry, this.dht.limits.dht_discover_ms);
            s.sync(this.gid).catch(() => {});
          }
        }
      } catch {
        /* counted below */
      } finally {
        sync.events.removeEventListener("peer", onPeer);
      }
      if (c.stop || this.#stopped) break;
      if (Date.now() - t0 >= CONNECT_HEALTHY_MS) c.attempts = 0;
      if (++c.attempts >= CONNECT_ATTEMPTS_MAX) {
        if (this.#dead.size >= DEAD_MEMBERS_MAX) this.#dead.delete(this.#dead.keys().next().value!);
        this.#dead.set(c.key, c.ts);
        this.#conns.delete(c.key);
        this.onRecord(); // fill the slot with the next best member
        break;
      }
      const wait = Math.min(this.dht.limits.peer_backoff_max_ms, MEMBER_BACKOFF_BASE_MS * 2 ** c.attempts) *
        (0.5 + Math.random() / 2);
      await this.#sleep(wait);
    }
  }
}
