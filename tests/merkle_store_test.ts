// GroupTrees (storage/merkle_store.ts): callers that ask for a group's tree while its pages are being read share one
// scan of the store (at 10 M events a scan takes seconds; before, every waiting request started its own), and a
// forget() during a scan keeps the tree it read out of the cache. A store of an older tree format is rebuilt by
// migrate(), and reading it before says so.
import { assert, assertEquals, assertRejects } from "@std/assert";
import { toHex } from "../core/bytes.ts";
import { XfError } from "../core/errors.ts";
import { type CborValue, decodeCbor, encodeCbor } from "../storage/cbor.ts";
import { journalKey, journalPrefix, KS, merklePrefix, metaKey, prefixEnd, timeKey } from "../storage/keys.ts";
import { compareItems, MerkleTree } from "../merkle/mod.ts";
import { type KvOp, type KvRange, MemoryKv } from "../storage/kv.ts";
import { GroupTrees, MERKLE_FORMAT } from "../storage/merkle_store.ts";

/** A memory store that counts scans of the Merkle pages and can hold each scan at its start until released. */
class CountingKv extends MemoryKv {
  scans = 0;
  gate: Promise<void> | null = null;
  override range(r: KvRange): AsyncIterable<[Uint8Array, Uint8Array]> {
    if (r.gte?.[0] === KS.merkle) this.scans++;
    const inner = super.range(r);
    const gate = this.gate;
    return (async function* () {
      if (gate) await gate;
      yield* inner;
    })();
  }
}

/** A group (id bytes all `fill`) of `n` events, ts from `ts0` and `step` apart, indexed by GroupTrees in `kv` with its time index. */
async function storedGroup(kv: MemoryKv, fill: number, n: number, ts0: number, step: number) {
  const group = new Uint8Array(32).fill(fill);
  const gid = toHex(group);
  const events = Array.from({ length: n }, (_, i) => ({
    group,
    ts: ts0 + step * i,
    id: crypto.getRandomValues(new Uint8Array(32)),
  }));
  const trees = new GroupTrees(kv);
  const u = await trees.update(events, []);
  await kv.batch([
    ...u.ops,
    ...events.map((e) => ({ type: "put" as const, key: timeKey(group, e.ts, e.id), value: new Uint8Array(0) })),
  ]);
  u.commit();
  return { group, gid, want: await trees.root(gid) };
}

async function filled(): Promise<{ kv: CountingKv; gid: string }> {
  const kv = new CountingKv();
  return { kv, gid: (await storedGroup(kv, 7, 3000, 1_000, 1)).gid };
}

Deno.test("GroupTrees: concurrent first uses of a group share one scan of its pages", async () => {
  const { kv, gid } = await filled();
  let open!: () => void;
  kv.gate = new Promise((r) => open = r);
  kv.scans = 0;
  const trees = new GroupTrees(kv);
  const asks = Array.from({ length: 5 }, () => trees.root(gid));
  open();
  const roots = await Promise.all(asks);
  assertEquals(kv.scans, 1, "five callers, one scan");
  assert(roots.every((r) => r.root === roots[0]!.root && r.count === 3000));
  await trees.root(gid);
  assertEquals(kv.scans, 1, "loaded once, then cached");
});

Deno.test("GroupTrees: a tree read while forget() ran serves its callers but is not cached", async () => {
  const { kv, gid } = await filled();
  let open!: () => void;
  kv.gate = new Promise((r) => open = r);
  kv.scans = 0;
  const trees = new GroupTrees(kv);
  const first = trees.root(gid);
  trees.forget();
  open();
  assertEquals((await first).count, 3000);
  kv.gate = null;
  await trees.root(gid);
  assertEquals(kv.scans, 2, "the tree read across forget() was read again");
});

Deno.test("GroupTrees.migrate() rebuilds a format-1 tree from the time index; reading one before says why", async () => {
  const kv = new MemoryKv();
  const { group, gid, want } = await storedGroup(kv, 9, 2500, 5_000, 3);
  // Make it look like a store written before format 2: a three-field root record and version-1 pages.
  const rootKey = metaKey(`root:${gid}`);
  const [hash, count, depth] = decodeCbor((await kv.get(rootKey))!) as [Uint8Array, number, number];
  const ops: KvOp[] = [{ type: "put", key: rootKey, value: encodeCbor([hash, count, depth]) }];
  const mp = merklePrefix(group);
  for await (const [k, v] of kv.range({ gte: mp, lt: prefixEnd(mp) })) {
    const old = v.slice();
    old[0] = 1;
    ops.push({ type: "put", key: k.slice(), value: old });
  }
  await kv.batch(ops);

  const err = await assertRejects(() => new GroupTrees(kv).root(gid), XfError);
  assertEquals(err.code, "STORAGE_CORRUPTION");
  assert(err.message.includes("format 1"), err.message);
  // A damaged root record of another group does not stop the migration (reading that group reports it).
  await kv.batch([{ type: "put", key: metaKey(`root:${"ee".repeat(32)}`), value: Uint8Array.of(0xff, 0x00) }]);
  const fresh = new GroupTrees(kv);
  assertEquals(await fresh.migrate(), [gid]);
  assertEquals(await fresh.migrate(), [], "once rebuilt, nothing is left to migrate");
  assertEquals(await fresh.root(gid), want);
  for await (const [, v] of kv.range({ gte: mp, lt: prefixEnd(mp) })) assertEquals(v[0], 2);
  // The tree checks out against its time index (the events themselves are not stored in this test).
  const report = await fresh.fsck(gid);
  assertEquals([report.firstDifference, report.problems, report.pages], [undefined, [], report.pages]);
});

/** The pages of the Merkle keyspace and the journal records of `group` as stored. */
async function stored(kv: MemoryKv, group: Uint8Array): Promise<{ pages: Map<string, string>; journal: number }> {
  const pages = new Map<string, string>();
  const mp = merklePrefix(group);
  for await (const [k, v] of kv.range({ gte: mp, lt: prefixEnd(mp) })) pages.set(toHex(k.subarray(33)), toHex(v));
  let journal = 0;
  const jp = journalPrefix(group);
  for await (const _ of kv.range({ gte: jp, lt: prefixEnd(jp) })) journal++;
  return { pages, journal };
}

Deno.test("GroupTrees: writes append to the journal, a load replays it, and a checkpoint stores exactly the tree's pages", async () => {
  const kv = new MemoryKv();
  const group = new Uint8Array(32).fill(3);
  const gid = toHex(group);
  const trees = new GroupTrees(kv, { journalItemsMax: 5_000 });
  let live: { group: Uint8Array; ts: number; id: Uint8Array }[] = [];
  const rand = (n: number) => Math.floor(Math.random() * n);
  const write = async (add: typeof live, remove: typeof live) => {
    const u = await trees.update(add, remove);
    await kv.batch(u.ops);
    u.commit();
    const gone = new Set(remove.map((e) => toHex(e.id)));
    live = [...live.filter((e) => !gone.has(toHex(e.id))), ...add];
  };
  const fresh = (n: number) =>
    Array.from(
      { length: n },
      () => ({ group, ts: 1_000 + rand(100_000), id: crypto.getRandomValues(new Uint8Array(32)) }),
    );
  const built = () => MerkleTree.build(live.map((e) => ({ ts: e.ts, id: e.id })).sort(compareItems));
  let checkpoints = 0;
  for (let b = 0; b < 30; b++) {
    const victims = live.length > 0 ? Array.from({ length: 60 }, () => live[rand(live.length)]!) : [];
    await write(fresh(400), [...new Map(victims.map((v) => [toHex(v.id), v])).values()]);
    const want = built();
    const s = await stored(kv, group);
    if (s.journal === 0) {
      // Checkpointed: the stored pages are exactly the pages of the tree, nothing more.
      checkpoints++;
      assertEquals([...s.pages.keys()].sort(), [...want.put.keys()].sort());
      for (const [h, bytes] of want.put) assertEquals(s.pages.get(h), toHex(bytes));
    }
    // A new reader replays the journal over the stored pages and lands on the same root.
    const r = await new GroupTrees(kv).root(gid);
    assertEquals([r.root, r.count], [toHex(want.root.hash), live.length]);
    const report = await new GroupTrees(kv).fsck(gid);
    assertEquals(report.problems, []);
    assertEquals(report.journalItems > 0, s.journal > 0);
  }
  assert(checkpoints >= 2, `${checkpoints} checkpoints in 30 writes of 460 items at most 5,000 in the journal`);
  // An item removed by one record and added back by a later one ends present after a replay (the last record
  // naming an item decides), and one added then removed ends absent.
  const back = live[0]!;
  await write([], [back]);
  await write([back], []);
  const gone = fresh(1);
  await write(gone, []);
  await write([], gone);
  const again = await new GroupTrees(kv).root(gid);
  assertEquals([again.root, again.count], [toHex(built().root.hash), live.length]);
  // checkpointAll() stores the rest and empties the journal.
  await write(fresh(10), []);
  assert((await stored(kv, group)).journal > 0);
  const c = trees.checkpointAll();
  await kv.batch(c.ops);
  c.commit();
  const s = await stored(kv, group);
  assertEquals(s.journal, 0);
  assertEquals([...s.pages.keys()].sort(), [...built().put.keys()].sort());
  assertEquals((await new GroupTrees(kv).root(gid)).count, live.length);
});

Deno.test("GroupTrees: a missing or damaged journal record fails the load with STORAGE_CORRUPTION and fsck names it", async () => {
  for (const damage of ["missing", "damaged"] as const) {
    const kv = new MemoryKv();
    const group = new Uint8Array(32).fill(4);
    const gid = toHex(group);
    const trees = new GroupTrees(kv);
    for (let b = 0; b < 3; b++) {
      const events = Array.from({ length: 50 }, (_, i) => ({
        group,
        ts: 10 * b + i,
        id: crypto.getRandomValues(new Uint8Array(32)),
      }));
      const u = await trees.update(events, []);
      await kv.batch(u.ops);
      u.commit();
    }
    const key = journalKey(group, 1);
    await kv.batch([
      damage === "missing" ? { type: "del", key } : { type: "put", key, value: (await kv.get(key))!.subarray(0, 50) },
    ]);
    const err = await assertRejects(() => new GroupTrees(kv).root(gid), XfError);
    assertEquals(err.code, "STORAGE_CORRUPTION");
    assert(/journal record/.test(err.message), err.message);
    const report = await new GroupTrees(kv).fsck(gid);
    assert(!report.ok);
    assert(report.problems.some((p) => /journal/.test(p)), report.problems.join("; "));
  }
});

Deno.test("GroupTrees.update(): a group that cannot be read fails the whole update and no other tree stays moved", async () => {
  const kv = new CountingKv();
  const a = new Uint8Array(32).fill(1), b = new Uint8Array(32).fill(2);
  const ev = (group: Uint8Array, ts: number) => ({ group, ts, id: crypto.getRandomValues(new Uint8Array(32)) });
  const trees = new GroupTrees(kv);
  const first = await trees.update([ev(a, 1), ev(b, 2)], []);
  await kv.batch(first.ops);
  first.commit();
  const before = await trees.root(toHex(a));
  // A fresh reader: group b's pages cannot be read, after group a's tree took the new event.
  const reader = new GroupTrees(kv);
  await reader.root(toHex(a));
  const original = kv.range.bind(kv);
  kv.range = (r) => {
    if (r.gte?.[0] === KS.merkle && r.gte[1] === 2) throw new XfError("STORAGE_ERROR", "simulated read error");
    return original(r);
  };
  await assertRejects(() => reader.update([ev(a, 3), ev(b, 4)], []), XfError);
  kv.range = original;
  assertEquals(await reader.root(toHex(a)), before, "group a reloads from the store, without the event never written");
});

Deno.test("GroupTrees.migrate() rebuilds a format-3 tree (leaves of the older rule) as format 4", async () => {
  const kv = new MemoryKv();
  const { gid, want } = await storedGroup(kv, 7, 1200, 9_000, 2);
  // The root record of a node of format 3 (its fourth field): its leaves are not the ones this node makes.
  const rootKey = metaKey(`root:${gid}`);
  const record = decodeCbor((await kv.get(rootKey))!) as CborValue[];
  assertEquals(record[3], MERKLE_FORMAT);
  record[3] = 3;
  await kv.batch([{ type: "put", key: rootKey, value: encodeCbor(record) }]);
  const err = await assertRejects(() => new GroupTrees(kv).root(gid), XfError);
  assert(err.message.includes("format 3"), err.message);
  const fresh = new GroupTrees(kv);
  assertEquals(await fresh.migrate(), [gid]);
  assertEquals((decodeCbor((await kv.get(rootKey))!) as unknown[])[3], MERKLE_FORMAT);
  assertEquals(await fresh.root(gid), want);
});
