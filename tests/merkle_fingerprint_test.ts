import { assert, assertEquals, assertThrows } from "@std/assert";
import { sha256 } from "@noble/hashes/sha2";
import { nip77 } from "npm:nostr-tools@2.25.2";
import {
  compareItems,
  fingerprintOf,
  type Item,
  MerkleTree,
  type NegentropyStorage,
  negentropyVarint,
  Reconciler,
  VectorStorage,
} from "../merkle/mod.ts";
import { mapStore, prng, randomItems, sortedSet, toHex } from "../merkle/_testing.ts";

const { Negentropy, NegentropyStorageVector } = nip77;
type Vector = InstanceType<typeof NegentropyStorageVector>;

/** The tree as nostr-tools' negentropy storage (items as `{ timestamp, id }`), for the interop test. */
function nostrView(tree: MerkleTree): Vector {
  const check = (begin: number, end: number) => {
    if (begin > end || end > tree.size()) throw new RangeError(`Cannot read negentropy range '${begin}..${end}'`);
  };
  const view = {
    size: () => tree.size(),
    getItem: (i: number) => ({ timestamp: tree.getItem(i).ts, id: tree.getItem(i).id }),
    iterate: (begin: number, end: number, cb: (item: { timestamp: number; id: Uint8Array }, i: number) => unknown) => {
      check(begin, end);
      tree.iterate(begin, end, ({ ts, id }, i) => Boolean(cb({ timestamp: ts, id }, i)));
    },
    findLowerBound: (begin: number, end: number, bound: { timestamp: number; id: Uint8Array }) => {
      check(begin, end);
      return Math.min(Math.max(tree.findLowerBound({ ts: bound.timestamp, id: bound.id }), begin), end);
    },
    fingerprint: (begin: number, end: number) => tree.fingerprint(begin, end),
  };
  return view as unknown as Vector;
}

function setup(n: number, seed: number) {
  const rand = prng(seed);
  // Few distinct ts values, so many items share a ts and order by id.
  const items = sortedSet(randomItems(rand, n, 1_700_000_000_000, Math.max(1, n / 8)));
  const ref = MerkleTree.build(items);
  const tree = new MerkleTree(mapStore(ref.put).store, ref.root, { cachePages: 32 });
  const vector = new NegentropyStorageVector();
  for (const it of items) vector.insert(it.ts, toHex(it.id));
  vector.seal();
  return { rand, items, tree, vector };
}

/** The fingerprint by definition: BigInt sum of little-endian ids mod 2^256, then SHA-256. */
function bruteFingerprint(items: Item[], begin: number, end: number): Uint8Array {
  let sum = 0n;
  for (let i = begin; i < end; i++) {
    let v = 0n;
    for (let b = 31; b >= 0; b--) v = (v << 8n) | BigInt(items[i]!.id[b]!);
    sum = (sum + v) % 2n ** 256n;
  }
  const bytes = new Uint8Array(32);
  for (let b = 0; b < 32; b++) bytes[b] = Number((sum >> BigInt(8 * b)) & 0xffn);
  const varint = negentropyVarint(end - begin);
  const input = new Uint8Array(32 + varint.length);
  input.set(bytes);
  input.set(varint, 32);
  return sha256(input).subarray(0, 16);
}

Deno.test("MerkleTree.fingerprint() equals brute force and nostr-tools' NegentropyStorageVector", () => {
  const { rand, items, tree, vector } = setup(30_000, 11);
  const n = items.length;
  const ranges: Array<[number, number]> = [[0, 0], [0, n], [n, n], [0, 1], [n - 1, n], [1, n - 1]];
  for (let k = 0; k < 150; k++) {
    const a = rand.int(n + 1);
    const b = rand.int(n + 1);
    ranges.push([Math.min(a, b), Math.max(a, b)]);
  }
  for (let k = 0; k < 50; k++) {
    const a = rand.int(n);
    ranges.push([a, Math.min(n, a + rand.int(700))]);
  }
  for (const [a, b] of ranges) {
    const fp = toHex(tree.fingerprint(a, b));
    assertEquals(fp, toHex(vector.fingerprint(a, b)), `nostr-tools ${a}..${b}`);
    if (b - a <= 2000) assertEquals(fp, toHex(bruteFingerprint(items, a, b)), `brute ${a}..${b}`);
  }
  assertEquals(toHex(tree.fingerprint(0, 0)), toHex(fingerprintOf(new Uint8Array(32), 0)));
  assertThrows(() => tree.fingerprint(5, 4), RangeError);
  assertThrows(() => tree.fingerprint(0, n + 1), RangeError);
});

Deno.test("negentropyVarint() matches negentropy's varint for large counts", () => {
  assertEquals([...negentropyVarint(0)], [0]);
  assertEquals([...negentropyVarint(127)], [127]);
  assertEquals([...negentropyVarint(128)], [0x81, 0]);
  assertEquals([...negentropyVarint(1_000_000)], [0xbd, 0x84, 0x40]);
});

Deno.test("MerkleTree.findLowerBound(), getItem(), iterate() and has() agree with the sorted items", () => {
  const { rand, items, tree, vector } = setup(20_000, 12);
  const n = items.length;
  const lowerBound = (bound: Item) => {
    let lo = 0;
    let hi = n;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (compareItems(items[mid]!, bound) < 0) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  };
  const bounds: Item[] = [
    { ts: 0, id: new Uint8Array(0) },
    { ts: Number.MAX_VALUE, id: new Uint8Array(0) },
    { ts: Infinity, id: new Uint8Array(0) },
  ];
  for (let k = 0; k < 300; k++) {
    const it = items[rand.int(n)]!;
    bounds.push(it, { ts: it.ts, id: it.id.subarray(0, rand.int(33)) }, {
      ts: it.ts + rand.int(3) - 1,
      id: it.id.subarray(0, 1),
    });
  }
  for (const b of bounds) {
    const want = lowerBound(b);
    assertEquals(tree.findLowerBound(b), want);
    const lo = rand.int(n + 1);
    const hi = lo + rand.int(n + 1 - lo);
    assertEquals(tree.findLowerBound(lo, hi, b), vector.findLowerBound(lo, hi, { timestamp: b.ts, id: b.id }));
  }
  for (let k = 0; k < 300; k++) {
    const i = rand.int(n);
    assertEquals(tree.getItem(i), items[i]);
    assert(tree.has(items[i]!));
    const other = { ts: items[i]!.ts, id: items[i]!.id.slice() };
    other.id[31] = other.id[31]! ^ 1;
    assertEquals(tree.has(other), lowerBound(other) < n && compareItems(items[lowerBound(other)]!, other) === 0);
  }
  const seen: Item[] = [];
  tree.iterate(0, n, (item, i) => {
    assertEquals(i, seen.length);
    seen.push(item);
  });
  assertEquals(seen, items);
  let calls = 0;
  tree.iterate(100, 2000, () => ++calls < 5 ? true : false);
  assertEquals(calls, 5);
});

Deno.test("nostr-tools Negentropy reconciles a Merkle tree against a vector", () => {
  // nostr-tools encodes varints with 32-bit shifts, so its reconciler only
  // works for ts below 2^32 (seconds, as in Nostr); ms timestamps break it.
  const rand = prng(13);
  const ts0 = 1_700_000_000;
  const common = randomItems(rand, 20_000, ts0, 86_400);
  const onlyTree = randomItems(rand, 300, ts0, 86_400);
  const onlyVector = randomItems(rand, 250, ts0, 86_400);
  const treeItems = sortedSet([...common, ...onlyTree]);
  const ref = MerkleTree.build(treeItems);
  const tree = new MerkleTree(mapStore(ref.put).store, ref.root);
  const vector = new NegentropyStorageVector();
  for (const it of [...common, ...onlyVector]) vector.insert(it.ts, toHex(it.id));
  vector.seal();

  const client = new Negentropy(nostrView(tree), 50_000);
  const server = new Negentropy(vector, 50_000);
  const have: string[] = [];
  const need: string[] = [];
  let msg: string | null = client.initiate();
  for (let round = 0; msg !== null && round < 20; round++) {
    // nostr-tools reports an id-list difference on whichever side receives it.
    const reply = server.reconcile(msg, (id) => need.push(id), (id) => have.push(id));
    msg = reply === null ? null : client.reconcile(reply, (id) => have.push(id), (id) => need.push(id));
  }
  assertEquals(msg, null);
  assertEquals(have.sort(), onlyTree.map((i) => toHex(i.id)).sort());
  assertEquals(need.sort(), onlyVector.map((i) => toHex(i.id)).sort());
});

Deno.test("Our Reconciler runs over a MerkleTree (a NegentropyStorage) against a VectorStorage", () => {
  const rand = prng(17);
  const ts0 = 1_700_000_000_000;
  const common = randomItems(rand, 5_000, ts0, 86_400_000);
  const onlyTree = randomItems(rand, 120, ts0, 86_400_000);
  const onlyVector = randomItems(rand, 90, ts0, 86_400_000);
  const ref = MerkleTree.build(sortedSet([...common, ...onlyTree]));
  const tree: NegentropyStorage = new MerkleTree(mapStore(ref.put).store, ref.root);
  const vector = new VectorStorage();
  for (const it of [...common, ...onlyVector]) vector.insert(it.ts, it.id);
  vector.seal();
  // The server answers id lists with its own ids, so the client learns the whole difference.
  const client = new Reconciler(tree), server = new Reconciler(vector, { idListReply: true });
  const have: string[] = [], need: string[] = [];
  let msg: Uint8Array | null = client.initiate();
  for (let round = 0; msg !== null && round < 20; round++) {
    const reply = server.reconcile(msg);
    if (reply.output === null) break;
    const r = client.reconcile(reply.output);
    have.push(...r.have.map(toHex));
    need.push(...r.need.map(toHex));
    msg = r.output;
  }
  assertEquals(msg, null);
  assertEquals(have.sort(), onlyTree.map((i) => toHex(i.id)).sort());
  assertEquals(need.sort(), onlyVector.map((i) => toHex(i.id)).sort());
});

Deno.test("sha256Short() equals SHA-256 for every length from 0 to 55 bytes", async () => {
  const { sha256Short } = await import("../merkle/_sha256.ts");
  const { sha256 } = await import("@noble/hashes/sha2");
  for (let n = 0; n <= 55; n++) {
    const input = crypto.getRandomValues(new Uint8Array(n));
    const a = Array.from(sha256Short(input)).join(",");
    const b = Array.from(sha256(input)).join(",");
    if (a !== b) throw new Error(`sha256Short differs at length ${n}`);
  }
});
