/**
 * Live subscriptions to a group's stream (`GET /v1/groups/:gid/stream`),
 * over SSE (a `fetch` reader, so it can send `Authorization`) or WebSocket:
 * backfill, `ready`, then live events; on a dropped connection it
 * reconnects with backoff and resumes after the last event it delivered
 * (`Last-Event-ID` for SSE, `cursor=` for WebSocket). Ids delivered are
 * remembered in a bounded window, so an event sent again after a resume is
 * not delivered twice.
 *
 * @module
 */

import { toHex } from "../core/bytes.ts";
import { ERROR_STATUS, type ErrorCode } from "../core/errors.ts";
import { asClientError, type ClientErrorCode, XfClientError } from "./errors.ts";
import { type ClientEvent, eventFromJson, type EventJson, readEvent } from "./event.ts";
import { readSse } from "./sse.ts";
import { eventId } from "../storage/event.ts";

/** How a subscription talks to the node. */
export type Transport = "sse" | "ws";

/** A per-event answer to a publish. */
export interface PublishResult {
  status: "stored" | "duplicate" | "rejected";
  /** The event id, hex. */
  id: string;
  /** For `rejected`: the node's stable code. */
  code?: ErrorCode;
  message?: string;
}

/** Options of a subscription. */
export interface SubscribeOptions {
  /** Default `"sse"`. */
  transport?: Transport;
  /** Only events with `ts ≥ since` (ms), when starting without a cursor. */
  since?: number;
  /** Only these kinds. */
  kind?: number[];
  /** Only these authors (hex public keys). */
  author?: string[];
  /** Start after this cursor (80 hex), e.g. the `cursor` of a previous subscription. */
  cursor?: string;
  /** Called for each event, in order; the next waits for the promise it returns. A throw closes the subscription. */
  onEvent: (event: ClientEvent) => void | Promise<void>;
  /** Called once the backfill of each connection is sent. */
  onReady?: (cursor: string | null) => void;
  /** Called for each error; the subscription reconnects unless the error is final (then `closed` resolves to it). */
  onError?: (error: XfClientError) => void;
  /** First reconnection delay (default 250 ms); it doubles up to `reconnectMaxMs` (default 30 s). */
  reconnectMinMs?: number;
  reconnectMaxMs?: number;
  /** Event ids remembered against duplicates across reconnects (default 10,000). */
  dedupeMax?: number;
  /** SSE: a connection silent this long (the node sends a heartbeat at least every 15 s) is dropped and redialled. Default 45 s. */
  idleMs?: number;
  /** Verify each event's signature (ids are always checked). Default: the client's `verify`. */
  verify?: boolean;
  /** Aborting closes the subscription. */
  signal?: AbortSignal;
}

/** A running subscription. */
export interface Subscription {
  /** Cursor of the last event delivered (where a reconnect resumes); null before the first. */
  readonly cursor: string | null;
  /** Resolves once the first `ready` arrives (or the subscription closes first). */
  readonly ready: Promise<void>;
  /** Resolves when the subscription ends: null after `close()`, else the final error. */
  readonly closed: Promise<Error | null>;
  /**
   * Publish an event: over the WebSocket when it is open (answered per frame, in order), else over HTTP.
   */
  publish(event: Uint8Array | { bytes: Uint8Array }): Promise<PublishResult>;
  /** Stop, and close the connection. */
  close(): void;
}

/** What a subscription needs from its client (internal). */
export interface StreamHost {
  baseUrl: string;
  fetch: typeof fetch;
  WebSocket: typeof WebSocket;
  hasKey: boolean;
  verify: boolean;
  timeoutMs: number;
  /** A valid token (null without a key); `refresh` forces a new one. */
  token(refresh: boolean): Promise<string | null>;
  publish(gid: string, event: Uint8Array): Promise<PublishResult>;
  errorOf(status: number, body: Uint8Array): XfClientError;
}

/** Codes after which reconnecting cannot help. */
const FINAL = new Set<ClientErrorCode>(["BAD_QUERY", "BAD_GROUP_ID", "NOT_FOUND", "FORBIDDEN", "UNKNOWN_GROUP"]);

function statusFor(code: string): number {
  return (ERROR_STATUS as Record<string, number>)[code] ?? 0;
}

/** Start a subscription (use `XfClient.subscribe`). */
export function startSubscription(host: StreamHost, gid: string, options: SubscribeOptions): Subscription {
  const transport = options.transport ?? "sse";
  const minMs = options.reconnectMinMs ?? 250, maxMs = options.reconnectMaxMs ?? 30_000;
  const dedupeMax = options.dedupeMax ?? 10_000;
  const idleMs = options.idleMs ?? 45_000;
  const verify = options.verify ?? host.verify;
  const seen = new Map<string, true>();
  let cursor: string | null = options.cursor ?? null;
  let stopped = false;
  let stopConn: (() => void) | null = null;
  let ws: WebSocket | null = null;
  const pending: Array<{ id: string; resolve: (r: PublishResult) => void; reject: (e: Error) => void }> = [];
  let markReady!: () => void;
  const ready = new Promise<void>((r) => (markReady = r));
  let finish!: (e: Error | null) => void;
  const closed = new Promise<Error | null>((r) => (finish = r));
  let wake: (() => void) | null = null;
  /** Whether the current connection got a `ready` (then the backoff starts over). */
  let progressed = false;

  const params = (extra: Record<string, string>) => {
    const p = new URLSearchParams();
    if (cursor === null && options.since !== undefined) p.set("since", String(options.since));
    for (const k of options.kind ?? []) p.append("kind", String(k));
    for (const a of options.author ?? []) p.append("author", a);
    for (const [k, v] of Object.entries(extra)) p.set(k, v);
    const s = p.toString();
    return s ? `?${s}` : "";
  };

  /** Stream cursors are the node's opaque positions (`a…` arrival order, `t….…` inside a backfill). */
  const isCursor = (c: unknown): c is string => typeof c === "string" && /^[0-9a-z.]{1,200}$/.test(c);

  async function deliver(ev: ClientEvent, at?: string): Promise<void> {
    if (stopped) return;
    // The node's cursor for this event (SSE `id:`), when it gave one: the position to resume after.
    if (isCursor(at)) ev.cursor = at;
    if (!seen.has(ev.id)) {
      await options.onEvent(ev);
      seen.set(ev.id, true);
      if (seen.size > dedupeMax) seen.delete(seen.keys().next().value!);
    }
    if (isCursor(at)) cursor = at;
  }

  function onReady(c: unknown) {
    if (isCursor(c)) cursor = c;
    progressed = true;
    options.onReady?.(cursor);
    markReady();
  }

  /** Thrown by the app's onEvent: ends the subscription with it. */
  class AppError {
    constructor(readonly error: unknown) {}
  }
  const deliverGuarded = async (ev: ClientEvent, at?: string) => {
    try {
      await deliver(ev, at);
    } catch (e) {
      throw new AppError(e);
    }
  };

  async function sse(refresh: boolean): Promise<void> {
    const token = host.hasKey ? await host.token(refresh) : null;
    const ctl = new AbortController();
    stopConn = () => ctl.abort();
    let idle = setTimeout(() => ctl.abort(), host.timeoutMs);
    const headers: Record<string, string> = { accept: "text/event-stream" };
    if (token) headers.authorization = `Bearer ${token}`;
    if (cursor) headers["last-event-id"] = cursor;
    const url = `${host.baseUrl}/v1/groups/${gid}/stream${params({})}`;
    try {
      let res: Response;
      try {
        res = await host.fetch(url, { headers, signal: ctl.signal });
      } catch (e) {
        throw new XfClientError("NETWORK", `Cannot open stream ${url}: ${(e as Error).message}`, 0, { cause: e });
      }
      if (!res.ok || !res.body) throw host.errorOf(res.status, new Uint8Array(await res.arrayBuffer()));
      if (!(res.headers.get("content-type") ?? "").includes("text/event-stream")) {
        await res.body.cancel();
        throw new XfClientError("BAD_RESPONSE", `Cannot read stream: content type is not text/event-stream`);
      }
      const activity = () => {
        clearTimeout(idle);
        idle = setTimeout(() => ctl.abort(), idleMs);
      };
      activity();
      try {
        for await (const m of readSse(res.body, activity)) {
          if (m.event === "event") {
            await deliverGuarded(
              await eventFromJson(JSON.parse(m.data) as EventJson, { group: gid, verify }),
              m.lastEventId,
            );
          } else if (m.event === "ready") {
            onReady((JSON.parse(m.data) as { cursor?: unknown }).cursor);
          } else if (m.event === "error") {
            const d = JSON.parse(m.data) as { error?: string; message?: string };
            const code = String(d.error ?? "BAD_RESPONSE") as ClientErrorCode;
            throw new XfClientError(code, String(d.message ?? "stream error"), statusFor(code));
          }
        }
      } catch (e) {
        if (e instanceof AppError || e instanceof XfClientError) throw e;
        if (stopped) return;
        if (e instanceof SyntaxError) throw new XfClientError("BAD_RESPONSE", `Cannot read stream: ${e.message}`);
        throw new XfClientError("NETWORK", `Stream ${url} broke: ${(e as Error).message}`, 0, { cause: e });
      }
    } finally {
      clearTimeout(idle);
      stopConn = null;
    }
  }

  async function wsOnce(refresh: boolean): Promise<void> {
    const token = host.hasKey ? await host.token(refresh) : null;
    const extra: Record<string, string> = {};
    if (token) extra.token = token;
    if (cursor) extra.cursor = cursor;
    const url = `${host.baseUrl.replace(/^http/, "ws")}/v1/groups/${gid}/stream${params(extra)}`;
    const sock = new host.WebSocket(url);
    sock.binaryType = "arraybuffer";
    let opened = false;
    let failure: unknown = null;
    let chain = Promise.resolve();
    const fail = (e: unknown) => {
      failure ??= e;
      if (sock.readyState <= 1) sock.close(1000, "client closing");
    };
    stopConn = () => sock.close(1000, "client closing");
    await new Promise<void>((resolve) => {
      sock.onopen = () => {
        opened = true;
        ws = sock;
      };
      sock.onmessage = (m) => {
        if (m.data instanceof ArrayBuffer) {
          const bytes = new Uint8Array(m.data);
          chain = chain.then(async () => {
            if (failure) return;
            await deliverGuarded(await readEvent(bytes, { group: gid, verify }));
          }).catch(fail);
          return;
        }
        let d: Record<string, unknown>;
        try {
          d = JSON.parse(String(m.data));
        } catch {
          return fail(new XfClientError("BAD_RESPONSE", "Cannot read stream frame: not JSON"));
        }
        if (d.type === "ready") chain = chain.then(() => onReady(d.cursor));
        else if (d.type === "cursor") {
          // After a burst of binary frames: where to resume once they are delivered.
          chain = chain.then(() => {
            if (isCursor(d.cursor)) cursor = d.cursor;
          });
        } else if (d.type === "result") {
          const p = pending.shift();
          const r: PublishResult = { status: d.status as PublishResult["status"], id: String(d.id ?? p?.id ?? "") };
          if (typeof d.code === "string") r.code = d.code as ErrorCode;
          if (typeof d.message === "string") r.message = d.message;
          p?.resolve(r);
        } else if (d.type === "error") {
          const code = String(d.error ?? "BAD_RESPONSE") as ClientErrorCode;
          fail(new XfClientError(code, String(d.message ?? "stream error"), statusFor(code)));
        }
      };
      sock.onerror = () => {
        failure ??= new XfClientError(
          "NETWORK",
          `Cannot keep stream ${url.replace(/token=[0-9a-f]+/, "token=…")} open`,
        );
      };
      sock.onclose = () => resolve();
    });
    ws = null;
    stopConn = null;
    for (const p of pending.splice(0)) p.reject(new XfClientError("NETWORK", "Stream closed before the node answered"));
    await chain;
    if (failure) throw failure;
    if (!opened && !stopped) throw new XfClientError("NETWORK", "Cannot open stream: the WebSocket did not open");
  }

  async function run(): Promise<void> {
    let attempt = 0;
    let refresh = false, refreshed = false;
    while (!stopped) {
      progressed = false;
      try {
        await (transport === "ws" ? wsOnce(refresh) : sse(refresh));
        refresh = false;
      } catch (e) {
        if (e instanceof AppError) return finish(e.error instanceof Error ? e.error : new Error(String(e.error)));
        if (stopped) break;
        const err = asClientError(e, "NETWORK", "Stream failed");
        options.onError?.(err);
        const authish = err.status === 401 || err.code === "UNKNOWN_GROUP" || err.code === "NOT_FOUND";
        if (host.hasKey && authish && !refreshed) {
          refresh = refreshed = true;
          continue;
        }
        if (FINAL.has(err.code)) return finish(err);
        refresh = err.status === 401;
      }
      if (progressed) attempt = 0, refreshed = false;
      if (stopped) break;
      const delay = Math.min(maxMs, minMs * 2 ** attempt) * (0.5 + Math.random() / 2);
      attempt++;
      await new Promise<void>((r) => {
        const t = setTimeout(r, delay);
        wake = () => (clearTimeout(t), r());
      });
      wake = null;
    }
    finish(null);
  }

  const abort = () => sub.close();
  options.signal?.addEventListener("abort", abort, { once: true });
  const sub: Subscription = {
    get cursor() {
      return cursor;
    },
    ready,
    closed,
    publish(event) {
      const bytes = event instanceof Uint8Array ? event : event.bytes;
      const sock = ws;
      if (!sock || sock.readyState !== 1) return host.publish(gid, bytes);
      return new Promise((resolve, reject) => {
        pending.push({ id: toHex(eventId(bytes)), resolve, reject });
        sock.send(bytes as Uint8Array<ArrayBuffer>);
      });
    },
    close() {
      if (stopped) return;
      stopped = true;
      options.signal?.removeEventListener("abort", abort);
      stopConn?.();
      wake?.();
      markReady();
    },
  };
  run().catch((e) => finish(e instanceof Error ? e : new Error(String(e)))).finally(() => markReady());
  return sub;
}
