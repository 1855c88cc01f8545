/**
 * A batch of events as plain data: every event's bytes in one buffer, with
 * per-event request number, position and id in typed arrays, so a batch of
 * hundreds of events crosses a Worker boundary as a handful of objects.
 *
 * @module
 */

/** A packed batch of events. */
export interface EventBatch {
  /** All events' bytes, concatenated. */
  bytes: Uint8Array;
  /** End offset of event i in `bytes` (start is `ends[i-1]` or 0). */
  ends: Uint32Array;
  /** Request number of event i (0 for replayed or synced events). */
  reqs: Float64Array;
  /** Position of event i within its request. */
  idxs: Uint32Array;
  /** Ids, 32 bytes each. */
  ids: Uint8Array;
  /** WAL sequence number of event i (0 before the WAL). */
  seqs: Float64Array;
}

/** One event of a batch, unpacked (views into the batch's buffers). */
export interface BatchItem {
  bytes: Uint8Array;
  req: number;
  idx: number;
  id: Uint8Array;
  seq: number;
}

/** Build a batch from items. */
export function packBatch(items: readonly BatchItem[]): EventBatch {
  let total = 0;
  for (const it of items) total += it.bytes.length;
  const bytes = new Uint8Array(total);
  const ends = new Uint32Array(items.length);
  const reqs = new Float64Array(items.length);
  const idxs = new Uint32Array(items.length);
  const ids = new Uint8Array(items.length * 32);
  const seqs = new Float64Array(items.length);
  let off = 0;
  items.forEach((it, i) => {
    bytes.set(it.bytes, off);
    off += it.bytes.length;
    ends[i] = off;
    reqs[i] = it.req;
    idxs[i] = it.idx;
    ids.set(it.id, i * 32);
    seqs[i] = it.seq;
  });
  return { bytes, ends, reqs, idxs, ids, seqs };
}

/** Number of events in a batch. */
export function batchSize(b: EventBatch): number {
  return b.ends.length;
}

/** Unpack a batch into items (views, no copies). */
export function unpackBatch(b: EventBatch): BatchItem[] {
  const out: BatchItem[] = [];
  let start = 0;
  for (let i = 0; i < b.ends.length; i++) {
    const end = b.ends[i]!;
    out.push({
      bytes: b.bytes.subarray(start, end),
      req: b.reqs[i]!,
      idx: b.idxs[i]!,
      id: b.ids.subarray(i * 32, i * 32 + 32),
      seq: b.seqs[i]!,
    });
    start = end;
  }
  return out;
}

/** Per-event outcome reported to the root. */
export interface EventResult {
  req: number;
  idx: number;
  status: "stored" | "duplicate" | "rejected";
  /** Hex id, when the bytes could be hashed. */
  id?: string;
  code?: string;
  message?: string;
}
