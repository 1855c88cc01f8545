/**
 * The content-defined page boundary rule of the Merkle index, and the
 * chunker that cuts one level's node sequence into pages with it.
 *
 * Scanning a level's nodes in order, after appending node `x` to the
 * current page, whose size is then `s`, the page closes when
 *
 * - `s >= PAGE_NODES_MAX` (512), or
 * - `s >= PAGE_NODES_MIN` (128) and `u32(x) < boundaryThreshold(s)`,
 *
 * where `u32(x)` is the first four bytes of the node, big-endian, and
 * `boundaryThreshold(s) = floor((s - 128)^4 / 80)`: a quartic hazard, zero
 * at 128 nodes and about 6.3 % per node at 511. The last page of a level
 * closes at the level's end. With uniformly random nodes the page size has
 * mean 384.6 and standard deviation 58 (computed exactly, and measured on
 * random data), and 0.7 % of pages are cut by the 512-node limit.
 *
 * A decision depends only on the nodes since the last boundary, so the pages
 * are a function of the node sequence alone, and after a change the pages
 * line up with the old ones again at the first common boundary.
 *
 * @module
 */

import { Page, type PageReuse } from "./page.ts";
import { copy32, ID } from "./_util.ts";

/** Fewest nodes in a page that the rule may close (the last page of a level may hold fewer). */
export const PAGE_NODES_MIN = 128;

/** Most nodes in a page: 512 nodes of 32 bytes, 16 KiB of node data. */
export const PAGE_NODES_MAX = 512;

/** Divisor of the quartic hazard in {@linkcode boundaryThreshold}. */
export const BOUNDARY_DIVISOR = 80;

/**
 * The threshold below which a node's first four bytes (big-endian) close a
 * page of `size` nodes: 0 below {@linkcode PAGE_NODES_MIN}, `2^32` from
 * {@linkcode PAGE_NODES_MAX}, else `floor((size - 128)^4 / 80)`. Every
 * intermediate is an exact integer in a double, so the rule is exact.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { boundaryThreshold } from "./chunker.ts";
 * assert(boundaryThreshold(128) === 0);
 * assert(boundaryThreshold(384) === 53687091);
 * assert(boundaryThreshold(512) === 2 ** 32);
 * ```
 */
export function boundaryThreshold(size: number): number {
  if (size >= PAGE_NODES_MAX) return 2 ** 32;
  if (size < PAGE_NODES_MIN) return 0;
  const t = size - PAGE_NODES_MIN;
  return Math.floor((t * t * t * t) / BOUNDARY_DIVISOR);
}

/** Whether the node at `nodes[off]` closes a page that now holds `size` nodes. */
export function closesPage(nodes: Uint8Array, off: number, size: number): boolean {
  if (size >= PAGE_NODES_MAX) return true;
  if (size < PAGE_NODES_MIN) return false;
  const u32 = ((nodes[off]! << 24) | (nodes[off + 1]! << 16) | (nodes[off + 2]! << 8) | nodes[off + 3]!) >>> 0;
  return u32 < boundaryThreshold(size);
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

  /** Make empty entries of `level` with room for `capacity`. */
  constructor(level: number, capacity = 64) {
    this.level = level;
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

  /** Append the summary of `page` (an entry of level `page.level + 1`). */
  pushPage(page: Page): void {
    if (this.length === this.firstTs.length) this.#grow();
    const j = this.length++;
    const d = j * ID;
    this.nodes.set(page.hash(), d);
    this.firstTs[j] = page.firstTs[0]!;
    copy32(this.firstIds, d, page.firstIds, 0);
    this.counts[j] = page.itemCount;
    page.idSumBytes(this.sums, d);
  }

  /** Make a page of the entries and empty them (`reuse`: see the {@linkcode Page} constructor). */
  takePage(reuse?: PageReuse): Page {
    const n = this.length;
    this.length = 0;
    return new Page({
      level: this.level,
      nodes: this.nodes.slice(0, n * ID),
      firstTs: this.firstTs.slice(0, n),
      firstIds: this.level === 0 ? null : this.firstIds.slice(0, n * ID),
      counts: this.level === 0 ? null : this.counts.slice(0, n),
      sums: this.level === 0 ? null : this.sums.slice(0, n * ID),
    }, reuse);
  }
}

/**
 * Cuts one level's entries into pages with the boundary rule: push entries
 * in order; `onPage` receives every page the rule (or {@linkcode Chunker.finish}) closes.
 */
export class Chunker {
  readonly #current: Entries;
  readonly #onPage: (page: Page) => void;
  /** The old page the open page's first `#same` nodes were copied from, in its order from its start. */
  #from: Page | null = null;
  #same = 0;

  /** A chunker for `level` that hands each closed page to `onPage`. */
  constructor(level: number, onPage: (page: Page) => void) {
    this.#current = new Entries(level, PAGE_NODES_MAX);
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

  /**
   * Append entry `i` of `src`. While the open page is a copy of the first
   * nodes of one old page, the new page's hash reuses that page's inner
   * nodes over them.
   */
  pushFrom(src: Entries | Page, i: number): void {
    const j = this.#current.length;
    if (src instanceof Page && i === j && (j === 0 || (this.#from === src && this.#same === j))) {
      this.#from = src;
      this.#same = j + 1;
    }
    this.#current.pushFrom(src, i);
    this.#check();
  }

  /** Close the open page, if any, at the end of the level. */
  finish(): void {
    if (this.#current.length > 0) this.#onPage(this.#take());
  }

  #check(): void {
    const s = this.#current.length;
    if (closesPage(this.#current.nodes, (s - 1) * ID, s)) this.#onPage(this.#take());
  }

  #take(): Page {
    const from = this.#from;
    const page = this.#current.takePage(from === null ? undefined : { page: from, same: this.#same });
    this.#from = null;
    this.#same = 0;
    return page;
  }
}
