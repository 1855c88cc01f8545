import { assert, assertEquals } from "@std/assert";
import { type Item, MerkleTree, siblingCount, verifyProof } from "../merkle/mod.ts";
import { mapStore, prng, randomId, randomItems, sortedSet } from "../merkle/_testing.ts";

Deno.test("MerkleTree.prove() proofs verify for random items and fail when tampered", () => {
  const rand = prng(21);
  const items = sortedSet(randomItems(rand, 20_000));
  const ref = MerkleTree.build(items);
  const tree = new MerkleTree(mapStore(ref.put).store, ref.root, { cachePages: 32 });
  const root = ref.root.hash;
  for (let k = 0; k < 200; k++) {
    const item = items[rand.int(items.length)]!;
    const proof = tree.prove(item);
    if (proof === null) throw new Error("No proof for a stored item");
    assert(verifyProof(proof, item.id, root));
    assert(!verifyProof(proof, items[(items.indexOf(item) + 1) % items.length]!.id, root), "another id");
    assert(!verifyProof(proof, item.id, randomId(rand)), "another root");
    const bad = proof.slice();
    const at = rand.int(bad.length);
    bad[at] = bad[at]! ^ (1 << rand.int(8));
    assert(!verifyProof(bad, item.id, root), `flipped byte ${at}`);
  }
});

Deno.test("verifyProof() rejects every single-byte change, truncation and extension", () => {
  const rand = prng(22);
  const items = sortedSet(randomItems(rand, 5000));
  const ref = MerkleTree.build(items);
  const tree = new MerkleTree(mapStore(ref.put).store, ref.root);
  const item = items[1234]!;
  const proof = tree.prove(item)!;
  for (let i = 0; i < proof.length; i++) {
    const bad = proof.slice();
    bad[i] = bad[i]! ^ 0x01;
    assert(!verifyProof(bad, item.id, ref.root.hash), `byte ${i}`);
  }
  assert(!verifyProof(proof.subarray(0, proof.length - 1), item.id, ref.root.hash));
  assert(!verifyProof(Uint8Array.of(...proof, 0), item.id, ref.root.hash));
  assert(!verifyProof(new Uint8Array(0), item.id, ref.root.hash));
  assert(!verifyProof(proof, item.id.subarray(0, 31), ref.root.hash));
});

Deno.test("MerkleTree.prove() returns null for an item the tree does not hold", () => {
  const rand = prng(23);
  const items = sortedSet(randomItems(rand, 3000));
  const ref = MerkleTree.build(items);
  const tree = new MerkleTree(mapStore(ref.put).store, ref.root);
  assertEquals(tree.prove(randomItems(rand, 1)[0]!), null);
  assertEquals(tree.prove({ ts: items[7]!.ts + 1, id: items[7]!.id }), null);
  assertEquals(tree.prove({ ts: 0, id: items[0]!.id }), null);
});

Deno.test("MerkleTree.prove() proofs of a single-page tree verify", () => {
  const rand = prng(24);
  for (const n of [1, 2, 3, 5, 100]) {
    const items = sortedSet(randomItems(rand, n));
    const ref = MerkleTree.build(items);
    const tree = new MerkleTree(mapStore(ref.put).store, ref.root);
    for (const item of items) assert(verifyProof(tree.prove(item)!, item.id, ref.root.hash), `n ${n}`);
  }
});

Deno.test("siblingCount() counts the binary path of promoted nodes", () => {
  assertEquals(siblingCount(0, 1), 0);
  assertEquals(siblingCount(4, 5), 1); // promoted twice, then paired
  assertEquals(siblingCount(0, 512), 9);
  assertEquals(siblingCount(383, 384), 8);
  assertEquals(siblingCount(0, 384), 9);
});

Deno.test("MerkleTree.prove() proofs at 1,000,000 items are at most 1 KiB", () => {
  const rand = prng(25);
  const n = 1_000_000;
  const items: Item[] = Array.from({ length: n }, (_, i) => ({ ts: 1_600_000_000_000 + i * 31, id: randomId(rand) }));
  const ref = MerkleTree.build(items);
  assertEquals(ref.root.depth, 3);
  const tree = new MerkleTree(mapStore(ref.put).store, ref.root);
  let max = 0;
  for (let k = 0; k < 50; k++) {
    const item = items[rand.int(n)]!;
    const proof = tree.prove(item)!;
    assert(verifyProof(proof, item.id, ref.root.hash));
    max = Math.max(max, proof.length);
  }
  assert(max <= 1024, `proof of ${max} bytes`);
});
