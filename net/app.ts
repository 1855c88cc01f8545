/**
 * The HTTP surface (Hono), runtime-independent: routes chained so their
 * types flow, one `onError` that turns every {@linkcode XfError} into JSON
 * `{ error: CODE, message }` with its status. Tested in-process with
 * `app.request()`; `server.ts` binds it to a socket.
 *
 * @module
 */

import { fromHex, toHex } from "../core/bytes.ts";
import { type Context, Hono } from "@hono/hono";
import type { NodeCore } from "./node_api.ts";
import type { NodeSync } from "./peers.ts";
import type { DhtService } from "./dht/service.ts";
import type { EventResult } from "../actors/batch.ts";
import { statusOf, toWire, XfError } from "../core/errors.ts";
import { encodeCbor } from "../storage/cbor.ts";
import { eventJson } from "../storage/event.ts";
import { upgradeWebSocket } from "@hono/hono/deno";
import { cors } from "@hono/hono/cors";
import type { GroupInfoView } from "../actors/index.ts";
import { parseStreamQuery, runStream, sseSink, StreamHub, type StreamOptions, type StreamSink } from "./stream.ts";
import type { WSContext, WSEvents } from "@hono/hono/ws";
import { checkRange, type FrameChannel, type SyncOptions } from "./sync.ts";
import { CBOR_SEQ, exportStream } from "./export.ts";
import { TOKEN_REQUEST_BYTES_MAX } from "../core/limits.ts";

/** The node as the HTTP app sees it: the calls `net/` makes of a node, its peer sync and its DHT. */
export type AppNode = NodeCore & { readonly sync: NodeSync; readonly dht: DhtService };

/** A WebSocket route whose binary frames feed a {@linkcode FrameChannel} handed to `accept` on open. */
function frameRoute(remoteAddr: (c: Context) => string, accept: (ch: FrameChannel, addr: string) => void) {
  return upgradeWebSocket((c) => {
    let ch: FrameChannel | null = null;
    // Read the address now: once upgraded the request is closed. The socket's, never a header's.
    const addr = remoteAddr(c);
    return {
      onOpen(_ev, ws) {
        ch = wsChannel(ws);
        accept(ch, addr);
      },
      onMessage(ev) {
        const d = ev.data;
        ch?.onFrame?.(d instanceof ArrayBuffer ? new Uint8Array(d) : d instanceof Uint8Array ? d : new Uint8Array(0));
      },
      onClose(ev) {
        ch?.onClose?.((ev as CloseEvent).reason || "closed");
      },
    };
  });
}

/** A Hono WebSocket context as a {@linkcode FrameChannel} (frames arrive through the route's onMessage). */
function wsChannel(ws: WSContext): FrameChannel {
  (ws.raw as WebSocket | undefined)?.binaryType !== undefined && ((ws.raw as WebSocket).binaryType = "arraybuffer");
  return {
    send: (f) => {
      if (ws.readyState === 1) ws.send(f as Uint8Array<ArrayBuffer>);
    },
    close: (reason, code = 1000) => ws.close(code, reason.slice(0, 120)),
    onFrame: null,
    onClose: null,
    buffered: () => (ws.raw as WebSocket | undefined)?.bufferedAmount ?? 0,
  };
}

/** The dashboard page (`GET /`, `net/dashboard.html`), read once on first use (a file or a URL beside this one). */
let dashboardPage: Promise<string> | null = null;
function dashboard(): Promise<string> {
  return dashboardPage ??= fetch(new URL("./dashboard.html", import.meta.url)).then((r) => {
    if (!r.ok) throw new XfError("INTERNAL", `Cannot read the dashboard page: HTTP ${r.status}`);
    return r.text();
  }).catch((e) => {
    dashboardPage = null;
    throw e instanceof XfError ? e : new XfError("INTERNAL", `Cannot read the dashboard page: ${(e as Error).message}`);
  });
}

/** Media type of CBOR bodies. */
export const CBOR = "application/cbor";

function hexParam(value: string, code: "BAD_GROUP_ID" | "BAD_EVENT_ID", what: string): Uint8Array {
  const b = /^[0-9a-f]{64}$/.test(value) ? fromHex(value) : null;
  if (!b) throw new XfError(code, `Cannot use ${what} "${value.slice(0, 80)}": expected 64 lower-case hex digits`);
  return b;
}

async function readBody(req: Request, max: number): Promise<Uint8Array> {
  const declared = Number(req.headers.get("content-length") ?? "NaN");
  if (declared > max) {
    throw new XfError("BODY_TOO_LARGE", `Cannot accept body of ${declared} bytes: the limit is ${max}`);
  }
  if (!req.body) return new Uint8Array(0);
  const chunks: Uint8Array[] = [];
  let n = 0;
  const reader = req.body.getReader();
  while (true) {
    const { done, value } = await reader.read();
    if (done) break;
    n += value.length;
    if (n > max) {
      await reader.cancel();
      throw new XfError("BODY_TOO_LARGE", `Cannot accept body of more than ${max} bytes`);
    }
    chunks.push(value);
  }
  const out = new Uint8Array(n);
  let o = 0;
  for (const c of chunks) {
    out.set(c, o);
    o += c.length;
  }
  return out;
}

function intParam(v: string | undefined, name: string): number | undefined {
  if (v === undefined || v === "") return undefined;
  if (!/^\d{1,16}$/.test(v)) throw new XfError("BAD_QUERY", `Cannot use ${name} "${v}": not a non-negative integer`);
  return Number(v);
}

/** JSON view of an event, for people (the query route, SSE records). */
export { eventJson };

function wantsCbor(accept: string | undefined): boolean {
  return !!accept && accept.toLowerCase().includes(CBOR);
}

/** The media type of a `Content-Type` value: lower case, without parameters. */
function mediaType(header: string): string {
  return header.split(";", 1)[0]!.trim().toLowerCase();
}

/** A JSON object body; anything else (not JSON, `null`, an array, a number, a string) is `BAD_QUERY`. */
function jsonObject(body: Uint8Array, what: string): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(new TextDecoder().decode(body));
  } catch {
    v = undefined;
  }
  if (typeof v !== "object" || v === null || Array.isArray(v)) {
    throw new XfError("BAD_QUERY", `Cannot read ${what}: body is not a JSON object`);
  }
  return v as Record<string, unknown>;
}

/** Whether a socket address is on loopback (127.0.0.0/8, `::1`, or 127.x mapped into IPv6). */
export function isLoopback(addr: string): boolean {
  return /^(::ffff:)?127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/i.test(addr) || addr === "::1";
}

/** Equal strings, compared in time that depends only on `secret`'s length. */
function sameSecret(given: string, secret: string): boolean {
  const a = new TextEncoder().encode(given), b = new TextEncoder().encode(secret);
  let d = a.length ^ b.length;
  for (let i = 0; i < b.length; i++) d |= (a[i] ?? 0) ^ b[i]!;
  return d === 0;
}

/** The caller's socket address as Deno.serve reports it (Hono's `c.env`); "" when there is none. */
function socketAddr(c: Context): string {
  const info = c.env as { remoteAddr?: { hostname?: unknown } } | undefined;
  const host = info?.remoteAddr?.hostname;
  return typeof host === "string" ? host : "";
}

/** Options of {@linkcode createApp}. */
export interface AppOptions {
  /**
   * The caller's address (default: the socket's, from Deno.serve's handler
   * info; "" in-process, which counts as remote). Headers such as
   * `X-Forwarded-For` are never read.
   */
  remoteAddr?: (c: Context) => string;
  /** A bearer token that opens operator routes (`/v1/sync/once`) to a remote caller; none by default. */
  operatorToken?: string;
  /** Origins CORS allows (`--cors-origin`); any origin when empty (auth is a bearer token, never a cookie). */
  corsOrigins?: string[];
}

/**
 * A stream over WebSocket: event bytes as binary frames, control records as JSON text frames
 * (`{type: "ready" | "cursor" | "result" | "error", …}`); binary frames from the client are events to
 * publish, each answered by a `result` in order.
 */
function wsStream(opts: Omit<StreamOptions, "hub"> & { hub: StreamOptions["hub"] }): WSEvents {
  const stop = new AbortController();
  let raw: WebSocket | undefined;
  let inbound = 0;
  let chain: Promise<void> = Promise.resolve();
  const node = opts.node;
  const text = (o: object) => raw?.readyState === 1 && raw.send(JSON.stringify(o));
  let sinkClose = () => {};
  return {
    onOpen(_ev, ws) {
      raw = ws.raw as WebSocket;
      raw.binaryType = "arraybuffer";
      let batchCursor: string | null = null;
      let flushQueued = false;
      const sink: StreamSink = {
        event(bytes, cursor) {
          if (raw?.readyState !== 1) return;
          raw.send(bytes as Uint8Array<ArrayBuffer>);
          // The resume cursor follows each burst of events (one text frame per burst, not per event).
          batchCursor = cursor;
          if (!flushQueued) {
            flushQueued = true;
            queueMicrotask(() => {
              flushQueued = false;
              if (batchCursor) text({ type: "cursor", cursor: batchCursor });
              batchCursor = null;
            });
          }
        },
        ready: (cursor) => text({ type: "ready", cursor }),
        heartbeat: () => text({ type: "hb" }),
        error: (code, message) => text({ type: "error", error: code, message }),
        lag: () => raw?.bufferedAmount ?? 0,
        close: () => sinkClose(),
      };
      sinkClose = () => {
        try {
          ws.close(1000, "stream ended");
        } catch { /* closed */ }
      };
      opts.hub.open++;
      runStream({ ...opts, signal: stop.signal }, sink).finally(() => opts.hub.open--);
    },
    onMessage(ev, ws) {
      const d = ev.data;
      if (!(d instanceof ArrayBuffer)) {
        text({ type: "error", error: "BAD_FRAME", message: "Send events as binary frames" });
        return ws.close(1003, "BAD_FRAME");
      }
      inbound += d.byteLength;
      if (inbound > node.limits.http_body_bytes_max) {
        text({ type: "error", error: "RATE_LIMITED", message: "Too many bytes published and not yet answered" });
        return ws.close(1008, "RATE_LIMITED");
      }
      const bytes = new Uint8Array(d);
      chain = chain.then(async () => {
        let r: EventResult;
        try {
          [r] = (await node.submit(fromHex(opts.gid)!, bytes)) as [EventResult];
        } catch (e) {
          const w = toWire(e);
          r = { req: 0, idx: 0, status: "rejected", code: w.code, message: w.message };
        }
        inbound -= bytes.length;
        text({
          type: "result",
          status: r.status,
          ...(r.id ? { id: r.id } : {}),
          ...(r.code ? { code: r.code, message: r.message } : {}),
        });
      });
    },
    onClose() {
      stop.abort();
    },
  };
}

/**
 * Build the app for a node.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { openNode } from "../node.ts";
 * import { createApp } from "./app.ts";
 * const dir = await Deno.makeTempDir();
 * const node = await openNode({ dataDir: dir, workers: false });
 * const app = createApp(node, { operatorToken: "a long random secret" });
 * assert((await app.request("/health")).status === 200);
 * await node.close();
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export function createApp(node: AppNode, options: AppOptions = {}) {
  const remoteAddr = options.remoteAddr ?? socketAddr;
  const operatorToken = options.operatorToken ?? "";
  /** Throws FORBIDDEN unless the caller is on loopback or presents the operator token. */
  const mustBeOperator = (c: Context) => {
    if (isLoopback(remoteAddr(c))) return;
    const m = /^Bearer (.+)$/.exec(c.req.header("authorization") ?? "");
    if (operatorToken && m && sameSecret(m[1]!, operatorToken)) return;
    throw new XfError("FORBIDDEN", "Cannot run a sync for this caller: only the node's operator may");
  };
  const unknownGroup = (gid: Uint8Array) =>
    new XfError("UNKNOWN_GROUP", `Group "${toHex(gid)}" is not known to this node`);
  /** The key behind the request's bearer token, as hex ("" for none). */
  const readerOf = (auth: string | undefined): string => {
    const m = /^Bearer ([0-9a-f]{64})$/.exec(auth ?? "");
    const key = m ? node.sync.auth.tokenKey(m[1]!) : null;
    return key ? toHex(key) : "";
  };
  /** Throws UNKNOWN_GROUP unless the reader may see the group: a closed group looks absent to others. */
  const mustRead = async (gid: Uint8Array, auth: string | undefined) => {
    const a = await node.access(toHex(gid), readerOf(auth));
    if (!a.readable) throw unknownGroup(gid);
    return a;
  };
  const hub = new StreamHub(node);
  const corsOrigins = options.corsOrigins ?? [];
  /** The reader of a stream: `Authorization: Bearer` or `?token=` (EventSource cannot set headers). */
  const streamReader = (c: Context): { key: string; expires?: number } => {
    const m = /^Bearer ([0-9a-f]{64})$/.exec(c.req.header("authorization") ?? "");
    const token = m?.[1] ?? c.req.query("token") ?? "";
    const info = /^[0-9a-f]{64}$/.test(token) ? node.sync.auth.tokenInfo(token) : null;
    return info ? { key: toHex(info.key), expires: info.expires } : { key: "" };
  };
  const app = new Hono()
    .use(
      "*",
      cors({
        origin: corsOrigins.length ? corsOrigins : "*",
        allowMethods: ["GET", "POST", "OPTIONS"],
        allowHeaders: ["Authorization", "Content-Type", "Accept", "Last-Event-ID"],
        exposeHeaders: ["Retry-After"],
        maxAge: 600,
      }),
    )
    .get("/v1/groups", async (c) => {
      const gids = await node.pipeline.index<string[]>({ type: "index.listGroups" });
      const info = await node.pipeline.index<GroupInfoView[]>({
        type: "index.groupInfo",
        gids,
        key: readerOf(c.req.header("authorization")),
      });
      return c.json({
        groups: info.map((g) => ({ id: g.id, name: g.name, policy: g.policy, count: g.count, root: g.root })),
      });
    })
    .get("/v1/groups/:gid/members", async (c) => {
      const gid = hexParam(c.req.param("gid"), "BAD_GROUP_ID", "group id");
      const [g] = await node.pipeline.index<GroupInfoView[]>({
        type: "index.groupInfo",
        gids: [toHex(gid)],
        key: readerOf(c.req.header("authorization")),
      });
      if (!g) throw unknownGroup(gid);
      return c.json({ owner: g.owner, members: g.members });
    })
    .get("/v1/groups/:gid/stream", async (c, next) => {
      const gid = hexParam(c.req.param("gid"), "BAD_GROUP_ID", "group id");
      const query = parseStreamQuery({
        ...(c.req.query("since") !== undefined ? { since: c.req.query("since")! } : {}),
        ...(c.req.query("cursor") !== undefined ? { cursor: c.req.query("cursor")! } : {}),
        kinds: c.req.queries("kind") ?? [],
        authors: c.req.queries("author") ?? [],
      }, c.req.header("last-event-id"));
      const reader = streamReader(c);
      const a = await node.access(toHex(gid), reader.key);
      if (!a.readable) throw unknownGroup(gid);
      if (hub.open >= node.limits.streams_max) {
        throw new XfError("OVERLOADED", `Cannot open a stream: ${hub.open} are open (streams_max)`);
      }
      const opts = {
        node,
        hub,
        gid: toHex(gid),
        query,
        reader: reader.key,
        ...(reader.expires !== undefined ? { expires: reader.expires } : {}),
      };
      if ((c.req.header("upgrade") ?? "").toLowerCase() === "websocket") {
        return await upgradeWebSocket(() => wsStream(opts))(c, next) as Response;
      }
      const stop = new AbortController();
      const { sink, body } = sseSink(() => stop.abort());
      hub.open++;
      runStream({ ...opts, signal: stop.signal }, sink).finally(() => hub.open--);
      return new Response(body, {
        headers: {
          "content-type": "text/event-stream",
          "cache-control": "no-cache",
          "x-accel-buffering": "no",
        },
      });
    })
    .get("/", async (c) => {
      // The dashboard: a static page that reads /health, /metrics, /v1/groups and the peers routes as any
      // anonymous caller may (a token typed into it opens closed groups).
      return c.html(await dashboard(), 200, { "cache-control": "no-cache" });
    })
    .get("/health", (c) => {
      const h = node.health();
      return c.json(h, h.ready ? 200 : 503);
    })
    .get("/metrics", async (c) => {
      return c.text(await node.metrics(), 200, { "content-type": "text/plain; version=0.0.4" });
    })
    .post("/v1/groups/:gid/events", async (c) => {
      const gid = hexParam(c.req.param("gid"), "BAD_GROUP_ID", "group id");
      // Shed before reading the body: under overload a refused request costs neither memory nor parsing.
      if (node.pipeline.inflight() >= node.limits.pipeline_inflight_events_max) {
        node.pipeline.counters.overloaded++;
        throw new XfError("OVERLOADED", `Cannot accept more events now: ${node.pipeline.inflight()} in flight`);
      }
      const type = c.req.header("content-type") ?? CBOR;
      const media = mediaType(type);
      if (media !== CBOR && media !== "application/octet-stream") {
        throw new XfError("UNSUPPORTED_MEDIA_TYPE", `Cannot accept body of type "${type.slice(0, 100)}": send ${CBOR}`);
      }
      const body = await readBody(c.req.raw, node.limits.http_body_bytes_max);
      // One answer for "not yours" and "not here": the decode stage answers UNKNOWN_GROUP for the whole request
      // when the caller cannot see the group (a closed one without a member's token, or one the node does not
      // hold), whatever the body; only a group the node does not hold can be created, by its own manifest.
      // The write does not wait for the index.
      const single = body.length > 1 && body[0]! >> 5 === 4 && body[1]! >> 5 !== 4 && (body[0]! & 0x1f) !== 0;
      const results = await node.submit(gid, body, readerOf(c.req.header("authorization")));
      const view = (r: EventResult) => ({
        status: r.status,
        ...(r.id ? { id: r.id } : {}),
        ...(r.code ? { code: r.code, message: r.message } : {}),
      });
      if (single && results.length === 1) {
        const r = results[0]!;
        if (r.status === "rejected") throw new XfError((r.code ?? "INTERNAL") as never, r.message ?? "rejected");
        return c.json(view(r), r.status === "stored" ? 201 : 200);
      }
      if (wantsCbor(c.req.header("accept"))) {
        const arr = results.map((r) => {
          const m = new Map<string, string>([["status", r.status]]);
          if (r.id) m.set("id", r.id);
          if (r.code) m.set("code", r.code), m.set("message", r.message ?? "");
          return m;
        });
        return c.body(encodeCbor(arr), 200, { "content-type": CBOR });
      }
      return c.json({ results: results.map(view) });
    })
    .get("/v1/groups/:gid/events", async (c) => {
      const gid = hexParam(c.req.param("gid"), "BAD_GROUP_ID", "group id");
      const q = c.req.query();
      const cursor = q.cursor;
      if (cursor !== undefined && !/^[0-9a-f]{80}$/.test(cursor)) {
        throw new XfError("BAD_QUERY", `Cannot use cursor "${cursor.slice(0, 100)}": expected 80 hex digits`);
      }
      // A cursor's first 8 bytes are a time; past 2^53 - 1 no event has it (and it would wrap to 0 in the index).
      if (cursor !== undefined && BigInt(`0x${cursor.slice(0, 16)}`) > BigInt(Number.MAX_SAFE_INTEGER)) {
        throw new XfError("BAD_QUERY", `Cannot use cursor "${cursor}": its time is past ${Number.MAX_SAFE_INTEGER}`);
      }
      const kinds = c.req.queries("kind")?.map((k) => intParam(k, "kind")!) ?? [];
      const authors = c.req.queries("author") ?? [];
      for (const a of authors) hexParam(a, "BAD_QUERY" as never, "author");
      const limit = intParam(q.limit, "limit") ?? 100;
      if (limit < 1 || limit > node.limits.query_limit_max) {
        throw new XfError("BAD_QUERY", `Cannot use limit "${limit}": between 1 and ${node.limits.query_limit_max}`);
      }
      await mustRead(gid, c.req.header("authorization"));
      const since = intParam(q.since, "since");
      const until = intParam(q.until, "until");
      const page = await node.query({
        gid: toHex(gid),
        limit,
        kinds,
        authors,
        ...(since !== undefined ? { since } : {}),
        ...(until !== undefined ? { until } : {}),
        ...(cursor !== undefined ? { cursor } : {}),
      });
      if (!page) throw unknownGroup(gid);
      if (wantsCbor(c.req.header("accept"))) {
        const m = new Map<string, Uint8Array[] | string | null>([["events", page.events], ["cursor", page.cursor]]);
        return c.body(encodeCbor(m as never), 200, { "content-type": CBOR });
      }
      return c.json({ events: page.events.map(eventJson), cursor: page.cursor });
    })
    .get("/v1/events/:id", async (c) => {
      const id = hexParam(c.req.param("id"), "BAD_EVENT_ID", "event id");
      const bytes = await node.get(toHex(id));
      // An event of a closed group looks absent to non-members, after the same work: an absent event's
      // access check asks about a group the node does not hold (the event id stands in for a group id).
      const a = await node.access(toHex(bytes ? bytes.subarray(4, 36) : id), readerOf(c.req.header("authorization")));
      if (!bytes || !a.readable) throw new XfError("NOT_FOUND", `Event "${toHex(id)}" is not stored on this node`);
      if (c.req.header("accept")?.includes("application/json")) return c.json(eventJson(bytes));
      return c.body(bytes.slice(), 200, { "content-type": CBOR });
    })
    .get("/v1/groups/:gid/merkle", async (c) => {
      const gid = hexParam(c.req.param("gid"), "BAD_GROUP_ID", "group id");
      await mustRead(gid, c.req.header("authorization"));
      const info = await node.merkle(toHex(gid));
      if (!info) throw unknownGroup(gid);
      return c.json(info);
    })
    .get("/v1/groups/:gid/export", async (c) => {
      // The whole group as a CBOR sequence (net/export.ts), read page by page as the caller takes it.
      const gid = hexParam(c.req.param("gid"), "BAD_GROUP_ID", "group id");
      await mustRead(gid, c.req.header("authorization"));
      const body = await exportStream(node, toHex(gid));
      if (!body) throw unknownGroup(gid);
      return new Response(body, { headers: { "content-type": CBOR_SEQ, "cache-control": "no-store" } });
    })
    .get("/v1/groups/:gid/proof/:id", async (c) => {
      const gid = hexParam(c.req.param("gid"), "BAD_GROUP_ID", "group id");
      const id = hexParam(c.req.param("id"), "BAD_EVENT_ID", "event id");
      await mustRead(gid, c.req.header("authorization"));
      const proof = await node.proof(toHex(gid), toHex(id));
      if (proof === null) {
        if (!(await node.merkle(toHex(gid)))) {
          throw unknownGroup(gid);
        }
        throw new XfError("NOT_FOUND", `Event "${toHex(id)}" is not in group "${toHex(gid)}"`);
      }
      return c.body(proof.slice(), 200, { "content-type": CBOR });
    })
    .get("/v1/groups/:gid/peers", async (c) => {
      const gid = hexParam(c.req.param("gid"), "BAD_GROUP_ID", "group id");
      await mustRead(gid, c.req.header("authorization"));
      return c.json({ peers: node.sync.peersOf(toHex(gid)) });
    })
    .get("/v1/auth/challenge", (c) => {
      const { challenge, expires } = node.sync.auth.challenge(remoteAddr(c), {
        perAddrMax: node.limits.http_challenges_per_addr_max,
      });
      return c.json({ challenge: toHex(challenge), expires, node: toHex(node.key.publicKey) });
    })
    .post("/v1/auth/token", async (c) => {
      const req = jsonObject(await readBody(c.req.raw, TOKEN_REQUEST_BYTES_MAX), "token request {key, challenge, sig}");
      const hex = (v: unknown) => (typeof v === "string" ? fromHex(v) : null);
      const key = hex(req.key), challenge = hex(req.challenge), sig = hex(req.sig);
      if (!key || key.length !== 32 || !challenge || challenge.length !== 32 || !sig || sig.length !== 64) {
        throw new XfError(
          "BAD_QUERY",
          "Cannot read token request: key (64 hex), challenge (64 hex) and sig (128 hex) are needed",
        );
      }
      await node.sync.auth.check("http", challenge, key, sig);
      return c.json(node.sync.auth.token(key));
    })
    .post("/v1/sync/once", async (c) => {
      // One-shot sync with a peer (the CLI's `sync`): connect, reconcile, transfer, report. It makes the node
      // dial out, so only its operator may ask: on loopback, or with the operator token.
      mustBeOperator(c);
      const body = jsonObject(await readBody(c.req.raw, 64 * 1024), "sync request {peer, groups?, since?, until?}");
      const peer = String(body.peer ?? "");
      if (!/^wss?:\/\/[^\s]+$/.test(peer)) {
        throw new XfError("BAD_QUERY", `Cannot sync with "${peer}": expected ws://host:port`);
      }
      const groups = Array.isArray(body.groups) ? body.groups.map(String) : undefined;
      // Partial sync: only [since, until) of each group (ms since 1970); a bad range is BAD_QUERY.
      const range: SyncOptions = {
        ...(body.since !== undefined ? { since: body.since as number } : {}),
        ...(body.until !== undefined ? { until: body.until as number } : {}),
      };
      checkRange(range);
      const t0 = performance.now();
      const s = await node.sync.connect(peer, groups, range).catch((e) => {
        if (e instanceof XfError && e.message.startsWith("Cannot connect to")) {
          throw new XfError("PEER_UNREACHABLE", e.message, { cause: e });
        }
        throw e;
      });
      // The range each group was reconciled over, when not the whole group (`until` null: no end).
      const ranges: Record<string, { since: number; until: number | null }> = {};
      for (const [gid, r] of s.ranges()) {
        if (r.since > 0 || r.until !== Infinity) {
          ranges[gid] = { since: r.since, until: isFinite(r.until) ? r.until : null };
        }
      }
      const stats = {
        ...s.stats,
        ms: Math.round(performance.now() - t0),
        peer: s.peer,
        ...(Object.keys(ranges).length ? { ranges } : {}),
      };
      s.close("one-shot sync done");
      return c.json(stats);
    })
    // `remote` is the socket's host (for per-address limits), not a URL to dial back.
    .get("/v1/sync", frameRoute(remoteAddr, (ch, remote) => node.sync.accept(ch, remote)))
    .get("/v1/dht", frameRoute(remoteAddr, (ch, remote) => node.dht.accept(ch, remote)));

  app.notFound((c) =>
    c.json({ error: "NOT_FOUND", message: `No route for ${c.req.method} ${new URL(c.req.url).pathname}` }, 404)
  );
  app.onError((err, c) => {
    if (err instanceof XfError) {
      const status = statusOf(err.code);
      if (status === 503 || err.code === "STORAGE_FULL") c.header("retry-after", "1");
      return c.json({ error: err.code, message: err.message }, status as never);
    }
    console.error(err);
    return c.json({ error: "INTERNAL", message: (err as Error).message }, 500);
  });
  return app;
}

/** The app's type, for typed clients. */
export type AppType = ReturnType<typeof createApp>;
