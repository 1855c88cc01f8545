// Limits tested at their edge: a value at the limit passes, one past it fails with the stable code. Each test
// names the limit it pushes (tests/coverage_test.ts looks for the names).
import { assert, assertEquals } from "@std/assert";
import { makeEvents, tempNode, testGroup } from "./_helpers.ts";
import { toHex as hexOf } from "../core/bytes.ts";
import { LIMITS } from "../core/limits.ts";
import { signEvent, type StoredEvent } from "../storage/event.ts";
import { Wal } from "../storage/wal.ts";
import { XfError } from "../core/errors.ts";
import { createApp } from "../net/app.ts";
import type { XfNode } from "../node.ts";
import type { Limits } from "../core/limits.ts";
import { serve } from "../net/server.ts";
import { generateKeyPair } from "../storage/ed25519.ts";
import { eventId } from "../storage/event.ts";
import { socketPeer, SYNC_INFO } from "./_peer.ts";

const CBOR = { "content-type": "application/cbor" };

async function publishOne(node: XfNode, ev: StoredEvent): Promise<{ status: string; code?: string }> {
  const [r] = await node.publish([ev.bytes]);
  return r!;
}

/** An event of the group whose encoding is exactly `size` bytes (the payload is sized to fit). */
async function eventOfSize(g: Awaited<ReturnType<typeof testGroup>>, size: number, ts: number): Promise<StoredEvent> {
  let payload = Math.max(0, size - 200);
  for (let tries = 0; tries < 8; tries++) {
    const ev = await signEvent(g.owner, { group: g.gid, ts, kind: 16, tags: [], payload: new Uint8Array(payload) });
    if (ev.bytes.length === size) return ev;
    payload += size - ev.bytes.length;
  }
  throw new Error(`cannot make an event of exactly ${size} bytes`);
}

Deno.test("event_bytes_max: an event of exactly the limit is stored, one byte more is EVENT_TOO_LARGE", async () => {
  const t = await tempNode();
  try {
    const g = await testGroup();
    await t.node.publish([g.manifest.bytes]);
    const ts = Date.now() - 1000;
    const atLimit = await eventOfSize(g, LIMITS.event_bytes_max, ts);
    const over = await eventOfSize(g, LIMITS.event_bytes_max + 1, ts + 1);
    assertEquals((await publishOne(t.node, atLimit)).status, "stored");
    const r = await publishOne(t.node, over);
    assertEquals([r.status, r.code], ["rejected", "EVENT_TOO_LARGE"]);
  } finally {
    await t.done();
  }
});

Deno.test("event_tags_max and tag_bytes_max: at the limit stored, one more tag or byte is BAD_EVENT", async () => {
  const t = await tempNode();
  try {
    const g = await testGroup();
    await t.node.publish([g.manifest.bytes]);
    const ts = Date.now() - 1000;
    const withTags = (n: number, len: number, i: number) =>
      signEvent(g.owner, {
        group: g.gid,
        ts: ts + i,
        kind: 16,
        tags: Array.from({ length: n }, (_, k) => ["t", (String(k) + "x".repeat(len)).slice(0, len)]),
        payload: new Uint8Array(0),
      });
    assertEquals((await publishOne(t.node, await withTags(LIMITS.event_tags_max, 4, 0))).status, "stored");
    const tooMany = await publishOne(t.node, await withTags(LIMITS.event_tags_max + 1, 4, 1));
    assertEquals([tooMany.status, tooMany.code], ["rejected", "BAD_EVENT"]);
    assertEquals((await publishOne(t.node, await withTags(1, LIMITS.tag_bytes_max, 2))).status, "stored");
    const tooLong = await publishOne(t.node, await withTags(1, LIMITS.tag_bytes_max + 1, 3));
    assertEquals([tooLong.status, tooLong.code], ["rejected", "BAD_EVENT"]);
  } finally {
    await t.done();
  }
});

Deno.test("event_future_ms: a ts just inside the horizon is stored, just past it is TS_IN_FUTURE", async () => {
  const t = await tempNode();
  try {
    const g = await testGroup();
    await t.node.publish([g.manifest.bytes]);
    // The node reads its clock after the event is signed: a second of slack either side of the edge.
    const at = (ms: number) =>
      signEvent(g.owner, { group: g.gid, ts: Date.now() + ms, kind: 16, tags: [], payload: new Uint8Array(1) });
    assertEquals((await publishOne(t.node, await at(LIMITS.event_future_ms - 1000))).status, "stored");
    const r = await publishOne(t.node, await at(LIMITS.event_future_ms + 1000));
    assertEquals([r.status, r.code], ["rejected", "TS_IN_FUTURE"]);
  } finally {
    await t.done();
  }
});

Deno.test("query_limit_max: a query for exactly the limit answers, one more is BAD_QUERY", async () => {
  const t = await tempNode();
  try {
    const app = createApp(t.node);
    const g = await testGroup();
    await t.node.publish([g.manifest.bytes]);
    await t.node.publish((await makeEvents(g, 3)).map((e) => e.bytes));
    const base = `/v1/groups/${hexOf(g.gid)}/events`;
    const ok = await app.request(`${base}?limit=${LIMITS.query_limit_max}`);
    assertEquals(ok.status, 200);
    assertEquals((await ok.json()).events.length, 4);
    const over = await app.request(`${base}?limit=${LIMITS.query_limit_max + 1}`);
    assertEquals([over.status, (await over.json()).error], [400, "BAD_QUERY"]);
  } finally {
    await t.done();
  }
});

Deno.test("wal_commit_records_max: one append of exactly the limit is taken, one more is BATCH_TOO_LARGE", async () => {
  const dir = await Deno.makeTempDir({ prefix: "xf-edge-" });
  const { wal } = await Wal.open(dir, { checkpointSeq: 0n });
  try {
    const recs = (n: number) => Array.from({ length: n }, () => new Uint8Array(1));
    const r = await wal.append(recs(LIMITS.wal_commit_records_max));
    assertEquals(r.lastSeq, BigInt(LIMITS.wal_commit_records_max));
    let err: unknown = null;
    await wal.append(recs(LIMITS.wal_commit_records_max + 1)).catch((e) => err = e);
    assert(err instanceof XfError && err.code === "BATCH_TOO_LARGE", String(err));
    assertEquals(wal.stats().lastSeq, BigInt(LIMITS.wal_commit_records_max), "the refused append took no seq");
  } finally {
    await wal.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("subscribers_max: subscriptions up to the limit are taken, one more is OVERLOADED", async () => {
  const subscribers_max = 3;
  const t = await tempNode({ limits: { subscribers_max } });
  const offs: (() => Promise<void>)[] = [];
  try {
    for (let i = 0; i < subscribers_max; i++) offs.push(await t.node.subscribe({}, () => {}));
    let err: unknown = null;
    await t.node.subscribe({}, () => {}).catch((e) => err = e);
    assert(err instanceof XfError && err.code === "OVERLOADED", String(err));
    // One leaves: there is room again.
    await offs.pop()!();
    offs.push(await t.node.subscribe({}, () => {}));
  } finally {
    for (const off of offs) await off();
    await t.done();
  }
});

Deno.test("streams_max: client streams up to the limit open, one more is OVERLOADED (503)", async () => {
  const streams_max = 2;
  const t = await tempNode({ limits: { streams_max } });
  const open: Response[] = [];
  try {
    const app = createApp(t.node);
    const g = await testGroup();
    assertEquals(
      (await app.request(`/v1/groups/${hexOf(g.gid)}/events`, {
        method: "POST",
        body: g.manifest.bytes as BodyInit,
        headers: CBOR,
      })).status,
      201,
    );
    const stream = () => app.request(`/v1/groups/${hexOf(g.gid)}/stream`, { headers: { accept: "text/event-stream" } });
    for (let i = 0; i < streams_max; i++) {
      const r = await stream();
      assertEquals(r.status, 200);
      open.push(r);
    }
    const over = await stream();
    assertEquals([over.status, (await over.json()).error], [503, "OVERLOADED"]);
  } finally {
    for (const r of open) await r.body?.cancel().catch(() => {});
    await t.done();
  }
});

/** A node served on 127.0.0.1:0 with the given limits. */
async function served(limits: Partial<Limits>) {
  const t = await tempNode({ limits });
  const s = await serve(t.node, { host: "127.0.0.1", port: 0 });
  return {
    node: t.node,
    url: s.url,
    async done() {
      await s.shutdown();
      await t.done();
    },
  };
}

Deno.test("sync_sessions_max: sync sessions up to the limit open, one more is OVERLOADED", async () => {
  const sync_sessions_max = 2;
  const victim = await served({ sync_sessions_max });
  try {
    const peers = [];
    for (let i = 0; i < sync_sessions_max; i++) {
      const p = await socketPeer(victim.url, "/v1/sync", await generateKeyPair(), "sync", SYNC_INFO);
      await p.sec.ready;
      peers.push(p);
    }
    const over = await socketPeer(victim.url, "/v1/sync", await generateKeyPair(), "sync", SYNC_INFO);
    assertEquals(await over.endCode(), "OVERLOADED");
    for (const p of peers) p.sec.close("done");
  } finally {
    await victim.done();
  }
});

Deno.test("sync_want_ids_max: a want of exactly the limit is answered, one id more is BAD_FRAME", async () => {
  const sync_want_ids_max = 4;
  const victim = await served({ sync_want_ids_max });
  try {
    const g = await testGroup();
    const evs = await makeEvents(g, sync_want_ids_max + 1);
    await victim.node.publish([g.manifest.bytes, ...evs.map((e) => e.bytes)]);
    const gid = hexOf(g.gid);
    const p = await socketPeer(victim.url, "/v1/sync", await generateKeyPair(), "sync", SYNC_INFO);
    p.send("sub", { gid });
    await p.next("sub.ok");
    const wanted = new Set(evs.slice(0, sync_want_ids_max).map((e) => hexOf(e.id)));
    p.send("want", { gid, ids: evs.slice(0, sync_want_ids_max).map((e) => e.id) });
    const got = new Set<string>();
    while ([...wanted].some((id) => !got.has(id))) {
      for (const b of (await p.next("events")).get("events") as Uint8Array[]) got.add(hexOf(eventId(b)));
    }
    p.send("want", { gid, ids: evs.map((e) => e.id) });
    const err = await p.next("error");
    assertEquals(err.get("code"), "BAD_FRAME");
    assert(String(err.get("message")).includes("ids"), String(err.get("message")));
    p.sec.close("done");
  } finally {
    await victim.done();
  }
});
