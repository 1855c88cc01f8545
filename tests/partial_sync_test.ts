// Partial sync: a `sub` with [since, until) reconciles and streams only that range of a group; the responder
// raises since to what it retains and echoes the range; both sides reconcile the same range.
import { toHex } from "../core/bytes.ts";
import { assert, assertEquals, assertRejects } from "@std/assert";
import { sha256 } from "@noble/hashes/sha2";
import { makeEvents, queryAll, syncLink, tempNode, type TestGroup, testGroup, until } from "./_helpers.ts";
import { type F, pipedPeer, SYNC_INFO } from "./_peer.ts";
import { channelPair } from "../net/peers.ts";
import { SyncSession } from "../net/sync.ts";
import { SecureChannel } from "../net/secure.ts";
import { serve } from "../net/server.ts";
import { createApp } from "../net/app.ts";
import { Reconciler } from "../merkle/negentropy.ts";
import { SubRange, VectorStorage } from "../merkle/negentropy_storage.ts";
import { decodeCbor, encodeCbor } from "../storage/cbor.ts";
import { generateKeyPair } from "../storage/ed25519.ts";
import { peekEvent, type StoredEvent } from "../storage/event.ts";
import { XfError } from "../core/errors.ts";
import type { XfNode } from "../node.ts";
import { XfClient, XfClientError } from "../client/mod.ts";

const DAY = 86_400_000;
/** Day 0 of the tests' groups: a month ago, on a day boundary. */
const T0 = Math.floor((Date.now() - 30 * DAY) / DAY) * DAY;
const day = (d: number) => T0 + d * DAY;

/** Every event of a group on a node: hex id → ts. */
async function held(node: XfNode, gid: string): Promise<Map<string, number>> {
  return new Map((await queryAll(node, gid)).map((e) => [toHex(sha256(e)), peekEvent(e)!.ts]));
}

/** Hex ids of a node's events with since <= ts < until. */
async function idsIn(node: XfNode, gid: string, since: number, until: number): Promise<string[]> {
  return [...(await held(node, gid))].filter(([, ts]) => ts >= since && ts < until).map(([id]) => id).sort();
}

/** The negentropy fingerprint of a node's events in [since, until) ("range root"). */
async function rangeRoot(node: XfNode, gid: string, since: number, until: number): Promise<string> {
  const v = new VectorStorage();
  for (const [id, ts] of await held(node, gid)) v.insert(ts, Uint8Array.from(id.match(/../g)!, (h) => parseInt(h, 16)));
  v.seal();
  const r = new SubRange(v, since, until);
  return toHex(r.fingerprint(0, r.size()));
}

const hexIds = (evs: StoredEvent[]) => evs.map((e) => toHex(e.id)).sort();

/** a initiates, b answers, piped in-process. */

/** A group over three days: 20 common events a day, and events only one side holds on each day. */
async function threeDays(g: TestGroup) {
  const common = [
    ...await makeEvents(g, 20, day(0)),
    ...await makeEvents(g, 20, day(1)),
    ...await makeEvents(g, 20, day(2)),
  ];
  const onlyA = [
    await makeEvents(g, 5, day(0) + 100),
    await makeEvents(g, 7, day(1) + 100),
    await makeEvents(g, 4, day(2) + 100),
  ];
  const onlyB = [
    await makeEvents(g, 3, day(0) + 200),
    await makeEvents(g, 6, day(1) + 200),
    await makeEvents(g, 2, day(2) + 200),
  ];
  return { common, onlyA, onlyB };
}

Deno.test("Partial sync of one day moves exactly that day's differences, and both sides then agree on its range root", async () => {
  const a = await tempNode(), b = await tempNode();
  try {
    const g = await testGroup();
    const gid = toHex(g.gid);
    const { common, onlyA, onlyB } = await threeDays(g);
    await a.node.publish([g.manifest, ...common, ...onlyA.flat()]);
    await b.node.publish([g.manifest, ...common, ...onlyB.flat()]);
    const beforeA = await held(a.node, gid), beforeB = await held(b.node, gid);
    assert(await rangeRoot(a.node, gid, day(1), day(2)) !== await rangeRoot(b.node, gid, day(1), day(2)));

    const { client, server } = syncLink(a.node, b.node);
    await client.sync(gid, { since: day(1), until: day(2) });
    await until(async () =>
      (await held(a.node, gid)).size === beforeA.size + 6 && (await held(b.node, gid)).size === beforeB.size + 7
    );
    assertEquals(client.ranges().get(gid), { since: day(1), until: day(2) });
    // Exactly day 1's differences moved: 7 events to b, 6 to a (and the manifest, pushed at sub).
    assertEquals(client.stats.eventsSent, 7);
    assertEquals(server.stats.eventsSent, 6 + 1);
    assertEquals(
      await idsIn(a.node, gid, day(1), day(2)),
      hexIds([...common.slice(20, 40), ...onlyA[1]!, ...onlyB[1]!]),
    );
    assertEquals(await idsIn(b.node, gid, day(1), day(2)), await idsIn(a.node, gid, day(1), day(2)));
    // Days 0 and 2 are untouched on both sides.
    for (const [node, only] of [[a.node, onlyA], [b.node, onlyB]] as const) {
      assertEquals(await idsIn(node, gid, day(0), day(1)), hexIds([...common.slice(0, 20), ...only[0]!]));
      assertEquals(await idsIn(node, gid, day(2), day(3)), hexIds([...common.slice(40), ...only[2]!]));
    }
    assertEquals(await rangeRoot(a.node, gid, day(1), day(2)), await rangeRoot(b.node, gid, day(1), day(2)));
    assert((await a.node.merkle(gid))!.root !== (await b.node.merkle(gid))!.root, "the whole groups still differ");

    // Live, after reconciliation: only events in the range are pushed, both ways.
    const [outB] = await makeEvents(g, 1, day(0) + 5_000), [inB] = await makeEvents(g, 1, day(1) + 5_000);
    await b.node.publish(outB!);
    await b.node.publish(inB!);
    const [outA] = await makeEvents(g, 1, day(2) + 6_000), [inA] = await makeEvents(g, 1, day(1) + 6_000);
    await a.node.publish(outA!);
    await a.node.publish(inA!);
    await until(async () => (await a.node.get(toHex(inB!.id))) !== null && (await b.node.get(toHex(inA!.id))) !== null);
    await new Promise((r) => setTimeout(r, 100));
    assertEquals(await a.node.get(toHex(outB!.id)), null);
    assertEquals(await b.node.get(toHex(outA!.id)), null);
    client.close();
  } finally {
    await a.done();
    await b.done();
  }
});

Deno.test("The responder raises since to what it retains and echoes the range; the initiator reconciles that range", async () => {
  const a = await tempNode(), b = await tempNode();
  try {
    const g = await testGroup();
    const gid = toHex(g.gid);
    const early = await makeEvents(g, 7, day(1)); // ts day(1) + 0..6: before b's boundary
    const late = await makeEvents(g, 3, day(1) + 50);
    const theirs = await makeEvents(g, 4, day(1) + 5); // b's, 2 of them before its boundary (it would not hold them)
    await a.node.publish([g.manifest, ...early, ...late]);
    await b.node.publish([g.manifest, ...theirs.slice(2)]);
    const boundary = day(1) + 7;
    b.node.sync.retained = () => Promise.resolve(boundary);
    const { client, server } = syncLink(a.node, b.node);
    await client.sync(gid, { since: day(1), until: day(2) });
    assertEquals(client.ranges().get(gid), { since: boundary, until: day(2) });
    await until(async () =>
      (await held(b.node, gid)).size === 1 + 2 + 3 && (await held(a.node, gid)).size === 1 + 10 + 2
    );
    assertEquals(client.stats.eventsSent, 3, "only a's events from b's boundary on");
    assertEquals(server.stats.eventsSent, 1 + 2);
    assertEquals(await idsIn(b.node, gid, 0, boundary), []);
    assertEquals(await rangeRoot(a.node, gid, boundary, day(2)), await rangeRoot(b.node, gid, boundary, day(2)));
    client.close();
  } finally {
    await a.done();
    await b.done();
  }
});

Deno.test("Peers with different retention boundaries reconcile only what both retain: no event crosses back and forth", async () => {
  const a = await tempNode(), b = await tempNode();
  try {
    const g = await testGroup();
    const gid = toHex(g.gid);
    const { common, onlyA, onlyB } = await threeDays(g);
    // b keeps from day 1 on (it holds nothing of day 0); a keeps everything.
    await a.node.publish([g.manifest, ...common, ...onlyA.flat()]);
    await b.node.publish([g.manifest, ...common.slice(20), ...onlyB[1]!, ...onlyB[2]!]);
    b.node.sync.retained = () => Promise.resolve(day(1));
    const sizeA = (await held(a.node, gid)).size, sizeB = (await held(b.node, gid)).size;
    // Every day-1-and-later difference, in both directions (a initiates, then b), and again: counted per event.
    const moved: number[] = [];
    for (const [x, y] of [[a, b], [b, a], [a, b], [b, a]] as const) {
      const { client, server } = syncLink(x.node, y.node);
      await client.sync(gid);
      await until(async () =>
        (await held(a.node, gid)).size === sizeA + 8 && (await held(b.node, gid)).size === sizeB + 11
      );
      assertEquals(client.ranges().get(gid), { since: day(1), until: Infinity });
      moved.push(client.stats.eventsSent + server.stats.eventsSent - 1); // less the manifest pushed at sub
      client.close();
    }
    assertEquals(moved, [19, 0, 0, 0], "day 1 and 2's differences once; day 0's never");
    assertEquals(await idsIn(b.node, gid, 0, day(1)), []);
    assertEquals(await rangeRoot(a.node, gid, day(1), Infinity), await rangeRoot(b.node, gid, day(1), Infinity));
    // Without the boundary the same sync would have sent b a's day 0 (the count above can fail).
    b.node.sync.retained = () => Promise.resolve(0);
    const { client } = syncLink(a.node, b.node);
    await client.sync(gid);
    await until(async () => (await held(b.node, gid)).size === sizeB + 11 + 25);
    assertEquals(client.stats.eventsSent, 25);
    client.close();
  } finally {
    await a.done();
    await b.done();
  }
});

Deno.test("The initiator asks from its own retention boundary even for the whole group", async () => {
  const a = await tempNode(), b = await tempNode();
  try {
    const g = await testGroup();
    const gid = toHex(g.gid);
    const { common, onlyB } = await threeDays(g);
    await a.node.publish([g.manifest, ...common.slice(40)]);
    await b.node.publish([g.manifest, ...common, ...onlyB.flat()]);
    a.node.sync.retained = () => Promise.resolve(day(2));
    const { client } = syncLink(a.node, b.node);
    await client.sync(gid);
    assertEquals(client.ranges().get(gid), { since: day(2), until: Infinity });
    await until(async () => (await held(a.node, gid)).size === 1 + 20 + 2);
    assertEquals(await idsIn(a.node, gid, 0, day(2)), []);
    client.close();
  } finally {
    await a.done();
    await b.done();
  }
});

Deno.test("SyncSession.sync() and POST /v1/sync/once refuse a bad range with BAD_QUERY", async () => {
  const a = await tempNode(), b = await tempNode();
  try {
    const g = await testGroup();
    const gid = toHex(g.gid);
    await a.node.publish(g.manifest);
    const { client } = syncLink(a.node, b.node);
    for (
      const bad of [{ since: 5, until: 5 }, { since: 6, until: 5 }, { since: -1 }, { until: 1.5 }, { since: 2 ** 53 }]
    ) {
      const e = await assertRejects(() => client.sync(gid, bad), XfError);
      assertEquals(e.code, "BAD_QUERY", JSON.stringify(bad));
    }
    client.close();
    const app = createApp(a.node, { remoteAddr: () => "127.0.0.1" });
    for (const bad of [{ since: 10, until: 5 }, { since: "yesterday" }, { until: -3 }]) {
      const r = await app.request("/v1/sync/once", {
        method: "POST",
        body: JSON.stringify({ peer: "ws://127.0.0.1:1", ...bad }),
      });
      assertEquals([r.status, (await r.json()).error], [400, "BAD_QUERY"], JSON.stringify(bad));
    }
  } finally {
    await a.done();
    await b.done();
  }
});

Deno.test("A sub with a bad range ends the session with BAD_FRAME", async () => {
  const b = await tempNode();
  try {
    const g = await testGroup();
    const gid = toHex(g.gid);
    await b.node.publish(g.manifest);
    for (
      const bad of [{ since: 10, until: 10 }, { since: 11, until: 10 }, { since: -1 }, { until: "x" }, {
        since: new Uint8Array(8),
      }]
    ) {
      const p = pipedPeer((ch) => b.node.sync.accept(ch), await generateKeyPair());
      p.send("sub", { gid, ...bad });
      assertEquals(await p.endCode(), "BAD_FRAME", JSON.stringify(bad));
    }
  } finally {
    await b.done();
  }
});

Deno.test("A sub without a range is answered as before (no range in sub.ok) and reconciles the whole group", async () => {
  const b = await tempNode();
  try {
    const g = await testGroup();
    const gid = toHex(g.gid);
    const { common, onlyB } = await threeDays(g);
    await b.node.publish([g.manifest, ...common, ...onlyB.flat()]);
    const p = pipedPeer((ch) => b.node.sync.accept(ch), await generateKeyPair());
    // The peer holds nothing: the responder's id lists name every event of the range it reconciles.
    const ask = async (fields: Record<string, unknown>) => {
      p.send("sub", { gid, ...fields });
      const ok = await p.next("sub.ok");
      const init = new Reconciler(emptyStorage());
      p.send("neg", { gid, msg: init.initiate() });
      const reply = await p.next("neg");
      return { ok, ids: init.reconcile(reply.get("msg") as Uint8Array).need.map(toHex).sort() };
    };
    const whole = await ask({});
    assertEquals([...whole.ok.keys()].sort(), ["count", "gid", "root", "t"]);
    assertEquals(whole.ids, [...(await held(b.node, gid)).keys()].sort());
    const part = await ask({ since: day(1), until: day(2) });
    assertEquals([part.ok.get("since"), part.ok.get("until")], [day(1), day(2)]);
    assertEquals(part.ids, await idsIn(b.node, gid, day(1), day(2)));
    assertEquals(part.ids.length, 26);
    const open = await ask({ since: day(2) });
    assertEquals([open.ok.get("since"), open.ok.has("until")], [day(2), false]);
    assertEquals(open.ids, await idsIn(b.node, gid, day(2), Infinity));
  } finally {
    await b.done();
  }
});

function emptyStorage(): VectorStorage {
  const v = new VectorStorage();
  v.seal();
  return v;
}

/** A responder spoken by hand, for what an initiator does with the sub.ok it gets. */
async function handResponder(a: XfNode) {
  const [ca, cb] = channelPair();
  const sec = new SecureChannel(cb, {
    key: await generateKeyPair(),
    purpose: "sync",
    role: "responder",
    info: SYNC_INFO,
    frameMax: 1 << 20,
    handshakeMs: 5000,
  });
  const frames: F[] = [];
  sec.onFrame = (f) => frames.push(decodeCbor(f) as F);
  const client = new SyncSession(a.sync, ca, "client", "hand");
  await sec.ready;
  const send = (t: string, fields: Record<string, unknown>) =>
    sec.send(encodeCbor(new Map<string, unknown>([["t", t], ...Object.entries(fields)]) as never));
  const next = async (t: string) => {
    await until(() => frames.some((f) => f.get("t") === t) || client.state === "closed");
    const i = frames.findIndex((f) => f.get("t") === t);
    if (i < 0) throw new Error(`no "${t}": ${client.closeReason}`);
    return frames.splice(i, 1)[0]!;
  };
  return { client, send, next };
}

Deno.test("The initiator reconciles the range sub.ok echoes: none (an older peer) is the whole group; a wider one is BAD_FRAME", async () => {
  const a = await tempNode();
  try {
    const g = await testGroup();
    const gid = toHex(g.gid);
    const { common, onlyA } = await threeDays(g);
    await a.node.publish([g.manifest, ...common, ...onlyA.flat()]);
    const mine = new VectorStorage();
    for (const [id, ts] of await held(a.node, gid)) {
      mine.insert(
        ts,
        Uint8Array.from(id.match(/../g)!, (h) => parseInt(h, 16)),
      );
    }
    mine.seal();
    const firstNeg = (since: number, until: number) =>
      toHex(new Reconciler(new SubRange(mine, since, until)).initiate());
    for (
      const [echo, expect] of [
        [{ since: day(1), until: day(2) }, firstNeg(day(1), day(2))],
        [{ since: day(1) + 10, until: day(1) + 20 }, firstNeg(day(1) + 10, day(1) + 20)],
        [{}, firstNeg(0, Infinity)],
      ] as const
    ) {
      const h = await handResponder(a.node);
      h.client.sync(gid, { since: day(1), until: day(2) }).catch(() => {});
      const sub = await h.next("sub");
      assertEquals([sub.get("since"), sub.get("until")], [day(1), day(2)]);
      h.send("sub.ok", { gid, root: "00".repeat(32), count: 0, ...echo });
      const neg = await h.next("neg");
      assertEquals(toHex(neg.get("msg") as Uint8Array), expect, JSON.stringify(echo));
      h.client.close();
    }
    for (
      const echo of [{ since: day(1) - 1, until: day(2) }, { since: day(1) }, { since: day(1), until: day(2) + 1 }, {
        until: day(2),
      }]
    ) {
      const h = await handResponder(a.node);
      h.client.sync(gid, { since: day(1), until: day(2) }).catch(() => {});
      await h.next("sub");
      h.send("sub.ok", { gid, root: "00".repeat(32), count: 0, ...echo });
      await until(() => h.client.state === "closed");
      assert(h.client.closeReason.startsWith("BAD_FRAME"), `${JSON.stringify(echo)}: ${h.client.closeReason}`);
    }
  } finally {
    await a.done();
  }
});

Deno.test("POST /v1/sync/once with since and until syncs that range over a real socket and reports it", async () => {
  const a = await tempNode(), b = await tempNode();
  const sb = await serve(b.node, { host: "127.0.0.1", port: 0 });
  try {
    const g = await testGroup();
    const gid = toHex(g.gid);
    const { common, onlyA, onlyB } = await threeDays(g);
    await a.node.publish([g.manifest, ...common, ...onlyA.flat()]);
    await b.node.publish([g.manifest, ...common, ...onlyB.flat()]);
    const app = createApp(a.node, { remoteAddr: () => "127.0.0.1" });
    const r = await app.request("/v1/sync/once", {
      method: "POST",
      body: JSON.stringify({ peer: sb.url.replace("http", "ws"), groups: [gid], since: day(2) }),
    });
    const body = await r.json();
    assertEquals(r.status, 200, JSON.stringify(body));
    assertEquals(body.ranges, { [gid]: { since: day(2), until: null } });
    assertEquals(body.eventsSent, 4);
    // Day 2 on: 20 common, 2 of b's, 4 of a's, and the manifest (made now).
    await until(async () => (await idsIn(b.node, gid, day(2), Infinity)).length === 27);
    assertEquals(await idsIn(a.node, gid, day(2), Infinity), await idsIn(b.node, gid, day(2), Infinity));
    assertEquals((await idsIn(b.node, gid, 0, day(2))).length, 40 + 9);
  } finally {
    a.node.sync.close();
    await sb.shutdown();
    await a.done();
    await b.done();
  }
});

Deno.test("XfClient.syncOnce(peer, {since, until}) asks the node for a partial sync and gets its report", async () => {
  const a = await tempNode(), b = await tempNode();
  const sa = await serve(a.node, { host: "127.0.0.1", port: 0 });
  const sb = await serve(b.node, { host: "127.0.0.1", port: 0 });
  try {
    const g = await testGroup();
    const gid = toHex(g.gid);
    const { common, onlyA, onlyB } = await threeDays(g);
    await a.node.publish([g.manifest, ...common, ...onlyA.flat()]);
    await b.node.publish([g.manifest, ...common, ...onlyB.flat()]);
    const client = new XfClient(sa.url);
    // The client checks the range before asking.
    await assertRejects(() => client.syncOnce("ws://127.0.0.1:1", { since: 5, until: 5 }), TypeError, "before until");
    const report = await client.syncOnce(sb.url.replace("http", "ws"), { groups: [gid], since: day(1), until: day(2) });
    assertEquals(report.ranges, { [gid]: { since: day(1), until: day(2) } });
    // Day 1 only: a sends its day-1 events and takes b's; days 0 and 2 are left as they were.
    assertEquals(report.eventsSent, onlyA[1]!.length);
    // Received: b's day-1 events, and the manifest b pushes after sub.ok (held already: a duplicate).
    assertEquals(report.eventsReceived, onlyB[1]!.length + 1);
    assertEquals(report.eventsRejected, 0);
    await until(async () =>
      (await idsIn(b.node, gid, day(1), day(2))).length === (await idsIn(a.node, gid, day(1), day(2))).length
    );
    assertEquals(await idsIn(a.node, gid, day(1), day(2)), await idsIn(b.node, gid, day(1), day(2)));
    assert((await idsIn(a.node, gid, day(2), Infinity)).length !== (await idsIn(b.node, gid, day(2), Infinity)).length);
    // A node that is not on loopback to the caller and holds no operator token would refuse; a bad peer is 400.
    await assertRejects(() => client.syncOnce("http://nope"), XfClientError, "expected ws://");
  } finally {
    a.node.sync.close();
    await sa.shutdown();
    await sb.shutdown();
    await a.done();
    await b.done();
  }
});
