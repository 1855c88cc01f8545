// The client surface: streams (SSE and WebSocket), groups and members, CORS.
import { answerChallenge } from "../storage/auth_message.ts";
import { fromHex, toHex } from "../core/bytes.ts";
import { assert, assertEquals } from "@std/assert";
import { makeEvents, tempNode, testGroup, until } from "./_helpers.ts";
import { serve } from "../net/server.ts";
import { createApp } from "../net/app.ts";
import { generateKeyPair, type KeyPair } from "../storage/ed25519.ts";
import { createGroup, eventId, signEvent } from "../storage/event.ts";
import { ACTION_ADD, ACTION_REMOVE, encodeMembership } from "../storage/membership.ts";
import type { XfNode } from "../node.ts";
import type { Limits } from "../core/limits.ts";

async function served(limits: Partial<Limits> = {}) {
  const t = await tempNode({ limits });
  const s = await serve(t.node, { host: "127.0.0.1", port: 0 });
  return {
    node: t.node,
    url: s.url,
    async done() {
      await s.shutdown();
      await t.done();
    },
  };
}

interface Rec {
  event: string;
  id?: string;
  data: string;
}

/** A minimal SSE reader over fetch: records as they arrive, and comments (heartbeats) counted. */
async function sse(url: string, headers: Record<string, string> = {}) {
  const ctrl = new AbortController();
  const res = await fetch(url, { headers: { accept: "text/event-stream", ...headers }, signal: ctrl.signal });
  const recs: Rec[] = [];
  let comments = 0;
  let ended = false;
  if (res.ok && res.body) {
    (async () => {
      const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      try {
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += value;
          let i;
          while ((i = buf.indexOf("\n\n")) >= 0) {
            const block = buf.slice(0, i);
            buf = buf.slice(i + 2);
            if (block.startsWith(":")) {
              comments++;
              continue;
            }
            const r: Rec = { event: "message", data: "" };
            for (const line of block.split("\n")) {
              const [k, ...v] = line.split(": ");
              if (k === "event") r.event = v.join(": ");
              else if (k === "id") r.id = v.join(": ");
              else if (k === "data") r.data = v.join(": ");
            }
            recs.push(r);
          }
        }
      } catch { /* aborted */ }
      ended = true;
    })();
  }
  return {
    res,
    recs,
    events: () => recs.filter((r) => r.event === "event").map((r) => JSON.parse(r.data).id as string),
    comments: () => comments,
    ended: () => ended,
    close: () => ctrl.abort(),
  };
}

async function openGroup(node: XfNode, n: number) {
  const g = await testGroup("chat", 0);
  await node.publish(g.manifest);
  const evs = await makeEvents(g, n);
  if (n) await node.publish(evs);
  return { g, gid: toHex(g.gid), evs };
}

async function tokenFor(url: string, node: XfNode, key: KeyPair) {
  const ch = await (await fetch(`${url}/v1/auth/challenge`)).json();
  const sig = await answerChallenge(key, "http", fromHex(ch.challenge)!, node.key.publicKey);
  const r = await fetch(`${url}/v1/auth/token`, {
    method: "POST",
    body: JSON.stringify({ key: toHex(key.publicKey), challenge: ch.challenge, sig: toHex(sig) }),
  });
  return (await r.json()).token as string;
}

const live = async (g: Awaited<ReturnType<typeof openGroup>>["g"], n: number, from: number) =>
  await makeEvents(g, n, Date.now() - 100_000 + from);

Deno.test("Stream over SSE: backfill, ready, then live events, each once", async () => {
  const s = await served();
  try {
    const { g, gid, evs } = await openGroup(s.node, 30);
    const st = await sse(`${s.url}/v1/groups/${gid}/stream`);
    assertEquals(st.res.headers.get("content-type"), "text/event-stream");
    await until(() => st.recs.some((r) => r.event === "ready"));
    const ready = st.recs.findIndex((r) => r.event === "ready");
    assertEquals(ready, 31); // manifest + 30
    const more = await live(g, 20, 5000);
    await s.node.publish(more);
    await until(() => st.events().length === 51);
    const ids = st.events();
    assertEquals(new Set(ids).size, 51);
    assertEquals(ids.slice(32 - 1), more.map((e) => toHex(e.id)));
    assert(evs.every((e) => ids.includes(toHex(e.id))));
    st.close();
  } finally {
    await s.done();
  }
});

Deno.test("Stream resume by Last-Event-ID or cursor: no gap, no duplicate, across a 1,000-event burst", async () => {
  const s = await served();
  try {
    const { g, gid } = await openGroup(s.node, 10);
    const a = await sse(`${s.url}/v1/groups/${gid}/stream`);
    await until(() => a.recs.some((r) => r.event === "ready"));
    // A burst with timestamps out of arrival order (clients' clocks differ): resume must still be exact.
    const burst = await makeEvents(g, 1000, Date.now() - 50_000);
    const shuffled = [...burst].sort(() => Math.random() - 0.5);
    const publishing = (async () => {
      for (let i = 0; i < shuffled.length; i += 50) await s.node.publish(shuffled.slice(i, i + 50));
    })();
    await until(() => a.events().length > 200, 10_000);
    a.close(); // drops mid-burst
    const seen = a.events();
    const last = a.recs.filter((r) => r.event === "event").at(-1)!.id!;
    await publishing;
    const b = await sse(`${s.url}/v1/groups/${gid}/stream`, { "last-event-id": last });
    await until(() => seen.length + b.events().length >= 1011, 10_000);
    await new Promise((r) => setTimeout(r, 200));
    const all = [...seen, ...b.events()];
    assertEquals(all.length, 1011, "gap or duplicate");
    assertEquals(new Set(all).size, 1011);
    b.close();
    // The cursor query parameter does the same.
    const c = await sse(`${s.url}/v1/groups/${gid}/stream?cursor=${last}`);
    await until(() => c.recs.some((r) => r.event === "ready"));
    assertEquals(c.events(), b.events());
    c.close();
    // A cursor from inside a backfill resumes the backfill.
    const mid = a.recs.filter((r) => r.event === "event")[5]!.id!;
    assert(mid.startsWith("t"));
    const d = await sse(`${s.url}/v1/groups/${gid}/stream?cursor=${mid}`);
    await until(() => d.recs.some((r) => r.event === "ready"));
    assertEquals(new Set([...all.slice(0, 6), ...d.events()]).size, 1011);
    assertEquals(d.events().length, 1011 - 6);
    d.close();
  } finally {
    await s.done();
  }
});

Deno.test("Stream filters as the query route; a bad filter is BAD_QUERY before any upgrade", async () => {
  const s = await served();
  try {
    const { gid, evs } = await openGroup(s.node, 12);
    const st = await sse(`${s.url}/v1/groups/${gid}/stream?kind=16&since=${evs[3]!.ts}`);
    await until(() => st.recs.some((r) => r.event === "ready"));
    const want = evs.filter((e) => e.kind === 16 && e.ts >= evs[3]!.ts).map((e) => toHex(e.id));
    assertEquals(st.events(), want);
    st.close();
    for (const q of ["kind=x", "since=-1", "author=zz", "cursor=nope", "since=99999999999999999999"]) {
      const r = await fetch(`${s.url}/v1/groups/${gid}/stream?${q}`, { headers: { upgrade: "websocket" } });
      assertEquals([r.status, (await r.json()).error], [400, "BAD_QUERY"], q);
    }
  } finally {
    await s.done();
  }
});

Deno.test("A stream that falls behind is cut with PEER_TOO_SLOW and resumes by cursor", async () => {
  const s = await served({ stream_lag_bytes_max: 64 * 1024 });
  try {
    const { g, gid } = await openGroup(s.node, 0);
    // A client that never reads: its socket and the stream's queue fill.
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: Number(new URL(s.url).port) });
    await conn.write(
      new TextEncoder().encode(`GET /v1/groups/${gid}/stream HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n`),
    );
    await new Promise((r) => setTimeout(r, 200));
    const big = [];
    for (let i = 0; i < 400; i++) {
      big.push(
        await signEvent(g.owner, {
          group: g.gid,
          ts: Date.now() - 10_000 + i,
          kind: 16,
          tags: [],
          payload: new Uint8Array(16 * 1024),
        }),
      );
    }
    for (let i = 0; i < big.length; i += 50) await s.node.publish(big.slice(i, i + 50));
    // The node ends the stream: reading the socket now, the body ends with an error record PEER_TOO_SLOW.
    let text = "";
    const buf = new Uint8Array(1 << 16);
    const end = Date.now() + 10_000;
    while (Date.now() < end) {
      const n = await conn.read(buf).catch(() => null);
      if (n === null) break;
      text += new TextDecoder().decode(buf.subarray(0, n));
      if (text.includes("PEER_TOO_SLOW")) break;
    }
    conn.close();
    assert(text.includes("event: error") && text.includes("PEER_TOO_SLOW"), "no PEER_TOO_SLOW record");
    const last = [...text.matchAll(/\nid: (\S+)/g)].at(-1)?.[1];
    assert(last, "no cursor before the cut");
    const again = await sse(`${s.url}/v1/groups/${gid}/stream?cursor=${last}`);
    await until(() => again.recs.some((r) => r.event === "ready"), 10_000);
    const got = [...text.matchAll(/"id":"([0-9a-f]{64})"/g)].map((m) => m[1]!);
    assertEquals(new Set([...got, ...again.events()]).size, 401);
    again.close();
  } finally {
    await s.done();
  }
});

Deno.test("A stream sends a heartbeat at least every stream_heartbeat_ms", async () => {
  const s = await served({ stream_heartbeat_ms: 200 });
  try {
    const { gid } = await openGroup(s.node, 0);
    const st = await sse(`${s.url}/v1/groups/${gid}/stream`);
    await new Promise((r) => setTimeout(r, 900));
    assert(st.comments() >= 3, `only ${st.comments()} heartbeats in 900 ms`);
    st.close();
  } finally {
    await s.done();
  }
});

Deno.test("A closed group's stream needs a member's token (header or query); expiry ends it with UNAUTHORIZED", async () => {
  const s = await served();
  try {
    const owner = await generateKeyPair(), member = await generateKeyPair(), stranger = await generateKeyPair();
    const { gid, manifest } = await createGroup(owner, { name: "club", policy: 1 });
    const add = await signEvent(owner, {
      group: gid,
      ts: Date.now() - 1000,
      kind: 1,
      tags: [],
      payload: encodeMembership({ action: ACTION_ADD, member: member.publicKey }),
    });
    await s.node.publish([manifest, add]);
    const g = toHex(gid);
    const unknown = "ab".repeat(32);
    for (const headers of [{}, { authorization: `Bearer ${await tokenFor(s.url, s.node, stranger)}` }]) {
      const r = await fetch(`${s.url}/v1/groups/${g}/stream`, { headers });
      const u = await fetch(`${s.url}/v1/groups/${unknown}/stream`, { headers });
      const [rb, ub] = [await r.json(), await u.json()];
      assertEquals([r.status, rb.error, rb.message.replace(g, "X")], [
        u.status,
        ub.error,
        ub.message.replace(unknown, "X"),
      ]);
    }
    const tok = await tokenFor(s.url, s.node, member);
    const st = await sse(`${s.url}/v1/groups/${g}/stream?token=${tok}`);
    await until(() => st.recs.some((r) => r.event === "ready"));
    assertEquals(st.events().length, 2);
    st.close();
    // A token that expires mid-stream ends it with UNAUTHORIZED.
    const info = s.node.sync.auth.tokenInfo(tok)!;
    info.expires = Date.now() + 300;
    const ex = await sse(`${s.url}/v1/groups/${g}/stream`, { authorization: `Bearer ${tok}` });
    await until(() => ex.recs.some((r) => r.event === "error"), 5000);
    assertEquals(JSON.parse(ex.recs.find((r) => r.event === "error")!.data).error, "UNAUTHORIZED");
    await until(() => ex.ended());
    // A member removed while streaming is cut at once.
    const tok2 = await tokenFor(s.url, s.node, member);
    const rm = await sse(`${s.url}/v1/groups/${g}/stream`, { authorization: `Bearer ${tok2}` });
    await until(() => rm.recs.some((r) => r.event === "ready"));
    await s.node.publish(
      await signEvent(owner, {
        group: gid,
        ts: Date.now(),
        kind: 1,
        tags: [],
        payload: encodeMembership({ action: ACTION_REMOVE, member: member.publicKey }),
      }),
    );
    await until(() => rm.recs.some((r) => r.event === "error"), 5000);
    assertEquals(JSON.parse(rm.recs.find((r) => r.event === "error")!.data).error, "UNKNOWN_GROUP");
  } finally {
    await s.done();
  }
});

Deno.test("Stream over WebSocket: event bytes, ready and cursors; published events answered like POST", async () => {
  const s = await served();
  try {
    const { g, gid } = await openGroup(s.node, 5);
    const ws = new WebSocket(`${s.url.replace("http", "ws")}/v1/groups/${gid}/stream`);
    ws.binaryType = "arraybuffer";
    const bins: Uint8Array[] = [];
    const texts: Record<string, unknown>[] = [];
    ws.onmessage = (e) => {
      if (e.data instanceof ArrayBuffer) bins.push(new Uint8Array(e.data));
      else texts.push(JSON.parse(e.data));
    };
    await new Promise((r) => ws.onopen = r);
    await until(() => texts.some((t) => t.type === "ready"));
    assertEquals(bins.length, 6);
    const [ev] = await live(g, 1, 9000);
    ws.send(ev!.bytes);
    ws.send(new Uint8Array([1, 2, 3]));
    ws.send(ev!.bytes);
    await until(() => texts.filter((t) => t.type === "result").length === 3);
    const results = texts.filter((t) => t.type === "result");
    assertEquals(results.map((r) => r.status), ["stored", "rejected", "duplicate"]);
    assertEquals(results[1]!.code, "BAD_CBOR");
    await until(() => bins.length === 7);
    assertEquals(toHex(eventId(bins[6]!)), toHex(ev!.id));
    assert(texts.some((t) => t.type === "cursor" && String(t.cursor).startsWith("a")));
    ws.close();
  } finally {
    await s.done();
  }
});

Deno.test("GET /v1/groups lists what the caller may see; /members gives roles, closed to members only", async () => {
  const s = await served();
  try {
    const owner = await generateKeyPair(), member = await generateKeyPair();
    const open = await createGroup(owner, { name: "town square", policy: 0 });
    const closed = await createGroup(owner, { name: "back room", policy: 1 });
    const add = await signEvent(owner, {
      group: closed.gid,
      ts: Date.now() - 1000,
      kind: 1,
      tags: [],
      payload: encodeMembership({ action: ACTION_ADD, member: member.publicKey }),
    });
    await s.node.publish([open.manifest, closed.manifest, add]);
    const anon = await (await fetch(`${s.url}/v1/groups`)).json();
    assertEquals(anon.groups.map((x: { name: string }) => x.name), ["town square"]);
    const tok = await tokenFor(s.url, s.node, member);
    const mine = await (await fetch(`${s.url}/v1/groups`, { headers: { authorization: `Bearer ${tok}` } })).json();
    assertEquals(mine.groups.map((x: { name: string }) => x.name).sort(), ["back room", "town square"]);
    const c = mine.groups.find((x: { name: string }) => x.name === "back room");
    assertEquals([c.id, c.policy, c.count], [toHex(closed.gid), 1, 2]);
    const m = await (await fetch(`${s.url}/v1/groups/${toHex(closed.gid)}/members`, {
      headers: { authorization: `Bearer ${tok}` },
    })).json();
    assertEquals(m.owner, toHex(owner.publicKey));
    assertEquals(
      m.members.map((x: { role: string }) => x.role).sort(),
      ["member", "owner"],
    );
    const hidden = await fetch(`${s.url}/v1/groups/${toHex(closed.gid)}/members`);
    assertEquals([hidden.status, (await hidden.json()).error], [404, "UNKNOWN_GROUP"]);
  } finally {
    await s.done();
  }
});

Deno.test("CORS on every route, preflight included; --cors-origin narrows it", async () => {
  const t = await tempNode();
  try {
    const any = createApp(t.node);
    const pre = await any.request("/v1/groups/" + "ab".repeat(32) + "/events", {
      method: "OPTIONS",
      headers: {
        origin: "https://app.example",
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type",
      },
    });
    assert(pre.status === 204 || pre.status === 200, String(pre.status));
    assertEquals(pre.headers.get("access-control-allow-origin"), "*");
    assert((pre.headers.get("access-control-allow-headers") ?? "").toLowerCase().includes("authorization"));
    assert((pre.headers.get("access-control-allow-methods") ?? "").includes("POST"));
    const get = await any.request("/health", { headers: { origin: "https://app.example" } });
    assertEquals(get.headers.get("access-control-allow-origin"), "*");
    const err = await any.request("/v1/events/zz", { headers: { origin: "https://app.example" } });
    assertEquals([err.status, err.headers.get("access-control-allow-origin")], [400, "*"]);
    assertEquals(get.headers.get("access-control-allow-credentials"), null);
    const narrow = createApp(t.node, { corsOrigins: ["https://chat.example"] });
    const ok = await narrow.request("/health", { headers: { origin: "https://chat.example" } });
    assertEquals(ok.headers.get("access-control-allow-origin"), "https://chat.example");
    const no = await narrow.request("/health", { headers: { origin: "https://evil.example" } });
    assert(no.headers.get("access-control-allow-origin") !== "https://evil.example");
  } finally {
    await t.done();
  }
});
