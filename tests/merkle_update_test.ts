// Removals and mixed updates of the Merkle index, and the page hash that reuses an older page's inner nodes: every
// sequence of inserts and removals must leave exactly the pages and root that build() makes of the final set.
import { assert, assertEquals } from "@std/assert";
import fc from "npm:fast-check@4.11.0";
import {
  encodeProof,
  type Item,
  MerkleTree,
  Page,
  pageHash,
  type PageWrites,
  segmentEnds,
  siblingCount,
  verifyProof,
} from "../merkle/mod.ts";
import { binarySiblings, type CopiedRun } from "../merkle/page.ts";
import { mapStore, prng, randomId, randomItems, sortedSet, toHex } from "../merkle/_testing.ts";
import { LINK_CHILDREN_CACHE_MIN } from "../merkle/tree.ts";

function assertSameTree(tree: MerkleTree, pages: Map<string, Uint8Array>, ref: PageWrites, what: string): void {
  assertEquals(toHex(tree.root().hash), toHex(ref.root.hash), `${what}: root`);
  assertEquals(tree.root().count, ref.root.count, `${what}: count`);
  assertEquals(tree.root().depth, ref.root.depth, `${what}: depth`);
  assertEquals(pages.size, ref.put.size, `${what}: page count`);
  for (const [k, v] of ref.put) {
    const g = pages.get(k);
    assert(g !== undefined && g.length === v.length && g.every((b, i) => b === v[i]), `${what}: page '${k}'`);
  }
}

const key = (it: Item) => `${it.ts}:${toHex(it.id)}`;

Deno.test("MerkleTree: random sequences of inserts, removals and updates give build()'s pages and root", () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 2 ** 31 - 1 }),
      fc.array(fc.record({ add: fc.nat(1500), remove: fc.nat(1500), split: fc.boolean() }), {
        minLength: 1,
        maxLength: 8,
      }),
      (seed, steps) => {
        const rand = prng(seed);
        const { pages, store, apply } = mapStore();
        // A small cache (pages read back from the store), or one that links children to parents (LINK_CHILDREN_CACHE_MIN):
        // new parents then get their children from the update itself.
        const tree = new MerkleTree(store, null, {
          cachePages: rand.int(2) ? 16 + rand.int(64) : LINK_CHILDREN_CACHE_MIN,
        });
        const set = new Map<string, Item>();
        // A narrow ts span so that many items share a ts (order then falls to the id).
        const fresh = (n: number) => randomItems(rand, n, 1_700_000_000_000, 5_000);
        for (const [i, step] of steps.entries()) {
          const held = [...set.values()];
          const add = fresh(step.add);
          // Victims: present items, plus some never added (ignored), plus duplicates.
          const remove = Array.from({ length: Math.min(step.remove, held.length) }, () => held[rand.int(held.length)]!);
          remove.push(...fresh(rand.int(3)));
          if (remove.length > 0) remove.push(remove[0]!);
          if (step.split) {
            apply(tree.insert(add));
            apply(tree.remove(remove));
          } else {
            apply(tree.update(add, remove));
          }
          for (const it of add) set.set(key(it), it);
          for (const it of remove) set.delete(key(it));
          assertSameTree(tree, pages, MerkleTree.build(sortedSet([...set.values()])), `step ${i}`);
        }
      },
    ),
    { numRuns: 40, seed: 12 },
  );
});

Deno.test("MerkleTree: removing everything leaves the empty root and no pages", () => {
  const rand = prng(3);
  const items = randomItems(rand, 3000);
  const { pages, store, apply } = mapStore();
  const tree = new MerkleTree(store, null, { cachePages: 32 });
  apply(tree.insert(items));
  assertEquals(tree.root().depth, 2);
  apply(tree.remove(items.slice(0, 1000)));
  apply(tree.remove(items));
  assertEquals(tree.root(), { hash: new Uint8Array(32), count: 0, depth: 0 });
  assertEquals(pages.size, 0);
  apply(tree.insert(items.slice(0, 10)));
  assertSameTree(tree, pages, MerkleTree.build(sortedSet(items.slice(0, 10))), "refilled");
});

Deno.test("MerkleTree.remove() of items the tree does not hold writes nothing", () => {
  const rand = prng(4);
  const items = randomItems(rand, 2000);
  const { pages, store, apply } = mapStore();
  const tree = new MerkleTree(store, null);
  apply(tree.insert(items));
  const before = toHex(tree.root().hash);
  const w = tree.remove(randomItems(rand, 50));
  assertEquals(w.put.size + w.del.length, 0);
  assertEquals(toHex(w.root.hash), before);
  // An item both added and removed in one update ends absent.
  const x = randomItems(rand, 1)[0]!;
  apply(tree.update([x], [x]));
  assert(!tree.has(x));
  assertEquals(toHex(tree.root().hash), before);
  assertEquals(pages.size, MerkleTree.build(sortedSet(items)).put.size);
});

/** Items in the first leaf page: the rank of the first item whose proof puts it at index 0 of its leaf. */
function firstLeafSize(tree: MerkleTree): number {
  let size = tree.size();
  tree.iterate(1, tree.size(), (it, i) => {
    const p = tree.prove(it)!;
    // Proof v2, leaf step: u16 n | u16 segment | u16 segments | u8 index in segment | u8 segment size.
    if (((p[4]! << 8) | p[5]!) === 0 && p[8] === 0) {
      size = i;
      return false;
    }
  });
  return size;
}

Deno.test("MerkleTree.remove() of a page's closing node merges the page with the next one", () => {
  const rand = prng(5);
  const set = sortedSet(randomItems(rand, 5000));
  const { pages, store, apply } = mapStore();
  const tree = new MerkleTree(store, null);
  apply(tree.insert(set));
  const leaves = () => [...pages.values()].filter((b) => b[1] === 0).length;
  const before = leaves();
  const size = firstLeafSize(tree);
  assert(size >= 32 && size <= 128, `first leaf holds ${size} items`);
  apply(tree.remove([set[size - 1]!]));
  const rest = set.filter((_, i) => i !== size - 1);
  assertSameTree(tree, pages, MerkleTree.build(rest), "after removing the closing node");
  // The boundary went away: the first page now runs on into what was the second.
  assert(firstLeafSize(tree) > size - 1, `first leaf ${size} → ${firstLeafSize(tree)} items`);
  assert(leaves() <= before, `leaves ${before} → ${leaves()}`);
});

Deno.test("MerkleTree.remove() lowers the depth when the set fits one page", () => {
  const rand = prng(6);
  const set = sortedSet(randomItems(rand, 3000));
  const { pages, store, apply } = mapStore();
  const tree = new MerkleTree(store, null);
  apply(tree.insert(set));
  assertEquals(tree.root().depth, 2);
  apply(tree.remove(set.slice(100)));
  assertEquals(tree.root().depth, 1);
  assertSameTree(tree, pages, MerkleTree.build(set.slice(0, 100)), "one page left");
});

Deno.test("MerkleTree: inserts and removals in any order end on the pinned root of store format 4", () => {
  // Pinned with build() of store format 4 (leaves of ~93 cut by a flat rule, segmented page hash), computed by the
  // reference in merkle_page_test.ts too: the 6,000 items of prng(12) without every third one, by rank.
  const rand = prng(12);
  const all = sortedSet(randomItems(rand, 6000));
  const kept = all.filter((_, i) => i % 3 !== 0);
  const pinned = "ccadf9e2219ec2230c6b0bfae9e9d2ffa8d98e378d4b42cd156c371582b329f1";
  assertEquals(toHex(MerkleTree.build(kept).root.hash), pinned);
  const { store, apply } = mapStore();
  const tree = new MerkleTree(store, null);
  const order = all.slice().reverse();
  for (let i = 0; i < order.length; i += 700) apply(tree.insert(order.slice(i, i + 700)));
  const gone = all.filter((_, i) => i % 3 === 0);
  for (let i = 0; i < gone.length; i += 300) apply(tree.remove(gone.slice(i, i + 300)));
  assertEquals(toHex(tree.root().hash), pinned);
  assertEquals(tree.root().count, 4000);
});

Deno.test("a page hashed with an older page's segments equals one hashed from scratch, and its paths verify", () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 512 }),
      fc.integer({ min: 0, max: 40 }),
      fc.integer({ min: 1, max: 2 ** 31 - 1 }),
      (oldN, edits, seed) => {
        const rand = prng(seed);
        // The old page's nodes, and the new page's: the same with a few nodes inserted and removed.
        // Beside each node, where it sits in the old page (-1 for an inserted one).
        const list: Uint8Array[] = Array.from({ length: oldN }, () => randomId(rand));
        const origin: number[] = list.map((_, i) => i);
        const old = new Uint8Array(oldN * 32);
        list.forEach((x, i) => old.set(x, i * 32));
        for (let e = 0; e < edits; e++) {
          if (rand.int(2) === 0 && list.length > 1) {
            const at = rand.int(list.length);
            list.splice(at, 1);
            origin.splice(at, 1);
          } else if (list.length < 512) {
            const at = rand.int(list.length + 1);
            list.splice(at, 0, randomId(rand));
            origin.splice(at, 0, -1);
          }
        }
        const n = list.length;
        const nodes = new Uint8Array(n * 32);
        list.forEach((x, i) => nodes.set(x, i * 32));
        const seq = (m: number) => Float64Array.from({ length: m }, (_, i) => i);
        const oldPage = new Page({
          level: 0,
          nodes: old,
          firstTs: seq(oldN),
          firstIds: null,
          counts: null,
          sums: null,
        });
        oldPage.hash();
        // The runs of nodes copied from the old page, as a chunker records them.
        const runs: CopiedRun[] = [];
        origin.forEach((o, i) => {
          const last = runs.at(-1);
          if (o < 0) return;
          if (last !== undefined && last.at + last.len === i && last.from + last.len === o) last.len++;
          else runs.push({ at: i, len: 1, page: oldPage, from: o });
        });
        const init = { level: 0, nodes, firstTs: seq(n), firstIds: null, counts: null, sums: null };
        const a = new Page(init, runs);
        const b = new Page({ ...init, nodes: nodes.slice() });
        assertEquals(toHex(a.hash()), toHex(b.hash()));
        assertEquals(toHex(a.hash()), toHex(pageHash(0, nodes)));
        // Segment ends: content-defined, at most 16 nodes, the last at the page's end.
        const ends = segmentEnds(nodes);
        assertEquals(ends.at(-1), n);
        ends.forEach((end, k) => assert(end - (k === 0 ? 0 : ends[k - 1]!) <= 16));
        // The path of any node folds up to the page's root.
        const i = rand.int(n);
        const p = a.path(i);
        const start = p.segment === 0 ? 0 : ends[p.segment - 1]!;
        assertEquals(p.index, i - start);
        assertEquals(
          p.siblings.slice(0, siblingCount(p.index, p.size)).map(toHex),
          binarySiblings(nodes.subarray(start * 32, (start + p.size) * 32), p.index).map(toHex),
        );
        if (n <= 128) assert(verifyProof(encodeProof([p]), list[i]!, a.hash()));
      },
    ),
    { numRuns: 300, seed: 7 },
  );
});
