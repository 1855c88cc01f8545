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
import { toHex } from "../storage/ed25519.ts";
import { XfError } from "../storage/errors.ts";

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

const CHECKPOINT_FILE = "checkpoint";

async function readCheckpoint(dir: string): Promise<bigint> {
  try {
    const text = await Deno.readTextFile(`${dir}/${CHECKPOINT_FILE}`);
    return BigInt(text.trim());
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return 0n;
    throw new XfError("WAL_CORRUPTION", `Cannot read WAL checkpoint file in "${dir}": ${(e as Error).message}`);
  }
}

async function writeCheckpoint(dir: string, seq: bigint): Promise<void> {
  const tmp = `${dir}/${CHECKPOINT_FILE}.tmp`;
  const f = await Deno.open(tmp, { write: true, create: true, truncate: true });
  try {
    await f.write(new TextEncoder().encode(`${seq}\n`));
    await f.syncData();
  } finally {
    f.close();
  }
  await Deno.rename(tmp, `${dir}/${CHECKPOINT_FILE}`);
  // Make the rename itself durable.
  const d = await Deno.open(dir, { read: true });
  try {
    await d.syncData();
  } catch {
    /* some file systems cannot sync a directory */
  } finally {
    d.close();
  }
}

/** The wal-flush stage's logic. */
export function walFlushStage(): Stage<WalConfig> {
  let wal: Wal | null = null;
  let dir = "";
  let limits: Limits = { ...LIMITS };
  let recovery: RecoveryReport | null = null;
  let checkpointed = 0n;

  async function append(b: EventBatch, ctx: StageContext) {
    const items = unpackBatch(b);
    const { firstSeq } = await wal!.append(items.map((it) => it.bytes));
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
      checkpointed = await readCheckpoint(dir);
      const opened = await Wal.open(dir, {
        checkpointSeq: checkpointed,
        segmentBytesMax: limits.wal_segment_bytes_max,
      });
      wal = opened.wal;
      recovery = opened.recovery;
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
          // Records after the index's checkpoint go to the index again.
          let n = 0;
          for await (const recs of wal!.replay(BigInt(msg.after))) {
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
          return { replayed: n, recovery: recovery ? describe(recovery) : "" };
        }
        case "wal.checkpoint": {
          const seq = BigInt(msg.seq);
          if (seq <= checkpointed) return { deleted: 0 };
          await writeCheckpoint(dir, seq);
          checkpointed = seq;
          return { deleted: await wal!.checkpoint(seq) };
        }
        case "wal.stats": {
          const st = wal!.stats();
          return { ...st, lastSeq: Number(st.lastSeq), checkpoint: Number(checkpointed) };
        }
      }
      throw new XfError("INTERNAL", `wal-flush cannot answer "${(msg as { type: string }).type}"`);
    },
    async stop() {
      await wal?.close();
      wal = null;
    },
  };
}
