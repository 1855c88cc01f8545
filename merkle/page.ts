/**
 * Pages of the Merkle index: their hash, and their byte encoding.
 *
 * A page holds 1 to 512 nodes of one level (1 to 256 at level 0). Its
 * hash is a two-layer binary Merkle tree: the nodes are cut into segments
 * by content (see {@linkcode segmentEnds}: a segment closes after a node
 * whose bytes 4..8, big-endian, are below 2^29, one node in 8, or at 16
 * nodes, or at the page's end). In a binary tree inner =
 * SHA-256(0x01 || left || right) and an odd last node is promoted
 * unchanged. A segment of `s` nodes has the root
 * SHA-256(0x03 || s u8 || binary root of its nodes), and the page hash is
 * SHA-256(0x02 || level u8 || n u16 BE || k u16 BE || binary root of the
 * k segment roots), so a proof's every field is bound by the hash.
 *
 * Because segments are cut by content, inserting or removing a node changes
 * one segment's root, not every pair to its right among the n nodes; the
 * tree over the segment roots is reused by position (a segment that changed
 * in place re-hashes only its path). An edit at a random place in a page
 * re-hashes one segment (at most 16 nodes) and a path among the segment
 * roots, where one binary tree over the page re-hashed about n / 2 pairs.
 *
 * Beside the nodes, a page stores what navigation and fingerprints need,
 * derived from the nodes' subtrees and not covered by the hash: at level 0
 * each item's ts; above, per child page its first key `(ts, id)`, its item
 * count and its id sum (mod 2^256, 32 bytes little-endian). Encoding
 * (all varints unsigned LEB128, low 7-bit group first):
 *
 * ```
 * u8 version (2) | u8 level | u16 BE n | n × 32 B nodes
 * level 0: n × varint ts delta (first absolute, then from the previous item)
 * level>0: n × varint first-ts delta | n × 32 B first id
 *          | n × varint item count  | n × 32 B id sum
 * ```
 *
 * Version 1 had the same bytes and hashed the nodes as one binary tree; a
 * store of version-1 pages is rebuilt on open (storage/merkle_store.ts).
 *
 * @module
 */

import { hashInner, sha256Short } from "./_sha256.ts";
import { prefixSumsInto, sumAdd, sumAddMany, sumToBytes } from "./_sum.ts";
import { bytesEqualAt, compareStoredKeys, copy32, corruption, ID, u32At, varintLength, writeVarint } from "./_util.ts";

/** Version byte at the start of every encoded page. */
export const PAGE_FORMAT_VERSION = 2;

/** Most nodes in a page (see `PAGE_NODES_MAX` in chunker.ts). */
const NODES_MAX = 512;

/** Most nodes in a leaf, a level-0 page (see `LEAF_NODES_MAX` in chunker.ts). */
const LEAF_NODES = 256;

/** Highest level a page may have; 512^16 items is far beyond any group. */
export const PAGE_LEVEL_MAX = 15;

/** Most nodes in one segment of a page's hash. */
export const SEGMENT_NODES_MAX = 16;

/** A node whose bytes 4..8 (u32 big-endian) are below this closes its segment: one node in 8. */
export const SEGMENT_CUT_BELOW = 2 ** 29;

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
  /** The page's encoding, when the caller already has it (trusted to match the columns). */
  encoded?: Uint8Array;
  /** Room for the page's derived arrays, made with its encoding in one allocation ({@linkcode pageOfColumns}). */
  room?: PageRoom;
}

/**
 * The derived arrays of a page, as views of one buffer with its encoding:
 * a page made by the chunker costs one allocation, not one per array.
 * `segEnds` is filled; the rest is filled by the page.
 */
export interface PageRoom {
  idSum: Uint32Array;
  segEnds: Uint16Array;
  segRoots: Uint8Array;
  top: Uint8Array;
  /** Above level 0: every segment's inner nodes ({@linkcode segmentLayerStarts} says where each starts). */
  segLayers: Uint8Array | null;
  /** Above level 0. */
  prefixCounts: Float64Array | null;
  /** Above level 0. */
  prefixSums: Uint32Array | null;
  /** Above level 0: the sums column where it is 4-aligned (the chunker's own), to add up a word at a time. */
  alignedSums: Uint8Array | null;
}

/** Where a node sits in its page's two-layer hash, and the siblings on its path (a proof step). */
export interface PagePath {
  /** Nodes in the page. */
  count: number;
  /** Index of the node's segment. */
  segment: number;
  /** Segments in the page. */
  segments: number;
  /** Index of the node in its segment. */
  index: number;
  /** Nodes in its segment. */
  size: number;
  /** Siblings in the segment's binary tree, bottom up, then in the tree of segment roots. */
  siblings: Uint8Array[];
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
  /** Exclusive end of each segment (computed with the hash). */
  #segEnds: Uint16Array | undefined;
  /** Root of each segment, 32 bytes each, kept once hashed (about 4.5 bytes per node: segments hold 7 nodes on average). */
  #segRoots: Uint8Array | undefined;
  /** Inner nodes of the binary tree over the segment roots, heights 1 and up (kept once hashed). */
  #top: Uint8Array | undefined;
  /** Runs of this page's nodes copied from older pages, whose segment roots the hash may reuse (dropped once hashed). */
  #copied: readonly CopiedRun[] | undefined;
  /** The encoding (see {@linkcode encodePage}), made once. */
  #encoded: Uint8Array | undefined;
  /** The older page whose segment roots this one took at the same places: its tree over them is reused (dropped once hashed). */
  #aligned: Page | undefined;
  /** Per segment, 1 where its root is the aligned page's root at the same place (dropped once hashed). */
  #same: number[] | undefined;
  /** Room for the segment roots and the tree over them (dropped once hashed). */
  #room: PageRoom | undefined;
  /**
   * Above level 0, kept once hashed: each segment's inner nodes, segment
   * `s` from node `segmentLayerStarts(ends)[s]` (about 32 bytes per node;
   * pages above level 0 are about 1 in 100). A child's hash replaced in
   * place then re-hashes only its path in its segment.
   */
  #segLayers: Uint8Array | undefined;
  /** With `#segLayers`: where each segment's inner nodes start ({@linkcode segmentLayerStarts}). */
  #layerAt: Uint16Array | undefined;

  /**
   * Make a page from its columns (trusted; {@linkcode decodePage} validates).
   * With `copied` (runs of nodes copied from older, hashed pages, in order),
   * the hash takes the root of every segment that lies inside a run and is a
   * segment of the older page too, instead of hashing it.
   */
  constructor(init: PageInit, copied?: readonly CopiedRun[]) {
    this.#copied = copied;
    this.#encoded = init.encoded;
    const n = init.firstTs.length;
    this.level = init.level;
    this.size = n;
    this.nodes = init.nodes;
    this.firstTs = init.firstTs;
    this.firstIds = init.firstIds ?? init.nodes;
    this.counts = init.level === 0 ? null : init.counts;
    this.sums = init.sums ?? init.nodes;
    const room = init.room;
    this.#room = room;
    this.#segEnds = room?.segEnds;
    this.idSum = room?.idSum ?? new Uint32Array(8);
    if (this.counts === null) {
      this.itemCount = n;
      this.prefixCounts = null;
      this.prefixSums = null;
      sumAddMany(this.idSum, this.nodes, 0, n);
    } else {
      const pc = room?.prefixCounts ?? new Float64Array(n + 1);
      const ps = room?.prefixSums ?? new Uint32Array((n + 1) * 8);
      for (let i = 0; i < n; i++) pc[i + 1] = pc[i]! + this.counts[i]!;
      prefixSumsInto(ps, room?.alignedSums ?? this.sums, 0, n);
      if (room) room.alignedSums = null; // the chunker's buffer, about to be refilled
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
    prefixSumsInto(ps, this.nodes, 0, this.size);
    return (this.#leafPrefix = ps);
  }

  /** The page hash (computed once). */
  hash(): Uint8Array {
    if (this.#hash === undefined) {
      const roots = this.segmentRoots();
      const k = roots.length / ID;
      const old = this.#aligned;
      const same = this.#same;
      const out = this.#room?.top;
      this.#aligned = this.#same = this.#room = undefined;
      const top = this.#top = old === undefined || old.#top === undefined || same === undefined
        ? binaryLayers(roots, undefined, out)
        : binaryLayers(roots, { layers: old.#top, count: old.#segRoots!.length / ID, same }, out);
      this.#hash = wrapPageHash(this.level, this.size, k, k === 1 ? roots : top.subarray(top.length - ID));
    }
    return this.#hash;
  }

  /** Exclusive end of each segment of the page's hash (see {@linkcode segmentEnds}). */
  segmentEnds(): Uint16Array {
    return this.#segEnds ??= segmentEnds(this.nodes);
  }

  /**
   * The root of each segment, 32 bytes each, computed once and kept: a
   * segment copied whole from a segment of an older, hashed page takes its
   * root. The older page whose segments sit at the same places as this
   * page's (the edited page's old version) lends its tree over segment roots
   * too ({@linkcode binaryLayers}).
   */
  segmentRoots(): Uint8Array {
    if (this.#segRoots === undefined) {
      const ends = this.segmentEnds();
      const k = ends.length;
      const roots = this.#room?.segRoots ?? new Uint8Array(k * ID);
      const runs = this.#copied ?? [];
      let r = 0;
      let c = 0; // in the run's page: the first segment ending after the segment's start
      let start = 0;
      // Above level 0 the page keeps each segment's inner nodes.
      const layerAt = this.#layerAt = this.level > 0 ? segmentLayerStarts(ends) : undefined;
      const layers = layerAt === undefined
        ? undefined
        : this.#segLayers = this.#room?.segLayers ?? new Uint8Array(layerAt[k]! * ID);
      for (let s = 0; s < k; s++) {
        const end = ends[s]!;
        let reused = false;
        while (r < runs.length && runs[r]!.at + runs[r]!.len <= start) r++, c = 0;
        const run = runs[r];
        const oldRoots = run === undefined ? undefined : run.page.#segRoots;
        if (run !== undefined && oldRoots !== undefined && run.at <= start && end <= run.at + run.len) {
          const oldEnds = run.page.#segEnds!;
          const a = run.from + start - run.at;
          while (c < oldEnds.length && oldEnds[c]! <= a) c++;
          const oldLayers = run.page.#segLayers;
          // (Above level 0 the old segment's inner nodes come along; a page that has none lends nothing.)
          if (
            oldEnds[c] === a + end - start && (c === 0 ? 0 : oldEnds[c - 1]!) === a &&
            (layers === undefined || oldLayers !== undefined)
          ) {
            copy32(roots, s * ID, oldRoots, c * ID);
            if (layers !== undefined) {
              const oldAt = run.page.#layerAt!;
              layers.set(oldLayers!.subarray(oldAt[c]! * ID, oldAt[c + 1]! * ID), layerAt![s]! * ID);
            }
            reused = true;
            if (c === s && (this.#aligned ??= run.page) === run.page) {
              (this.#same ??= new Array<number>(k).fill(0))[s] = 1;
            }
          }
        }
        if (!reused && layers === undefined) rootInto(this.nodes, start * ID, end - start, roots, s * ID);
        else if (!reused && layers !== undefined) {
          const m = end - start;
          const out = layers.subarray(layerAt![s]! * ID, layerAt![s + 1]! * ID);
          // A run overlapping the segment maps it onto an older page: if a segment of that page starts there with
          // as many nodes, the pairs of nodes both pages hold at the same places keep their hashes.
          let old: { layers: Uint8Array; count: number; same: number[] } | undefined;
          const over = run !== undefined && run.at < end ? run : undefined;
          const prev = over?.page;
          const at = over === undefined ? -1 : olderSegment(prev!.#segEnds, over.from + start - over.at, m);
          if (at >= 0 && prev!.#segLayers !== undefined) {
            const a = over!.from + start - over!.at;
            const same = new Array<number>(m);
            for (let i = 0; i < m; i++) {
              same[i] = bytesEqualAt(this.nodes, (start + i) * ID, prev!.nodes, (a + i) * ID, ID) ? 1 : 0;
            }
            const oldAt = prev!.#layerAt!;
            old = { layers: prev!.#segLayers.subarray(oldAt[at]! * ID, oldAt[at + 1]! * ID), count: m, same };
          }
          binaryLayers(this.nodes.subarray(start * ID, end * ID), old, out);
          if (m === 1) wrapSegmentInto(1, this.nodes, start * ID, roots, s * ID);
          else wrapSegmentInto(m, out, out.length - ID, roots, s * ID);
        }
        start = end;
      }
      this.#segRoots = roots;
      this.#copied = undefined;
    }
    return this.#segRoots;
  }

  /** Where node `index` sits in the page's hash, with the siblings on its path (a proof step). */
  path(index: number): PagePath {
    const ends = this.segmentEnds();
    let segment = 0;
    while (ends[segment]! <= index) segment++;
    const start = segment === 0 ? 0 : ends[segment - 1]!;
    const end = ends[segment]!;
    const siblings = [
      ...binarySiblings(this.nodes.subarray(start * ID, end * ID), index - start),
      ...binarySiblings(this.segmentRoots(), segment),
    ];
    return { count: this.size, segment, segments: ends.length, index: index - start, size: end - start, siblings };
  }

  /** The page's encoding (format in the module doc), made on first use and kept. */
  encoded(): Uint8Array {
    return this.#encoded ??= encodeColumns(this, this.size);
  }

  /** Write the 32-byte little-endian id sum at `out[off]`. */
  idSumBytes(out: Uint8Array, off: number): void {
    sumToBytes(this.idSum, out, off);
  }
}

/** Nodes `at..at+len` of a new page are nodes `from..from+len` of the older `page` (see the {@linkcode Page} constructor). */
export interface CopiedRun {
  /** First node of the run in the new page. */
  at: number;
  /** Nodes in the run. */
  len: number;
  /** The older page the nodes were copied from. */
  page: Page;
  /** First node of the run in the older page. */
  from: number;
}

/**
 * Where the segments of a page's hash end: scanning the nodes in order, a
 * segment closes after a node whose bytes 4..8 (u32 big-endian) are below
 * {@linkcode SEGMENT_CUT_BELOW}, or when it holds
 * {@linkcode SEGMENT_NODES_MAX} nodes, or at the last node. A cut depends
 * only on the nodes since the previous cut, so an edit moves at most the
 * cuts of the segment it falls in.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { segmentEnds } from "./page.ts";
 * assert(segmentEnds(new Uint8Array(40 * 32).fill(0xff)).join() === "16,32,40");
 * ```
 */
export function segmentEnds(nodes: Uint8Array): Uint16Array {
  const k = segmentEndsInto(nodes, nodes.length / ID, endsScratch);
  return endsScratch.slice(0, k);
}

/** Where the first `n` nodes' segments end ({@linkcode segmentEnds}), written to `out`; returns their number. */
function segmentEndsInto(nodes: Uint8Array, n: number, out: Uint16Array): number {
  let k = 0;
  let size = 0;
  for (let i = 0; i < n; i++) {
    size++;
    if (size >= SEGMENT_NODES_MAX || u32At(nodes, i * ID + 4) < SEGMENT_CUT_BELOW || i === n - 1) {
      out[k++] = i + 1;
      size = 0;
    }
  }
  return k;
}

/** Scratch for {@linkcode segmentEndsInto}: a page has at most one segment per node. */
const endsScratch = new Uint16Array(NODES_MAX);

/**
 * All inner nodes of the binary tree over `nodes` (32 bytes each), height 1
 * first, up to the root (empty for one node): at each height `m` nodes pair
 * into `ceil(m / 2)`, an odd last node copied up. With an older tree (its
 * layers, its node count, and per node 1 where the node equals the older
 * tree's node at the same place), a pair of two such nodes is copied from
 * the older tree, not hashed: an edit that changes one node in place
 * re-hashes only its path.
 */
export function binaryLayers(
  nodes: Uint8Array,
  old?: { layers: Uint8Array; count: number; same: number[] },
  out: Uint8Array = new Uint8Array(innerNodes(nodes.length / ID) * ID),
): Uint8Array {
  const n = nodes.length / ID;
  let src = nodes;
  let srcOff = 0;
  let outOff = 0;
  let same = old?.same;
  let om = old?.count ?? 0;
  let oldOff = 0; // where the older tree's next height starts in its layers
  for (let m = n; m > 1; m = (m + 1) >> 1) {
    const half = m >> 1;
    const up = same === undefined ? undefined : new Array<number>((m + 1) >> 1).fill(0);
    for (let k = 0; k < half; k++) {
      if (same !== undefined && same[2 * k] === 1 && same[2 * k + 1] === 1) {
        copy32(out, outOff + k * ID, old!.layers, oldOff + k * ID);
        up![k] = 1;
      } else hashInner(src, srcOff + 2 * k * ID, srcOff + (2 * k + 1) * ID, out, outOff + k * ID);
    }
    if (m & 1) {
      copy32(out, outOff + half * ID, src, srcOff + (m - 1) * ID);
      // Promoted in the older tree too only if it had as many nodes at this height.
      if (up !== undefined && same![m - 1] === 1 && om === m) up[half] = 1;
    }
    src = out;
    srcOff = outOff;
    outOff += ((m + 1) >> 1) * ID;
    if (same !== undefined) {
      oldOff += ((om + 1) >> 1) * ID;
      om = (om + 1) >> 1;
      same = om < 2 ? undefined : up;
    }
  }
  return out;
}

/** Inner nodes of a binary tree over `n` nodes ({@linkcode binaryLayers}). */
function innerNodes(n: number): number {
  let total = 0;
  for (let m = n; m > 1; m = (m + 1) >> 1) total += (m + 1) >> 1;
  return total;
}

/** Scratch for {@linkcode rootInto}: one segment's nodes. */
const scratch = new Uint8Array(SEGMENT_NODES_MAX * ID);

/** Write the root of the segment of `m` nodes at `src[off..]` ({@linkcode segmentRoot}) to `out[outOff]`. */
function rootInto(src: Uint8Array, off: number, m: number, out: Uint8Array, outOff: number): void {
  // The first height reads the nodes where they are; the rest folds in the scratch.
  const half = m >> 1;
  for (let i = 0; i < half; i++) hashInner(src, off + 2 * i * ID, off + (2 * i + 1) * ID, scratch, i * ID);
  if (m & 1) scratch.set(src.subarray(off + (m - 1) * ID, off + m * ID), half * ID);
  reduceInPlace(scratch, (m + 1) >> 1);
  wrapSegmentInto(m, scratch, 0, out, outOff);
}

/** Write SHA-256(0x03 || m u8 || root) to `out[outOff]`, the root being `src[off..off+32]` (see {@linkcode wrapSegment}). */
function wrapSegmentInto(m: number, src: Uint8Array, off: number, out: Uint8Array, outOff: number): void {
  wrapBuf[0] = 0x03;
  wrapBuf[1] = m;
  copy32(wrapBuf, 2, src, off);
  sha256Short(wrapBuf, out, outOff);
}

/** The segment of a page with `ends` that starts at node `a` and holds `m` nodes, or -1. */
function olderSegment(ends: Uint16Array | undefined, a: number, m: number): number {
  if (ends === undefined || a < 0) return -1;
  let lo = 0;
  let hi = ends.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (ends[mid]! <= a) lo = mid + 1;
    else hi = mid;
  }
  return lo < ends.length && ends[lo] === a + m && (lo === 0 ? 0 : ends[lo - 1]!) === a ? lo : -1;
}

/**
 * Where each segment's inner nodes start in a page's segment layers (in
 * nodes), and their total at index `k`: segment `s` of `size` nodes has
 * `innerNodes(size)` of them.
 */
function segmentLayerStarts(ends: Uint16Array): Uint16Array {
  const at = new Uint16Array(ends.length + 1);
  let start = 0;
  for (let s = 0; s < ends.length; s++) {
    at[s + 1] = at[s]! + innerNodes(ends[s]! - start);
    start = ends[s]!;
  }
  return at;
}

/** Fold the first `m` nodes of `work` into their binary root, left in `work[0..32]`. */
function reduceInPlace(work: Uint8Array, m: number): void {
  while (m > 1) {
    const half = m >> 1;
    for (let i = 0; i < half; i++) hashInner(work, 2 * i * ID, (2 * i + 1) * ID, work, i * ID);
    if (m & 1) work.copyWithin(half * ID, (m - 1) * ID, m * ID);
    m = (m + 1) >> 1;
  }
}

/**
 * The root of a segment: SHA-256(0x03 || s u8 || binary root of its `s`
 * nodes), binding the segment's size.
 */
export function segmentRoot(nodes: Uint8Array): Uint8Array {
  const s = nodes.length / ID;
  if (!Number.isInteger(s) || s < 1 || s > SEGMENT_NODES_MAX) {
    throw new RangeError(`Cannot hash segment: '${nodes.length}' bytes of nodes`);
  }
  return wrapSegment(s, binaryRoot(nodes));
}

/** SHA-256(0x03 || s u8 || root): a segment's root from the binary root of its `s` nodes. */
export function wrapSegment(s: number, root: Uint8Array): Uint8Array {
  wrapBuf[0] = 0x03;
  wrapBuf[1] = s;
  wrapBuf.set(root, 2);
  return sha256Short(wrapBuf);
}

const wrapBuf = new Uint8Array(2 + ID);

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
  const m = nodes.length / ID;
  if (!Number.isInteger(m) || m < 1) throw new RangeError(`Cannot hash page: '${nodes.length}' bytes of nodes`);
  const work = nodes.slice();
  reduceInPlace(work, m);
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

/** SHA-256(0x02 || level || n u16 BE || k u16 BE || root): the page hash from the root of its `k` segment roots. */
export function wrapPageHash(level: number, n: number, k: number, root: Uint8Array): Uint8Array {
  const buf = new Uint8Array(6 + ID);
  buf[0] = 0x02;
  buf[1] = level;
  buf[2] = n >>> 8;
  buf[3] = n & 0xff;
  buf[4] = k >>> 8;
  buf[5] = k & 0xff;
  buf.set(root, 6);
  return sha256Short(buf);
}

/**
 * The hash of a page of `level` holding `nodes` (32 bytes each): the
 * reference computation, straight from the definition in the module doc.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { pageHash } from "./page.ts";
 * assert(pageHash(0, new Uint8Array(64)).length === 32);
 * ```
 */
export function pageHash(level: number, nodes: Uint8Array): Uint8Array {
  const ends = segmentEnds(nodes);
  const roots = new Uint8Array(ends.length * ID);
  let start = 0;
  ends.forEach((end, k) => {
    roots.set(segmentRoot(nodes.subarray(start * ID, end * ID)), k * ID);
    start = end;
  });
  return wrapPageHash(level, nodes.length / ID, ends.length, binaryRoot(roots));
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
  return page.encoded();
}

/**
 * The columns a page is encoded or made from: a page, or a chunker's entries
 * (of which only the first `n` count). Above level 0 `counts` is set; at
 * level 0 only the nodes and the ts are read.
 */
export interface Columns {
  level: number;
  nodes: Uint8Array;
  firstTs: Float64Array;
  firstIds: Uint8Array;
  counts: Float64Array | null;
  sums: Uint8Array;
}

/** Encode the first `n` entries of `c` as a page: the bytes {@linkcode encodePage} gives. */
export function encodeColumns(c: Columns, n: number): Uint8Array {
  const out = new Uint8Array(encodedLength(c, n));
  writeColumns(c, n, out);
  return out;
}

/** Bytes of the encoding of the first `n` entries of `c`. */
function encodedLength(c: Columns, n: number): number {
  const { firstTs } = c;
  let len = 4 + n * ID;
  let prev = 0;
  for (let i = 0; i < n; i++) {
    len += varintLength(firstTs[i]! - prev);
    prev = firstTs[i]!;
  }
  if (c.level > 0) {
    const counts = c.counts!;
    len += 2 * n * ID;
    for (let i = 0; i < n; i++) len += varintLength(counts[i]!);
  }
  return len;
}

/** Write the encoding of the first `n` entries of `c` to `out`, exactly {@linkcode encodedLength} bytes. */
function writeColumns(c: Columns, n: number, out: Uint8Array): void {
  const { level, nodes, firstTs } = c;
  const counts = level > 0 ? c.counts! : null;
  out[0] = PAGE_FORMAT_VERSION;
  out[1] = level;
  out[2] = n >>> 8;
  out[3] = n & 0xff;
  out.set(nodes.subarray(0, n * ID), 4);
  let off = 4 + n * ID;
  let prev = 0;
  for (let i = 0; i < n; i++) {
    off = writeVarint(out, off, firstTs[i]! - prev);
    prev = firstTs[i]!;
  }
  if (counts !== null) {
    out.set(c.firstIds.subarray(0, n * ID), off);
    off += n * ID;
    for (let i = 0; i < n; i++) off = writeVarint(out, off, counts[i]!);
    out.set(c.sums.subarray(0, n * ID), off);
  }
}

/**
 * Make a page from the first `n` entries of columns that will be reused
 * (a chunker's). The page is encoded once, and everything it keeps (its
 * 32-byte columns as views of that encoding, its ts, counts, prefix sums,
 * segment roots and the tree over them) lives in one buffer with the
 * encoding: one allocation per page.
 */
export function pageOfColumns(c: Columns, n: number, copied?: readonly CopiedRun[]): Page {
  const { level } = c;
  const len = encodedLength(c, n);
  const k = segmentEndsInto(c.nodes, n, endsScratch);
  const up = level > 0;
  // Layout: encoding | ts | (counts | prefix counts | prefix sums) | id sum | segment roots | top | (segment layers)
  // | segment ends.
  const tsAt = (len + 7) & ~7;
  const countsAt = tsAt + n * 8;
  const prefixCountsAt = countsAt + (up ? n * 8 : 0);
  const prefixSumsAt = prefixCountsAt + (up ? (n + 1) * 8 : 0);
  const idSumAt = prefixSumsAt + (up ? (n + 1) * 32 : 0);
  const rootsAt = idSumAt + 32;
  const topAt = rootsAt + k * ID;
  let layerNodes = 0;
  if (up) {
    for (let s = 0, start = 0; s < k; start = endsScratch[s++]!) layerNodes += innerNodes(endsScratch[s]! - start);
  }
  const layersAt = topAt + innerNodes(k) * ID;
  const endsAt = layersAt + layerNodes * ID;
  const buf = new ArrayBuffer(endsAt + k * 2);
  const encoded = new Uint8Array(buf, 0, len);
  writeColumns(c, n, encoded);
  const view = (off: number) => new Uint8Array(buf, off, n * ID);
  const ts = new Float64Array(buf, tsAt, n);
  ts.set(c.firstTs.subarray(0, n));
  const segEnds = new Uint16Array(buf, endsAt, k);
  segEnds.set(endsScratch.subarray(0, k));
  const room: PageRoom = {
    idSum: new Uint32Array(buf, idSumAt, 8),
    segEnds,
    segRoots: new Uint8Array(buf, rootsAt, k * ID),
    top: new Uint8Array(buf, topAt, innerNodes(k) * ID),
    segLayers: up ? new Uint8Array(buf, layersAt, layerNodes * ID) : null,
    prefixCounts: up ? new Float64Array(buf, prefixCountsAt, n + 1) : null,
    prefixSums: up ? new Uint32Array(buf, prefixSumsAt, (n + 1) * 8) : null,
    alignedSums: up ? c.sums : null,
  };
  if (!up) {
    return new Page(
      { level, nodes: view(4), firstTs: ts, firstIds: null, counts: null, sums: null, encoded, room },
      copied,
    );
  }
  // Above level 0 the encoding ends with the sums; the first ids sit before the count varints.
  let countBytes = 0;
  const counts = new Float64Array(buf, countsAt, n);
  counts.set(c.counts!.subarray(0, n));
  for (let i = 0; i < n; i++) countBytes += varintLength(counts[i]!);
  const sumsAt = len - n * ID;
  const firstIdsAt = sumsAt - countBytes - n * ID;
  return new Page({
    level,
    nodes: view(4),
    firstTs: ts,
    firstIds: view(firstIdsAt),
    counts,
    sums: view(sumsAt),
    encoded,
    room,
  }, copied);
}

/**
 * Decode and validate a page. Throws `XfError("STORAGE_CORRUPTION")` if
 * the bytes are not a well-formed page. It does not check the hash: the
 * tree compares it with the hash the page was read by.
 */
export function decodePage(input: Uint8Array): Page {
  // One copy of the input: the page's columns view it, and the caller's buffer stays the caller's.
  const bytes = input.slice();
  const fail = (why: string) => corruption(`Cannot decode Merkle page: ${why}`);
  if (bytes.length < 4) throw fail(`'${bytes.length}' bytes is shorter than a header`);
  if (bytes[0] !== PAGE_FORMAT_VERSION) throw fail(`unknown format version '${bytes[0]}'`);
  const level = bytes[1]!;
  if (level > PAGE_LEVEL_MAX) throw fail(`level '${level}' above ${PAGE_LEVEL_MAX}`);
  const n = (bytes[2]! << 8) | bytes[3]!;
  const max = level === 0 ? LEAF_NODES : NODES_MAX;
  if (n < 1 || n > max) throw fail(`node count '${n}' outside 1..${max} at level ${level}`);
  let off = 4;
  const take = (len: number, what: string): Uint8Array => {
    if (off + len > bytes.length) throw fail(`truncated in ${what} at byte ${off}`);
    const b = bytes.subarray(off, off + len);
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
  return new Page({ level, nodes, firstTs, firstIds, counts, sums, encoded: bytes });
}
