/**
 * The Merkle index of one group: a prolly tree over `(ts, id)` items, kept
 * in a page store, with rank queries, fingerprints, inclusion proofs and
 * incremental batch inserts. Pure and synchronous: reads go through a
 * {@linkcode PageStore}, writes come back as a {@linkcode PageWrites} for
 * the caller to apply atomically with its own data.
 *
 * @module
 */

import { toHex, toHexAt } from "../core/bytes.ts";
import { Chunker, Entries } from "./chunker.ts";
import { fingerprintOf } from "./fingerprint.ts";
import type { Bound, Item } from "./item.ts";
import { compareItems } from "./item.ts";
import { decodePage, encodePage, type Page } from "./page.ts";
import { encodeProof, type ProofStep } from "./proof.ts";
import { sumAdd, sumEqualsBytes, sumSub } from "./_sum.ts";
import { assertItem, bytesEqualAt, compareKeyAt, corruption, ID } from "./_util.ts";
import { XfError } from "../core/errors.ts";

/** Where the tree reads encoded pages, by page hash. */
export interface PageStore {
  /** The encoded page whose hash is `hash`, or `undefined` if absent. */
  get(hash: Uint8Array): Uint8Array | undefined;
}

/** What identifies a tree: its root page hash, item count and depth. */
export interface RootInfo {
  /** Hash of the root page; 32 zero bytes for the empty set. */
  hash: Uint8Array;
  /** Number of items. */
  count: number;
  /** Number of levels: root page level + 1; 0 for the empty set. */
  depth: number;
}

/** The result of a build or insert: the new root and the page changes to apply. */
export interface PageWrites {
  /** The new root. */
  root: RootInfo;
  /** Pages to store: lower-case hex page hash to encoded page (the live page's own bytes: do not modify them). */
  put: Map<string, Uint8Array>;
  /** Pages no longer in the tree (hex page hashes), to delete. */
  del: string[];
}

/** The outcome of {@linkcode MerkleTree.fsck}. */
export interface FsckReport {
  /** Whether the stored tree is exactly the tree of the given items. */
  ok: boolean;
  /** The first page that differs, described for a person. */
  firstDifference?: string;
}

/** Options of a {@linkcode MerkleTree}. */
export interface MerkleTreeOptions {
  /** Most decoded pages kept in memory (least recently used go first). */
  cachePages?: number;
}

/** Caches at least this large link decoded children to their parents (see `#child`). */
export const LINK_CHILDREN_CACHE_MIN = 4096;

/** Default of {@linkcode MerkleTreeOptions.cachePages}: about 16 MiB of leaf pages. */
export const CACHE_PAGES_DEFAULT = 1024;

const ZERO_HASH = new Uint8Array(ID);

interface Edit {
  /** Old item rank where the replaced entries start. */
  start: number;
  /** Old item rank where they end (equal to `start` for an insertion). */
  end: number;
  /** First replacement entry in the level's source. */
  from: number;
  /** End of the replacement entries. */
  to: number;
}

interface Located {
  page: Page;
  hex: string;
  /** Old rank of the page's first item. */
  start: number;
}

/**
 * A Merkle index over a page store. Reads verify every page against the
 * hash it was read by and against its parent's summary of it; a page that
 * is missing or wrong throws `XfError("STORAGE_CORRUPTION")`.
 *
 * `insert()` moves the tree to the new root at once and keeps the new
 * pages in its cache: apply the returned writes before the cache could
 * miss them (in practice, before the next insert), and if applying fails,
 * drop this tree and open a new one from the last durable root.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { MerkleTree, type PageStore } from "./tree.ts";
 * const pages = new Map<string, Uint8Array>();
 * const hex = (h: Uint8Array) => Array.from(h, (b) => b.toString(16).padStart(2, "0")).join("");
 * const store: PageStore = { get: (h) => pages.get(hex(h)) };
 * const tree = new MerkleTree(store, null);
 * const id = new Uint8Array(32).fill(1);
 * const { put, del } = tree.insert([{ ts: 10, id }]);
 * for (const [k, v] of put) pages.set(k, v);
 * for (const k of del) pages.delete(k);
 * assert(tree.size() === 1 && tree.has({ ts: 10, id }));
 * ```
 */
export class MerkleTree {
  readonly #store: PageStore;
  readonly #cache = new Map<string, Page>();
  readonly #cacheMax: number;
  #root: RootInfo;

  /** Open the tree whose root is `root` (`null` for the empty tree) over `store`. */
  constructor(store: PageStore, root: RootInfo | null, options: MerkleTreeOptions = {}) {
    this.#store = store;
    this.#cacheMax = Math.max(16, options.cachePages ?? CACHE_PAGES_DEFAULT);
    if (root === null || root.count === 0) {
      if (root !== null && (root.depth !== 0 || !bytesEqualAt(root.hash, 0, ZERO_HASH, 0, ID))) {
        throw new RangeError(`Cannot open Merkle tree: an empty root must have depth 0 and a zero hash`);
      }
      this.#root = { hash: ZERO_HASH.slice(), count: 0, depth: 0 };
    } else {
      if (!(root.hash instanceof Uint8Array) || root.hash.length !== ID) {
        throw new TypeError(`Cannot open Merkle tree: root hash must be 32 bytes`);
      }
      if (!Number.isSafeInteger(root.count) || root.count < 0 || !Number.isInteger(root.depth) || root.depth < 1) {
        throw new RangeError(`Cannot open Merkle tree: bad root count '${root.count}' or depth '${root.depth}'`);
      }
      this.#root = { hash: root.hash.slice(), count: root.count, depth: root.depth };
    }
  }

  /**
   * Build the tree of `sortedItems` from scratch: the reference
   * construction, which every insert order reproduces exactly.
   * Items must be valid and strictly increasing in `(ts, id)`.
   *
   * @example
   * ```ts
   * import { assert } from "@std/assert";
   * import { MerkleTree } from "./tree.ts";
   * const { root, put } = MerkleTree.build([{ ts: 1, id: new Uint8Array(32) }]);
   * assert(root.count === 1 && root.depth === 1 && put.size === 1);
   * ```
   */
  static build(sortedItems: readonly Item[]): PageWrites {
    const put = new Map<string, Uint8Array>();
    const root = buildPages(sortedItems, (_page, hex, bytes) => put.set(hex, bytes));
    return { root, put, del: [] };
  }

  /** The current root: hash, item count and depth. */
  root(): RootInfo {
    return { hash: this.#root.hash.slice(), count: this.#root.count, depth: this.#root.depth };
  }

  /** Number of items. */
  size(): number {
    return this.#root.count;
  }

  /**
   * The item of rank `i` (0-based, in `(ts, id)` order).
   *
   * @example
   * ```ts
   * import { assert } from "@std/assert";
   * import { MerkleTree } from "./tree.ts";
   * const tree = new MerkleTree({ get: () => undefined }, null);
   * tree.insert([{ ts: 7, id: new Uint8Array(32) }]);
   * assert(tree.getItem(0).ts === 7);
   * ```
   */
  getItem(i: number): Item {
    this.#assertRank(i, this.#root.count - 1, "item");
    const { leaf, index } = this.#leafAt(i);
    return { ts: leaf.firstTs[index]!, id: leaf.nodes.slice(index * ID, index * ID + ID) };
  }

  /**
   * Rank of the first item at or after `bound` (`size()` if none). The
   * bound's id may be a prefix and its ts may be `Infinity` or
   * `Number.MAX_VALUE`. With `begin` and `end` (negentropy's storage
   * interface), the rank is clamped to `begin..end`.
   *
   * @example
   * ```ts
   * import { assert } from "@std/assert";
   * import { MerkleTree } from "./tree.ts";
   * const tree = new MerkleTree({ get: () => undefined }, null);
   * tree.insert([{ ts: 5, id: new Uint8Array(32) }, { ts: 9, id: new Uint8Array(32) }]);
   * assert(tree.findLowerBound({ ts: 6, id: new Uint8Array(0) }) === 1);
   * assert(tree.findLowerBound(0, 1, { ts: 10, id: new Uint8Array(0) }) === 1);
   * ```
   */
  findLowerBound(bound: Bound): number;
  /** The rank of the first item at or after `bound`, clamped to `begin..end`. */
  findLowerBound(begin: number, end: number, bound: Bound): number;
  findLowerBound(a: Bound | number, end?: number, bound?: Bound): number {
    if (typeof a !== "number") return this.#lowerBound(a);
    this.#assertRange(a, end!);
    return Math.min(Math.max(this.#lowerBound(bound!), a), end!);
  }

  #lowerBound(bound: Bound): number {
    if (this.#root.count === 0) return 0;
    let page = this.#rootPage();
    let base = 0;
    while (page.level > 0) {
      const j = firstNotBefore(page, bound) - 1;
      if (j < 0) return base;
      base += page.prefixCounts![j]!;
      page = this.#child(page, j);
    }
    return base + firstNotBefore(page, bound);
  }

  /** The rank of the first item at or after `item`, and whether that item is `item`: one walk down. */
  #locate(item: Item): { rank: number; held: boolean } {
    const N = this.#root.count;
    if (N === 0) return { rank: 0, held: false };
    let page = this.#rootPage();
    let base = 0;
    while (page.level > 0) {
      const j = firstNotBefore(page, item) - 1;
      if (j < 0) {
        // Not after this page's first item (only at the root): that item decides.
        return { rank: base, held: compareKeyAt(page.firstTs[0]!, page.firstIds, 0, item) === 0 };
      }
      base += page.prefixCounts![j]!;
      page = this.#child(page, j);
    }
    const index = firstNotBefore(page, item);
    const rank = base + index;
    if (index < page.size) {
      return { rank, held: compareKeyAt(page.firstTs[index]!, page.nodes, index * ID, item) === 0 };
    }
    // Past this leaf's last item: the next leaf's first item decides.
    if (rank >= N) return { rank, held: false };
    const { leaf, index: at } = this.#leafAt(rank);
    return { rank, held: compareKeyAt(leaf.firstTs[at]!, leaf.nodes, at * ID, item) === 0 };
  }

  /** Whether `item` is in the tree. */
  has(item: Item): boolean {
    assertItem(item, "item");
    return this.#locate(item).held;
  }

  /**
   * The 16-byte negentropy fingerprint of the items of ranks
   * `begin..end` (end exclusive), in O(depth) page reads.
   */
  fingerprint(begin: number, end: number): Uint8Array {
    this.#assertRange(begin, end);
    // Negentropy asks for consecutive buckets: the previous end is often this begin.
    const from = this.#memo && this.#memo.root === this.#root && this.#memo.r === begin
      ? this.#memo.sum
      : this.#prefixSum(begin);
    const to = this.#prefixSum(end);
    this.#memo = { root: this.#root, r: end, sum: to };
    const acc = to.slice();
    sumSub(acc, from);
    return fingerprintOf(acc, end - begin);
  }

  /** The last prefix sum computed, for the tree state it was computed on. */
  #memo: { root: RootInfo; r: number; sum: Uint32Array } | null = null;

  /**
   * Call `cb` with each item of ranks `begin..end` (end exclusive) and its
   * rank, in order; stop early when `cb` returns `false`.
   */
  iterate(begin: number, end: number, cb: (item: Item, i: number) => boolean | void): void {
    this.#assertRange(begin, end);
    let r = begin;
    while (r < end) {
      const { leaf, index } = this.#leafAt(r);
      for (let k = index; k < leaf.size && r < end; k++, r++) {
        if (cb({ ts: leaf.firstTs[k]!, id: leaf.nodes.slice(k * ID, k * ID + ID) }, r) === false) return;
      }
    }
  }

  /**
   * An inclusion proof of `item`, or `null` if the tree does not hold it.
   * Check it with {@linkcode verifyProof} from proof.ts.
   */
  prove(item: Item): Uint8Array | null {
    assertItem(item, "item");
    if (this.#root.count === 0) return null;
    const path: Array<{ page: Page; index: number }> = [];
    let page = this.#rootPage();
    while (page.level > 0) {
      const j = firstAfter(page, item) - 1;
      if (j < 0) return null;
      path.push({ page, index: j });
      page = this.#child(page, j);
    }
    const index = firstNotBefore(page, item);
    if (index >= page.size || compareKeyAt(page.firstTs[index]!, page.nodes, index * ID, item) !== 0) return null;
    path.push({ page, index });
    const steps: ProofStep[] = path.reverse().map(({ page, index }) => page.path(index));
    return encodeProof(steps);
  }

  /**
   * Insert a batch of items (any order; items already present are
   * ignored) and return the page writes that take the store from the old
   * root to the new one. Only pages whose content changes are written:
   * each level is re-chunked from the first page an insert touches until
   * the new page boundaries line up with the old ones again. The result
   * equals {@linkcode MerkleTree.build} of the new set. The tree moves to
   * the new root at once (see the class doc on applying the writes).
   *
   * @example
   * ```ts
   * import { assert } from "@std/assert";
   * import { MerkleTree } from "./tree.ts";
   * const tree = new MerkleTree({ get: () => undefined }, null);
   * const w = tree.insert([{ ts: 2, id: new Uint8Array(32).fill(2) }, { ts: 1, id: new Uint8Array(32) }]);
   * assert(w.root.count === 2 && w.put.size === 1 && w.del.length === 0);
   * ```
   */
  insert(items: readonly Item[]): PageWrites {
    return this.update(items, []);
  }

  /**
   * Remove a batch of items (any order; items the tree does not hold are
   * ignored) and return the page writes, as {@linkcode MerkleTree.insert}
   * does: pages left too small merge with the next one by the boundary
   * rule, and a tree that shrinks to one page loses its upper levels.
   *
   * @example
   * ```ts
   * import { assert } from "@std/assert";
   * import { MerkleTree } from "./tree.ts";
   * const tree = new MerkleTree({ get: () => undefined }, null);
   * const a = { ts: 1, id: new Uint8Array(32) };
   * tree.insert([a, { ts: 2, id: new Uint8Array(32).fill(2) }]);
   * const w = tree.remove([a]);
   * assert(w.root.count === 1 && !tree.has(a));
   * ```
   */
  remove(items: readonly Item[]): PageWrites {
    return this.update([], items);
  }

  /**
   * Insert `add` and remove `remove` in one step (a tombstone and its
   * targets): one set of page writes from the old root to the root of
   * `(old ∪ add) \ remove`. An item in both lists is removed. Duplicates,
   * items already present (in `add`) and items absent (in `remove`) are
   * ignored.
   */
  update(add: readonly Item[], remove: readonly Item[]): PageWrites {
    add.forEach((item, i) => assertItem(item, `item ${i}`));
    remove.forEach((item, i) => assertItem(item, `removed item ${i}`));
    const dedupe = (list: readonly Item[]) =>
      list.slice().sort(compareItems).filter((item, i, all) => i === 0 || compareItems(all[i - 1]!, item) !== 0);
    const rm = dedupe(remove);
    let ins = dedupe(add);
    if (rm.length > 0 && ins.length > 0) {
      // An item both added and removed ends absent: drop it from the additions.
      let j = 0;
      ins = ins.filter((item) => {
        while (j < rm.length && compareItems(rm[j]!, item) < 0) j++;
        return j >= rm.length || compareItems(rm[j]!, item) !== 0;
      });
    }
    const N = this.#root.count;
    if (N === 0) {
      if (ins.length === 0) return { root: this.root(), put: new Map(), del: [] };
      const put = new Map<string, Uint8Array>();
      const pages: [string, Page][] = [];
      const root = buildPages(ins, (page, hex, bytes) => {
        put.set(hex, bytes);
        pages.push([hex, page]);
      });
      this.#commit(root, pages, []);
      return { root: this.root(), put, del: [] };
    }
    // Level 0 edits, in old ranks: new items go before the item at their rank, removed ones are skipped.
    const news = new Entries(0, Math.max(1, ins.length));
    let edits: Edit[] = [];
    let added = 0;
    let removed = 0;
    for (let a = 0, r = 0; a < ins.length || r < rm.length;) {
      const takeAdd = r >= rm.length || (a < ins.length && compareItems(ins[a]!, rm[r]!) < 0);
      const item = takeAdd ? ins[a++]! : rm[r++]!;
      const { rank: p, held } = this.#locate(item);
      if (held === takeAdd) continue;
      const last = edits.at(-1);
      if (takeAdd) {
        if (last !== undefined && last.end === p) last.to++;
        else edits.push({ start: p, end: p, from: news.length, to: news.length + 1 });
        news.pushItem(item.ts, item.id);
        added++;
      } else {
        if (last !== undefined && last.end === p) last.end++;
        else edits.push({ start: p, end: p + 1, from: news.length, to: news.length });
        removed++;
      }
    }
    if (edits.length === 0) return { root: this.root(), put: new Map(), del: [] };
    const count = N + added - removed;

    const R = this.#root.depth - 1;
    const made = new Map<string, { page: Page; bytes: Uint8Array }>();
    const gone = new Set<string>();
    let src = news;
    let newRoot: Page | null | undefined;
    for (let level = 0; newRoot === undefined; level++) {
      const link = this.#cacheMax >= LINK_CHILDREN_CACHE_MIN;
      const out = new Entries(level + 1, 64, link);
      const next: Edit[] = [];
      // Old entries go in as runs: the new pages reuse the old pages' hashed segments they copy whole.
      const chunker = new Chunker(level, (page) => {
        made.set(toHex(page.hash()), { page, bytes: encodePage(page) });
        out.pushPage(page);
      }, link);
      if (level > R) {
        // Above the old root: the one edit is the whole level.
        const e = edits[0]!;
        assert(edits.length === 1 && e.start === 0 && e.end === N, "edit above the root covers the level");
        for (let x = e.from; x < e.to; x++) chunker.pushFrom(src, x);
        chunker.finish();
        next.push({ start: 0, end: N, from: 0, to: out.length });
      } else {
        this.#rechunkLevel({ level, N, edits, src, chunker, out, next, gone });
      }
      const only = next[0]!;
      if (next.length === 1 && only.start === 0 && only.end === N && out.length <= 1) {
        // The level became a single page (the new root), or nothing is left: drop every old page above it.
        newRoot = out.length === 0 ? null : made.get(toHexAt(out.nodes, 0, ID))!.page;
        if (level < R) this.#collectAbove(level, gone);
      }
      edits = next;
      src = out;
    }
    const put = new Map<string, Uint8Array>();
    const pages: [string, Page][] = [];
    for (const [hex, { page, bytes }] of made) {
      if (gone.delete(hex)) continue;
      put.set(hex, bytes);
      pages.push([hex, page]);
    }
    const del = [...gone];
    assert((newRoot === null) === (count === 0), "an empty level means an empty set");
    const root = newRoot === null
      ? { hash: ZERO_HASH.slice(), count: 0, depth: 0 }
      : { hash: newRoot.hash().slice(), count, depth: newRoot.level + 1 };
    assert(newRoot === null || newRoot.itemCount === count, "the new root holds every item");
    this.#commit(root, pages, del);
    return { root: this.root(), put, del };
  }

  /**
   * Rebuild the tree of `allSortedItems` and compare it with the stored
   * tree page by page, reading the store directly (not the cache). Reports
   * the first difference: a page that cannot be read or verified (top
   * down), else the first differing page from level 0 up. Throws a
   * `RangeError` if the items are not valid and strictly increasing.
   */
  fsck(allSortedItems: readonly Item[]): FsckReport {
    const expected: Array<Array<{ hex: string; bytes: Uint8Array }>> = [];
    const want = buildPages(allSortedItems, (page, hex, bytes) => (expected[page.level] ??= []).push({ hex, bytes }));
    const have = this.#root;
    const where = (level: number, i: number, hex: string) => `level ${level} page ${i} ('${hex}')`;
    // Read the stored tree top down, verifying every page.
    const stored: Array<Array<{ hex: string; bytes: Uint8Array }>> = [];
    if (have.count > 0) {
      let row: Array<{ hash: Uint8Array; hex: string; parent: Page | null; j: number }> = [
        { hash: have.hash, hex: toHex(have.hash), parent: null, j: 0 },
      ];
      for (let level = have.depth - 1; level >= 0; level--) {
        const next: typeof row = [];
        const got: Array<{ hex: string; bytes: Uint8Array }> = [];
        for (const [i, { hash, hex, parent, j }] of row.entries()) {
          const bytes = this.#store.get(hash);
          try {
            const page = verifiedPage(bytes, hash, hex);
            if (parent === null) checkRootPage(page, have, hex);
            else checkChild(parent, j, page, hex);
            for (let c = 0; level > 0 && c < page.size; c++) {
              const h = page.nodes.slice(c * ID, c * ID + ID);
              next.push({ hash: h, hex: toHex(h), parent: page, j: c });
            }
          } catch (e) {
            if (!(e instanceof XfError)) throw e;
            return { ok: false, firstDifference: `${where(level, i, hex)}: ${e.message}` };
          }
          got.push({ hex, bytes: bytes! });
        }
        stored[level] = got;
        row = next;
      }
    }
    for (let level = 0; level < Math.max(want.depth, have.depth); level++) {
      const exp = expected[level] ?? [];
      const st = stored[level] ?? [];
      for (let i = 0; i < Math.max(exp.length, st.length); i++) {
        const e = exp[i];
        const s = st[i];
        if (e === undefined || s === undefined) {
          return {
            ok: false,
            firstDifference: `level ${level}: stored tree has ${st.length} pages, rebuilt tree ${exp.length}`,
          };
        }
        if (e.hex !== s.hex) {
          return { ok: false, firstDifference: `${where(level, i, s.hex)}: rebuilt page hash is '${e.hex}'` };
        }
        const at = firstByteDifference(e.bytes, s.bytes);
        if (at >= 0) {
          return {
            ok: false,
            firstDifference: `${where(level, i, s.hex)}: stored bytes differ from the rebuilt page at byte ${at}`,
          };
        }
      }
    }
    if (want.count !== have.count || want.depth !== have.depth || toHex(want.hash) !== toHex(have.hash)) {
      return {
        ok: false,
        firstDifference: `root: stored ${have.count} items, depth ${have.depth}, '${toHex(have.hash)}'; ` +
          `rebuilt ${want.count} items, depth ${want.depth}, '${toHex(want.hash)}'`,
      };
    }
    return { ok: true };
  }

  // --- private ---------------------------------------------------------

  /** Re-chunk one level (at or below the old root) for its edits. */
  #rechunkLevel(
    o: {
      level: number;
      N: number;
      edits: Edit[];
      src: Entries;
      chunker: Chunker;
      out: Entries;
      next: Edit[];
      gone: Set<string>;
    },
  ): void {
    const { level, N, edits, src, chunker, out, next, gone } = o;
    let k = 0;
    const emitEditsAt = (r: number, skipUntil: number): number => {
      while (k < edits.length && edits[k]!.start === r) {
        const e = edits[k++]!;
        for (let x = e.from; x < e.to; x++) chunker.pushFrom(src, x);
        if (e.end > skipUntil) skipUntil = e.end;
      }
      return skipUntil;
    };
    while (k < edits.length) {
      // A region starts where old and new pages line up.
      let cur = this.#pageAt(level, Math.min(edits[k]!.start, N - 1));
      const regionStart = cur.start;
      const outFrom = out.length;
      let skipUntil = regionStart;
      let r = regionStart;
      for (;;) {
        gone.add(cur.hex);
        const pg = cur.page;
        r = cur.start;
        const counts = pg.counts;
        for (let i = 0; i < pg.size;) {
          skipUntil = emitEditsAt(r, skipUntil);
          if (r < skipUntil) {
            r += counts === null ? 1 : counts[i]!;
            i++;
            continue;
          }
          // The entries up to the next edit go in one run.
          const nextEdit = k < edits.length ? edits[k]!.start : Infinity;
          let j = i;
          do {
            r += counts === null ? 1 : counts[j]!;
            j++;
          } while (j < pg.size && r < nextEdit);
          chunker.pushRun(pg, i, j);
          i = j;
        }
        if (r === N) {
          skipUntil = emitEditsAt(r, skipUntil);
          chunker.finish();
          break;
        }
        // Aligned: a page closed where an old page closed, with no edit pending.
        if (chunker.open === 0 && skipUntil <= r) break;
        cur = this.#pageAt(level, r);
      }
      assert(k === edits.length || edits[k]!.start >= r, "every edit before the region end is applied");
      const last = next.at(-1);
      if (last !== undefined && last.end === regionStart) {
        last.end = r;
        last.to = out.length;
      } else {
        next.push({ start: regionStart, end: r, from: outFrom, to: out.length });
      }
    }
  }

  /** Add every old page above `level` to `gone`. */
  #collectAbove(level: number, gone: Set<string>): void {
    const walk = (page: Page, hex: string) => {
      gone.add(hex);
      if (page.level - 1 <= level) return;
      for (let j = 0; j < page.size; j++) walk(this.#child(page, j), toHexAt(page.nodes, j * ID, ID));
    };
    walk(this.#rootPage(), toHex(this.#root.hash));
  }

  #commit(root: RootInfo, pages: [string, Page][], del: string[]): void {
    this.#root = root;
    for (const hex of del) this.#cache.delete(hex);
    for (const [hex, page] of pages) this.#remember(hex, page);
  }

  #remember(hex: string, page: Page): void {
    this.#cache.delete(hex);
    this.#cache.set(hex, page);
    if (this.#cache.size > this.#cacheMax) {
      const oldest = this.#cache.keys().next().value;
      if (oldest !== undefined) this.#cache.delete(oldest);
    }
  }

  /** The page whose hash is `hashes[off..off+32]`, from the cache or the store. */
  #load(hashes: Uint8Array, off: number): Page {
    const hex = toHexAt(hashes, off, ID);
    const hit = this.#cache.get(hex);
    if (hit !== undefined) {
      this.#cache.delete(hex);
      this.#cache.set(hex, hit);
      return hit;
    }
    const hash = hashes.slice(off, off + ID);
    const page = verifiedPage(this.#store.get(hash), hash, hex);
    this.#remember(hex, page);
    return page;
  }

  #rootPage(): Page {
    if (this.#rootCache?.root === this.#root) return this.#rootCache.page;
    const page = this.#load(this.#root.hash, 0);
    checkRootPage(page, this.#root, toHex(this.#root.hash));
    this.#rootCache = { root: this.#root, page };
    return page;
  }

  /** The root page, checked, for the root it was read for. */
  #rootCache: { root: RootInfo; page: Page } | null = null;

  #child(parent: Page, j: number): Page {
    const linked = parent.kids?.[j];
    if (linked) return linked;
    const child = this.#load(parent.nodes, j * ID);
    checkChild(parent, j, child, toHexAt(parent.nodes, j * ID, ID));
    // With a cache big enough to hold a whole tree, keep the checked child with its parent: later walks
    // skip the lookup (a page is named by its hash, so the link can never go stale).
    if (this.#cacheMax >= LINK_CHILDREN_CACHE_MIN) (parent.kids ??= [])[j] = child;
    return child;
  }

  /** The leaf holding rank `rank` and the rank's index in it. */
  #leafAt(rank: number): { leaf: Page; index: number } {
    let page = this.#rootPage();
    let base = 0;
    while (page.level > 0) {
      const j = childOfRank(page, rank - base);
      base += page.prefixCounts![j]!;
      page = this.#child(page, j);
    }
    return { leaf: page, index: rank - base };
  }

  /** The old page of `level` holding rank `rank`, with its first rank. */
  #pageAt(level: number, rank: number): Located {
    let page = this.#rootPage();
    let parent: Page | null = null;
    let j = 0;
    let base = 0;
    while (page.level > level) {
      j = childOfRank(page, rank - base);
      base += page.prefixCounts![j]!;
      parent = page;
      page = this.#child(page, j);
    }
    const hex = parent === null ? toHex(this.#root.hash) : toHexAt(parent.nodes, j * ID, ID);
    return { page, hex, start: base };
  }

  /** Sum of the ids of ranks `0..r`, as 8 limbs. */
  #prefixSum(r: number): Uint32Array {
    const acc = new Uint32Array(8);
    if (r === 0) return acc;
    let page = this.#rootPage();
    if (r === this.#root.count) {
      sumAdd(acc, page.idSum);
      return acc;
    }
    let base = 0;
    while (page.level > 0) {
      const j = childOfRank(page, r - base);
      sumAdd(acc, page.prefixSums!, j * 8);
      base += page.prefixCounts![j]!;
      page = this.#child(page, j);
    }
    sumAdd(acc, page.leafPrefixSums(), (r - base) * 8);
    return acc;
  }

  #assertRank(i: number, max: number, what: string): void {
    if (!Number.isInteger(i) || i < 0 || i > max) {
      throw new RangeError(`Cannot read Merkle ${what}: rank '${i}' outside 0..${max}`);
    }
  }

  #assertRange(begin: number, end: number): void {
    if (!Number.isInteger(begin) || !Number.isInteger(end) || begin < 0 || begin > end || end > this.#root.count) {
      throw new RangeError(`Cannot read Merkle range: '${begin}..${end}' outside 0..${this.#root.count}`);
    }
  }
}

/**
 * Chunk `sortedItems` level by level, handing each page to `onPage`, and
 * return the root.
 */
function buildPages(
  sortedItems: readonly Item[],
  onPage: (page: Page, hex: string, bytes: Uint8Array) => void,
): RootInfo {
  for (let i = 0; i < sortedItems.length; i++) {
    const item = sortedItems[i]!;
    assertItem(item, `item ${i}`);
    if (i > 0 && compareItems(sortedItems[i - 1]!, item) >= 0) {
      throw new RangeError(`Cannot build Merkle tree: item ${i} is not after item ${i - 1}`);
    }
  }
  if (sortedItems.length === 0) return { hash: ZERO_HASH.slice(), count: 0, depth: 0 };
  let last: Page | undefined;
  const chunk = (level: number, push: (chunker: Chunker) => void): Entries => {
    const out = new Entries(level + 1);
    const chunker = new Chunker(level, (page) => {
      onPage(page, toHex(page.hash()), encodePage(page));
      out.pushPage(page);
      last = page;
    });
    push(chunker);
    chunker.finish();
    return out;
  };
  let entries = chunk(0, (c) => {
    for (const item of sortedItems) c.pushItem(item.ts, item.id);
  });
  for (let level = 1; entries.length > 1; level++) {
    const src = entries;
    entries = chunk(level, (c) => {
      for (let i = 0; i < src.length; i++) c.pushFrom(src, i);
    });
  }
  return { hash: last!.hash().slice(), count: sortedItems.length, depth: last!.level + 1 };
}

/** Decode `bytes` read by `hash` and check the page has that hash. */
function verifiedPage(bytes: Uint8Array | undefined, hash: Uint8Array, hex: string): Page {
  if (bytes === undefined) throw corruption(`Merkle page '${hex}' is missing from the store`);
  let page: Page;
  try {
    page = decodePage(bytes);
  } catch (e) {
    throw corruption(`Merkle page '${hex}' is corrupt: ${(e as Error).message}`);
  }
  if (!bytesEqualAt(page.hash(), 0, hash, 0, ID)) {
    throw corruption(`Merkle page '${hex}' does not match its hash: its nodes hash to '${toHex(page.hash())}'`);
  }
  return page;
}

function checkRootPage(page: Page, root: RootInfo, hex: string): void {
  if (page.level !== root.depth - 1 || page.itemCount !== root.count) {
    throw corruption(
      `Merkle root page '${hex}' has level ${page.level} and ${page.itemCount} items, ` +
        `the root says depth ${root.depth} and ${root.count} items`,
    );
  }
}

/** Check that `child` is what entry `j` of `parent` summarises. */
function checkChild(parent: Page, j: number, child: Page, hex: string): void {
  const o = j * ID;
  let why = "";
  if (child.level !== parent.level - 1) why = `level ${child.level} under a level-${parent.level} page`;
  else if (child.itemCount !== parent.counts![j]) {
    why = `${child.itemCount} items, its parent says ${parent.counts![j]}`;
  } else if (child.firstTs[0] !== parent.firstTs[j] || !bytesEqualAt(child.firstIds, 0, parent.firstIds, o, ID)) {
    why = `first key differs from its parent's`;
  } else if (!sumEqualsBytes(child.idSum, 0, parent.sums, o)) why = `id sum differs from its parent's`;
  if (why !== "") throw corruption(`Merkle page '${hex}' does not match its parent: ${why}`);
}

/** Index of the first node of `page` whose key is at or after `bound` (`size` if none). */
function firstNotBefore(page: Page, bound: Bound): number {
  let lo = 0;
  let hi = page.size;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (compareKeyAt(page.firstTs[mid]!, page.firstIds, mid * ID, bound) < 0) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** Index of the first node of `page` whose key is after `bound` (`size` if none). */
function firstAfter(page: Page, bound: Bound): number {
  let lo = 0;
  let hi = page.size;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (compareKeyAt(page.firstTs[mid]!, page.firstIds, mid * ID, bound) <= 0) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** The child of internal `page` that holds local rank `r`. */
function childOfRank(page: Page, r: number): number {
  const pc = page.prefixCounts!;
  let lo = 0;
  let hi = page.size - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >>> 1;
    if (pc[mid]! <= r) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

function firstByteDifference(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}

function assert(cond: boolean, what: string): asserts cond {
  if (!cond) throw new XfError("INTERNAL", `Merkle tree invariant failed: ${what}`);
}
