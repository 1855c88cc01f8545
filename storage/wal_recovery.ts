/**
 * WAL recovery: the scan `Wal.open` starts with. It reads every segment,
 * validates every record, decides what each bad spot is, cuts a torn tail,
 * and reports what it found ({@linkcode describe} says it in one sentence).
 *
 * ## Recovery
 *
 * `Wal.open` validates every record. A bad record at the end of the
 * last segment with no valid record after it is a torn tail and is cut. Any
 * other bad record, or a missing segment, is corruption: ignored (and
 * reported) when the checkpoint already covers every record it could affect,
 * otherwise `open` throws `WAL_CORRUPTION`.
 *
 * @module
 */

import { XfError } from "../core/errors.ts";
import { io, type WalFs } from "./wal_fs.ts";
import {
  hasMagic,
  type Parsed,
  parseRecords,
  SEGMENT_NAME,
  segmentName,
  validSeqAfter,
  WAL_SEGMENT_HEADER_BYTES,
} from "./wal_record.ts";

/** A torn tail that `Wal.open` cut from the last segment. */
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

/** Corruption that `Wal.open` ignored because the checkpoint covers it. */
export interface SkippedCorruption {
  /** Segment number. */
  segment: number;
  /** Byte offset of the bad record (0 for a bad segment header). */
  offset: number;
  /** Why it is bad. */
  reason: string;
}

/** What `Wal.open` found and did; plain data. See {@linkcode describe}. */
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

/**
 * Say in one sentence what recovery did.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { describe } from "./wal_recovery.ts";
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

/** A segment as the open WAL knows it. */
export interface Segment {
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

/** What {@linkcode recover} hands the log: its segments, where appends go, and the report. */
export interface Recovered {
  /** Segment files the log holds, in order. */
  segments: Segment[];
  /** The segment appends go to, or `null` until the next append creates one. */
  current: Segment | null;
  /** Seq of the next record. */
  nextSeq: bigint;
  /** Number of the next segment file. */
  nextSegmentNum: number;
  /** What was found and done. */
  recovery: RecoveryReport;
}

/**
 * Scan the WAL in `dir` (creating it if absent), validate every record, cut a
 * torn tail, and say what the log holds. New seqs continue from
 * `max(lastSeq, cp) + 1n`. Throws `WAL_CORRUPTION` when a bad record or a
 * missing segment affects a record after `cp`, `STORAGE_ERROR` when a file
 * operation fails.
 */
export async function recover(dir: string, fs: WalFs, cp: bigint): Promise<Recovered> {
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
  const recovery: RecoveryReport = {
    segments: files.length,
    records,
    firstSeq: firstRecordSeq,
    lastSeq,
    replayable,
    tornTail,
    skipped,
  };
  return { segments, current, nextSeq, nextSegmentNum: lastFile ? lastFile.num + 1 : 1, recovery };
}
