import { assert, assertEquals, assertThrows } from "@std/assert";
import { sha256 } from "@noble/hashes/sha2";
import {
  boundaryThreshold,
  decodePage,
  encodePage,
  type Item,
  LEAF_NODES_MAX,
  LEAF_NODES_MIN,
  MerkleTree,
  Page,
  PAGE_NODES_MAX,
  PAGE_NODES_MIN,
  pageHash,
  SEGMENT_NODES_MAX,
  segmentEnds,
} from "../merkle/mod.ts";
import { closesPage } from "../merkle/chunker.ts";
import { hashInner } from "../merkle/_sha256.ts";
import { prng, randomId, randomItems, sortedSet, toHex } from "../merkle/_testing.ts";
import { XfError } from "../core/errors.ts";

/** The tree root straight from the documented rules, with @noble/hashes only. */
function referenceRoot(items: Item[]): string {
  if (items.length === 0) return toHex(new Uint8Array(32));
  const h = (...parts: Uint8Array[]) => {
    const buf = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let o = 0;
    for (const p of parts) buf.set(p, (o += p.length) - p.length);
    return sha256(buf);
  };
  const binary = (nodes: Uint8Array[]) => {
    let row = nodes;
    while (row.length > 1) {
      const next: Uint8Array[] = [];
      for (let i = 0; i + 1 < row.length; i += 2) next.push(h(Uint8Array.of(1), row[i]!, row[i + 1]!));
      if (row.length % 2) next.push(row.at(-1)!);
      row = next;
    }
    return row[0]!;
  };
  const hashPage = (level: number, nodes: Uint8Array[]) => {
    // Segments: cut after a node whose bytes 4..8 are below 2^29, at 16 nodes, and at the page's end.
    const segments: Uint8Array[][] = [[]];
    for (const [i, x] of nodes.entries()) {
      const seg = segments.at(-1)!;
      seg.push(x);
      const cut = seg.length >= 16 || new DataView(x.buffer, x.byteOffset).getUint32(4) < 2 ** 29;
      if (cut && i < nodes.length - 1) segments.push([]);
    }
    const root = binary(segments.map((seg) => h(Uint8Array.of(3, seg.length), binary(seg))));
    const n = nodes.length, k = segments.length;
    return h(Uint8Array.of(2, level, n >> 8, n & 0xff, k >> 8, k & 0xff), root);
  };
  let nodes = items.map((i) => i.id);
  for (let level = 0;; level++) {
    const pages: Uint8Array[][] = [[]];
    for (const [i, x] of nodes.entries()) {
      const page = pages.at(-1)!;
      page.push(x);
      const s = page.length;
      const u32 = new DataView(x.buffer, x.byteOffset).getUint32(0);
      const cut = level === 0
        ? s >= 256 || (s >= 32 && u32 < 2 ** 26)
        : s >= 512 || (s >= 128 && u32 < Math.floor((s - 128) ** 4 / 80));
      if (cut && i < nodes.length - 1) pages.push([]);
    }
    if (pages.length === 1) return toHex(hashPage(level, pages[0]!));
    nodes = pages.map((p) => hashPage(level, p));
  }
}

Deno.test("hashInner() is SHA-256(0x01 || left || right)", () => {
  const rand = prng(31);
  const src = new Uint8Array(100);
  for (let k = 0; k < 500; k++) {
    for (let i = 0; i < src.length; i++) src[i] = rand.int(256);
    const l = rand.int(36);
    const r = rand.int(36);
    const out = new Uint8Array(40);
    hashInner(src, l, r, out, 3);
    const want = sha256(Uint8Array.of(1, ...src.subarray(l, l + 32), ...src.subarray(r, r + 32)));
    assertEquals(toHex(out.subarray(3, 35)), toHex(want));
  }
});

Deno.test("MerkleTree.build() matches a reimplementation of the documented rules", () => {
  const rand = prng(32);
  const withPrefix = (n: number, prefix: number) =>
    Array.from({ length: n }, (_, i) => {
      const id = randomId(rand);
      new DataView(id.buffer).setUint32(0, prefix);
      return { ts: 5000 + i, id };
    });
  const cases: Item[][] = [
    ...[1, 2, 3, 127, 128, 129, 255, 256, 257, 600, 5000, 60_000].map((n) => sortedSet(randomItems(rand, n))),
    withPrefix(1500, 0xffffffff), // never cut by the rule: leaves of 256
    withPrefix(1500, 0), // cut as soon as the rule may cut: leaves of 32
    withPrefix(140_000, 0xffffffff), // leaves of 256 whose hashes, above, are cut by the rule
  ];
  for (const items of cases) {
    assertEquals(toHex(MerkleTree.build(items).root.hash), referenceRoot(items), `${items.length} items`);
  }
});

Deno.test("MerkleTree.build() root of a fixed set is stable (store format 4 fixture)", () => {
  const items = Array.from({ length: 2000 }, (_, i) => ({
    ts: 1_700_000_000_000 + i * 1000,
    id: sha256(Uint8Array.of(i >> 24, i >> 16, i >> 8, i)),
  }));
  const { root, put } = MerkleTree.build(items);
  assertEquals(root.count, 2000);
  assertEquals(root.depth, 2);
  assertEquals(toHex(root.hash), FIXTURE_ROOT);
  assertEquals(referenceRoot(items), FIXTURE_ROOT);
  assertEquals(put.size, FIXTURE_PAGES);
  assertEquals([...put.values()].reduce((n, v) => n + v.length, 0), FIXTURE_BYTES);
});
const FIXTURE_ROOT = "ef23764b4529b2f6bd34230aacf977ad75f08c447a7ab95ae23b73c96da16011";
const FIXTURE_PAGES = 19;
const FIXTURE_BYTES = 69958;

Deno.test("boundaryThreshold() rises from 0 at 128 nodes to a cut at 512", () => {
  assertEquals(boundaryThreshold(PAGE_NODES_MIN - 1), 0);
  assertEquals(boundaryThreshold(PAGE_NODES_MIN), 0);
  assertEquals(boundaryThreshold(384), Math.floor(2 ** 32 / 80));
  assertEquals(boundaryThreshold(PAGE_NODES_MAX), 2 ** 32);
  for (let s = PAGE_NODES_MIN; s < PAGE_NODES_MAX; s++) assert(boundaryThreshold(s + 1) >= boundaryThreshold(s));
  // Leaves: a flat hazard, one node in 64, from 32 nodes to a cut at 256.
  assertEquals(boundaryThreshold(LEAF_NODES_MIN - 1, 0), 0);
  for (let s = LEAF_NODES_MIN; s < LEAF_NODES_MAX; s++) assertEquals(boundaryThreshold(s, 0), 2 ** 26);
  assertEquals(boundaryThreshold(LEAF_NODES_MAX, 0), 2 ** 32);
});

// Leaves: 31 nodes, then a geometric number (p = 1/64) capped at 225: 31 + 64 × (1 - (63/64)^225) ≈ 93.1.
for (const [level, lo, hi] of [[1, 375, 395], [0, 91, 95.5]]) {
  Deno.test(`closesPage() gives ${level === 0 ? "leaves of ~93" : "pages of ~384"} nodes on random nodes`, () => {
    const rand = prng(33);
    const node = new Uint8Array(4);
    const view = new DataView(node.buffer);
    let pages = 0;
    let s = 0;
    const total = 2_000_000;
    for (let i = 0; i < total; i++) {
      view.setUint32(0, rand.u32());
      s++;
      if (closesPage(node, 0, s, level)) {
        pages++;
        s = 0;
      }
    }
    const mean = total / pages;
    assert(mean > lo! && mean < hi!, `mean page ${mean}`);
  });
}

Deno.test("encodePage() and decodePage() round-trip leaf and inner pages", () => {
  const rand = prng(34);
  const items = sortedSet(randomItems(rand, 3000, 2 ** 52, 2 ** 40));
  const { put } = MerkleTree.build(items);
  for (const [hex, bytes] of put) {
    const page = decodePage(bytes);
    assertEquals(toHex(page.hash()), hex);
    assertEquals(toHex(pageHash(page.level, page.nodes)), hex);
    assertEquals(toHex(encodePage(page)), toHex(bytes));
  }
  const leaf = new Page({
    level: 0,
    nodes: new Uint8Array(32),
    firstTs: Float64Array.of(2 ** 53 - 1),
    firstIds: null,
    counts: null,
    sums: null,
  });
  assertEquals(decodePage(encodePage(leaf)).firstTs[0], 2 ** 53 - 1);
});

Deno.test("decodePage() throws STORAGE_CORRUPTION for malformed pages", () => {
  const rand = prng(35);
  const { put } = MerkleTree.build(sortedSet(randomItems(rand, 1000)));
  const leaf = [...put.values()].find((v) => v[1] === 0)!;
  const inner = [...put.values()].find((v) => v[1] === 1)!;
  const nodes = new Uint8Array(64).fill(2, 0, 32).fill(1, 32, 64);
  const unordered = encodePage(
    new Page({ level: 0, nodes, firstTs: Float64Array.of(7, 7), firstIds: null, counts: null, sums: null }),
  );
  const bad: Array<[string, Uint8Array]> = [
    ["empty", new Uint8Array(0)],
    ["version", Uint8Array.of(9, ...leaf.subarray(1))],
    ["no nodes", Uint8Array.of(1, 0, 0, 0)],
    ["too many nodes", Uint8Array.of(1, 0, 2, 1)],
    ["truncated", leaf.subarray(0, leaf.length - 1)],
    ["trailing", Uint8Array.of(...leaf, 0)],
    ["truncated inner", inner.subarray(0, inner.length - 40)],
    ["ids out of order", unordered],
    ["non-minimal varint", Uint8Array.of(1, 0, 0, 1, ...new Uint8Array(32), 0x80, 0)],
    ["ts above 2^53", Uint8Array.of(1, 0, 0, 1, ...new Uint8Array(32), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f)],
  ];
  for (const [what, bytes] of bad) {
    const err = assertThrows(() => decodePage(bytes), XfError, undefined, what);
    assertEquals(err.code, "STORAGE_CORRUPTION", what);
  }
});

Deno.test("Encoded pages take at most 40 bytes per item", () => {
  const rand = prng(36);
  // A year of events: ts deltas of about a minute.
  const items = sortedSet(randomItems(rand, 200_000, 1_600_000_000_000, 365 * 86_400_000));
  const { put } = MerkleTree.build(items);
  const bytes = [...put.values()].reduce((n, v) => n + v.length, 0);
  assert(bytes / items.length <= 40, `${bytes / items.length} bytes per item`);
});

Deno.test("segmentEnds() cuts random nodes into segments of 7 on average, 16 at most", () => {
  const rand = prng(35);
  let segments = 0;
  let nodes = 0;
  for (let p = 0; p < 400; p++) {
    const page = new Uint8Array(512 * 32);
    for (let i = 0; i < page.length; i++) page[i] = rand.int(256);
    const ends = segmentEnds(page);
    ends.forEach((end, k) => assert(end - (k === 0 ? 0 : ends[k - 1]!) <= SEGMENT_NODES_MAX));
    segments += ends.length;
    nodes += 512;
  }
  // One node in 8 cuts, capped at 16: (1 - (7/8)^16) × 8 = 7.06 nodes (the page's last segment is cut short).
  const mean = nodes / segments;
  assert(mean > 6.8 && mean < 7.3, `mean segment ${mean}`);
});
