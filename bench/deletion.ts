// `deno task bench deletion`: what deletion costs on disk, measured in RocksDB table files after a full
// compaction. (1) The deleted set alone: bytes per entry (`d` + target + tombstone → 1 byte) beside the entry's
// raw 66 bytes. (2) A node: events stored, then every one deleted by tombstones of 256 targets: bytes left per
// deleted event (its deleted-set entry and its share of a tombstone) beside the bytes it took while stored.
// (3) Disk space back: a group of XF_BENCH_COMPACT_EVENTS events (default 1,000,000; 0 skips it), 10 % of it deleted
// at random: the store's bytes before, after deleting and after the index's background compaction (which those
// deletions start, `compact_after_forgotten`), and the write rate while that compaction runs beside the rate before.
// XF_BENCH_DELETED sets the entries of (1) (default 100,000), XF_BENCH_DELETED_EVENTS the events of (2) (20,480).
import type { Row } from "./_table.ts";
import { openRocks } from "../storage/kv_rocks.ts";
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

/** Bytes per kind of file in a RocksDB directory: table files, write-ahead logs, the rest (manifest, info logs). */
async function breakdown(dir: string): Promise<string> {
  const by: Record<string, number> = {};
  for await (const e of Deno.readDir(dir)) {
    const k = e.name.endsWith(".sst")
      ? "sst"
      : e.name.endsWith(".log")
      ? "log"
      : e.name.startsWith("LOG")
      ? "info"
      : "other";
    by[k] = (by[k] ?? 0) + (await Deno.stat(`${dir}/${e.name}`).catch(() => ({ size: 0 }))).size;
  }
  return Object.entries(by).map(([k, v]) => `${k} ${v.toLocaleString("en-US")}`).join(", ");
}

/** Bytes of every file under `dir` (RocksDB's tables, logs and manifests; or a whole data directory). */
async function dirBytes(dir: string): Promise<number> {
  let n = 0;
  for await (const e of Deno.readDir(dir)) {
    const p = `${dir}/${e.name}`;
    // A file RocksDB deletes between the listing and the stat counts as gone.
    n += e.isDirectory ? await dirBytes(p) : (await Deno.stat(p).catch(() => ({ size: 0 }))).size;
  }
  return n;
}

/**
 * Publish, sending again while the library refuses the whole request TIMEOUT or OVERLOADED (under load a request
 * can wait past `request_timeout_ms` before it is split; sending it again is safe:
 * a duplicate is answered as one).
 */
async function publishAgain(
  node: Awaited<ReturnType<typeof openNode>>,
  events: StoredEvent | StoredEvent[],
): Promise<Awaited<ReturnType<typeof node.publish>>> {
  for (let tries = 0;; tries++) {
    try {
      return await node.publish(events);
    } catch (e) {
      const code = (e as { code?: string }).code;
      if ((code !== "TIMEOUT" && code !== "OVERLOADED") || tries > 100) throw e;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

/** `n` signed 100-byte-payload events of group `gid` from `t0`, in batches of 1000, published as they are signed. */
async function publishMany(
  node: Awaited<ReturnType<typeof openNode>>,
  owner: Awaited<ReturnType<typeof generateKeyPair>>,
  gid: Uint8Array,
  t0: number,
  n: number,
  keep?: StoredEvent[],
  lat?: number[],
): Promise<number> {
  let ms = 0;
  for (let i = 0; i < n; i += 1000) {
    const batch: StoredEvent[] = [];
    for (let j = i; j < Math.min(n, i + 1000); j++) {
      batch.push(
        await signEvent(owner, {
          group: gid,
          ts: t0 + j,
          kind: 16,
          tags: [],
          payload: new TextEncoder().encode(`event ${t0 + j} `.padEnd(100, ".")),
        }),
      );
    }
    const s = performance.now();
    let res = await publishAgain(node, batch);
    // The library path sheds load as HTTP does (OVERLOADED): try those again.
    let todo = batch;
    while (res.some((r) => r.status === "rejected")) {
      const bad = res.find((r) => r.status === "rejected" && r.code !== "OVERLOADED");
      if (bad) throw new Error(`publish refused: ${JSON.stringify(bad)}`);
      todo = todo.filter((_, k) => res[k]!.status === "rejected");
      await new Promise((r) => setTimeout(r, 20));
      res = await publishAgain(node, todo);
    }
    ms += performance.now() - s;
    lat?.push(performance.now() - s);
    keep?.push(...batch);
  }
  return ms;
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

    // (3) Disk space back after deleting 10 % of a large group.
    const big = Number(Deno.env.get("XF_BENCH_COMPACT_EVENTS") ?? 1_000_000);
    const rows3: Row[] = [];
    const notes3: string[] = [];
    if (big > 0) {
      const bdir = `${root}/big`;
      // Deleting 10 % of the group reaches the index's compaction threshold (the default at 1,000,000 events).
      const limits = { compact_after_forgotten: Math.min(100_000, Math.floor(big / 10)) };
      let bnode = await openNode({ dataDir: bdir, workers: false, limits });
      try {
        const g3 = await createGroup(owner, { name: "big", policy: 0 });
        await bnode.publish(g3.manifest);
        const gidHex = Array.from(g3.gid, (b) => b.toString(16).padStart(2, "0")).join("");
        const held: StoredEvent[] = [];
        const tBig = Date.now() - 400 * 86_400_000;
        await publishMany(bnode, owner, g3.gid, tBig, big, held);
        // The write rate before: 20,000 more events, timed.
        const probe = 20_000;
        const latBefore: number[] = [];
        const msBefore = await publishMany(bnode, owner, g3.gid, tBig + big, probe, undefined, latBefore);
        await bnode.merkle(gidHex);
        // Before: the store fully compacted, so only what deleting changes is measured.
        await bnode.close();
        await compacted(`${bdir}/db`);
        const bytesBefore = await dirBytes(`${bdir}/db`);
        const partsBefore = await breakdown(`${bdir}/db`);
        bnode = await openNode({ dataDir: bdir, workers: false, limits });
        const node3 = bnode;
        const stats = () =>
          node3.pipeline.index<{ compactions: number; compactionsDone: number; compactMs: number; deleted: number }>(
            { type: "index.stats" },
          );
        // Exactly 10 % at random, by tombstones of 256; answers `[compaction ms, deleted ids]` once all are gone.
        const deleteTenth = async (
          from: StoredEvent[],
          into = node3 as typeof node3,
          st: () => Promise<{ deleted: number }> = stats,
        ): Promise<StoredEvent[]> => {
          const pool = from.slice();
          const k = Math.floor(big / 10);
          for (let i = 0; i < k; i++) {
            const j = i + Math.floor(Math.random() * (pool.length - i));
            [pool[i], pool[j]] = [pool[j]!, pool[i]!];
          }
          const victims = pool.slice(0, k);
          const want = (await st()).deleted + victims.length;
          // One tombstone at a time: a random deletion rewrites Merkle leaves, so a large batch can outlast the
          // library's settle wait (TIMEOUT, "send it again"); it is sent again until stored (or a duplicate).
          for (let j = 0; j < victims.length; j += TOMBSTONE_TARGETS_MAX) {
            const t = await signEvent(owner, {
              group: g3.gid,
              ts: Date.now(),
              kind: KIND_TOMBSTONE,
              tags: [],
              payload: encodeTombstone(victims.slice(j, j + TOMBSTONE_TARGETS_MAX).map((e) => e.id)),
            });
            for (let tries = 0;; tries++) {
              const [r] = await publishAgain(into, t);
              if (r!.status !== "rejected") break;
              if ((r!.code !== "TIMEOUT" && r!.code !== "OVERLOADED") || tries > 100) {
                throw new Error(`tombstone refused: ${JSON.stringify(r)}`);
              }
            }
          }
          const deadline = Date.now() + 600_000;
          while ((await st()).deleted < want && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
          return victims;
        };
        const settled = async () => {
          const deadline = Date.now() + 600_000;
          while ((await stats()).compactionsDone < (await stats()).compactions && Date.now() < deadline) {
            await new Promise((r) => setTimeout(r, 100));
          }
        };
        const c0 = await stats();
        const gone = new Set((await deleteTenth(held)).map((e) => e.id));
        const bytesDeleted = await dirBytes(`${bdir}/db`);
        const partsDeleted = await breakdown(`${bdir}/db`);
        await settled();
        const c1 = await stats();
        // RocksDB deletes the files a compaction replaced a moment after it reports done: wait until the
        // directory's bytes have not changed for 3 s (at most 60 s).
        let bytesAfter = await dirBytes(`${bdir}/db`);
        for (let still = 0, end = Date.now() + 60_000; still < 3 && Date.now() < end;) {
          await new Promise((r) => setTimeout(r, 1000));
          const b = await dirBytes(`${bdir}/db`);
          still = b === bytesAfter ? still + 1 : 0;
          bytesAfter = b;
        }
        const partsAfter = await breakdown(`${bdir}/db`);
        // The same, once the node has closed (RocksDB drops files only it still pinned).
        await node3.close();
        const bytesClosed = await dirBytes(`${bdir}/db`);
        bnode = await openNode({ dataDir: bdir, workers: false, limits });
        const node4 = bnode;
        const stats4 = () =>
          node4.pipeline.index<{ compactions: number; compactionsDone: number; deleted: number }>({
            type: "index.stats",
          });
        // Writes while a compaction runs: delete another tenth (a second compaction starts), then time 20,000 writes.
        await deleteTenth(held.filter((e) => !gone.has(e.id)), node4, stats4);
        const running = (await stats4()).compactionsDone < (await stats4()).compactions;
        const latDuring: number[] = [];
        const msDuring = await publishMany(node4, owner, g3.gid, tBig + big + probe, probe, undefined, latDuring);
        const p99 = (l: number[]) =>
          l.slice().sort((a, b) => a - b)[Math.min(l.length - 1, Math.ceil(l.length * 0.99) - 1)]!;
        const stillRunning = (await stats4()).compactionsDone < (await stats4()).compactions;
        rows3.push(
          {
            figure: `disk: RocksDB bytes after deleting 10 % of ${big.toLocaleString("en-US")} events, compacted`,
            value: bytesAfter,
            peer: "the same store before deleting (compacted)",
            peerValue: bytesBefore,
            lowerIsBetter: true,
          },
          {
            figure: "disk: the same, compacted, once the node has closed",
            value: bytesClosed,
            peer: "the same store before deleting (compacted)",
            peerValue: bytesBefore,
            lowerIsBetter: true,
          },
          {
            figure: "disk: RocksDB bytes after deleting, before the compaction",
            value: bytesDeleted,
            peer: "the same store before deleting (compacted)",
            peerValue: bytesBefore,
            lowerIsBetter: true,
          },
          {
            figure: "disk: bytes given back per deleted event (before - compacted) / deleted",
            value: (bytesBefore - bytesAfter) / gone.size,
            peer: "bytes per event while stored (before / events)",
            peerValue: bytesBefore / (big + probe),
          },
          {
            figure: `write latency (ms per 1,000-event publish, p99) with a compaction ${
              running ? "running" : "done already"
            }`,
            value: p99(latDuring),
            peer: "the same before deleting",
            peerValue: p99(latBefore),
            lowerIsBetter: true,
          },
          {
            figure: `write rate (library, ev/s) with a compaction ${running ? "running" : "done already"}`,
            value: probe / (msDuring / 1000),
            peer: "write rate before deleting (ev/s)",
            peerValue: probe / (msBefore / 1000),
          },
        );
        notes3.push(
          `${gone.size.toLocaleString("en-US")} of ${big.toLocaleString("en-US")} events deleted; the index's ` +
            `background compaction it started (${c1.compactions - c0.compactions}) took ${
              Math.round(c1.compactMs - c0.compactMs)
            } ms; bytes before ${bytesBefore.toLocaleString("en-US")}, after deleting ${
              bytesDeleted.toLocaleString("en-US")
            }, compacted ${
              bytesAfter.toLocaleString("en-US")
            } (before: ${partsBefore}; after deleting: ${partsDeleted}; ` +
            `compacted: ${partsAfter}); the ${probe.toLocaleString("en-US")} writes timed ` +
            `during the second tenth's compaction ${stillRunning ? "ended while it still ran" : "outlasted it"}.`,
        );
      } finally {
        await bnode.close();
      }
    }
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
        ...rows3,
      ],
      notes: [
        ...notes3,
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
