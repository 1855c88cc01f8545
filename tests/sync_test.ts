import { fromHex, toHex } from "../core/bytes.ts";
import { assert, assertEquals } from "@std/assert";
import { nip77 } from "npm:nostr-tools@2.25.2";
import { sha256 } from "@noble/hashes/sha2";
import { makeEvents, queryAll, syncLink, tempNode, testGroup, until } from "./_helpers.ts";
import { channelPair } from "../net/peers.ts";
import { SyncSession } from "../net/sync.ts";
import { serve } from "../net/server.ts";
import { Reconciler } from "../merkle/negentropy.ts";
import { VectorStorage } from "../merkle/negentropy_storage.ts";
import { MerkleTree } from "../merkle/mod.ts";
import type { XfNode } from "../node.ts";

const { Negentropy, NegentropyStorageVector } = nip77;

async function allIds(node: XfNode, gid: string): Promise<string[]> {
  return (await queryAll(node, gid)).map(toHex).sort();
}

/** Pipe two nodes together in-process: a is the client (it initiates), b the server. */

Deno.test("SyncSession brings two nodes to the same events and Merkle root", async () => {
  const a = await tempNode(), b = await tempNode();
  try {
    const g = await testGroup();
    const gid = toHex(g.gid);
    const common = await makeEvents(g, 150);
    const onlyA = await makeEvents(g, 60, Date.now() - 500_000);
    const onlyB = await makeEvents(g, 40, Date.now() - 400_000);
    await a.node.publish([g.manifest, ...common, ...onlyA]);
    await b.node.publish([g.manifest, ...common, ...onlyB]);
    const { client } = syncLink(a.node, b.node);
    await client.sync(gid);
    await until(async () => (await allIds(a.node, gid)).length === 251 && (await allIds(b.node, gid)).length === 251);
    assertEquals(await allIds(a.node, gid), await allIds(b.node, gid));
    assertEquals((await a.node.merkle(gid))!.root, (await b.node.merkle(gid))!.root);
    assert(client.stats.negRounds >= 1);
    // Live: a new event on either side streams to the other.
    const [live] = await makeEvents(g, 1, Date.now());
    await b.node.publish(live!);
    await until(async () => (await a.node.get(toHex(live!.id))) !== null);
    const [back] = await makeEvents(g, 1, Date.now() + 1);
    await a.node.publish(back!);
    await until(async () => (await b.node.get(toHex(back!.id))) !== null);
    client.close();
  } finally {
    await a.done();
    await b.done();
  }
});

Deno.test("A node that does not hold a group yet joins it through a peer (manifest first)", async () => {
  const a = await tempNode(), b = await tempNode();
  try {
    const g = await testGroup();
    const gid = toHex(g.gid);
    await b.node.publish([g.manifest, ...await makeEvents(g, 700)]);
    const { client } = syncLink(a.node, b.node);
    const progress: number[] = [];
    a.node.sync.events.addEventListener("progress", (e) => progress.push((e as CustomEvent).detail.received));
    await client.sync(gid);
    await until(async () => (await allIds(a.node, gid)).length === 701);
    assertEquals((await a.node.merkle(gid))!.root, (await b.node.merkle(gid))!.root);
    assert(progress.length > 0 && progress.at(-1)! >= 700, "progress was reported");
    client.close();
  } finally {
    await a.done();
    await b.done();
  }
});

Deno.test("Two nodes sync over a real WebSocket on 127.0.0.1 and report peers", async () => {
  const a = await tempNode(), b = await tempNode();
  const sb = await serve(b.node, { host: "127.0.0.1", port: 0 });
  try {
    const g = await testGroup();
    const gid = toHex(g.gid);
    await a.node.publish([g.manifest, ...await makeEvents(g, 30)]);
    await b.node.publish([g.manifest, ...await makeEvents(g, 20, Date.now() - 300_000)]);
    const s = await a.node.sync.connect(sb.url.replace("http", "ws"), [gid]);
    await until(async () => (await allIds(b.node, gid)).length === 51 && (await allIds(a.node, gid)).length === 51);
    const peers = await (await fetch(`${sb.url}/v1/groups/${gid}/peers`)).json();
    assertEquals(peers.peers.length, 1);
    assertEquals(peers.peers[0].key, toHex(a.node.key.publicKey));
    assert(a.node.sync.peersOf(gid)[0]!.syncedRoot.length === 64);
    s.close();
  } finally {
    a.node.sync.close();
    await sb.shutdown();
    await a.done();
    await b.done();
  }
});

/** Items with second-scale timestamps (nostr-tools' varints are 32-bit) and distinct ids. */
function items(n: number, seed: number) {
  const out: { ts: number; id: Uint8Array }[] = [];
  for (let i = 0; i < n; i++) {
    out.push({ ts: 1_000_000 + Math.floor(i / 3), id: sha256(new TextEncoder().encode(`${seed}/${i}`)) });
  }
  return out;
}

function treeOf(list: { ts: number; id: Uint8Array }[]) {
  const sorted = [...list].sort((a, b) => a.ts - b.ts || toHex(a.id).localeCompare(toHex(b.id)));
  const { root, put } = MerkleTree.build(sorted);
  return new MerkleTree({ get: (h) => put.get(toHex(h)) }, root, { cachePages: 4096 });
}

/** Run an initiator against our Merkle-tree responder; returns the messages and the initiator's have/need. */
function reconcileAgainstTree(
  tree: MerkleTree,
  init: {
    initiate(): Uint8Array;
    reconcile(m: Uint8Array): { output: Uint8Array | null; have: string[]; need: string[] };
  },
) {
  const msgs: string[] = [];
  const have: string[] = [], need: string[] = [], respHave: string[] = [], respNeed: string[] = [];
  let msg = init.initiate();
  for (let round = 0; round < 100; round++) {
    msgs.push(toHex(msg));
    const r = new Reconciler(tree).reconcile(msg); // a responder is stateless between messages
    respHave.push(...r.have.map(toHex));
    respNeed.push(...r.need.map(toHex));
    msgs.push(toHex(r.output!));
    const i = init.reconcile(r.output!);
    have.push(...i.have);
    need.push(...i.need);
    if (!i.output) {
      return { msgs, have: have.sort(), need: need.sort(), respHave: respHave.sort(), respNeed: respNeed.sort() };
    }
    msg = i.output;
  }
  throw new Error("no convergence");
}

for (const [n, dClient, dServer] of [[0, 0, 0], [1, 1, 0], [1000, 0, 10], [1000, 25, 25], [100_000, 40, 60]] as const) {
  Deno.test(`nostr-tools' Negentropy reconciles against a Xaeroflux Merkle index (${n} common, +${dClient}/+${dServer})`, () => {
    const common = items(n, 7);
    const clientOnly = items(dClient, 11).map((x) => ({ ...x, ts: x.ts + 5 }));
    const serverOnly = items(dServer, 13).map((x) => ({ ...x, ts: x.ts + 9 }));
    const tree = treeOf([...common, ...serverOnly]);
    const clientItems = [...common, ...clientOnly];
    // nostr-tools as the initiator (an implementation nobody here wrote).
    const vec = new NegentropyStorageVector();
    for (const x of clientItems) vec.insert(x.ts, toHex(x.id));
    vec.seal();
    const neg = new Negentropy(vec, 60_000);
    const theirs = reconcileAgainstTree(tree, {
      initiate: () => fromHex(neg.initiate())!,
      reconcile(m) {
        const have: string[] = [], need: string[] = [];
        const out = neg.reconcile(toHex(m), (id: string) => have.push(id), (id: string) => need.push(id));
        return { output: out === null ? null : fromHex(out)!, have, need };
      },
    });
    // Our own client over the same items.
    const ours = new VectorStorage();
    for (const x of clientItems) ours.insert(x.ts, x.id);
    ours.seal();
    const rec = new Reconciler(ours);
    const mine = reconcileAgainstTree(tree, {
      initiate: () => rec.initiate(),
      reconcile(m) {
        const r = rec.reconcile(m);
        return { output: r.output, have: r.have.map(toHex), need: r.need.map(toHex) };
      },
    });
    assertEquals(theirs.msgs, mine.msgs, "byte-for-byte the same messages");
    assertEquals([theirs.have, theirs.need], [mine.have, mine.need], "the same have/need as our own client");
    // Together both sides found exactly the differences.
    assertEquals([...theirs.have, ...theirs.respNeed].sort(), clientOnly.map((x) => toHex(x.id)).sort());
    assertEquals([...theirs.need, ...theirs.respHave].sort(), serverOnly.map((x) => toHex(x.id)).sort());
  });
}

Deno.test("nostr-tools' Negentropy reconciles against a running node's index stage", async () => {
  const t = await tempNode();
  try {
    const g = await testGroup();
    const gid = toHex(g.gid);
    const evs = await makeEvents(g, 300, 2_000_000); // second-scale ts for nostr-tools' 32-bit varints
    await t.node.publish([g.manifest, ...evs.slice(0, 250)]);
    const clientSide = [...evs.slice(20, 300)];
    const vec = new NegentropyStorageVector();
    for (const e of clientSide) vec.insert(e.ts, toHex(e.id));
    vec.seal();
    const neg = new Negentropy(vec, 60_000);
    let msg: Uint8Array | null = fromHex(neg.initiate())!;
    const have: string[] = [], need: string[] = [];
    const respHave: string[] = [], respNeed: string[] = [];
    while (msg) {
      const r = await t.node.pipeline.index<{ output: Uint8Array; have: Uint8Array[]; need: Uint8Array[] }>({
        type: "index.reconcile",
        gid,
        session: null,
        msg,
      });
      respHave.push(...r.have.map(toHex));
      respNeed.push(...r.need.map(toHex));
      const out = neg.reconcile(toHex(r.output), (id: string) => have.push(id), (id: string) => need.push(id));
      msg = out === null ? null : fromHex(out)!;
    }
    const wantHave = evs.slice(250, 300).map((e) => toHex(e.id)).sort();
    const wantNeed = [g.manifest, ...evs.slice(0, 20)].map((e) => toHex(e.id)).sort();
    assertEquals([...have, ...respNeed].sort(), wantHave);
    assertEquals([...need, ...respHave].sort(), wantNeed);
  } finally {
    await t.done();
  }
});

Deno.test("node.sync.dial() resolves after the first sync, and whenSynced(gid) lets a joining node post at once", async () => {
  const g = await testGroup();
  const gid = toHex(g.gid);
  const a = await tempNode(), b = await tempNode({ groups: [gid] } as never);
  const s = await serve(a.node, { host: "127.0.0.1", port: 0 });
  try {
    await a.node.publish([g.manifest, ...await makeEvents(g, 20)]);
    const waiting = b.node.whenSynced(gid, 10_000);
    await b.node.sync.dial(s.url.replace("http", "ws"));
    await waiting;
    assertEquals((await b.node.merkle(gid))?.count, 21);
    const [post] = await makeEvents(g, 1, Date.now());
    assertEquals((await b.node.publish(post!))[0]!.status, "stored");
    await b.node.whenSynced(gid); // already synced: at once
  } finally {
    b.node.sync.close();
    await s.shutdown();
    await b.done();
    await a.done();
  }
});

Deno.test("A peer that answers in another negentropy version ends that group's reconciliation, not the session", async () => {
  const a = await tempNode(), b = await tempNode();
  try {
    const g = await testGroup();
    const gid = toHex(g.gid);
    await a.node.publish([g.manifest, ...(await makeEvents(g, 5))]);
    await b.node.publish([g.manifest, ...(await makeEvents(g, 5, Date.now() - 500_000))]);
    // b's responder speaks only a "version 2": it answers every neg with the bare byte 0x62.
    const real = b.node.sync;
    const host = new Proxy(real, {
      get(t, k) {
        if (k === "reconcile") {
          return (id: string, session: string | null, msg: Uint8Array | null) =>
            session === null && msg
              ? Promise.resolve({ output: Uint8Array.of(0x62), have: [], need: [] })
              : t.reconcile(id, session, msg);
        }
        const v = Reflect.get(t, k, t);
        return typeof v === "function" ? v.bind(t) : v;
      },
    });
    const [ca, cb] = channelPair();
    const server = new SyncSession(host, cb, "server", "in-process");
    const client = new SyncSession(a.node.sync, ca, "client", "in-process");
    await client.sync(gid); // resolves: the reconciliation ended
    assertEquals(client.state, "ready");
    assertEquals(server.state, "ready");
    assertEquals((await allIds(a.node, gid)).length, 6, "nothing moved");
    client.close();
  } finally {
    await a.done();
    await b.done();
  }
});
