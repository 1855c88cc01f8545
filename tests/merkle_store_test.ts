// GroupTrees (storage/merkle_store.ts): callers that ask for a group's tree while its pages are being read share one
// scan of the store (at 10 M events a scan takes seconds; before, every waiting request started its own), and a
// forget() during a scan keeps the tree it read out of the cache. A store of an older tree format is rebuilt by
// migrate(), and reading it before says so.
import { assert, assertEquals, assertRejects } from "@std/assert";
import { toHex } from "../core/bytes.ts";
import { XfError } from "../core/errors.ts";
import { decodeCbor, encodeCbor } from "../storage/cbor.ts";
import { merklePrefix, metaKey, prefixEnd, timeKey } from "../storage/keys.ts";
import { type KvOp, type KvRange, MemoryKv } from "../storage/kv.ts";
import { GroupTrees } from "../storage/merkle_store.ts";

/** A memory store that counts range scans and can hold each scan at its start until released. */
class CountingKv extends MemoryKv {
  scans = 0;
  gate: Promise<void> | null = null;
  override range(r: KvRange): AsyncIterable<[Uint8Array, Uint8Array]> {
    this.scans++;
    const inner = super.range(r);
    const gate = this.gate;
    return (async function* () {
      if (gate) await gate;
      yield* inner;
    })();
  }
}

async function filled(): Promise<{ kv: CountingKv; gid: string }> {
  const kv = new CountingKv();
  const group = new Uint8Array(32).fill(7);
  const events = Array.from({ length: 3000 }, (_, i) => ({
    group,
    ts: 1_000 + i,
    id: crypto.getRandomValues(new Uint8Array(32)),
  }));
  const trees = new GroupTrees(kv);
  const u = await trees.update(events, []);
  await kv.batch(u.ops);
  u.commit();
  return { kv, gid: toHex(group) };
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
  const group = new Uint8Array(32).fill(9);
  const gid = toHex(group);
  const events = Array.from({ length: 2500 }, (_, i) => ({
    group,
    ts: 5_000 + 3 * i,
    id: crypto.getRandomValues(new Uint8Array(32)),
  }));
  const trees = new GroupTrees(kv);
  const u = await trees.update(events, []);
  await kv.batch([
    ...u.ops,
    ...events.map((e) => ({ type: "put" as const, key: timeKey(group, e.ts, e.id), value: new Uint8Array(0) })),
  ]);
  u.commit();
  const want = await trees.root(gid);
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
