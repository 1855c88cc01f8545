/**
 * Client streams (`GET /v1/groups/:gid/stream`): a group's events, backfill
 * then live, over SSE or WebSocket, resumable with no gap and no duplicate.
 *
 * **Cursors.** Every event a stream sends carries the cursor to resume after
 * it. Live events and resumed streams go in the order this node indexed
 * them (its arrival index, `a` + 16 hex of the arrival seq), so a resumed
 * stream misses nothing that arrived meanwhile, whatever the events'
 * timestamps. A fresh stream backfills from `since` in `(ts, id)` order, up
 * to a snapshot of the arrival index taken after the live subscription
 * started (`t` + 80 hex of ts and id + `.` + 16 hex of the snapshot); events
 * indexed after the snapshot come live. So every event is sent once.
 *
 * **One subscription per group.** The streams of a group share one node
 * subscription ({@linkcode StreamHub}); an event reaches each of them
 * without a copy.
 *
 * **Bounds.** A stream whose unsent bytes pass `stream_lag_bytes_max` is cut
 * with `PEER_TOO_SLOW` (it can resume by cursor); streams at once are
 * bounded by `streams_max`; a heartbeat goes out every
 * `stream_heartbeat_ms`. A stream ends with `UNAUTHORIZED` when its token
 * expires, and with `UNKNOWN_GROUP` when its reader loses the right to a
 * closed group.
 *
 * @module
 */

import { fromHex, toHex } from "../core/bytes.ts";
import type { NodeCore } from "./node_api.ts";
import { decodeEvent, eventJson, peekEvent } from "../storage/event.ts";
import { type ErrorCode, toWire, XfError } from "../core/errors.ts";
import { STREAM_BATCH_EVENTS_MAX, STREAM_COALESCE_MS, STREAM_STALL_MS } from "../core/limits.ts";

/** Events read from the index per backfill page. */
export const STREAM_PAGE_EVENTS = 500;

/** What a stream asks for (validated by {@linkcode parseStreamQuery}). */
export interface StreamQuery {
  since?: number;
  kinds: number[];
  authors: string[];
  /** A resume cursor (`cursor` or `Last-Event-ID`). */
  cursor?: Cursor;
}

/** A parsed resume cursor. */
export type Cursor =
  | { kind: "arrival"; seq: number }
  | { kind: "time"; ts: number; id: string; snapshot: number };

const seqHex = (n: number) => n.toString(16).padStart(16, "0");

/** The cursor after an event that came from the arrival index (or live). */
export function arrivalCursor(seq: number): string {
  return `a${seqHex(seq)}`;
}

/** The cursor after an event of a time-ordered backfill under `snapshot`. */
export function timeCursor(ts: number, id: string, snapshot: number): string {
  return `t${seqHex(ts)}${id}.${seqHex(snapshot)}`;
}

/**
 * Parse a cursor; throws `BAD_QUERY`.
 *
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { arrivalCursor, parseCursor } from "./stream.ts";
 * assertEquals(parseCursor(arrivalCursor(42)), { kind: "arrival", seq: 42 });
 * ```
 */
export function parseCursor(s: string): Cursor {
  let m = /^a([0-9a-f]{16})$/.exec(s);
  if (m) return { kind: "arrival", seq: safe(m[1]!, s) };
  m = /^t([0-9a-f]{16})([0-9a-f]{64})\.([0-9a-f]{16})$/.exec(s);
  if (m) return { kind: "time", ts: safe(m[1]!, s), id: m[2]!, snapshot: safe(m[3]!, s) };
  throw new XfError("BAD_QUERY", `Cannot use cursor "${s.slice(0, 100)}": not a stream cursor (a… or t….…)`);
}

function safe(hex: string, whole: string): number {
  const n = parseInt(hex, 16);
  if (!Number.isSafeInteger(n)) throw new XfError("BAD_QUERY", `Cannot use cursor "${whole.slice(0, 100)}": too large`);
  return n;
}

/** Validate a stream's query parameters; throws `BAD_QUERY` (before any upgrade). */
export function parseStreamQuery(
  q: { since?: string; cursor?: string; kinds: string[]; authors: string[] },
  lastEventId?: string,
): StreamQuery {
  const out: StreamQuery = { kinds: [], authors: [] };
  if (q.since !== undefined && q.since !== "") {
    if (!/^\d{1,16}$/.test(q.since) || !Number.isSafeInteger(Number(q.since))) {
      throw new XfError("BAD_QUERY", `Cannot use since "${q.since.slice(0, 40)}": not a non-negative integer`);
    }
    out.since = Number(q.since);
  }
  for (const k of q.kinds) {
    if (!/^\d{1,9}$/.test(k)) throw new XfError("BAD_QUERY", `Cannot use kind "${k.slice(0, 40)}": not a kind`);
    out.kinds.push(Number(k));
  }
  if (q.kinds.length > 64 || q.authors.length > 64) {
    throw new XfError("BAD_QUERY", "Cannot use more than 64 kinds or 64 authors in one stream");
  }
  for (const a of q.authors) {
    if (!/^[0-9a-f]{64}$/.test(a)) throw new XfError("BAD_QUERY", `Cannot use author "${a.slice(0, 80)}": not 64 hex`);
    out.authors.push(a);
  }
  const c = lastEventId || q.cursor;
  if (c) out.cursor = parseCursor(c);
  return out;
}

/** Where a stream's records go (SSE or WebSocket). */
export interface StreamSink {
  event(bytes: Uint8Array, cursor: string): void;
  /** Several events' records, already encoded for this kind of sink and shared with other streams (SSE). */
  chunk?(records: Uint8Array): void;
  ready(cursor: string | null): void;
  heartbeat(): void;
  /** End the stream with an error record. */
  error(code: ErrorCode, message: string): void;
  /** Bytes queued and not yet taken by the client. */
  lag(): number;
  close(): void;
}

/**
 * A batch of a group's live events as the hub hands it to every stream of the group: what every stream
 * needs of it (kinds, the SSE records) is computed once, not once per stream.
 */
export class LiveBatch {
  #kinds: number[] | undefined;
  #sse: Uint8Array | undefined;
  /**
   * @param received When the hub received the batch's first event (`performance.now()` ms), for
   * `xf_stream_delivery_seconds`.
   */
  constructor(readonly events: Uint8Array[], readonly seqs: number[], readonly received = performance.now()) {}
  /** Each event's kind (-1 if unreadable). */
  get kinds(): number[] {
    return this.#kinds ??= this.events.map((b) => peekEvent(b)?.kind ?? -1);
  }
  /** Whether a manifest or membership event is among them (readers' rights may have changed). */
  get engine(): boolean {
    return this.kinds.some((k) => k >= 0 && k < 16);
  }
  /** Every event's SSE record with its arrival cursor, as one chunk shared by all SSE streams. */
  sse(): Uint8Array {
    if (!this.#sse) {
      const parts = this.events.map((b, i) => sseRecord(b, arrivalCursor(this.seqs[i]!)));
      const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
      let o = 0;
      for (const p of parts) out.set(p, o), o += p.length;
      this.#sse = out;
    }
    return this.#sse;
  }
}

type Listener = (batch: LiveBatch) => void;

interface HubGroup {
  listeners: Set<Listener>;
  unsub: Promise<() => Promise<void>>;
  events: Uint8Array[];
  seqs: number[];
  /** When the first event of the batch being gathered arrived (performance.now() ms). */
  since: number;
  timer: ReturnType<typeof setTimeout> | undefined;
}

/**
 * One node subscription per group, shared by that group's streams. Live events are gathered for
 * {@linkcode STREAM_COALESCE_MS} and handed out as one {@linkcode LiveBatch}, so a thousand streams cost a
 * thousand writes per batch, not per event.
 */
export class StreamHub {
  #groups = new Map<string, HubGroup>();
  /** Streams open now. */
  open = 0;

  constructor(private readonly node: NodeCore) {}

  /** Listen to a group's indexed events; resolves once the subscription is in place. */
  async join(gid: string, l: Listener): Promise<() => void> {
    let g = this.#groups.get(gid);
    if (!g) {
      const fresh: HubGroup = {
        listeners: new Set(),
        unsub: null!,
        events: [],
        seqs: [],
        since: 0,
        timer: undefined,
      };
      fresh.unsub = this.node.subscribe({ gid }, (events, seqs) => {
        if (!fresh.events.length) fresh.since = performance.now();
        fresh.events.push(...events);
        fresh.seqs.push(...seqs);
        if (fresh.events.length >= STREAM_BATCH_EVENTS_MAX) this.#flush(fresh);
        else fresh.timer ??= setTimeout(() => this.#flush(fresh), STREAM_COALESCE_MS);
      });
      g = fresh;
      this.#groups.set(gid, g);
      g.unsub.catch(() => this.#groups.get(gid) === fresh && this.#groups.delete(gid));
    }
    g.listeners.add(l);
    await g.unsub;
    const mine = g;
    return () => {
      mine.listeners.delete(l);
      if (mine.listeners.size === 0 && this.#groups.get(gid) === mine) {
        this.#groups.delete(gid);
        clearTimeout(mine.timer);
        mine.unsub.then((u) => u()).catch(() => {});
      }
    };
  }

  #flush(g: HubGroup): void {
    clearTimeout(g.timer);
    g.timer = undefined;
    if (!g.events.length) return;
    const batch = new LiveBatch(g.events, g.seqs, g.since);
    g.events = [];
    g.seqs = [];
    for (const l of g.listeners) l(batch);
  }
}

/** Options of {@linkcode runStream}. */
export interface StreamOptions {
  node: NodeCore;
  hub: StreamHub;
  gid: string;
  query: StreamQuery;
  /** The reader's key (hex, "" for none): checked again when the group's membership changes. */
  reader: string;
  /** When the reader's token expires (ms since the epoch), if it has one. */
  expires?: number;
  /** Aborted when the client goes away. */
  signal?: AbortSignal;
}

/**
 * Run one stream into `sink` until it ends; resolves when it has. The caller
 * has checked that the reader may read the group.
 */
export async function runStream(o: StreamOptions, sink: StreamSink): Promise<void> {
  const { node, gid, query } = o;
  const l = node.limits;
  let done = false;
  let resolveDone!: () => void;
  const finished = new Promise<void>((r) => resolveDone = r);
  const timers: ReturnType<typeof setTimeout>[] = [];
  let leave: (() => void) | null = null;
  const end = (code?: ErrorCode, message?: string) => {
    if (done) return;
    done = true;
    for (const t of timers) clearTimeout(t);
    clearInterval(heartbeat);
    leave?.();
    if (code) sink.error(code, message ?? code);
    sink.close();
    resolveDone();
  };
  const heartbeat = setInterval(() => !done && sink.heartbeat(), l.stream_heartbeat_ms);
  if (o.signal?.aborted) end();
  o.signal?.addEventListener("abort", () => end());
  if (o.expires !== undefined) {
    timers.push(setTimeout(
      () => end("UNAUTHORIZED", "The stream's token expired: fetch a new one and resume by cursor"),
      Math.max(0, o.expires - Date.now()),
    ));
  }
  const matches = (b: Uint8Array): boolean => {
    if (!query.kinds.length && !query.authors.length) return true;
    if (query.kinds.length && !query.kinds.includes(peekEvent(b)?.kind ?? -1)) return false;
    if (query.authors.length && !query.authors.includes(toHex(b.subarray(38, 70)))) return false;
    return true;
  };
  const lagging = () => {
    if (sink.lag() > l.stream_lag_bytes_max) {
      end("PEER_TOO_SLOW", `The stream fell more than ${l.stream_lag_bytes_max} bytes behind: resume by cursor`);
      return true;
    }
    return false;
  };
  /**
   * The backfill waits for the client instead of racing ahead: past half the lag bound it pauses until the
   * client has read down to a quarter; one that reads nothing for STREAM_STALL_MS is cut.
   */
  const paced = async () => {
    if (sink.lag() <= l.stream_lag_bytes_max / 2) return;
    let last = sink.lag(), since = Date.now();
    while (!done && sink.lag() > l.stream_lag_bytes_max / 4) {
      await new Promise((r) => setTimeout(r, 10));
      const now = sink.lag();
      if (now < last) since = Date.now();
      last = now;
      if (Date.now() - since > STREAM_STALL_MS) {
        return end("PEER_TOO_SLOW", `The client read nothing of the backfill for ${STREAM_STALL_MS} ms`);
      }
    }
  };
  // Live events wait here while the backfill runs (bounded like the stream itself).
  let pending: { bytes: Uint8Array; seq: number }[] | null = [];
  let pendingBytes = 0;
  let sent = 0; // arrival seq of the last live or resumed event sent
  let checking = false;
  const recheck = () => {
    if (checking) return;
    checking = true;
    node.access(gid, o.reader).then((a) => {
      checking = false;
      if (!a.readable) end("UNKNOWN_GROUP", `Group "${gid}" is not known to this node`);
    }, () => checking = false);
  };
  const filtered = query.kinds.length > 0 || query.authors.length > 0;
  /** A live batch was written to this stream: time since the hub received it (`xf_stream_delivery_seconds`). */
  const delivered = (batch: LiveBatch) =>
    node.streamDeliverySeconds.observe((performance.now() - batch.received) / 1000);
  const live = (batch: LiveBatch) => {
    if (done) return;
    if (batch.engine) recheck(); // manifest or membership: may the reader still read?
    const { events, seqs } = batch;
    if (!pending && !filtered && seqs[0]! > sent && sink.chunk) {
      // The common case: every event, all new to this stream: the batch's shared SSE chunk.
      sent = seqs.at(-1)!;
      sink.chunk(batch.sse());
      delivered(batch);
      lagging();
      return;
    }
    let wrote = false;
    for (let i = 0; i < events.length; i++) {
      const b = events[i]!, seq = seqs[i]!;
      if (!matches(b)) continue;
      if (pending) {
        pending.push({ bytes: b, seq });
        pendingBytes += b.length;
        if (pendingBytes > l.stream_lag_bytes_max) {
          return end("PEER_TOO_SLOW", `More than ${l.stream_lag_bytes_max} bytes arrived during the backfill`);
        }
      } else if (seq > sent) {
        sent = seq;
        sink.event(b, arrivalCursor(seq));
        wrote = true;
        if (lagging()) return;
      }
    }
    if (wrote) delivered(batch);
  };
  try {
    leave = await o.hub.join(gid, live);
    if (done) return leave();
    const c = query.cursor;
    if (c?.kind === "arrival") {
      // Resume in arrival order: everything indexed after the cursor.
      let after = c.seq;
      for (;;) {
        const page = await node.arrivals({
          gid,
          after,
          limit: STREAM_PAGE_EVENTS,
          kinds: query.kinds,
          authors: query.authors,
        });
        if (done) return;
        if (!page) return end("UNKNOWN_GROUP", `Group "${gid}" is not known to this node`);
        for (let i = 0; i < page.events.length && !done; i++) {
          sink.event(page.events[i]!, arrivalCursor(page.seqs[i]!));
          await paced();
        }
        after = page.last;
        if (done || !page.more) break;
      }
      sent = after;
    } else {
      // A fresh stream (or one resumed inside its backfill): (ts, id) order up to the snapshot.
      const snapshot = c?.kind === "time" ? c.snapshot : await node.lastArrival(gid);
      let cursor: string | undefined = c?.kind === "time" ? seqHex(c.ts) + c.id : undefined;
      for (;;) {
        const page = await node.query({
          gid,
          limit: STREAM_PAGE_EVENTS,
          kinds: query.kinds,
          authors: query.authors,
          maxSeq: snapshot,
          ...(query.since !== undefined && !cursor ? { since: query.since } : {}),
          ...(cursor ? { cursor } : {}),
        });
        if (done) return;
        if (!page) return end("UNKNOWN_GROUP", `Group "${gid}" is not known to this node`);
        for (const b of page.events) {
          if (done) break;
          const e = decodeEvent(b, { ...l, event_bytes_max: b.length });
          sink.event(b, timeCursor(e.ts, toHex(e.id), snapshot));
          await paced();
        }
        if (done || !page.cursor) break;
        cursor = page.cursor;
      }
      // Resumed inside an old snapshot: what was indexed after it comes from the arrival index.
      let after = snapshot;
      if (c?.kind === "time") {
        for (;;) {
          const page = await node.arrivals({
            gid,
            after,
            limit: STREAM_PAGE_EVENTS,
            kinds: query.kinds,
            authors: query.authors,
          });
          if (done || !page) break;
          for (let i = 0; i < page.events.length && !done; i++) {
            sink.event(page.events[i]!, arrivalCursor(page.seqs[i]!));
            await paced();
          }
          after = page.last;
          if (done || !page.more) break;
        }
      }
      sent = after;
    }
    if (done) return;
    sink.ready(arrivalCursor(sent));
    // What arrived during the backfill and was not in it, in arrival order.
    const waiting = pending!;
    pending = null;
    waiting.sort((a, b) => a.seq - b.seq);
    for (const p of waiting) {
      if (p.seq <= sent) continue;
      sent = p.seq;
      sink.event(p.bytes, arrivalCursor(p.seq));
      if (lagging()) break;
    }
  } catch (e) {
    const w = toWire(e);
    end(w.code, w.message);
  }
  return await finished;
}

const te = new TextEncoder();

/** One event's SSE record. */
export function sseRecord(bytes: Uint8Array, cursor: string): Uint8Array {
  return te.encode(`event: event\nid: ${cursor}\ndata: ${JSON.stringify(eventJson(bytes))}\n\n`);
}

/**
 * An SSE sink over a byte stream: `event: event`, `event: ready`, `event: error`, `: hb`. Its lag is the bytes
 * queued in the body that the client has not read; `onCancel` runs when the client goes away.
 */
export function sseSink(onCancel: () => void): { sink: StreamSink; body: ReadableStream<Uint8Array> } {
  let ctrl!: ReadableStreamDefaultController<Uint8Array>;
  let closed = false;
  const body = new ReadableStream<Uint8Array>({
    start(c) {
      ctrl = c;
    },
    cancel() {
      closed = true;
      onCancel();
    },
  }, { highWaterMark: 0, size: (c) => c.byteLength });
  // Records written in one turn of the event loop go out as one chunk.
  let parts: Uint8Array[] = [];
  const flush = () => {
    if (closed || !parts.length) return void (parts = []);
    const n = parts.reduce((a, p) => a + p.length, 0);
    const out = parts.length === 1 ? parts[0]! : new Uint8Array(n);
    if (parts.length > 1) {
      let o = 0;
      for (const p of parts) out.set(p, o), o += p.length;
    }
    parts = [];
    ctrl.enqueue(out);
  };
  const putBytes = (b: Uint8Array) => {
    if (closed) return;
    if (!parts.length) queueMicrotask(flush);
    parts.push(b);
  };
  const put = (s: string) => putBytes(te.encode(s));
  const sink: StreamSink = {
    event: (bytes, cursor) => putBytes(sseRecord(bytes, cursor)),
    chunk: (records) => {
      // Shared with the group's other streams: enqueued as it is, never copied or changed.
      flush();
      if (!closed) ctrl.enqueue(records);
    },
    ready: (cursor) => put(`event: ready\ndata: ${JSON.stringify({ cursor })}\n\n`),
    heartbeat: () => put(`: hb\n\n`),
    error: (code, message) => put(`event: error\ndata: ${JSON.stringify({ error: code, message })}\n\n`),
    lag: () => (closed ? 0 : Math.max(0, -(ctrl.desiredSize ?? 0))),
    close: () => {
      if (closed) return;
      flush();
      closed = true;
      try {
        ctrl.close();
      } catch { /* cancelled */ }
    },
  };
  return { sink, body };
}

/** The hex of a gid, or null. */
export function gidOf(s: string): string | null {
  return /^[0-9a-f]{64}$/.test(s) && fromHex(s) ? s : null;
}
