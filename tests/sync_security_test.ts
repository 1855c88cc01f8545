// Every way in that should be closed, tried and refused with its code.
import { answerChallenge } from "../storage/auth_message.ts";
import { CHALLENGE_TTL_MS } from "../core/limits.ts";
import { toHex } from "../core/bytes.ts";
import { assert, assertEquals, assertRejects } from "@std/assert";
import { closedGroup, makeEvents, tempNode, testGroup, until } from "./_helpers.ts";
import { channelPair } from "../net/peers.ts";
import { handPeer, pipedPeer, SYNC_INFO } from "./_peer.ts";
import { Authenticator } from "../net/auth.ts";
import { createApp } from "../net/app.ts";
import type { XfNode } from "../node.ts";
import { decodeCbor, encodeCbor } from "../storage/cbor.ts";
import { generateKeyPair, type KeyPair } from "../storage/ed25519.ts";
import { signEvent } from "../storage/event.ts";
import { ACTION_ADD, ACTION_REMOVE, encodeMembership } from "../storage/membership.ts";
import { XfError } from "../core/errors.ts";

/** A hand-driven peer talking to a node's server session: the real handshake as `key`, then any frames. */
function rawPeer(node: XfNode, key: KeyPair, info: Record<string, unknown> = SYNC_INFO) {
  return pipedPeer((ch) => node.sync.accept(ch, "raw"), key, "sync", info);
}

Deno.test("Sync refuses a peer that skips the handshake: frames in clear are BAD_FRAME", async () => {
  const t = await tempNode();
  try {
    const [mine, theirs] = channelPair();
    t.node.sync.accept(theirs, "raw");
    const got: Map<string, unknown>[] = [];
    let closed = "";
    mine.onFrame = (f) => got.push(decodeCbor(f) as Map<string, unknown>);
    mine.onClose = (r) => closed = r;
    mine.send(encodeCbor(new Map([["t", "sub"], ["gid", "ab".repeat(32)]])));
    await until(() => closed !== "");
    assertEquals(got.map((f) => f.get("code")), ["BAD_FRAME"]);
  } finally {
    await t.done();
  }
});

Deno.test("Sync refuses a proof signed by another key than the one it claims: BAD_AUTH", async () => {
  const t = await tempNode();
  try {
    const claimed = await generateKeyPair(), actual = await generateKeyPair();
    const p = rawPeer(t.node, { ...actual, publicKey: claimed.publicKey });
    await p.sec.ready.catch(() => {});
    assertEquals(await p.endCode(), "BAD_AUTH");
    assertEquals(t.node.sync.sessionStats().filter((s) => s.peer === toHex(claimed.publicKey)), []);
  } finally {
    await t.done();
  }
});

Deno.test("Sync refuses a handshake replayed byte for byte from an earlier session: BAD_AUTH", async () => {
  const t = await tempNode();
  try {
    const me = await generateKeyPair();
    // Record what a real peer sends.
    const [mine, theirs] = channelPair();
    const sent: Uint8Array[] = [];
    const send = mine.send;
    mine.send = (f) => (sent.push(f.slice()), send(f));
    t.node.sync.accept(theirs, "raw");
    const p = handPeer(mine, me, "sync", SYNC_INFO);
    await p.sec.ready;
    assertEquals(sent.length, 2); // hs1, hs3
    // Replay both messages to a fresh session.
    const [m2, t2] = channelPair();
    const got: Map<string, unknown>[] = [];
    let closed = "";
    m2.onFrame = (f) => got.push(decodeCbor(f) as Map<string, unknown>);
    m2.onClose = (r) => closed = r;
    t.node.sync.accept(t2, "raw");
    m2.send(sent[0]!);
    await until(() => got.length >= 1); // the node answers hs1 with a fresh ephemeral key
    assertEquals(got[0]!.get("t"), "hs2");
    m2.send(sent[1]!);
    await until(() => closed !== "");
    assertEquals(got.find((f) => f.get("t") === "error")?.get("code"), "BAD_AUTH");
  } finally {
    await t.done();
  }
});

Deno.test("Authenticator refuses expired and replayed challenges", async () => {
  let now = 1_000_000;
  const server = await generateKeyPair(), client = await generateKeyPair();
  const auth = new Authenticator(server, () => now);
  const { challenge } = auth.challenge();
  const sig = await answerChallenge(client, "http", challenge, server.publicKey);
  now += CHALLENGE_TTL_MS + 1;
  const expired = await assertRejects(() => auth.check("http", challenge, client.publicKey, sig), XfError);
  assertEquals((expired as XfError).code, "CHALLENGE_EXPIRED");
  const fresh = auth.challenge().challenge;
  const sig2 = await answerChallenge(client, "http", fresh, server.publicKey);
  await auth.check("http", fresh, client.publicKey, sig2);
  const e = await assertRejects(() => auth.check("http", fresh, client.publicKey, sig2), XfError);
  assertEquals((e as XfError).code, "CHALLENGE_REPLAYED");
  const other = auth.challenge().challenge;
  const wrongPurpose = await answerChallenge(client, "sync", other, server.publicKey);
  assertEquals(
    (await assertRejects(() => auth.check("http", other, client.publicKey, wrongPurpose), XfError) as XfError).code,
    "BAD_AUTH",
  );
});

Deno.test("A removed member's later events are rejected: FORBIDDEN", async () => {
  const t = await tempNode();
  try {
    const { owner, member, gid } = await closedGroup(t.node);
    const before = await signEvent(member, {
      group: gid,
      ts: Date.now() - 50_000,
      kind: 16,
      tags: [],
      payload: new Uint8Array(),
    });
    assertEquals((await t.node.publish(before))[0]!.status, "stored");
    const remove = await signEvent(owner, {
      group: gid,
      ts: Date.now() - 40_000,
      kind: 1,
      tags: [],
      payload: encodeMembership({ action: ACTION_REMOVE, member: member.publicKey }),
    });
    assertEquals((await t.node.publish(remove))[0]!.status, "stored");
    const after = await signEvent(member, {
      group: gid,
      ts: Date.now() - 30_000,
      kind: 16,
      tags: [],
      payload: new Uint8Array(),
    });
    assertEquals((await t.node.publish(after))[0]!.code, "FORBIDDEN");
    // A member cannot change membership; a stranger cannot write.
    const stranger = await generateKeyPair();
    const selfAdd = await signEvent(stranger, {
      group: gid,
      ts: Date.now(),
      kind: 1,
      tags: [],
      payload: encodeMembership({ action: ACTION_ADD, member: stranger.publicKey }),
    });
    const post = await signEvent(stranger, {
      group: gid,
      ts: Date.now(),
      kind: 16,
      tags: [],
      payload: new Uint8Array(),
    });
    assertEquals((await t.node.publish([selfAdd, post])).map((r) => r.code), ["FORBIDDEN", "FORBIDDEN"]);
  } finally {
    await t.done();
  }
});

Deno.test("A non-member cannot sync a closed group, nor learn it exists", async () => {
  const t = await tempNode();
  try {
    const { gid, member } = await closedGroup(t.node);
    const stranger = await generateKeyPair();
    const p = rawPeer(t.node, stranger);
    p.send("sub", { gid: toHex(gid) });
    const e1 = await p.next("error");
    p.send("sub", { gid: "cd".repeat(32) });
    const e2 = await p.next("error");
    assertEquals([e1.get("code"), e2.get("code")], ["UNKNOWN_GROUP", "UNKNOWN_GROUP"]);
    assertEquals(
      String(e1.get("message")).replace(toHex(gid), "X"),
      String(e2.get("message")).replace("cd".repeat(32), "X"),
    );
    // A member may.
    const q = rawPeer(t.node, member);
    await q.sec.ready;
    q.send("sub", { gid: toHex(gid) });
    assertEquals((await q.next("sub.ok")).get("gid"), toHex(gid));
  } finally {
    await t.done();
  }
});

Deno.test("HTTP reads of a closed group need a member's token; others get the unknown-group answer", async () => {
  const t = await tempNode();
  const app = createApp(t.node);
  try {
    const { gid, member, manifest } = await closedGroup(t.node);
    const g = toHex(gid);
    const paths = [
      `/v1/groups/${g}/events`,
      `/v1/groups/${g}/merkle`,
      `/v1/groups/${g}/proof/${toHex(manifest.id)}`,
      `/v1/groups/${g}/peers`,
    ];
    const tokenFor = async (k: KeyPair) => {
      const ch = await (await app.request("/v1/auth/challenge")).json();
      const sig = await answerChallenge(
        k,
        "http",
        Uint8Array.from(ch.challenge.match(/../g), (h: string) => parseInt(h, 16)),
        t.node.key.publicKey,
      );
      const r = await app.request("/v1/auth/token", {
        method: "POST",
        body: JSON.stringify({ key: toHex(k.publicKey), challenge: ch.challenge, sig: toHex(sig) }),
      });
      return { status: r.status, body: await r.json() };
    };
    const stranger = await generateKeyPair();
    const strangerToken = (await tokenFor(stranger)).body.token;
    for (const path of paths) {
      for (const headers of [{}, { authorization: `Bearer ${strangerToken}` }, { authorization: "Bearer nonsense" }]) {
        const r = await app.request(path, { headers });
        const body = await r.json();
        assertEquals([r.status, body.error], [404, "UNKNOWN_GROUP"], path);
      }
    }
    const ev = await app.request(`/v1/events/${toHex(manifest.id)}`);
    assertEquals([ev.status, (await ev.json()).error], [404, "NOT_FOUND"]);
    // Writing without a member's token looks like an unknown group too.
    const w = await app.request(`/v1/groups/${g}/events`, {
      method: "POST",
      body: manifest.bytes as BodyInit,
      headers: { "content-type": "application/cbor" },
    });
    assertEquals([w.status, (await w.json()).error], [404, "UNKNOWN_GROUP"]);
    const memberToken = (await tokenFor(member)).body.token;
    for (const path of paths) {
      const r = await app.request(path, { headers: { authorization: `Bearer ${memberToken}` } });
      assertEquals(r.status, 200, path);
      await r.body?.cancel();
    }
    // A token request with a replayed challenge or a wrong signature is refused.
    const ch = await (await app.request("/v1/auth/challenge")).json();
    const bad = await app.request("/v1/auth/token", {
      method: "POST",
      body: JSON.stringify({ key: toHex(member.publicKey), challenge: ch.challenge, sig: "00".repeat(64) }),
    });
    assertEquals([bad.status, (await bad.json()).error], [401, "BAD_AUTH"]);
    const again = await app.request("/v1/auth/token", {
      method: "POST",
      body: JSON.stringify({ key: toHex(member.publicKey), challenge: ch.challenge, sig: "00".repeat(64) }),
    });
    assertEquals([again.status, (await again.json()).error], [401, "CHALLENGE_REPLAYED"]);
  } finally {
    await t.done();
  }
});

Deno.test("Sync refuses events for a group the peer did not subscribe to: NOT_SUBSCRIBED", async () => {
  const t = await tempNode();
  try {
    const g = await testGroup();
    await t.node.publish(g.manifest);
    const [ev] = await makeEvents(g, 1);
    const p = rawPeer(t.node, await generateKeyPair());
    await p.sec.ready;
    p.send("events", { gid: toHex(g.gid), events: [ev!.bytes] });
    assertEquals((await p.next("error")).get("code"), "NOT_SUBSCRIBED");
    assertEquals(await t.node.get(toHex(ev!.id)), null);
    // Repeated violations cut the peer off.
    p.send("events", { gid: toHex(g.gid), events: [ev!.bytes] });
    p.send("events", { gid: toHex(g.gid), events: [ev!.bytes] });
    assert((await p.closed()).startsWith("NOT_SUBSCRIBED"));
  } finally {
    await t.done();
  }
});

Deno.test("Sync cuts off oversized frames, garbage, and sends beyond credit", async () => {
  const t = await tempNode({ limits: { sync_frame_bytes_max: 4096, sync_credit_events: 5 } });
  try {
    const p = rawPeer(t.node, await generateKeyPair());
    await p.sec.ready;
    p.sec.send(new Uint8Array(5000));
    assertEquals(await p.endCode(), "FRAME_TOO_LARGE");
    const q = rawPeer(t.node, await generateKeyPair());
    await q.sec.ready;
    q.sec.send(new Uint8Array([0xff, 0x00, 0x13]));
    assertEquals(await q.endCode(), "BAD_FRAME");
    const g = await testGroup();
    await t.node.publish(g.manifest);
    const r = rawPeer(t.node, await generateKeyPair());
    r.send("sub", { gid: toHex(g.gid) });
    await r.next("sub.ok");
    const evs = await makeEvents(g, 6);
    r.send("events", { gid: toHex(g.gid), events: evs.map((e) => e.bytes) });
    assertEquals(await r.endCode(), "CREDIT_EXCEEDED");
  } finally {
    await t.done();
  }
});

Deno.test("Sync cuts off a peer that never grants credit, and its memory stays bounded: PEER_TOO_SLOW", async () => {
  const t = await tempNode({ limits: { sync_peer_queue_bytes_max: 4000 } });
  try {
    const g = await testGroup();
    await t.node.publish(g.manifest);
    const p = rawPeer(t.node, await generateKeyPair(), { ...SYNC_INFO, credit: 0 }); // grants no credit, ever
    p.send("sub", { gid: toHex(g.gid) });
    await p.next("sub.ok");
    const evs = await makeEvents(g, 80);
    await t.node.publish(evs); // streamed live to the peer, which takes none
    assertEquals(await p.endCode(), "PEER_TOO_SLOW");
    assertEquals(p.frames.filter((f) => f.get("t") === "events").length, 0);
    assertEquals(t.node.sync.memory.used, 0); // what it held is given back
  } finally {
    await t.done();
  }
});
