// Disk space comes back (issue 12): the index's whole-store compaction drops deleted values even when a read was open
// across the deletes, and rewrites what an earlier compaction kept in the bottommost level.
import { assert, assertEquals } from "@std/assert";
import { toHex } from "../core/bytes.ts";
import { openRocks } from "../storage/kv_rocks.ts";
import type { Kv } from "../storage/kv.ts";
import { COMPACT_HIGH, COMPACT_LOW, eventKey } from "../storage/keys.ts";
import { KIND_TOMBSTONE, signEvent } from "../storage/event.ts";
import { encodeTombstone } from "../storage/deletion.ts";
import { TOMBSTONE_TARGETS_MAX } from "../core/limits.ts";
import { makeEvents, tempNode, testGroup, until } from "./_helpers.ts";

/** Bytes of every file in a RocksDB directory, read at once (no await between listing and stat). */
function dirBytes(dir: string): number {
  let n = 0;
  for (const e of Deno.readDirSync(dir)) {
    try {
      n += Deno.statSync(`${dir}/${e.name}`).size;
    } catch { /* deleted meanwhile */ }
  }
  return n;
}

const whole = { whole: true, waitReadsMs: 30_000 };
const delay = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A store of `n` event-like records (random 32-byte ids, 200 random bytes), compacted; answers the deleted tenth. */
async function filled(kv: Kv, n: number): Promise<Uint8Array[]> {
  const ids: Uint8Array[] = [];
  for (let i = 0; i < n; i += 1000) {
    const ops = [];
    for (let j = i; j < Math.min(n, i + 1000); j++) {
      const id = crypto.getRandomValues(new Uint8Array(32));
      ids.push(id);
      ops.push({ type: "put" as const, key: eventKey(id), value: crypto.getRandomValues(new Uint8Array(200)) });
    }
    await kv.batch(ops);
  }
  await kv.compact(COMPACT_LOW, COMPACT_HIGH, whole);
  return ids.filter((_, i) => i % 10 === 3);
}

async function deleteAll(kv: Kv, ids: Uint8Array[]): Promise<void> {
  for (let i = 0; i < ids.length; i += 500) {
    await kv.batch(ids.slice(i, i + 500).map((id) => ({ type: "del" as const, key: eventKey(id) })));
  }
}

/** 20,000 records, a read opened (its snapshot still sees them), then a tenth deleted under it. */
async function deleteUnderARead(kv: Kv, dir: string) {
  const gone = await filled(kv, 20_000);
  const before = dirBytes(dir);
  // A read open before the deletes (a slow query, a filter build): its snapshot still sees the deleted values.
  const it = kv.range({})[Symbol.asyncIterator]();
  assert(!(await it.next()).done);
  await deleteAll(kv, gone);
  return { gone, before, it };
}

Deno.test("A whole compaction waits for a read open across the deletes; the deleted values' bytes come back", async () => {
  const dir = await Deno.makeTempDir({ prefix: "xf-compact-" });
  const kv = await openRocks(dir);
  try {
    const { gone, before, it } = await deleteUnderARead(kv, dir);
    let atDone = -1;
    const c = kv.compact(COMPACT_LOW, COMPACT_HIGH, whole).then(() => void (atDone = dirBytes(dir)));
    // The read goes on a while (a compaction that did not wait is over by then), then ends.
    await Promise.race([c, delay(2000)]);
    await it.return!();
    await c;
    // A tenth of the 20,000 records deleted: well below what was there (a compaction run under the read's snapshot
    // keeps every deleted value beside its tombstone: more bytes than before).
    assert(atDone < before * 0.95, `bytes ${before} before, ${atDone} after the compaction`);
    assertEquals(await kv.get(eventKey(gone[0]!)), undefined);
  } finally {
    await kv.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("A whole compaction rewrites the bottommost level: what an earlier compaction kept for a read goes", async () => {
  const dir = await Deno.makeTempDir({ prefix: "xf-compact-" });
  let kv = await openRocks(dir);
  try {
    const { before, it } = await deleteUnderARead(kv, dir);
    // This one does not wait for the read: it keeps the deleted values (in the bottommost level, with tombstones).
    await kv.compact(COMPACT_LOW, COMPACT_HIGH, { whole: true, waitReadsMs: 0 });
    const pinned = dirBytes(dir);
    await it.return!();
    assert(pinned > before, `bytes ${before} before, ${pinned} after a compaction under a snapshot`);
    // Closed and opened again (no snapshot, and nothing RocksDB marked), the next whole compaction drops them.
    await kv.close();
    kv = await openRocks(dir);
    await kv.compact(COMPACT_LOW, COMPACT_HIGH, whole);
    const after = dirBytes(dir);
    assert(after < before * 0.95, `bytes ${before} before, ${pinned} pinned, ${after} after`);
  } finally {
    await kv.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("A whole compaction waiting for a read gives up at once when its signal aborts (a stop)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "xf-compact-" });
  const kv = await openRocks(dir);
  try {
    await kv.batch([{ type: "put", key: eventKey(new Uint8Array(32)), value: Uint8Array.of(1) }]);
    const it = kv.range({})[Symbol.asyncIterator]();
    assert(!(await it.next()).done);
    const stop = new AbortController();
    let settled = false;
    const c = kv.compact(COMPACT_LOW, COMPACT_HIGH, { whole: true, waitReadsMs: 60_000, signal: stop.signal })
      .then(() => void (settled = true));
    await delay(100);
    assert(!settled, "it waits for the read");
    const t0 = performance.now();
    stop.abort();
    await c;
    assert(performance.now() - t0 < 1000);
    await it.return!();
  } finally {
    await kv.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("Deleting a tenth of 10,000 events: the index's background compaction gives the disk bytes back", async () => {
  let t = await tempNode({ limits: { compact_after_forgotten: 1000, compact_wait_reads_ms: 30_000 } });
  const dataDir = t.dir;
  try {
    const g = await testGroup("space");
    await t.node.publish(g.manifest);
    const evs = await makeEvents(g, 10_000);
    for (let i = 0; i < evs.length; i += 1000) {
      let todo = evs.slice(i, i + 1000);
      // The library sheds load (OVERLOADED) as HTTP does: those are sent again.
      for (let tries = 0; todo.length && tries < 100; tries++) {
        const res = await t.node.publish(todo);
        assert(res.every((r) => r.status === "stored" || r.code === "OVERLOADED"), JSON.stringify(res[0]));
        todo = todo.filter((_, k) => res[k]!.status !== "stored");
        if (todo.length) await delay(20);
      }
      assertEquals(todo.length, 0);
    }
    await t.node.close();
    // Before: the store with every write in a table file, compacted.
    const db = `${dataDir}/db`;
    const kv = await openRocks(db);
    await kv.compact(COMPACT_LOW, COMPACT_HIGH, whole);
    await kv.close();
    const before = dirBytes(db);
    t = await tempNode({ dataDir, limits: { compact_after_forgotten: 1000, compact_wait_reads_ms: 30_000 } });
    const stats = () =>
      t.node.pipeline.index<{ compactions: number; compactionsDone: number; deleted: number }>({
        type: "index.stats",
      });
    // A tenth deleted, by tombstones of 256 targets: the 1000th forgotten event starts the compaction.
    const victims = evs.filter((_, i) => i % 10 === 5);
    for (let j = 0; j < victims.length; j += TOMBSTONE_TARGETS_MAX) {
      const tomb = await signEvent(g.owner, {
        group: g.gid,
        ts: Date.now(),
        kind: KIND_TOMBSTONE,
        tags: [],
        payload: encodeTombstone(victims.slice(j, j + TOMBSTONE_TARGETS_MAX).map((e) => e.id)),
      });
      assertEquals((await t.node.publish(tomb))[0]!.status, "stored");
    }
    await until(async () => (await stats()).deleted === victims.length);
    await until(async () => (await stats()).compactionsDone === 1, 30_000);
    assertEquals((await stats()).compactions, 1);
    const after = dirBytes(db);
    assert(after < before * 0.97, `bytes ${before} before deleting, ${after} after the compaction`);
    assertEquals(await t.node.get(toHex(victims[0]!.id)), null);
    assert(await t.node.get(toHex(evs[1]!.id)));
  } finally {
    await t.done();
  }
});
