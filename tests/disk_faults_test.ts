// Disk faults: bytes flipped in the WAL, in RocksDB's `.log`, in an `.sst`, in a stored Merkle page, and a full
// disk. Each case asserts that no acknowledged event is lost silently: it is read back byte for byte, or the node
// refuses to start naming the damage, or `fsck` lists it (with whether a peer could restore it).
import { toHex } from "../core/bytes.ts";
import { assert, assertEquals } from "@std/assert";
import { makeEvents, spawnNode, testGroup } from "./_helpers.ts";
import { cborArrayOf, openNode, type XfNode } from "../node.ts";
import { openRocks } from "../storage/kv_rocks.ts";
import { eventKey, KS } from "../storage/keys.ts";
import { fromHex } from "../core/bytes.ts";
import { signEvent, type StoredEvent } from "../storage/event.ts";
import { readDurableCheckpoint } from "../storage/wal_retention.ts";

const TEST = { sanitizeOps: false, sanitizeResources: false } as const;
/** Every case ends within this (a slow disk fails the test rather than hanging it). */
const CASE_MS = 45_000;

function bounded<T>(p: Promise<T>, what: string, ms = CASE_MS): Promise<T> {
  let t: ReturnType<typeof setTimeout>;
  return Promise.race([
    p.finally(() => clearTimeout(t)),
    new Promise<never>((_, rej) => t = setTimeout(() => rej(new Error(`${what}: not done within ${ms} ms`)), ms)),
  ]);
}

/** A data dir holding a group's manifest and `n` events, all acknowledged, after a clean stop. */
async function filled(dir: string, n: number): Promise<{ gid: string; acked: Map<string, Uint8Array> }> {
  const g = await testGroup("disk");
  const events = await makeEvents(g, n);
  const node = await openNode({ dataDir: dir, workers: false });
  const acked = new Map<string, Uint8Array>();
  try {
    await publishAll(node, [g.manifest], acked);
    for (let i = 0; i < events.length; i += 200) await publishAll(node, events.slice(i, i + 200), acked);
  } finally {
    await node.close();
  }
  assertEquals(acked.size, n + 1);
  return { gid: toHex(g.gid), acked };
}

async function publishAll(node: XfNode, events: StoredEvent[], acked: Map<string, Uint8Array>) {
  const res = await node.publish(events.map((e) => e.bytes));
  res.forEach((r, i) => {
    if (r.status === "stored" || r.status === "duplicate") acked.set(toHex(events[i]!.id), events[i]!.bytes);
  });
}

/** Flush RocksDB's memtable to table files (a clean stop alone may leave it in RocksDB's log). */
async function flushRocks(dir: string) {
  const kv = await openRocks(`${dir}/db`);
  try {
    await kv.compact(new Uint8Array([0]), new Uint8Array(64).fill(0xff));
  } finally {
    await kv.close();
  }
}

async function flipMiddle(path: string) {
  const b = await Deno.readFile(path);
  const at = b.length >> 1;
  b[at] = b[at]! ^ 0x5a;
  await Deno.writeFile(path, b);
}

async function largest(dir: string, ext: string): Promise<string | null> {
  let best: { path: string; size: number } | null = null;
  for await (const e of Deno.readDir(dir)) {
    if (!e.isFile || !e.name.endsWith(ext)) continue;
    const { size } = await Deno.stat(`${dir}/${e.name}`);
    if (!best || size > best.size) best = { path: `${dir}/${e.name}`, size };
  }
  return best?.path ?? null;
}

/**
 * Reopen and account for every acknowledged event: read back intact, or listed by fsck as damaged. Returns
 * the ids lost (unreadable or missing), or the error the node refused to start with.
 */
async function account(dir: string, gid: string, acked: Map<string, Uint8Array>) {
  let node: XfNode;
  try {
    node = await openNode({ dataDir: dir, workers: false });
  } catch (e) {
    return { refused: e as Error & { code?: string }, lost: [] as string[], fsck: null, scan: null, recovery: "" };
  }
  try {
    const lost: string[] = [];
    for (const [id, bytes] of acked) {
      const got = await node.get(id).catch(() => null);
      if (!got) lost.push(id);
      else assertEquals(toHex(got), toHex(bytes), `event ${id} read back with other bytes`);
    }
    const scan = await node.scan();
    const fsck = await node.fsck(gid).catch((e) => {
      throw new Error(`fsck threw instead of reporting: ${(e as Error).message}`);
    });
    if (!fsck) throw new Error("fsck: group unknown");
    const listed = new Set(fsck.damaged.map((d) => d.id));
    for (const id of lost) assert(listed.has(id), `event ${id} is lost and fsck does not list it`);
    if (lost.length) assert(!fsck.ok, "fsck reports consistent with events lost");
    return { refused: null, lost, fsck, scan, recovery: node.pipeline.recovery };
  } finally {
    await node.close();
  }
}

async function withDir(fn: (dir: string) => Promise<void>) {
  const dir = await Deno.makeTempDir({ prefix: "xf-disk-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

Deno.test({
  ...TEST,
  name: "A byte flipped in the largest .sst: every acknowledged event reads back or fsck lists it, restorable",
  fn: () =>
    withDir((dir) =>
      bounded(
        (async () => {
          const { gid, acked } = await filled(dir, 3000);
          await flushRocks(dir);
          const sst = await largest(`${dir}/db`, ".sst");
          if (!sst) throw new Error("no .sst after a flush");
          await flipMiddle(sst);
          const r = await account(dir, gid, acked);
          if (r.refused) {
            assert(/STORAGE|Corrupt|sst/i.test(`${r.refused.code} ${r.refused.message}`), r.refused.message);
            return;
          }
          // The flip is found: repaired at start from the WAL (which still holds what RocksDB has not flushed since
          // the durable checkpoint), or reported by fsck (every event read and hashed) or the store-wide scan.
          const restored = Number(/restoring (\d+) acknowledged events/.exec(r.recovery)?.[1] ?? 0);
          assert(
            restored > 0 || !r.fsck!.ok || !r.scan!.ok,
            `a flipped .sst block neither repaired nor reported (${r.recovery})`,
          );
          for (const d of r.fsck!.damaged) assert(d.restorable, `event ${d.id} damaged and not restorable`);
          console.log(
            `sst flip: ${r.lost.length} events lost, ${restored} restored from the WAL, fsck ok=${r.fsck!.ok} ` +
              `damaged=${r.fsck!.damagedCount}; ${r.scan!.problem}`,
          );
        })(),
        "sst flip",
      )
    ),
});

Deno.test({
  ...TEST,
  name: "A Merkle page changed on disk: fsck reports the page, every event still reads back",
  fn: () =>
    withDir((dir) =>
      bounded(
        (async () => {
          const { gid, acked } = await filled(dir, 500);
          const kv = await openRocks(`${dir}/db`);
          try {
            const lo = new Uint8Array(33);
            lo[0] = KS.merkle;
            lo.set(Uint8Array.from(gid.match(/../g)!.map((h) => parseInt(h, 16))), 1);
            const pages: [Uint8Array, Uint8Array][] = [];
            for await (const [k, v] of kv.range({ gte: lo, limit: 1 })) pages.push([k.slice(), v.slice()]);
            const [key, value] = pages[0] ?? [];
            if (!key || !value || key[0] !== KS.merkle) throw new Error("no Merkle page stored");
            value[value.length >> 1] = value[value.length >> 1]! ^ 0x01;
            await kv.batch([{ type: "put", key, value }], { sync: true });
          } finally {
            await kv.close();
          }
          const r = await account(dir, gid, acked);
          assert(!r.refused, r.refused?.message);
          assertEquals(r.lost, []);
          assert(!r.fsck!.ok, "fsck reports consistent over a changed Merkle page");
          assert(/Merkle page/.test(r.fsck!.firstDifference ?? ""), r.fsck!.firstDifference);
        })(),
        "merkle page",
      )
    ),
});

Deno.test({
  ...TEST,
  name: "A byte flipped in the newest WAL segment after a clean stop: nothing acknowledged is lost silently",
  fn: () =>
    withDir((dir) =>
      bounded(
        (async () => {
          const { gid, acked } = await filled(dir, 1000);
          const seg = await largest(`${dir}/wal`, ".wal");
          if (!seg) throw new Error("no WAL segment");
          await flipMiddle(seg);
          const r = await account(dir, gid, acked);
          if (r.refused) {
            assert(/WAL_CORRUPTION|STORAGE_CORRUPTION/.test(`${r.refused.code}`), r.refused.message);
            return;
          }
          assertEquals(r.lost, [], "acknowledged events lost after a WAL flip");
          assert(r.fsck!.ok, r.fsck!.firstDifference);
        })(),
        "wal flip",
      )
    ),
});

/** The highest-numbered RocksDB log file of a data dir (the one RocksDB writes now), or null. */
async function newestLog(dir: string): Promise<{ path: string; size: number } | null> {
  let best: string | null = null;
  for await (const e of Deno.readDir(`${dir}/db`)) {
    if (e.isFile && e.name.endsWith(".log") && (!best || e.name > best)) best = e.name;
  }
  return best ? { path: `${dir}/db/${best}`, size: (await Deno.stat(`${dir}/db/${best}`)).size } : null;
}

/** Publish over HTTP to a child node, `per` events a request; every acknowledged event goes into `acked`. */
async function publishHttp(url: string, gid: string, events: StoredEvent[], acked: Map<string, Uint8Array>, per = 100) {
  for (let i = 0; i < events.length; i += per) {
    const batch = events.slice(i, i + per);
    const r = await fetch(`${url}/v1/groups/${gid}/events`, {
      method: "POST",
      body: (batch.length === 1 ? batch[0]!.bytes : cborArrayOf(batch.map((e) => e.bytes))) as BodyInit,
      headers: { "content-type": "application/cbor" },
    });
    assert(r.status === 200 || r.status === 201, `publish answered ${r.status}`);
    const body = await r.json();
    const results: { status: string }[] = body.results ?? [body];
    results.forEach((res, j) => {
      if (res.status === "stored" || res.status === "duplicate") acked.set(toHex(batch[j]!.id), batch[j]!.bytes);
    });
  }
}

/** Events of `acked` that RocksDB in `dir` does not hold (opened directly, as RocksDB recovers it). */
async function missingInRocks(dir: string, acked: Map<string, Uint8Array>): Promise<number> {
  const kv = await openRocks(`${dir}/db`);
  try {
    const got = await kv.getMany([...acked.keys()].map((id) => eventKey(fromHex(id)!)));
    return got.filter((v) => v === undefined).length;
  } finally {
    await kv.close();
  }
}

Deno.test({
  ...TEST,
  name: "A byte flipped in the middle of RocksDB's newest .log after a kill: every acknowledged event is restored",
  fn: () =>
    withDir((dir) =>
      bounded(
        (async () => {
          const g = await testGroup("rocks-log");
          const gid = toHex(g.gid);
          const events = await makeEvents(g, 3000);
          const acked = new Map<string, Uint8Array>();
          const { child, url } = await spawnNode(dir);
          try {
            await publishHttp(url, gid, [g.manifest], acked);
            await publishHttp(url, gid, events, acked);
            // A read waits until the index holds every acknowledged event: they are all in RocksDB's log now.
            const last = await fetch(`${url}/v1/events/${toHex(events.at(-1)!.id)}`);
            assertEquals(last.status, 200);
            await last.body?.cancel();
          } finally {
            child.kill("SIGKILL");
            await child.status;
          }
          assertEquals(acked.size, events.length + 1);
          const log = await newestLog(dir);
          if (!log || log.size < 256 * 1024) {
            throw new Error(`RocksDB's log holds too little to damage: ${log?.size} bytes`);
          }
          await flipMiddle(log.path);
          // RocksDB alone (paranoid checks off in the binding) drops the damaged batches and says nothing.
          const lostByRocks = await missingInRocks(dir, acked);
          assert(lostByRocks > 0, "the flipped byte cost RocksDB nothing: the test damaged no batch");
          const r = await account(dir, gid, acked);
          assert(!r.refused, r.refused?.message);
          assertEquals(r.lost, [], "acknowledged events lost after a flip in RocksDB's log");
          assert(r.fsck!.ok, `fsck after the repair: ${r.fsck!.firstDifference} ${JSON.stringify(r.fsck!.problems)}`);
          assertEquals(r.fsck!.count, acked.size);
          const restored = Number(/restoring (\d+) acknowledged events/.exec(r.recovery)?.[1] ?? 0);
          assertEquals(restored, lostByRocks, r.recovery);
          console.log(`rocks log flip: RocksDB lost ${lostByRocks} of ${acked.size}; ${r.recovery}`);
        })(),
        "rocks log flip",
      )
    ),
});

Deno.test({
  ...TEST,
  name:
    "A byte flipped in the middle of RocksDB's newest .log after a clean stop: every acknowledged event is restored",
  fn: () =>
    withDir((dir) =>
      bounded(
        (async () => {
          const { gid, acked } = await filled(dir, 3000);
          // A clean close does not flush RocksDB's memtable: its log holds the writes since the last flush.
          const log = await newestLog(dir);
          if (!log || log.size < 256 * 1024) {
            throw new Error(`RocksDB's log holds too little to damage: ${log?.size} bytes`);
          }
          await flipMiddle(log.path);
          const lostByRocks = await missingInRocks(dir, acked);
          assert(lostByRocks > 0, "the flipped byte cost RocksDB nothing: the test damaged no batch");
          const r = await account(dir, gid, acked);
          assert(!r.refused, r.refused?.message);
          assertEquals(r.lost, [], "acknowledged events lost after a flip in RocksDB's log");
          assert(r.fsck!.ok, `fsck after the repair: ${r.fsck!.firstDifference} ${JSON.stringify(r.fsck!.problems)}`);
          const restored = Number(/restoring (\d+) acknowledged events/.exec(r.recovery)?.[1] ?? 0);
          assertEquals(restored, lostByRocks, r.recovery);
          console.log(`rocks log flip after a clean stop: RocksDB lost ${lostByRocks} of ${acked.size}; ${r.recovery}`);
        })(),
        "rocks log flip, clean stop",
      )
    ),
});

/** Copy a directory's files (not recursive). */
async function copyFiles(from: string, to: string) {
  await Deno.mkdir(to, { recursive: true });
  for await (const e of Deno.readDir(from)) if (e.isFile) await Deno.copyFile(`${from}/${e.name}`, `${to}/${e.name}`);
}

Deno.test({
  ...TEST,
  name: "RocksDB behind what it had flushed: replayed from the WAL while it holds the records, else STORAGE_CORRUPTION",
  fn: () =>
    withDir((dir) =>
      bounded(
        (async () => {
          // Small WAL segments, so whole segments are covered (and deleted) while the test writes.
          const limits = { wal_segment_bytes_max: 64 * 1024 };
          const g = await testGroup("behind");
          const gid = toHex(g.gid);
          // Large events: RocksDB fills its 4 MiB memtable and flushes it by itself while the test writes.
          const events: StoredEvent[] = [];
          for (let i = 0; i < 1200; i++) {
            events.push(
              await signEvent(g.owner, {
                group: g.gid,
                ts: Date.now() - 1_000_000 + i,
                kind: 16,
                tags: [],
                payload: crypto.getRandomValues(new Uint8Array(8000)),
              }),
            );
          }
          const acked = new Map<string, Uint8Array>();
          const write = async (list: StoredEvent[], walDroppedPast?: bigint) => {
            const node = await openNode({ dataDir: dir, workers: false, limits });
            try {
              for (let i = 0; i < list.length; i += 100) await publishAll(node, list.slice(i, i + 100), acked);
              // The case below needs WAL records past the old index's seq gone: wait for the checkpoint that drops
              // them (a fast machine finishes writing before the first one, wal_checkpoint_ms after an index write).
              for (
                let t = 0;
                walDroppedPast !== undefined && (await readDurableCheckpoint(`${dir}/wal`)) <= walDroppedPast;
                t++
              ) {
                if (t > 500) throw new Error(`the WAL's durable checkpoint did not pass seq ${walDroppedPast} in 10 s`);
                await new Promise((r) => setTimeout(r, 20));
              }
            } finally {
              await node.close();
            }
          };
          await write([g.manifest, ...events.slice(0, 400)]);
          // An old copy of the index, as an operator restoring a backup without its WAL would put back.
          await copyFiles(`${dir}/db`, `${dir}/db-old`);
          // A few more events stay in the segment being written: the WAL still holds them.
          await write(events.slice(400, 410));
          const walNow = `${dir}/wal-now`;
          await copyFiles(`${dir}/wal`, walNow);
          await Deno.remove(`${dir}/db`, { recursive: true });
          await copyFiles(`${dir}/db-old`, `${dir}/db`);
          const held = await account(dir, gid, acked);
          assert(!held.refused, held.refused?.message);
          assertEquals(held.lost, [], "the WAL held what the old index lacked, and it was not replayed");
          // Now many more: whole segments are covered and deleted once RocksDB flushed them.
          await write(events.slice(410), 411n);
          const before = [...Deno.readDirSync(`${dir}/wal`)].filter((e) => e.name.endsWith(".wal")).length;
          await Deno.remove(`${dir}/db`, { recursive: true });
          await copyFiles(`${dir}/db-old`, `${dir}/db`);
          const r = await account(dir, gid, acked);
          if (!r.refused) {
            throw new Error(`started with an index ${acked.size - 401} events behind and no WAL to repair it`);
          }
          assertEquals(r.refused.code, "STORAGE_CORRUPTION", r.refused.message);
          assert(r.refused.message.includes(`${dir}/db/MANIFEST-`), r.refused.message);
          assert(r.refused.message.includes(`${dir}/wal/checkpoint`), r.refused.message);
          console.log(`behind: ${before} WAL segments left; refused: ${r.refused.message}`);
        })(),
        "index behind",
      )
    ),
});

const isRoot = Deno.uid?.() === 0;

Deno.test({
  ...TEST,
  name: "A full disk (64 MiB tmpfs): writes refused with STORAGE_FULL, reads served, writes resume by themselves",
  ignore: !isRoot,
  fn: () =>
    bounded(
      (async () => {
        const mnt = await Deno.makeTempDir({ prefix: "xf-full-" });
        const mount = await new Deno.Command("mount", { args: ["-t", "tmpfs", "-o", "size=64m", "tmpfs", mnt] })
          .output();
        if (!mount.success) {
          console.log(`skipped: cannot mount a tmpfs (${new TextDecoder().decode(mount.stderr).trim()})`);
          await Deno.remove(mnt).catch(() => {});
          return;
        }
        try {
          const dir = `${mnt}/data`;
          // Space the test gives back later.
          await Deno.writeFile(`${mnt}/ballast`, new Uint8Array(12 << 20));
          const g = await testGroup("full");
          const gid = toHex(g.gid);
          let ts = Date.now() - 10_000_000;
          const big = async (n: number) => {
            const out: StoredEvent[] = [];
            for (let i = 0; i < n; i++) {
              out.push(
                await signEvent(g.owner, {
                  group: g.gid,
                  ts: ts++,
                  kind: 16,
                  tags: [],
                  payload: crypto.getRandomValues(new Uint8Array(16_000)),
                }),
              );
            }
            return out;
          };
          const acked = new Map<string, Uint8Array>();
          // The reserve a clean stop needs, and how often a full node probes for space again (at their defaults).
          const node = await openNode({
            dataDir: dir,
            workers: false,
            limits: { wal_segment_bytes_max: 4 << 20, storage_reserve_bytes: 4 << 20, storage_full_probe_ms: 1000 },
          });
          let closed = false;
          try {
            await publishAll(node, [g.manifest], acked);
            let full = 0;
            for (let round = 0; round < 120 && full < 3; round++) {
              const batch = await big(50);
              const res = await node.publish(batch.map((e) => e.bytes)).catch((e) => [
                { status: "rejected", code: (e as { code?: string }).code },
              ]);
              res.forEach((r, i) => {
                if (r.status === "stored" || r.status === "duplicate") acked.set(toHex(batch[i]!.id), batch[i]!.bytes);
              });
              if (res.some((r) => r.code === "STORAGE_FULL")) full++;
              else if (res.some((r) => r.status === "rejected")) {
                throw new Error(`unexpected rejection: ${JSON.stringify(res.find((r) => r.status === "rejected"))}`);
              }
            }
            assert(full > 0, "the disk never filled");
            // Up, serving reads, showing the condition.
            assertEquals(node.pipeline.state, "ready");
            assertEquals(node.health().storage, "full");
            assert((await node.metrics()).includes("xf_storage_full 1"));
            for (const [id, bytes] of acked) assertEquals(toHex((await node.get(id))!), toHex(bytes));
            // Space returns: writes are taken again without a restart.
            await Deno.remove(`${mnt}/ballast`);
            const deadline = Date.now() + 15_000;
            let resumed = false;
            while (Date.now() < deadline && !resumed) {
              await new Promise((r) => setTimeout(r, 250));
              const batch = await big(1);
              const res = await node.publish(batch.map((e) => e.bytes)).catch(() => []);
              if (res[0]?.status === "stored") {
                acked.set(toHex(batch[0]!.id), batch[0]!.bytes);
                resumed = true;
              }
            }
            assert(resumed, "writes did not resume after space returned");
            assertEquals(node.health().storage, "ok");
            await node.close();
            closed = true;
          } finally {
            if (!closed) await node.close().catch(() => {});
          }
          // Nothing acknowledged lost.
          const again = await openNode({ dataDir: dir, workers: false });
          try {
            for (const [id, bytes] of acked) assertEquals(toHex((await again.get(id))!), toHex(bytes), id);
            const f = await again.fsck(gid);
            assert(f?.ok, f?.firstDifference ?? JSON.stringify(f?.damaged.slice(0, 3)));
          } finally {
            await again.close();
          }
          console.log(`full disk: ${acked.size} acknowledged, all present`);
        } finally {
          await new Deno.Command("umount", { args: [mnt] }).output();
          await Deno.remove(mnt, { recursive: true }).catch(() => {});
        }
      })(),
      "full disk",
      60_000,
    ),
});

if (!isRoot) console.log("disk_faults_test: full-disk case skipped: not root (it mounts a tmpfs)");
