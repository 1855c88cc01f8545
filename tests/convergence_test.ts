// (The seeded simulations in tests/sim_test.ts and tests/sim_real_test.ts are the stronger tests: lossy links, skewed
// clocks, membership changes, killed restarts; this one stays as a small fixed scenario.)
// Three nodes write their own events while links between them are cut and
// restored at random (bounded rounds, in-process channels); one node restarts
// mid-sync. At the end all three hold the union, with one Merkle root.
import { Prng, toHex } from "../core/bytes.ts";
import { assert, assertEquals } from "@std/assert";
import { makeEvents, testGroup } from "./_helpers.ts";
import { channelPair } from "../net/peers.ts";
import { SyncSession } from "../net/sync.ts";
import { openNode, type XfNode } from "../node.ts";
import type { KeyPair } from "../storage/ed25519.ts";
import { generateKeyPair } from "../storage/ed25519.ts";
import { KIND_SETTINGS, KIND_TOMBSTONE, signEvent, type StoredEvent } from "../storage/event.ts";
import { encodeTombstone } from "../storage/deletion.ts";
import { encodeSettings } from "../storage/retention.ts";

const ROUNDS = 8;

async function count(node: XfNode, gid: string): Promise<number> {
  return (await node.merkle(gid))?.count ?? 0;
}

Deno.test("Three nodes with flaky links and a restart converge on one root and the union of events", async () => {
  const rand = new Prng(42).float;
  const dirs = await Promise.all([0, 1, 2].map(() => Deno.makeTempDir({ prefix: "xf-conv-" })));
  const keys: KeyPair[] = await Promise.all([0, 1, 2].map(() => generateKeyPair()));
  const nodes: XfNode[] = await Promise.all(
    dirs.map((d, i) => openNode({ dataDir: d, workers: false, key: keys[i]! })),
  );
  const g = await testGroup("flaky");
  const gid = toHex(g.gid);
  const written = new Set<string>();
  const links = new Map<string, SyncSession>();
  try {
    await nodes[0]!.publish(g.manifest);
    written.add(toHex(g.manifest.id));
    let ts = Date.now() - 10_000_000;
    for (let round = 0; round < ROUNDS; round++) {
      // Each node writes its own events (only those that hold the group can).
      for (const n of nodes) {
        if ((await count(n, gid)) === 0) continue;
        const evs = await makeEvents(g, 5 + Math.floor(rand() * 20), ts);
        ts += 100;
        const res = await n.publish(evs);
        res.forEach((r, i) => r.status !== "rejected" && written.add(toHex(evs[i]!.id)));
      }
      // Cut some links, open others.
      for (const [k, s] of links) {
        if (rand() < 0.5) {
          s.close("cut");
          links.delete(k);
        }
      }
      for (const [a, b] of [[0, 1], [1, 2], [0, 2]] as const) {
        const key = `${a}-${b}`;
        if (links.has(key) || rand() < 0.4) continue;
        // Either end may dial (the one that dials is the one that reconciles).
        const [c, sv] = rand() < 0.5 ? [a, b] : [b, a];
        const [ca, cb] = channelPair();
        new SyncSession(nodes[sv]!.sync, cb, "server", `node${sv}`);
        const client = new SyncSession(nodes[c]!.sync, ca, "client", `node${c}`);
        links.set(key, client);
        client.sync(gid).catch(() => {}); // may be cut before it finishes
      }
      // Restart node 2 in the middle of the run.
      if (round === Math.floor(ROUNDS / 2)) {
        for (const [k, s] of links) if (k.includes("2")) (s.close("restart"), links.delete(k));
        await nodes[2]!.close();
        nodes[2] = await openNode({ dataDir: dirs[2]!, workers: false, key: keys[2]! });
      }
      await new Promise((r) => setTimeout(r, 30 + rand() * 100));
    }
    // Heal: every pair syncs once more, to completion.
    for (const s of links.values()) s.close("heal");
    for (const [a, b] of [[0, 1], [1, 0], [2, 1], [1, 2], [0, 2], [2, 0]] as const) {
      const [ca, cb] = channelPair();
      new SyncSession(nodes[b]!.sync, cb, "server", `node${b}`);
      const client = new SyncSession(nodes[a]!.sync, ca, "client", `node${a}`);
      await client.sync(gid);
      // Let the transfer settle (events in flight through the pipelines).
      const end = Date.now() + 5000;
      while (Date.now() < end && (await count(nodes[a]!, gid)) !== (await count(nodes[b]!, gid))) {
        await new Promise((r) => setTimeout(r, 20));
      }
      client.close("done");
    }
    const roots = await Promise.all(nodes.map((n) => n.merkle(gid)));
    assertEquals(roots.map((r) => r!.count), [written.size, written.size, written.size], "every node holds the union");
    assertEquals(new Set(roots.map((r) => r!.root)).size, 1, "one Merkle root");
    for (const n of nodes) assertEquals((await n.fsck(gid))!.ok, true);
    // No event is held twice: the time index count equals the distinct ids written.
    for (const n of nodes) {
      const page = await n.query({ gid, limit: 1000 });
      assertEquals(new Set(page!.events.map(toHex)).size, page!.events.length);
    }
  } finally {
    for (const n of nodes) await n.close().catch(() => {});
    for (const d of dirs) await Deno.remove(d, { recursive: true }).catch(() => {});
  }
});

Deno.test("Three nodes with cuts and a restart, deletions and a retention change: one root, nothing deleted anywhere, nothing moves twice", async () => {
  const rand = new Prng(7).float;
  const dirs = await Promise.all([0, 1, 2].map(() => Deno.makeTempDir({ prefix: "xf-conv-del-" })));
  const keys: KeyPair[] = await Promise.all([0, 1, 2].map(() => generateKeyPair()));
  const open = (i: number) => openNode({ dataDir: dirs[i]!, workers: false, key: keys[i]! });
  const nodes: XfNode[] = await Promise.all([0, 1, 2].map(open));
  const g = await testGroup("flaky-deletes");
  const gid = toHex(g.gid);
  // Each node's writer: the owner writes on node 0, two other authors on nodes 1 and 2 (an open group).
  const writers: KeyPair[] = [g.owner, await generateKeyPair(), await generateKeyPair()];
  /** Per node, the events it wrote (accepted), so a writer deletes only what it wrote. */
  const wroteBy: StoredEvent[][] = [[], [], []];
  const deleted = new Set<string>();
  const links = new Map<string, SyncSession>();
  const dial = (c: number, sv: number) => {
    const [ca, cb] = channelPair();
    new SyncSession(nodes[sv]!.sync, cb, "server", `node${sv}`);
    return new SyncSession(nodes[c]!.sync, ca, "client", `node${c}`);
  };
  let refusedForbidden = 0;
  try {
    await nodes[0]!.publish(g.manifest);
    let ts = Date.now() - 10_000_000;
    for (let round = 0; round < ROUNDS; round++) {
      for (let i = 0; i < 3; i++) {
        const n = nodes[i]!;
        if ((await count(n, gid)) === 0) continue;
        const evs = await makeEvents(g, 5 + Math.floor(rand() * 15), ts, writers[i]);
        ts += 100;
        const res = await n.publish(evs);
        res.forEach((r, j) => r.status !== "rejected" && wroteBy[i]!.push(evs[j]!));
        // Delete a few of its own (some not yet synced anywhere else: other nodes learn the tombstone first or
        // the target first, by chance).
        if (round > 0 && rand() < 0.8) {
          const mine = wroteBy[i]!.filter((e) => !deleted.has(toHex(e.id)));
          const targets = mine.filter(() => rand() < 0.15).slice(0, 8);
          if (targets.length) {
            const t = await tombstone(writers[i]!, g, targets, ts++);
            const [r] = await n.publish(t);
            if (r!.status === "stored") targets.forEach((e) => deleted.add(toHex(e.id)));
          }
        }
        // A writer that tries to delete another's event is refused where that event is held.
        if (round > 1 && i > 0 && wroteBy[0]!.length) {
          const other = wroteBy[0]![Math.floor(rand() * wroteBy[0]!.length)]!;
          if ((await n.get(toHex(other.id))) !== null) {
            const [r] = await n.publish(await tombstone(writers[i]!, g, [other], ts++));
            if (r!.status === "stored") {
              // The target left between the read and the publish: retention forgot it (a prune runs between writes),
              // or the owner's own tombstone arrived by sync. The tombstone then names an event not held and waits,
              // as for an unknown target. Anything else is a wrong acceptance.
              assertEquals(await n.get(toHex(other.id)), null, "a tombstone of another's held event was stored");
              // Deleted here by a valid tombstone only if its author's (retention forgets without one; the boundary
              // may have come down again since, as deletions shrink the newest 120).
              const deletedHere = (await n.deletedIn(toHex(other.id))) !== null;
              assert(!deletedHere || deleted.has(toHex(other.id)), "a stranger's tombstone deleted another's event");
            } else {
              assertEquals(r!.status, "rejected");
              refusedForbidden++;
            }
          }
        }
      }
      // The owner sets retention half-way: keep the newest 120 events.
      if (round === Math.floor(ROUNDS / 2) - 1) {
        const s = await signEvent(g.owner, {
          group: g.gid,
          ts: ts++,
          kind: KIND_SETTINGS,
          tags: [],
          payload: encodeSettings({ retention_events: 120 }),
        });
        assertEquals((await nodes[0]!.publish(s))[0]!.status, "stored");
      }
      for (const [k, s] of links) {
        if (rand() < 0.5) (s.close("cut"), links.delete(k));
      }
      for (const [a, b] of [[0, 1], [1, 2], [0, 2]] as const) {
        const key = `${a}-${b}`;
        if (links.has(key) || rand() < 0.4) continue;
        const client = rand() < 0.5 ? dial(a, b) : dial(b, a);
        links.set(key, client);
        client.sync(gid).catch(() => {});
      }
      if (round === Math.floor(ROUNDS / 2)) {
        for (const [k, s] of links) if (k.includes("2")) (s.close("restart"), links.delete(k));
        await nodes[2]!.close();
        nodes[2] = await open(2);
      }
      await new Promise((r) => setTimeout(r, 30 + rand() * 100));
    }
    for (const s of links.values()) s.close("heal");
    // Heal: every ordered pair syncs to completion, twice over (a boundary or deletion learnt late can prune more).
    const pairs = [[0, 1], [1, 0], [2, 1], [1, 2], [0, 2], [2, 0]] as const;
    for (let pass = 0; pass < 2; pass++) {
      for (const [a, b] of pairs) {
        const client = dial(a, b);
        await client.sync(gid);
        const end = Date.now() + 5000;
        while (Date.now() < end && (await nodes[a]!.merkle(gid))?.root !== (await nodes[b]!.merkle(gid))?.root) {
          await new Promise((r) => setTimeout(r, 20));
        }
        client.close("done");
      }
    }
    const roots = await Promise.all(nodes.map((n) => n.merkle(gid)));
    assertEquals(new Set(roots.map((r) => r!.root)).size, 1, `one Merkle root: ${JSON.stringify(roots)}`);
    const boundaries = await Promise.all(nodes.map((n) => n.retained(gid)));
    assertEquals(new Set(boundaries).size, 1, `one retention boundary: ${boundaries}`);
    assert(boundaries[0]! > 0, "the retention setting forgot something");
    assert(deleted.size > 0 && refusedForbidden > 0, `deleted ${deleted.size}, refused ${refusedForbidden}`);
    // Nothing deleted is held anywhere; everything written, not deleted and within retention is held everywhere.
    const written = wroteBy.flat();
    for (const n of nodes) {
      for (const id of deleted) assertEquals(await n.get(id), null, `deleted ${id.slice(0, 8)} is back`);
      for (const e of written) {
        const id = toHex(e.id);
        if (deleted.has(id) || e.ts < boundaries[0]!) continue;
        assert((await n.get(id)) !== null, `event ${id.slice(0, 8)} (ts ${e.ts}) lost`);
      }
      assertEquals((await n.fsck(gid))!.ok, true);
    }
    // Nothing moves back and forth: one more sync of every pair stores nothing and refuses nothing.
    for (const [a, b] of pairs) {
      const client = dial(a, b);
      await client.sync(gid);
      await new Promise((r) => setTimeout(r, 50));
      const st = client.stats;
      client.close("done");
      assertEquals(st.eventsRejected, 0, `pair ${a}->${b}: ${JSON.stringify(st)}`);
      // What a sync still sends is the group's admission (manifest; membership), pushed after every sub.ok.
      assert(st.eventsSent <= 1 && st.eventsReceived <= 1, `pair ${a}->${b} moved events: ${JSON.stringify(st)}`);
    }
    const after = await Promise.all(nodes.map((n) => n.merkle(gid)));
    assertEquals(after.map((r) => r!.root), roots.map((r) => r!.root));
  } finally {
    for (const n of nodes) await n.close().catch(() => {});
    for (const d of dirs) await Deno.remove(d, { recursive: true }).catch(() => {});
  }
});

function tombstone(key: KeyPair, g: { gid: Uint8Array }, targets: StoredEvent[], ts: number) {
  return signEvent(key, {
    group: g.gid,
    ts,
    kind: KIND_TOMBSTONE,
    tags: [],
    payload: encodeTombstone(targets.map((t) => t.id)),
  });
}
