/**
 * Inclusion proofs: that an event id is an item of the tree with a given
 * root, checked with nothing but the proof.
 *
 * Layout (big-endian), one step per level from the leaf page up to the
 * root page:
 *
 * ```
 * u8 version (2) | u8 levels D (1..16)
 * D × ( u16 node count n of the page
 *       | u16 index j of the node's segment | u16 segment count k
 *       | u8 index i of the node in its segment | u8 segment size s
 *       | a × 32 B siblings in the segment, bottom up
 *       | b × 32 B siblings among the segment roots, bottom up )
 * ```
 *
 * `a` follows from `(i, s)` and `b` from `(j, k)` (see
 * {@linkcode siblingCount}). To verify: `h = event id`; at level L fold
 * the `a` siblings from `(i, s)` (`SHA-256(0x01 || left || right)`, `h` is
 * the right at an odd index), then `h = SHA-256(0x03 || s u8 || h)`, fold
 * the `b` siblings from `(j, k)`, then
 * `h = SHA-256(0x02 || L || n u16 BE || k u16 BE || h)`; the proof holds
 * when the final `h` equals the root. Every field is bound: changing any
 * byte of a valid proof makes it fail. Version 1 proofs (one binary tree per page)
 * are refused with their version named.
 *
 * @module
 */

import { LEAF_NODES_MAX, PAGE_NODES_MAX } from "./chunker.ts";
import { PAGE_LEVEL_MAX, type PagePath, SEGMENT_NODES_MAX, wrapPageHash, wrapSegment } from "./page.ts";
import { hashInner } from "./_sha256.ts";
import { bytesEqualAt, ID } from "./_util.ts";
import { XfError } from "../core/errors.ts";

/** Version byte at the start of every proof. */
export const PROOF_FORMAT_VERSION = 2;

/** One level of a proof: where the node sits in its page's hash, and the siblings on its path. */
export type ProofStep = PagePath;

/**
 * Number of siblings on the binary path of node `index` in a binary tree of
 * `count` nodes: walking up from `(i, m) = (index, count)` while `m > 1`,
 * there is a sibling when `i ^ 1 < m` (a left node with no right neighbour
 * is promoted without one), then `i = i >> 1`, `m = ceil(m / 2)`.
 */
export function siblingCount(index: number, count: number): number {
  let k = 0;
  for (let i = index, m = count; m > 1; i >>= 1, m = (m + 1) >> 1) if ((i ^ 1) < m) k++;
  return k;
}

/** Why `(count, segment, segments, index, size)` is not a place in a page at `level`, or `""`. */
function badPlace(level: number, s: Omit<ProofStep, "siblings">): string {
  const max = level === 0 ? LEAF_NODES_MAX : PAGE_NODES_MAX;
  const ok = s.count >= 1 && s.count <= max && s.size >= 1 && s.size <= Math.min(SEGMENT_NODES_MAX, s.count) &&
    s.index < s.size && s.segments >= 1 && s.segments <= s.count && s.segment < s.segments;
  return ok ? "" : `level ${level}: node ${s.index} of a ${s.size}-node segment, segment ${s.segment} of ` +
    `${s.segments}, in a page of ${s.count} is not a place in a page`;
}

/**
 * Encode proof steps, leaf level first.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { encodeProof } from "./proof.ts";
 * const proof = encodeProof([{ count: 1, segment: 0, segments: 1, index: 0, size: 1, siblings: [] }]);
 * assert(proof.length === 10);
 * ```
 */
export function encodeProof(steps: readonly ProofStep[]): Uint8Array {
  let len = 2;
  for (const s of steps) len += 8 + s.siblings.length * ID;
  const out = new Uint8Array(len);
  out[0] = PROOF_FORMAT_VERSION;
  out[1] = steps.length;
  let off = 2;
  steps.forEach((s, level) => {
    const bad = badPlace(level, s);
    if (bad !== "") throw new RangeError(`Cannot encode proof: ${bad}`);
    const want = siblingCount(s.index, s.size) + siblingCount(s.segment, s.segments);
    if (s.siblings.length !== want) {
      throw new RangeError(`Cannot encode proof: level ${level} has '${s.siblings.length}' siblings, not ${want}`);
    }
    for (const v of [s.count, s.segment, s.segments]) {
      out[off++] = v >>> 8;
      out[off++] = v & 0xff;
    }
    out[off++] = s.index;
    out[off++] = s.size;
    for (const sib of s.siblings) {
      out.set(sib, off);
      off += ID;
    }
  });
  return out;
}

/**
 * Whether `proof` shows that `eventId` is an item of the tree whose root
 * hash is `root`. Never throws: malformed input is `false`.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { MerkleTree } from "./tree.ts";
 * import { verifyProof } from "./proof.ts";
 * const id = new Uint8Array(32).fill(9);
 * const { root, put } = MerkleTree.build([{ ts: 1, id }]);
 * const tree = new MerkleTree({ get: (h) => put.get(Array.from(h, (b) => b.toString(16).padStart(2, "0")).join("")) }, root);
 * assert(verifyProof(tree.prove({ ts: 1, id })!, id, root.hash));
 * ```
 */
export function verifyProof(proof: Uint8Array, eventId: Uint8Array, root: Uint8Array): boolean {
  return walkProof(proof, eventId, root) === true;
}

/**
 * Like {@linkcode verifyProof}, for a proof that came from elsewhere (a node's
 * answer): `true` or `false` when it parses, and `XfError` `BAD_PROOF` naming
 * what is wrong when it does not (or the id or root is not 32 bytes).
 *
 * @example
 * ```ts
 * import { assert, assertThrows } from "@std/assert";
 * import { checkProof } from "./proof.ts";
 * assertThrows(() => checkProof(new Uint8Array([1]), new Uint8Array(32), new Uint8Array(32)));
 * ```
 */
export function checkProof(proof: Uint8Array, eventId: Uint8Array, root: Uint8Array): boolean {
  const r = walkProof(proof, eventId, root);
  if (typeof r === "string") throw new XfError("BAD_PROOF", `Cannot check proof: ${r}`);
  return r;
}

/** Walk a proof: whether it leads to `root`, or why it does not parse. */
function walkProof(proof: Uint8Array, eventId: Uint8Array, root: Uint8Array): boolean | string {
  if (!(proof instanceof Uint8Array) || !(eventId instanceof Uint8Array) || !(root instanceof Uint8Array)) {
    return "proof, id and root must be byte arrays";
  }
  if (eventId.length !== ID || root.length !== ID) return `id and root must be ${ID} bytes`;
  if (proof.length < 2) return `${proof.length} bytes, shorter than its 2-byte header`;
  if (proof[0] !== PROOF_FORMAT_VERSION) return `format version ${proof[0]}, expected ${PROOF_FORMAT_VERSION}`;
  const levels = proof[1]!;
  if (levels < 1 || levels > PAGE_LEVEL_MAX + 1) return `${levels} levels, expected 1 to ${PAGE_LEVEL_MAX + 1}`;
  // h lives at buf[0..32]; a pair is hashed from buf[32..96] back into buf[0..32].
  const buf = new Uint8Array(3 * ID);
  buf.set(eventId, 0);
  let off = 2;
  const fold = (index: number, count: number, level: number): string => {
    for (let i = index, m = count; m > 1; i >>= 1, m = (m + 1) >> 1) {
      if ((i ^ 1) >= m) continue;
      if (off + ID > proof.length) return `truncated in the siblings of level ${level} (byte ${off})`;
      const sib = proof.subarray(off, off + ID);
      off += ID;
      buf.copyWithin(i & 1 ? 2 * ID : ID, 0, ID);
      buf.set(sib, i & 1 ? ID : 2 * ID);
      hashInner(buf, ID, 2 * ID, buf, 0);
    }
    return "";
  };
  for (let level = 0; level < levels; level++) {
    if (off + 8 > proof.length) return `truncated at level ${level} (byte ${off})`;
    const u16 = (o: number) => (proof[o]! << 8) | proof[o + 1]!;
    const step = {
      count: u16(off),
      segment: u16(off + 2),
      segments: u16(off + 4),
      index: proof[off + 6]!,
      size: proof[off + 7]!,
    };
    off += 8;
    const bad = badPlace(level, step);
    if (bad !== "") return bad;
    let why = fold(step.index, step.size, level);
    if (why !== "") return why;
    buf.set(wrapSegment(step.size, buf.subarray(0, ID)), 0);
    why = fold(step.segment, step.segments, level);
    if (why !== "") return why;
    buf.set(wrapPageHash(level, step.count, step.segments, buf.subarray(0, ID)), 0);
  }
  if (off !== proof.length) return `${proof.length - off} bytes after the last level`;
  return bytesEqualAt(buf, 0, root, 0, ID);
}
