/**
 * When the node may delete WAL segments, and where replay starts at open:
 * the rule that keeps a damaged RocksDB log from losing acknowledged events.
 *
 * ## Why RocksDB's own checkpoint is not enough
 *
 * The index writes each batch to RocksDB with `sync`, but a synced RocksDB
 * write is only in RocksDB's own log (`db/*.log`) until RocksDB flushes its
 * memtable into a table file (`db/*.sst`); a clean close does not flush it.
 * The npm `rocksdb` binding (5.2.1, bundling RocksDB 6.17.3) opens every
 * database with `paranoid_checks = false` and has no option for
 * `wal_recovery_mode`, so RocksDB's default `kPointInTimeRecovery` is in
 * force but, with paranoid checks off, a bad log record is reported to no
 * one: recovery drops the rest of that 32 KiB log block and goes on with the
 * records after it (in effect `kSkipAnyCorruptedRecords`). One flipped byte
 * thus loses whole index batches in the middle while later batches, and the
 * checkpoint they carry, survive. RocksDB cannot say what its log lost.
 *
 * ## The rule
 *
 * - A WAL segment is deleted only once every record in it is in RocksDB's
 *   table files: the index says which of its checkpoints RocksDB has
 *   flushed by itself (`FlushTracker` in `kv.ts`; nothing is forced, so no
 *   compaction runs and no space is needed), that seq is written to the WAL
 *   directory's `checkpoint` file (the *durable checkpoint*), then segments
 *   up to it are deleted. This runs only when a whole segment is covered.
 * - At open the WAL replays every record after the durable checkpoint, not
 *   after RocksDB's checkpoint. The index skips the events it still holds
 *   (by id) and indexes again the ones RocksDB's log lost.
 * - If RocksDB's checkpoint is behind the durable checkpoint, RocksDB lost
 *   data its table files held; the node replays from RocksDB's checkpoint
 *   when the WAL still holds those records, and otherwise refuses to start
 *   with `STORAGE_CORRUPTION`, naming the database and its files.
 *
 * @module
 */

import type { Wal } from "./wal.ts";
import { XfError } from "../core/errors.ts";

/** The durable checkpoint's file in the WAL directory (decimal seq and a newline). */
export const DURABLE_CHECKPOINT_FILE = "checkpoint";

/** Read the durable checkpoint of the WAL directory `dir` (0 when there is none yet). */
export async function readDurableCheckpoint(dir: string): Promise<bigint> {
  let text: string;
  try {
    text = await Deno.readTextFile(`${dir}/${DURABLE_CHECKPOINT_FILE}`);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return 0n;
    throw new XfError("WAL_CORRUPTION", `Cannot read WAL checkpoint file in "${dir}": ${(e as Error).message}`);
  }
  if (!/^\d{1,20}\n?$/.test(text)) {
    throw new XfError(
      "WAL_CORRUPTION",
      `Cannot read WAL checkpoint file "${dir}/${DURABLE_CHECKPOINT_FILE}": "${text.slice(0, 40)}" is not a seq`,
    );
  }
  return BigInt(text.trim());
}

/** Replace the durable checkpoint atomically (temporary file, fdatasync, rename, directory sync). */
export async function writeDurableCheckpoint(dir: string, seq: bigint): Promise<void> {
  const tmp = `${dir}/${DURABLE_CHECKPOINT_FILE}.tmp`;
  const f = await Deno.open(tmp, { write: true, create: true, truncate: true });
  try {
    await f.write(new TextEncoder().encode(`${seq}\n`));
    await f.syncData();
  } finally {
    f.close();
  }
  await Deno.rename(tmp, `${dir}/${DURABLE_CHECKPOINT_FILE}`);
  if (Deno.build.os === "windows") return;
  const d = await Deno.open(dir, { read: true });
  try {
    await d.syncData();
  } catch {
    /* some file systems cannot sync a directory */
  } finally {
    d.close();
  }
}

/** The database files to name when RocksDB lost what it had flushed: its newest log and its manifests. */
async function rocksFiles(dbDir: string): Promise<string> {
  const logs: string[] = [];
  const manifests: string[] = [];
  try {
    for await (const e of Deno.readDir(dbDir)) {
      if (!e.isFile) continue;
      if (e.name.endsWith(".log")) logs.push(e.name);
      else if (e.name.startsWith("MANIFEST-")) manifests.push(e.name);
    }
  } catch (e) {
    return `"${dbDir}" (unreadable: ${(e as Error).message})`;
  }
  logs.sort();
  const named = [...manifests.sort(), ...logs.slice(-1)].map((n) => `"${dbDir}/${n}"`);
  return named.length ? named.join(", ") : `"${dbDir}" (no log or manifest in it)`;
}

/**
 * The WAL-retention rule for one WAL directory (see the module doc). One
 * owner (the wal-flush stage) keeps one of these beside its {@linkcode Wal}.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { Wal } from "./wal.ts";
 * import { WalRetention } from "./wal_retention.ts";
 * const dir = await Deno.makeTempDir();
 * try {
 *   const retention = await WalRetention.open(dir);
 *   const { wal } = await Wal.open(dir, { checkpointSeq: retention.durable, limits: { wal_segment_bytes_max: 32 } });
 *   await wal.append([new Uint8Array(8)]);
 *   await wal.append([new Uint8Array(8)]);
 *   let asked = 0;
 *   const durable = () => (asked++, Promise.resolve(2));
 *   assert((await retention.retire(wal, 0n, { durable })) === 0 && asked === 0); // nothing indexed: not asked
 *   assert((await retention.retire(wal, 1n, { durable })) === 1 && retention.durable === 2n);
 *   await wal.close();
 * } finally {
 *   await Deno.remove(dir, { recursive: true });
 * }
 * ```
 */
export class WalRetention {
  #durable: bigint;
  #busy: Promise<unknown> = Promise.resolve();

  private constructor(readonly dir: string, durable: bigint) {
    this.#durable = durable;
  }

  /** Read the durable checkpoint of the WAL directory `dir`. */
  static async open(dir: string): Promise<WalRetention> {
    return new WalRetention(dir, await readDurableCheckpoint(dir));
  }

  /** The highest seq known to be in RocksDB's table files; give it to `Wal.open` as `checkpointSeq`. */
  get durable(): bigint {
    return this.#durable;
  }

  /**
   * The index holds everything up to `seq`: record what is durable and
   * delete the WAL segments that are safe to delete. `durable` resolves with
   * the highest seq the index knows to be in RocksDB's table files; when it
   * moved, it becomes the durable checkpoint (so the next start replays
   * little) and whole segments up to it are deleted. Calls run one at a
   * time. Resolves with how many segments were deleted.
   */
  retire(wal: Wal, seq: bigint, options: { durable: () => Promise<number> }): Promise<number> {
    const run = this.#busy.then(async () => {
      if (seq <= this.#durable) return 0;
      const flushed = BigInt(await options.durable());
      // The node may have closed while the index answered: the next node may already have opened this directory
      // and read the durable checkpoint, so neither it nor the segments may change any more.
      if (flushed <= this.#durable || wal.closing) return 0;
      await writeDurableCheckpoint(this.dir, flushed);
      this.#durable = flushed;
      return await wal.checkpoint(flushed);
    });
    this.#busy = run.catch(() => {});
    return run;
  }

  /**
   * The seq to replay after, given RocksDB's checkpoint at open: the lower
   * of it and the durable checkpoint. Throws `STORAGE_CORRUPTION`, naming
   * the database's files, when RocksDB is behind the durable checkpoint and
   * the WAL no longer holds the records in between.
   */
  async replayFrom(wal: Wal, indexCheckpoint: bigint, dbDir: string): Promise<bigint> {
    if (indexCheckpoint >= this.#durable) return this.#durable;
    const oldest = wal.oldestSeq();
    if (oldest <= indexCheckpoint + 1n) return indexCheckpoint;
    throw new XfError(
      "STORAGE_CORRUPTION",
      `Cannot start: RocksDB in "${dbDir}" holds the index only up to seq ${indexCheckpoint}, but seq ${this.#durable} ` +
        `was in its table files (WAL checkpoint file "${this.dir}/${DURABLE_CHECKPOINT_FILE}"), and the WAL no ` +
        `longer holds seqs ${indexCheckpoint + 1n} to ${oldest - 1n}: RocksDB lost data it had flushed and the ` +
        `index cannot be repaired from the WAL. Damaged or replaced: ${await rocksFiles(dbDir)}. Restore "${dbDir}" ` +
        `from a backup taken with the WAL, or move the data directory aside and sync the groups again from peers`,
    );
  }
}
