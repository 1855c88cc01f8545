// Removals and mixed updates of the Merkle index, and the page hash that reuses an older page's inner nodes: every
// sequence of inserts and removals must leave exactly the pages and root that build() makes of the final set.
import { assert, assertEquals } from "@std/assert";
import fc from "npm:fast-check@4.11.0";
import { binaryRoot, type Item, MerkleTree, Page, type PageWrites } from "../merkle/mod.ts";
import { binaryLayers, binarySiblings } from "../merkle/page.ts";
import { mapStore, prng, randomId, randomItems, sortedSet, toHex } from "../merkle/_testing.ts";

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
        const tree = new MerkleTree(store, null, { cachePages: 16 + rand.int(64) });
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
    if (((p[2]! << 8) | p[3]!) === 0) {
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
  assert(size >= 128 && size <= 512, `first leaf holds ${size} items`);
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

Deno.test("MerkleTree: inserts and removals keep the root the code before reused inner nodes computed", () => {
  // Pinned with the tree of commit 62b5a67 (full page re-hash, no removal): build() of the 6,000 items of
  // prng(12) without every third one, by rank.
  const rand = prng(12);
  const all = sortedSet(randomItems(rand, 6000));
  const kept = all.filter((_, i) => i % 3 !== 0);
  const pinned = "cca5baff3aefd5d9ad2395e268c856a005175ff3cce7c411539b21812b2008f5";
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

Deno.test("binaryLayers() reusing an older page's inner nodes equals a fresh computation", () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 512 }),
      fc.integer({ min: 1, max: 512 }),
      fc.nat(512),
      fc.integer({ min: 1, max: 2 ** 31 - 1 }),
      (n, oldN, sameRaw, seed) => {
        const rand = prng(seed);
        const same = Math.min(sameRaw, n, oldN);
        const nodes = new Uint8Array(n * 32);
        for (let i = 0; i < n; i++) nodes.set(randomId(rand), i * 32);
        const old = new Uint8Array(oldN * 32);
        old.set(nodes.subarray(0, same * 32));
        for (let i = same; i < oldN; i++) old.set(randomId(rand), i * 32);
        const fresh = binaryLayers(nodes);
        const reused = binaryLayers(nodes, binaryLayers(old), oldN, same);
        assertEquals(toHex(reused), toHex(fresh));
        const root = n === 1 ? nodes : fresh.subarray(fresh.length - 32);
        assertEquals(toHex(root), toHex(binaryRoot(nodes)));
        // A page made from the old one by the chunker's reuse hint hashes the same as one made from scratch.
        const ts = Float64Array.from({ length: n }, (_, i) => i);
        const oldPage = new Page({
          level: 0,
          nodes: old,
          firstTs: Float64Array.from({ length: oldN }, (_, i) => i),
          firstIds: null,
          counts: null,
          sums: null,
        });
        oldPage.hash();
        const init = { level: 0, nodes, firstTs: ts, firstIds: null, counts: null, sums: null };
        const a = new Page(init, { page: oldPage, same });
        const b = new Page({ ...init, nodes: nodes.slice() });
        assertEquals(toHex(a.hash()), toHex(b.hash()));
        const i = rand.int(n);
        assertEquals(a.siblings(i).map((s) => toHex(s)), binarySiblings(nodes, i).map((s) => toHex(s)));
      },
    ),
    { numRuns: 300, seed: 7 },
  );
});
