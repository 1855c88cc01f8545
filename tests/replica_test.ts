// The replica (storage/replica_store.ts, client/replica.ts): admission as the node's, sync with a real node over
// /v1/sync (MemoryKv and fake-indexeddb), link cuts, offline publishing, a hostile node, closed groups, the Worker.
import "fake-indexeddb/auto";
import { assert, assertEquals } from "@std/assert";
import { closedGroup, makeEvents, tempNode, testGroup, until } from "./_helpers.ts";
import { tcpProxy } from "./_proxy.ts";
import { serve } from "../net/server.ts";
import { MemoryKv } from "../storage/kv.ts";
import { openIndexedDb } from "../storage/kv_idb.ts";
import { checkEvents, ReplicaStore } from "../storage/replica_store.ts";
import { generateKeyPair } from "../storage/ed25519.ts";
import { createGroup, signEvent } from "../storage/event.ts";
import { ACTION_ADD, ACTION_REMOVE, encodeMembership } from "../storage/membership.ts";
import { openReplica, type Replica, workerChecker } from "../client/replica.ts";
import { textPayload } from "../client/payload.ts";
import { toHex } from "../core/bytes.ts";
import { ByteBudget, type SyncHost, SyncSession } from "../net/sync.ts";
import { LIMITS } from "../core/limits.ts";
import { XfClientError } from "../client/errors.ts";

const opts = { sanitizeOps: false, sanitizeResources: false };

/** A node served on port 0 behind a proxy that can cut the link. */
async function servedNode() {
  const t = await tempNode();
  const http = await serve(t.node, { host: "127.0.0.1", port: 0 });
  const proxy = tcpProxy(http.port);
  return {
    node: t.node,
    url: proxy.url,
    proxy,
    async done() {
      await proxy.close();
      await http.shutdown();
      await t.done();
    },
  };
}

async function rootsMatch(r: Replica, node: Awaited<ReturnType<typeof servedNode>>["node"], gid: string) {
  const [a, b] = [await r.root(gid), await node.merkle(gid)];
  return b !== null && a.root === b.root && a.count === b.count;
}

Deno.test("ReplicaStore admits and refuses each event as the node does (same codes, same root)", async () => {
  const t = await tempNode();
  try {
    const owner = await generateKeyPair(), member = await generateKeyPair(), stranger = await generateKeyPair();
    const { gid, manifest } = await createGroup(owner, { name: "c", policy: 1 });
    const ts = Date.now() - 10_000;
    const ev = (key: typeof owner, kind: number, payload: Uint8Array, at: number, group = gid) =>
      signEvent(key, { group, ts: at, kind, tags: [], payload });
    const add = await ev(owner, 1, encodeMembership({ action: ACTION_ADD, member: member.publicKey }), ts);
    const byMember = await ev(member, 16, textPayload("hi"), ts + 1);
    const early = await ev(member, 16, textPayload("before added"), ts - 1);
    const byStranger = await ev(stranger, 16, textPayload("no"), ts + 2);
    const forged = await ev(stranger, 1, encodeMembership({ action: ACTION_ADD, member: stranger.publicKey }), ts + 3);
    const remove = await ev(owner, 1, encodeMembership({ action: ACTION_REMOVE, member: member.publicKey }), ts + 5);
    const afterRemoved = await ev(member, 16, textPayload("after removal"), ts + 6);
    const future = await ev(owner, 16, textPayload("future"), Date.now() + LIMITS.event_future_ms + 60_000);
    const reserved = await ev(owner, 5, textPayload("reserved"), ts + 7);
    const tampered = byMember.bytes.slice();
    tampered[tampered.length - 1]! ^= 1;
    const other = await testGroup("other");
    const orphan = (await makeEvents(other, 1))[0]!;
    // Fed one at a time, in the same order, to the node and to the replica store.
    const seq = [
      orphan.bytes,
      manifest.bytes,
      add.bytes,
      byMember.bytes,
      early.bytes,
      byStranger.bytes,
      forged.bytes,
      tampered,
      remove.bytes,
      afterRemoved.bytes,
      future.bytes,
      reserved.bytes,
      byMember.bytes,
    ];
    const store = await ReplicaStore.open(new MemoryKv());
    const mine: string[] = [], node: string[] = [];
    for (const b of seq) {
      const [r] = await store.apply([b]);
      mine.push(r!.status === "rejected" ? r!.code! : r!.status);
      const [n] = await t.node.publish([b]);
      node.push(n!.status === "rejected" ? n!.code! : n!.status);
    }
    assertEquals(mine, node);
    assertEquals(mine, [
      "UNKNOWN_GROUP",
      "stored",
      "stored",
      "stored",
      "FORBIDDEN",
      "FORBIDDEN",
      "FORBIDDEN",
      "BAD_SIGNATURE",
      "stored",
      "FORBIDDEN",
      "TS_IN_FUTURE",
      "RESERVED_KIND",
      "duplicate",
    ]);
    const g = toHex(gid);
    assertEquals((await store.root(g)).root, (await t.node.merkle(g))!.root);
    // One batch in any order: the manifest and membership admit what they must, whatever their place.
    const shuffled = await ReplicaStore.open(new MemoryKv());
    const res = await shuffled.apply([byMember.bytes, add.bytes, manifest.bytes, remove.bytes], { gid: g });
    assertEquals(res.map((r) => r.status), ["stored", "stored", "stored", "stored"]);
    const wrong = await shuffled.apply([orphan.bytes], { gid: g });
    assertEquals(wrong[0]!.code, "GROUP_MISMATCH");
    assertEquals((await shuffled.root(g)).count, 4);
  } finally {
    await t.done();
  }
});

for (const backend of ["memory", "indexeddb"] as const) {
  Deno.test({
    name: `Replica (${backend}) and node converge over /v1/sync through link cuts, writing on both sides`,
    ...opts,
    async fn() {
      const n = await servedNode();
      const key = await generateKeyPair();
      const g = await testGroup("cuts");
      const gid = toHex(g.gid);
      await n.node.publish([g.manifest, ...await makeEvents(g, 300)]);
      const store = backend === "memory" ? new MemoryKv() : await openIndexedDb(`replica-cuts-${crypto.randomUUID()}`);
      const r = await openReplica({ key, groups: [gid], store, nodes: [n.url] });
      try {
        await r.whenSynced(10_000);
        await until(() => rootsMatch(r, n.node, gid), 10_000);
        assertEquals((await r.root(gid)).count, 301);
        for (let round = 0; round < 3; round++) {
          n.proxy.cut();
          await until(() => r.progress().online === 0, 5000);
          await r.publish(gid, { kind: 16, payload: textPayload(`offline ${round}`) });
          await n.node.publish(await makeEvents(g, 20, Date.now() - 50_000 + round * 100));
          n.proxy.restore();
          await until(() => rootsMatch(r, n.node, gid), 15_000);
        }
        // Live: a node event arrives while connected; a replica event reaches the node.
        await n.node.publish(await makeEvents(g, 5, Date.now() - 1_000));
        await r.publish(gid, { kind: 16, payload: textPayload("live") });
        await until(() => rootsMatch(r, n.node, gid), 10_000);
        await until(() => r.progress().unsent === 0, 10_000);
        assertEquals((await r.root(gid)).count, 301 + 60 + 3 + 5 + 1);
      } finally {
        await r.close();
        await n.done();
      }
    },
  });
}

Deno.test({
  name: "Replica publishes 1,000 events offline, persists them, and on reconnect ends on the node's root",
  ...opts,
  async fn() {
    const n = await servedNode();
    const key = await generateKeyPair();
    const g = await testGroup("offline");
    const gid = toHex(g.gid);
    await n.node.publish([g.manifest, ...await makeEvents(g, 50)]);
    const name = `replica-offline-${crypto.randomUUID()}`;
    let r = await openReplica({ key, groups: [gid], store: await openIndexedDb(name), nodes: [n.url] });
    try {
      await r.whenSynced(10_000);
      n.proxy.cut();
      await until(() => r.progress().online === 0, 5000);
      const ts0 = Date.now() - 20_000;
      for (let i = 0; i < 1000; i++) {
        await r.publish(gid, { kind: 16, payload: textPayload(`offline ${i}`), ts: ts0 + i });
      }
      assertEquals(r.progress().unsent, 1000);
      // Closed and opened again from the same IndexedDB: still there, still unsent.
      await r.close();
      r = await openReplica({ key, groups: [gid], store: await openIndexedDb(name) });
      assertEquals((await r.root(gid)).count, 1051);
      assertEquals(r.progress().unsent, 1000);
      const before = (await n.node.merkle(gid))!.count;
      assertEquals(before, 51);
      n.proxy.restore();
      r.addNode(n.url);
      await until(() => rootsMatch(r, n.node, gid), 20_000);
      await until(() => r.progress().unsent === 0, 10_000);
      assertEquals((await n.node.merkle(gid))!.count, 1051);
      assert(r.progress().sent >= 1000, `sent ${r.progress().sent}`);
    } finally {
      await r.close();
      await n.done();
    }
  },
});

Deno.test({
  name: "Replica refuses a hostile node's tampered events (bad signature, wrong group) and keeps the rest",
  ...opts,
  async fn() {
    // A fake node: a real responder session over a store whose reads are tampered with.
    const owner = await generateKeyPair();
    const g = await testGroup("hostile");
    const gid = toHex(g.gid);
    const honest = await ReplicaStore.open(new MemoryKv());
    const events = await makeEvents(g, 40);
    const other = await testGroup("elsewhere");
    const foreign = (await makeEvents(other, 1))[0]!;
    await honest.apply([g.manifest.bytes, ...events.map((e) => e.bytes)]);
    const tamperedIds = new Set([toHex(events[3]!.id), toHex(events[7]!.id)]);
    const nodeKey = await generateKeyPair();
    const host: SyncHost = {
      key: nodeKey,
      limits: LIMITS,
      memory: new ByteBudget(LIMITS.sync_memory_bytes_max),
      access: (id, peer) => honest.access(id, peer),
      reconcile: (id, s, m) => honest.reconcile(id, s, m),
      getMany: async (ids, max) =>
        (await honest.getMany(ids, max)).map((b, i) => {
          const id = toHex(ids.subarray(i * 32, i * 32 + 32));
          if (!b || !tamperedIds.has(id)) return id === toHex(events[9]!.id) ? foreign.bytes : b;
          const x = b.slice();
          x[x.length - 5]! ^= 0x40; // inside the signature
          return x;
        }),
      admission: (id) => honest.admission(id),
      submit: (id, evs) => honest.apply(evs, { gid: id }),
      subscribe: (id, cb) => Promise.resolve(((u) => () => Promise.resolve(u()))(honest.subscribe(id, cb))),
      groups: () => Promise.resolve([gid]),
      report: () => {},
    };
    const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
      const { socket, response } = Deno.upgradeWebSocket(req);
      socket.binaryType = "arraybuffer";
      socket.onopen = () => {
        const ch = {
          send: (f: Uint8Array) => socket.readyState === 1 && socket.send(f),
          close: () => socket.close(),
          onFrame: null as ((f: Uint8Array) => void) | null,
          onClose: null as ((r: string) => void) | null,
        };
        socket.onmessage = (e) => ch.onFrame?.(new Uint8Array(e.data as ArrayBuffer));
        socket.onclose = () => ch.onClose?.("closed");
        new SyncSession(host, ch, "server");
      };
      return response;
    });
    const url = `http://127.0.0.1:${(server.addr as Deno.NetAddr).port}`;
    const r = await openReplica({ key: owner, groups: [gid], store: new MemoryKv(), nodes: [url] });
    try {
      // The sync never completes (the ids it asked for never come): wait for what honest events there are.
      await until(async () => (await r.query(gid)).length >= 38, 10_000);
      await new Promise((res) => setTimeout(res, 300));
      const held = new Set((await r.query(gid)).map((e) => e.id));
      assertEquals(held.size, 41 - 3, "the manifest and 37 honest events");
      for (const id of tamperedIds) assert(!held.has(id), "a tampered event was stored");
      assert(!held.has(toHex(events[9]!.id)) && !held.has(toHex(foreign.id)), "an event of another group was stored");
      assert(held.has(toHex(events[8]!.id)));
      // Whatever it holds verifies: its root is that of exactly the events it kept.
      const check = await ReplicaStore.open(new MemoryKv());
      await check.apply([g.manifest.bytes, ...events.filter((e) => held.has(toHex(e.id))).map((e) => e.bytes)]);
      assertEquals((await r.root(gid)).root, (await check.root(gid)).root);
    } finally {
      await r.close();
      await server.shutdown();
    }
  },
});

Deno.test({
  name: "Replica of a closed group: a non-member gets nothing and cannot write; a member syncs both ways",
  ...opts,
  async fn() {
    const n = await servedNode();
    const c = await closedGroup(n.node);
    const gid = toHex(c.gid);
    await n.node.publish(await makeEvents({ owner: c.owner, gid: c.gid, manifest: c.manifest }, 20));
    const outsider = await openReplica({
      key: await generateKeyPair(),
      groups: [gid],
      nodes: [n.url],
      store: new MemoryKv(),
    });
    const member = await openReplica({ key: c.member, groups: [gid], nodes: [n.url], store: new MemoryKv() });
    try {
      await member.whenSynced(10_000);
      await until(() => rootsMatch(member, n.node, gid), 10_000);
      await outsider.whenSynced(10_000); // refused: a sync that ends with nothing
      assertEquals((await outsider.root(gid)).count, 0);
      assertEquals(await outsider.query(gid), []);
      // The outsider cannot even write locally: it does not hold the group (as a node without the manifest).
      const e = await outsider.publish(gid, { kind: 16, payload: textPayload("x") }).catch((e) => e);
      assert(e instanceof XfClientError && e.code === "UNKNOWN_GROUP", String(e));
      await member.publish(gid, { kind: 16, payload: textPayload("from the member's device") });
      await until(() => rootsMatch(member, n.node, gid), 10_000);
      assertEquals((await n.node.merkle(gid))!.count, 23);
    } finally {
      await outsider.close();
      await member.close();
      await n.done();
    }
  },
});

Deno.test({
  name: "A group created on the replica offline reaches the node (manifest by HTTP, the rest by sync)",
  ...opts,
  async fn() {
    const n = await servedNode();
    const key = await generateKeyPair();
    const r = await openReplica({ key, store: new MemoryKv() });
    try {
      const { gid: g, manifest } = await createGroup(key, { name: "made offline", policy: 1 });
      const gid = toHex(g);
      await r.add([manifest.bytes]);
      for (let i = 0; i < 10; i++) await r.publish(gid, { kind: 16, payload: textPayload(`note ${i}`) });
      r.addNode(n.url);
      await until(() => rootsMatch(r, n.node, gid), 10_000);
      await until(() => r.progress().unsent === 0, 10_000);
      assertEquals((await n.node.merkle(gid))!.count, 11);
    } finally {
      await r.close();
      await n.done();
    }
  },
});

Deno.test("checkEvents in a Worker answers as on this thread (ids, signatures, strict decode)", async () => {
  const g = await testGroup("worker");
  const evs = (await makeEvents(g, 50)).map((e) => e.bytes);
  const bad = evs[4]!.slice();
  bad[bad.length - 2]! ^= 1;
  const batch = [...evs, bad, new Uint8Array([0x80])];
  const w = new Worker(new URL("../client/replica_worker.ts", import.meta.url), { type: "module" });
  const c = workerChecker(w);
  try {
    const there = await c.check(batch);
    const here = await checkEvents(batch);
    assertEquals(there.ids, here.ids);
    assertEquals(there.errors.map((e) => e?.code ?? null), here.errors.map((e) => e?.code ?? null));
    assertEquals(here.errors.slice(49).map((e) => e?.code ?? null), [null, "BAD_SIGNATURE", "BAD_EVENT"]);
    // A replica over the Worker admits and refuses the same.
    const s = await ReplicaStore.open(new MemoryKv(), { checker: c.check });
    const res = await s.apply([g.manifest.bytes, ...batch]);
    assertEquals(res.filter((r) => r.status === "stored").length, 51);
  } finally {
    c.stop();
    w.terminate();
  }
});

Deno.test({
  name: "Replica with a window of days reconciles only its range (partial sync); events prune to the newest",
  ...opts,
  async fn() {
    const n = await servedNode();
    const g = await testGroup("window");
    const gid = toHex(g.gid);
    const old = await makeEvents(g, 100, Date.now() - 5 * 86_400_000);
    const recent = await makeEvents(g, 30, Date.now() - 3_600_000);
    await n.node.publish([g.manifest, ...old, ...recent]);
    const key = await generateKeyPair();
    const r = await openReplica({ key, groups: [gid], store: new MemoryKv(), nodes: [n.url], window: { days: 1 } });
    try {
      await r.whenSynced(10_000);
      await until(async () => (await r.query(gid)).length === 31, 5000);
      assertEquals((await r.root(gid)).count, 31, "the manifest and the day's 30: nothing older came");
      assert(r.progress().received <= 31, `received ${r.progress().received}`);
      // A new event at the node, then a fresh session: only it comes.
      const received = r.progress().received;
      await n.node.publish(await makeEvents(g, 1, Date.now() - 60_000)); // before the manifest (made last), in the day
      n.proxy.cut();
      n.proxy.restore();
      await until(async () => (await r.query(gid)).length === 32, 10_000);
      assert(r.progress().received - received <= 1, `received ${r.progress().received - received} again`);
      // keepEvents: the newest 5 events stay (the manifest, made last, is one of them; it is never pruned anyway).
      while ((await r.store.prune(gid, { keepEvents: 5 })) > 0);
      assertEquals((await r.query(gid)).map((e) => e.kind === 0 ? "m" : "e").join(""), "eeeem");
      while ((await r.store.prune(gid, { keepEvents: 0 })) > 0);
      assertEquals((await r.query(gid)).map((e) => e.kind === 0 ? "m" : "e").join(""), "m");
    } finally {
      await r.close();
      await n.done();
    }
  },
});

Deno.test({
  name: "Replica with a pinned node key syncs with that node and refuses another (BAD_AUTH, nothing taken)",
  ...opts,
  async fn() {
    const n = await servedNode();
    const g = await testGroup("pinned");
    const gid = toHex(g.gid);
    await n.node.publish([g.manifest, ...await makeEvents(g, 10)]);
    const errors: string[] = [];
    const wrong = await openReplica({
      key: await generateKeyPair(),
      groups: [gid],
      store: new MemoryKv(),
      nodes: [{ url: n.url, key: toHex((await generateKeyPair()).publicKey) }],
    });
    wrong.addEventListener("error", (e) => errors.push((e as CustomEvent).detail.message));
    const right = await openReplica({
      key: await generateKeyPair(),
      groups: [gid],
      store: new MemoryKv(),
      nodes: [{ url: n.url, key: toHex(n.node.key.publicKey) }],
    });
    try {
      await right.whenSynced(10_000);
      assertEquals((await right.root(gid)).count, 11);
      await until(() => errors.length > 0, 5000);
      assert(errors[0]!.includes("not the pinned"), errors[0]);
      assertEquals((await wrong.root(gid)).count, 0);
    } finally {
      await wrong.close();
      await right.close();
      await n.done();
    }
  },
});

Deno.test("ReplicaStore: a membership event refused on a read error leaves the group's members as they were", async () => {
  // Before the fix, #step recorded the new membership in the write's state before reading the retention boundary;
  // a read error there refused the event, but the write stored (and cached) the state with the change: a key never
  // added could read the closed group (simulation seed 116).
  class FlakyKv extends MemoryKv {
    failSettings = false;
    override get(key: Uint8Array): Promise<Uint8Array | undefined> {
      if (this.failSettings && new TextDecoder().decode(key.subarray(1)).startsWith("settings:")) {
        return Promise.reject(new Error("simulated read error"));
      }
      return super.get(key);
    }
  }
  const kv = new FlakyKv();
  const owner = await generateKeyPair(), stranger = await generateKeyPair();
  const { gid, manifest } = await createGroup(owner, { name: "c", policy: 1 });
  const first = await ReplicaStore.open(kv);
  assertEquals((await first.apply([manifest.bytes], { local: true }))[0]!.status, "stored");
  const add = await signEvent(owner, {
    group: gid,
    ts: Date.now() - 1_000,
    kind: 1,
    tags: [],
    payload: encodeMembership({ action: ACTION_ADD, member: stranger.publicKey }),
  });
  // A fresh store: nothing cached, so the write reads the group's settings (and fails).
  const store = await ReplicaStore.open(kv);
  kv.failSettings = true;
  const [r] = await store.apply([add.bytes], { local: true });
  assertEquals(r!.status, "rejected");
  assertEquals((await store.access(toHex(gid), stranger.publicKey)).readable, false, "in memory");
  kv.failSettings = false;
  const reopened = await ReplicaStore.open(kv);
  assertEquals((await reopened.access(toHex(gid), stranger.publicKey)).readable, false, "as stored");
  // Once the read works, the same event is taken.
  assertEquals((await store.apply([add.bytes], { local: true }))[0]!.status, "stored");
  assertEquals((await store.access(toHex(gid), stranger.publicKey)).readable, true);
});
