/**
 * Persistence of the per-group Merkle trees for the index actor. The trees
 * themselves (merkle/) are pure and synchronous; this file keeps each
 * group's pages in memory once loaded (a prefix scan of the Merkle
 * keyspace), turns a batch insert into RocksDB ops that go into the same
 * write as the events, and swaps the new root in only after that write
 * succeeded.
 *
 * A write does not store the pages it changes: it appends one journal
 * record (the items it added and removed, 40 bytes each) and the new root.
 * The stored pages stay those of the group's checkpoint, and loading a
 * tree replays the journal over them, then checks that it ends on the
 * stored root. Once the journal holds {@linkcode MERKLE_JOURNAL_ITEMS_MAX}
 * items, the next write stores every page changed since the checkpoint,
 * deletes the pages and journal records no longer needed, and starts over:
 * a leaf changed by many writes in between is stored once, and nothing
 * the tree is made of is ever missing from the store.
 *
 * @module
 */

import { fromHex, toHex } from "../core/bytes.ts";
import { compareItems, type Item, MerkleTree, type RootInfo } from "../merkle/mod.ts";
import type { Kv, KvOp } from "./kv.ts";
import {
  deletedKey,
  eventKey,
  journalKey,
  journalPrefix,
  KS,
  merkleKey,
  merklePrefix,
  metaKey,
  prefixEnd,
  readU64be,
  timeKeyFloor,
} from "./keys.ts";
import { decodeCbor, encodeCbor } from "./cbor.ts";
import { decodeEvent, KIND_TOMBSTONE, peekEvent, type StoredEvent } from "./event.ts";
import { decodeTombstone } from "./deletion.ts";
import { XfError } from "../core/errors.ts";
import { sha256 } from "@noble/hashes/sha2";
import {
  DECODED_PAGES_MAX,
  FSCK_DAMAGED_MAX,
  FSCK_READ_BATCH,
  FSCK_READS_IN_FLIGHT,
  KV_BULK_READ_BYTES_MAX,
  MERKLE_JOURNAL_ITEMS_MAX,
} from "../core/limits.ts";

/** The stored pages' root and the journal records after it (seqs `first..next-1`). */
interface Checkpoint {
  root: RootInfo;
  first: number;
  next: number;
}

interface GroupTree {
  /** Every page of the tree, stored or not yet (hex hash to bytes). */
  pages: Map<string, Uint8Array>;
  tree: MerkleTree;
  /** Pages of the tree made since the checkpoint: not stored yet. */
  pending: Set<string>;
  /** Stored pages no longer in the tree: deleted at the next checkpoint. */
  garbage: Set<string>;
  /** The stored pages' root and the journal after it; `null` when the stored pages are the tree. */
  checkpoint: Checkpoint | null;
  /** Items in the journal records since the checkpoint. */
  journalItems: number;
}

/** What the index needs of an event: its group, ts and id. */
export type MerkleEvent = Pick<StoredEvent, "group" | "ts" | "id">;

const rootKey = (gid: string) => metaKey(`root:${gid}`);
const ROOTS_PREFIX = metaKey("root:");

/**
 * Format of the stored trees, the fourth field of a root record
 * (`[hash, count, depth, format, checkpoint?]`; records without it are
 * format 1). Format 2 has leaves of ~96 ids and segmented page hashes
 * (merkle/page.ts); format 3 has the same pages and a journal (the fifth
 * field, `[hash, count, depth, first, next]`: the stored pages' root and the
 * journal's seqs); format 4 has the same records and leaves cut by a flat
 * rule (merkle/chunker.ts: 32 to 256 ids, ~93). Pages of an older format are
 * valid pages but not the pages this node's updates would make of the same
 * set, so a store of formats 1 to 3 is rebuilt by
 * {@linkcode GroupTrees.migrate} when the node opens it.
 */
export const MERKLE_FORMAT = 4;

/** Formats of the pages this node reads as they are. */
const READABLE = new Set([4]);

const encodeRoot = (r: RootInfo, c: Checkpoint | null) =>
  encodeCbor(
    c === null
      ? [r.hash, r.count, r.depth, MERKLE_FORMAT]
      : [r.hash, r.count, r.depth, MERKLE_FORMAT, [c.root.hash, c.root.count, c.root.depth, c.first, c.next]],
  );

/** Decode a root record: the root, the format its pages were written in, and its checkpoint. */
function decodeRoot(bytes: Uint8Array): { root: RootInfo; format: number; checkpoint: Checkpoint | null } {
  const [hash, count, depth, format, c] = decodeCbor(bytes) as [
    Uint8Array,
    number,
    number,
    number | undefined,
    [Uint8Array, number, number, number, number] | undefined,
  ];
  const checkpoint = c === undefined ? null : {
    root: { hash: c[0], count: c[1], depth: c[2] },
    first: c[3],
    next: c[4],
  };
  if (checkpoint !== null && !(Number.isSafeInteger(checkpoint.first) && checkpoint.next >= checkpoint.first)) {
    throw new XfError("STORAGE_CORRUPTION", `Merkle root record has a bad journal range`);
  }
  return { root: { hash, count, depth }, format: format ?? 1, checkpoint };
}

/** Bytes of one item in a journal record: ts u64 BE, id. */
const JOURNAL_ITEM = 40;

/** A journal record: `u32 BE adds | u32 BE removes | items (ts u64 BE, id 32)`, the adds first. */
function encodeJournal(add: readonly Item[], remove: readonly Item[]): Uint8Array {
  const out = new Uint8Array(8 + (add.length + remove.length) * JOURNAL_ITEM);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, add.length);
  dv.setUint32(4, remove.length);
  let off = 8;
  for (const it of [...add, ...remove]) {
    dv.setBigUint64(off, BigInt(it.ts));
    out.set(it.id, off + 8);
    off += JOURNAL_ITEM;
  }
  return out;
}

function decodeJournal(bytes: Uint8Array, what: string): { add: Item[]; remove: Item[] } {
  const fail = (why: string) => new XfError("STORAGE_CORRUPTION", `Merkle journal record ${what} ${why}`);
  if (bytes.length < 8) throw fail(`is ${bytes.length} bytes, shorter than its header`);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const adds = dv.getUint32(0);
  const removes = dv.getUint32(4);
  if (bytes.length !== 8 + (adds + removes) * JOURNAL_ITEM) {
    throw fail(`is ${bytes.length} bytes, its header says ${adds} + ${removes} items`);
  }
  const items: Item[] = [];
  for (let off = 8; off < bytes.length; off += JOURNAL_ITEM) {
    const ts = Number(dv.getBigUint64(off));
    if (!Number.isSafeInteger(ts)) throw fail(`has a ts above 2^53`);
    items.push({ ts, id: bytes.slice(off + 8, off + JOURNAL_ITEM) });
  }
  return { add: items.slice(0, adds), remove: items.slice(adds) };
}

/** Apply a tree's page writes to a group's pages: a page made and dropped before any checkpoint is never stored. */
function applyWrites(
  gt: Pick<GroupTree, "pages" | "pending" | "garbage">,
  put: Map<string, Uint8Array>,
  del: readonly string[],
): void {
  for (const h of del) {
    gt.pages.delete(h);
    if (!gt.pending.delete(h)) gt.garbage.add(h);
  }
  for (const [h, bytes] of put) {
    gt.pages.set(h, bytes);
    if (!gt.garbage.delete(h)) gt.pending.add(h);
  }
}

/**
 * Append to `ops` a checkpoint of group `gid`: store the `pending` pages (bytes from `bytesOf`), delete the
 * `garbage` pages and the journal records of `c`, and put `root` with no journal.
 */
function checkpointOps(
  ops: KvOp[],
  gid: string,
  pending: Iterable<string>,
  garbage: Iterable<string>,
  bytesOf: (hex: string) => Uint8Array,
  c: Checkpoint | null,
  root: RootInfo,
): void {
  const g = fromHex(gid)!;
  for (const h of garbage) ops.push({ type: "del", key: merkleKey(g, fromHex(h)!) });
  for (const h of pending) ops.push({ type: "put", key: merkleKey(g, fromHex(h)!), value: bytesOf(h) });
  for (let seq = c?.first ?? 0; seq < (c?.next ?? 0); seq++) ops.push({ type: "del", key: journalKey(g, seq) });
  ops.push({ type: "put", key: rootKey(gid), value: encodeRoot(root, null) });
}

/**
 * Replay a group's journal (seqs `c.first..c.next-1`, read from `kv`) over `gt`, whose tree is at the
 * checkpoint's root; returns the items replayed. Throws `STORAGE_CORRUPTION` for a missing, extra or
 * damaged record.
 */
async function replayJournal(
  kv: Kv,
  g: Uint8Array,
  c: Checkpoint,
  gt: Pick<GroupTree, "pages" | "pending" | "garbage" | "tree">,
): Promise<number> {
  const prefix = journalPrefix(g);
  let seq = c.first;
  let items = 0;
  // The records' net effect in one update (far cheaper than one per record): each item ends as its last record
  // left it, present after an add, absent after a removal, and the tree ignores adds of present items and
  // removals of absent ones.
  const last = new Map<string, { item: Item; add: boolean }>();
  const range = { gte: journalKey(g, c.first), lt: prefixEnd(prefix), readAheadBytes: KV_BULK_READ_BYTES_MAX };
  for await (const [k, v] of kv.range(range)) {
    const at = readU64be(k, 33);
    if (at >= c.next) break;
    if (at !== seq) throw new XfError("STORAGE_CORRUPTION", `Merkle journal record ${seq} is missing (next is ${at})`);
    const { add, remove } = decodeJournal(v, `${at}`);
    // Within a record an item both added and removed ends absent (MerkleTree.update): removals go last.
    for (const item of add) last.set(`${item.ts}:${toHex(item.id)}`, { item, add: true });
    for (const item of remove) last.set(`${item.ts}:${toHex(item.id)}`, { item, add: false });
    items += add.length + remove.length;
    seq++;
  }
  if (seq !== c.next) {
    throw new XfError("STORAGE_CORRUPTION", `Merkle journal records ${seq}..${c.next - 1} are missing`);
  }
  const adds: Item[] = [];
  const removes: Item[] = [];
  for (const { item, add } of last.values()) (add ? adds : removes).push(item);
  const res = gt.tree.update(adds, removes);
  applyWrites(gt, res.put, res.del);
  return items;
}

/** The Merkle trees of every group, loaded on first use. */
export class GroupTrees {
  private groups = new Map<string, GroupTree>();
  /** Loads in progress: a second caller waits for the same scan (at 10 M events one takes seconds). */
  private loading = new Map<string, Promise<GroupTree>>();
  /** Bumped when cached trees are dropped: a load that began before does not cache its (older) tree. */
  #generation = 0;
  readonly #journalItemsMax: number;
  /** Trees over `kv`; `journalItemsMax` overrides {@linkcode MERKLE_JOURNAL_ITEMS_MAX} (tests). */
  constructor(private readonly kv: Kv, options: { journalItemsMax?: number } = {}) {
    this.#journalItemsMax = options.journalItemsMax ?? MERKLE_JOURNAL_ITEMS_MAX;
  }

  /** Load a group's pages and root from the store (once; concurrent callers share one load). */
  load(gid: string): Promise<GroupTree> {
    const hit = this.groups.get(gid);
    if (hit) return Promise.resolve(hit);
    let p = this.loading.get(gid);
    if (!p) {
      const mine: Promise<GroupTree> = this.#read(gid).finally(() => {
        if (this.loading.get(gid) === mine) this.loading.delete(gid);
      });
      this.loading.set(gid, p = mine);
    }
    return p;
  }

  async #read(gid: string): Promise<GroupTree> {
    const generation = this.#generation;
    const g = fromHex(gid)!;
    const pages = new Map<string, Uint8Array>();
    const prefix = merklePrefix(g);
    const bulk = { gte: prefix, lt: prefixEnd(prefix), readAheadBytes: KV_BULK_READ_BYTES_MAX };
    for await (const [k, v] of this.kv.range(bulk)) pages.set(toHex(k.subarray(33)), v);
    const rb = await this.kv.get(rootKey(gid));
    let root: RootInfo | null = null;
    let checkpoint: Checkpoint | null = null;
    if (rb) {
      const r = decodeRoot(rb);
      if (!READABLE.has(r.format)) {
        throw new XfError(
          "STORAGE_CORRUPTION",
          `Cannot read the Merkle tree of group ${gid}: it is format ${r.format}, this node reads ` +
            `${[...READABLE].join(" and ")} (GroupTrees.migrate() rebuilds it when the store opens)`,
        );
      }
      root = r.root;
      checkpoint = r.checkpoint;
    }
    const store = { get: (h: Uint8Array) => pages.get(toHex(h)) };
    // The page bytes are all in memory already; keep every decoded page too (a decode re-hashes the page).
    const tree = new MerkleTree(store, checkpoint?.root ?? root, { cachePages: DECODED_PAGES_MAX });
    const gt: GroupTree = { pages, tree, pending: new Set(), garbage: new Set(), checkpoint, journalItems: 0 };
    if (checkpoint !== null) {
      gt.journalItems = await replayJournal(this.kv, g, checkpoint, gt);
      const got = tree.root();
      if (toHex(got.hash) !== toHex(root!.hash) || got.count !== root!.count || got.depth !== root!.depth) {
        throw new XfError(
          "STORAGE_CORRUPTION",
          `Cannot read the Merkle tree of group ${gid}: its journal ends on ${got.count} items ` +
            `('${toHex(got.hash)}'), its root record says ${root!.count} ('${toHex(root!.hash)}')`,
        );
      }
    }
    // A forget() during the scan means the store moved under it: this copy serves its callers, is not kept.
    if (generation === this.#generation) this.groups.set(gid, gt);
    return gt;
  }

  /**
   * Insert events (of any groups) into their trees. Returns the ops to write
   * with the events, and `commit()` to call once that write succeeded; if it
   * failed, call {@linkcode GroupTrees.forget} (the trees already moved).
   */
  insert(events: StoredEvent[]): Promise<{ ops: KvOp[]; commit(): void }> {
    return this.update(events, []);
  }

  /**
   * Insert `add` and remove `remove` (events of any groups, by group, ts and
   * id) in one step per group, as {@linkcode GroupTrees.insert} does: the
   * ops to write with the events (a journal record and the root, or at a
   * checkpoint the changed pages), and `commit()` once written.
   */
  async update(add: readonly MerkleEvent[], remove: readonly MerkleEvent[]): Promise<{ ops: KvOp[]; commit(): void }> {
    const byGroup = new Map<string, { add: Item[]; remove: Item[] }>();
    const put = (e: MerkleEvent, which: "add" | "remove") => {
      const gid = toHex(e.group);
      let g = byGroup.get(gid);
      if (!g) byGroup.set(gid, g = { add: [], remove: [] });
      g[which].push({ ts: e.ts, id: e.id });
    };
    for (const e of add) put(e, "add");
    for (const e of remove) put(e, "remove");
    try {
      return await this.#update(byGroup);
    } catch (e) {
      // A group that failed to load (a read error) after another group's tree moved: every tree reloads from the
      // store, so none stays ahead of what was written.
      this.forget();
      throw e;
    }
  }

  async #update(byGroup: Map<string, { add: Item[]; remove: Item[] }>): Promise<{ ops: KvOp[]; commit(): void }> {
    const ops: KvOp[] = [];
    const commits: (() => void)[] = [];
    for (const [gid, lists] of byGroup) {
      const gt = await this.load(gid);
      const g = fromHex(gid)!;
      const before = gt.tree.root();
      const res = gt.tree.update(lists.add, lists.remove);
      if (res.put.size === 0 && res.del.length === 0) continue;
      const items = lists.add.length + lists.remove.length;
      if (gt.journalItems + items <= this.#journalItemsMax) {
        const c = gt.checkpoint ?? { root: before, first: 0, next: 0 };
        const next = { root: c.root, first: c.first, next: c.next + 1 };
        ops.push({ type: "put", key: journalKey(g, c.next), value: encodeJournal(lists.add, lists.remove) });
        ops.push({ type: "put", key: rootKey(gid), value: encodeRoot(res.root, next) });
        commits.push(() => {
          applyWrites(gt, res.put, res.del);
          gt.checkpoint = next;
          gt.journalItems += items;
        });
        continue;
      }
      // A checkpoint: store what the tree is made of now, drop what it no longer uses and the journal.
      const pending = new Set(gt.pending);
      const garbage = new Set(gt.garbage);
      for (const h of res.del) if (!pending.delete(h)) garbage.add(h);
      for (const h of res.put.keys()) if (!garbage.delete(h)) pending.add(h);
      checkpointOps(ops, gid, pending, garbage, (h) => res.put.get(h) ?? gt.pages.get(h)!, gt.checkpoint, res.root);
      commits.push(() => {
        applyWrites(gt, res.put, res.del);
        gt.pending.clear();
        gt.garbage.clear();
        gt.checkpoint = null;
        gt.journalItems = 0;
      });
    }
    return { ops, commit: () => commits.forEach((c) => c()) };
  }

  /**
   * Checkpoint every loaded group that has a journal (at shutdown, so the next start replays nothing): the ops
   * that store their changed pages and drop their journals, and `commit()` once written.
   */
  checkpointAll(): { ops: KvOp[]; commit(): void } {
    const ops: KvOp[] = [];
    const commits: (() => void)[] = [];
    for (const [gid, gt] of this.groups) {
      const c = gt.checkpoint;
      if (c === null) continue;
      checkpointOps(ops, gid, gt.pending, gt.garbage, (h) => gt.pages.get(h)!, c, gt.tree.root());
      const pending = [...gt.pending];
      const garbage = [...gt.garbage];
      commits.push(() => {
        // Only what this checkpoint stored: a write in between (there is none while the index is stopping) keeps its own.
        for (const h of pending) gt.pending.delete(h);
        for (const h of garbage) gt.garbage.delete(h);
        gt.checkpoint = null;
        gt.journalItems = 0;
      });
    }
    return { ops, commit: () => commits.forEach((c) => c()) };
  }

  /**
   * Rebuild a group's tree from scratch: its time index as stored plus
   * `extra` (events written in the same batch), less `remove` (events the batch forgets). Returns the ops that replace
   * every stored page and the root, and `commit()` to call once they are
   * written. For repair, when pages may be missing (a damaged RocksDB log).
   */
  async rebuild(
    gid: string,
    extra: readonly MerkleEvent[],
    remove: readonly MerkleEvent[] = [],
  ): Promise<{ ops: KvOp[]; commit(): void }> {
    const g = fromHex(gid)!;
    const items: Item[] = extra.map((e) => ({ ts: e.ts, id: e.id }));
    const gone = new Set(remove.map((e) => toHex(e.id)));
    const lo = timeKeyFloor(g, 0).subarray(0, 33);
    for await (const [k] of this.kv.range({ gte: lo, lt: prefixEnd(lo) })) {
      const id = k.slice(41, 73);
      if (gone.has(toHex(id))) continue;
      items.push({ ts: readU64be(k, 33), id });
    }
    items.sort(compareItems);
    const unique = items.filter((it, i) => i === 0 || compareItems(items[i - 1]!, it) !== 0);
    const built = MerkleTree.build(unique);
    const ops: KvOp[] = [];
    const prefix = merklePrefix(g);
    for await (const [k] of this.kv.range({ gte: prefix, lt: prefixEnd(prefix) })) {
      if (!built.put.has(toHex(k.subarray(33)))) ops.push({ type: "del", key: k.slice() });
    }
    for (const [h, bytes] of built.put) ops.push({ type: "put", key: merkleKey(g, fromHex(h)!), value: bytes });
    const jp = journalPrefix(g);
    for await (const [k] of this.kv.range({ gte: jp, lt: prefixEnd(jp), values: false })) {
      ops.push({ type: "del", key: k.slice() });
    }
    ops.push({ type: "put", key: rootKey(gid), value: encodeRoot(built.root, null) });
    return {
      ops,
      commit: () => {
        this.groups.delete(gid);
        this.loading.delete(gid);
        this.#generation++;
      },
    };
  }

  /**
   * Rebuild every group's tree stored in a format whose pages this node does
   * not read (see {@linkcode MERKLE_FORMAT}) from its time index, one synced write per
   * group; call when the store opens, before any read. Returns the groups
   * rebuilt. A write that fails leaves that group as it was (to be rebuilt
   * at the next open); a root record that does not decode is skipped.
   */
  async migrate(): Promise<string[]> {
    const old: string[] = [];
    for await (const [k, v] of this.kv.range({ gte: ROOTS_PREFIX, lt: prefixEnd(ROOTS_PREFIX) })) {
      let format: number;
      try {
        format = decodeRoot(v).format;
      } catch {
        continue; // A damaged root record is not the migration's to judge: reading that group reports it.
      }
      if (!READABLE.has(format)) old.push(new TextDecoder().decode(k.subarray(ROOTS_PREFIX.length)));
    }
    for (const gid of old) {
      const { ops, commit } = await this.rebuild(gid, []);
      await this.kv.batch(ops, { sync: true });
      commit();
    }
    return old;
  }

  /** Drop every cached tree (after a failed write: trees reload from what the store holds). */
  forget(): void {
    this.groups.clear();
    this.loading.clear();
    this.#generation++;
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
    return rb ? decodeRoot(rb).root.count : 0;
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

  /**
   * Check a group in full, reading the store directly (not the cache): every Merkle page (its bytes hash to
   * its key and the tree is the one its time index rebuilds), and every event the tree or the time index
   * names (readable, its id the SHA-256 of its bytes, in this group). A read error is a finding, never a
   * throw. An event whose id is known can be restored from a peer that holds it.
   */
  async fsck(gid: string): Promise<FsckResult> {
    const g = fromHex(gid)!;
    const problems: string[] = [];
    // Pages, read afresh.
    const pages = new Map<string, Uint8Array>();
    const prefix = merklePrefix(g);
    try {
      for await (const [k, v] of this.kv.range({ gte: prefix, lt: prefixEnd(prefix) })) {
        pages.set(toHex(k.subarray(33)), v.slice());
      }
    } catch (e) {
      problems.push(`Merkle pages unreadable after ${pages.size} pages: ${(e as Error).message}`);
    }
    let root: RootInfo | null = null;
    let checkpoint: Checkpoint | null = null;
    try {
      const rb = await this.kv.get(rootKey(gid));
      if (rb) {
        const r = decodeRoot(rb);
        if (!READABLE.has(r.format)) {
          problems.push(`Merkle tree is format ${r.format}; the node rebuilds it as format ${MERKLE_FORMAT} on open`);
        }
        root = r.root;
        checkpoint = r.checkpoint;
      }
    } catch (e) {
      problems.push(`Merkle root unreadable: ${(e as Error).message}`);
    }
    // The time index.
    const items: { ts: number; id: Uint8Array }[] = [];
    const lo = timeKeyFloor(g, 0).subarray(0, 33);
    try {
      for await (const [k] of this.kv.range({ gte: lo, lt: prefixEnd(lo) })) {
        const ts = readU64be(k, 33);
        items.push({ ts, id: k.slice(41, 73) });
      }
    } catch (e) {
      problems.push(`time index unreadable after ${items.length} entries: ${(e as Error).message}`);
    }
    let tree = new MerkleTree({ get: (h: Uint8Array) => pages.get(toHex(h)) }, checkpoint?.root ?? root, {
      cachePages: 0,
    });
    let journal = 0;
    if (checkpoint !== null) {
      // The stored pages are the checkpoint's: the journal (read afresh) brings them to the root record's tree.
      try {
        journal = await replayJournal(this.kv, g, checkpoint, { pages, pending: new Set(), garbage: new Set(), tree });
        const got = tree.root();
        if (toHex(got.hash) !== toHex(root!.hash) || got.count !== root!.count) {
          problems.push(
            `Merkle journal ends on ${got.count} items ('${toHex(got.hash)}'), ` +
              `the root record says ${root!.count} ('${toHex(root!.hash)}')`,
          );
        }
      } catch (e) {
        problems.push(`Merkle journal cannot be replayed: ${(e as Error).message}`);
        tree = new MerkleTree({ get: (h: Uint8Array) => pages.get(toHex(h)) }, checkpoint.root, { cachePages: 0 });
      }
    }
    let firstDifference: string | undefined;
    try {
      const r = tree.fsck(items);
      if (!r.ok) firstDifference = r.firstDifference;
    } catch (e) {
      firstDifference = `Cannot compare the Merkle tree: ${(e as Error).message}`;
    }
    // Ids the Merkle tree knows (as far as its pages can be read), then the time index's.
    const known = new Map<string, { ts: number; inTree: boolean }>();
    try {
      if (root && root.count > 0) {
        tree.iterate(0, root.count, (it) => {
          known.set(toHex(it.id), { ts: it.ts, inTree: true });
        });
      }
    } catch (e) {
      problems.push(`Merkle leaves unreadable after ${known.size} ids: ${(e as Error).message}`);
    }
    for (const it of items) {
      const hex = toHex(it.id);
      if (!known.has(hex)) known.set(hex, { ts: it.ts, inTree: false });
    }
    const damaged: DamagedEvent[] = [];
    const tombstones: [string, Uint8Array][] = [];
    const ids = [...known.keys()];
    const read = async (chunk: string[]): Promise<(Uint8Array | undefined | Error)[]> => {
      try {
        return await this.kv.getMany(chunk.map((h) => eventKey(fromHex(h)!)));
      } catch {
        // One unreadable block fails the whole read: read one by one to say which.
        const values: (Uint8Array | undefined | Error)[] = [];
        for (const h of chunk) values.push(await this.kv.get(eventKey(fromHex(h)!)).catch((e) => e as Error));
        return values;
      }
    };
    // FSCK_READS_IN_FLIGHT reads ahead, so RocksDB reads while the events already read are checked.
    const ahead: Promise<(Uint8Array | undefined | Error)[]>[] = [];
    for (let i = 0, next = 0; i < ids.length; i += FSCK_READ_BATCH) {
      for (; next < ids.length && next < i + FSCK_READS_IN_FLIGHT * FSCK_READ_BATCH; next += FSCK_READ_BATCH) {
        ahead.push(read(ids.slice(next, next + FSCK_READ_BATCH)));
      }
      const chunk = ids.slice(i, i + FSCK_READ_BATCH);
      const values = await ahead.shift()!;
      chunk.forEach((hex, j) => {
        const v = values[j];
        let problem = "";
        if (v instanceof Error) problem = `unreadable: ${v.message}`;
        else if (v === undefined) problem = "missing";
        else if (toHex(sha256(v)) !== hex) problem = "bytes do not hash to its id";
        else if (v.length < 36 || toHex(v.subarray(4, 36)) !== gid) problem = "not an event of this group";
        if (problem) damaged.push({ id: hex, problem, restorable: true, inTree: known.get(hex)!.inTree });
        else if (v instanceof Uint8Array && peekEvent(v)?.kind === KIND_TOMBSTONE) tombstones.push([hex, v]);
      });
    }
    // Tombstones: every target they name is gone (not in the tree, the time index or the events keyspace) and
    // has its entry in the deleted set.
    const deletion: string[] = [];
    for (const [x, bytes] of tombstones) {
      let targets: Uint8Array[];
      try {
        targets = decodeTombstone(decodeEvent(bytes, { ...FSCK_EVENT_LIMITS, event_bytes_max: bytes.length }).payload);
      } catch (e) {
        deletion.push(`tombstone ${x} does not decode: ${(e as Error).message}`);
        continue;
      }
      const held = await this.kv.getMany(targets.map((t) => eventKey(t))).catch(() => targets.map(() => undefined));
      const entries = await this.kv.getMany(targets.map((t) => deletedKey(t, fromHex(x)!)))
        .catch(() => targets.map(() => undefined));
      targets.forEach((t, i) => {
        const th = toHex(t);
        if (known.get(th)?.inTree) deletion.push(`tombstone ${x} names ${th}, still in the Merkle tree`);
        else if (known.has(th)) deletion.push(`tombstone ${x} names ${th}, still in the time index`);
        if (held[i] !== undefined) deletion.push(`tombstone ${x} names ${th}, still stored`);
        if (entries[i] === undefined) deletion.push(`tombstone ${x} names ${th}, which has no deleted-set entry`);
      });
    }
    const ok = !firstDifference && problems.length === 0 && damaged.length === 0 && deletion.length === 0;
    return {
      ok,
      count: items.length,
      ...(firstDifference ? { firstDifference } : {}),
      pages: pages.size,
      journalItems: journal,
      eventsChecked: ids.length,
      damaged: damaged.slice(0, FSCK_DAMAGED_MAX),
      damagedCount: damaged.length,
      problems,
      tombstones: { checked: tombstones.length, problems: deletion.slice(0, FSCK_DAMAGED_MAX) },
    };
  }
}

/** An event fsck found damaged or missing. */
export interface DamagedEvent {
  /** Hex event id. */
  id: string;
  /** What is wrong: `missing`, `unreadable: …`, `bytes do not hash to its id`, `not an event of this group`. */
  problem: string;
  /** Its id is known, so a peer holding it can send it again (sync asks by id). */
  restorable: boolean;
  /** Whether the id came from the Merkle tree (else only from the time index). */
  inTree: boolean;
}

/** What `fsck` found in one group. */
export interface FsckResult {
  ok: boolean;
  /** Entries in the time index. */
  count: number;
  /** The first Merkle page that differs from the rebuilt tree (or cannot be read or verified). */
  firstDifference?: string;
  /** Merkle pages of the tree (stored, and made by replaying the journal). */
  pages: number;
  /** Items in the Merkle journal, replayed over the stored pages. */
  journalItems: number;
  /** Events read and hashed. */
  eventsChecked: number;
  damaged: DamagedEvent[];
  damagedCount: number;
  /** Keyspaces that could not be read in full. */
  problems: string[];
  /** The group's tombstones held, and what is wrong about their targets (one still held, an entry missing). */
  tombstones: { checked: number; problems: string[] };
}

const FSCK_EVENT_LIMITS = { event_bytes_max: 0, event_tags_max: 1 << 20, tag_bytes_max: 1 << 20 };

/** What {@linkcode fsckDeleted} found in the deleted set. */
export interface DeletedSetReport {
  ok: boolean;
  /** Entries read. */
  entries: number;
  /** Entries whose tombstone is confirmed / pending. */
  confirmed: number;
  /** What is wrong (at most FSCK_DAMAGED_MAX listed; `problemCount` is exact). */
  problems: string[];
  problemCount: number;
}

/**
 * Check the deleted set whole (store-wide, node stopped): every entry names a tombstone held that names its
 * target, and no target is held. Reads only; a read error is a finding.
 */
export async function fsckDeleted(kv: Kv): Promise<DeletedSetReport> {
  const problems: string[] = [];
  let entries = 0, confirmed = 0, count = 0;
  const note = (p: string) => {
    count++;
    if (problems.length < FSCK_DAMAGED_MAX) problems.push(p);
  };
  const lo = Uint8Array.of(KS.deleted);
  const batch: [Uint8Array, Uint8Array][] = [];
  const check = async () => {
    const tombs = await kv.getMany(batch.map(([, x]) => eventKey(x))).catch(() => batch.map(() => undefined));
    const targets = await kv.getMany(batch.map(([t]) => eventKey(t))).catch(() => batch.map(() => undefined));
    batch.forEach(([t, x], i) => {
      const th = toHex(t), xh = toHex(x);
      if (targets[i] !== undefined) note(`deleted ${th} is still stored (tombstone ${xh})`);
      const b = tombs[i];
      if (!b) return note(`deleted ${th}: its tombstone ${xh} is not held`);
      try {
        const ev = decodeEvent(b, { ...FSCK_EVENT_LIMITS, event_bytes_max: b.length });
        if (ev.kind !== KIND_TOMBSTONE) return note(`deleted ${th}: ${xh} is not a tombstone (kind ${ev.kind})`);
        if (!decodeTombstone(ev.payload).some((y) => toHex(y) === th)) note(`deleted ${th}: ${xh} does not name it`);
      } catch (e) {
        note(`deleted ${th}: its tombstone ${xh} does not decode: ${(e as Error).message}`);
      }
    });
    batch.length = 0;
  };
  try {
    for await (const [k, v] of kv.range({ gte: lo, lt: prefixEnd(lo) })) {
      entries++;
      if (v[0] === 1) confirmed++;
      if (k.length !== 65) {
        note(`deleted-set key ${toHex(k)} is ${k.length} bytes, expected 65`);
        continue;
      }
      batch.push([k.slice(1, 33), k.slice(33, 65)]);
      if (batch.length === FSCK_READ_BATCH) await check();
    }
    if (batch.length) await check();
  } catch (e) {
    note(`deleted set unreadable after ${entries} entries: ${(e as Error).message}`);
  }
  return { ok: count === 0, entries, confirmed, problems, problemCount: count };
}
