// Retention (kind 3 settings): the rules (storage/retention.ts) and a node that forgets past the boundary.
import { assert, assertEquals, assertThrows } from "@std/assert";
import { toHex } from "../core/bytes.ts";
import { XfError } from "../core/errors.ts";
import { RETENTION_EVENTS_MAX, RETENTION_MS_MAX } from "../core/limits.ts";
import {
  decodeSettings,
  encodeSettings,
  judgeSettings,
  retentionBoundary,
  type Settings,
} from "../storage/retention.ts";
import { encodeTombstone } from "../storage/deletion.ts";
import { encodeCbor } from "../storage/cbor.ts";
import {
  createGroup,
  eventId,
  KIND_MEMBERSHIP,
  KIND_SETTINGS,
  KIND_TOMBSTONE,
  signEvent,
  type StoredEvent,
} from "../storage/event.ts";
import { compareBytes } from "../core/bytes.ts";
import { generateKeyPair, type KeyPair } from "../storage/ed25519.ts";
import { ACTION_ADD, ACTION_MAKE_ADMIN, encodeMembership, GroupState } from "../storage/membership.ts";
import { queryAll, syncLink, tempNode, testGroup, until } from "./_helpers.ts";
import type { XfNode } from "../node.ts";

const enc = new TextEncoder();

function settingsEvent(key: KeyPair, gid: Uint8Array, s: Settings, ts: number) {
  return signEvent(key, { group: gid, ts, kind: KIND_SETTINGS, tags: [], payload: encodeSettings(s) });
}

function appEvent(key: KeyPair, gid: Uint8Array, ts: number, n: number) {
  return signEvent(key, { group: gid, ts, kind: 16, tags: [], payload: enc.encode(`event ${n}`) });
}

/** Every id the node holds in the group, in (ts, id) order. */
async function held(node: XfNode, gid: string): Promise<string[]> {
  return (await queryAll(node, gid)).map((b) => toHex(eventId(b)));
}

/** `(ts, id)` order, the Merkle set's. */
const compareItemsOf = (a: StoredEvent, b: StoredEvent) => a.ts - b.ts || compareBytes(a.id, b.id);

/** A group whose manifest is stamped `ts` (a group's newest event counts for retention_ms, whatever its kind). */
async function oldGroup(ts: number) {
  const owner = await generateKeyPair();
  const { gid, manifest } = await createGroup(owner, { name: "old", policy: 0, ts });
  return { owner, gid, manifest };
}

const codes = (rs: { status: string; code?: string }[]) => rs.map((r) => r.code ?? r.status);

// ---------- the rules ----------

Deno.test("encodeSettings() and decodeSettings() round-trip; anything but positive bounded integers under the two keys is BAD_EVENT", () => {
  for (
    const s of [{}, { retention_ms: 1 }, { retention_events: RETENTION_EVENTS_MAX }, {
      retention_ms: RETENTION_MS_MAX,
      retention_events: 7,
    }]
  ) {
    assertEquals(decodeSettings(encodeSettings(s)), s);
  }
  const bad = (payload: Uint8Array, what: string) => {
    const e = assertThrows(() => decodeSettings(payload), XfError);
    assertEquals(e.code, "BAD_EVENT", what);
    assert(e.message.includes("settings payload"), e.message);
  };
  bad(new Uint8Array(), "no bytes");
  bad(encodeCbor([1, 2]), "an array");
  bad(encodeCbor(new Map([["retention_days", 3]])), "an unknown key");
  bad(encodeCbor(new Map([["retention_ms", 0]])), "zero");
  bad(encodeCbor(new Map([["retention_ms", -5]])), "negative");
  bad(encodeCbor(new Map([["retention_events", RETENTION_EVENTS_MAX + 1]])), "over the bound");
  bad(encodeCbor(new Map([["retention_ms", "60000"]])), "a text value");
  bad(new Uint8Array([...encodeCbor(new Map([["retention_ms", 5]])), 0]), "trailing bytes");
  // Keys out of deterministic order: retention_events (longer) before retention_ms.
  bad(
    new Uint8Array([
      0xa2,
      ...encodeCbor("retention_events"),
      0x01,
      ...encodeCbor("retention_ms"),
      0x01,
    ]),
    "unsorted keys",
  );
  assertThrows(() => encodeSettings({ retention_ms: 1.5 }), XfError, "not an integer");
});

Deno.test("retentionBoundary(): from the newest ts back retention_ms, the N-th newest's ts, the greater; 0 without settings", () => {
  assertEquals(retentionBoundary(null, 5000, 4000), 0);
  assertEquals(retentionBoundary({}, 5000, null), 0);
  assertEquals(retentionBoundary({ retention_ms: 1000 }, 5000, null), 4000);
  assertEquals(retentionBoundary({ retention_ms: 10_000 }, 5000, null), 0);
  assertEquals(retentionBoundary({ retention_events: 3 }, 5000, 4500), 4500);
  assertEquals(retentionBoundary({ retention_events: 3 }, 5000, null), 0);
  assertEquals(retentionBoundary({ retention_ms: 1000, retention_events: 3 }, 5000, 4500), 4500);
  assertEquals(retentionBoundary({ retention_ms: 100, retention_events: 3 }, 5000, 4500), 4900);
});

Deno.test("judgeSettings(): the owner or an admin at the event's ts; nobody else", async () => {
  const [owner, admin, alice] = [await generateKeyPair(), await generateKeyPair(), await generateKeyPair()];
  const st = new GroupState(owner.publicKey, 0);
  st.apply([{
    ts: 100,
    id: new Uint8Array(32).fill(1),
    author: owner.publicKey,
    payload: encodeMembership({ action: ACTION_MAKE_ADMIN, member: admin.publicKey }),
  }]);
  assert(judgeSettings(st, { author: owner.publicKey, ts: 1 }).ok);
  assert(judgeSettings(st, { author: admin.publicKey, ts: 100 }).ok);
  assert(!judgeSettings(st, { author: admin.publicKey, ts: 99 }).ok);
  const j = judgeSettings(st, { author: alice.publicKey, ts: 500 });
  assert(!j.ok && j.code === "FORBIDDEN");
});

// ---------- a node ----------

Deno.test("Settings: the owner's or an admin's are stored, anyone else's FORBIDDEN, a bad payload BAD_EVENT; never deleted", async () => {
  const t = await tempNode();
  try {
    const g = await testGroup();
    const alice = await generateKeyPair();
    await t.node.publish(g.manifest);
    const now = Date.now();
    const own = await settingsEvent(g.owner, g.gid, { retention_events: 1000 }, now);
    const theirs = await settingsEvent(alice, g.gid, { retention_events: 1 }, now);
    const bad = await signEvent(g.owner, {
      group: g.gid,
      ts: now,
      kind: KIND_SETTINGS,
      tags: [],
      payload: encodeCbor(new Map([["retention_days", 1]])),
    });
    assertEquals(codes(await t.node.publish([own, theirs, bad])), ["stored", "FORBIDDEN", "BAD_EVENT"]);
    const del = await signEvent(g.owner, {
      group: g.gid,
      ts: now,
      kind: KIND_TOMBSTONE,
      tags: [],
      payload: encodeTombstone([own.id]),
    });
    const [r] = await t.node.publish(del);
    assert(r!.code === "FORBIDDEN" && r!.message!.includes("may never be deleted"), JSON.stringify(r));
  } finally {
    await t.done();
  }
});

/** A group with `n` app events one second apart ending at `end`, a member added and a tombstone, early. */
async function populated(node: XfNode, n: number, end: number) {
  const g = await testGroup();
  const alice = await generateKeyPair();
  const early = [
    await signEvent(g.owner, {
      group: g.gid,
      ts: end - (n + 100) * 1000,
      kind: KIND_MEMBERSHIP,
      tags: [],
      payload: encodeMembership({ action: ACTION_ADD, member: alice.publicKey }),
    }),
  ];
  const evs: StoredEvent[] = [];
  for (let i = 0; i < n; i++) evs.push(await appEvent(i % 2 ? alice : g.owner, g.gid, end - (n - 1 - i) * 1000, i));
  const tomb = await signEvent(g.owner, {
    group: g.gid,
    ts: end - (n + 50) * 1000,
    kind: KIND_TOMBSTONE,
    tags: [],
    payload: encodeTombstone([crypto.getRandomValues(new Uint8Array(32))]),
  });
  assertEquals(codes(await node.publish([g.manifest, ...early, ...evs, tomb])).filter((c) => c !== "stored"), []);
  return { g, gid: toHex(g.gid), alice, evs, engine: [g.manifest, ...early, tomb] };
}

Deno.test("retention_ms forgets application events older than the newest ts minus it; engine events stay; late ones EXPIRED", async () => {
  const t = await tempNode({ limits: { retention_prune_events_max: 7 } });
  try {
    const end = Date.now() + 60_000;
    const { g, gid, evs, engine } = await populated(t.node, 60, end);
    const s = await settingsEvent(g.owner, g.gid, { retention_ms: 20_000 }, end - 30_000);
    assertEquals(codes(await t.node.publish(s)), ["stored"]);
    // The newest event is evs[59] at `end`: events from end - 20 s on are kept (21 of them), in bounded writes.
    const keep = evs.filter((e) => e.ts >= end - 20_000);
    assertEquals(keep.length, 21);
    const want = [...engine, s, ...keep].sort(compareItemsOf).map((e) => toHex(e.id));
    await until(async () => (await t.node.merkle(gid))!.count === want.length);
    assertEquals(await held(t.node, gid), want);
    assertEquals(await t.node.retained(gid), end - 20_000);
    for (const e of evs.slice(0, 5)) assertEquals(await t.node.get(toHex(e.id)), null);
    // A late arrival past the boundary is refused; an engine event that old is not.
    const late = await appEvent(g.owner, g.gid, end - 25_000, 1000);
    const oldTomb = await signEvent(g.owner, {
      group: g.gid,
      ts: end - 500_000,
      kind: KIND_TOMBSTONE,
      tags: [],
      payload: encodeTombstone([crypto.getRandomValues(new Uint8Array(32))]),
    });
    const res = await t.node.publish([late, evs[0]!, oldTomb]);
    assertEquals(codes(res), ["EXPIRED", "EXPIRED", "stored"]);
    assert((await t.node.fsck(gid))!.ok);
    // A newer event moves the boundary on: 10 s later, 10 more are forgotten.
    const next = await appEvent(g.owner, g.gid, end + 10_000, 2000);
    await t.node.publish(next);
    await until(async () => (await t.node.retained(gid)) === end - 10_000);
    await until(async () => (await t.node.merkle(gid))!.count === want.length - 10 + 1 + 1);
  } finally {
    await t.done();
  }
});

Deno.test("retention_events keeps the newest N events of the set (every kind counts; engine events stay); the latest settings win", async () => {
  const t = await tempNode();
  try {
    const end = Date.now() + 60_000;
    const { g, gid, evs, engine } = await populated(t.node, 50, end);
    // Two settings: the later by ts wins, whatever the order they come in.
    const later = await settingsEvent(g.owner, g.gid, { retention_events: 12 }, end - 100_000);
    const earlier = await settingsEvent(g.owner, g.gid, { retention_events: 40 }, end - 200_000);
    await t.node.publish(later);
    await t.node.publish(earlier);
    // The set in (ts, id) order; the 12th newest is an app event: it and every later event stay.
    const all = [...engine, later, earlier, ...evs].sort(compareItemsOf);
    const boundary = all[all.length - 12]!.ts;
    const want = all.filter((e) => e.kind < 16 || e.ts >= boundary).map((e) => toHex(e.id));
    await until(async () => (await t.node.merkle(gid))!.count === want.length);
    assertEquals(await held(t.node, gid), want);
    assertEquals(await t.node.retained(gid), boundary);
  } finally {
    await t.done();
  }
});

Deno.test("A restart keeps retention: the settings, the boundary, the events forgotten, and late ones refused", async () => {
  const dir = await Deno.makeTempDir({ prefix: "xf-ret-" });
  try {
    const end = Date.now() + 60_000;
    let t = await tempNode({ dataDir: dir });
    const { g, gid, evs } = await populated(t.node, 30, end);
    await t.node.publish(await settingsEvent(g.owner, g.gid, { retention_ms: 9_000 }, end));
    await until(async () => (await t.node.get(toHex(evs[0]!.id))) === null);
    await until(async () => (await t.node.merkle(gid))!.count === 3 + 1 + 10);
    const root = (await t.node.merkle(gid))!.root;
    await t.node.close();
    t = await tempNode({ dataDir: dir });
    try {
      assertEquals((await t.node.merkle(gid))!.root, root);
      assertEquals(await t.node.retained(gid), end - 9_000);
      assertEquals(codes(await t.node.publish(evs[3]!)), ["EXPIRED"]);
      assertEquals(codes(await t.node.publish(evs[29]!)), ["duplicate"]);
    } finally {
      await t.node.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});

/** Pipe two nodes together in-process: a is the client (it initiates), b the server. */

Deno.test("Two nodes whose writers' clocks differ by two minutes agree on the boundary and the root after sync", async () => {
  const a = await tempNode(), b = await tempNode();
  try {
    const now = Date.now();
    const g = await oldGroup(now - 600_000);
    const gid = toHex(g.gid);
    // a's writer runs a minute ahead, b's a minute behind: each node has its own events and the other's are older
    // or newer by its clock; the boundary depends on the set only, not on either node's clock.
    const onA: StoredEvent[] = [];
    const onB: StoredEvent[] = [];
    for (let i = 0; i < 40; i++) onA.push(await appEvent(g.owner, g.gid, now + 60_000 - (40 - i) * 3000, i));
    for (let i = 0; i < 40; i++) onB.push(await appEvent(g.owner, g.gid, now - 60_000 - (40 - i) * 3000, 100 + i));
    const s = await settingsEvent(g.owner, g.gid, { retention_ms: 90_000 }, now - 300_000);
    await a.node.publish([g.manifest, s, ...onA]);
    await b.node.publish([g.manifest, s, ...onB]);
    await until(async () => (await b.node.retained(gid)) === onB[39]!.ts - 90_000);
    const { client, server } = syncLink(a.node, b.node);
    await client.sync(gid);
    // After sync both hold the newest ts from a: the boundary is the same on both, and so are the sets.
    const boundary = onA[39]!.ts - 90_000;
    await until(async () => (await a.node.retained(gid)) === boundary && (await b.node.retained(gid)) === boundary);
    const want = [g.manifest, s, ...onA, ...onB].filter((e) => e.kind < 16 || e.ts >= boundary).length;
    await until(async () => (await a.node.merkle(gid))!.count === want && (await b.node.merkle(gid))!.count === want);
    assertEquals((await a.node.merkle(gid))!.root, (await b.node.merkle(gid))!.root);
    assertEquals(await held(a.node, gid), await held(b.node, gid));
    // Syncing again moves nothing back: what one forgot the other forgot too.
    await client.sync(gid);
    assertEquals((await a.node.merkle(gid))!.root, (await b.node.merkle(gid))!.root);
    client.close();
    server.close();
  } finally {
    await a.done();
    await b.done();
  }
});

Deno.test("decode: application events older than the boundary the index gave (at load, then by signal) are EXPIRED; engine events are not", async () => {
  const { logic: decode } = await import("../actors/decode.ts");
  const { packBatch } = await import("../actors/batch.ts");
  const { limitsWith } = await import("../core/limits.ts");
  const g = await oldGroup(1000);
  const gid = toHex(g.gid);
  const evs = [
    await appEvent(g.owner, g.gid, 5000, 0),
    await appEvent(g.owner, g.gid, 6000, 1),
    await signEvent(g.owner, {
      group: g.gid,
      ts: 10,
      kind: KIND_TOMBSTONE,
      tags: [],
      payload: encodeTombstone([new Uint8Array(32).fill(1)]),
    }),
  ];
  const st = decode.init({ limits: limitsWith({}) });
  const run = (tok: number, retained?: number) => {
    const batch = packBatch(evs.map((e, i) => ({ bytes: e.bytes, req: tok, idx: i, id: e.id, seq: 0 })));
    decode.receive(st, {
      type: "input",
      from: "up",
      tok,
      now: Date.now(),
      msg: { type: "batch", batch, requests: [], deferred: [] },
    });
    decode.receive(st, { type: "verified", tok, ok: evs.map(() => true) });
    if (retained !== undefined) {
      const state = new GroupState(g.owner.publicKey, 0).toJSON();
      decode.receive(st, { type: "loaded", groups: [[gid, state, retained]] });
    }
    const eff = decode.receive(st, { type: "targets", tok, found: [null] }) as {
      do: string;
      msg?: { type: string; items?: { idx: number; code?: string }[] };
    }[];
    return Object.fromEntries(
      eff.filter((e) => e.do === "report" && e.msg!.type === "results").flatMap((e) => e.msg!.items!).map((
        r,
      ) => [r.idx, r.code]),
    );
  };
  assertEquals(run(1, 5500), { 0: "EXPIRED" });
  decode.receive(st, { type: "signal", from: "index", msg: { type: "retained", gids: [gid], ts: [7000] } });
  assertEquals(run(2), { 0: "EXPIRED", 1: "EXPIRED" });
});

Deno.test("A prune that failed is done again every retention_prune_ms, with no write to start it", async () => {
  const dir = await Deno.makeTempDir({ prefix: "xf-ret-" });
  // The first retention write fails (RocksDB refuses it); the index's own writes go through.
  const { openRocks } = await import("../storage/kv_rocks.ts");
  const { metaKey } = await import("../storage/keys.ts");
  const probe = await openRocks(`${dir}/probe`);
  const proto = Object.getPrototypeOf(probe) as { batch(ops: unknown[], o?: unknown): Promise<void> };
  await probe.close();
  const original = proto.batch;
  const checkpoint = toHex(metaKey("checkpoint"));
  let failed = 0;
  proto.batch = function (this: unknown, ops: unknown[], o?: unknown) {
    const isPrune = ops.length > 0 &&
      (ops as { type: string; key: Uint8Array }[]).some((op) => op.type === "del") &&
      !(ops as { key: Uint8Array }[]).some((op) => toHex(op.key) === checkpoint);
    if (isPrune && failed === 0) {
      failed++;
      return Promise.reject(new Error("injected: the disk said no"));
    }
    return original.call(this, ops, o);
  };
  const t = await tempNode({ dataDir: `${dir}/node`, limits: { retention_prune_ms: 200 } });
  try {
    const end = Date.now() + 60_000;
    const { g, gid } = await populated(t.node, 20, end);
    await t.node.publish(await settingsEvent(g.owner, g.gid, { retention_events: 5 }, end - 100_000));
    await until(() => failed === 1);
    // Nothing else is written, yet the next visit forgets them: 5 newest plus the 4 engine events.
    await until(async () => (await t.node.merkle(gid))!.count === 5 + 4, 5000);
  } finally {
    proto.batch = original;
    await t.done();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});
