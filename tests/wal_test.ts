import { assertEquals, assertRejects } from "@std/assert";
import { XfError } from "../core/errors.ts";
import { crc32c, denoWalFs, describe, Wal, type WalFile, type WalFs } from "../storage/wal.ts";

const HEADER = 16; // Segment header and record header are both 16 bytes.
const PAYLOAD = 100;
const RECORD = HEADER + PAYLOAD;
/** Five 100-byte records fit in a segment of this size. */
const FIVE_PER_SEGMENT = HEADER + 5 * RECORD;

function payload(i: number, size = PAYLOAD): Uint8Array {
  const p = new Uint8Array(size).fill(i & 0xff);
  if (size >= 4) new DataView(p.buffer).setUint32(0, i, true);
  return p;
}

function segPath(dir: string, num: number): string {
  return `${dir}/${String(num).padStart(20, "0")}.wal`;
}

async function segNums(dir: string): Promise<number[]> {
  const nums: number[] = [];
  for await (const e of Deno.readDir(dir)) {
    if (e.name.endsWith(".wal")) nums.push(Number(e.name.slice(0, 20)));
  }
  return nums.sort((a, b) => a - b);
}

async function replayAll(wal: Wal, afterSeq: bigint) {
  const out: { seq: bigint; payload: Uint8Array }[] = [];
  for await (const batch of wal.replay(afterSeq)) out.push(...batch);
  return out;
}

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "xf_wal_test_" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Write `count` records of 100 bytes, one append each, then close. */
async function fill(
  dir: string,
  count: number,
  segmentBytesMax = FIVE_PER_SEGMENT,
): Promise<void> {
  const { wal } = await Wal.open(dir, { checkpointSeq: 0n, limits: { wal_segment_bytes_max: segmentBytesMax } });
  for (let i = 1; i <= count; i++) await wal.append([payload(i)]);
  await wal.close();
}

async function flipBit(path: string, offset: number): Promise<void> {
  const buf = await Deno.readFile(path);
  buf[offset] = buf[offset]! ^ 0x10;
  await Deno.writeFile(path, buf);
}

async function walError(p: Promise<unknown>): Promise<XfError> {
  return await assertRejects(() => p, XfError) as XfError;
}

Deno.test("crc32c() matches the Castagnoli check value", () => {
  assertEquals(crc32c(new TextEncoder().encode("123456789")), 0xe3069283);
  assertEquals(crc32c(new Uint8Array(0)), 0);
  const long = new Uint8Array(1000).map((_, i) => i * 7);
  assertEquals(
    crc32c(long.subarray(300), crc32c(long.subarray(0, 300))),
    crc32c(long),
  );
});

Deno.test("Wal.replay() returns every record across segments after reopen", async () => {
  await withDir(async (dir) => {
    const { wal, recovery } = await Wal.open(dir, {
      checkpointSeq: 0n,
      limits: { wal_segment_bytes_max: 4096 },
    });
    assertEquals(recovery.records, 0);
    const sent: Uint8Array[] = [];
    for (let i = 0; i < 30; i++) {
      const batch = Array.from(
        { length: 40 },
        (_, j) => payload(i * 40 + j, (i * 40 + j) % 150),
      );
      const r = await wal.append(batch);
      assertEquals(r, {
        firstSeq: BigInt(i * 40 + 1),
        lastSeq: BigInt(i * 40 + 40),
      });
      sent.push(...batch);
    }
    await wal.close();

    const again = await Wal.open(dir, {
      checkpointSeq: 0n,
      limits: { wal_segment_bytes_max: 4096 },
    });
    try {
      assertEquals(again.recovery.records, 1200);
      assertEquals(again.recovery.firstSeq, 1n);
      assertEquals(again.recovery.lastSeq, 1200n);
      assertEquals(again.recovery.replayable, 1200);
      assertEquals(again.recovery.tornTail, null);
      assertEquals(again.recovery.segments > 10, true);
      assertEquals(again.recovery.segments, (await segNums(dir)).length);
      const batches: number[] = [];
      const got: { seq: bigint; payload: Uint8Array }[] = [];
      for await (const b of again.wal.replay(0n)) {
        batches.push(b.length);
        got.push(...b);
      }
      assertEquals(batches.every((n) => n <= 512), true);
      assertEquals(got.map((r) => r.seq), sent.map((_, i) => BigInt(i + 1)));
      assertEquals(got.map((r) => r.payload), sent);
      assertEquals((await again.wal.append([payload(0)])).firstSeq, 1201n);
    } finally {
      await again.wal.close();
    }
  });
});

Deno.test("Wal.append() group-commits concurrent appends into few syncs", async () => {
  await withDir(async (dir) => {
    const { wal } = await Wal.open(dir, { checkpointSeq: 0n });
    try {
      const results = await Promise.all(
        Array.from({ length: 1000 }, (_, i) => wal.append([payload(i)])),
      );
      const seqs = results.map((r) => r.firstSeq).sort((
        a,
        b,
      ) => (a < b ? -1 : 1));
      assertEquals(seqs, Array.from({ length: 1000 }, (_, i) => BigInt(i + 1)));
      const stats = wal.stats();
      assertEquals(stats.records, 1000);
      assertEquals(
        stats.syncs < 100,
        true,
        `${stats.syncs} syncs for 1000 appends`,
      );
      const got = await replayAll(wal, 0n);
      assertEquals(got.length, 1000);
      assertEquals(got.map((r) => r.seq), seqs);
    } finally {
      await wal.close();
    }
  });
});

Deno.test("Wal.append() survives a torn tail", async () => {
  await withDir(async (dir) => {
    await fill(dir, 10, 1 << 20);
    const path = segPath(dir, 1);
    const size = (await Deno.stat(path)).size;
    await Deno.truncate(path, size - 50); // The 10th record loses its last 50 bytes.

    const { wal, recovery } = await Wal.open(dir, { checkpointSeq: 0n });
    assertEquals(recovery.tornTail?.segment, 1);
    assertEquals(recovery.tornTail?.offset, HEADER + 9 * RECORD);
    assertEquals(recovery.tornTail?.bytesCut, RECORD - 50);
    assertEquals(recovery.records, 9);
    assertEquals(recovery.lastSeq, 9n);
    assertEquals(describe(recovery).includes("torn tail"), true);
    assertEquals((await Deno.stat(path)).size, HEADER + 9 * RECORD);
    assertEquals(await wal.append([payload(99)]), {
      firstSeq: 10n,
      lastSeq: 10n,
    });
    await wal.close();

    const again = await Wal.open(dir, { checkpointSeq: 0n });
    try {
      assertEquals(again.recovery.tornTail, null);
      const got = await replayAll(again.wal, 0n);
      assertEquals(
        got.map((r) => r.seq),
        Array.from({ length: 10 }, (_, i) => BigInt(i + 1)),
      );
      assertEquals(got[8]!.payload, payload(9));
      assertEquals(got[9]!.payload, payload(99));
    } finally {
      await again.wal.close();
    }
  });
});

Deno.test("Wal.open() cuts garbage bytes after the last record", async () => {
  await withDir(async (dir) => {
    await fill(dir, 10, 1 << 20);
    const path = segPath(dir, 1);
    const size = (await Deno.stat(path)).size;
    await Deno.writeFile(path, crypto.getRandomValues(new Uint8Array(100)), {
      append: true,
    });

    const { wal, recovery } = await Wal.open(dir, { checkpointSeq: 0n });
    try {
      assertEquals(recovery.tornTail?.offset, size);
      assertEquals(recovery.tornTail?.bytesCut, 100);
      assertEquals(recovery.records, 10);
      assertEquals((await wal.append([payload(11)])).firstSeq, 11n);
      assertEquals((await replayAll(wal, 0n)).length, 11);
    } finally {
      await wal.close();
    }
  });
});

Deno.test("Wal.open() treats a flipped bit in the last record as a torn tail", async () => {
  await withDir(async (dir) => {
    await fill(dir, 10, 1 << 20);
    await flipBit(segPath(dir, 1), HEADER + 9 * RECORD + HEADER + 50);

    const { wal, recovery } = await Wal.open(dir, { checkpointSeq: 0n });
    try {
      assertEquals(recovery.tornTail, {
        segment: 1,
        offset: HEADER + 9 * RECORD,
        bytesCut: RECORD,
        reason: "checksum mismatch",
      });
      assertEquals(recovery.lastSeq, 9n);
      assertEquals((await wal.append([payload(10)])).firstSeq, 10n);
    } finally {
      await wal.close();
    }
  });
});

Deno.test("Wal.open() rejects a flipped bit in a middle record after the checkpoint", async () => {
  await withDir(async (dir) => {
    await fill(dir, 15); // Segments 1, 2, 3 hold seqs 1-5, 6-10, 11-15.
    const offset = HEADER + 2 * RECORD; // Seq 3, in segment 1.
    await flipBit(segPath(dir, 1), offset + HEADER + 10);
    const e = await walError(Wal.open(dir, { checkpointSeq: 4n }));
    assertEquals(e.code, "WAL_CORRUPTION");
    assertEquals(
      e.message.startsWith(
        `Cannot open WAL segment 1: checksum mismatch at offset ${offset}`,
      ),
      true,
      e.message,
    );
  });
});

Deno.test("Wal.open() rejects a flipped bit in the last segment followed by valid records", async () => {
  await withDir(async (dir) => {
    await fill(dir, 15);
    const offset = HEADER + 1 * RECORD; // Seq 12, in segment 3; seqs 13-15 follow.
    await flipBit(segPath(dir, 3), offset + 8); // In the seq field.
    const e = await walError(Wal.open(dir, { checkpointSeq: 0n }));
    assertEquals(e.code, "WAL_CORRUPTION");
    assertEquals(
      e.message.includes(`segment 3: checksum mismatch at offset ${offset}`),
      true,
      e.message,
    );
  });
});

Deno.test("Wal.open() ignores a flipped bit in a segment the checkpoint covers", async () => {
  await withDir(async (dir) => {
    await fill(dir, 15);
    const offset = HEADER + 2 * RECORD;
    await flipBit(segPath(dir, 1), offset + HEADER + 10);
    const { wal, recovery } = await Wal.open(dir, { checkpointSeq: 5n });
    try {
      assertEquals(recovery.skipped, [{
        segment: 1,
        offset,
        reason: "checksum mismatch",
      }]);
      assertEquals(recovery.tornTail, null);
      assertEquals(recovery.replayable, 10);
      assertEquals(
        describe(recovery).includes("ignored 1 checkpointed corruption"),
        true,
      );
      const got = await replayAll(wal, 5n);
      assertEquals(
        got.map((r) => r.seq),
        Array.from({ length: 10 }, (_, i) => BigInt(i + 6)),
      );
      assertEquals(await wal.checkpoint(5n), 1);
      assertEquals(await segNums(dir), [2, 3]);
    } finally {
      await wal.close();
    }
  });
});

Deno.test("Wal.open() rejects a missing segment after the checkpoint", async () => {
  await withDir(async (dir) => {
    await fill(dir, 15);
    await Deno.remove(segPath(dir, 2));
    const e = await walError(Wal.open(dir, { checkpointSeq: 7n }));
    assertEquals(e.code, "WAL_CORRUPTION");
    assertEquals(
      e.message,
      "Cannot open WAL: seq 6 to 10 are missing between segment 1 and segment 3 (checkpoint is 7)",
    );
  });
});

Deno.test("Wal.open() accepts a missing segment before the checkpoint", async () => {
  await withDir(async (dir) => {
    await fill(dir, 15);
    await Deno.remove(segPath(dir, 2));
    const { wal, recovery } = await Wal.open(dir, { checkpointSeq: 10n });
    try {
      assertEquals(recovery.records, 10);
      assertEquals(recovery.replayable, 5);
      assertEquals((await replayAll(wal, 10n)).map((r) => r.seq), [
        11n,
        12n,
        13n,
        14n,
        15n,
      ]);
    } finally {
      await wal.close();
    }
  });
});

Deno.test("Wal.open() continues seqs after the checkpoint when the index is ahead", async () => {
  await withDir(async (dir) => {
    await fill(dir, 3);
    const { wal, recovery } = await Wal.open(dir, { checkpointSeq: 100n });
    assertEquals(recovery.lastSeq, 3n);
    assertEquals(recovery.replayable, 0);
    assertEquals(await wal.append([payload(1)]), {
      firstSeq: 101n,
      lastSeq: 101n,
    });
    await wal.close();
    const again = await Wal.open(dir, { checkpointSeq: 100n });
    try {
      assertEquals((await replayAll(again.wal, 100n)).map((r) => r.seq), [
        101n,
      ]);
    } finally {
      await again.wal.close();
    }
  });
});

Deno.test("Wal.checkpoint() deletes only fully covered segments", async () => {
  await withDir(async (dir) => {
    const { wal } = await Wal.open(dir, {
      checkpointSeq: 0n,
      limits: { wal_segment_bytes_max: FIVE_PER_SEGMENT },
    });
    try {
      for (let i = 1; i <= 15; i++) await wal.append([payload(i)]);
      assertEquals(await segNums(dir), [1, 2, 3]);
      assertEquals(await wal.checkpoint(4n), 0);
      assertEquals(await wal.checkpoint(7n), 1);
      assertEquals(await segNums(dir), [2, 3]);
      assertEquals((await replayAll(wal, 7n)).map((r) => Number(r.seq)), [
        8,
        9,
        10,
        11,
        12,
        13,
        14,
        15,
      ]);
      assertEquals(await wal.checkpoint(15n), 1); // Segment 3 is being written: it stays.
      assertEquals(await segNums(dir), [3]);
      assertEquals(wal.stats().segments, 1);
      assertEquals((await wal.append([payload(16)])).firstSeq, 16n);
    } finally {
      await wal.close();
    }
    const again = await Wal.open(dir, {
      checkpointSeq: 15n,
      limits: { wal_segment_bytes_max: FIVE_PER_SEGMENT },
    });
    try {
      assertEquals(again.recovery.replayable, 1);
      assertEquals((await replayAll(again.wal, 15n)).map((r) => r.seq), [16n]);
    } finally {
      await again.wal.close();
    }
  });
});

/** {@linkcode denoWalFs} with switchable faults. */
function faultyFs() {
  const faults = { write: false, sync: false };
  const fs: WalFs = {
    ...denoWalFs,
    async openFile(path, options) {
      const f = await denoWalFs.openFile(path, options);
      const file: WalFile = {
        write: (data) => faults.write ? Promise.reject(new Error("injected write failure")) : f.write(data),
        syncData: () => faults.sync ? Promise.reject(new Error("injected sync failure")) : f.syncData(),
        close: () => f.close(),
      };
      return file;
    },
  };
  return { fs, faults };
}

Deno.test("Wal.append() stops the WAL when syncData fails", async () => {
  await withDir(async (dir) => {
    const { fs, faults } = faultyFs();
    const { wal } = await Wal.open(dir, { checkpointSeq: 0n, fs });
    try {
      assertEquals((await wal.append([payload(1)])).firstSeq, 1n);
      faults.sync = true;
      const failed = await Promise.allSettled([
        wal.append([payload(2)]),
        wal.append([payload(3)]),
      ]);
      for (const r of failed) {
        assertEquals(r.status, "rejected");
        assertEquals((r as PromiseRejectedResult).reason.code, "STORAGE_ERROR");
      }
      faults.sync = false;
      const later = await walError(wal.append([payload(4)]));
      assertEquals(later.code, "STORAGE_ERROR");
    } finally {
      await wal.close();
    }
  });
});

Deno.test("Wal.append() stops the WAL when a write fails", async () => {
  await withDir(async (dir) => {
    const { fs, faults } = faultyFs();
    const { wal } = await Wal.open(dir, { checkpointSeq: 0n, fs });
    try {
      await wal.append([payload(1)]);
      faults.write = true;
      const e = await walError(wal.append([payload(2)]));
      assertEquals(e.code, "STORAGE_ERROR");
      assertEquals(e.message.includes("injected write failure"), true);
      faults.write = false;
      assertEquals(
        (await walError(wal.append([payload(3)]))).code,
        "STORAGE_ERROR",
      );
    } finally {
      await wal.close();
    }
  });
});

Deno.test("Wal.append() rejects after close with SHUTTING_DOWN", async () => {
  await withDir(async (dir) => {
    const { wal } = await Wal.open(dir, { checkpointSeq: 0n });
    const pending = wal.append([payload(1)]);
    await wal.close();
    assertEquals(await pending, { firstSeq: 1n, lastSeq: 1n });
    const e = await walError(wal.append([payload(2)]));
    assertEquals(e.code, "SHUTTING_DOWN");
  });
});

Deno.test("Wal reads the configured wal_commit_records_max, not the default: group commits and the per-call bound", async () => {
  await withDir(async (dir) => {
    const { wal } = await Wal.open(dir, { checkpointSeq: 0n, limits: { wal_commit_records_max: 4 } });
    try {
      // Ten one-record appends queued in one tick: commits of 4, 4 and 2 records (the default would take one).
      const results = await Promise.all(Array.from({ length: 10 }, (_, i) => wal.append([payload(i + 1)])));
      assertEquals(results.map((r) => r.firstSeq), Array.from({ length: 10 }, (_, i) => BigInt(i + 1)));
      assertEquals(wal.stats().syncs, 3);
      // An append of exactly the bound is taken; one more record is refused.
      assertEquals(await wal.append([payload(11), payload(12), payload(13), payload(14)]), {
        firstSeq: 11n,
        lastSeq: 14n,
      });
      const e = await walError(wal.append([payload(15), payload(16), payload(17), payload(18), payload(19)]));
      assertEquals(e.code, "BATCH_TOO_LARGE");
      assertEquals(e.message.includes("more than 4 in one call"), true);
    } finally {
      await wal.close();
    }
  });
});

Deno.test("Wal.replay() yields batches of the configured stage_batch_events_max", async () => {
  await withDir(async (dir) => {
    await fill(dir, 7);
    const { wal } = await Wal.open(dir, { checkpointSeq: 0n, limits: { stage_batch_events_max: 3 } });
    try {
      const sizes: number[] = [];
      for await (const batch of wal.replay(0n)) sizes.push(batch.length);
      assertEquals(sizes, [3, 3, 1]);
    } finally {
      await wal.close();
    }
  });
});

Deno.test("Wal.open() refuses a limit that is not a positive integer", async () => {
  await withDir(async (dir) => {
    for (
      const limits of [{ wal_commit_records_max: 0 }, { wal_segment_bytes_max: 1.5 }, { stage_batch_events_max: -1 }]
    ) {
      await assertRejects(() => Wal.open(dir, { checkpointSeq: 0n, limits }), TypeError, "is not a positive integer");
    }
  });
});
