/**
 * Pages of the Merkle index: their hash, and their byte encoding.
 *
 * A page holds 1 to 512 nodes of one level. Its hash is a binary Merkle
 * tree over the nodes: inner = SHA-256(0x01 || left || right), an odd last
 * node is promoted unchanged; the page hash is
 * SHA-256(0x02 || level u8 || node count u16 BE || binary root).
 *
 * Beside the nodes, a page stores what navigation and fingerprints need,
 * derived from the nodes' subtrees and not covered by the hash: at level 0
 * each item's ts; above, per child page its first key `(ts, id)`, its item
 * count and its id sum (mod 2^256, 32 bytes little-endian). Encoding
 * (all varints unsigned LEB128, low 7-bit group first):
 *
 * ```
 * u8 version (1) | u8 level | u16 BE n | n × 32 B nodes
 * level 0: n × varint ts delta (first absolute, then from the previous item)
 * level>0: n × varint first-ts delta | n × 32 B first id
 *          | n × varint item count  | n × 32 B id sum
 * ```
 *
 * @module
 */

import { sha256 } from "@noble/hashes/sha2";
import { hashInner } from "./_sha256.ts";
import { sumAdd, sumAddBytes, sumToBytes } from "./_sum.ts";
import { compareStoredKeys, corruption, ID, varintLength, writeVarint } from "./_util.ts";

/** Version byte at the start of every encoded page. */
export const PAGE_FORMAT_VERSION = 1;

/** Most nodes in a page (see `PAGE_NODES_MAX` in chunker.ts). */
const NODES_MAX = 512;

/** Highest level a page may have; 512^16 items is far beyond any group. */
export const PAGE_LEVEL_MAX = 15;

/** Fields of a {@linkcode Page}; level-0 pages leave the derived columns `null`. */
export interface PageInit {
  /** Level: 0 for item ids, L+1 for hashes of level-L pages. */
  level: number;
  /** The nodes, 32 bytes each. */
  nodes: Uint8Array;
  /** Item ts (level 0) or each child's first ts (above). */
  firstTs: Float64Array;
  /** Each child's first id (above level 0; `null` at level 0). */
  firstIds: Uint8Array | null;
  /** Each child's item count (above level 0; `null` at level 0). */
  counts: Float64Array | null;
  /** Each child's id sum (above level 0; `null` at level 0). */
  sums: Uint8Array | null;
}

/**
 * A decoded page, with its totals and the prefix sums rank queries use.
 * Treat it as immutable.
 */
export class Page {
  /** Level: 0 for item ids, L+1 for hashes of level-L pages. */
  readonly level: number;
  /** Number of nodes. */
  readonly size: number;
  /** The nodes, 32 bytes each. */
  readonly nodes: Uint8Array;
  /** Item ts (level 0) or each child's first ts (above). */
  readonly firstTs: Float64Array;
  /** Each node's first item id: the nodes themselves at level 0. */
  readonly firstIds: Uint8Array;
  /** Each child's item count; `null` at level 0, where every count is 1. */
  readonly counts: Float64Array | null;
  /** Each node's id sum: the nodes themselves at level 0. */
  readonly sums: Uint8Array;
  /** Items under this page. */
  readonly itemCount: number;
  /** Items under the first `i` children, `i` in `0..size` (above level 0). */
  readonly prefixCounts: Float64Array | null;
  /** Id sums of the first `i` children as 8 limbs each (above level 0). */
  readonly prefixSums: Uint32Array | null;
  /** Sum of the ids under this page, 8 limbs. */
  readonly idSum: Uint32Array;
  #hash: Uint8Array | undefined;
  /** Inner nodes of the page's binary tree, kept once hashed (see {@linkcode binaryLayers}). */
  #layers: Uint8Array | undefined;
  /** An older page sharing this page's first nodes, whose inner nodes the hash reuses (dropped once hashed). */
  #reuse: PageReuse | undefined;

  /**
   * Make a page from its columns (trusted; {@linkcode decodePage} validates).
   * With `reuse`, the hash takes the inner nodes over the first `reuse.same`
   * nodes from `reuse.page`, which must hold the same first nodes.
   */
  constructor(init: PageInit, reuse?: PageReuse) {
    this.#reuse = reuse !== undefined && reuse.same > 1 ? reuse : undefined;
    const n = init.firstTs.length;
    this.level = init.level;
    this.size = n;
    this.nodes = init.nodes;
    this.firstTs = init.firstTs;
    this.firstIds = init.firstIds ?? init.nodes;
    this.counts = init.level === 0 ? null : init.counts;
    this.sums = init.sums ?? init.nodes;
    this.idSum = new Uint32Array(8);
    if (this.counts === null) {
      this.itemCount = n;
      this.prefixCounts = null;
      this.prefixSums = null;
      for (let i = 0; i < n; i++) sumAddBytes(this.idSum, this.nodes, i * ID);
    } else {
      const pc = new Float64Array(n + 1);
      const ps = new Uint32Array((n + 1) * 8);
      for (let i = 0; i < n; i++) {
        pc[i + 1] = pc[i]! + this.counts[i]!;
        ps.copyWithin((i + 1) * 8, i * 8, i * 8 + 8);
        sumAddBytes(ps.subarray((i + 1) * 8, (i + 2) * 8), this.sums, i * ID);
      }
      this.itemCount = pc[n]!;
      this.prefixCounts = pc;
      this.prefixSums = ps;
      sumAdd(this.idSum, ps, n * 8);
    }
  }

  #leafPrefix: Uint32Array | undefined;
  /** Decoded children, linked by a tree whose cache holds all its pages (pages are content-addressed). */
  kids: (Page | undefined)[] | undefined;

  /**
   * At level 0: id sums of the first `i` items, `i` in `0..size`, 8 limbs
   * each (computed on first use, then kept with the page).
   */
  leafPrefixSums(): Uint32Array {
    if (this.#leafPrefix) return this.#leafPrefix;
    const ps = new Uint32Array((this.size + 1) * 8);
    for (let i = 0; i < this.size; i++) {
      ps.copyWithin((i + 1) * 8, i * 8, i * 8 + 8);
      sumAddBytes(ps.subarray((i + 1) * 8, (i + 2) * 8), this.nodes, i * ID);
    }
    return (this.#leafPrefix = ps);
  }

  /** The page hash (computed once). */
  hash(): Uint8Array {
    if (this.#hash === undefined) {
      const layers = this.layers();
      const root = this.size === 1 ? this.nodes : layers.subarray(layers.length - ID);
      this.#hash = wrapPageHash(this.level, this.size, root);
    }
    return this.#hash;
  }

  /**
   * The inner nodes of the page's binary tree, heights 1 and up, computed
   * once and kept: a page made from an older one by an edit at node `i`
   * hashes only the inner nodes to the right of `i` (about `n - i` SHA-256
   * instead of `n - 1`).
   */
  layers(): Uint8Array {
    if (this.#layers === undefined) {
      const r = this.#reuse;
      const old = r === undefined ? undefined : r.page.#layers;
      this.#layers = old === undefined
        ? binaryLayers(this.nodes)
        : binaryLayers(this.nodes, old, r!.page.size, r!.same);
      this.#reuse = undefined;
    }
    return this.#layers;
  }

  /** The siblings on the binary path of node `index`, bottom up (as {@linkcode binarySiblings}). */
  siblings(index: number): Uint8Array[] {
    const layers = this.layers();
    const out: Uint8Array[] = [];
    let src = this.nodes;
    let off = 0;
    let i = index;
    for (let m = this.size; m > 1; m = (m + 1) >> 1, i >>= 1) {
      const sib = i ^ 1;
      if (sib < m) out.push(src.slice(off + sib * ID, off + sib * ID + ID));
      off = src === this.nodes ? 0 : off + m * ID;
      src = layers;
    }
    return out;
  }

  /** Write the 32-byte little-endian id sum at `out[off]`. */
  idSumBytes(out: Uint8Array, off: number): void {
    sumToBytes(this.idSum, out, off);
  }
}

/** A page whose inner nodes a new page may reuse: it holds the new page's first `same` nodes. */
export interface PageReuse {
  /** The older page. */
  page: Page;
  /** How many first nodes the two pages share. */
  same: number;
}

/**
 * All inner nodes of the binary tree over `nodes` (32 bytes each), height 1
 * first, then height 2, up to the binary root (empty for one node). At each
 * height `m` nodes pair into `ceil(m / 2)`; an odd last node is copied up.
 * With `old` (the layers of a tree over `oldN` nodes whose first `same`
 * nodes equal these), the inner nodes over the shared prefix are copied
 * from it instead of hashed: at height `h`, the first `floor(same / 2^h)`.
 */
export function binaryLayers(nodes: Uint8Array, old?: Uint8Array, oldN = 0, same = 0): Uint8Array {
  const n = nodes.length / ID;
  let total = 0;
  for (let m = n; m > 1; m = (m + 1) >> 1) total += (m + 1) >> 1;
  const out = new Uint8Array(total * ID);
  let src = nodes;
  let srcOff = 0;
  let outOff = 0;
  let oldOff = 0;
  let keep = old === undefined ? 0 : same;
  for (let m = n, om = oldN; m > 1; m = (m + 1) >> 1, om = (om + 1) >> 1) {
    const half = m >> 1;
    keep >>= 1;
    if (keep > 0) out.set(old!.subarray(oldOff, oldOff + keep * ID), outOff);
    for (let k = keep; k < half; k++) {
      hashInner(src, srcOff + 2 * k * ID, srcOff + (2 * k + 1) * ID, out, outOff + k * ID);
    }
    if (m & 1) out.set(src.subarray(srcOff + (m - 1) * ID, srcOff + m * ID), outOff + half * ID);
    src = out;
    srcOff = outOff;
    outOff += ((m + 1) >> 1) * ID;
    oldOff += ((om + 1) >> 1) * ID;
  }
  return out;
}

/**
 * Root of the binary Merkle tree over `nodes` (32 bytes each): pairs hash
 * as SHA-256(0x01 || left || right), an odd last node is promoted.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { binaryRoot } from "./page.ts";
 * const one = new Uint8Array(32).fill(7);
 * assert(binaryRoot(one)[0] === 7);
 * ```
 */
export function binaryRoot(nodes: Uint8Array): Uint8Array {
  let m = nodes.length / ID;
  if (!Number.isInteger(m) || m < 1) throw new RangeError(`Cannot hash page: '${nodes.length}' bytes of nodes`);
  const work = nodes.slice();
  while (m > 1) {
    const half = m >> 1;
    for (let i = 0; i < half; i++) hashInner(work, 2 * i * ID, (2 * i + 1) * ID, work, i * ID);
    if (m & 1) work.copyWithin(half * ID, (m - 1) * ID, m * ID);
    m = (m + 1) >> 1;
  }
  return work.slice(0, ID);
}

/**
 * The siblings on the binary path of node `index` (bottom up), as
 * {@linkcode binaryRoot} pairs them; a promoted node has no sibling at that
 * height.
 */
export function binarySiblings(nodes: Uint8Array, index: number): Uint8Array[] {
  let m = nodes.length / ID;
  const work = nodes.slice();
  const out: Uint8Array[] = [];
  let i = index;
  while (m > 1) {
    const sib = i ^ 1;
    if (sib < m) out.push(work.slice(sib * ID, sib * ID + ID));
    const half = m >> 1;
    for (let k = 0; k < half; k++) hashInner(work, 2 * k * ID, (2 * k + 1) * ID, work, k * ID);
    if (m & 1) work.copyWithin(half * ID, (m - 1) * ID, m * ID);
    m = (m + 1) >> 1;
    i >>= 1;
  }
  return out;
}

/** SHA-256(0x02 || level || n u16 BE || root): the page hash from a binary root. */
export function wrapPageHash(level: number, n: number, root: Uint8Array): Uint8Array {
  const buf = new Uint8Array(4 + ID);
  buf[0] = 0x02;
  buf[1] = level;
  buf[2] = n >>> 8;
  buf[3] = n & 0xff;
  buf.set(root, 4);
  return sha256(buf);
}

/**
 * The hash of a page of `level` holding `nodes` (32 bytes each).
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { pageHash } from "./page.ts";
 * assert(pageHash(0, new Uint8Array(64)).length === 32);
 * ```
 */
export function pageHash(level: number, nodes: Uint8Array): Uint8Array {
  return wrapPageHash(level, nodes.length / ID, binaryRoot(nodes));
}

/**
 * Encode a page (format in the module doc).
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { decodePage, encodePage, Page } from "./page.ts";
 * const page = new Page({ level: 0, nodes: new Uint8Array(32), firstTs: Float64Array.of(5), firstIds: null, counts: null, sums: null });
 * assert(decodePage(encodePage(page)).firstTs[0] === 5);
 * ```
 */
export function encodePage(page: Page): Uint8Array {
  const n = page.size;
  let len = 4 + n * ID;
  let prev = 0;
  for (let i = 0; i < n; i++) {
    len += varintLength(page.firstTs[i]! - prev);
    prev = page.firstTs[i]!;
  }
  if (page.counts !== null) {
    len += 2 * n * ID;
    for (let i = 0; i < n; i++) len += varintLength(page.counts[i]!);
  }
  const out = new Uint8Array(len);
  out[0] = PAGE_FORMAT_VERSION;
  out[1] = page.level;
  out[2] = n >>> 8;
  out[3] = n & 0xff;
  out.set(page.nodes, 4);
  let off = 4 + n * ID;
  prev = 0;
  for (let i = 0; i < n; i++) {
    off = writeVarint(out, off, page.firstTs[i]! - prev);
    prev = page.firstTs[i]!;
  }
  if (page.counts !== null) {
    out.set(page.firstIds, off);
    off += n * ID;
    for (let i = 0; i < n; i++) off = writeVarint(out, off, page.counts[i]!);
    out.set(page.sums, off);
    off += n * ID;
  }
  return out;
}

/**
 * Decode and validate a page. Throws `XfError("STORAGE_CORRUPTION")` if
 * the bytes are not a well-formed page. It does not check the hash: the
 * tree compares it with the hash the page was read by.
 */
export function decodePage(bytes: Uint8Array): Page {
  const fail = (why: string) => corruption(`Cannot decode Merkle page: ${why}`);
  if (bytes.length < 4) throw fail(`'${bytes.length}' bytes is shorter than a header`);
  if (bytes[0] !== PAGE_FORMAT_VERSION) throw fail(`unknown format version '${bytes[0]}'`);
  const level = bytes[1]!;
  if (level > PAGE_LEVEL_MAX) throw fail(`level '${level}' above ${PAGE_LEVEL_MAX}`);
  const n = (bytes[2]! << 8) | bytes[3]!;
  if (n < 1 || n > NODES_MAX) throw fail(`node count '${n}' outside 1..${NODES_MAX}`);
  let off = 4;
  const take = (len: number, what: string): Uint8Array => {
    if (off + len > bytes.length) throw fail(`truncated in ${what} at byte ${off}`);
    const b = bytes.slice(off, off + len);
    off += len;
    return b;
  };
  const varint = (what: string): number => {
    let v = 0;
    let mul = 1;
    for (let k = 0; k < 8; k++) {
      if (off >= bytes.length) throw fail(`truncated in ${what} at byte ${off}`);
      const b = bytes[off++]!;
      v += (b & 0x7f) * mul;
      if ((b & 0x80) === 0) {
        if (!Number.isSafeInteger(v)) break;
        if (k > 0 && b === 0) throw fail(`non-minimal varint in ${what} at byte ${off - 1}`);
        return v;
      }
      mul *= 128;
    }
    throw fail(`varint in ${what} above 2^53 at byte ${off}`);
  };
  const nodes = take(n * ID, "nodes");
  const firstTs = new Float64Array(n);
  let ts = 0;
  for (let i = 0; i < n; i++) {
    ts += varint("ts");
    if (!Number.isSafeInteger(ts)) throw fail(`ts '${ts}' above 2^53 at entry ${i}`);
    firstTs[i] = ts;
  }
  let firstIds: Uint8Array | null = null;
  let counts: Float64Array | null = null;
  let sums: Uint8Array | null = null;
  if (level > 0) {
    firstIds = take(n * ID, "first ids");
    counts = new Float64Array(n);
    let total = 0;
    for (let i = 0; i < n; i++) {
      const c = varint("counts");
      if (c < 1) throw fail(`child ${i} has no items`);
      counts[i] = c;
      total += c;
    }
    if (!Number.isSafeInteger(total)) throw fail(`item count '${total}' above 2^53`);
    sums = take(n * ID, "sums");
  }
  if (off !== bytes.length) throw fail(`'${bytes.length - off}' trailing bytes`);
  const keys = firstIds ?? nodes;
  for (let i = 1; i < n; i++) {
    if (compareStoredKeys(firstTs[i - 1]!, keys, (i - 1) * ID, firstTs[i]!, keys, i * ID) >= 0) {
      throw fail(`keys out of order at entry ${i}`);
    }
  }
  return new Page({ level, nodes, firstTs, firstIds, counts, sums });
}
