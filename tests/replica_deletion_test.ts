// The browser replica's store applies deletion (kind 2) and retention (kind 3) as a node does: the same codes, the
// same root, the same deleted set; sync with a node moves deletions both ways and settles; a peer sending a deleted
// event again is refused DELETED.
import { assert, assertEquals } from "@std/assert";
import { toHex } from "../core/bytes.ts";
import { LIMITS } from "../core/limits.ts";
import { MemoryKv } from "../storage/kv.ts";
import { KS } from "../storage/keys.ts";
import { ReplicaStore } from "../storage/replica_store.ts";
import { generateKeyPair, type KeyPair } from "../storage/ed25519.ts";
import { KIND_MEMBERSHIP, KIND_SETTINGS, KIND_TOMBSTONE, signEvent, type StoredEvent } from "../storage/event.ts";
import { encodeTombstone } from "../storage/deletion.ts";
import { encodeSettings, type Settings } from "../storage/retention.ts";
import { ACTION_MAKE_ADMIN, encodeMembership } from "../storage/membership.ts";
import { channelPair } from "../net/peers.ts";
import { ByteBudget, type SyncHost, SyncSession } from "../net/sync.ts";
import type { XfNode } from "../node.ts";
import { makeEvents, tempNode, testGroup, until } from "./_helpers.ts";

const enc = new TextEncoder();
type G = { gid: Uint8Array; owner: KeyPair };

const post = (key: KeyPair, g: G, text: string, ts: number) =>
  signEvent(key, { group: g.gid, ts, kind: 16, tags: [], payload: enc.encode(text) });
const tomb = (key: KeyPair, g: G, targets: (StoredEvent | Uint8Array)[], ts: number) =>
  signEvent(key, {
    group: g.gid,
    ts,
    kind: KIND_TOMBSTONE,
    tags: [],
    payload: encodeTombstone(targets.map((t) => t instanceof Uint8Array ? t : t.id)),
  });
const settings = (key: KeyPair, g: G, s: Settings, ts: number) =>
  signEvent(key, { group: g.gid, ts, kind: KIND_SETTINGS, tags: [], payload: encodeSettings(s) });
const member = (key: KeyPair, g: G, action: number, who: KeyPair, ts: number) =>
  signEvent(key, {
    group: g.gid,
    ts,
    kind: KIND_MEMBERSHIP,
    tags: [],
    payload: encodeMembership({ action: action as 0, member: who.publicKey }),
  });

/** A replica store as a sync peer: what `Replica` hands its sessions (the store's boundary as `retained`). */
function storeHost(store: ReplicaStore, key: KeyPair, gid: string): SyncHost {
  return {
    key,
    limits: LIMITS,
    memory: new ByteBudget(LIMITS.sync_memory_bytes_max),
    access: async (g, peer) => ({ ...(await store.access(g, peer)), readable: true }),
    retained: (g) => store.retained(g),
    reconcile: (g, s, m, r) => store.reconcile(g, s, m, r),
    getMany: (ids, max) => store.getMany(ids, max),
    admission: (g) => store.admission(g),
    submit: (g, evs) => store.apply(evs, { gid: g }),
    subscribe: (g, cb) => Promise.resolve(((u) => () => Promise.resolve(u()))(store.subscribe(g, cb))),
    groups: () => Promise.resolve([gid]),
    report: () => {},
  };
}

/** A node's answer as what it holds: it acknowledges an event before its index judges it (a pending tombstone). */
async function nodeCode(node: XfNode, ev: StoredEvent): Promise<string> {
  const [r] = await node.publish([ev]);
  if (r!.status !== "stored") return r!.code ?? r!.status;
  const id = toHex(ev.id);
  await until(async () => (await node.get(id)) !== null || (await node.deletedIn(id)) !== null);
  return (await node.get(id)) === null ? "DELETED" : "stored";
}

Deno.test("ReplicaStore and a node answer the same codes and keep the same root through tombstones and settings", async () => {
  const t = await tempNode();
  try {
    const g = await testGroup("del");
    const gid = toHex(g.gid);
    const [alice, bob, carol, dave] = [
      await generateKeyPair(),
      await generateKeyPair(),
      await generateKeyPair(),
      await generateKeyPair(),
    ];
    const base = Date.now() - 500_000;
    let ts = base;
    const at = () => ts += 10;
    const p1 = await post(alice, g, "p1", at()), p2 = await post(alice, g, "p2", at());
    const p3 = await post(bob, g, "p3", at()), p5 = await post(alice, g, "p5", at());
    const admin = await member(g.owner, g, ACTION_MAKE_ADMIN, dave, at());
    const later = await post(alice, g, "arrives after its tombstone", at());
    const bobs = await post(bob, g, "bob's, after alice's tombstone names it", at());
    const hers = await post(alice, g, "hers", at());
    const olds = await makeEvents(g, 12, at(), carol);
    ts += 100;
    const x1 = await tomb(alice, g, [p1], at()); // the author
    const x2 = await tomb(g.owner, g, [p2], at()); // the owner
    const x3 = await tomb(dave, g, [p3], at()); // an admin
    const x4 = await tomb(carol, g, [p5], at()); // FORBIDDEN: not hers
    const x5 = await tomb(alice, g, [g.manifest], at()); // FORBIDDEN: never deleted
    const x6 = await tomb(g.owner, g, [x1], at()); // FORBIDDEN: a tombstone
    const x7 = await tomb(alice, g, [later], at()); // pending, then valid
    const x8 = await tomb(alice, g, [bobs, hers], at()); // deletes hers; dropped when bob's arrives
    const s1 = await settings(carol, g, { retention_events: 5 }, at()); // FORBIDDEN: not an admin
    // By events: the 10th newest is olds[8] (the manifest, stamped now, is the newest). By ms, from the manifest's
    // ts back to olds[5]: the boundary goes down, and olds[6] may come back.
    const s2 = await settings(g.owner, g, { retention_events: 10 }, at());
    const s3 = await settings(dave, g, { retention_ms: g.manifest.ts - (base + 95) }, at());
    const steps: [StoredEvent, string][] = [
      [g.manifest, "stored"],
      [admin, "stored"],
      ...[p1, p2, p3, p5, hers, ...olds].map((e): [StoredEvent, string] => [e, "stored"]),
      [x1, "stored"],
      [x2, "stored"],
      [x3, "stored"],
      [x4, "FORBIDDEN"],
      [x5, "FORBIDDEN"],
      [x6, "FORBIDDEN"],
      [p1, "DELETED"],
      [x7, "stored"],
      [later, "DELETED"],
      [x8, "stored"],
      [bobs, "stored"],
      [hers, "stored"],
      [x8, "FORBIDDEN"],
      [s1, "FORBIDDEN"],
      [s2, "stored"],
      [olds[0]!, "EXPIRED"],
      [s3, "stored"],
      [olds[6]!, "stored"],
      [olds[2]!, "EXPIRED"],
      [p5, "EXPIRED"],
    ];
    const store = await ReplicaStore.open(new MemoryKv());
    for (const [ev, want] of steps) {
      const [r] = await store.apply([ev.bytes]);
      const mine = r!.code ?? r!.status;
      const node = await nodeCode(t.node, ev);
      assertEquals([mine, node], [want, want], `event ${toHex(ev.id).slice(0, 8)} (kind ${ev.kind})`);
      // The node prunes in its own writes: same root once it has.
      await until(async () => (await store.root(gid)).root === (await t.node.merkle(gid))!.root);
      // The node's decode stage learns a moved boundary by a signal after the index's write.
      if (ev.kind === KIND_SETTINGS) await new Promise((r) => setTimeout(r, 100));
    }
    for (const e of [p1, p2, p3, later]) {
      assertEquals(await store.get(toHex(e.id)), null);
      assert(await store.deleted(toHex(e.id)));
      assertEquals(await t.node.deletedIn(toHex(e.id)), gid);
    }
    assert(!(await store.deleted(toHex(hers.id))), "the dropped tombstone's entries went");
    assertEquals(await store.retained(gid), base + 95);
    assertEquals((await store.settings(gid))?.id, toHex(s3.id));
    const held = (await store.query(gid)).length;
    assertEquals(held, (await t.node.query({ gid, limit: 1000 }))!.events.length);
  } finally {
    await t.done();
  }
});

Deno.test("Targets leave the store in the tombstone's batch: query, unsent marks and subscribers", async () => {
  const g = await testGroup("local");
  const gid = toHex(g.gid);
  const store = await ReplicaStore.open(new MemoryKv());
  const evs = await makeEvents(g, 6);
  await store.apply([g.manifest.bytes, ...evs.map((e) => e.bytes)], { local: true });
  const seen: string[] = [];
  store.subscribe(gid, (bytes) => seen.push(...bytes.map((b) => toHex(b))));
  const x = await tomb(g.owner, g, [evs[1]!, evs[4]!], Date.now());
  const before = (await store.root(gid)).count;
  assertEquals((await store.apply([x.bytes], { local: true })).map((r) => r.status), ["stored"]);
  assertEquals(seen, [toHex(x.bytes)], "subscribers get the tombstone as an event");
  const q = (await store.query(gid)).map((b) => toHex(b));
  assertEquals(q.length, 1 + 6 - 2 + 1);
  assert(!q.includes(toHex(evs[1]!.bytes)) && !q.includes(toHex(evs[4]!.bytes)));
  const unsent = await store.unsent(gid);
  assert(!unsent.includes(toHex(evs[1]!.id)) && unsent.includes(toHex(x.id)), "a deleted unsent event is not unsent");
  assertEquals((await store.root(gid)).count, before - 2 + 1);
  // Target and tombstone in one write: both answered stored (as a node acknowledges both), the target not held.
  const y = await post(g.owner, g, "undone in its own write", Date.now() - 5);
  const xy = await tomb(g.owner, g, [y], Date.now());
  assertEquals((await store.apply([y.bytes, xy.bytes])).map((r) => r.status), ["stored", "stored"]);
  assertEquals(await store.get(toHex(y.id)), null);
  assertEquals((await store.apply([y.bytes]))[0]!.code, "DELETED");
  await store.close();
});

/** Pipe a replica store (client: it initiates) to a node in-process. */
function link(store: ReplicaStore, key: KeyPair, gid: string, node: XfNode) {
  const [ca, cb] = channelPair();
  const server = new SyncSession(node.sync, cb, "server", "in-process");
  const client = new SyncSession(storeHost(store, key, gid), ca, "client", "in-process");
  return { client, server };
}

Deno.test("A replica and a node sync deletions both ways and a retention change: same root, nothing moves twice", async () => {
  const t = await tempNode();
  try {
    const g = await testGroup("sync");
    const gid = toHex(g.gid);
    const evs = await makeEvents(g, 60, Date.now() - 600_000);
    const store = await ReplicaStore.open(new MemoryKv());
    await store.apply([g.manifest.bytes, ...evs.map((e) => e.bytes)]);
    await t.node.publish([g.manifest, ...evs]);
    // Offline from each other: the node deletes two, the replica two others and sets retention.
    await t.node.publish(await tomb(g.owner, g, [evs[30]!, evs[40]!], Date.now() - 1000));
    await store.apply([(await tomb(g.owner, g, [evs[35]!, evs[50]!], Date.now() - 900)).bytes], { local: true });
    await store.apply([(await settings(g.owner, g, { retention_events: 30 }, Date.now() - 800)).bytes], {
      local: true,
    });
    const { client, server } = link(store, g.owner, gid, t.node);
    try {
      assert(await client.ready());
      await client.sync(gid);
      await until(async () => (await store.root(gid)).root === (await t.node.merkle(gid))!.root, 10_000);
      for (const e of [evs[30]!, evs[35]!, evs[40]!, evs[50]!]) {
        assertEquals(await store.get(toHex(e.id)), null);
        assertEquals(await t.node.get(toHex(e.id)), null);
      }
      assertEquals(await store.get(toHex(evs[10]!.id)), null, "past the boundary on the replica");
      assertEquals(await t.node.get(toHex(evs[10]!.id)), null, "past the boundary on the node");
      assert(await store.get(toHex(evs[59]!.id)));
      const { eventsSent, eventsReceived } = client.stats;
      await client.sync(gid);
      assertEquals([client.stats.eventsSent - eventsSent, client.stats.eventsReceived - eventsReceived], [0, 0]);
      assertEquals((await store.root(gid)).root, (await t.node.merkle(gid))!.root);
    } finally {
      client.close();
      server.close();
    }
  } finally {
    await t.done();
  }
});

Deno.test("A hostile peer sending a deleted event again gets DELETED from the replica, which keeps its root", async () => {
  const g = await testGroup("hostile-del");
  const gid = toHex(g.gid);
  const evs = await makeEvents(g, 10);
  // The peer holds every event and takes nothing (it never learns the tombstone): it offers the target each sync.
  const peer = await ReplicaStore.open(new MemoryKv());
  await peer.apply([g.manifest.bytes, ...evs.map((e) => e.bytes)]);
  const store = await ReplicaStore.open(new MemoryKv());
  await store.apply([g.manifest.bytes, ...evs.map((e) => e.bytes)]);
  await store.apply([(await tomb(g.owner, g, [evs[4]!], Date.now())).bytes]);
  const root = (await store.root(gid)).root;
  const host = storeHost(peer, await generateKeyPair(), gid);
  host.submit = (_g, list) => Promise.resolve(list.map((_, i) => ({ req: 0, idx: i, status: "stored" as const })));
  const [ca, cb] = channelPair();
  const server = new SyncSession(host, cb, "server", "in-process");
  const client = new SyncSession(storeHost(store, g.owner, gid), ca, "client", "in-process");
  try {
    assert(await client.ready());
    await client.sync(gid);
    await until(() => client.stats.eventsRejected >= 1);
    assertEquals(await store.get(toHex(evs[4]!.id)), null);
    assert(await store.deleted(toHex(evs[4]!.id)));
    assertEquals((await store.root(gid)).root, root);
    assertEquals((await store.apply([evs[4]!.bytes], { gid }))[0]!.code, "DELETED");
  } finally {
    client.close();
    server.close();
    await store.close();
    await peer.close();
  }
});

/** A Kv whose event values come back with byte `at` flipped while `damage` is set (a bad disk read; `getMany` reads through `get`). */
class DamagingKv extends MemoryKv {
  damage = false;
  at = 40; // in the author
  #spoil(key: Uint8Array, v: Uint8Array | undefined): Uint8Array | undefined {
    if (!this.damage || !v || key[0] !== KS.event) return v;
    const out = v.slice();
    out[this.at]! ^= 0xff;
    return out;
  }
  override async get(key: Uint8Array): Promise<Uint8Array | undefined> {
    return this.#spoil(key, await super.get(key));
  }
}

// Found by the simulation (tests/_sim_net.ts, delete steps, seeds 129 and 189 with `deletesMore`): a deleted event
// sent again was judged against its tombstone as read from a disk that damaged the read; the signer read as
// another key "may not delete" it, so the plan dropped the valid tombstone for good and stored the event again.
Deno.test("A damaged read of a held tombstone fails the write (STORAGE_CORRUPTION) and never brings its target back", async () => {
  const g = await testGroup("damaged");
  const gid = toHex(g.gid);
  const alice = await generateKeyPair();
  const kv = new DamagingKv();
  const store = await ReplicaStore.open(kv);
  const now = Date.now();
  const p = await post(alice, g, "to delete", now - 2000);
  const x = await tomb(alice, g, [p], now - 1000);
  const codes = async (evs: StoredEvent[]) =>
    (await store.apply(evs.map((e) => e.bytes))).map((r) => r.code ?? r.status);
  assertEquals(await codes([g.manifest, p, x]), ["stored", "stored", "stored"]);
  assertEquals(await store.get(toHex(p.id)), null);
  const root = (await store.root(gid)).root;
  kv.damage = true;
  const err = await store.apply([p.bytes], { gid }).then(() => null, (e) => e);
  assertEquals(err?.code, "STORAGE_CORRUPTION", String(err));
  kv.damage = false;
  assert(await store.get(toHex(x.id)), "the tombstone is still held");
  assertEquals(await store.get(toHex(p.id)), null);
  assertEquals((await store.root(gid)).root, root);
  assertEquals(await codes([p]), ["DELETED"]);
  assert(await store.deleted(toHex(p.id)));
});

// Found by the simulation (seed 242): a retention prune read an event's bytes damaged (not an event, or a kind it
// keeps), went past it and never came back to it; the replica kept an event below the boundary its peers forgot.
Deno.test("A damaged read during a retention prune is not skipped for good: the next apply in the group prunes it", async () => {
  const g = await testGroup("damaged prune");
  const gid = toHex(g.gid);
  const kv = new DamagingKv();
  kv.at = 0; // not an event any more
  const store = await ReplicaStore.open(kv);
  const now = Date.now();
  const old = await post(g.owner, g, "old", now - 100_000);
  const fresh = await post(g.owner, g, "fresh", now - 1000);
  const s = await settings(g.owner, g, { retention_ms: 10_000 }, now - 500);
  const codes = async (evs: StoredEvent[]) =>
    (await store.apply(evs.map((e) => e.bytes))).map((r) => r.code ?? r.status);
  assertEquals(await codes([g.manifest, old, fresh]), ["stored", "stored", "stored"]);
  kv.damage = true;
  assertEquals(await codes([s]), ["stored"]); // written, whatever the prune does
  kv.damage = false;
  assert(await store.get(toHex(old.id)), "not pruned while its bytes read damaged");
  assertEquals(await codes([fresh]), ["duplicate"]);
  assertEquals(await store.get(toHex(old.id)), null);
  // The same root as a replica that read well.
  const clean = await ReplicaStore.open(new MemoryKv());
  await clean.apply([g.manifest, old, fresh, s].map((e) => e.bytes));
  assertEquals((await store.root(gid)).root, (await clean.root(gid)).root);
  assertEquals(await store.retained(gid), await clean.retained(gid));
});

Deno.test("A tombstone naming an event pruned out of the window is pending and its id leaves the set, as at a node", async () => {
  // `full` holds everything (a node's view); `win` pruned its oldest events out of a window (ids kept in the set).
  const g = await testGroup("window");
  const gid = toHex(g.gid);
  const stranger = await generateKeyPair();
  const full = await ReplicaStore.open(new MemoryKv());
  const win = await ReplicaStore.open(new MemoryKv());
  const evs = await makeEvents(g, 6);
  const all = [g.manifest.bytes, ...evs.map((e) => e.bytes)];
  await full.apply(all);
  await win.apply(all);
  while ((await win.prune(gid, { keepEvents: 3 })) > 0);
  assertEquals(await win.get(toHex(evs[0]!.id)), null, "pruned");
  assertEquals(await win.get(toHex(evs[1]!.id)), null, "pruned");
  const root = async (s: ReplicaStore) => (await s.root(gid)).root;
  assertEquals(await root(win), await root(full));
  // A valid tombstone (the owner's) of a pruned event: the node forgets the target; the replica cannot judge it (its
  // bytes are gone) and keeps it pending, and the target's id leaves its Merkle set: the same root as the node.
  const x = await tomb(g.owner, g, [evs[0]!], Date.now());
  assertEquals((await full.apply([x.bytes])).map((r) => r.status), ["stored"]);
  assertEquals((await win.apply([x.bytes])).map((r) => r.status), ["stored"]);
  assertEquals(await root(win), await root(full));
  assertEquals((await win.root(gid)).count, (await full.root(gid)).count);
  // The target sent again (a peer offline during the deletion): judged now, DELETED, as at the node.
  assertEquals((await full.apply([evs[0]!.bytes]))[0]!.code, "DELETED");
  assertEquals((await win.apply([evs[0]!.bytes]))[0]!.code, "DELETED");
  assert(await win.deleted(toHex(evs[0]!.id)));
  assertEquals(await root(win), await root(full));
  // An invalid tombstone (a stranger's, of the owner's event): the node refuses it FORBIDDEN. The replica cannot
  // judge it: pending, and the target's id leaves its set, so sync fetches the target from the node again; its
  // arrival settles it (the tombstone is dropped, the event stored) and both end on the same root.
  const y = await tomb(stranger, g, [evs[1]!], Date.now());
  assertEquals((await full.apply([y.bytes]))[0]!.code, "FORBIDDEN");
  assertEquals((await win.apply([y.bytes]))[0]!.status, "stored");
  assert(await root(win) !== await root(full), "the replica lacks the target and holds the tombstone");
  assertEquals((await win.apply([evs[1]!.bytes]))[0]!.status, "stored");
  assertEquals(await win.get(toHex(y.id)), null, "the invalid tombstone is dropped");
  assertEquals(await root(win), await root(full));
  await full.close();
  await win.close();
});
