/**
 * Stage 1, ingest: admission. Splits request bodies into events, enforces
 * size limits, computes ids, checks the group against the request path,
 * and drops duplicates (within the request, in flight, recently stored, or
 * already in RocksDB: a `lookup` effect its runtime answers from the index
 * over a direct port) and deleted events (`DELETED`, the same lookup). What passes goes to decode, one request never split
 * across two batches.
 *
 * Takes: `submit` (data, from the root); `release` (signal, from decode,
 * wal-flush and index: ids no longer in flight); `looked` (its lookup's
 * answer). Sends: `decode` ← `batch`; reports `split`, `failed`, `results`.
 *
 * @module
 */

import { sha256 } from "@noble/hashes/sha2";
import type { CommonEffect, EventResultWire, HostContext, Input, StageLogic, StageModule } from "./stage.ts";
import { type BatchItem, packBatch } from "./batch.ts";
import type { Limits } from "../core/limits.ts";
import { skipItem } from "../storage/cbor.ts";
import { fromHex, toHex } from "../core/bytes.ts";
import { IdFilter } from "../storage/id_filter.ts";
import { toWire, XfError } from "../core/errors.ts";

/** One request's body, as the root hands it over. */
export interface Submission {
  req: number;
  /** The group named by the request path, if any. */
  gid: Uint8Array | null;
  /** Hex key of the HTTP caller's token ("" anonymous); null for the library and peers (no read check). */
  reader: string | null;
  body: Uint8Array;
}

/** What decode needs to know of a request besides its events. */
export interface RequestInfo {
  req: number;
  /** Hex group of the request path. */
  gid: string;
  reader: string;
}

/** A batch ingest hands to decode. */
export interface DecodeBatch {
  type: "batch";
  batch: import("./batch.ts").EventBatch;
  /** Requests with a path group and a reader (HTTP): decode checks the reader may see the group. */
  requests: RequestInfo[];
  /**
   * Ingest's own answers (duplicates, group mismatches, oversized events) for those requests: decode reports them
   * only if the reader may see the group, so a duplicate never tells a stranger that a closed group exists.
   */
  deferred: EventResultWire[];
}

/**
 * Ids no longer in flight: rejected (`stored` false) or indexed (`stored` true). `deleted`: the ids are in the
 * deleted set now (a tombstone forgot them, or refused them): they join the filter, so one arriving again is asked
 * of the index, which answers "deleted".
 */
export interface Release {
  type: "release";
  ids: Uint8Array;
  stored: boolean;
  deleted?: boolean;
}

/** What the index answers `index.has` per id. */
export const PRESENCE = { absent: 0, held: 1, deleted: 2 } as const;
/** {@linkcode PRESENCE}: 0 absent (or only named by a pending tombstone), 1 held, 2 deleted. */
export type Presence = typeof PRESENCE[keyof typeof PRESENCE];

/** The filter of every event id held, built by the index at start (see storage/id_filter.ts). */
export interface FilterBuilt {
  type: "filter";
  bits: Uint8Array;
  count: number;
}

/** Messages ingest takes. */
export type IngestIn =
  | Input<{ type: "submit"; subs: Submission[] }>
  | { type: "signal"; from: string; msg: Release | FilterBuilt }
  | { type: "looked"; tok: number; known: Presence[] };

/** Effects ingest asks for. */
export type IngestEffect = CommonEffect<"decode"> | { do: "lookup"; tok: number; ids: Uint8Array };

/** Ingest's state. */
export interface IngestState {
  limits: Limits;
  /** In flight: admitted, neither rejected nor indexed. */
  pending: Set<string>;
  /** Recently indexed (bounded, oldest dropped). */
  recent: Set<string>;
  /** Batches waiting for their lookup, by token; `asked`: the positions in `fresh` the lookup covers. */
  waiting: Map<number, { fresh: Fresh[]; asked: number[]; results: EventResultWire[]; requests: RequestInfo[] }>;
  /** Every id held (from the index at start, then each indexed one); null until it arrives, or once overfull. */
  filter: IdFilter | null;
}

type Fresh = BatchItem & { hex: string };

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

function remember(st: IngestState, id: string) {
  st.recent.add(id);
  if (st.recent.size > st.limits.ingest_recent_ids_max) st.recent.delete(st.recent.values().next().value!);
}

/** Split, size-check, hash and deduplicate a set of request bodies. */
function admit(st: IngestState, subs: Submission[], tok: number): IngestEffect[] {
  const effects: IngestEffect[] = [];
  const results: EventResultWire[] = [];
  const fresh: Fresh[] = [];
  const requests: RequestInfo[] = [];
  const seen = new Set<string>();
  const limits = st.limits;
  for (const s of subs) {
    let parts: Uint8Array[];
    try {
      parts = splitBody(s.body, limits);
    } catch (e) {
      const w = toWire(e);
      effects.push({ do: "report", msg: { type: "failed", req: s.req, code: w.code, message: w.message } });
      continue;
    }
    effects.push({ do: "report", msg: { type: "split", req: s.req, n: parts.length } });
    if (s.gid && s.reader !== null) requests.push({ req: s.req, gid: toHex(s.gid), reader: s.reader });
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
      if (seen.has(hex) || st.pending.has(hex) || st.recent.has(hex)) {
        results.push({ req: s.req, idx, status: "duplicate", id: hex });
        return;
      }
      seen.add(hex);
      fresh.push({ bytes, req: s.req, idx, id, seq: 0, hex });
    });
  }
  if (fresh.length === 0) return [...effects, ...forward(st, [], results, requests, tok)];
  // Reserve the ids now, so a copy arriving while the lookup runs is a duplicate.
  for (const f of fresh) st.pending.add(f.hex);
  // Only ids the filter may hold are asked of the index; with none, the batch goes on at once.
  const asked: number[] = [];
  fresh.forEach((f, i) => {
    if (!st.filter || st.filter.mayHave(f.id)) asked.push(i);
  });
  if (asked.length === 0) return [...effects, ...forward(st, fresh, results, requests, tok)];
  st.waiting.set(tok, { fresh, asked, results, requests });
  const ids = new Uint8Array(asked.length * 32);
  asked.forEach((fi, j) => ids.set(fresh[fi]!.id, j * 32));
  effects.push({ do: "lookup", tok, ids });
  return effects;
}

/** After the lookup: events the index holds are duplicates, deleted ones are refused; the rest go to decode. */
function forward(
  st: IngestState,
  fresh: Fresh[],
  results: EventResultWire[],
  requests: RequestInfo[],
  tok: number,
  known: Presence[] = [],
): IngestEffect[] {
  const effects: IngestEffect[] = [];
  const items: BatchItem[] = [];
  fresh.forEach((f, i) => {
    if (known[i] === PRESENCE.held) {
      st.pending.delete(f.hex);
      remember(st, f.hex);
      results.push({ req: f.req, idx: f.idx, status: "duplicate", id: f.hex });
    } else if (known[i] === PRESENCE.deleted) {
      st.pending.delete(f.hex);
      results.push({
        req: f.req,
        idx: f.idx,
        status: "rejected",
        id: f.hex,
        code: "DELETED",
        message: `Cannot accept event "${f.hex}": it was deleted by a tombstone this node holds`,
      });
    } else items.push(f);
  });
  // Answers for requests decode must first check the reader of go with them; the others are reported now.
  const checked = new Set(requests.map((r) => r.req));
  const now = results.filter((r) => !checked.has(r.req));
  if (now.length) effects.push({ do: "report", msg: { type: "results", items: now } });
  const batch = (part: BatchItem[], reqs: Set<number>): IngestEffect => ({
    do: "send",
    to: "decode",
    msg: {
      type: "batch",
      batch: packBatch(part),
      requests: requests.filter((r) => reqs.has(r.req)),
      deferred: results.filter((r) => checked.has(r.req) && reqs.has(r.req)),
    } satisfies DecodeBatch,
  });
  // Cut between requests only (a request is judged whole by decode), near stage_batch_events_max.
  const sent = new Set<number>();
  let from = 0;
  for (let i = 1; i <= items.length; i++) {
    const cut = i === items.length ||
      (i - from >= st.limits.stage_batch_events_max && items[i]!.req !== items[i - 1]!.req);
    if (!cut) continue;
    const part = items.slice(from, i);
    const reqs = new Set(part.map((p) => p.req));
    for (const r of reqs) sent.add(r);
    effects.push(batch(part, reqs));
    from = i;
  }
  // Checked requests none of whose events go on (all duplicates, say): decode still judges the reader first.
  const rest = new Set([...checked].filter((r) => !sent.has(r)));
  if (rest.size) effects.push(batch([], rest));
  effects.push({ do: "done", tok });
  return effects;
}

/** The ingest stage's logic. */
export const logic: StageLogic<IngestState, IngestIn, IngestEffect> = {
  concurrency: 2,
  init: (config) => ({
    limits: config.limits,
    pending: new Set(),
    recent: new Set(),
    waiting: new Map(),
    filter: null,
  }),
  receive(st, msg) {
    switch (msg.type) {
      case "input":
        return admit(st, msg.msg.subs, msg.tok);
      case "looked": {
        const w = st.waiting.get(msg.tok);
        if (!w) return [];
        st.waiting.delete(msg.tok);
        const known: Presence[] = w.fresh.map(() => PRESENCE.absent);
        w.asked.forEach((fi, j) => (known[fi] = msg.known[j] ?? PRESENCE.absent));
        return forward(st, w.fresh, w.results, w.requests, msg.tok, known);
      }
      case "signal": {
        if (msg.msg.type === "filter") {
          // Ids indexed while the index built it are in `recent`: they join it now.
          const f = new IdFilter(msg.msg.bits);
          f.count = msg.msg.count;
          for (const hex of st.recent) f.add(fromHex(hex)!);
          st.filter = f;
          return [];
        }
        const { ids, stored, deleted } = msg.msg;
        for (let i = 0; i < ids.length; i += 32) {
          const id = ids.subarray(i, i + 32);
          const hex = toHex(id);
          st.pending.delete(hex);
          if (stored) {
            remember(st, hex);
            st.filter?.add(id);
          } else {
            // Dropped as damaged: a peer's copy must not be taken for a duplicate. Deleted: the index answers.
            st.recent.delete(hex);
            if (deleted) st.filter?.add(id);
          }
        }
        // Past twice its capacity a filter answers "maybe" too often to save lookups: back to asking for each.
        if (st.filter && st.filter.count > 2 * st.filter.capacity) st.filter = null;
        return [];
      }
    }
  },
};

/** Ingest's runtime: the lookup goes to the index over a direct request port. */
export const effects = (ctx: HostContext) => ({
  async run(eff: IngestEffect): Promise<IngestIn | void> {
    if (eff.do !== "lookup") return;
    try {
      const known = await ctx.request<Presence[]>("index", { type: "index.has", ids: eff.ids });
      return { type: "looked", tok: eff.tok, known };
    } catch {
      // The index is restarting: let decode and the index judge (the index skips what it holds).
      return { type: "looked", tok: eff.tok, known: [] };
    }
  },
});

export default { logic, effects } satisfies StageModule<IngestState, IngestIn, IngestEffect>;
