// GroupTrees (storage/merkle_store.ts): callers that ask for a group's tree while its pages are being read share one
// scan of the store (at 10 M events a scan takes seconds; before, every waiting request started its own), and a
// forget() during a scan keeps the tree it read out of the cache.
import { assert, assertEquals } from "@std/assert";
import { toHex } from "../core/bytes.ts";
import { type KvRange, MemoryKv } from "../storage/kv.ts";
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
