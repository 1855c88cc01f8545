/**
 * Inclusion proofs: that an event id is an item of the tree with a given
 * root, checked with nothing but the proof.
 *
 * Layout (big-endian), one step per level from the leaf page up to the
 * root page:
 *
 * ```
 * u8 version (1) | u8 levels D (1..16)
 * D × ( u16 index of the node in its page | u16 node count n of the page
 *       | k × 32 B siblings on the node's binary path, bottom up )
 * ```
 *
 * `k` follows from `(index, n)`: walking up the binary tree of a page from
 * `(i, m) = (index, n)` while `m > 1`, there is a sibling when `i ^ 1 < m`
 * (a left node with no right neighbour is promoted without one), then
 * `i = i >> 1`, `m = ceil(m / 2)`. To verify: `h = event id`; at level L
 * fold the siblings (`SHA-256(0x01 || left || right)`, `h` is the right
 * when `i` is odd), then `h = SHA-256(0x02 || L || n u16 BE || h)`; the
 * proof holds when the final `h` equals the root.
 *
 * @module
 */

import { sha256 } from "@noble/hashes/sha2";
import { PAGE_NODES_MAX } from "./chunker.ts";
import { PAGE_LEVEL_MAX, wrapPageHash } from "./page.ts";
import { bytesEqualAt, ID } from "./_util.ts";
import { XfError } from "../core/errors.ts";

/** Version byte at the start of every proof. */
export const PROOF_FORMAT_VERSION = 1;

/** One level of a proof: where the node sits in its page, and its binary path. */
export interface ProofStep {
  /** Index of the node in its page. */
  index: number;
  /** Nodes in the page. */
  count: number;
  /** Siblings on the node's binary path in the page, bottom up. */
  siblings: Uint8Array[];
}

/** Number of siblings on the binary path of node `index` in a page of `count` nodes. */
export function siblingCount(index: number, count: number): number {
  let k = 0;
  for (let i = index, m = count; m > 1; i >>= 1, m = (m + 1) >> 1) if ((i ^ 1) < m) k++;
  return k;
}

/**
 * Encode proof steps, leaf level first.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { encodeProof } from "./proof.ts";
 * const proof = encodeProof([{ index: 0, count: 1, siblings: [] }]);
 * assert(proof.length === 6);
 * ```
 */
export function encodeProof(steps: readonly ProofStep[]): Uint8Array {
  let len = 2;
  for (const s of steps) len += 4 + s.siblings.length * ID;
  const out = new Uint8Array(len);
  out[0] = PROOF_FORMAT_VERSION;
  out[1] = steps.length;
  let off = 2;
  for (const s of steps) {
    if (s.siblings.length !== siblingCount(s.index, s.count)) {
      throw new RangeError(`Cannot encode proof: '${s.siblings.length}' siblings for node ${s.index} of ${s.count}`);
    }
    out[off++] = s.index >>> 8;
    out[off++] = s.index & 0xff;
    out[off++] = s.count >>> 8;
    out[off++] = s.count & 0xff;
    for (const sib of s.siblings) {
      out.set(sib, off);
      off += ID;
    }
  }
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
  const buf = new Uint8Array(1 + 2 * ID);
  buf[0] = 0x01;
  let h: Uint8Array = eventId.slice();
  let off = 2;
  for (let level = 0; level < levels; level++) {
    if (off + 4 > proof.length) return `truncated at level ${level} (byte ${off})`;
    const index = (proof[off]! << 8) | proof[off + 1]!;
    const count = (proof[off + 2]! << 8) | proof[off + 3]!;
    off += 4;
    if (count < 1 || count > PAGE_NODES_MAX || index >= count) {
      return `level ${level}: node ${index} of ${count} is not a place in a page`;
    }
    for (let i = index, m = count; m > 1; i >>= 1, m = (m + 1) >> 1) {
      if ((i ^ 1) >= m) continue;
      if (off + ID > proof.length) return `truncated in the siblings of level ${level} (byte ${off})`;
      const sib = proof.subarray(off, off + ID);
      off += ID;
      if (i & 1) {
        buf.set(sib, 1);
        buf.set(h, 1 + ID);
      } else {
        buf.set(h, 1);
        buf.set(sib, 1 + ID);
      }
      h = sha256(buf);
    }
    h = wrapPageHash(level, count, h);
  }
  if (off !== proof.length) return `${proof.length - off} bytes after the last level`;
  return bytesEqualAt(h, 0, root, 0, ID);
}
