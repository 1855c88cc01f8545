// The HTTP surface's security rules, each tried and refused with its code.
import { answerChallenge } from "../storage/auth_message.ts";
import { toHex } from "../core/bytes.ts";
import { assert, assertEquals } from "@std/assert";
import { closedGroup, makeEvents, tempNode, testGroup } from "./_helpers.ts";
import { createApp } from "../net/app.ts";
import { serve } from "../net/server.ts";
import { Authenticator } from "../net/auth.ts";
import { cborArrayOf, type XfNode } from "../node.ts";
import { CHALLENGE_TTL_MS, LIMITS } from "../core/limits.ts";
import type { FrameChannel } from "../net/sync.ts";
import { generateKeyPair, type KeyPair } from "../storage/ed25519.ts";
import { signEvent } from "../storage/event.ts";
import { ACTION_ADD, encodeMembership } from "../storage/membership.ts";
import { XfError } from "../core/errors.ts";

const CBOR = { "content-type": "application/cbor" };
/** Tests name the caller's address in this header; only the test app reads it. */
const fromAddr = (c: { req: { header(n: string): string | undefined } }) => c.req.header("x-test-addr") ?? "";

/** A port nothing listens on (bound, then released). */
function deadPort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** A bearer token for `key` through the app's challenge and token routes. */
async function tokenFor(app: ReturnType<typeof createApp>, node: XfNode, key: KeyPair, addr = "") {
  const ch = await (await app.request("/v1/auth/challenge", { headers: { "x-test-addr": addr } })).json();
  const challenge = Uint8Array.from(ch.challenge.match(/../g), (h: string) => parseInt(h, 16));
  const sig = await answerChallenge(key, "http", challenge, node.key.publicKey);
  const r = await app.request("/v1/auth/token", {
    method: "POST",
    headers: { "x-test-addr": addr },
    body: JSON.stringify({ key: toHex(key.publicKey), challenge: ch.challenge, sig: toHex(sig) }),
  });
  assertEquals(r.status, 200);
  return (await r.json()).token as string;
}

/** Status and JSON body, with every hex id of `ids` replaced by its name. */
async function answer(r: Response, ids: Record<string, string>): Promise<string> {
  let text = await r.text();
  for (const [name, hex] of Object.entries(ids)) text = text.replaceAll(hex, name);
  return `${r.status} ${text}`;
}

Deno.test("POST /v1/sync/once is for the operator: loopback or the operator token, else FORBIDDEN", async () => {
  const t = await tempNode();
  try {
    const peer = JSON.stringify({ peer: `ws://127.0.0.1:${deadPort()}` });
    const post = (app: ReturnType<typeof createApp>, headers: Record<string, string> = {}) =>
      app.request("/v1/sync/once", { method: "POST", body: peer, headers });
    const codeOf = async (r: Response) => [r.status, (await r.json()).error];
    // No socket address (in-process) is not loopback: fail closed, whatever the headers claim.
    const plain = createApp(t.node);
    assertEquals(await codeOf(await post(plain)), [403, "FORBIDDEN"]);
    assertEquals(await codeOf(await post(plain, { "x-forwarded-for": "127.0.0.1" })), [403, "FORBIDDEN"]);
    const app = createApp(t.node, { remoteAddr: fromAddr, operatorToken: "s3cret-operator" });
    for (const addr of ["", "10.1.2.3", "192.168.0.7", "2001:db8::1", "127.0.0.1.evil"]) {
      assertEquals(await codeOf(await post(app, { "x-test-addr": addr })), [403, "FORBIDDEN"], addr);
      for (const auth of ["Bearer s3cret-operatoR", "Bearer s3cret-operator2", "Bearer ", "s3cret-operator"]) {
        assertEquals(await codeOf(await post(app, { "x-test-addr": addr, authorization: auth })), [403, "FORBIDDEN"]);
      }
    }
    // Loopback, or anyone with the token, reaches the sync (here: an unreachable peer).
    for (const addr of ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"]) {
      assertEquals(await codeOf(await post(app, { "x-test-addr": addr })), [502, "PEER_UNREACHABLE"], addr);
    }
    const withToken = await post(app, { "x-test-addr": "10.1.2.3", authorization: "Bearer s3cret-operator" });
    assertEquals(await codeOf(withToken), [502, "PEER_UNREACHABLE"]);
    // Without a configured token, no token opens the route.
    const noToken = createApp(t.node, { remoteAddr: fromAddr });
    assertEquals(await codeOf(await post(noToken, { "x-test-addr": "10.1.2.3", authorization: "Bearer " })), [
      403,
      "FORBIDDEN",
    ]);
  } finally {
    await t.done();
  }
});

Deno.test("serve() takes the caller's address from the socket, never from X-Forwarded-For", async () => {
  const t = await tempNode();
  const s = await serve(t.node, { host: "0.0.0.0", port: 0 });
  try {
    const body = JSON.stringify({ peer: `ws://127.0.0.1:${deadPort()}` });
    const local = await fetch(`http://127.0.0.1:${s.port}/v1/sync/once`, { method: "POST", body });
    assertEquals([local.status, (await local.json()).error], [502, "PEER_UNREACHABLE"]);
    // From a non-loopback address of this machine (if it has one), a forged header does not help.
    const ip = Deno.networkInterfaces().find((i) => i.family === "IPv4" && !i.address.startsWith("127."))?.address;
    if (ip) {
      const far = await fetch(`http://${ip}:${s.port}/v1/sync/once`, {
        method: "POST",
        body,
        headers: { "x-forwarded-for": "127.0.0.1", "x-real-ip": "127.0.0.1", forwarded: "for=127.0.0.1" },
      });
      assertEquals([far.status, (await far.json()).error], [403, "FORBIDDEN"]);
    } else console.warn("no non-loopback IPv4 interface: the remote half of this test is skipped");
    // The sync route hands the session the socket's address (for per-address limits), never a header's.
    const seen: string[] = [];
    Object.assign(t.node.sync, {
      accept: (ch: FrameChannel, addr?: string) => {
        seen.push(addr ?? "");
        ch.close("test");
        return null;
      },
    });
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: s.port });
    try {
      const req = [
        "GET /v1/sync HTTP/1.1",
        `Host: 127.0.0.1:${s.port}`,
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        "X-Forwarded-For: 6.6.6.6",
        "",
        "",
      ].join("\r\n");
      await conn.write(new TextEncoder().encode(req));
      const buf = new Uint8Array(1024);
      const n = await conn.read(buf);
      assert(n && new TextDecoder().decode(buf.subarray(0, n)).startsWith("HTTP/1.1 101"));
      const end = Date.now() + 3000;
      while (!seen.length && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
      assertEquals(seen, ["127.0.0.1"]);
    } finally {
      conn.close();
    }
  } finally {
    await s.shutdown();
    await t.done();
  }
});

Deno.test("POST /v1/sync/once answers PEER_UNREACHABLE (502) for a peer it cannot connect to", async () => {
  const t = await tempNode();
  try {
    const app = createApp(t.node, { remoteAddr: () => "127.0.0.1" });
    const r = await app.request("/v1/sync/once", {
      method: "POST",
      body: JSON.stringify({ peer: `ws://127.0.0.1:${deadPort()}` }),
    });
    const body = await r.json();
    assertEquals([r.status, body.error], [502, "PEER_UNREACHABLE"], JSON.stringify(body));
    assert(body.message.includes("127.0.0.1"));
  } finally {
    await t.done();
  }
});

Deno.test("JSON bodies that are not objects are BAD_QUERY on /v1/auth/token and /v1/sync/once", async () => {
  const t = await tempNode();
  try {
    const app = createApp(t.node, { remoteAddr: () => "127.0.0.1" });
    for (const path of ["/v1/auth/token", "/v1/sync/once"]) {
      for (const body of ["null", "[]", "1", '"x"', "true", "[1,2]"]) {
        const r = await app.request(path, { method: "POST", body });
        assertEquals([r.status, (await r.json()).error], [400, "BAD_QUERY"], `${path} ${body}`);
      }
    }
  } finally {
    await t.done();
  }
});

Deno.test("GET /v1/groups/:gid/events refuses a cursor whose time is past any event's instead of wrapping", async () => {
  const t = await tempNode();
  try {
    const app = createApp(t.node);
    const g = await testGroup();
    await t.node.publish([g.manifest, ...(await makeEvents(g, 3))]);
    const base = `/v1/groups/${toHex(g.gid)}/events`;
    for (const cursor of ["f".repeat(80), "ffffffffffffffff" + "0".repeat(64), "0020000000000000" + "0".repeat(64)]) {
      const r = await app.request(`${base}?cursor=${cursor}`);
      assertEquals([r.status, (await r.json()).error], [400, "BAD_QUERY"], cursor);
    }
    // A cursor at the largest usable time is a valid, empty page; one at time 0 pages from the start.
    const last = await (await app.request(`${base}?cursor=001fffffffffffff${"f".repeat(64)}`)).json();
    assertEquals([last.events.length, last.cursor], [0, null]);
    const first = await (await app.request(`${base}?cursor=${"0".repeat(80)}`)).json();
    assertEquals(first.events.length, 4);
  } finally {
    await t.done();
  }
});

Deno.test("POST media types are matched case-insensitively and without their parameters", async () => {
  const t = await tempNode();
  try {
    const app = createApp(t.node);
    const g = await testGroup();
    const [e1, e2] = await makeEvents(g, 2);
    const post = (body: Uint8Array, type: string) =>
      app.request(`/v1/groups/${toHex(g.gid)}/events`, {
        method: "POST",
        body: body as BodyInit,
        headers: { "content-type": type },
      });
    assertEquals((await post(g.manifest.bytes, "APPLICATION/CBOR")).status, 201);
    assertEquals((await post(e1!.bytes, "application/cbor; charset=x")).status, 201);
    assertEquals((await post(e2!.bytes, " Application/Octet-Stream ;q=1")).status, 201);
    for (const type of ["application/cborx", "application/json", "text/plain; x=application/cbor", "cbor"]) {
      const r = await post(e1!.bytes, type);
      assertEquals([r.status, (await r.json()).error], [415, "UNSUPPORTED_MEDIA_TYPE"], type);
    }
  } finally {
    await t.done();
  }
});

Deno.test("POST to a closed group a caller cannot see answers exactly as for an unknown group, for every body", async () => {
  const t = await tempNode();
  try {
    const app = createApp(t.node);
    const closed = await closedGroup(t.node);
    const open = await testGroup();
    await t.node.publish(open.manifest);
    const [openEvent] = await makeEvents(open, 1);
    const stranger = await generateKeyPair();
    const strangerToken = await tokenFor(app, t.node, stranger);
    const unknownGid = (await testGroup("unknown", 1)).gid;
    // The same bodies, built for each gid in turn.
    const bodiesFor = async (gid: Uint8Array): Promise<[string, Uint8Array][]> => {
      const g = { owner: stranger, gid, manifest: closed.manifest };
      const [own, own2] = await makeEvents(g, 2);
      const bySigner = await makeEvents({ ...g, owner: closed.member }, 1);
      const badSig = own!.bytes.slice();
      badSig[badSig.length - 1]! ^= 1;
      const join = await signEvent(stranger, {
        group: gid,
        ts: Date.now() - 1000,
        kind: 1,
        tags: [],
        payload: encodeMembership({ action: ACTION_ADD, member: stranger.publicKey }),
      });
      const fakeManifest = await signEvent(stranger, {
        group: gid,
        ts: Date.now() - 1000,
        kind: 0,
        tags: [],
        payload: new Uint8Array([0x83, 0x50, ...new Uint8Array(16), 0x61, 0x78, 0x01]),
      });
      return [
        ["empty", new Uint8Array()],
        ["garbage", new Uint8Array([0xff, 0x00, 0x13])],
        ["empty array", new Uint8Array([0x80])],
        ["trailing bytes", new Uint8Array([...own!.bytes, 0])],
        ["event of another group", openEvent!.bytes],
        ["event of this gid by a non-member", own!.bytes],
        ["event of this gid by a member", bySigner[0]!.bytes],
        ["bad signature", badSig],
        ["self-added membership", join.bytes],
        ["forged manifest", fakeManifest.bytes],
        ["batch of this gid", cborArrayOf([own!.bytes, own2!.bytes])],
        ["mixed batch", cborArrayOf([own!.bytes, openEvent!.bytes, badSig])],
        ["batch too large", cborArrayOf(Array(LIMITS.http_batch_events_max + 1).fill(own!.bytes))],
      ];
    };
    const closedBodies = await bodiesFor(closed.gid);
    const unknownBodies = await bodiesFor(unknownGid);
    for (const headers of [{}, { authorization: `Bearer ${strangerToken}` }, { authorization: "Bearer nonsense" }]) {
      for (const [i, [name, body]] of closedBodies.entries()) {
        const ask = (gid: Uint8Array, b: Uint8Array) =>
          app.request(`/v1/groups/${toHex(gid)}/events`, {
            method: "POST",
            body: b as BodyInit,
            headers: { ...CBOR, ...headers },
          });
        const a = await answer(await ask(closed.gid, body), { GID: toHex(closed.gid) });
        const b = await answer(await ask(unknownGid, unknownBodies[i]![1]), { GID: toHex(unknownGid) });
        assertEquals(a, b, `${name} ${JSON.stringify(headers)}`);
      }
    }
    // Nothing of it was stored; the unknown group still does not exist.
    assertEquals((await t.node.access(toHex(closed.gid), toHex(closed.member.publicKey))).count, 2);
    assertEquals((await t.node.access(toHex(unknownGid), "")).exists, false);
    // An unknown group is still created by posting its own manifest.
    const fresh = await testGroup("fresh", 1);
    const made = await app.request(`/v1/groups/${toHex(fresh.gid)}/events`, {
      method: "POST",
      body: fresh.manifest.bytes as BodyInit,
      headers: CBOR,
    });
    assertEquals(made.status, 201);
    const [first] = await makeEvents(fresh, 1);
    const batch = await testGroup("batch", 0);
    const [batchEvent] = await makeEvents(batch, 1);
    const both = await app.request(`/v1/groups/${toHex(batch.gid)}/events`, {
      method: "POST",
      body: cborArrayOf([batch.manifest.bytes, batchEvent!.bytes]) as BodyInit,
      headers: CBOR,
    });
    assertEquals((await both.json()).results.map((r: { status: string }) => r.status), ["stored", "stored"]);
    // And a member with a token still writes to its closed group.
    const ownerToken = await tokenFor(app, t.node, fresh.owner);
    const w = await app.request(`/v1/groups/${toHex(fresh.gid)}/events`, {
      method: "POST",
      body: first!.bytes as BodyInit,
      headers: { ...CBOR, authorization: `Bearer ${ownerToken}` },
    });
    assertEquals(w.status, 201);
  } finally {
    await t.done();
  }
});

Deno.test("GET routes of a closed group a caller cannot see answer exactly as for an unknown group", async () => {
  const t = await tempNode();
  try {
    const app = createApp(t.node);
    const closed = await closedGroup(t.node);
    const stranger = await generateKeyPair();
    const strangerToken = await tokenFor(app, t.node, stranger);
    const unknownGid = toHex((await testGroup("unknown", 1)).gid);
    const gid = toHex(closed.gid);
    const held = toHex(closed.add.id);
    const absent = "ab".repeat(32);
    const paths = (g: string) => [
      `/v1/groups/${g}/events`,
      `/v1/groups/${g}/events?limit=5&kind=16&author=${absent}`,
      `/v1/groups/${g}/events?since=abc`,
      `/v1/groups/${g}/events?limit=0`,
      `/v1/groups/${g}/events?cursor=${"0".repeat(80)}`,
      `/v1/groups/${g}/merkle`,
      `/v1/groups/${g}/proof/${held}`,
      `/v1/groups/${g}/proof/${absent}`,
      `/v1/groups/${g}/proof/nothex`,
      `/v1/groups/${g}/peers`,
    ];
    for (const headers of [{}, { authorization: `Bearer ${strangerToken}` }, { authorization: "Bearer nonsense" }]) {
      for (const accept of [{}, { accept: "application/cbor" }, { accept: "application/json" }]) {
        const h = { ...headers, ...accept };
        const unknownPaths = paths(unknownGid);
        for (const [i, path] of paths(gid).entries()) {
          const a = await answer(await app.request(path, { headers: h }), { GID: gid });
          const b = await answer(await app.request(unknownPaths[i]!, { headers: h }), { GID: unknownGid });
          assertEquals(a, b, `${path} ${JSON.stringify(h)}`);
        }
        // An event of the closed group looks like an event the node does not hold.
        const a = await answer(await app.request(`/v1/events/${held}`, { headers: h }), { ID: held });
        const b = await answer(await app.request(`/v1/events/${absent}`, { headers: h }), { ID: absent });
        assertEquals(a, b, JSON.stringify(h));
      }
    }
  } finally {
    await t.done();
  }
});

Deno.test("A closed group a caller cannot see takes as long to refuse as an unknown group", async () => {
  const t = await tempNode();
  try {
    const app = createApp(t.node);
    const closed = await closedGroup(t.node);
    const unknown = await testGroup("unknown", 1);
    const stranger = await generateKeyPair();
    const [closedEvent] = await makeEvents({ ...closed, owner: stranger }, 1);
    const [unknownEvent] = await makeEvents({ ...unknown, owner: stranger }, 1);
    const median = (xs: number[]) => xs.sort((a, b) => a - b)[xs.length >> 1]!;
    const time = async (f: () => Response | Promise<Response>) => {
      const t0 = performance.now();
      await (await f()).body?.cancel();
      return performance.now() - t0;
    };
    const post = (gid: Uint8Array, body: Uint8Array) => () =>
      app.request(`/v1/groups/${toHex(gid)}/events`, { method: "POST", body: body as BodyInit, headers: CBOR });
    const cases: [string, () => Response | Promise<Response>, () => Response | Promise<Response>][] = [
      ["POST event", post(closed.gid, closedEvent!.bytes), post(unknown.gid, unknownEvent!.bytes)],
      [
        "POST batch",
        post(closed.gid, cborArrayOf([closedEvent!.bytes, closed.add.bytes])),
        post(unknown.gid, cborArrayOf([unknownEvent!.bytes, unknownEvent!.bytes])),
      ],
      [
        "GET events",
        () => app.request(`/v1/groups/${toHex(closed.gid)}/events`),
        () => app.request(`/v1/groups/${toHex(unknown.gid)}/events`),
      ],
      [
        "GET event",
        () => app.request(`/v1/events/${toHex(closed.add.id)}`),
        () => app.request(`/v1/events/${toHex(unknownEvent!.id)}`),
      ],
    ];
    const deadline = Date.now() + 20_000;
    for (const [name, a, b] of cases) {
      for (let i = 0; i < 5; i++) await time(a), await time(b); // warm up
      const ta: number[] = [], tb: number[] = [];
      for (let i = 0; i < 30 && Date.now() < deadline; i++) {
        ta.push(await time(a));
        tb.push(await time(b));
      }
      const [ma, mb] = [median(ta), median(tb)];
      assert(ma < 3 * mb && mb < 3 * ma, `${name}: closed ${ma.toFixed(3)} ms, unknown ${mb.toFixed(3)} ms`);
    }
  } finally {
    await t.done();
  }
});

Deno.test("A flood of HTTP challenges from one address cannot evict an honest client's challenge", async () => {
  const t = await tempNode();
  try {
    const app = createApp(t.node, { remoteAddr: fromAddr });
    const honest = await generateKeyPair();
    const ch = await (await app.request("/v1/auth/challenge", { headers: { "x-test-addr": "192.0.2.1" } })).json();
    const codes = new Map<string, number>();
    for (let i = 0; i < 10_000; i++) {
      const r = await app.request("/v1/auth/challenge", { headers: { "x-test-addr": "198.51.100.9" } });
      const key = r.status === 200 ? "ok" : `${r.status} ${(await r.json()).error}`;
      if (r.status === 200) await r.body?.cancel();
      codes.set(key, (codes.get(key) ?? 0) + 1);
    }
    const perAddr = t.node.limits.http_challenges_per_addr_max;
    assertEquals(Object.fromEntries(codes), { ok: perAddr, "429 RATE_LIMITED": 10_000 - perAddr });
    // The honest client's challenge is still good.
    const challenge = Uint8Array.from(ch.challenge.match(/../g), (h: string) => parseInt(h, 16));
    const sig = await answerChallenge(honest, "http", challenge, t.node.key.publicKey);
    const r = await app.request("/v1/auth/token", {
      method: "POST",
      headers: { "x-test-addr": "192.0.2.1" },
      body: JSON.stringify({ key: toHex(honest.publicKey), challenge: ch.challenge, sig: toHex(sig) }),
    });
    assertEquals(r.status, 200);
    assert(typeof (await r.json()).token === "string");
  } finally {
    await t.done();
  }
});

Deno.test("HTTP challenges: a full table refuses with OVERLOADED and drops only expired ones; expiry is CHALLENGE_EXPIRED", async () => {
  const server = await generateKeyPair();
  const client = await generateKeyPair();
  let now = 1_000_000;
  const auth = new Authenticator(server, () => now);
  const opts = { perAddrMax: 4, max: 20 };
  const codeOf = (f: () => unknown) => {
    try {
      f();
      return "ok";
    } catch (e) {
      if (e instanceof XfError) return e.code;
      throw e;
    }
  };
  const honest = auth.challenge("192.0.2.1", opts).challenge;
  for (let i = 0; i < 4; i++) assertEquals(codeOf(() => auth.challenge("198.51.100.1", opts)), "ok");
  assertEquals(codeOf(() => auth.challenge("198.51.100.1", opts)), "RATE_LIMITED");
  // Many addresses fill the table: refused, never making room by evicting a pending challenge.
  let refused = 0;
  for (let a = 0; a < 10; a++) {
    for (let i = 0; i < 4; i++) if (codeOf(() => auth.challenge(`203.0.113.${a}`, opts)) === "OVERLOADED") refused++;
  }
  assertEquals(refused, 40 - 15);
  await auth.check("http", honest, client.publicKey, await answerChallenge(client, "http", honest, server.publicKey));
  // The one used challenge made room for one more.
  assertEquals(codeOf(() => auth.challenge("203.0.113.99", opts)), "ok");
  assertEquals(codeOf(() => auth.challenge("203.0.113.99", opts)), "OVERLOADED");
  now += CHALLENGE_TTL_MS + 1;
  // Expired challenges are dropped first, so the table and the address's share are free again.
  for (let i = 0; i < 4; i++) assertEquals(codeOf(() => auth.challenge("198.51.100.1", opts)), "ok");
  const late = auth.challenge("192.0.2.2", opts).challenge;
  now += CHALLENGE_TTL_MS + 1;
  const e2 = await auth.check(
    "http",
    late,
    client.publicKey,
    await answerChallenge(client, "http", late, server.publicKey),
  )
    .then(() => null, (e) => e);
  assertEquals(e2 instanceof XfError ? e2.code : String(e2), "CHALLENGE_EXPIRED");
});
