/**
 * The content-defined page boundary rule of the Merkle index, and the
 * chunker that cuts one level's node sequence into pages with it.
 *
 * Scanning a level's nodes in order, after appending node `x` to the
 * current page, whose size is then `s`, the page closes when
 *
 * - `s >= max`, or
 * - `s >= min` and `u32(x) < boundaryThreshold(s, level)`,
 *
 * where `u32(x)` is the first four bytes of the node, big-endian. Above
 * level 0 (pages of page hashes), `min` is 128, `max` 512 and the threshold
 * `floor((s - 128)^4 / 80)`: a quartic hazard, zero at 128 nodes and about
 * 6.3 % per node at 511, giving pages of 384.6 nodes on average (standard
 * deviation 58; 0.7 % cut by the 512 limit). Level 0 (event ids) uses a
 * flat hazard: `min` 32, `max` 256, threshold `2^26` (one node in 64), so
 * leaves hold about 93 ids (3 KiB of bytes; about 3 % cut by the 256 limit)
 * and a change at a random place rewrites 3 KiB, not 13 KiB. Whether a
 * node closes a leaf then hardly depends on where it sits, so an insert or
 * a removal seldom moves a leaf boundary and rewrites the next leaf too
 * (store format 3's leaves used the quartic curve shrunk four times, min 32
 * and max 128, whose rising threshold often moved a boundary). The last page
 * of a level closes at the level's end.
 *
 * A decision depends only on the nodes since the last boundary, so the pages
 * are a function of the node sequence alone, and after a change the pages
 * line up with the old ones again at the first common boundary.
 *
 * @module
 */

import { type CopiedRun, type Page, pageOfColumns } from "./page.ts";
import { copy32, ID, u32At } from "./_util.ts";

/** Fewest nodes in a page above level 0 that the rule may close (the last page of a level may hold fewer). */
export const PAGE_NODES_MIN = 128;

/** Most nodes in a page: 512 nodes of 32 bytes, 16 KiB of node data. */
export const PAGE_NODES_MAX = 512;

/** Fewest nodes in a leaf (level 0) that the rule may close. */
export const LEAF_NODES_MIN = 32;

/** Most nodes in a leaf: 256 ids, 8 KiB of node data. */
export const LEAF_NODES_MAX = 256;

/** At level 0, from {@linkcode LEAF_NODES_MIN} nodes, a node whose first four bytes are below this closes the leaf: one in 64. */
export const LEAF_CUT_BELOW = 2 ** 26;

/** Divisor of the quartic hazard in {@linkcode boundaryThreshold} above level 0. */
export const BOUNDARY_DIVISOR = 80;

/**
 * The threshold below which a node's first four bytes (big-endian) close a
 * page of `size` nodes at `level`: 0 below the level's minimum, `2^32` from
 * its maximum, else `floor((size - 128)^4 / 80)` above level 0 and
 * {@linkcode LEAF_CUT_BELOW} (`2^26`) at level 0. Every intermediate is an
 * exact integer in a double, so the rule is exact.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { boundaryThreshold } from "./chunker.ts";
 * assert(boundaryThreshold(128) === 0);
 * assert(boundaryThreshold(384) === 53687091);
 * assert(boundaryThreshold(512) === 2 ** 32);
 * assert(boundaryThreshold(96, 0) === 2 ** 26);
 * assert(boundaryThreshold(31, 0) === 0 && boundaryThreshold(256, 0) === 2 ** 32);
 * ```
 */
export function boundaryThreshold(size: number, level = 1): number {
  if (level === 0) {
    if (size >= LEAF_NODES_MAX) return 2 ** 32;
    if (size < LEAF_NODES_MIN) return 0;
    return LEAF_CUT_BELOW;
  }
  if (size >= PAGE_NODES_MAX) return 2 ** 32;
  if (size < PAGE_NODES_MIN) return 0;
  const t = size - PAGE_NODES_MIN;
  return Math.floor((t * t * t * t) / BOUNDARY_DIVISOR);
}

/** {@linkcode boundaryThreshold} by size, at level 0 and above: the chunker looks one up per node. */
const THRESHOLDS: readonly [Float64Array, Float64Array] = [
  Float64Array.from({ length: LEAF_NODES_MAX + 1 }, (_, s) => boundaryThreshold(s, 0)),
  Float64Array.from({ length: PAGE_NODES_MAX + 1 }, (_, s) => boundaryThreshold(s, 1)),
];

/** The thresholds of `level` by size, `0..max`. */
const thresholdsOf = (level: number): Float64Array => THRESHOLDS[level === 0 ? 0 : 1];

/** Whether the node at `nodes[off]` closes a page of `level` that now holds `size` nodes. */
export function closesPage(nodes: Uint8Array, off: number, size: number, level = 1): boolean {
  const t = thresholdsOf(level);
  return size >= t.length || u32At(nodes, off) < t[size]!;
}

/**
 * A growable column store of level entries: per entry its node, first key
 * `(ts, id)`, item count and id sum. At level 0 an entry is an item: the
 * node and first id are the item id, the count is 1 and the sum is the id.
 * Pages are the fixed form of the same columns.
 */
export class Entries {
  /** Level of the nodes. */
  readonly level: number;
  /** Number of entries. */
  length = 0;
  /** Nodes, 32 bytes each. */
  nodes: Uint8Array;
  /** First item ts of each entry (the item ts at level 0). */
  firstTs: Float64Array;
  /** First item id of each entry, 32 bytes each (the nodes at level 0). */
  firstIds: Uint8Array;
  /** Item count of each entry (1 at level 0). */
  counts: Float64Array;
  /** Id sum of each entry, 32 bytes little-endian each (the nodes at level 0). */
  sums: Uint8Array;
  /** Runs of entries copied from older pages by {@linkcode Entries.pushRun}, in order (their hashed segments are reused). */
  copied: CopiedRun[] = [];
  /**
   * With `link` (above level 0): the page each entry summarises, where known, handed to the pages made of
   * these entries as their `kids` (a tree whose cache holds every page links children to parents).
   */
  readonly pages: (Page | undefined)[] | null;

  /** Make empty entries of `level` with room for `capacity`; with `link`, track the page behind each entry. */
  constructor(level: number, capacity = 64, link = false) {
    this.level = level;
    this.pages = link && level > 0 ? [] : null;
    this.nodes = new Uint8Array(capacity * ID);
    this.firstTs = new Float64Array(capacity);
    this.counts = new Float64Array(capacity);
    this.firstIds = level === 0 ? this.nodes : new Uint8Array(capacity * ID);
    this.sums = level === 0 ? this.nodes : new Uint8Array(capacity * ID);
  }

  #grow(): void {
    const cap = this.firstTs.length * 2;
    const grow8 = (a: Uint8Array) => {
      const b = new Uint8Array(cap * ID);
      b.set(a);
      return b;
    };
    const growF = (a: Float64Array) => {
      const b = new Float64Array(cap);
      b.set(a);
      return b;
    };
    this.nodes = grow8(this.nodes);
    this.firstTs = growF(this.firstTs);
    this.counts = growF(this.counts);
    this.firstIds = this.level === 0 ? this.nodes : grow8(this.firstIds);
    this.sums = this.level === 0 ? this.nodes : grow8(this.sums);
  }

  /** Append an item (level 0 only). */
  pushItem(ts: number, id: Uint8Array): void {
    if (this.length === this.firstTs.length) this.#grow();
    const i = this.length++;
    copy32(this.nodes, i * ID, id, 0);
    this.firstTs[i] = ts;
    this.counts[i] = 1;
  }

  /** Append entry `i` of `src` (entries or a page of the same level). */
  pushFrom(src: Entries | Page, i: number): void {
    if (this.length === this.firstTs.length) this.#grow();
    const j = this.length++;
    if (this.pages !== null) this.pages[j] = src instanceof Entries ? src.pages?.[i] : src.kids?.[i];
    const o = i * ID;
    const d = j * ID;
    copy32(this.nodes, d, src.nodes, o);
    this.firstTs[j] = src.firstTs[i]!;
    if (this.level === 0) {
      this.counts[j] = 1;
    } else {
      copy32(this.firstIds, d, src.firstIds, o);
      copy32(this.sums, d, src.sums, o);
      this.counts[j] = src.counts === null ? 1 : src.counts[i]!;
    }
  }

  /** Append entries `i..j` of `src` (a page of the same level) in one copy per column. */
  pushRun(src: Page, i: number, j: number): void {
    const n = j - i;
    while (this.length + n > this.firstTs.length) this.#grow();
    const d = this.length;
    const last = this.copied.at(-1);
    if (last !== undefined && last.page === src && last.at + last.len === d && last.from + last.len === i) {
      last.len += n;
    } else this.copied.push({ at: d, len: n, page: src, from: i });
    if (this.pages !== null) { for (let k = 0; k < n; k++) this.pages[d + k] = src.kids?.[i + k]; }
    this.nodes.set(src.nodes.subarray(i * ID, j * ID), d * ID);
    this.firstTs.set(src.firstTs.subarray(i, j), d);
    if (this.level === 0 || src.counts === null) {
      this.counts.fill(1, d, d + n);
    } else {
      this.firstIds.set(src.firstIds.subarray(i * ID, j * ID), d * ID);
      this.sums.set(src.sums.subarray(i * ID, j * ID), d * ID);
      this.counts.set(src.counts.subarray(i, j), d);
    }
    this.length += n;
  }

  /** Append the summary of `page` (an entry of level `page.level + 1`). */
  pushPage(page: Page): void {
    if (this.length === this.firstTs.length) this.#grow();
    const j = this.length++;
    if (this.pages !== null) this.pages[j] = page;
    const d = j * ID;
    this.nodes.set(page.hash(), d);
    this.firstTs[j] = page.firstTs[0]!;
    copy32(this.firstIds, d, page.firstIds, 0);
    this.counts[j] = page.itemCount;
    page.idSumBytes(this.sums, d);
  }

  /** Make a page of the entries and empty them; its hash reuses the segments of the runs copied into it. */
  takePage(): Page {
    const n = this.length;
    this.length = 0;
    const copied = this.copied;
    this.copied = [];
    const page = pageOfColumns(this, n, copied.length > 0 ? copied : undefined);
    if (this.pages !== null) {
      page.kids = this.pages.slice(0, n);
      this.pages.length = 0;
    }
    return page;
  }
}

/**
 * Cuts one level's entries into pages with the boundary rule: push entries
 * in order; `onPage` receives every page the rule (or {@linkcode Chunker.finish}) closes.
 */
export class Chunker {
  readonly #current: Entries;
  readonly #onPage: (page: Page) => void;

  /**
   * A chunker for `level` that hands each closed page to `onPage`; runs
   * pushed with {@linkcode Chunker.pushRun} lend their hashed segments.
   * With `link`, pages above level 0 get their children as `kids`.
   */
  constructor(level: number, onPage: (page: Page) => void, link = false) {
    this.#current = new Entries(level, PAGE_NODES_MAX, link);
    this.#onPage = onPage;
  }

  /** Nodes in the open page; 0 right after a page closed. */
  get open(): number {
    return this.#current.length;
  }

  /** Append an item (level 0). */
  pushItem(ts: number, id: Uint8Array): void {
    this.#current.pushItem(ts, id);
    this.#check();
  }

  /** Append entry `i` of `src`. */
  pushFrom(src: Entries | Page, i: number): void {
    this.#current.pushFrom(src, i);
    this.#check();
  }

  /**
   * Append entries `i..j` of `src` (a page of this level), as many
   * {@linkcode Chunker.pushFrom} calls would, but copying each stretch up to
   * a boundary at once.
   */
  pushRun(src: Page, i: number, j: number): void {
    const c = this.#current;
    const t = thresholdsOf(c.level);
    const nodes = src.nodes;
    while (i < j) {
      let s = c.length;
      let end = j;
      let closed = false;
      for (let k = i; k < j; k++) {
        if (u32At(nodes, k * ID) < t[++s]!) {
          end = k + 1;
          closed = true;
          break;
        }
      }
      c.pushRun(src, i, end);
      if (closed) this.#onPage(c.takePage());
      i = end;
    }
  }

  /** Close the open page, if any, at the end of the level. */
  finish(): void {
    if (this.#current.length > 0) this.#onPage(this.#current.takePage());
  }

  #check(): void {
    const c = this.#current;
    const s = c.length;
    if (closesPage(c.nodes, (s - 1) * ID, s, c.level)) this.#onPage(c.takePage());
  }
}
