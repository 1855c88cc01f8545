/**
 * Persistence of the per-group Merkle trees for the index actor. The trees
 * themselves (merkle/) are pure and synchronous; this file keeps each
 * group's pages in memory once loaded (a prefix scan of the Merkle
 * keyspace), turns a batch insert into RocksDB ops that go into the same
 * write as the events, and swaps the new root in only after that write
 * succeeded.
 *
 * @module
 */

import { MerkleTree, type RootInfo } from "../merkle/mod.ts";
import type { Kv, KvOp } from "../storage/kv.ts";
import { eventKey, merkleKey, merklePrefix, metaKey, prefixEnd, timeKeyFloor } from "../storage/keys.ts";
import { decodeCbor, encodeCbor } from "../storage/cbor.ts";
import { fromHex, toHex } from "../storage/ed25519.ts";
import { decodeEvent, type StoredEvent } from "../storage/event.ts";
import { XfError } from "../storage/errors.ts";

interface GroupTree {
  pages: Map<string, Uint8Array>;
  tree: MerkleTree;
}

const rootKey = (gid: string) => metaKey(`root:${gid}`);

/** Decoded Merkle pages kept per group (about 2,600 for a million events). */
export const DECODED_PAGES_MAX = 65_536;

/** The Merkle trees of every group, loaded on first use. */
export class GroupTrees {
  private groups = new Map<string, GroupTree>();
  constructor(private readonly kv: Kv) {}

  /** Load a group's pages and root from the store (once). */
  async load(gid: string): Promise<GroupTree> {
    const hit = this.groups.get(gid);
    if (hit) return hit;
    const g = fromHex(gid)!;
    const pages = new Map<string, Uint8Array>();
    const prefix = merklePrefix(g);
    for await (const [k, v] of this.kv.range({ gte: prefix, lt: prefixEnd(prefix) })) {
      pages.set(toHex(k.subarray(33)), v);
    }
    const rb = await this.kv.get(rootKey(gid));
    let root: RootInfo | null = null;
    if (rb) {
      const [hash, count, depth] = decodeCbor(rb) as [Uint8Array, number, number];
      root = { hash, count, depth };
    }
    const store = { get: (h: Uint8Array) => pages.get(toHex(h)) };
    // The page bytes are all in memory already; keep every decoded page too (a decode re-hashes the page).
    const gt: GroupTree = { pages, tree: new MerkleTree(store, root, { cachePages: DECODED_PAGES_MAX }) };
    this.groups.set(gid, gt);
    return gt;
  }

  /**
   * Insert events (of any groups) into their trees. Returns the ops to write
   * with the events, and `commit()` to call once that write succeeded; if it
   * failed, call {@linkcode GroupTrees.forget} (the trees already moved).
   */
  async insert(events: StoredEvent[]): Promise<{ ops: KvOp[]; commit(): void }> {
    const byGroup = new Map<string, StoredEvent[]>();
    for (const e of events) {
      const gid = toHex(e.group);
      const list = byGroup.get(gid);
      if (list) list.push(e);
      else byGroup.set(gid, [e]);
    }
    const ops: KvOp[] = [];
    const commits: (() => void)[] = [];
    for (const [gid, list] of byGroup) {
      const gt = await this.load(gid);
      const g = fromHex(gid)!;
      const res = gt.tree.insert(list.map((e) => ({ ts: e.ts, id: e.id })));
      for (const [h, bytes] of res.put) ops.push({ type: "put", key: merkleKey(g, fromHex(h)!), value: bytes });
      for (const h of res.del) ops.push({ type: "del", key: merkleKey(g, fromHex(h)!) });
      ops.push({ type: "put", key: rootKey(gid), value: encodeCbor([res.root.hash, res.root.count, res.root.depth]) });
      commits.push(() => {
        for (const [h, bytes] of res.put) gt.pages.set(h, bytes);
        for (const h of res.del) gt.pages.delete(h);
      });
    }
    return { ops, commit: () => commits.forEach((c) => c()) };
  }

  /** Drop every cached tree (after a failed write: trees reload from what the store holds). */
  forget(): void {
    this.groups.clear();
  }

  /** Root, count and depth of a group's tree. */
  async root(gid: string): Promise<{ root: string; count: number; depth: number }> {
    const gt = await this.load(gid);
    const r = gt.tree.root();
    return { root: toHex(r.hash), count: r.count, depth: r.depth };
  }

  /** A group's event count, from its stored root (no pages are loaded for a group not in use). */
  async count(gid: string): Promise<number> {
    const hit = this.groups.get(gid);
    if (hit) return hit.tree.root().count;
    const rb = await this.kv.get(rootKey(gid));
    return rb ? (decodeCbor(rb) as [Uint8Array, number, number])[1] : 0;
  }

  /** The tree itself, for range fingerprints (sync). */
  async tree(gid: string): Promise<MerkleTree> {
    return (await this.load(gid)).tree;
  }

  /** Inclusion proof of an event (hex id), or null when the group does not hold it. */
  async prove(gid: string, idHex: string): Promise<Uint8Array | null> {
    const id = fromHex(idHex);
    if (!id || id.length !== 32) throw new XfError("BAD_EVENT_ID", `Cannot prove event "${idHex}": not 64 hex digits`);
    const bytes = await this.kv.get(eventKey(id));
    if (!bytes) return null;
    const ev = decodeEvent(bytes, { event_bytes_max: bytes.length, event_tags_max: 1 << 20, tag_bytes_max: 1 << 20 });
    if (toHex(ev.group) !== gid) return null;
    return (await this.load(gid)).tree.prove({ ts: ev.ts, id });
  }

  /** Rebuild a group's tree from its time index and compare page by page. */
  async fsck(gid: string): Promise<{ ok: boolean; count: number; firstDifference?: string }> {
    const gt = await this.load(gid);
    const g = fromHex(gid)!;
    const items: { ts: number; id: Uint8Array }[] = [];
    const lo = timeKeyFloor(g, 0).subarray(0, 33);
    for await (const [k] of this.kv.range({ gte: lo, lt: prefixEnd(lo) })) {
      const ts = Number(new DataView(k.buffer, k.byteOffset + 33, 8).getBigUint64(0));
      items.push({ ts, id: k.slice(41, 73) });
    }
    const r = gt.tree.fsck(items);
    return { ...r, count: items.length };
  }
}
