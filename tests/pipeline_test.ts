import { assert, assertEquals, assertRejects } from "@std/assert";
import { hexOf, makeEvents, tempNode, testGroup } from "./_helpers.ts";
import { openNode } from "../actors/node.ts";
import { signEvent } from "../storage/event.ts";
import type { XfError } from "../storage/errors.ts";

Deno.test("XfNode.publish() stores, answers duplicates, and serves queries in (ts, id) order", async () => {
  const t = await tempNode();
  try {
    const g = await testGroup();
    assertEquals((await t.node.publish(g.manifest))[0]!.status, "stored");
    const evs = await makeEvents(g, 50);
    const shuffled = [...evs].reverse();
    const res = await t.node.publish(shuffled);
    assertEquals(res.map((r) => r.status), shuffled.map(() => "stored"));
    assertEquals(res.map((r) => r.id), shuffled.map((e) => hexOf(e.id)));
    const again = await t.node.publish([evs[0]!, evs[0]!, evs[1]!]);
    assertEquals(again.map((r) => r.status), ["duplicate", "duplicate", "duplicate"]);
    const page = await t.node.query({ gid: hexOf(g.gid), limit: 20 });
    assertEquals(page!.events.length, 20);
    const ordered = [g.manifest, ...evs].sort((a, b) => a.ts - b.ts || hexOf(a.id).localeCompare(hexOf(b.id)));
    assertEquals(page!.events.map(hexOf), ordered.slice(0, 20).map((e) => hexOf(e.bytes)));
    const rest = await t.node.query({ gid: hexOf(g.gid), limit: 100, cursor: page!.cursor! });
    assertEquals(rest!.events.length, 31);
    assertEquals(rest!.cursor, null);
    const kind17 = await t.node.query({ gid: hexOf(g.gid), limit: 100, kinds: [17] });
    assertEquals(kind17!.events.length, evs.filter((e) => e.kind === 17).length);
    const window = await t.node.query({ gid: hexOf(g.gid), limit: 100, since: evs[10]!.ts, until: evs[19]!.ts });
    assertEquals(window!.events.length, 10);
    assertEquals(hexOf((await t.node.get(hexOf(evs[3]!.id)))!), hexOf(evs[3]!.bytes));
    assertEquals(await t.node.get("00".repeat(32)), null);
  } finally {
    await t.done();
  }
});

Deno.test("XfNode.publish() rejects bad events with stable codes and stores none of them", async () => {
  const t = await tempNode();
  try {
    const g = await testGroup();
    const other = await testGroup();
    await t.node.publish(g.manifest);
    const [ok] = await makeEvents(g, 1);
    const badSig = ok!.bytes.slice();
    badSig[badSig.length - 1] = badSig[badSig.length - 1]! ^ 0xff;
    const future = await signEvent(g.owner, {
      group: g.gid,
      ts: Date.now() + 11 * 60_000,
      kind: 16,
      tags: [],
      payload: new Uint8Array(),
    });
    const [unknown] = await makeEvents(other, 1);
    const reserved = await signEvent(g.owner, { group: g.gid, ts: 5, kind: 7, tags: [], payload: new Uint8Array() });
    const res = await t.node.publish([badSig, future.bytes, unknown!.bytes, reserved.bytes]);
    assertEquals(res.map((r) => r.code), ["BAD_SIGNATURE", "TS_IN_FUTURE", "UNKNOWN_GROUP", "RESERVED_KIND"]);
    const mismatch = await t.node.submit(other.gid, ok!.bytes);
    assertEquals(mismatch[0]!.code, "GROUP_MISMATCH");
    const page = await t.node.query({ gid: hexOf(g.gid), limit: 100 });
    assertEquals(page!.events.length, 1); // the manifest only
    assertEquals(t.node.health().ready, true);
  } finally {
    await t.done();
  }
});

Deno.test("XfNode keeps acknowledged events across a restart and replays nothing twice", async () => {
  const dir = await Deno.makeTempDir({ prefix: "xf-test-" });
  try {
    const g = await testGroup();
    const evs = await makeEvents(g, 200);
    let node = await openNode({ dataDir: dir, workers: false });
    await node.publish(g.manifest);
    await node.publish(evs);
    const root1 = await node.merkle(hexOf(g.gid));
    await node.close();
    node = await openNode({ dataDir: dir, workers: false });
    const page = await node.query({ gid: hexOf(g.gid), limit: 1000 });
    assertEquals(page!.events.length, 201);
    assertEquals(await node.merkle(hexOf(g.gid)), root1);
    assertEquals((await node.fsck(hexOf(g.gid)))!.ok, true);
    await node.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

for (const stage of ["ingest", "decode", "wal", "index", "advertise"] as const) {
  Deno.test(`Supervisor restarts a crashed ${stage} stage and loses no acknowledged event`, async () => {
    const t = await tempNode({ faults: { [stage]: { crashAtBatch: 3 } } });
    try {
      const g = await testGroup();
      await t.node.publish(g.manifest);
      const got: Uint8Array[] = [];
      await t.node.subscribe({ gid: hexOf(g.gid) }, (evs) => got.push(...evs));
      const evs = await makeEvents(g, 300);
      const results = [];
      for (let i = 0; i < 300; i += 30) results.push(...await t.node.publish(evs.slice(i, i + 30)));
      const stored = results.filter((r) => r.status === "stored" || r.status === "duplicate").map((r) => r.id);
      const page = await t.node.query({ gid: hexOf(g.gid), limit: 1000 });
      const held = new Set(page!.events.map((b) => hexOf(b)));
      for (const e of evs) {
        if (stored.includes(hexOf(e.id))) assert(held.has(hexOf(e.bytes)), "acknowledged event lost");
      }
      assertEquals(page!.events.length, held.size); // none twice
      assert(t.node.pipeline.supervisor.child(stage).stats.restarts >= 1);
      assertEquals((await t.node.fsck(hexOf(g.gid)))!.ok, true);
      assertEquals(t.node.health().ready, true);
    } finally {
      await t.done();
    }
  });
}

Deno.test("XfNode answers OVERLOADED past its in-flight limit instead of queueing without bound", async () => {
  const t = await tempNode({ limits: { pipeline_inflight_events_max: 10 } });
  try {
    const g = await testGroup();
    await t.node.publish(g.manifest);
    const evs = await makeEvents(g, 40);
    const outcomes = await Promise.allSettled(evs.map((e) => t.node.publish(e)));
    const refused = outcomes.filter((o) => o.status === "rejected");
    assert(refused.length > 0);
    for (const o of refused) assertEquals(((o as PromiseRejectedResult).reason as XfError).code, "OVERLOADED");
    assert(outcomes.some((o) => o.status === "fulfilled"));
  } finally {
    await t.done();
  }
});

Deno.test("XfNode.subscribe() delivers indexed events matching its filter", async () => {
  const t = await tempNode();
  try {
    const g = await testGroup();
    await t.node.publish(g.manifest);
    const got: Uint8Array[] = [];
    const stop = await t.node.subscribe({ gid: hexOf(g.gid), kinds: [16] }, (evs) => got.push(...evs));
    const evs = await makeEvents(g, 9);
    await t.node.publish(evs);
    const deadline = Date.now() + 5000;
    while (got.length < 3 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    assertEquals(got.map(hexOf).sort(), evs.filter((e) => e.kind === 16).map((e) => hexOf(e.bytes)).sort());
    await stop();
  } finally {
    await t.done();
  }
});

Deno.test("openNode() runs every stage in a real Worker", async () => {
  const t = await tempNode({ workers: true });
  try {
    const g = await testGroup();
    const evs = await makeEvents(g, 20);
    assertEquals((await t.node.publish(g.manifest))[0]!.status, "stored");
    const got: Uint8Array[] = [];
    await t.node.subscribe({ kinds: [16, 17, 18] }, (e) => got.push(...e));
    const res = await t.node.publish(evs);
    assertEquals(res.filter((r) => r.status === "stored").length, 20);
    const page = await t.node.query({ gid: hexOf(g.gid), limit: 100 });
    assertEquals(page!.events.length, 21);
    const deadline = Date.now() + 5000;
    while (got.length < 20 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    assertEquals(got.length, 20);
    const health = t.node.health();
    assertEquals(Object.values(health.stages).map((s) => s.state), ["up", "up", "up", "up", "up"]);
    assert((await t.node.metrics()).includes('xf_mailbox_depth{stage="decode"}'));
  } finally {
    await t.done();
  }
});

Deno.test("openNode() in Workers restarts a crashed stage", async () => {
  const t = await tempNode({ workers: true, faults: { decode: { crashAtBatch: 2 } } });
  try {
    const g = await testGroup();
    await t.node.publish(g.manifest);
    const evs = await makeEvents(g, 60);
    for (let i = 0; i < 60; i += 20) await t.node.publish(evs.slice(i, i + 20));
    const page = await t.node.query({ gid: hexOf(g.gid), limit: 100 });
    assertEquals(page!.events.length, 61);
    assertEquals(t.node.pipeline.supervisor.child("decode").stats.restarts, 1);
  } finally {
    await t.done();
  }
});

Deno.test("XfNode refuses to publish after close", async () => {
  const t = await tempNode();
  const g = await testGroup();
  await t.done();
  await assertRejects(() => t.node.publish(g.manifest), Error, "stopped");
});
