/**
 * Stage 3, wal-flush: appends accepted events to the write-ahead log with
 * group commit and acknowledges them once fdatasync returns. This is the
 * moment an event is durable: it reports `stored` from here, straight to
 * the root. It then hands the events, with their WAL sequence numbers, to
 * the index; the acknowledgement never waits for the index.
 *
 * This actor alone owns the WAL files. It keeps its own record of the
 * index's checkpoint (a small file beside the segments) so it can judge,
 * at open, whether damage lies in records the index already holds.
 *
 * Takes: `append` (data, from decode); `appended`, `refused`, `space`
 * (its effects' answers); `replayed` (records after the index's checkpoint,
 * read by its runtime at start, paced by the index's credit); `isolated` (one
 * record read again for the index's retry of a batch it crashed on, sent
 * alone). Sends:
 * `index` ← `put`; `ingest` ← `release` (signal); reports `appended`,
 * `results`, `full`.
 *
 * @module
 */

import type { CommonEffect, EventResultWire, HostContext, Input, StageLogic, StageModule } from "./stage.ts";
import type { WalAppend } from "./decode.ts";
import type { Release } from "./ingest.ts";
import { type BatchItem, type EventBatch, packBatch, unpackBatch } from "./batch.ts";
import type { Limits } from "../core/limits.ts";
import { describe, type RecoveryReport, Wal } from "../storage/wal.ts";
import { WalRetention } from "../storage/wal_retention.ts";
import { toHex } from "../core/bytes.ts";
import { isDiskFull, XfError } from "../core/errors.ts";

/** A batch wal-flush hands to the index: durable events with their WAL sequence numbers. */
export interface IndexPut {
  type: "put";
  batch: EventBatch;
  /** Records replayed from the WAL at start (ids not computed yet). */
  replay: boolean;
  /**
   * One record read again from the WAL after the batch holding it crashed the index twice (actors/root.ts
   * `isolate`), sent alone: if it crashes the index twice more it is a poison event, set aside for good.
   */
  isolated?: boolean;
}

/** Messages wal-flush takes. */
export type WalIn =
  | Input<WalAppend>
  | { type: "appended"; tok: number; firstSeq: number }
  | { type: "refused"; tok: number; code: string; message: string; full: boolean }
  | { type: "space" }
  | { type: "replayed"; batch: EventBatch }
  /** One record read again from the WAL, to go to the index alone (`wal.isolate`). */
  | { type: "isolated"; batch: EventBatch };

/** Effects wal-flush asks for. */
export type WalEffect =
  | CommonEffect<"index">
  | { do: "append"; tok: number; records: Uint8Array[] };

/** wal-flush's state. */
export interface WalState {
  limits: Limits;
  /** The disk is full: appends are refused with STORAGE_FULL until space returns. */
  full: boolean;
  /** Batches being appended, by token. */
  appending: Map<number, BatchItem[]>;
}

function refuse(items: BatchItem[], code: string, message: string): WalEffect[] {
  const results: EventResultWire[] = [];
  const ids = new Uint8Array(items.length * 32);
  items.forEach((it, i) => {
    ids.set(it.id, i * 32);
    if (it.req) results.push({ req: it.req, idx: it.idx, status: "rejected", code, message });
  });
  return [
    { do: "report", msg: { type: "results", items: results } },
    { do: "signal", to: "ingest", msg: { type: "release", ids, stored: false } satisfies Release },
  ];
}

/** The wal-flush stage's logic. */
export const logic: StageLogic<WalState, WalIn, WalEffect> = {
  // Several appends in flight let the WAL group them into one fdatasync.
  concurrency: 16,
  init: (config) => ({ limits: config.limits, full: false, appending: new Map() }),
  receive(st, msg) {
    switch (msg.type) {
      case "input": {
        const items = unpackBatch(msg.msg.batch);
        if (st.full) {
          return [
            ...refuse(items, "STORAGE_FULL", "Cannot store event: the disk is full; retry later"),
            { do: "done", tok: msg.tok },
          ];
        }
        st.appending.set(msg.tok, items);
        return [{ do: "append", tok: msg.tok, records: items.map((it) => it.bytes) }];
      }
      case "appended": {
        const items = st.appending.get(msg.tok);
        if (!items) return [];
        st.appending.delete(msg.tok);
        const stored: EventResultWire[] = [];
        const withSeq: BatchItem[] = items.map((it, i) => {
          if (it.req) stored.push({ req: it.req, idx: it.idx, status: "stored", id: toHex(it.id) });
          return { ...it, seq: msg.firstSeq + i };
        });
        return [
          // Seq first: once a request is answered, reads wait for the index to hold it.
          { do: "report", msg: { type: "appended", n: items.length, lastSeq: msg.firstSeq + items.length - 1 } },
          { do: "report", msg: { type: "results", items: stored } },
          {
            do: "send",
            to: "index",
            msg: { type: "put", batch: packBatch(withSeq), replay: false } satisfies IndexPut,
          },
          { do: "done", tok: msg.tok },
        ];
      }
      case "refused": {
        const items = st.appending.get(msg.tok) ?? [];
        st.appending.delete(msg.tok);
        const effects: WalEffect[] = [];
        if (msg.full && !st.full) {
          st.full = true;
          effects.push({ do: "report", msg: { type: "full", full: true } });
        }
        return [...effects, ...refuse(items, msg.code, msg.message), { do: "done", tok: msg.tok }];
      }
      case "space":
        if (!st.full) return [];
        st.full = false;
        return [{ do: "report", msg: { type: "full", full: false } }];
      case "replayed":
        return [{ do: "send", to: "index", msg: { type: "put", batch: msg.batch, replay: true } satisfies IndexPut }];
      case "isolated":
        return [{
          do: "send",
          to: "index",
          msg: { type: "put", batch: msg.batch, replay: true, isolated: true } satisfies IndexPut,
          alone: true,
        }];
    }
  },
};

/** wal-flush's runtime: the WAL files, the reserve file and the free-space probe. */
export const effects = (ctx: HostContext) => {
  let wal: Wal | null = null;
  let dir = "";
  let limits!: Limits;
  let recovery: RecoveryReport | null = null;
  /** Segments are deleted only once the index flushed what they hold to RocksDB's tables. */
  let retention: WalRetention | null = null;
  /** The disk is full: appends are refused with STORAGE_FULL until a probe finds space again. */
  let full = false;
  let probeTimer: ReturnType<typeof setTimeout> | null = null;
  let reopening: Promise<void> | null = null;
  let startedFull = false;
  const reservePath = () => `${dir}/../reserve`;

  /** Write `bytes` of zeros to `path`, synced. */
  async function fill(path: string, bytes: number) {
    const f = await Deno.open(path, { write: true, create: true, truncate: true });
    try {
      const chunk = new Uint8Array(1 << 20);
      for (let n = 0; n < bytes; n += chunk.length) await f.write(chunk);
      await f.syncData();
    } finally {
      f.close();
    }
  }

  /** Keep `storage_reserve_bytes` of the disk for a clean stop; false when there is no room for it. */
  async function writeReserve(): Promise<boolean> {
    try {
      const st = await Deno.stat(reservePath()).catch(() => null);
      if (st && st.size >= limits.storage_reserve_bytes) return true;
      await fill(reservePath(), limits.storage_reserve_bytes);
      return true;
    } catch (e) {
      await Deno.remove(reservePath()).catch(() => {});
      if (isDiskFull(e)) return false;
      throw e;
    }
  }

  /** While full: every `storage_full_probe_ms`, try to write twice the reserve; on success take writes again. */
  function probe() {
    probeTimer = setTimeout(async () => {
      probeTimer = null;
      if (!wal) return;
      const test = `${dir}/../space-probe`;
      const room = await fill(test, 2 * limits.storage_reserve_bytes).then(() => true, () => false);
      await Deno.remove(test).catch(() => {});
      if (room && (await writeReserve().catch(() => false))) {
        full = false;
        ctx.receive({ type: "space" } satisfies WalIn);
      } else probe();
    }, limits.storage_full_probe_ms);
  }

  /** After a failed write the WAL must be reopened: recovery cuts the torn tail (never acknowledged). */
  function reopen(): Promise<void> {
    reopening ??= (async () => {
      await wal?.close().catch(() => {});
      wal = (await Wal.open(dir, { checkpointSeq: retention!.durable, limits })).wal;
    })().finally(() => reopening = null);
    return reopening;
  }

  /** Every record after `after` goes to the index again (as replayed batches), paced by its credit. */
  async function sendBack(after: bigint): Promise<number> {
    let n = 0;
    for await (const recs of wal!.replay(after)) {
      const items: BatchItem[] = recs.map((r) => ({
        bytes: r.payload,
        req: 0,
        idx: 0,
        id: new Uint8Array(32),
        seq: Number(r.seq),
      }));
      ctx.receive({ type: "replayed", batch: packBatch(items) } satisfies WalIn);
      n += items.length;
      await ctx.room("index");
    }
    return n;
  }

  return {
    async start(_st: WalState, config: { limits: Limits; dir?: unknown }) {
      dir = config.dir as string;
      limits = config.limits;
      await Deno.mkdir(dir, { recursive: true });
      retention = await WalRetention.open(dir);
      const opened = await Wal.open(dir, { checkpointSeq: retention.durable, limits });
      wal = opened.wal;
      recovery = opened.recovery;
      // Without room for the reserve the node starts refusing writes (reads are served).
      startedFull = !(await writeReserve());
    },
    async run(eff: WalEffect): Promise<WalIn | void> {
      if (eff.do !== "append") return;
      if (reopening) await reopening.catch(() => {});
      try {
        if (full) throw new XfError("STORAGE_FULL", "Cannot store events: the disk is full");
        const { firstSeq } = await wal!.append(eff.records);
        return { type: "appended", tok: eff.tok, firstSeq: Number(firstSeq) };
      } catch (e) {
        if (!isDiskFull(e)) throw e;
        // The disk is full: give up the reserve (room for a clean stop and for the index to catch up),
        // reopen the WAL, refuse these events (none was acknowledged) and every write until space returns.
        if (!full) {
          full = true;
          await Deno.remove(reservePath()).catch(() => {});
          await reopen();
          probe();
        }
        return {
          type: "refused",
          tok: eff.tok,
          code: "STORAGE_FULL",
          message: "Cannot store event: the disk is full; retry later",
          full: true,
        };
      }
    },
    async call(msg: { type: string } & Record<string, unknown>) {
      switch (msg.type) {
        case "wal.replay": {
          // Records after the durable checkpoint go to the index again (it skips those it holds), paced by its credit.
          const from = await retention!.replayFrom(wal!, BigInt(msg.after as number), dir.replace(/\/wal\/?$/, "/db"));
          const n = await sendBack(from);
          if (startedFull) {
            startedFull = false;
            full = true;
            ctx.receive({ type: "refused", tok: 0, code: "STORAGE_FULL", message: "disk full at start", full: true });
            probe();
          }
          return { replayed: n, from: Number(from), recovery: recovery ? describe(recovery) : "" };
        }
        case "wal.resend": {
          // After a restart of this stage: every record after the index's (contiguous) checkpoint goes again, so a batch lost between them is indexed (the index skips what it holds).
          const n = await sendBack(BigInt(msg.after as number));
          return { resent: n };
        }
        case "wal.isolate": {
          // The index crashed twice on a batch (actors/root.ts `isolate`): its records go again one at a time, each
          // alone on the link, read from the WAL (the index's checkpoint stops below them, so their segment is kept).
          const seqs = isolateSeqs(msg.seqs, limits);
          const found = new Set<number>();
          if (seqs.length) {
            const hi = seqs[seqs.length - 1]!;
            const want = new Set(seqs);
            read: for await (const recs of wal!.replay(BigInt(seqs[0]! - 1))) {
              for (const r of recs) {
                const seq = Number(r.seq);
                if (seq > hi) break read;
                if (!want.has(seq) || found.has(seq)) continue;
                found.add(seq);
                const item = { bytes: r.payload, req: 0, idx: 0, id: new Uint8Array(32), seq };
                ctx.receive({ type: "isolated", batch: packBatch([item]) } satisfies WalIn);
                await ctx.room("index");
              }
            }
          }
          return { sent: found.size, missing: seqs.filter((q) => !found.has(q)) };
        }
        case "wal.checkpoint": {
          const deleted = await retention!.retire(wal!, BigInt(msg.seq as number), {
            durable: () => ctx.ask<number>({ type: "index.durable" }),
          });
          return { deleted };
        }
        case "wal.stats": {
          const st = wal!.stats();
          return { ...st, lastSeq: Number(st.lastSeq), checkpoint: Number(retention!.durable), full };
        }
      }
      throw new XfError("INTERNAL", `wal-flush cannot answer "${msg.type}"`);
    },
    async stop() {
      if (probeTimer) clearTimeout(probeTimer);
      probeTimer = null;
      if (reopening) await reopening.catch(() => {});
      await wal?.close();
      wal = null;
    },
  };
};

/** The seqs of `wal.isolate`: positive integers, at most one batch's worth, in order, without repeats. */
function isolateSeqs(raw: unknown, limits: Limits): number[] {
  const list = raw instanceof Float64Array || Array.isArray(raw) ? [...raw] : null;
  if (!list || list.length > limits.wal_commit_records_max) {
    throw new XfError(
      "INTERNAL",
      `Cannot isolate WAL records: seqs must be a list of at most ${limits.wal_commit_records_max} (wal_commit_records_max)`,
    );
  }
  for (const q of list) {
    if (typeof q !== "number" || !Number.isSafeInteger(q) || q < 1) {
      throw new XfError("INTERNAL", `Cannot isolate WAL record "${q}": not a positive integer seq`);
    }
  }
  return [...new Set(list as number[])].sort((a, b) => a - b);
}

export default { logic, effects } satisfies StageModule<WalState, WalIn, WalEffect>;
