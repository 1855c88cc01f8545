/**
 * Stage 3, wal-flush: appends accepted events to the write-ahead log with
 * group commit and acknowledges them once fdatasync returns. This is the
 * moment an event is durable: the root answers `stored` from here. It then
 * hands the events, with their WAL sequence numbers, to the index.
 *
 * This actor alone owns the WAL files. It keeps its own record of the
 * index's checkpoint (a small file beside the segments) so it can judge,
 * at open, whether damage lies in records the index already holds.
 *
 * Messages it takes (data): `wal.append`. Requests: `wal.replay`,
 * `wal.checkpoint`, `wal.stats`.
 * It sends: `root` ← `pipeline.results`, `wal.appended`; `index` ← `index.put`.
 *
 * @module
 */

import type { Stage, StageContext } from "./runtime.ts";
import { type BatchItem, type EventBatch, type EventResult, packBatch, unpackBatch } from "./batch.ts";
import { LIMITS, type Limits } from "./limits.ts";
import { describe, type RecoveryReport, Wal } from "../storage/wal.ts";
import { WalRetention } from "../storage/wal_retention.ts";
import { toHex } from "../storage/ed25519.ts";
import { isDiskFull, XfError } from "../storage/errors.ts";

/** Messages the wal-flush stage takes. */
export type WalMsg = { type: "wal.append"; batch: EventBatch };

/** Requests the wal-flush stage answers. */
export type WalCall =
  | { type: "wal.replay"; after: number }
  | { type: "wal.checkpoint"; seq: number }
  | { type: "wal.stats" };

/** wal-flush's config. */
export interface WalConfig {
  dir: string;
  limits: Limits;
}

/** The wal-flush stage's logic. */
export function walFlushStage(): Stage<WalConfig> {
  let wal: Wal | null = null;
  let dir = "";
  let limits: Limits = { ...LIMITS };
  let recovery: RecoveryReport | null = null;
  /** Segments are deleted only once the index flushed what they hold to RocksDB's tables. */
  let retention: WalRetention | null = null;
  /** The disk is full: appends are refused with STORAGE_FULL until a probe finds space again. */
  let full = false;
  let probeTimer: ReturnType<typeof setTimeout> | null = null;
  let reopening: Promise<void> | null = null;
  let recoveryFull = false;
  const reservePath = () => `${dir}/../reserve`;

  /** Keep `storage_reserve_bytes` of the disk for a clean stop; false when there is no room for it. */
  async function writeReserve(): Promise<boolean> {
    try {
      const st = await Deno.stat(reservePath()).catch(() => null);
      if (st && st.size >= limits.storage_reserve_bytes) return true;
      const f = await Deno.open(reservePath(), { write: true, create: true, truncate: true });
      try {
        const chunk = new Uint8Array(1 << 20);
        for (let n = 0; n < limits.storage_reserve_bytes; n += chunk.length) await f.write(chunk);
        await f.syncData();
      } finally {
        f.close();
      }
      return true;
    } catch (e) {
      await Deno.remove(reservePath()).catch(() => {});
      if (isDiskFull(e)) return false;
      throw e;
    }
  }

  function setFull(v: boolean, ctx: StageContext) {
    if (full === v) return;
    full = v;
    ctx.emit("root", { type: "wal.full", full: v });
    if (v) probe(ctx);
  }

  /** While full: every `storage_full_probe_ms`, try to write twice the reserve; on success take writes again. */
  function probe(ctx: StageContext) {
    probeTimer = setTimeout(async () => {
      probeTimer = null;
      if (!wal) return;
      let room = false;
      const test = `${dir}/../space-probe`;
      try {
        const f = await Deno.open(test, { write: true, create: true, truncate: true });
        try {
          const chunk = new Uint8Array(1 << 20);
          for (let n = 0; n < 2 * limits.storage_reserve_bytes; n += chunk.length) await f.write(chunk);
          await f.syncData();
        } finally {
          f.close();
        }
        room = true;
      } catch { /* still full */ }
      await Deno.remove(test).catch(() => {});
      if (room && (await writeReserve().catch(() => false))) setFull(false, ctx);
      else probe(ctx);
    }, limits.storage_full_probe_ms);
  }

  /** After a failed write the WAL must be reopened: recovery cuts the torn tail (never acknowledged). */
  function reopen(): Promise<void> {
    reopening ??= (async () => {
      await wal?.close().catch(() => {});
      const opened = await Wal.open(dir, {
        checkpointSeq: retention!.durable,
        segmentBytesMax: limits.wal_segment_bytes_max,
      });
      wal = opened.wal;
    })().finally(() => reopening = null);
    return reopening;
  }

  async function append(b: EventBatch, ctx: StageContext) {
    const items = unpackBatch(b);
    if (reopening) await reopening.catch(() => {});
    let firstSeq: bigint;
    try {
      if (full) throw new XfError("STORAGE_FULL", "Cannot store events: the disk is full");
      ({ firstSeq } = await wal!.append(items.map((it) => it.bytes)));
    } catch (e) {
      if (!isDiskFull(e)) throw e;
      // The disk is full: give up the reserve (room for a clean stop and for the index to catch up),
      // reopen the WAL, refuse these events (none was acknowledged) and every write until space returns.
      if (!full) {
        await Deno.remove(reservePath()).catch(() => {});
        setFull(true, ctx);
        await reopen();
      }
      const results: EventResult[] = [];
      const ids = new Uint8Array(items.length * 32);
      items.forEach((it, i) => {
        ids.set(it.id, i * 32);
        if (it.req) {
          results.push({
            req: it.req,
            idx: it.idx,
            status: "rejected",
            code: "STORAGE_FULL",
            message: "Cannot store event: the disk is full; retry later",
          });
        }
      });
      ctx.emit("root", { type: "pipeline.results", items: results });
      ctx.emit("root", { type: "decode.rejected", ids });
      return;
    }
    const stored: EventResult[] = [];
    const withSeq: BatchItem[] = items.map((it, i) => {
      if (it.req) stored.push({ req: it.req, idx: it.idx, status: "stored", id: toHex(it.id) });
      return { ...it, seq: Number(firstSeq) + i };
    });
    // Seq first: once a request is answered, reads wait for the index to hold it.
    ctx.emit("root", { type: "wal.appended", n: items.length, lastSeq: Number(firstSeq) + items.length - 1 });
    ctx.emit("root", { type: "pipeline.results", items: stored });
    ctx.emit("index", { type: "index.put", batch: packBatch(withSeq) });
  }

  return {
    // Several appends in flight let the WAL group them into one fdatasync.
    concurrency: 16,
    async start(config) {
      dir = config.dir;
      limits = config.limits;
      await Deno.mkdir(dir, { recursive: true });
      retention = await WalRetention.open(dir);
      const opened = await Wal.open(dir, {
        checkpointSeq: retention.durable,
        segmentBytesMax: limits.wal_segment_bytes_max,
      });
      wal = opened.wal;
      recovery = opened.recovery;
      full = false;
      // Without room for the reserve the node starts refusing writes (reads are served).
      if (!(await writeReserve())) {
        full = true;
        recoveryFull = true;
      }
    },
    async data(raw, ctx) {
      const msg = raw as WalMsg;
      if (msg.type === "wal.append") return await append(msg.batch, ctx);
      throw new XfError("INTERNAL", `wal-flush cannot handle message "${(msg as { type: string }).type}"`);
    },
    async call(raw, ctx) {
      const msg = raw as WalCall;
      switch (msg.type) {
        case "wal.replay": {
          // Records after the durable checkpoint go to the index again (it skips those it holds).
          const from = await retention!.replayFrom(wal!, BigInt(msg.after), dir.replace(/\/wal\/?$/, "/db"));
          let n = 0;
          for await (const recs of wal!.replay(from)) {
            const items: BatchItem[] = recs.map((r) => ({
              bytes: r.payload,
              req: 0,
              idx: 0,
              id: new Uint8Array(32),
              seq: Number(r.seq),
            }));
            ctx.emit("index", { type: "index.put", batch: packBatch(items), replay: true });
            n += items.length;
          }
          if (recoveryFull) {
            recoveryFull = false;
            ctx.emit("root", { type: "wal.full", full: true });
            probe(ctx);
          }
          return { replayed: n, from: Number(from), recovery: recovery ? describe(recovery) : "" };
        }
        case "wal.checkpoint": {
          const deleted = await retention!.retire(wal!, BigInt(msg.seq), {
            durable: () => ctx.ask<number>("index", { type: "index.durable" }),
          });
          return { deleted };
        }
        case "wal.stats": {
          const st = wal!.stats();
          return { ...st, lastSeq: Number(st.lastSeq), checkpoint: Number(retention!.durable), full };
        }
      }
      throw new XfError("INTERNAL", `wal-flush cannot answer "${(msg as { type: string }).type}"`);
    },
    async stop() {
      if (probeTimer) clearTimeout(probeTimer);
      probeTimer = null;
      if (reopening) await reopening.catch(() => {});
      await wal?.close();
      wal = null;
    },
  };
}
