/**
 * The WAL's on-disk record format: segment and record headers, how a segment
 * is parsed and checked, how a bad spot is told from a torn tail (is there a
 * valid record after it?), and how records are encoded. Pure: no Deno API.
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
 * @module
 */

import { crc32c } from "./crc32c.ts";

/** Bytes of a segment header: magic and first seq. */
export const WAL_SEGMENT_HEADER_BYTES = 16;
/** Bytes of a record header: length, checksum and seq. */
export const WAL_RECORD_HEADER_BYTES = 16;
/** The first 8 bytes of every segment. */
export const MAGIC: Uint8Array = new TextEncoder().encode("XFWAL1\0\0");
/** A segment file's name. */
export const SEGMENT_NAME = /^(\d{20})\.wal$/;
/** The largest payload one record holds (its length is a u32). */
export const U32_MAX = 0xffff_ffff;

/** Where a segment stops being valid, and why. */
export interface BadSpot {
  offset: number;
  reason: string;
}

/** What a walk over a segment's records found. */
export interface Parsed {
  count: number;
  /** Seq of the last valid record, or `firstSeq - 1n` if none. */
  lastSeq: bigint;
  /** Offset just past the last valid record. */
  end: number;
  bad: BadSpot | null;
}

/** Check the record at `off`; its length and seq, or why it is bad. */
export function checkRecord(
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
export function parseRecords(
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
export function findRecord(
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
export function validSeqAfter(
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

/** Whether `buf` starts with a segment header's magic. */
export function hasMagic(buf: Uint8Array): boolean {
  if (buf.length < WAL_SEGMENT_HEADER_BYTES) return false;
  for (let i = 0; i < MAGIC.length; i++) if (buf[i] !== MAGIC[i]) return false;
  return true;
}

/** The file name of segment `num`: 20 zero-padded digits and `.wal`. */
export function segmentName(num: number): string {
  return `${String(num).padStart(20, "0")}.wal`;
}

/** Records to write to one segment in one write call. */
export interface Chunk {
  /** Starts a new segment. */
  fresh: boolean;
  firstSeq: bigint;
  size: number;
  payloads: Uint8Array[];
}

/** Encode a chunk: the segment header if it starts a segment, then its records. */
export function encodeChunk(c: Chunk): Uint8Array {
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
