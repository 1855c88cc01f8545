// `deno task bench deletion`: what deletion costs on disk, measured in RocksDB table files after a full
// compaction. (1) The deleted set alone: bytes per entry (`d` + target + tombstone → 1 byte) beside the entry's
// raw 66 bytes. (2) A node: events stored, then every one deleted by tombstones of 256 targets: bytes left per
// deleted event (its deleted-set entry and its share of a tombstone) beside the bytes it took while stored.
// XF_BENCH_DELETED sets the entries of (1) (default 100,000), XF_BENCH_DELETED_EVENTS the events of (2) (20,480).
import type { Row } from "./_table.ts";
import { openRocks } from "../storage/kv.ts";
import { deletedKey } from "../storage/keys.ts";
import { openNode } from "../node.ts";
import { createGroup, KIND_TOMBSTONE, signEvent, type StoredEvent } from "../storage/event.ts";
import { generateKeyPair } from "../storage/ed25519.ts";
import { encodeTombstone } from "../storage/deletion.ts";
import { TOMBSTONE_TARGETS_MAX } from "../core/limits.ts";

/** Bytes of RocksDB's table files (`*.sst`) in `dir`. */
async function sstBytes(dir: string): Promise<number> {
  let n = 0;
  for await (const e of Deno.readDir(dir)) if (e.name.endsWith(".sst")) n += (await Deno.stat(`${dir}/${e.name}`)).size;
  return n;
}

/** Open the store, compact every key into table files, and answer their bytes. */
async function compacted(dir: string): Promise<number> {
  const kv = await openRocks(dir);
  try {
    await kv.compact(new Uint8Array([0]), new Uint8Array(64).fill(0xff));
  } finally {
    await kv.close();
  }
  return await sstBytes(dir);
}

/** The figures. */
export async function benchDeletion(): Promise<{ rows: Row[]; notes: string[] }> {
  const n = Number(Deno.env.get("XF_BENCH_DELETED") ?? 100_000);
  const events = Number(Deno.env.get("XF_BENCH_DELETED_EVENTS") ?? 20_480);
  const root = await Deno.makeTempDir({ prefix: "xf-bench-del-" });
  try {
    // (1) The deleted set alone.
    const dir = `${root}/set`;
    const kv = await openRocks(dir);
    const rand = (k: number) => crypto.getRandomValues(new Uint8Array(k));
    for (let i = 0; i < n; i += 10_000) {
      const ops = [];
      for (let j = i; j < Math.min(n, i + 10_000); j++) {
        ops.push({ type: "put" as const, key: deletedKey(rand(32), rand(32)), value: Uint8Array.of(1) });
      }
      await kv.batch(ops);
    }
    await kv.close();
    const perEntry = (await compacted(dir)) / n;

    // (2) A node: store events, measure; delete them all, measure.
    const data = `${root}/node`;
    let node = await openNode({ dataDir: data, workers: false });
    const owner = await generateKeyPair();
    const { gid, manifest } = await createGroup(owner, { name: "bench", policy: 0 });
    await node.publish(manifest);
    const t0 = Date.now() - 10 * 60_000;
    const stored: StoredEvent[] = [];
    for (let i = 0; i < events; i += 1000) {
      const batch: StoredEvent[] = [];
      for (let j = i; j < Math.min(events, i + 1000); j++) {
        batch.push(
          await signEvent(owner, {
            group: gid,
            ts: t0 + j,
            kind: 16,
            tags: [],
            payload: new TextEncoder().encode(`event ${j} `.padEnd(100, ".")),
          }),
        );
      }
      await node.publish(batch);
      stored.push(...batch);
    }
    await node.merkle(Array.from(gid, (b) => b.toString(16).padStart(2, "0")).join(""));
    await node.close();
    const before = await compacted(`${data}/db`);
    node = await openNode({ dataDir: data, workers: false });
    const tombs: StoredEvent[] = [];
    for (let i = 0; i < stored.length; i += TOMBSTONE_TARGETS_MAX) {
      tombs.push(
        await signEvent(owner, {
          group: gid,
          ts: Date.now(),
          kind: KIND_TOMBSTONE,
          tags: [],
          payload: encodeTombstone(stored.slice(i, i + TOMBSTONE_TARGETS_MAX).map((e) => e.id)),
        }),
      );
    }
    const res = await node.publish(tombs);
    if (res.some((r) => r.status !== "stored")) throw new Error(`tombstones not stored: ${JSON.stringify(res[0])}`);
    await node.merkle(Array.from(gid, (b) => b.toString(16).padStart(2, "0")).join(""));
    await node.close();
    const after = await compacted(`${data}/db`);
    const storedPer = before / events;
    const leftPer = after / events;
    return {
      rows: [
        {
          figure: "deleted set: RocksDB bytes per deleted id (after compaction)",
          value: perEntry,
          peer: "its raw key + value (65 + 1 B)",
          peerValue: 66,
          lowerIsBetter: true,
        },
        {
          figure: `node: bytes left per deleted event (entry + share of a ${TOMBSTONE_TARGETS_MAX}-target tombstone)`,
          value: leftPer,
          peer: "bytes per event while stored (~150 B events)",
          peerValue: storedPer,
          lowerIsBetter: true,
        },
      ],
      notes: [
        `${n.toLocaleString("en-US")} deleted-set entries of random ids; ${events.toLocaleString("en-US")} events ` +
        `then ${tombs.length} tombstones; table files after a full compaction: ${before.toLocaleString("en-US")} B ` +
        `before deleting, ${after.toLocaleString("en-US")} B after.`,
      ],
    };
  } finally {
    await Deno.remove(root, { recursive: true }).catch(() => {});
  }
}

if (import.meta.main) {
  const { table } = await import("./_table.ts");
  const out = await benchDeletion();
  console.log(table("deletion", out.rows));
  for (const n of out.notes) console.log(`- ${n}`);
}
