/**
 * The Merkle index: one prolly tree per group over the group's events,
 * ordered by `(ts, id)`. Pure and synchronous: pages are read through a
 * {@linkcode PageStore} and writes are returned for the caller to apply.
 *
 * ## Items
 *
 * An item is `(ts, id)`: `ts` a non-negative integer below 2^53 (ms), `id`
 * the 32-byte event id. Order: `ts`, then `id` bytes lexicographically,
 * which is the byte order of the 40-byte key `ts u64 BE || id`.
 *
 * ## Shape
 *
 * ```
 *  level 2 (root)        [ P ][ Q ][ R ]                  one page: the root
 *                          |    |    |                    node = hash of a
 *                 ┌────────┘    |    └──────────┐         level-1 page
 *  level 1   [ a  b  c … ]  [ … ]  …  [ … x  y ]          node = hash of a
 *              |  |                        |               level-0 page
 *  level 0   [id id id … id][id … id] …  [id … id]        node = item id
 *             └ 128..512 nodes, boundary by content ┘
 * ```
 *
 * Level 0's nodes are the item ids in order; level L+1's nodes are the
 * hashes of level L's pages, in order. Each level is cut into pages by the
 * boundary rule; a level with a single page is the root level, and the tree
 * root is that page's hash (32 zero bytes for the empty set). Depth is the
 * number of levels.
 *
 * ## Page boundaries (chunker.ts)
 *
 * Scan a level's nodes in order. After appending node `x` to the current
 * page, of size `s` after appending, close the page if `s >= 512`, or if
 * `s >= 128` and `u32(x) < floor((s - 128)^4 / 80)`, where `u32(x)` is the
 * first 4 bytes of `x` big-endian. The last page of a level closes at the
 * end of the level. With random nodes, pages hold 384.6 nodes on average
 * (standard deviation 58; 383.6 measured over 2 million nodes), and 0.7 %
 * are cut at 512. Since a cut depends only on the nodes since the previous
 * cut, every page, and the root, is a function of the set alone.
 *
 * ## Page hash (page.ts)
 *
 * ```
 *            page hash = SHA-256(0x02 || level u8 || n u16 BE || B)
 *                                                               |
 *                      B = binary root ─────────────────────────┘
 *                     /              \
 *        SHA-256(0x01||l||r)     SHA-256(0x01||l||r)
 *          /        \              /        \
 *      node 0     node 1       node 2     node 3     node 4 (odd: promoted)
 * ```
 *
 * Pairs at each height hash as `SHA-256(0x01 || left || right)`; an odd
 * last node is promoted unchanged; one node is its own binary root.
 *
 * ## Page bytes (page.ts)
 *
 * `u8 version (1) | u8 level | u16 BE n | n × 32 B nodes`, then at level 0
 * each item's ts as LEB128 varints (first absolute, then deltas), and above
 * level 0, per child: first ts (delta varints), first id (32 B each), item
 * count (varints), id sum (32 B little-endian each, mod 2^256). These
 * derived fields are not hashed; the tree checks them against the children
 * when it reads them, and `fsck` compares them with a rebuild. About 34.9
 * bytes per item in all at one million items.
 *
 * ## Inclusion proof (proof.ts)
 *
 * `u8 version (1) | u8 D`, then per level from the leaf page up:
 * `u16 BE index | u16 BE n | siblings (32 B each)`. The number of siblings
 * follows from `(index, n)`: walking up with `(i, m) = (index, n)` while
 * `m > 1`, a sibling exists when `i ^ 1 < m`; then `i >>= 1`,
 * `m = ceil(m / 2)`. To verify: `h = event id`; per level L fold the
 * siblings (`h` on the right when `i` is odd), then
 * `h = SHA-256(0x02 || L || n || h)`; the proof holds when `h` is the root.
 * About 686 bytes at a million items (depth 3).
 *
 * ## Fingerprints (fingerprint.ts)
 *
 * `fingerprint(begin, end)` over ranks is negentropy v1's: the first 16
 * bytes of SHA-256(sum of ids mod 2^256, 32 B little-endian || count as a
 * negentropy varint), read in O(depth) pages from the per-child counts and
 * sums. The tree is a negentropy storage ({@linkcode NegentropyStorage}):
 * the negentropy v1 {@linkcode Reconciler} (`negentropy.ts`) runs over it, or
 * over {@linkcode VectorStorage} (`negentropy_storage.ts`), the sorted-array
 * reference backend.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { MerkleTree, verifyProof } from "./mod.ts";
 * const pages = new Map<string, Uint8Array>();
 * const hex = (h: Uint8Array) => Array.from(h, (b) => b.toString(16).padStart(2, "0")).join("");
 * const tree = new MerkleTree({ get: (h) => pages.get(hex(h)) }, null);
 * const item = { ts: 1_700_000_000_000, id: new Uint8Array(32).fill(3) };
 * const { root, put, del } = tree.insert([item]);
 * for (const [k, v] of put) pages.set(k, v);
 * for (const k of del) pages.delete(k);
 * assert(verifyProof(tree.prove(item)!, item.id, root.hash));
 * ```
 *
 * @module
 */

export {
  CACHE_PAGES_DEFAULT,
  type FsckReport,
  MerkleTree,
  type MerkleTreeOptions,
  type PageStore,
  type PageWrites,
  type RootInfo,
} from "./tree.ts";
export { encodeProof, PROOF_FORMAT_VERSION, type ProofStep, siblingCount, verifyProof } from "./proof.ts";
export {
  binaryRoot,
  decodePage,
  encodePage,
  Page,
  PAGE_FORMAT_VERSION,
  PAGE_LEVEL_MAX,
  pageHash,
  type PageInit,
  type PagePath,
  SEGMENT_CUT_BELOW,
  SEGMENT_NODES_MAX,
  segmentEnds,
} from "./page.ts";
export {
  BOUNDARY_DIVISOR,
  boundaryThreshold,
  LEAF_NODES_MAX,
  LEAF_NODES_MIN,
  PAGE_NODES_MAX,
  PAGE_NODES_MIN,
} from "./chunker.ts";
export { FINGERPRINT_BYTES, fingerprintOf, negentropyVarint } from "./fingerprint.ts";
export { type Bound, compareItems, ID_BYTES, type Item, itemKey, KEY_BYTES } from "./item.ts";
export { PROTOCOL_VERSION, Reconciler, type ReconcileResult, type ReconcilerOptions } from "./negentropy.ts";
export { IdSum, type NegentropyItem, type NegentropyStorage, SubRange, VectorStorage } from "./negentropy_storage.ts";
