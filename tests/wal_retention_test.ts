// The WAL-retention rule (storage/wal_retention.ts): segments go only after the index flushed them to RocksDB's
// tables, replay starts at the durable checkpoint, and an index behind it with the WAL gone is refused.
import { assert, assertEquals, assertRejects } from "@std/assert";
import { denoWalFs, Wal } from "../storage/wal.ts";
import { readDurableCheckpoint, WalRetention, writeDurableCheckpoint } from "../storage/wal_retention.ts";
import { XfError } from "../core/errors.ts";

async function withWal(fn: (dir: string, wal: Wal, retention: WalRetention) => Promise<void>) {
  const dir = await Deno.makeTempDir({ prefix: "xf-retention-" });
  const retention = await WalRetention.open(dir);
  // 16-byte header + one 16+8-byte record per segment: each append after the first starts a new segment.
  const { wal } = await Wal.open(dir, { checkpointSeq: retention.durable, limits: { wal_segment_bytes_max: 40 } });
  try {
    await fn(dir, wal, retention);
  } finally {
    await wal.close();
    await Deno.remove(dir, { recursive: true });
  }
}

const rec = () => [new Uint8Array(8)];

Deno.test("retire records what the index says is durable and deletes the whole segments it covers", () =>
  withWal(async (dir, wal, retention) => {
    for (let i = 0; i < 4; i++) await wal.append(rec()); // seqs 1..4, one segment each
    const flushes: number[] = [];
    const flushTo = (seq: number) => () => (flushes.push(seq), Promise.resolve(seq));
    // The index holds nothing yet: it is not asked, no checkpoint file.
    assertEquals(await retention.retire(wal, 0n, { durable: flushTo(0) }), 0);
    assertEquals(flushes, []);
    // It holds seq 2, of which nothing is in RocksDB's tables yet: nothing moves.
    assertEquals(await retention.retire(wal, 2n, { durable: flushTo(0) }), 0);
    assertEquals(await readDurableCheckpoint(dir), 0n);
    flushes.length = 0;
    assertEquals(await readDurableCheckpoint(dir), 0n);
    // Seq 2 covers segments 1 and 2; the index says RocksDB flushed up to 3: segments up to 3 go.
    assertEquals(await retention.retire(wal, 2n, { durable: flushTo(3) }), 3);
    assertEquals(flushes, [3]);
    assertEquals(retention.durable, 3n);
    assertEquals(await readDurableCheckpoint(dir), 3n);
    assertEquals(wal.oldestSeq(), 4n);
    // The segment being written is never deleted, but the durable checkpoint moves (a short replay at start).
    assertEquals(await retention.retire(wal, 4n, { durable: flushTo(4) }), 0);
    assertEquals(flushes, [3, 4]);
    assertEquals(await readDurableCheckpoint(dir), 4n);
    assertEquals(wal.oldestSeq(), 4n);
  }));

Deno.test("retire: a failed question to the index deletes nothing and moves no checkpoint; calls run one at a time", () =>
  withWal(async (dir, wal, retention) => {
    for (let i = 0; i < 3; i++) await wal.append(rec());
    await assertRejects(
      () => retention.retire(wal, 2n, { durable: () => Promise.reject(new XfError("STORAGE_ERROR", "flush failed")) }),
      XfError,
      "flush failed",
    );
    assertEquals(wal.oldestSeq(), 1n);
    assertEquals(await readDurableCheckpoint(dir), 0n);
    let running = 0;
    let most = 0;
    const slow = (seq: number) => async () => {
      most = Math.max(most, ++running);
      await new Promise((r) => setTimeout(r, 20));
      running--;
      return seq;
    };
    const all = await Promise.all([
      retention.retire(wal, 1n, { durable: slow(1) }),
      retention.retire(wal, 2n, { durable: slow(2) }),
    ]);
    assertEquals(most, 1);
    assertEquals(all, [1, 1]);
    assertEquals(retention.durable, 2n);
  }));

Deno.test("replayFrom: the durable checkpoint, RocksDB's when it is behind and the WAL holds the gap, else refused", () =>
  withWal(async (dir, wal, retention) => {
    for (let i = 0; i < 5; i++) await wal.append(rec());
    assertEquals(await retention.replayFrom(wal, 5n, `${dir}/db`), 0n); // nothing flushed: replay all
    await retention.retire(wal, 3n, { durable: () => Promise.resolve(3) }); // segments 1..3 deleted
    assertEquals(wal.oldestSeq(), 4n);
    assertEquals(await retention.replayFrom(wal, 5n, `${dir}/db`), 3n); // RocksDB ahead: from the durable one
    assertEquals(await retention.replayFrom(wal, 3n, `${dir}/db`), 3n);
    // RocksDB behind the durable checkpoint by one seq the WAL no longer holds.
    await Deno.mkdir(`${dir}/db`);
    await Deno.writeFile(`${dir}/db/MANIFEST-000005`, new Uint8Array(1));
    await Deno.writeFile(`${dir}/db/000007.log`, new Uint8Array(1));
    await Deno.writeFile(`${dir}/db/000004.log`, new Uint8Array(1));
    const e = await assertRejects(() => retention.replayFrom(wal, 2n, `${dir}/db`), XfError);
    assertEquals(e.code, "STORAGE_CORRUPTION");
    assert(e.message.includes("seqs 3 to 3"), e.message);
    assert(e.message.includes(`"${dir}/db/MANIFEST-000005", "${dir}/db/000007.log"`), e.message);
    assert(!e.message.includes("000004.log"), e.message);
  }));

Deno.test("The durable checkpoint file: written atomically, and a damaged one is WAL_CORRUPTION", async () => {
  const dir = await Deno.makeTempDir({ prefix: "xf-retention-" });
  try {
    assertEquals(await readDurableCheckpoint(dir), 0n);
    await writeDurableCheckpoint(dir, 12345678901234567890n);
    assertEquals(await readDurableCheckpoint(dir), 12345678901234567890n);
    assertEquals([...Deno.readDirSync(dir)].map((e) => e.name), ["checkpoint"]);
    await Deno.writeTextFile(`${dir}/checkpoint`, "12x\n");
    const e = await assertRejects(() => readDurableCheckpoint(dir), XfError);
    assertEquals(e.code, "WAL_CORRUPTION");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// Found by clean-clone CI runs ("Cannot read WAL segment 35: No such file" at the start of the next node): a
// checkpoint in flight when the node closed went on deleting segments that the next node had already listed.
Deno.test("a node that closes mid-checkpoint deletes nothing after its close, and moves no checkpoint", async () => {
  const dir = await Deno.makeTempDir({ prefix: "xf-retention-" });
  try {
    const retention = await WalRetention.open(dir);
    // Deletes that wait for a gate: close must wait for them.
    let release!: () => void;
    const gate = new Promise<void>((r) => release = r);
    let reached!: () => void;
    const deleting0 = new Promise<void>((r) => reached = r);
    const removed: string[] = [];
    const fs = {
      ...denoWalFs,
      remove: async (p: string) => {
        reached();
        await gate;
        await Deno.remove(p);
        removed.push(p);
      },
    };
    const { wal } = await Wal.open(dir, { checkpointSeq: 0n, fs, limits: { wal_segment_bytes_max: 40 } });
    for (let i = 0; i < 4; i++) await wal.append(rec());
    const deleting = retention.retire(wal, 3n, { durable: () => Promise.resolve(3) });
    await deleting0; // The checkpoint is deleting its first segment.
    let closed = false;
    const closing = wal.close().then(() => closed = true);
    await new Promise((r) => setTimeout(r, 20));
    assert(!closed, "the WAL closed while its checkpoint was deleting segments");
    release();
    await closing;
    assertEquals(await deleting, 3);
    const after = removed.length;
    // The index answers only after the close: nothing is recorded or deleted any more.
    const wal2 = (await Wal.open(dir, { checkpointSeq: 3n, limits: { wal_segment_bytes_max: 40 } })).wal;
    for (let i = 0; i < 3; i++) await wal2.append(rec());
    let answer!: (n: number) => void;
    let asked!: () => void;
    const askedIndex = new Promise<void>((r) => asked = r);
    const late = retention.retire(wal2, 6n, {
      durable: () => new Promise<number>((r) => (answer = r, asked())),
    });
    await askedIndex;
    await wal2.close();
    answer(6);
    assertEquals(await late, 0);
    assertEquals(await readDurableCheckpoint(dir), 3n);
    assertEquals(removed.length, after);
    // wal2's segments 4..6 (one record each) are all still there.
    const listed = [...Deno.readDirSync(dir)].filter((e) => e.name.endsWith(".wal")).length;
    assert(listed >= 3, `segments deleted after close: ${listed} left`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
