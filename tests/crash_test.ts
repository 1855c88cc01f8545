// Crash test (deno task test:crash): a child node takes batches over HTTP from
// several writers and is killed with SIGKILL at random moments; after each
// kill the data dir is reopened and every acknowledged event must be there,
// byte for byte, with a consistent Merkle tree. Bounded: ROUNDS kills. A deleter sends tombstones among the writes:
// nothing whose tombstone was acknowledged may come back after a kill, and the tombstone itself must stay.
import { toHex } from "../core/bytes.ts";
import { assert, assertEquals } from "@std/assert";
import { makeEvents, spawnNode, testGroup } from "./_helpers.ts";
import { cborArrayOf, openNode } from "../node.ts";
import { KIND_TOMBSTONE, signEvent } from "../storage/event.ts";
import { encodeTombstone } from "../storage/deletion.ts";

const ROUNDS = Number(Deno.env.get("XF_CRASH_ROUNDS") ?? 20);
const WRITERS = 4;
const BATCH = 25;
/** Events each round offers (writers pace themselves so kills land mid-stream). */
const PER_ROUND = 3000;

Deno.test({
  name: "A node killed with SIGKILL at random moments keeps every acknowledged event",
  ignore: !Deno.env.get("XF_CRASH"),
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "xf-crash-" });
    const g = await testGroup("crash");
    const gid = toHex(g.gid);
    const pool = await makeEvents(g, ROUNDS * PER_ROUND);
    const acked = new Map<string, Uint8Array>();
    /** Targets of acknowledged tombstones: gone for good. */
    const deleted = new Set<string>();
    let tombstonesAcked = 0;
    /**
     * Targets of tombstones sent without an acknowledgement (the node was killed with the request in flight): the
     * tombstone may have reached the WAL, and then recovery deletes them, as it must. Only these may be missing.
     */
    const maybeDeleted = new Set<string>();
    let unackedTombstonesApplied = 0;
    /** Kills that landed while a write was outstanding (sent, not yet answered). */
    let killsDuringWrites = 0;
    let replayedTotal = 0;
    try {
      for (let round = 0; round < ROUNDS; round++) {
        const { child, url } = await spawnNode(dir);
        if (round === 0) {
          const r = await fetch(`${url}/v1/groups/${gid}/events`, {
            method: "POST",
            body: g.manifest.bytes as BodyInit,
            headers: { "content-type": "application/cbor" },
          });
          assertEquals(r.status, 201);
          acked.set(toHex(g.manifest.id), g.manifest.bytes);
        }
        let killed = false;
        let inFlight = 0;
        const ackedBefore = acked.size;
        let next = round * PER_ROUND;
        const end = next + PER_ROUND;
        const writer = async () => {
          while (!killed && next < end) {
            await new Promise((r) => setTimeout(r, 5 + Math.random() * 10));
            const batch = pool.slice(next, next + BATCH);
            next += BATCH;
            inFlight++;
            try {
              const r = await fetch(`${url}/v1/groups/${gid}/events`, {
                method: "POST",
                body: cborArrayOf(batch.map((e) => e.bytes)) as BodyInit,
                headers: { "content-type": "application/cbor" },
              });
              if (r.status !== 200) {
                await r.body?.cancel();
                continue;
              }
              const { results } = await r.json();
              results.forEach((res: { status: string }, i: number) => {
                if (res.status === "stored" || res.status === "duplicate") {
                  acked.set(toHex(batch[i]!.id), batch[i]!.bytes);
                }
              });
            } catch {
              return; // the node died under us: this batch was never acknowledged
            } finally {
              inFlight--;
            }
          }
        };
        // The deleter: every few ms, a tombstone (by the owner, who may delete any event) naming up to 8
        // acknowledged events of the earlier rounds.
        const deleter = async () => {
          while (!killed) {
            await new Promise((r) => setTimeout(r, 20 + Math.random() * 30));
            // Eight acknowledged events at random (the manifest may never be deleted).
            const all = [...acked.keys()];
            const pick = [...new Set(Array.from({ length: 8 }, () => all[Math.floor(Math.random() * all.length)]!))]
              .filter((id) => id !== toHex(g.manifest.id) && all.length > 50);
            if (!pick.length) continue;
            const t = await signEvent(g.owner, {
              group: g.gid,
              ts: Date.now(),
              kind: KIND_TOMBSTONE,
              tags: [],
              payload: encodeTombstone(pick.map((h) => Uint8Array.from(h.match(/../g)!.map((x) => parseInt(x, 16))))),
            });
            inFlight++;
            for (const id of pick) maybeDeleted.add(id);
            try {
              const r = await fetch(`${url}/v1/groups/${gid}/events`, {
                method: "POST",
                body: t.bytes as BodyInit,
                headers: { "content-type": "application/cbor" },
              });
              const body = await r.json();
              if (r.status === 201 && body.status === "stored") {
                for (const id of pick) (acked.delete(id), deleted.add(id), maybeDeleted.delete(id));
                acked.set(toHex(t.id), t.bytes);
                tombstonesAcked++;
              } else for (const id of pick) maybeDeleted.delete(id);
            } catch {
              return;
            } finally {
              inFlight--;
            }
          }
        };
        const writers = [...Array.from({ length: WRITERS }, writer), deleter()];
        // The stream must be flowing (a restarted node's first answers can be slow) before the random delay.
        const flowEnd = Date.now() + 10_000;
        while (acked.size === ackedBefore && Date.now() < flowEnd) await new Promise((r) => setTimeout(r, 1));
        await new Promise((r) => setTimeout(r, 50 + Math.random() * 400));
        // Kill while a write is outstanding (writers pause between batches).
        const waitEnd = Date.now() + 2000;
        while (inFlight === 0 && Date.now() < waitEnd) await new Promise((r) => setTimeout(r, 1));
        const midWrite = inFlight > 0;
        killed = true;
        child.kill("SIGKILL");
        await child.status;
        await Promise.all(writers);
        if (midWrite) killsDuringWrites++;
        const ackedThisRound = acked.size - ackedBefore;
        // Reopen the data dir in-process: recovery must bring back every acknowledged event.
        const node = await openNode({ dataDir: dir, workers: false });
        try {
          const ids = [...acked.keys()];
          for (const id of ids) {
            const bytes = await node.get(id);
            if (!bytes && maybeDeleted.has(id) && (await node.deletedIn(id)) === gid) {
              // Deleted by a tombstone whose answer the kill cut off: it reached the WAL, so it holds.
              acked.delete(id);
              deleted.add(id);
              unackedTombstonesApplied++;
              continue;
            }
            if (!bytes) throw new Error(`round ${round}: acknowledged event ${id} lost (${node.pipeline.recovery})`);
            assertEquals(toHex(bytes), toHex(acked.get(id)!));
          }
          for (const id of deleted) {
            assertEquals(await node.get(id), null, `round ${round}: deleted event ${id} came back`);
          }
          const replayed = Number(/Replayed (\d+) records/.exec(node.pipeline.recovery)?.[1] ?? NaN);
          assert(Number.isInteger(replayed), `round ${round}: no replay count in "${node.pipeline.recovery}"`);
          replayedTotal += replayed;
          assert(ackedThisRound > 0, `round ${round}: no event acknowledged before the kill`);
          assert(midWrite || replayed > 0, `round ${round}: the kill landed between writes and nothing was replayed`);
          const fsck = await node.fsck(gid);
          assert(fsck?.ok, `round ${round}: fsck found ${fsck?.firstDifference}`);
          console.log(
            `round ${
              round + 1
            }/${ROUNDS}: ${ackedThisRound} acknowledged this round (${acked.size} in all), all present; ` +
              `${deleted.size} deleted, none back; killed ${midWrite ? "mid-write" : "between writes"}; ` +
              node.pipeline.recovery,
          );
        } finally {
          await node.close();
        }
      }
      // Every kill is waited for until a write is outstanding; the counter says whether it was.
      assertEquals(killsDuringWrites, ROUNDS, `only ${killsDuringWrites} of ${ROUNDS} kills landed mid-write`);
      assert(tombstonesAcked > 0 && deleted.size > 0, "no tombstone was acknowledged");
      console.log(
        `${killsDuringWrites}/${ROUNDS} kills mid-write; ${replayedTotal} WAL records replayed in all; ` +
          `${tombstonesAcked} tombstones acknowledged, ${deleted.size} events deleted, none came back; ` +
          `${unackedTombstonesApplied} events deleted by a tombstone whose answer the kill cut off`,
      );
    } finally {
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});
