// (The seeded simulations in tests/sim_test.ts and tests/sim_real_test.ts are the stronger tests: lossy links, skewed
// clocks, membership changes, killed restarts; this one stays as a small fixed scenario.)
// Three nodes write their own events while links between them are cut and
// restored at random (bounded rounds, in-process channels); one node restarts
// mid-sync. At the end all three hold the union, with one Merkle root.
import { Prng, toHex } from "../core/bytes.ts";
import { assertEquals } from "@std/assert";
import { makeEvents, testGroup } from "./_helpers.ts";
import { channelPair } from "../net/peers.ts";
import { SyncSession } from "../net/sync.ts";
import { openNode, type XfNode } from "../node.ts";
import type { KeyPair } from "../storage/ed25519.ts";
import { generateKeyPair } from "../storage/ed25519.ts";

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
