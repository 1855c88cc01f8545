/**
 * The engine's write-ahead log: an acknowledged record is durable on disk
 * before anything else (RocksDB) has it.
 *
 * ## File format
 *
 * A WAL is a directory of segment files named by a zero-padded 20-digit
 * segment number, e.g. `00000000000000000001.wal`; numbers increase. Other
 * files in the directory are ignored. All integers are little-endian.
 *
 * Each segment starts with a 16-byte header, so its first seq is known even
 * when it holds no records:
 *
 * | bytes | field                          |
 * | ----- | ------------------------------ |
 * | 8     | magic `"XFWAL1\0\0"`           |
 * | 8     | u64 seq of the segment's first record |
 *
 * Records follow back to back, each with a 16-byte header:
 *
 * | bytes | field                                          |
 * | ----- | ---------------------------------------------- |
 * | 4     | u32 payload length                             |
 * | 4     | u32 CRC-32C (Castagnoli) over seq bytes + payload |
 * | 8     | u64 seq                                        |
 * | n     | payload                                        |
 *
 * Seqs are assigned by the WAL: they start at 1 and increase by exactly 1
 * within a segment and across segments.
 *
 * ## Writing
 *
 * {@linkcode Wal.append} is a group commit: one writer loop writes every
 * queued record (up to `LIMITS.wal_commit_records_max`) in one write call,
 * calls `fdatasync` once, and only then resolves the appends it covered. A
 * write or sync failure stops the WAL (it must be reopened), because after a
 * failed `fdatasync` the file's state is unknown.
 *
 * ## Recovery
 *
 * {@linkcode Wal.open} validates every record. A bad record at the end of the
 * last segment with no valid record after it is a torn tail and is cut. Any
 * other bad record, or a missing segment, is corruption: ignored (and
 * reported) when the checkpoint already covers every record it could affect,
 * otherwise `open` throws `WAL_CORRUPTION`.
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

import { LIMITS } from "../actors/limits.ts";
import { XfError } from "./errors.ts";

/** Bytes of a segment header: magic and first seq. */
export const WAL_SEGMENT_HEADER_BYTES = 16;
/** Bytes of a record header: length, checksum and seq. */
export const WAL_RECORD_HEADER_BYTES = 16;

const MAGIC = new TextEncoder().encode("XFWAL1\0\0");
const SEGMENT_NAME = /^(\d{20})\.wal$/;
const U32_MAX = 0xffff_ffff;
/** Records in one batch yielded by {@linkcode Wal.replay}. */
const REPLAY_BATCH_RECORDS_MAX = LIMITS.stage_batch_events_max;

// ---------------------------------------------------------------------------
// CRC-32C

const CRC_TABLE = makeCrcTable();

function makeCrcTable(): Uint32Array {
  // Slicing-by-8: table k maps a byte to its CRC contribution k bytes later.
  const t = new Uint32Array(8 * 256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    t[i] = c >>> 0;
  }
  for (let i = 0; i < 256; i++) {
    let c = t[i]!;
    for (let k = 1; k < 8; k++) {
      c = t[c & 0xff]! ^ (c >>> 8);
      t[k * 256 + i] = c >>> 0;
    }
  }
  return t;
}

/**
 * The CRC-32C (Castagnoli) checksum of `bytes`, as an unsigned 32-bit number.
 * Pass a previous result as `crc` to continue a checksum over more bytes.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { crc32c } from "./wal.ts";
 * assert(crc32c(new TextEncoder().encode("123456789")) === 0xe3069283);
 * ```
 */
export function crc32c(bytes: Uint8Array, crc = 0): number {
  const t = CRC_TABLE;
  let c = ~crc >>> 0;
  let i = 0;
  const n = bytes.length;
  while (n - i >= 8) {
    const a = c ^
      (bytes[i]! | (bytes[i + 1]! << 8) | (bytes[i + 2]! << 16) |
        (bytes[i + 3]! << 24));
    c = t[1792 + (a & 0xff)]! ^ t[1536 + ((a >>> 8) & 0xff)]! ^
      t[1280 + ((a >>> 16) & 0xff)]! ^
      t[1024 + (a >>> 24)]! ^ t[768 + bytes[i + 4]!]! ^
      t[512 + bytes[i + 5]!]! ^
      t[256 + bytes[i + 6]!]! ^ t[bytes[i + 7]!]!;
    i += 8;
  }
  while (i < n) c = t[(c ^ bytes[i++]!) & 0xff]! ^ (c >>> 8);
  return ~c >>> 0;
}

// ---------------------------------------------------------------------------
// File system

/** An open segment file, positioned for appending. */
export interface WalFile {
  /** Write all of `data` at the end of the file. */
  write(data: Uint8Array): Promise<void>;
  /** Flush the file's data (and the metadata needed to read it) to disk. */
  syncData(): Promise<void>;
  /** Close the file. */
  close(): void;
}

/**
 * The file operations the WAL needs. The default is {@linkcode denoWalFs};
 * tests inject their own to simulate faults (a write that throws, a sync that
 * fails).
 */
export interface WalFs {
  /** Create a directory and its parents; succeed if it exists. */
  mkdir(path: string): Promise<void>;
  /** Names of the files (not directories) in a directory. */
  readDir(path: string): Promise<string[]>;
  /** The whole contents of a file. */
  readFile(path: string): Promise<Uint8Array>;
  /** Open a file for appending; with `create`, make a new file and fail if it exists. */
  openFile(path: string, options: { create: boolean }): Promise<WalFile>;
  /** Cut a file to `length` bytes. */
  truncate(path: string, length: number): Promise<void>;
  /** Delete a file. */
  remove(path: string): Promise<void>;
  /** Make a directory's entries durable (new and deleted files); optional. */
  syncDir?(path: string): Promise<void>;
}

/** {@linkcode WalFs} over the real Deno file APIs. */
export const denoWalFs: WalFs = {
  mkdir: (path) => Deno.mkdir(path, { recursive: true }),
  async readDir(path) {
    const names: string[] = [];
    for await (const e of Deno.readDir(path)) if (e.isFile) names.push(e.name);
    return names;
  },
  readFile: (path) => Deno.readFile(path),
  async openFile(path, { create }) {
    const f = await Deno.open(
      path,
      create ? { createNew: true, append: true } : { append: true },
    );
    return {
      async write(data) {
        let off = 0;
        while (off < data.length) {
          const n = await f.write(data.subarray(off));
          if (n <= 0) {
            throw new Error(`Cannot write "${path}": write returned ${n}`);
          }
          off += n;
        }
      },
      syncData: () => f.syncData(),
      close: () => f.close(),
    };
  },
  truncate: (path, length) => Deno.truncate(path, length),
  remove: (path) => Deno.remove(path),
  async syncDir(path) {
    if (Deno.build.os === "windows") return; // Directories cannot be opened for fsync there.
    const d = await Deno.open(path, { read: true });
    try {
      await d.sync();
    } finally {
      d.close();
    }
  },
};

// ---------------------------------------------------------------------------
// Public types

/** Options for {@linkcode Wal.open}. */
export interface WalOpenOptions {
  /** The highest seq the index already holds; records up to it need no replay. */
  checkpointSeq: bigint;
  /** Bytes of a segment file before a new one starts; default `LIMITS.wal_segment_bytes_max`. */
  segmentBytesMax?: number;
  /** File operations; default {@linkcode denoWalFs}. */
  fs?: WalFs;
}

/** A torn tail that {@linkcode Wal.open} cut from the last segment. */
export interface TornTail {
  /** Segment number. */
  segment: number;
  /** Byte offset of the first bad record; the file now ends here. */
  offset: number;
  /** Bytes removed. */
  bytesCut: number;
  /** Why the record there is bad, e.g. `"checksum mismatch"`. */
  reason: string;
}

/** Corruption that {@linkcode Wal.open} ignored because the checkpoint covers it. */
export interface SkippedCorruption {
  /** Segment number. */
  segment: number;
  /** Byte offset of the bad record (0 for a bad segment header). */
  offset: number;
  /** Why it is bad. */
  reason: string;
}

/** What {@linkcode Wal.open} found and did; plain data. See {@linkcode describe}. */
export interface RecoveryReport {
  /** Segment files found. */
  segments: number;
  /** Valid records found. */
  records: number;
  /** Seq of the first valid record, or `null` if there is none. */
  firstSeq: bigint | null;
  /** Highest seq the log holds (or an empty segment's header implies); `0n` if none. */
  lastSeq: bigint;
  /** Records with seq after the checkpoint: what replay will yield. */
  replayable: number;
  /** The torn tail that was cut, if any. */
  tornTail: TornTail | null;
  /** Corruption ignored because the checkpoint covers it. */
  skipped: SkippedCorruption[];
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

/**
 * Say in one sentence what recovery did.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { describe } from "./wal.ts";
 * const s = describe({
 *   segments: 1, records: 3, firstSeq: 1n, lastSeq: 3n, replayable: 3,
 *   tornTail: null, skipped: [],
 * });
 * assert(s.startsWith("Recovered 3 records"));
 * ```
 */
export function describe(report: RecoveryReport): string {
  const segs = plural(report.segments, "segment");
  let s = report.records === 0
    ? `Recovered no records from ${segs}`
    : `Recovered ${plural(report.records, "record")} (seq ${report.firstSeq} to ${report.lastSeq}) ` +
      `from ${segs}, ${report.replayable} to replay`;
  if (report.tornTail) {
    const t = report.tornTail;
    s += `, and cut a torn tail of ${plural(t.bytesCut, "byte")} at offset ${t.offset} ` +
      `in segment ${t.segment} (${t.reason})`;
  }
  if (report.skipped.length > 0) {
    const list = report.skipped.map((k) => `segment ${k.segment} offset ${k.offset}: ${k.reason}`);
    s += `, and ignored ${plural(report.skipped.length, "checkpointed corruption")} (${list.join("; ")})`;
  }
  return s;
}

function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

// ---------------------------------------------------------------------------
// Parsing

interface BadSpot {
  offset: number;
  reason: string;
}

interface Parsed {
  count: number;
  /** Seq of the last valid record, or `firstSeq - 1n` if none. */
  lastSeq: bigint;
  /** Offset just past the last valid record. */
  end: number;
  bad: BadSpot | null;
}

/** Check the record at `off`; its length and seq, or why it is bad. */
function checkRecord(
  buf: Uint8Array,
  view: DataView,
  off: number,
  end: number,
  expected: bigint,
): { len: number; seq: bigint } | string {
  const left = end - off;
  if (left < WAL_RECORD_HEADER_BYTES) {
    return `truncated record header (${left} of ${WAL_RECORD_HEADER_BYTES} bytes)`;
  }
  const len = view.getUint32(off, true);
  if (len > left - WAL_RECORD_HEADER_BYTES) {
    return `record length ${len} exceeds the ${left - WAL_RECORD_HEADER_BYTES} bytes left in the segment`;
  }
  const crc = view.getUint32(off + 4, true);
  if (
    crc32c(buf.subarray(off + 8, off + WAL_RECORD_HEADER_BYTES + len)) !== crc
  ) {
    return "checksum mismatch";
  }
  const seq = view.getBigUint64(off + 8, true);
  if (seq !== expected) return `wrong seq ${seq} (expected ${expected})`;
  return { len, seq };
}

/** Walk records from `from` to `end`, expecting seqs from `firstSeq` up. */
function parseRecords(
  buf: Uint8Array,
  view: DataView,
  from: number,
  end: number,
  firstSeq: bigint,
  onRecord?: (seq: bigint, start: number, len: number) => void,
): Parsed {
  let off = from;
  let seq = firstSeq - 1n;
  let count = 0;
  while (off < end) {
    const r = checkRecord(buf, view, off, end, seq + 1n);
    if (typeof r === "string") {
      return { count, lastSeq: seq, end: off, bad: { offset: off, reason: r } };
    }
    onRecord?.(r.seq, off + WAL_RECORD_HEADER_BYTES, r.len);
    seq = r.seq;
    count++;
    off += WAL_RECORD_HEADER_BYTES + r.len;
  }
  return { count, lastSeq: seq, end: off, bad: null };
}

/**
 * The first offset at or after `from` holding a record with a valid checksum
 * and a plausible seq (>= `minSeq`, and no further past it than the bytes
 * allow when `bounded`).
 */
function findRecord(
  buf: Uint8Array,
  view: DataView,
  from: number,
  minSeq: bigint,
  bounded: boolean,
): { offset: number; seq: bigint } | null {
  const maxSeq = minSeq +
    BigInt(Math.ceil(buf.length / WAL_RECORD_HEADER_BYTES));
  for (let off = from; off + WAL_RECORD_HEADER_BYTES <= buf.length; off++) {
    const len = view.getUint32(off, true);
    if (len > buf.length - off - WAL_RECORD_HEADER_BYTES) continue;
    const seq = view.getBigUint64(off + 8, true);
    if (seq < minSeq || (bounded && seq > maxSeq)) continue;
    if (
      crc32c(buf.subarray(off + 8, off + WAL_RECORD_HEADER_BYTES + len)) !==
        view.getUint32(off + 4, true)
    ) {
      continue;
    }
    return { offset: off, seq };
  }
  return null;
}

/** The highest seq of the valid records found after a bad spot, or `null` if none. */
function validSeqAfter(
  buf: Uint8Array,
  view: DataView,
  badOffset: number,
  minSeq: bigint,
  bounded: boolean,
) {
  let found = findRecord(buf, view, badOffset + 1, minSeq, bounded);
  let maxSeq: bigint | null = null;
  while (found) {
    const p = parseRecords(buf, view, found.offset, buf.length, found.seq);
    maxSeq = p.lastSeq;
    if (!p.bad) break;
    found = findRecord(buf, view, p.bad.offset + 1, maxSeq + 1n, true);
  }
  return maxSeq;
}

function hasMagic(buf: Uint8Array): boolean {
  if (buf.length < WAL_SEGMENT_HEADER_BYTES) return false;
  for (let i = 0; i < MAGIC.length; i++) if (buf[i] !== MAGIC[i]) return false;
  return true;
}

function segmentName(num: number): string {
  return `${String(num).padStart(20, "0")}.wal`;
}

async function io<T>(p: Promise<T>, what: string): Promise<T> {
  try {
    return await p;
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
    throw new XfError("STORAGE_ERROR", `${what}: ${msg}`, { cause: e });
  }
}

// ---------------------------------------------------------------------------
// The log

/** A segment as the open WAL knows it. */
interface Segment {
  num: number;
  path: string;
  firstSeq: bigint;
  /** Seq of the last record; `firstSeq - 1n` if empty; for an ignored corrupt segment, an upper bound. */
  lastSeq: bigint;
  /** File size. */
  bytes: number;
  /** Replay reads records in `[WAL_SEGMENT_HEADER_BYTES, end)`; 0 when the header is bad. */
  end: number;
}

/** What a scan of one segment file found, before any decision. */
interface Scan {
  num: number;
  path: string;
  size: number;
  /** From the header; `null` when the header is bad. */
  firstSeq: bigint | null;
  parsed: Parsed;
  /** Highest seq of valid records after the bad spot (last segment only). */
  laterSeq: bigint | null;
}

interface Pending {
  payloads: Uint8Array[];
  resolve: (r: AppendResult) => void;
  reject: (e: unknown) => void;
}

interface Chunk {
  /** Starts a new segment. */
  fresh: boolean;
  firstSeq: bigint;
  size: number;
  payloads: Uint8Array[];
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
  readonly #segmentBytesMax: number;
  #segments: Segment[];
  /** The segment appends go to, or `null` until the next append creates one. */
  #current: Segment | null;
  #file: WalFile | null = null;
  #nextSeq: bigint;
  #nextSegmentNum: number;
  #queue: Pending[] = [];
  #loop: Promise<void> | null = null;
  #closing = false;
  #failure: XfError | null = null;
  #syncs = 0;
  #records = 0;
  #bytes = 0;

  private constructor(
    dir: string,
    fs: WalFs,
    segmentBytesMax: number,
    segments: Segment[],
    current: Segment | null,
    nextSeq: bigint,
    nextSegmentNum: number,
  ) {
    this.#dir = dir;
    this.#fs = fs;
    this.#segmentBytesMax = segmentBytesMax;
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
    const segmentBytesMax = options.segmentBytesMax ??
      LIMITS.wal_segment_bytes_max;
    if (!Number.isSafeInteger(segmentBytesMax) || segmentBytesMax < 1) {
      throw new TypeError(
        `Cannot open WAL "${dir}": segmentBytesMax "${segmentBytesMax}" is not a positive integer`,
      );
    }
    const fs = options.fs ?? denoWalFs;

    await io(fs.mkdir(dir), `Cannot create WAL directory "${dir}"`);
    const names = await io(
      fs.readDir(dir),
      `Cannot list WAL directory "${dir}"`,
    );
    const files: { num: number; name: string }[] = [];
    for (const name of names) {
      const m = SEGMENT_NAME.exec(name);
      if (!m) continue;
      const num = Number(m[1]);
      if (!Number.isSafeInteger(num)) {
        throw new XfError(
          "WAL_CORRUPTION",
          `Cannot open WAL segment "${name}": segment number out of range`,
        );
      }
      files.push({ num, name });
    }
    files.sort((a, b) => a.num - b.num);

    // Scan each file once, keeping only a summary (segments may be large).
    const scans: Scan[] = [];
    for (let i = 0; i < files.length; i++) {
      const { num, name } = files[i]!;
      const path = `${dir}/${name}`;
      const buf = await io(fs.readFile(path), `Cannot read WAL segment ${num}`);
      const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
      const isLast = i === files.length - 1;
      const prev = scans[scans.length - 1];
      let firstSeq: bigint | null = null;
      let parsed: Parsed;
      if (hasMagic(buf)) {
        firstSeq = view.getBigUint64(8, true);
        parsed = parseRecords(
          buf,
          view,
          WAL_SEGMENT_HEADER_BYTES,
          buf.length,
          firstSeq,
        );
      } else {
        const reason = buf.length < WAL_SEGMENT_HEADER_BYTES
          ? `truncated segment header (${buf.length} of ${WAL_SEGMENT_HEADER_BYTES} bytes)`
          : "bad segment header magic";
        parsed = { count: 0, lastSeq: -1n, end: 0, bad: { offset: 0, reason } };
      }
      let laterSeq: bigint | null = null;
      if (isLast && parsed.bad) {
        const minSeq = firstSeq !== null ? parsed.lastSeq + 1n : prev ? prev.parsed.lastSeq + 1n : 1n;
        const from = firstSeq !== null ? parsed.bad.offset : -1;
        laterSeq = validSeqAfter(
          buf,
          view,
          from,
          minSeq,
          firstSeq !== null || prev !== undefined,
        );
      }
      scans.push({ num, path, size: buf.length, firstSeq, parsed, laterSeq });
    }

    // Decide what each bad spot is, before changing any file.
    let tornTail: TornTail | null = null;
    let removeTorn: string | null = null;
    const skipped: SkippedCorruption[] = [];
    const segments: Segment[] = [];
    const cleanNums = new Set<number>();
    let records = 0;
    let replayable = 0;
    let firstRecordSeq: bigint | null = null;
    for (let i = 0; i < scans.length; i++) {
      const s = scans[i]!;
      const p = s.parsed;
      const prev = segments[segments.length - 1];
      records += p.count;
      if (p.count > 0 && s.firstSeq !== null) {
        firstRecordSeq ??= s.firstSeq;
        const from = s.firstSeq - 1n > cp ? s.firstSeq - 1n : cp;
        if (p.lastSeq > from) replayable += Number(p.lastSeq - from);
      }
      if (!p.bad) {
        segments.push({
          num: s.num,
          path: s.path,
          firstSeq: s.firstSeq!,
          lastSeq: p.lastSeq,
          bytes: s.size,
          end: s.size,
        });
        cleanNums.add(s.num);
        continue;
      }
      const bad = p.bad;
      if (i === scans.length - 1 && s.laterSeq === null) {
        tornTail = {
          segment: s.num,
          offset: bad.offset,
          bytesCut: s.size - bad.offset,
          reason: bad.reason,
        };
        if (s.firstSeq === null) {
          removeTorn = s.path;
        } else {
          segments.push({
            num: s.num,
            path: s.path,
            firstSeq: s.firstSeq,
            lastSeq: p.lastSeq,
            bytes: p.end,
            end: p.end,
          });
          cleanNums.add(s.num);
        }
        continue;
      }
      // Corruption: every record it could affect lies below the next segment's first seq.
      const next = scans.slice(i + 1).find((n) => n.firstSeq !== null);
      const upper = next ? next.firstSeq! - 1n : i === scans.length - 1 ? s.laterSeq : null;
      if (upper === null || upper > cp) {
        const fromSeq = s.firstSeq !== null ? p.lastSeq + 1n : prev ? prev.lastSeq + 1n : null;
        const range = fromSeq === null ? "seqs" : `seq ${fromSeq} to ${upper ?? "the end"}`;
        throw new XfError(
          "WAL_CORRUPTION",
          `Cannot open WAL segment ${s.num}: ${bad.reason} at offset ${bad.offset} ` +
            `(${range} may be affected, checkpoint is ${cp})`,
        );
      }
      skipped.push({ segment: s.num, offset: bad.offset, reason: bad.reason });
      const firstSeq = s.firstSeq ?? (prev ? prev.lastSeq + 1n : upper + 1n);
      segments.push({
        num: s.num,
        path: s.path,
        firstSeq,
        lastSeq: upper,
        bytes: s.size,
        end: p.end,
      });
    }

    // Every seq after the checkpoint must be present: no gap, no overlap.
    for (let i = 0; i < segments.length; i++) {
      const seg = segments[i]!;
      const prev = segments[i - 1];
      const expected = prev ? prev.lastSeq + 1n : null;
      if (expected === null) {
        if (seg.firstSeq > cp + 1n) {
          throw new XfError(
            "WAL_CORRUPTION",
            `Cannot open WAL: seq ${cp + 1n} to ${seg.firstSeq - 1n} are missing before segment ${seg.num} ` +
              `(checkpoint is ${cp})`,
          );
        }
      } else if (seg.firstSeq > expected && seg.firstSeq - 1n > cp) {
        throw new XfError(
          "WAL_CORRUPTION",
          `Cannot open WAL: seq ${expected} to ${seg.firstSeq - 1n} are missing between segment ${prev!.num} ` +
            `and segment ${seg.num} (checkpoint is ${cp})`,
        );
      } else if (seg.firstSeq < expected) {
        const reason = `segment starts at seq ${seg.firstSeq}, which segment ${prev!.num} already holds`;
        if (prev!.lastSeq > cp) {
          throw new XfError(
            "WAL_CORRUPTION",
            `Cannot open WAL segment ${seg.num}: ${reason}`,
          );
        }
        skipped.push({ segment: seg.num, offset: 0, reason });
      }
    }

    // Now cut the torn tail.
    if (tornTail) {
      const path = `${dir}/${segmentName(tornTail.segment)}`;
      if (removeTorn) {
        await io(
          fs.remove(removeTorn),
          `Cannot remove torn WAL segment ${tornTail.segment}`,
        );
        await io(
          fs.syncDir?.(dir) ?? Promise.resolve(),
          `Cannot sync WAL directory "${dir}"`,
        );
      } else {
        await io(
          fs.truncate(path, tornTail.offset),
          `Cannot cut torn tail of WAL segment ${tornTail.segment}`,
        );
      }
    }

    const last = segments[segments.length - 1];
    const lastSeq = last ? last.lastSeq : 0n;
    const nextSeq = (lastSeq > cp ? lastSeq : cp) + 1n;
    const current = last && cleanNums.has(last.num) && last.lastSeq + 1n === nextSeq ? last : null;
    const lastFile = files[files.length - 1];
    const wal = new Wal(
      dir,
      fs,
      segmentBytesMax,
      segments,
      current,
      nextSeq,
      lastFile ? lastFile.num + 1 : 1,
    );
    const recovery: RecoveryReport = {
      segments: files.length,
      records,
      firstSeq: firstRecordSeq,
      lastSeq,
      replayable,
      tornTail,
      skipped,
    };
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
   * `LIMITS.wal_commit_records_max` payloads in one call.
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
    if (payloads.length > LIMITS.wal_commit_records_max) {
      return Promise.reject(
        new XfError(
          "BATCH_TOO_LARGE",
          `Cannot append ${payloads.length} records to WAL: more than ${LIMITS.wal_commit_records_max} in one call`,
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
   * Records with seq after `afterSeq`, in order, in batches of at most 512.
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
      const buf = await io(
        this.#fs.readFile(seg.path),
        `Cannot read WAL segment ${seg.num}`,
      );
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
        if (batch.length >= REPLAY_BATCH_RECORDS_MAX) {
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
   *   const { wal } = await Wal.open(dir, { checkpointSeq: 0n, segmentBytesMax: 32 });
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
   *   const { wal } = await Wal.open(dir, { checkpointSeq: 0n, segmentBytesMax: 32 });
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
   *   const { wal } = await Wal.open(dir, { checkpointSeq: 0n, segmentBytesMax: 32 });
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
          n + this.#queue[k]!.payloads.length <= LIMITS.wal_commit_records_max
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
          (segBytes + size > this.#segmentBytesMax &&
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

/** Encode a chunk: the segment header if it starts a segment, then its records. */
function encodeChunk(c: Chunk): Uint8Array {
  const buf = new Uint8Array(c.size);
  const view = new DataView(buf.buffer);
  let off = 0;
  if (c.fresh) {
    buf.set(MAGIC, 0);
    view.setBigUint64(8, c.firstSeq, true);
    off = WAL_SEGMENT_HEADER_BYTES;
  }
  let seq = c.firstSeq;
  for (const payload of c.payloads) {
    view.setUint32(off, payload.length, true);
    view.setBigUint64(off + 8, seq, true);
    buf.set(payload, off + WAL_RECORD_HEADER_BYTES);
    const end = off + WAL_RECORD_HEADER_BYTES + payload.length;
    view.setUint32(off + 4, crc32c(buf.subarray(off + 8, end)), true);
    off = end;
    seq++;
  }
  return buf;
}
