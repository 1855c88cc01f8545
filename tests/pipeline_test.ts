import { toHex as hexOf } from "../core/bytes.ts";
import { assert, assertEquals, assertRejects } from "@std/assert";
import { closedGroup, makeEvents, tempNode, testGroup, until } from "./_helpers.ts";
import { cborArrayOf, openNode, type XfNode } from "../node.ts";
import { announcedEvents } from "../actors/root.ts";
import { createGroup, eventId, signEvent, type StoredEvent } from "../storage/event.ts";
import { generateKeyPair } from "../storage/ed25519.ts";
import { ACTION_ADD, ACTION_REMOVE, encodeMembership, type MembershipAction } from "../storage/membership.ts";
import type { XfError } from "../core/errors.ts";

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
    // The index kept its checkpoint: it starts where it stopped (the WAL may replay what RocksDB had not flushed,
    // but from the index's own checkpoint on, nothing).
    assert(/the index's checkpoint is 201\)/.test(node.pipeline.recovery), node.pipeline.recovery);
    const page = await node.query({ gid: hexOf(g.gid), limit: 1000 });
    assertEquals(page!.events.length, 201);
    assertEquals(await node.merkle(hexOf(g.gid)), root1);
    assertEquals((await node.fsck(hexOf(g.gid)))!.ok, true);
    await node.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

for (const stage of ["ingest", "decode", "wal_flush", "index", "advertise"] as const) {
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

/** Every event of a group, read page by page through the time index. */
async function allPages(node: XfNode, gid: string, limit = 37): Promise<Uint8Array[]> {
  const out: Uint8Array[] = [];
  let cursor: string | null = null;
  for (let pages = 0; pages < 10_000; pages++) {
    const page: { events: Uint8Array[]; cursor: string | null } | null = await node.query(
      cursor ? { gid, limit, cursor } : { gid, limit },
    );
    out.push(...page!.events);
    cursor = page!.cursor;
    if (!cursor) return out;
  }
  throw new Error("query pages never ended");
}

/** Each acknowledged id stored once and indexed once: Merkle count, paged time index and get() agree. */
async function assertStoredOnce(node: XfNode, gid: string, acked: Map<string, Uint8Array>) {
  const events = await allPages(node, gid);
  const ids = events.map((b) => hexOf(eventId(b)));
  assertEquals(new Set(ids).size, ids.length, "an event is in the time index twice");
  assertEquals(ids.length, acked.size, "time index holds a different number of events than were acknowledged");
  for (const [id, bytes] of acked) {
    assert(ids.includes(id), `acknowledged event ${id} not indexed`);
    assertEquals(hexOf((await node.get(id))!), hexOf(bytes));
  }
  assertEquals((await node.merkle(gid))!.count, acked.size, "Merkle count differs from distinct acknowledged ids");
  assertEquals((await node.fsck(gid))!.ok, true);
}

Deno.test("A crash between the WAL acknowledgement and the index write leaves each acknowledged event indexed once", async () => {
  // The index stage dies on its 4th batch: those events are acknowledged (WAL synced) but not indexed.
  const t = await tempNode({ faults: { index: { crashAtBatch: 4 } } });
  try {
    const g = await testGroup();
    const gid = hexOf(g.gid);
    const acked = new Map<string, Uint8Array>();
    const note = (evs: StoredEvent[], res: { id?: string; status: string }[]) =>
      res.forEach((r, i) => {
        assertEquals(r.id, hexOf(evs[i]!.id));
        if (r.status === "stored" || r.status === "duplicate") acked.set(r.id!, evs[i]!.bytes);
      });
    note([g.manifest], await t.node.publish(g.manifest));
    const evs = await makeEvents(g, 400);
    // Batches overlap by 10 events, so resends and duplicates cross the crash.
    for (let i = 0; i < 400; i += 40) {
      const batch = evs.slice(Math.max(0, i - 10), i + 40);
      note(batch, await t.node.publish(batch));
    }
    assertEquals(acked.size, 401);
    assertEquals(t.node.pipeline.supervisor.child("index").stats.restarts, 1);
    await assertStoredOnce(t.node, gid, acked);
    // Restart: the WAL replays past the index checkpoint, which must not index anything twice.
    await t.node.close();
    const node = await openNode({ dataDir: t.dir, workers: false });
    try {
      assert(/Replayed \d+ records/.test(node.pipeline.recovery), node.pipeline.recovery);
      await assertStoredOnce(node, gid, acked);
      const again = await node.publish(evs.slice(0, 50));
      assertEquals(again.map((r) => r.status), evs.slice(0, 50).map(() => "duplicate"));
      await assertStoredOnce(node, gid, acked);
    } finally {
      await node.close();
    }
  } finally {
    await Deno.remove(t.dir, { recursive: true }).catch(() => {});
  }
});

for (const stage of ["decode", "wal_flush", "index"] as const) {
  Deno.test(`A real ${stage} Worker terminated mid-stream is restarted, and no acknowledged event is lost or indexed twice`, async () => {
    const t = await tempNode({ workers: true });
    try {
      const g = await testGroup();
      const gid = hexOf(g.gid);
      const acked = new Map<string, Uint8Array>();
      const other: string[] = [];
      const note = (evs: StoredEvent[], res: { id?: string; status: string; code?: string; message?: string }[]) =>
        res.forEach((r, i) => {
          if (r.status === "stored" || r.status === "duplicate") acked.set(r.id!, evs[i]!.bytes);
          else other.push(`${r.status} ${r.code}: ${r.message}`);
        });
      note([g.manifest], await t.node.publish(g.manifest));
      const evs = await makeEvents(g, 600);
      const refused: string[] = [];
      const writer = async (from: number) => {
        for (let i = from; i < from + 300; i += 20) {
          const batch = evs.slice(i, i + 20);
          await t.node.publish(batch).then(
            (res) => note(batch, res),
            (e) => refused.push(`${(e as XfError).code}: ${(e as Error).message}`),
          );
        }
      };
      const writers = [writer(0), writer(300)];
      await until(() => acked.size > 100);
      const child = t.node.pipeline.supervisor.child(stage);
      const before = child.stats.restarts;
      const killedAt = Date.now();
      child.terminateAbruptly();
      await until(() => child.stats.restarts > before && child.state === "up");
      const upAfter = Date.now() - killedAt;
      await Promise.all(writers);
      assertEquals(t.node.health().ready, true);
      assert(acked.size > 100);
      // A dead decode's admitted batches that never reached the WAL, and that ingest does not send again, are
      // answered at once, "not stored, send it again" (they are sent again below); nothing waits for the timeout.
      // Left alone (issue 11): in about 1 of 50 runs under heavy load, a batch ingest sent again to the restarted decode
      // is neither stored nor answered, and its events time out ("it may still be stored, send it again"): truthful,
      // and slow. The strict check below holds for wal_flush and the index.
      const expected = stage === "decode"
        ? other.filter((o) => o.startsWith("rejected STAGE_DOWN: The decode") || o.startsWith("rejected TIMEOUT"))
        : [];
      console.log(
        `${stage}: ${acked.size} acknowledged, ${expected.length} answered "send it again", ${t.node.pipeline.counters.fenced} fenced`,
      );
      assertEquals(
        [...refused, ...new Set(other.filter((o) => !expected.includes(o)))],
        [],
        `a publish in flight across the restart was not stored (up again after ${upAfter} ms, all answered after ${
          Date.now() - killedAt
        } ms)`,
      );
      await assertStoredOnce(t.node, gid, acked);
      // The node keeps answering: everything offered is stored now (or was, unacknowledged, before).
      const all = [g.manifest, ...evs];
      const res = await t.node.publish(all);
      assertEquals(res.filter((r) => r.status !== "stored" && r.status !== "duplicate"), []);
      note(all, res);
      assertEquals(acked.size, 601);
      await assertStoredOnce(t.node, gid, acked);
    } finally {
      await t.done();
    }
  });
}

for (const stage of ["decode", "index"] as const) {
  Deno.test(`A poison batch that crashes ${stage} every time goes to a dead letter, and the rest flows`, async () => {
    const g = await testGroup();
    const evs = await makeEvents(g, 40);
    const poison = evs[0]!;
    const prefix = hexOf(poison.id).slice(0, 6);
    assert(!evs.slice(1).some((e) => hexOf(e.id).startsWith(prefix)), "prefix not unique; pick another");
    const t = await tempNode({ workers: true, faults: { [stage]: { poisonPrefix: prefix } } });
    try {
      await t.node.publish(g.manifest);
      const [r] = await t.node.publish([poison]);
      if (stage === "decode") {
        // Not yet durable: answered as an internal failure, with where it was set aside.
        assertEquals(r!.status, "rejected");
        assertEquals(r!.code, "INTERNAL");
        assert(r!.message!.includes("dead letter"), r!.message);
      } else assertEquals(r!.status, "stored"); // acknowledged by the WAL before the index crashed on it
      // The rest flows: every other event is stored and readable.
      const rest = await t.node.publish(evs.slice(1));
      assertEquals(rest.map((x) => x.status), evs.slice(1).map(() => "stored"));
      const page = await t.node.query({ gid: hexOf(g.gid), limit: 100 });
      assertEquals(page!.events.length, 40); // manifest + 39
      const h = t.node.health();
      assertEquals(h.ready, true);
      assertEquals(h.deadLetters.count, 1);
      assertEquals(h.deadLetters.recent[0]!.stage, stage);
      assert(h.deadLetters.recent[0]!.error.includes("poison"), h.deadLetters.recent[0]!.error);
      // Two crashes with it alone in flight make it a poison batch (crashes with others beside it do not count
      // against it), within the restart intensity that would stop the node.
      const restarts = t.node.pipeline.supervisor.child(stage).stats.restarts;
      assert(restarts >= 2 && restarts <= t.node.limits.restart_intensity_max, `restarts ${restarts}`);
      assert((await t.node.metrics()).includes("xf_dead_letters_total 1"));
      // The dead-letter file holds the event's bytes, for the operator.
      const file = `${t.dir}/${h.deadLetters.recent[0]!.file}`;
      await until(() => Deno.stat(file).then(() => true, () => false));
      const bytes = await Deno.readFile(file);
      assert(hexOf(bytes).includes(hexOf(poison.bytes)));
    } finally {
      await t.done();
    }
  });
}

// Issue 11, known bug 3 (tests/sim_pipeline_test.ts): an acknowledged removal the index crashed twice beside (two
// faults while its put was alone in flight) used to be dead-lettered and its seq skipped: never indexed, so after the
// next start the removed member could write again. Now the index gets it again from the WAL, alone (root.ts `isolate`).
Deno.test("An acknowledged removal the index crashed on twice (faults beside it) is indexed, and still counts after a restart", async () => {
  const owner = await generateKeyPair();
  const member = await generateKeyPair();
  const { gid, manifest } = await createGroup(owner, { name: "secret", policy: 1 });
  const membership = (action: MembershipAction, ts: number) =>
    signEvent(owner, {
      group: gid,
      ts,
      kind: 1,
      tags: [],
      payload: encodeMembership({ action, member: member.publicKey }),
    });
  const now = Date.now();
  const add = await membership(ACTION_ADD, now - 100_000);
  const remove = await membership(ACTION_REMOVE, now - 50_000);
  const write = (ts: number) =>
    signEvent(member, { group: gid, ts, kind: 16, tags: [], payload: new TextEncoder().encode(`at ${ts}`) });
  // The index crashes whenever the removal's put is in its mailbox, until it has restarted twice: two faults while
  // that put is alone in flight (the link takes it for a poison batch), then none.
  const prefix = hexOf(remove.id).slice(0, 8);
  const t = await tempNode({ faults: { index: { poisonPrefix: prefix, poisonCrashes: 2 } } });
  try {
    assertEquals((await t.node.publish([manifest, add])).map((r) => r.status), ["stored", "stored"]);
    assertEquals((await t.node.publish([await write(now - 70_000)]))[0]!.status, "stored");
    assertEquals((await t.node.publish([remove]))[0]!.status, "stored"); // acknowledged by the WAL
    await until(() => t.node.pipeline.supervisor.child("index").stats.restarts >= 2 && t.node.health().ready, 20_000);
    // Indexed (a read waits for the index to hold every acknowledged seq), not set aside.
    assertEquals(await t.node.get(hexOf(remove.id)), remove.bytes);
    assertEquals(t.node.pipeline.supervisor.child("index").stats.restarts, 2);
    assertEquals(t.node.health().deadLetters.count, 0);
    // At least the removal; events acknowledged before it may have shared its batch (load-dependent), at most all 4.
    const isolations = Number((await t.node.metrics()).match(/^xf_index_isolations_total (\d+)$/m)?.[1] ?? 0);
    assert(isolations >= 1 && isolations <= 4, `isolated ${isolations} events`);
    await t.node.close();
    // A new decode loads the group from the index: the removal holds, the removed member is refused.
    const again = await openNode({ workers: false, dataDir: t.dir });
    try {
      const [r] = await again.publish([await write(now - 10_000)]);
      assertEquals([r!.status, r!.code], ["rejected", "FORBIDDEN"]);
      assertEquals(await again.get(hexOf(remove.id)), remove.bytes);
    } finally {
      await again.close();
    }
  } finally {
    await t.node.close().catch(() => {});
    await Deno.remove(t.dir, { recursive: true }).catch(() => {});
  }
});

Deno.test("dead_letters_max bounds the dead letters /health remembers; every one is counted", async () => {
  const g = await testGroup();
  const evs = await makeEvents(g, 12);
  const [a, b] = [evs[0]!, evs[1]!];
  const prefixes = [a, b].map((e) => hexOf(e.id).slice(0, 6));
  const t = await tempNode({
    faults: { decode: { poisonPrefix: prefixes.join(",") } },
    limits: { dead_letters_max: 1 },
  });
  try {
    await t.node.publish(g.manifest);
    assertEquals((await t.node.publish([a]))[0]!.code, "INTERNAL");
    assertEquals((await t.node.publish([b]))[0]!.code, "INTERNAL");
    const h = t.node.health();
    assertEquals(h.deadLetters.count, 2);
    assertEquals(h.deadLetters.recent.length, 1);
    assert(h.deadLetters.recent[0]!.file.endsWith("-2.cbor"), h.deadLetters.recent[0]!.file);
    // The rest flows.
    const rest = await t.node.publish(evs.slice(2));
    assertEquals(rest.map((r) => r.status), evs.slice(2).map(() => "stored"));
  } finally {
    await t.done();
  }
});

for (const workers of [0, 1]) {
  Deno.test(`decode_verify_workers_max ${workers}: a bad signature is caught on either side of a split batch`, async () => {
    const t = await tempNode({ workers: true, limits: { decode_verify_workers_max: workers } });
    try {
      const g = await testGroup();
      await t.node.publish(g.manifest);
      const evs = await makeEvents(g, 200); // ≥ 64: shared with the helper Worker when there is one
      const bodies = evs.map((e) => e.bytes.slice());
      for (const i of [3, 150]) bodies[i]![bodies[i]!.length - 1]! ^= 1;
      const res = await t.node.publish(bodies);
      const bad = res.flatMap((r, i) => r.status === "rejected" ? [[i, r.code]] : []);
      assertEquals(bad, [[3, "BAD_SIGNATURE"], [150, "BAD_SIGNATURE"]]);
    } finally {
      await t.done();
    }
  });
}

Deno.test("decode_groups_max: decode forgets a group past its bound and loads it again, membership and all", async () => {
  const t = await tempNode({ limits: { decode_groups_max: 1 } });
  try {
    const a = await closedGroup(t.node);
    const b = await closedGroup(t.node);
    // Alternate: each write to one group evicts the other from decode; the reload must keep the member's right.
    for (let round = 0; round < 3; round++) {
      for (const g of [a, b]) {
        const ev = await signEvent(g.member, {
          group: g.gid,
          ts: Date.now(),
          kind: 16,
          tags: [],
          payload: new Uint8Array([round]),
        });
        assertEquals((await t.node.publish(ev))[0]!.status, "stored");
        const stranger = await signEvent((await testGroup()).owner, {
          group: g.gid,
          ts: Date.now(),
          kind: 16,
          tags: [],
          payload: new Uint8Array([round]),
        });
        assertEquals((await t.node.publish(stranger))[0]!.code, "FORBIDDEN");
      }
    }
  } finally {
    await t.done();
  }
});

Deno.test("stage_link_bytes_max: a link whose byte window holds less than one batch still moves every batch, one at a time", async () => {
  const t = await tempNode({ limits: { stage_link_bytes_max: 1 } });
  try {
    const g = await testGroup();
    await t.node.publish(g.manifest);
    const evs = await makeEvents(g, 300);
    const res = await Promise.all([0, 100, 200].map((i) => t.node.publish(evs.slice(i, i + 100))));
    assertEquals(res.flat().filter((r) => r.status !== "stored"), []);
    assertEquals((await t.node.merkle(hexOf(g.gid)))!.count, 301);
  } finally {
    await t.done();
  }
});

Deno.test("wal_checkpoint_ms: the WAL checkpoint round follows index writes after this delay, not before", async () => {
  for (const [ms, runs] of [[20, true], [60_000, false]] as const) {
    const t = await tempNode({ limits: { wal_checkpoint_ms: ms } });
    try {
      const g = await testGroup();
      await t.node.publish([g.manifest, ...(await makeEvents(g, 20))]);
      await new Promise((r) => setTimeout(r, 500));
      assertEquals(t.node.pipeline.counters.walCheckpoints > 0, runs, `wal_checkpoint_ms ${ms}`);
    } finally {
      await t.done();
    }
  }
});

Deno.test("Requests arriving while ingest's window is full gather at the root and all finish", async () => {
  const t = await tempNode({ workers: true, limits: { stage_mailbox_batches_max: 1 } });
  try {
    const g = await testGroup();
    await t.node.publish(g.manifest);
    const evs = await makeEvents(g, 400);
    // 80 requests of 5 events, each in its own task: with a window of one batch, most arrive while it is full.
    const pending: Promise<{ status: string }[]>[] = [];
    for (let i = 0; i < 80; i++) {
      pending.push(t.node.publish(evs.slice(i * 5, i * 5 + 5)));
      await new Promise((r) => setTimeout(r, 0));
    }
    const res = await Promise.all(pending);
    assertEquals(res.flat().filter((r) => r.status !== "stored"), []);
    // The main thread was not starved while they waited: a timer still fires promptly.
    const t0 = performance.now();
    await new Promise((r) => setTimeout(r, 1));
    assert(performance.now() - t0 < 1000);
  } finally {
    await t.done();
  }
});

Deno.test("ingest_id_filter_bytes_max: a small, crowded id filter still answers every old event duplicate after a restart", async () => {
  const dir = await Deno.makeTempDir({ prefix: "xf-test-" });
  try {
    const g = await testGroup();
    const evs = await makeEvents(g, 300);
    let node = await openNode({ dataDir: dir, workers: false });
    await node.publish([g.manifest, ...evs.slice(0, 200)]);
    await node.close();
    // 1 KiB of filter for 201 held ids: nearly every fresh id is a "maybe" and asked of the index.
    node = await openNode({ dataDir: dir, workers: false, limits: { ingest_id_filter_bytes_max: 1024 } });
    try {
      await new Promise((r) => setTimeout(r, 200)); // the filter arrives
      const res = await node.publish(evs);
      assertEquals(res.map((r) => r.status), evs.map((_, i) => i < 200 ? "duplicate" : "stored"));
    } finally {
      await node.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});

Deno.test("announcedEvents(): a body counts as the events its array head announces until ingest splits it", async () => {
  const g = await testGroup();
  const evs = await makeEvents(g, 300);
  assertEquals(announcedEvents(evs[0]!.bytes), 1);
  assertEquals(announcedEvents(cborArrayOf(evs.slice(0, 20).map((e) => e.bytes))), 20);
  assertEquals(announcedEvents(cborArrayOf(evs.slice(0, 100).map((e) => e.bytes))), 100);
  assertEquals(announcedEvents(cborArrayOf(evs.map((e) => e.bytes))), 300);
  assertEquals(announcedEvents(new Uint8Array([0xff])), 1);
});
