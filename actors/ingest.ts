/**
 * Stage 1, ingest: admission. Splits request bodies into events, enforces
 * size limits, computes ids, checks the group against the request path,
 * and drops duplicates (within the request, in flight, recently stored, or
 * already in RocksDB, asked of the index stage). What passes goes to
 * decode in batches.
 *
 * Messages it takes (data): `ingest.submit`, `ingest.release`.
 * It sends: `root` ← `ingest.split`, `ingest.failed`, `pipeline.results`;
 * `decode` ← `decode.batch`. It asks `index` ← `index.has`.
 *
 * @module
 */

import { sha256 } from "@noble/hashes/sha2";
import type { Stage, StageContext } from "./runtime.ts";
import { type BatchItem, type EventResult, packBatch } from "./batch.ts";
import { LIMITS, type Limits } from "./limits.ts";
import { skipItem } from "../storage/cbor.ts";
import { toHex } from "../storage/ed25519.ts";
import { toWire, XfError } from "../storage/errors.ts";

/** One request's body, as the root hands it over. */
export interface Submission {
  req: number;
  /** The group named by the request path, if any. */
  gid: Uint8Array | null;
  body: Uint8Array;
}

/** Messages the ingest stage takes. */
export type IngestMsg =
  | { type: "ingest.submit"; subs: Submission[] }
  | { type: "ingest.release"; ids: Uint8Array; stored: boolean };

/** Messages ingest sends to the root. */
export type IngestOut =
  | { type: "ingest.split"; req: number; n: number }
  | { type: "ingest.failed"; req: number; code: string; message: string };

/** Ingest's config. */
export interface IngestConfig {
  limits: Limits;
}

/** Split a request body into its events' byte ranges: one event, or an array of events. */
export function splitBody(body: Uint8Array, limits: Limits): Uint8Array[] {
  if (body.length === 0) throw new XfError("EMPTY_BODY", "Cannot accept request: the body is empty");
  if (body.length > limits.http_body_bytes_max) {
    throw new XfError(
      "BODY_TOO_LARGE",
      `Cannot accept body of ${body.length} bytes: the limit is ${limits.http_body_bytes_max}`,
    );
  }
  const first = body[0]!;
  if (first >> 5 !== 4) {
    throw new XfError("BAD_CBOR", "Cannot accept body: not a CBOR array (an event or an array of events)");
  }
  const end = skipItem(body, 0);
  if (end !== body.length) {
    throw new XfError("BAD_CBOR", `Cannot accept body: ${body.length - end} bytes after the CBOR item`);
  }
  // Head of the outer array.
  const info = first & 0x1f;
  const headLen = info < 24 ? 1 : info === 24 ? 2 : info === 25 ? 3 : info === 26 ? 5 : 9;
  if (headLen >= body.length) {
    throw new XfError("EMPTY_BODY", "Cannot accept body: an empty array holds no events");
  }
  const second = body[headLen]!;
  if (second >> 5 !== 4) return [body]; // one event: [1, group, ...]
  const out: Uint8Array[] = [];
  let p = headLen;
  while (p < body.length) {
    const e = skipItem(body, p);
    out.push(body.subarray(p, e));
    p = e;
    if (out.length > limits.http_batch_events_max) {
      throw new XfError("BATCH_TOO_LARGE", `Cannot accept batch: more than ${limits.http_batch_events_max} events`);
    }
  }
  return out;
}

/** The v1 prefix every valid event starts with: array(8), 1, bstr(32). */
const V1_PREFIX = [0x88, 0x01, 0x58, 0x20];

/** The ingest stage's logic. */
export function ingestStage(): Stage<IngestConfig> {
  let limits: Limits = { ...LIMITS };
  const pending = new Set<string>();
  const recent = new Set<string>();

  const remember = (id: string) => {
    recent.add(id);
    if (recent.size > limits.ingest_recent_ids_max) recent.delete(recent.values().next().value!);
  };

  async function submit(subs: Submission[], ctx: StageContext) {
    const results: EventResult[] = [];
    const fresh: (BatchItem & { hex: string })[] = [];
    const seen = new Set<string>();
    for (const s of subs) {
      let parts: Uint8Array[];
      try {
        parts = splitBody(s.body, limits);
      } catch (e) {
        const w = toWire(e);
        ctx.emit("root", { type: "ingest.failed", req: s.req, code: w.code, message: w.message } satisfies IngestOut);
        continue;
      }
      ctx.emit("root", { type: "ingest.split", req: s.req, n: parts.length } satisfies IngestOut);
      parts.forEach((bytes, idx) => {
        if (bytes.length > limits.event_bytes_max) {
          results.push({
            req: s.req,
            idx,
            status: "rejected",
            code: "EVENT_TOO_LARGE",
            message: `Cannot accept event of ${bytes.length} bytes: the limit is ${limits.event_bytes_max}`,
          });
          return;
        }
        const id = sha256(bytes);
        const hex = toHex(id);
        if (s.gid && V1_PREFIX.every((b, i) => bytes[i] === b)) {
          const g = bytes.subarray(4, 36);
          if (g.some((b, i) => b !== s.gid![i])) {
            results.push({
              req: s.req,
              idx,
              status: "rejected",
              id: hex,
              code: "GROUP_MISMATCH",
              message: `Cannot accept event: its group "${toHex(g)}" is not the group "${toHex(s.gid)}" of the request`,
            });
            return;
          }
        }
        if (seen.has(hex) || pending.has(hex) || recent.has(hex)) {
          results.push({ req: s.req, idx, status: "duplicate", id: hex });
          return;
        }
        seen.add(hex);
        fresh.push({ bytes, req: s.req, idx, id, seq: 0, hex });
      });
    }
    let known: boolean[] = [];
    if (fresh.length > 0) {
      try {
        const ids = new Uint8Array(fresh.length * 32);
        fresh.forEach((f, i) => ids.set(f.id, i * 32));
        known = await ctx.ask<boolean[]>("index", { type: "index.has", ids });
      } catch (e) {
        const w = toWire(e);
        for (const f of fresh) {
          results.push({ req: f.req, idx: f.idx, status: "rejected", id: f.hex, code: w.code, message: w.message });
        }
        fresh.length = 0;
      }
    }
    const forward: BatchItem[] = [];
    fresh.forEach((f, i) => {
      if (known[i]) {
        remember(f.hex);
        results.push({ req: f.req, idx: f.idx, status: "duplicate", id: f.hex });
      } else {
        pending.add(f.hex);
        forward.push(f);
      }
    });
    if (results.length) ctx.emit("root", { type: "pipeline.results", items: results });
    for (let i = 0; i < forward.length; i += limits.stage_batch_events_max) {
      ctx.emit("decode", {
        type: "decode.batch",
        batch: packBatch(forward.slice(i, i + limits.stage_batch_events_max)),
      });
    }
  }

  return {
    start(config) {
      limits = config.limits;
    },
    async data(raw, ctx) {
      const msg = raw as IngestMsg;
      if (msg.type === "ingest.submit") return await submit(msg.subs, ctx);
      if (msg.type === "ingest.release") {
        for (let i = 0; i < msg.ids.length; i += 32) {
          const hex = toHex(msg.ids.subarray(i, i + 32));
          pending.delete(hex);
          if (msg.stored) remember(hex);
          else recent.delete(hex); // dropped as damaged: a peer's copy must not be taken for a duplicate
        }
        return;
      }
      throw new XfError("INTERNAL", `Ingest cannot handle message "${(msg as { type: string }).type}"`);
    },
    call(raw) {
      const msg = raw as { type: string };
      if (msg.type === "ingest.stats") return { pending: pending.size, recent: recent.size };
      throw new XfError("INTERNAL", `Ingest cannot answer "${msg.type}"`);
    },
  };
}
