import { toHex } from "../core/bytes.ts";
import { assert, assertEquals } from "@std/assert";
import { makeEvents, tempNode, testGroup } from "./_helpers.ts";
import { createApp } from "../net/app.ts";
import { cborArrayOf } from "../node.ts";
import { signEvent } from "../storage/event.ts";
import { decodeCbor, encodeCbor } from "../storage/cbor.ts";
import { serve } from "../net/server.ts";

const CBOR = { "content-type": "application/cbor" };

async function setup(limits = {}) {
  const t = await tempNode({ limits });
  const app = createApp(t.node);
  const g = await testGroup();
  const base = `/v1/groups/${toHex(g.gid)}`;
  const post = (body: Uint8Array, path = `${base}/events`, headers: Record<string, string> = CBOR) =>
    app.request(path, { method: "POST", body: body as BodyInit, headers });
  assertEquals((await post(g.manifest.bytes)).status, 201);
  return { t, app, g, base, post };
}

async function expectError(res: Response, status: number, code: string) {
  const body = await res.json();
  assertEquals([res.status, body.error], [status, code], JSON.stringify(body));
  assert(typeof body.message === "string" && body.message.length > 0);
}

Deno.test("POST /v1/groups/:gid/events answers stored, duplicate and per-event rejections in order", async () => {
  const { t, g, post } = await setup();
  try {
    const evs = await makeEvents(g, 3);
    const bad = evs[1]!.bytes.slice();
    bad[bad.length - 1] = bad[bad.length - 1]! ^ 1;
    const res = await post(cborArrayOf([evs[0]!.bytes, bad, evs[2]!.bytes, evs[0]!.bytes]));
    assertEquals(res.status, 200);
    const { results } = await res.json();
    assertEquals(results.map((r: { status: string }) => r.status), ["stored", "rejected", "stored", "duplicate"]);
    assertEquals(results[1].code, "BAD_SIGNATURE");
    assertEquals(results[0].id, toHex(evs[0]!.id));
    const again = await post(evs[0]!.bytes);
    assertEquals([again.status, (await again.json()).status], [200, "duplicate"]);
  } finally {
    await t.done();
  }
});

Deno.test("POST /v1/groups/:gid/events refuses every bad input with its code and stores nothing", async () => {
  const { t, app, g, base, post } = await setup({ http_body_bytes_max: 200_000, http_batch_events_max: 10 });
  try {
    const [ev] = await makeEvents(g, 1);
    const b = ev!.bytes;
    const other = await testGroup();
    const [foreign] = await makeEvents(other, 1);
    const big = await signEvent(g.owner, { group: g.gid, ts: 1, kind: 16, tags: [], payload: new Uint8Array(70_000) });
    const future = await signEvent(g.owner, {
      group: g.gid,
      ts: Date.now() + 3_600_000,
      kind: 16,
      tags: [],
      payload: new Uint8Array(),
    });
    const small =
      (await signEvent(g.owner, { group: g.gid, ts: 1000, kind: 16, tags: [], payload: new Uint8Array() })).bytes;
    assertEquals(toHex(small.subarray(70, 73)), "1903e8");
    // The same ts written in 8 bytes instead of 2: valid CBOR, not deterministic.
    const longTs = new Uint8Array([
      ...small.subarray(0, 70),
      0x1b,
      0,
      0,
      0,
      0,
      0,
      0,
      0x03,
      0xe8,
      ...small.subarray(73),
    ]);
    const wrongLen = encodeCbor([1, g.gid, g.owner.publicKey, 5, 16, [], new Uint8Array()]);
    const wrongType = encodeCbor([1, g.gid, g.owner.publicKey, "5", 16, [], new Uint8Array(), new Uint8Array(64)]);
    await expectError(await post(new TextEncoder().encode('{"json": true}')), 400, "BAD_CBOR");
    await expectError(await post(new Uint8Array()), 400, "EMPTY_BODY");
    await expectError(await post(b.subarray(0, 50)), 400, "BAD_CBOR");
    await expectError(await post(longTs), 400, "NOT_DETERMINISTIC");
    await expectError(await post(wrongLen), 400, "BAD_EVENT");
    await expectError(await post(wrongType), 400, "BAD_EVENT");
    await expectError(
      await post(new Uint8Array([...b.subarray(0, b.length - 1), b[b.length - 1]! ^ 1])),
      400,
      "BAD_SIGNATURE",
    );
    await expectError(await post(big.bytes), 413, "EVENT_TOO_LARGE");
    await expectError(await post(new Uint8Array(300_000).fill(0x80)), 413, "BODY_TOO_LARGE");
    await expectError(await post(cborArrayOf(Array(11).fill(b))), 413, "BATCH_TOO_LARGE");
    await expectError(await post(future.bytes), 400, "TS_IN_FUTURE");
    await expectError(await post(foreign!.bytes), 400, "GROUP_MISMATCH");
    await expectError(await post(foreign!.bytes, `/v1/groups/${toHex(other.gid)}/events`), 404, "UNKNOWN_GROUP");
    await expectError(await post(b, `/v1/groups/xyz/events`), 400, "BAD_GROUP_ID");
    await expectError(
      await post(b, `${base}/events`, { "content-type": "application/json" }),
      415,
      "UNSUPPORTED_MEDIA_TYPE",
    );
    await expectError(await app.request(`/v1/events/nothex`), 400, "BAD_EVENT_ID");
    await expectError(await app.request(`/v1/events/${"ab".repeat(32)}`), 404, "NOT_FOUND");
    await expectError(await app.request(`${base}/events?limit=abc`), 400, "BAD_QUERY");
    await expectError(await app.request(`${base}/events?cursor=zz`), 400, "BAD_QUERY");
    await expectError(await app.request(`/v1/groups/${toHex(other.gid)}/events`), 404, "UNKNOWN_GROUP");
    // Nothing of the above was stored: the group holds its manifest only.
    const page = await (await app.request(`${base}/events`)).json();
    assertEquals(page.events.length, 1);
    assertEquals((await app.request("/health")).status, 200);
  } finally {
    await t.done();
  }
});

Deno.test("GET /v1/groups/:gid/events pages with cursor, filters, and offers JSON and CBOR", async () => {
  const { t, app, g, base, post } = await setup();
  try {
    const evs = await makeEvents(g, 25);
    assertEquals((await post(cborArrayOf(evs.map((e) => e.bytes)))).status, 200);
    const p1 = await (await app.request(`${base}/events?limit=10&kind=16`)).json();
    assertEquals(p1.events.length, 9); // kinds 16 among 25 (+ manifest is kind 0)
    const all = await (await app.request(`${base}/events?limit=20`)).json();
    assertEquals(all.events.length, 20);
    assert(all.cursor);
    const rest = await (await app.request(`${base}/events?limit=20&cursor=${all.cursor}`)).json();
    assertEquals(rest.events.length, 6);
    assertEquals(rest.cursor, null);
    const res = await app.request(`${base}/events?since=${evs[5]!.ts}&until=${evs[9]!.ts}`, {
      headers: { accept: "application/cbor" },
    });
    assertEquals(res.headers.get("content-type"), "application/cbor");
    const m = decodeCbor(new Uint8Array(await res.arrayBuffer())) as Map<string, Uint8Array[]>;
    assertEquals(m.get("events")!.map(toHex), evs.slice(5, 10).map((e) => toHex(e.bytes)));
    const one = await app.request(`/v1/events/${toHex(evs[0]!.id)}`);
    assertEquals(toHex(new Uint8Array(await one.arrayBuffer())), toHex(evs[0]!.bytes));
    const metrics = await (await app.request("/metrics")).text();
    assert(metrics.includes("xf_wal_syncs_total"));
    assert(metrics.includes('xf_events_out_total{status="stored"} 26'));
  } finally {
    await t.done();
  }
});

Deno.test("POST under overload answers 503 with Retry-After", async () => {
  const { t, g, post } = await setup({ pipeline_inflight_events_max: 5 });
  try {
    const evs = await makeEvents(g, 60);
    const res = await Promise.all(evs.map((e) => post(e.bytes)));
    const busy = res.filter((r) => r.status === 503);
    assert(busy.length > 0);
    assertEquals(busy[0]!.headers.get("retry-after"), "1");
    assertEquals((await busy[0]!.json()).error, "OVERLOADED");
    await Promise.all(res.map((r) => (r.bodyUsed ? null : r.body?.cancel())));
  } finally {
    await t.done();
  }
});

Deno.test("serve() listens on port 0 and answers over a real socket", async () => {
  const t = await tempNode();
  const s = await serve(t.node, { host: "127.0.0.1", port: 0 });
  try {
    assert(s.port > 0);
    const r = await fetch(`${s.url}/health`);
    assertEquals((await r.json()).ready, true);
  } finally {
    await s.shutdown();
    await t.done();
  }
});
