import { assert, assertEquals, assertNotEquals, assertThrows } from "@std/assert";
import { decodePage, encodePage, type Item, MerkleTree, Page, PAGE_NODES_MIN, type PageWrites } from "../merkle/mod.ts";
import { LEAF_NODES_MAX, LEAF_NODES_MIN, PAGE_NODES_MAX } from "../merkle/mod.ts";
import { mapStore, prng, randomId, randomItems, shuffle, sortedSet, toHex } from "../merkle/_testing.ts";
import { XfError } from "../core/errors.ts";

/** Assert two page maps hold the same pages with the same bytes. */
function assertSamePages(got: Map<string, Uint8Array>, want: Map<string, Uint8Array>, what: string): void {
  assertEquals(got.size, want.size, `${what}: page count`);
  for (const [k, v] of want) {
    const g = got.get(k);
    if (g === undefined) throw new Error(`${what}: page '${k}' missing`);
    assert(g.length === v.length && g.every((b, i) => b === v[i]), `${what}: page '${k}' differs`);
  }
}

function assertSameTree(tree: MerkleTree, pages: Map<string, Uint8Array>, ref: PageWrites, what: string): void {
  assertEquals(toHex(tree.root().hash), toHex(ref.root.hash), `${what}: root`);
  assertEquals(tree.root().count, ref.root.count, `${what}: count`);
  assertEquals(tree.root().depth, ref.root.depth, `${what}: depth`);
  assertSamePages(pages, ref.put, what);
}

Deno.test("MerkleTree.insert() gives build()'s root and pages in 50 arrival orders and batch splits", () => {
  const rand = prng(1);
  const set = sortedSet(randomItems(rand, 5000));
  const ref = MerkleTree.build(set);
  assertEquals(ref.root.depth, 2);
  for (let run = 0; run < 50; run++) {
    const order = shuffle(rand, set.slice());
    const { pages, store, apply } = mapStore();
    const tree = new MerkleTree(store, null, { cachePages: 16 + rand.int(64) });
    // Split at random points into 1 to 24 batches (one run: 200 batches).
    const cuts = Array.from({ length: run === 0 ? 199 : rand.int(24) }, () => rand.int(order.length));
    cuts.push(0, order.length);
    cuts.sort((a, b) => a - b);
    for (let i = 1; i < cuts.length; i++) apply(tree.insert(order.slice(cuts[i - 1], cuts[i])));
    assertSameTree(tree, pages, ref, `run ${run}`);
  }
});

Deno.test("MerkleTree root changes when one item is added or removed", () => {
  const rand = prng(2);
  const set = sortedSet(randomItems(rand, 5000));
  const root = toHex(MerkleTree.build(set).root.hash);
  for (let k = 0; k < 20; k++) {
    const without = set.slice();
    without.splice(rand.int(set.length), 1);
    assertNotEquals(toHex(MerkleTree.build(without).root.hash), root);
    const extra = sortedSet([...set, ...randomItems(rand, 1)]);
    assertNotEquals(toHex(MerkleTree.build(extra).root.hash), root);
  }
});

Deno.test("MerkleTree.insert() of items anywhere in time equals build() at each step", () => {
  const rand = prng(3);
  let all = randomItems(rand, 3000);
  const { pages, store, apply } = mapStore();
  const tree = new MerkleTree(store, null, { cachePages: 32 });
  apply(tree.insert(all));
  for (let step = 0; step < 60; step++) {
    // New items over the whole time span (old ones too), some already present, some twice.
    const batch = randomItems(rand, 1 + rand.int([1, 20, 300][step % 3]!));
    batch.push(all[rand.int(all.length)]!, batch[0]!);
    all = all.concat(batch);
    apply(tree.insert(batch));
    assertSameTree(tree, pages, MerkleTree.build(sortedSet(all)), `step ${step}`);
  }
});

Deno.test("MerkleTree.insert() of items already present writes nothing", () => {
  const rand = prng(4);
  const items = randomItems(rand, 2000);
  const { store, apply } = mapStore();
  const tree = new MerkleTree(store, null);
  apply(tree.insert(items));
  const before = tree.root();
  const w = tree.insert([items[5]!, items[1999]!, items[5]!]);
  assertEquals(w.put.size, 0);
  assertEquals(w.del, []);
  assertEquals(tree.root(), before);
  assertEquals(tree.insert([]).put.size, 0);
  // Every item again, the first and last of every leaf among them.
  const all = tree.insert(items);
  assertEquals([all.put.size, all.del.length], [0, 0]);
  assertEquals(tree.root(), before);
});

Deno.test("MerkleTree.insert() of one item rewrites about one page per level", () => {
  const rand = prng(5);
  const set = sortedSet(randomItems(rand, 200_000, 1_600_000_000_000, 365 * 86_400_000));
  const ref = MerkleTree.build(set);
  assertEquals(ref.root.depth, 3);
  const { pages, store, apply } = mapStore(ref.put);
  const tree = new MerkleTree(store, ref.root, { cachePages: 4096 });
  const rewritten: number[] = [];
  const added: Item[] = [];
  for (let k = 0; k < 200; k++) {
    const item = randomItems(rand, 1, 1_600_000_000_000, 365 * 86_400_000)[0]!;
    added.push(item);
    const w = tree.insert([item]);
    rewritten.push(w.put.size);
    apply(w);
  }
  rewritten.sort((a, b) => a - b);
  const depth = tree.root().depth;
  const mean = rewritten.reduce((a, b) => a + b) / rewritten.length;
  assertEquals(rewritten[100], depth, "median: one page per level");
  assert(rewritten[Math.floor(rewritten.length * 0.95)]! <= 2 * depth, `p95 ${rewritten.at(-10)} > 2 × depth`);
  assert(mean <= 1.25 * depth, `mean ${mean}`);
  assertSamePages(pages, MerkleTree.build(sortedSet([...set, ...added])).put, "after");
});

Deno.test("MerkleTree.insert() drops the old levels when the root level shrinks", () => {
  // Ids are chosen so that level 0 has pages of exactly 131 items (an id
  // starting with four zero bytes closes a page of 131 or more), so level 1
  // has one node per 131 items and its cuts depend only on page hashes.
  const rand = prng(6);
  const id = (closes: boolean) => {
    const x = randomId(rand);
    x.fill(closes ? 0 : 0xff, 0, 4);
    return x;
  };
  const leafPages = 430;
  for (let attempt = 0; attempt < 50; attempt++) {
    const items: Item[] = [];
    for (let i = 0; i < leafPages * 131; i++) items.push({ ts: 1000 + i * 10, id: id(i % 131 === 130) });
    const ref = MerkleTree.build(items);
    const root = decodePage(ref.put.get(toHex(ref.root.hash))!);
    if (ref.root.depth !== 3 || root.size !== 2) continue;
    // Insert into the leaf page whose hash closes level 1's first page:
    // its new hash most likely no longer closes it.
    const cut = root.counts![0]!;
    for (let k = 0; k < 3; k++) {
      const { pages, store, apply } = mapStore(ref.put);
      const tree = new MerkleTree(store, ref.root);
      const item = { ts: items[cut - 2]!.ts + 1 + k, id: id(false) };
      apply(tree.insert([item]));
      if (tree.root().depth !== 2) continue;
      const after = items.slice();
      after.splice(cut - 1, 0, item);
      assertSameTree(tree, pages, MerkleTree.build(after), `attempt ${attempt}`);
      return;
    }
  }
  throw new Error("No attempt shrank the root level");
});

Deno.test("MerkleTree.build() rejects unsorted or invalid items", () => {
  const id = new Uint8Array(32);
  assertThrows(() => MerkleTree.build([{ ts: 2, id }, { ts: 1, id }]), RangeError);
  assertThrows(() => MerkleTree.build([{ ts: 1, id }, { ts: 1, id }]), RangeError);
  assertThrows(() => MerkleTree.build([{ ts: -1, id }]), RangeError);
  assertThrows(() => MerkleTree.build([{ ts: 1.5, id }]), RangeError);
  assertThrows(() => MerkleTree.build([{ ts: 1, id: new Uint8Array(31) }]), TypeError);
  assertThrows(() => new MerkleTree(mapStore().store, null).insert([{ ts: 2 ** 53, id }]), RangeError);
});

Deno.test("MerkleTree of the empty set has a zero root", () => {
  const tree = new MerkleTree(mapStore().store, null);
  assertEquals(tree.root(), { hash: new Uint8Array(32), count: 0, depth: 0 });
  assertEquals(MerkleTree.build([]).root, tree.root());
  assertEquals(tree.size(), 0);
  assertEquals(tree.findLowerBound({ ts: 0, id: new Uint8Array(0) }), 0);
  assertEquals(tree.prove({ ts: 0, id: new Uint8Array(32) }), null);
  assertEquals(tree.fsck([]), { ok: true });
  assertThrows(() => tree.getItem(0), RangeError);
});

Deno.test("MerkleTree.build() keeps leaves within 32..256 nodes, ~93 on average, and inner pages ~384", () => {
  const rand = prng(7);
  const set = sortedSet(randomItems(rand, 100_000, 1_600_000_000_000, 365 * 86_400_000));
  const { put } = MerkleTree.build(set);
  const leafSizes = [...put.values()].map(decodePage).filter((p) => p.level === 0).map((p) => p.size);
  // Only the last page of the level may be short.
  assert(leafSizes.filter((s) => s < LEAF_NODES_MIN).length <= 1);
  assert(leafSizes.every((s) => s <= LEAF_NODES_MAX));
  const mean = set.length / leafSizes.length;
  assert(mean > 88 && mean < 98, `mean leaf ${mean}`);
  // Level 1 holds one node per leaf: about 1,075 nodes, cut into pages of 128..512 (~384).
  const level1 = [...put.values()].map(decodePage).filter((p) => p.level === 1).map((p) => p.size);
  assert(level1.filter((s) => s < PAGE_NODES_MIN).length <= 1 && level1.every((s) => s <= PAGE_NODES_MAX));
  assertEquals(level1.reduce((a, b) => a + b, 0), leafSizes.length);
});

Deno.test("MerkleTree.fsck() is ok for a consistent tree and names the first tampered page", () => {
  const rand = prng(8);
  const set = sortedSet(randomItems(rand, 20_000));
  const ref = MerkleTree.build(set);
  const { pages, store } = mapStore(ref.put);
  const tree = new MerkleTree(store, ref.root);
  assertEquals(tree.fsck(set), { ok: true });

  // The leaf page holding item 10000.
  let page = decodePage(pages.get(toHex(ref.root.hash))!);
  let hex = toHex(ref.root.hash);
  let rank = 10_000;
  while (page.level > 0) {
    let j = 0;
    while (rank >= page.counts![j]!) rank -= page.counts![j++]!;
    hex = toHex(page.nodes.subarray(j * 32, j * 32 + 32));
    page = decodePage(pages.get(hex)!);
  }
  const good = pages.get(hex)!;

  // A flipped node byte: the page no longer matches its hash.
  const badNode = good.slice();
  badNode[4 + 32 * 7] = badNode[4 + 32 * 7]! ^ 1;
  pages.set(hex, badNode);
  let r = tree.fsck(set);
  assertEquals(r.ok, false);
  assert(r.firstDifference!.includes(hex) && r.firstDifference!.includes("does not match its hash"), r.firstDifference);

  // A changed ts inside the page (not hashed): found by comparing bytes.
  const ts = Float64Array.from(page.firstTs);
  ts[rank] = ts[rank]! + 1;
  if (rank + 1 < ts.length && ts[rank + 1]! < ts[rank]!) ts[rank + 1] = ts[rank]!;
  const badTs = encodePage(
    new Page({ level: 0, nodes: page.nodes, firstTs: ts, firstIds: null, counts: null, sums: null }),
  );
  pages.set(hex, badTs);
  r = tree.fsck(set);
  assertEquals(r.ok, false);
  assert(r.firstDifference!.startsWith("level 0 page") && r.firstDifference!.includes(hex), r.firstDifference);

  // A missing page.
  pages.delete(hex);
  r = tree.fsck(set);
  assert(r.firstDifference!.includes("missing"), r.firstDifference);

  // The stored tree is fine but the items differ.
  pages.set(hex, good);
  assertEquals(tree.fsck(set), { ok: true });
  r = tree.fsck(sortedSet([...set, ...randomItems(rand, 1)]));
  assertEquals(r.ok, false);
  assert(r.firstDifference!.startsWith("level 0"), r.firstDifference);
});

Deno.test("MerkleTree reads throw STORAGE_CORRUPTION for a wrong page", () => {
  const rand = prng(9);
  const set = sortedSet(randomItems(rand, 3000));
  const ref = MerkleTree.build(set);
  const { pages, store } = mapStore(ref.put);
  // Swap two leaf pages' bytes: each decodes but has the other's hash.
  const leaves = [...pages].filter(([, v]) => v[1] === 0);
  const [a, b] = [leaves[0]!, leaves[1]!];
  pages.set(a[0], b[1]);
  pages.set(b[0], a[1]);
  const tree = new MerkleTree(store, ref.root);
  const err = assertThrows(() => {
    for (let i = 0; i < set.length; i += 100) tree.getItem(i);
  }, XfError);
  assertEquals(err.code, "STORAGE_CORRUPTION");
  // A root that claims the wrong count.
  const liar = new MerkleTree(mapStore(ref.put).store, { ...ref.root, count: ref.root.count + 1 });
  assertEquals(assertThrows(() => liar.getItem(0), XfError).code, "STORAGE_CORRUPTION");
});
