/**
 * The HTTP surface (Hono), runtime-independent: routes chained so their
 * types flow, one `onError` that turns every {@linkcode XfError} into JSON
 * `{ error: CODE, message }` with its status. Tested in-process with
 * `app.request()`; `server.ts` binds it to a socket.
 *
 * @module
 */

import { Hono } from "@hono/hono";
import type { XfNode } from "../actors/node.ts";
import type { EventResult } from "../actors/batch.ts";
import { statusOf, XfError } from "../storage/errors.ts";
import { encodeCbor } from "../storage/cbor.ts";
import { decodeEvent } from "../storage/event.ts";
import { fromHex, toHex } from "../storage/ed25519.ts";
import { upgradeWebSocket } from "@hono/hono/deno";
import type { WSContext } from "@hono/hono/ws";
import type { FrameChannel } from "./sync.ts";

/** A WebSocket route whose binary frames feed a {@linkcode FrameChannel} handed to `accept` on open. */
function frameRoute(accept: (ch: FrameChannel, addr: string) => void) {
  return upgradeWebSocket((c) => {
    let ch: FrameChannel | null = null;
    // Read the request now: once upgraded it is closed.
    // The socket's remote address (never a header a client can write); "" in-process.
    const addr = (c.env as { remoteAddr?: { hostname?: string } } | undefined)?.remoteAddr?.hostname ?? "";
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
    close: (reason) => ws.close(1000, reason.slice(0, 120)),
    onFrame: null,
    onClose: null,
    buffered: () => (ws.raw as WebSocket | undefined)?.bufferedAmount ?? 0,
  };
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

/** JSON view of an event, for people. */
export function eventJson(bytes: Uint8Array) {
  const e = decodeEvent(bytes, { event_bytes_max: bytes.length, event_tags_max: 1 << 16, tag_bytes_max: 1 << 16 });
  return {
    id: toHex(e.id),
    group: toHex(e.group),
    author: toHex(e.author),
    ts: e.ts,
    kind: e.kind,
    tags: e.tags,
    payload: toHex(e.payload),
    sig: toHex(e.sig),
  };
}

function wantsCbor(accept: string | undefined): boolean {
  return !!accept && accept.includes(CBOR);
}

/** Build the app for a node. */
export function createApp(node: XfNode) {
  /** The key behind the request's bearer token, as hex ("" for none). */
  const readerOf = (auth: string | undefined): string => {
    const m = /^Bearer ([0-9a-f]{64})$/.exec(auth ?? "");
    const key = m ? node.sync.auth.tokenKey(m[1]!) : null;
    return key ? toHex(key) : "";
  };
  /** Throws UNKNOWN_GROUP unless the reader may see the group: a closed group looks absent to others. */
  const mustRead = async (gid: Uint8Array, auth: string | undefined) => {
    const a = await node.access(toHex(gid), readerOf(auth));
    if (!a.readable) throw new XfError("UNKNOWN_GROUP", `Group "${toHex(gid)}" is not known to this node`);
    return a;
  };
  const app = new Hono()
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
      if (!type.startsWith(CBOR) && !type.startsWith("application/octet-stream")) {
        throw new XfError("UNSUPPORTED_MEDIA_TYPE", `Cannot accept body of type "${type}": send ${CBOR}`);
      }
      const body = await readBody(c.req.raw, node.limits.http_body_bytes_max);
      // A closed group takes writes only over a member's token (others cannot learn it exists).
      const a = await node.access(toHex(gid), readerOf(c.req.header("authorization")));
      if (a.exists && !a.readable) {
        throw new XfError("UNKNOWN_GROUP", `Group "${toHex(gid)}" is not known to this node`);
      }
      const single = body.length > 1 && body[0]! >> 5 === 4 && body[1]! >> 5 !== 4 && (body[0]! & 0x1f) !== 0;
      const results = await node.submit(gid, body);
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
      if (!page) throw new XfError("UNKNOWN_GROUP", `Group "${toHex(gid)}" is not known to this node`);
      if (wantsCbor(c.req.header("accept"))) {
        const m = new Map<string, Uint8Array[] | string | null>([["events", page.events], ["cursor", page.cursor]]);
        return c.body(encodeCbor(m as never), 200, { "content-type": CBOR });
      }
      return c.json({ events: page.events.map(eventJson), cursor: page.cursor });
    })
    .get("/v1/events/:id", async (c) => {
      const id = hexParam(c.req.param("id"), "BAD_EVENT_ID", "event id");
      const bytes = await node.get(toHex(id));
      const notFound = new XfError("NOT_FOUND", `Event "${toHex(id)}" is not stored on this node`);
      if (!bytes) throw notFound;
      await mustRead(bytes.subarray(4, 36), c.req.header("authorization")).catch(() => {
        throw notFound; // an event of a closed group looks absent to non-members
      });
      if (c.req.header("accept")?.includes("application/json")) return c.json(eventJson(bytes));
      return c.body(bytes.slice(), 200, { "content-type": CBOR });
    })
    .get("/v1/groups/:gid/merkle", async (c) => {
      const gid = hexParam(c.req.param("gid"), "BAD_GROUP_ID", "group id");
      await mustRead(gid, c.req.header("authorization"));
      const info = await node.merkle(toHex(gid));
      if (!info) throw new XfError("UNKNOWN_GROUP", `Group "${toHex(gid)}" is not known to this node`);
      return c.json(info);
    })
    .get("/v1/groups/:gid/proof/:id", async (c) => {
      const gid = hexParam(c.req.param("gid"), "BAD_GROUP_ID", "group id");
      const id = hexParam(c.req.param("id"), "BAD_EVENT_ID", "event id");
      await mustRead(gid, c.req.header("authorization"));
      const proof = await node.proof(toHex(gid), toHex(id));
      if (proof === null) {
        if (!(await node.merkle(toHex(gid)))) {
          throw new XfError("UNKNOWN_GROUP", `Group "${toHex(gid)}" is not known to this node`);
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
      const { challenge, expires } = node.sync.auth.challenge();
      return c.json({ challenge: toHex(challenge), expires, node: toHex(node.key.publicKey) });
    })
    .post("/v1/auth/token", async (c) => {
      const body = await readBody(c.req.raw, 4096);
      let req: { key?: string; challenge?: string; sig?: string };
      try {
        req = JSON.parse(new TextDecoder().decode(body));
      } catch {
        throw new XfError("BAD_QUERY", "Cannot read token request: body is not JSON {key, challenge, sig}");
      }
      const key = fromHex(req.key ?? ""), challenge = fromHex(req.challenge ?? ""), sig = fromHex(req.sig ?? "");
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
      // One-shot sync with a peer (the CLI's `sync`): connect, reconcile, transfer, report.
      let body: { peer?: unknown; groups?: unknown };
      try {
        body = JSON.parse(new TextDecoder().decode(await readBody(c.req.raw, 64 * 1024)) || "{}");
      } catch (e) {
        if (e instanceof XfError) throw e;
        throw new XfError("BAD_QUERY", "Cannot read sync request: body is not JSON {peer, groups?}");
      }
      const peer = String(body.peer ?? "");
      if (!/^wss?:\/\/[^\s]+$/.test(peer)) {
        throw new XfError("BAD_QUERY", `Cannot sync with "${peer}": expected ws://host:port`);
      }
      const groups = Array.isArray(body.groups) ? body.groups.map(String) : undefined;
      const t0 = performance.now();
      const s = await node.sync.connect(peer, groups);
      const stats = { ...s.stats, ms: Math.round(performance.now() - t0), peer: s.peer };
      s.close("one-shot sync done");
      return c.json(stats);
    })
    .get("/v1/sync", frameRoute((ch, addr) => node.sync.accept(ch, addr)))
    .get("/v1/dht", frameRoute((ch, addr) => node.dht.accept(ch, addr)));

  app.notFound((c) =>
    c.json({ error: "NOT_FOUND", message: `No route for ${c.req.method} ${new URL(c.req.url).pathname}` }, 404)
  );
  app.onError((err, c) => {
    if (err instanceof XfError) {
      const status = statusOf(err.code);
      if (status === 503) c.header("retry-after", "1");
      return c.json({ error: err.code, message: err.message }, status as never);
    }
    console.error(err);
    return c.json({ error: "INTERNAL", message: (err as Error).message }, 500);
  });
  return app;
}

/** The app's type, for typed clients. */
export type AppType = ReturnType<typeof createApp>;
