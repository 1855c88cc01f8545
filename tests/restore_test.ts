// Restoring from peers: a node whose store lost or damaged events of a group it syncs drops them (their ids stay
// in its Merkle tree) and asks its peers for them by id; a peer's copy is verifiable (its id is its SHA-256).
import { assert, assertEquals } from "@std/assert";
import { makeEvents, testGroup, until } from "./_helpers.ts";
import { toHex as hexOf } from "../core/bytes.ts";
import { openNode, type XfNode } from "../node.ts";
import { openRocks } from "../storage/kv_rocks.ts";
import { eventKey } from "../storage/keys.ts";
import { serve } from "../net/server.ts";
import type { StoredEvent } from "../storage/event.ts";
import { writeDurableCheckpoint } from "../storage/wal_retention.ts";

const TEST = { sanitizeOps: false, sanitizeResources: false } as const;

/** Two nodes holding the same group; `b`'s store then loses one event and has another's bytes changed. */
async function setup() {
  const dirA = await Deno.makeTempDir({ prefix: "xf-restore-a-" });
  const dirB = await Deno.makeTempDir({ prefix: "xf-restore-b-" });
  const g = await testGroup("restore");
  const evs = await makeEvents(g, 20);
  const a = await openNode({ dataDir: dirA, workers: false });
  const served = await serve(a, { host: "127.0.0.1", port: 0 });
  let b = await openNode({ dataDir: dirB, workers: false });
  for (const n of [a, b]) await n.publish([g.manifest, ...evs]);
  await b.close();
  const [changed, lost] = [evs[5]!, evs[12]!];
  const kv = await openRocks(`${dirB}/db`);
  try {
    const bad = changed.bytes.slice();
    bad[bad.length - 3] = bad[bad.length - 3]! ^ 0x20;
    await kv.batch([{ type: "put", key: eventKey(changed.id), value: bad }, { type: "del", key: eventKey(lost.id) }], {
      sync: true,
    });
  } finally {
    await kv.close();
  }
  // The WAL had been retired (what it held is in RocksDB's tables): it cannot repair the damage, only peers can.
  for (const e of Deno.readDirSync(`${dirB}/wal`)) {
    if (e.name.endsWith(".wal")) Deno.removeSync(`${dirB}/wal/${e.name}`);
  }
  await writeDurableCheckpoint(`${dirB}/wal`, BigInt(evs.length + 1));
  b = await openNode({ dataDir: dirB, workers: false });
  assert(/Replayed 0 records/.test(b.pipeline.recovery), b.pipeline.recovery);
  return {
    a,
    b,
    gid: hexOf(g.gid),
    evs,
    changed,
    lost,
    url: served.url.replace(/^http/, "ws"),
    async done() {
      b.sync.close();
      a.sync.close();
      await served.shutdown();
      await b.close();
      await a.close();
      for (const d of [dirA, dirB]) await Deno.remove(d, { recursive: true }).catch(() => {});
    },
  };
}

async function intact(node: XfNode, evs: StoredEvent[]): Promise<boolean> {
  for (const e of evs) {
    const got = await node.get(hexOf(e.id));
    if (!got || hexOf(got) !== hexOf(e.bytes)) return false;
  }
  return true;
}

Deno.test({
  ...TEST,
  name: "Reconciliation alone cannot see a damaged event; restore() asks the open session's peer for it by id",
  async fn() {
    const t = await setup();
    try {
      const s = await t.b.sync.connect(t.url, [t.gid]);
      await t.b.sync.whenSynced(t.gid);
      // Same Merkle root on both: nothing to reconcile, the damage stays.
      assertEquals((await t.b.merkle(t.gid))!.root, (await t.a.merkle(t.gid))!.root);
      assertEquals(await t.b.get(hexOf(t.lost.id)), null);
      assert(!(await intact(t.b, [t.changed])), "the changed event reads back intact before any restore");
      const r = await t.b.restore(t.gid);
      assertEquals(r, { damaged: 2, asked: 2 });
      await until(() => intact(t.b, t.evs), 10_000);
      assert((await t.b.fsck(t.gid))!.ok);
      assertEquals(t.b.restoring.size, 0);
      assertEquals((await t.b.merkle(t.gid))!.count, t.evs.length + 1);
      s.close();
    } finally {
      await t.done();
    }
  },
});

Deno.test({
  ...TEST,
  name: "Events restore() could not get yet are asked for when a session next subscribes to the group",
  async fn() {
    const t = await setup();
    try {
      assertEquals(await t.b.restore(t.gid), { damaged: 2, asked: 2 });
      // The damaged bytes are no longer served meanwhile.
      assertEquals(await t.b.get(hexOf(t.changed.id)), null);
      assertEquals(t.b.restoring.get(t.gid)?.size, 2);
      const s = await t.b.sync.connect(t.url, [t.gid]);
      await until(() => intact(t.b, t.evs), 10_000);
      assert((await t.b.fsck(t.gid))!.ok);
      assertEquals(t.b.restoring.size, 0);
      s.close();
    } finally {
      await t.done();
    }
  },
});
