/**
 * The engine's write-ahead log: an acknowledged record is durable on disk
 * before anything else (RocksDB) has it. The log itself is here; its record
 * format is in `wal_record.ts` (checksums in `crc32c.ts`), the scan that
 * opens it in `wal_recovery.ts`, its file operations in `wal_fs.ts`.
 *
 * ## Writing
 *
 * {@linkcode Wal.append} is a group commit: one writer loop writes every
 * queued record (up to the configured `wal_commit_records_max`) in one write call,
 * calls `fdatasync` once, and only then resolves the appends it covered. A
 * write or sync failure stops the WAL (it must be reopened), because after a
 * failed `fdatasync` the file's state is unknown.
 *
 * ## Recovery
 *
 * {@linkcode Wal.open} validates every record (`wal_recovery.ts`): a torn
 * tail is cut; other corruption is ignored and reported when the checkpoint
 * covers it, otherwise `open` throws `WAL_CORRUPTION`.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { describe, Wal } from "./wal.ts";
 * const dir = await Deno.makeTempDir();
 * try {
 *   const { wal, recovery } = await Wal.open(dir, { checkpointSeq: 0n });
 *   console.log(describe(recovery));
 *   const { firstSeq } = await wal.append([new TextEncoder().encode("hello")]);
 *   assert(firstSeq === 1n);
 *   await wal.close();
 * } finally {
 *   await Deno.remove(dir, { recursive: true });
 * }
 * ```
 *
 * @module
 */

import { LIMITS, type Limits } from "../core/limits.ts";
import { XfError } from "../core/errors.ts";
import { denoWalFs, io, type WalFile, type WalFs } from "./wal_fs.ts";
import {
  type Chunk,
  encodeChunk,
  parseRecords,
  segmentName,
  U32_MAX,
  WAL_RECORD_HEADER_BYTES,
  WAL_SEGMENT_HEADER_BYTES,
} from "./wal_record.ts";
import { recover, type RecoveryReport, type Segment } from "./wal_recovery.ts";

export { crc32c } from "./crc32c.ts";
export { denoWalFs, type WalFile, type WalFs } from "./wal_fs.ts";
export { WAL_RECORD_HEADER_BYTES, WAL_SEGMENT_HEADER_BYTES } from "./wal_record.ts";
export { describe, type RecoveryReport, type SkippedCorruption, type TornTail } from "./wal_recovery.ts";

/** The limits the WAL reads. */
export type WalLimits = Pick<Limits, "wal_segment_bytes_max" | "wal_commit_records_max" | "stage_batch_events_max">;

const WAL_LIMITS_DEFAULT: WalLimits = {
  wal_segment_bytes_max: LIMITS.wal_segment_bytes_max,
  wal_commit_records_max: LIMITS.wal_commit_records_max,
  stage_batch_events_max: LIMITS.stage_batch_events_max,
};

/** Options for {@linkcode Wal.open}. */
export interface WalOpenOptions {
  /** The highest seq the index already holds; records up to it need no replay. */
  checkpointSeq: bigint;
  /**
   * The node's limits in force (its configured ones, not the defaults): segment size, records per group
   * commit, records per replay batch. Any left out take their default from `LIMITS`.
   */
  limits?: Partial<WalLimits>;
  /** File operations; default {@linkcode denoWalFs}. */
  fs?: WalFs;
}

/** Seqs given to one {@linkcode Wal.append} call, in payload order. */
export interface AppendResult {
  /** Seq of the first payload. */
  firstSeq: bigint;
  /** Seq of the last payload. */
  lastSeq: bigint;
}

/** One record yielded by {@linkcode Wal.replay}. */
export interface WalRecord {
  /** The record's seq. */
  seq: bigint;
  /** The payload, in its own buffer (safe to transfer). */
  payload: Uint8Array;
}

/** Counters from {@linkcode Wal.stats}. */
export interface WalStats {
  /** `fdatasync` calls since open. */
  syncs: number;
  /** Records appended since open. */
  records: number;
  /** Bytes written since open, headers included. */
  bytes: number;
  /** Highest seq taken: the next record gets `lastSeq + 1n`. */
  lastSeq: bigint;
  /** Segment files the WAL holds now. */
  segments: number;
}

interface Pending {
  payloads: Uint8Array[];
  resolve: (r: AppendResult) => void;
  reject: (e: unknown) => void;
}

/**
 * The write-ahead log. Exactly one owner opens a WAL directory at a time.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { Wal } from "./wal.ts";
 * const dir = await Deno.makeTempDir();
 * try {
 *   const { wal } = await Wal.open(dir, { checkpointSeq: 0n });
 *   await wal.append([new Uint8Array([1]), new Uint8Array([2])]);
 *   for await (const batch of wal.replay(0n)) assert(batch.length === 2);
 *   await wal.close();
 * } finally {
 *   await Deno.remove(dir, { recursive: true });
 * }
 * ```
 */
export class Wal {
  readonly #dir: string;
  readonly #fs: WalFs;
  readonly #limits: WalLimits;
  #segments: Segment[];
  /** The segment appends go to, or `null` until the next append creates one. */
  #current: Segment | null;
  #file: WalFile | null = null;
  #nextSeq: bigint;
  #nextSegmentNum: number;
  #queue: Pending[] = [];
  #loop: Promise<void> | null = null;
  #closing = false;
  /** A checkpoint deleting segments; {@linkcode Wal.close} waits for it, so no delete outlives the WAL. */
  #checkpointing = new Set<Promise<unknown>>();
  #failure: XfError | null = null;
  #syncs = 0;
  #records = 0;
  #bytes = 0;

  private constructor(
    dir: string,
    fs: WalFs,
    limits: WalLimits,
    segments: Segment[],
    current: Segment | null,
    nextSeq: bigint,
    nextSegmentNum: number,
  ) {
    this.#dir = dir;
    this.#fs = fs;
    this.#limits = limits;
    this.#segments = segments;
    this.#current = current;
    this.#nextSeq = nextSeq;
    this.#nextSegmentNum = nextSegmentNum;
  }

  /**
   * Open (or create) the WAL in `dir`, validate every record, cut a torn
   * tail, and report what was found. New seqs continue from
   * `max(lastSeq, checkpointSeq) + 1n`.
   *
   * Throws `WAL_CORRUPTION` when a bad record or a missing segment affects a
   * record after `checkpointSeq`, and `STORAGE_ERROR` when a file operation
   * fails.
   *
   * @example
   * ```ts
   * import { assert } from "@std/assert";
   * import { Wal } from "./wal.ts";
   * const dir = await Deno.makeTempDir();
   * try {
   *   const { wal, recovery } = await Wal.open(dir, { checkpointSeq: 0n });
   *   assert(recovery.records === 0 && recovery.tornTail === null);
   *   await wal.close();
   * } finally {
   *   await Deno.remove(dir, { recursive: true });
   * }
   * ```
   */
  static async open(
    dir: string,
    options: WalOpenOptions,
  ): Promise<{ wal: Wal; recovery: RecoveryReport }> {
    const cp = options.checkpointSeq;
    if (typeof cp !== "bigint" || cp < 0n) {
      throw new TypeError(
        `Cannot open WAL "${dir}": checkpointSeq "${cp}" is not a non-negative bigint`,
      );
    }
    const limits: WalLimits = { ...WAL_LIMITS_DEFAULT, ...options.limits };
    for (const k of Object.keys(WAL_LIMITS_DEFAULT) as (keyof WalLimits)[]) {
      const v = limits[k];
      if (!Number.isSafeInteger(v) || v < 1) {
        throw new TypeError(`Cannot open WAL "${dir}": ${k} "${v}" is not a positive integer`);
      }
    }
    const fs = options.fs ?? denoWalFs;
    const { segments, current, nextSeq, nextSegmentNum, recovery } = await recover(dir, fs, cp);
    const wal = new Wal(dir, fs, limits, segments, current, nextSeq, nextSegmentNum);
    return { wal, recovery };
  }

  /**
   * Append payloads as consecutive records. Resolves with their seqs once
   * they are durable (written and `fdatasync`ed), as part of a group commit
   * with every other append queued at the time.
   *
   * Rejects with `SHUTTING_DOWN` after {@linkcode Wal.close}, with
   * `STORAGE_ERROR` if the write or sync fails (and for every append after
   * that: the WAL must be reopened), and with `BATCH_TOO_LARGE` for more than
   * `this.#limits.wal_commit_records_max` payloads in one call.
   *
   * @example
   * ```ts
   * import { assert } from "@std/assert";
   * import { Wal } from "./wal.ts";
   * const dir = await Deno.makeTempDir();
   * try {
   *   const { wal } = await Wal.open(dir, { checkpointSeq: 0n });
   *   const r = await wal.append([new Uint8Array([1]), new Uint8Array([2])]);
   *   assert(r.firstSeq === 1n && r.lastSeq === 2n);
   *   await wal.close();
   * } finally {
   *   await Deno.remove(dir, { recursive: true });
   * }
   * ```
   */
  append(payloads: Uint8Array[]): Promise<AppendResult> {
    if (this.#closing) {
      return Promise.reject(
        new XfError("SHUTTING_DOWN", "Cannot append to WAL: it is closed"),
      );
    }
    if (this.#failure) {
      return Promise.reject(
        new XfError(
          "STORAGE_ERROR",
          `Cannot append to WAL: stopped after an earlier failure (${this.#failure.message})`,
        ),
      );
    }
    if (!Array.isArray(payloads) || payloads.length === 0) {
      return Promise.reject(
        new TypeError(
          "Cannot append to WAL: expected a non-empty array of payloads",
        ),
      );
    }
    if (payloads.length > this.#limits.wal_commit_records_max) {
      return Promise.reject(
        new XfError(
          "BATCH_TOO_LARGE",
          `Cannot append ${payloads.length} records to WAL: more than ${this.#limits.wal_commit_records_max} in one call`,
        ),
      );
    }
    for (const p of payloads) {
      if (!(p instanceof Uint8Array)) {
        return Promise.reject(
          new TypeError("Cannot append to WAL: a payload is not a Uint8Array"),
        );
      }
      if (p.length > U32_MAX) {
        return Promise.reject(
          new RangeError(
            `Cannot append to WAL: payload of ${p.length} bytes exceeds ${U32_MAX}`,
          ),
        );
      }
    }
    return new Promise((resolve, reject) => {
      this.#queue.push({ payloads, resolve, reject });
      // Start on a microtask so appends made in the same tick share a group.
      this.#loop ??= Promise.resolve().then(() => this.#run());
    });
  }

  /**
   * Records with seq after `afterSeq`, in order, in batches of at most `stage_batch_events_max`.
   * Records before the checkpoint given to {@linkcode Wal.open} may be
   * missing (deleted or ignored as corrupt); records after it are complete.
   * Records appended after replay starts may or may not be included.
   *
   * @example
   * ```ts
   * import { assert } from "@std/assert";
   * import { Wal } from "./wal.ts";
   * const dir = await Deno.makeTempDir();
   * try {
   *   const { wal } = await Wal.open(dir, { checkpointSeq: 0n });
   *   await wal.append([new Uint8Array([1]), new Uint8Array([2])]);
   *   const seqs: bigint[] = [];
   *   for await (const batch of wal.replay(1n)) seqs.push(...batch.map((r) => r.seq));
   *   assert(seqs.length === 1 && seqs[0] === 2n);
   *   await wal.close();
   * } finally {
   *   await Deno.remove(dir, { recursive: true });
   * }
   * ```
   */
  async *replay(afterSeq: bigint): AsyncGenerator<WalRecord[]> {
    if (typeof afterSeq !== "bigint") {
      throw new TypeError(
        `Cannot replay WAL: afterSeq "${afterSeq}" is not a bigint`,
      );
    }
    let last = afterSeq;
    let batch: WalRecord[] = [];
    for (const seg of [...this.#segments]) {
      const end = seg.end;
      if (seg.lastSeq <= last || end <= WAL_SEGMENT_HEADER_BYTES) continue;
      if (!this.#segments.includes(seg)) continue; // Deleted by a checkpoint meanwhile.
      let buf: Uint8Array;
      try {
        buf = await io(this.#fs.readFile(seg.path), `Cannot read WAL segment ${seg.num}`);
      } catch (e) {
        // A checkpoint may delete the segment while it is read (it covers only what the index holds durably, so
        // nothing in it is owed): skip it, as above. Any other read error stands.
        if (!this.#segments.includes(seg)) continue;
        throw e;
      }
      if (buf.length < end) {
        throw new XfError(
          "WAL_CORRUPTION",
          `Cannot replay WAL segment ${seg.num}: file is ${buf.length} bytes, expected at least ${end}`,
        );
      }
      const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
      const found: WalRecord[] = [];
      const p = parseRecords(
        buf,
        view,
        WAL_SEGMENT_HEADER_BYTES,
        end,
        seg.firstSeq,
        (seq, start, len) => {
          if (seq > last) {
            found.push({ seq, payload: buf.slice(start, start + len) });
          }
        },
      );
      if (p.bad) {
        throw new XfError(
          "WAL_CORRUPTION",
          `Cannot replay WAL segment ${seg.num}: ${p.bad.reason} at offset ${p.bad.offset}`,
        );
      }
      for (const r of found) {
        batch.push(r);
        last = r.seq;
        if (batch.length >= this.#limits.stage_batch_events_max) {
          yield batch;
          batch = [];
        }
      }
    }
    if (batch.length > 0) yield batch;
  }

  /**
   * Delete every whole segment all of whose records have seq <= `seq` (never
   * the segment being written), then sync the directory if possible.
   * Resolves with how many segments were deleted.
   *
   * @example
   * ```ts
   * import { assert } from "@std/assert";
   * import { Wal } from "./wal.ts";
   * const dir = await Deno.makeTempDir();
   * try {
   *   const { wal } = await Wal.open(dir, { checkpointSeq: 0n, limits: { wal_segment_bytes_max: 32 } });
   *   await wal.append([new Uint8Array(8)]);
   *   await wal.append([new Uint8Array(8)]);
   *   assert((await wal.checkpoint(1n)) === 1);
   *   await wal.close();
   * } finally {
   *   await Deno.remove(dir, { recursive: true });
   * }
   * ```
   */
  async checkpoint(seq: bigint): Promise<number> {
    if (typeof seq !== "bigint") {
      throw new TypeError(
        `Cannot checkpoint WAL: seq "${seq}" is not a bigint`,
      );
    }
    if (this.#closing) {
      throw new XfError("SHUTTING_DOWN", "Cannot checkpoint WAL: it is closed");
    }
    const run = this.#deleteThrough(seq);
    const tracked: Promise<unknown> = run.catch(() => {}).finally(() => this.#checkpointing.delete(tracked));
    this.#checkpointing.add(tracked);
    return await run;
  }

  /** True once {@linkcode Wal.close} was called: a caller about to checkpoint should stop. */
  get closing(): boolean {
    return this.#closing;
  }

  async #deleteThrough(seq: bigint): Promise<number> {
    const victims: Segment[] = [];
    for (const s of this.#segments) {
      if (s === this.#current || s.lastSeq > seq) break;
      victims.push(s);
    }
    if (victims.length === 0) return 0;
    this.#segments = this.#segments.filter((s) => !victims.includes(s));
    for (const v of victims) {
      try {
        await this.#fs.remove(v.path);
      } catch (e) {
        if (e instanceof Deno.errors.NotFound) continue;
        throw new XfError(
          "STORAGE_ERROR",
          `Cannot delete WAL segment ${v.num}: ${(e as Error).message}`,
          { cause: e },
        );
      }
    }
    try {
      await this.#fs.syncDir?.(this.#dir);
    } catch {
      // Best effort: an undurable delete only means the segment may reappear, and it is checkpointed.
    }
    return victims.length;
  }

  /**
   * How many whole segments {@linkcode Wal.checkpoint}`(seq)` would delete
   * now: those all of whose records have seq <= `seq`, never the segment
   * being written. Lets a caller skip the work that must precede a delete.
   *
   * @example
   * ```ts
   * import { assert } from "@std/assert";
   * import { Wal } from "./wal.ts";
   * const dir = await Deno.makeTempDir();
   * try {
   *   const { wal } = await Wal.open(dir, { checkpointSeq: 0n, limits: { wal_segment_bytes_max: 32 } });
   *   await wal.append([new Uint8Array(8)]);
   *   await wal.append([new Uint8Array(8)]);
   *   assert(wal.coveredSegments(1n) === 1 && wal.coveredSegments(0n) === 0);
   *   await wal.close();
   * } finally {
   *   await Deno.remove(dir, { recursive: true });
   * }
   * ```
   */
  coveredSegments(seq: bigint): number {
    let n = 0;
    for (const s of this.#segments) {
      if (s === this.#current || s.lastSeq > seq) break;
      n++;
    }
    return n;
  }

  /**
   * The lowest seq {@linkcode Wal.replay} can still yield: the first seq of
   * the oldest segment kept, or the next seq to be taken when no segment
   * holds a record. Every seq from it up to the last one taken is held.
   *
   * @example
   * ```ts
   * import { assert } from "@std/assert";
   * import { Wal } from "./wal.ts";
   * const dir = await Deno.makeTempDir();
   * try {
   *   const { wal } = await Wal.open(dir, { checkpointSeq: 0n, limits: { wal_segment_bytes_max: 32 } });
   *   await wal.append([new Uint8Array(8)]);
   *   await wal.append([new Uint8Array(8)]);
   *   await wal.checkpoint(1n);
   *   assert(wal.oldestSeq() === 2n);
   *   await wal.close();
   * } finally {
   *   await Deno.remove(dir, { recursive: true });
   * }
   * ```
   */
  oldestSeq(): bigint {
    for (const s of this.#segments) if (s.lastSeq >= s.firstSeq) return s.firstSeq;
    return this.#nextSeq;
  }

  /**
   * Counters since open.
   *
   * @example
   * ```ts
   * import { assert } from "@std/assert";
   * import { Wal } from "./wal.ts";
   * const dir = await Deno.makeTempDir();
   * try {
   *   const { wal } = await Wal.open(dir, { checkpointSeq: 0n });
   *   await wal.append([new Uint8Array([1])]);
   *   assert(wal.stats().syncs === 1 && wal.stats().lastSeq === 1n);
   *   await wal.close();
   * } finally {
   *   await Deno.remove(dir, { recursive: true });
   * }
   * ```
   */
  stats(): WalStats {
    return {
      syncs: this.#syncs,
      records: this.#records,
      bytes: this.#bytes,
      lastSeq: this.#nextSeq - 1n,
      segments: this.#segments.length,
    };
  }

  /**
   * Stop taking appends, wait for the queued ones to be written and synced
   * (each group is synced before it resolves, so nothing is left unsynced),
   * and close the file. Safe to call more than once.
   *
   * @example
   * ```ts
   * import { assert } from "@std/assert";
   * import { Wal } from "./wal.ts";
   * const dir = await Deno.makeTempDir();
   * try {
   *   const { wal } = await Wal.open(dir, { checkpointSeq: 0n });
   *   const pending = wal.append([new Uint8Array([1])]);
   *   await wal.close();
   *   assert((await pending).lastSeq === 1n);
   * } finally {
   *   await Deno.remove(dir, { recursive: true });
   * }
   * ```
   */
  async close(): Promise<void> {
    this.#closing = true;
    while (this.#loop) await this.#loop;
    // A segment deleted after close could be one the next opener of this directory already listed.
    await Promise.all(this.#checkpointing);
    if (this.#file) {
      const f = this.#file;
      this.#file = null;
      try {
        f.close();
      } catch {
        // Already unusable; nothing more to release.
      }
    }
  }

  /** The writer loop: commit queued appends group by group until the queue is empty. */
  async #run(): Promise<void> {
    try {
      while (this.#queue.length > 0 && this.#failure === null) {
        let n = this.#queue[0]!.payloads.length;
        let k = 1;
        while (
          k < this.#queue.length &&
          n + this.#queue[k]!.payloads.length <= this.#limits.wal_commit_records_max
        ) {
          n += this.#queue[k]!.payloads.length;
          k++;
        }
        const group = this.#queue.splice(0, k);
        const firstSeq = this.#nextSeq;
        try {
          await this.#commit(group);
        } catch (e) {
          this.#failure = e instanceof XfError ? e : new XfError(
            "STORAGE_ERROR",
            `Cannot write WAL: ${e instanceof Error ? e.message : String(e)}`,
            {
              cause: e,
            },
          );
          for (const p of group) p.reject(this.#failure);
          for (const p of this.#queue.splice(0)) p.reject(this.#failure);
          break;
        }
        let seq = firstSeq;
        for (const p of group) {
          const lastSeq = seq + BigInt(p.payloads.length) - 1n;
          p.resolve({ firstSeq: seq, lastSeq });
          seq = lastSeq + 1n;
        }
      }
    } finally {
      this.#loop = null;
    }
  }

  /** Write one group (one write and one sync per segment it touches). */
  async #commit(group: Pending[]): Promise<void> {
    // Plan: split the records into chunks, one per segment.
    const chunks: Chunk[] = [];
    let chunk: Chunk | null = null;
    let segBytes = this.#current?.bytes ?? 0;
    let haveSegment = this.#current !== null;
    let seq = this.#nextSeq;
    for (const p of group) {
      for (const payload of p.payloads) {
        const size = WAL_RECORD_HEADER_BYTES + payload.length;
        const roll = !haveSegment ||
          (segBytes + size > this.#limits.wal_segment_bytes_max &&
            segBytes > WAL_SEGMENT_HEADER_BYTES);
        if (roll) {
          chunk = {
            fresh: true,
            firstSeq: seq,
            size: WAL_SEGMENT_HEADER_BYTES,
            payloads: [],
          };
          chunks.push(chunk);
          segBytes = WAL_SEGMENT_HEADER_BYTES;
          haveSegment = true;
        } else if (chunk === null) {
          chunk = { fresh: false, firstSeq: seq, size: 0, payloads: [] };
          chunks.push(chunk);
        }
        chunk.payloads.push(payload);
        chunk.size += size;
        segBytes += size;
        seq++;
      }
    }

    for (const c of chunks) {
      const buf = encodeChunk(c);
      const lastSeq = c.firstSeq + BigInt(c.payloads.length) - 1n;
      if (c.fresh) {
        if (this.#file) {
          const old = this.#file;
          this.#file = null;
          old.close();
        }
        const num = this.#nextSegmentNum++;
        const path = `${this.#dir}/${segmentName(num)}`;
        this.#file = await io(
          this.#fs.openFile(path, { create: true }),
          `Cannot create WAL segment ${num}`,
        );
        await io(this.#file.write(buf), `Cannot write WAL segment ${num}`);
        await io(this.#file.syncData(), `Cannot sync WAL segment ${num}`);
        this.#syncs++;
        // The new file's directory entry must be durable before its records are acknowledged.
        await io(
          this.#fs.syncDir?.(this.#dir) ?? Promise.resolve(),
          `Cannot sync WAL directory "${this.#dir}"`,
        );
        const seg: Segment = {
          num,
          path,
          firstSeq: c.firstSeq,
          lastSeq,
          bytes: buf.length,
          end: buf.length,
        };
        this.#segments.push(seg);
        this.#current = seg;
      } else {
        const seg = this.#current!;
        this.#file ??= await io(
          this.#fs.openFile(seg.path, { create: false }),
          `Cannot open WAL segment ${seg.num}`,
        );
        await io(this.#file.write(buf), `Cannot write WAL segment ${seg.num}`);
        await io(this.#file.syncData(), `Cannot sync WAL segment ${seg.num}`);
        this.#syncs++;
        seg.bytes += buf.length;
        seg.end = seg.bytes;
        seg.lastSeq = lastSeq;
      }
      this.#nextSeq = lastSeq + 1n;
      this.#records += c.payloads.length;
      this.#bytes += buf.length;
    }
  }
}
