// Attacks on closed groups and on the node's peers, through real sockets against running nodes.
import { toHex } from "../core/bytes.ts";
import { assert, assertEquals } from "@std/assert";
import { makeEvents, tempNode, until } from "./_helpers.ts";
import { serve } from "../net/server.ts";
import { socketChannel } from "../net/peers.ts";
import { SecureChannel } from "../net/secure.ts";
import { Reconciler } from "../merkle/negentropy.ts";
import { VectorStorage } from "../merkle/negentropy_storage.ts";
import { decodeCbor, encodeCbor } from "../storage/cbor.ts";
import { generateKeyPair, type KeyPair } from "../storage/ed25519.ts";
import { createGroup, signEvent } from "../storage/event.ts";
import { ACTION_ADD, ACTION_REMOVE, encodeMembership } from "../storage/membership.ts";
import type { XfNode } from "../node.ts";
import type { Limits } from "../core/limits.ts";
import { socketPeer, SYNC_INFO } from "./_peer.ts";

/** A node served on 127.0.0.1:0 with a given identity. */
async function served(key?: KeyPair, limits: Partial<Limits> = {}) {
  const t = await tempNode({ limits, ...(key ? { key } : {}) } as never);
  const s = await serve(t.node, { host: "127.0.0.1", port: 0 });
  t.node.publicUrl = s.url.replace(/^http/, "ws");
  return {
    node: t.node,
    url: s.url,
    ws: s.url.replace(/^http/, "ws"),
    async done() {
      await s.shutdown();
      await t.done();
    },
  };
}

/** A closed group on `node` with `members` added, and `n` secret events. */
async function closedGroupWith(node: XfNode, others: Uint8Array[], n = 5) {
  // The node holding the group is a member itself: nodes sync a closed group only with member nodes.
  const members = [node.key.publicKey, ...others];
  const owner = await generateKeyPair();
  const { gid, manifest } = await createGroup(owner, { name: "secret", policy: 1 });
  const adds = [];
  for (const [i, m] of members.entries()) {
    adds.push(
      await signEvent(owner, {
        group: gid,
        ts: Date.now() - 200_000 + i,
        kind: 1,
        tags: [],
        payload: encodeMembership({ action: ACTION_ADD, member: m }),
      }),
    );
  }
  const secrets = [];
  for (let i = 0; i < n; i++) {
    secrets.push(
      await signEvent(owner, {
        group: gid,
        ts: Date.now() - 100_000 + i,
        kind: 16,
        tags: [],
        payload: new TextEncoder().encode(`TOP-SECRET-${i}`),
      }),
    );
  }
  const res = await node.publish([manifest, ...adds, ...secrets]);
  assert(res.every((r) => r.status === "stored"), JSON.stringify(res));
  return { owner, gid, hex: toHex(gid), manifest, secrets };
}

const SECRET = new TextEncoder().encode("TOP-SECRET-");
function containsSecret(bytes: Uint8Array): boolean {
  outer: for (let i = 0; i + SECRET.length <= bytes.length; i++) {
    for (let j = 0; j < SECRET.length; j++) if (bytes[i + j] !== SECRET[j]) continue outer;
    return true;
  }
  return false;
}

Deno.test("A non-member's unsolicited sub.ok reads nothing of a closed group: UNSOLICITED", async () => {
  const victim = await served();
  try {
    const g = await closedGroupWith(victim.node, []);
    const attacker = await generateKeyPair();
    const p = await socketPeer(victim.url, "/v1/sync", attacker, "sync", SYNC_INFO);
    p.send("sub.ok", { gid: g.hex, root: "", count: 0 });
    assertEquals(await p.endCode(), "UNSOLICITED");
    assertEquals(p.frames.filter((f) => f.get("t") === "neg" || f.get("t") === "events"), []);
    // Nor by asking for the ids directly, nor by a neg of its own.
    const q = await socketPeer(victim.url, "/v1/sync", attacker, "sync", SYNC_INFO);
    q.send("want", { gid: g.hex, ids: g.secrets.map((e) => e.id) });
    q.send("neg", { gid: g.hex, msg: new Uint8Array([0x61]) });
    const code = await q.endCode();
    assert(code === "UNSOLICITED", code);
    assertEquals(q.frames.filter((f) => f.get("t") === "events"), []);
    assertEquals(q.frames.find((f) => f.get("t") === "error")?.get("code"), "NOT_SUBSCRIBED");
  } finally {
    await victim.done();
  }
});

Deno.test("A relay between two member nodes can neither read their session nor pass as one of them", async () => {
  const sKey = await generateKeyPair();
  const victim = await served(), member = await served(sKey);
  // The attacker runs a WebSocket endpoint; the member dials it (as it would an address found in the DHT), and the
  // attacker relays to the victim, claiming nothing of its own.
  const wire: Uint8Array[] = [];
  let substitute = false;
  const attackerKey = await generateKeyPair();
  const relay = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
    const { socket: fromMember, response } = Deno.upgradeWebSocket(req);
    fromMember.binaryType = "arraybuffer";
    const toVictim = new WebSocket(`${victim.ws}/v1/sync`);
    toVictim.binaryType = "arraybuffer";
    const queue: Uint8Array[] = [];
    let first = true;
    fromMember.onmessage = (ev) => {
      let b = new Uint8Array(ev.data as ArrayBuffer);
      if (first && substitute) {
        // Active attack: swap the member's ephemeral key for the attacker's own in hs1.
        const m = decodeCbor(b) as Map<string, unknown>;
        m.set("e", new SecureChannelKey().publicKey);
        b = encodeCbor(m as never);
      }
      first = false;
      wire.push(b);
      if (toVictim.readyState === WebSocket.OPEN) toVictim.send(b);
      else queue.push(b);
    };
    toVictim.onopen = () => queue.splice(0).forEach((b) => toVictim.send(b));
    toVictim.onmessage = (ev) => {
      const b = new Uint8Array(ev.data as ArrayBuffer);
      wire.push(b);
      if (fromMember.readyState === WebSocket.OPEN) fromMember.send(b);
    };
    toVictim.onclose = () => fromMember.readyState === WebSocket.OPEN && fromMember.close();
    fromMember.onclose = () => toVictim.readyState === WebSocket.OPEN && toVictim.close();
    return response;
  });
  const relayUrl = `ws://127.0.0.1:${(relay.addr as Deno.NetAddr).port}`;
  try {
    const g = await closedGroupWith(victim.node, [sKey.publicKey], 20);
    // Transparent relay: the member and the victim talk end to end; the attacker sees ciphertext only.
    const s = await member.node.sync.connect(relayUrl, [g.hex]);
    const total = (await victim.node.merkle(g.hex))!.count;
    await until(async () => (await member.node.merkle(g.hex))?.count === total);
    s.close();
    assert(wire.length > 4);
    assertEquals(wire.filter(containsSecret).length, 0, "an event payload crossed the relay in clear");
    // The relay injects a frame of its own into a live session: the victim cannot authenticate it and ends it.
    wire.length = 0;
    // Active attack: the relay substitutes its own ephemeral key; neither side accepts the other's proof.
    substitute = true;
    let refused = "";
    await member.node.sync.connect(relayUrl, [g.hex]).catch((e) => refused = e.code);
    assertEquals(refused, "BAD_AUTH");
    // And an attacker that dials the victim itself, claiming the member's key, cannot sign for it.
    const p = await socketPeer(
      victim.url,
      "/v1/sync",
      { ...attackerKey, publicKey: sKey.publicKey },
      "sync",
      SYNC_INFO,
    );
    assertEquals(await p.endCode(), "BAD_AUTH");
    assertEquals(p.frames.filter((f) => f.get("t") === "events"), []);
  } finally {
    await relay.shutdown();
    await member.done();
    await victim.done();
  }
});

/** A throwaway X25519 key (the relay's substitute). */
class SecureChannelKey {
  readonly publicKey = crypto.getRandomValues(new Uint8Array(32));
}

Deno.test("A node asked to sync with a non-member's node offers it no closed group, even if it claims to hold them", async () => {
  const victim = await served();
  // A hostile node: it answers every sub with sub.ok and reconciles as if it held nothing, so an initiator that
  // trusted it would push everything.
  const evilKey = await generateKeyPair();
  const asked: string[] = [];
  const received: Uint8Array[] = [];
  const evil = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
    const { socket, response } = Deno.upgradeWebSocket(req);
    socket.onopen = () => {
      const sec = new SecureChannel(socketChannel(socket), {
        key: evilKey,
        purpose: "sync",
        role: "responder",
        info: SYNC_INFO,
        frameMax: 1 << 20,
        handshakeMs: 5000,
      });
      const send = (t: string, m: Record<string, unknown>) =>
        sec.send(encodeCbor(new Map<string, unknown>([["t", t], ...Object.entries(m)]) as never));
      sec.onFrame = (b) => {
        received.push(b);
        const f = decodeCbor(b) as Map<string, unknown>;
        const gid = f.get("gid") as string;
        if (f.get("t") === "sub") {
          asked.push(gid);
          send("sub.ok", { gid, root: "", count: 0 });
        }
        if (f.get("t") === "neg") {
          const empty = new VectorStorage();
          empty.seal();
          const r = new Reconciler(empty, { idListReply: true }).reconcile(f.get("msg") as Uint8Array);
          send("neg", { gid, msg: r.output ?? new Uint8Array([0x61]) });
        }
      };
    };
    return response;
  });
  try {
    const g = await closedGroupWith(victim.node, []);
    const open = await createGroup(await generateKeyPair(), { name: "open", policy: 0 });
    await victim.node.publish(open.manifest);
    const s = await victim.node.sync.connect(`ws://127.0.0.1:${(evil.addr as Deno.NetAddr).port}`);
    await new Promise((r) => setTimeout(r, 300));
    s.close();
    assert(!asked.includes(g.hex), "the closed group was named to a non-member");
    assert(asked.includes(toHex(open.gid)), "the open group should be offered");
    assertEquals(received.filter(containsSecret).length, 0);
  } finally {
    await evil.shutdown();
    await victim.done();
  }
});

Deno.test("A member removed while connected loses the group's session at once; nothing more is sent", async () => {
  const mKey = await generateKeyPair();
  const victim = await served();
  try {
    const g = await closedGroupWith(victim.node, [mKey.publicKey], 3);
    const p = await socketPeer(victim.url, "/v1/sync", mKey, "sync", SYNC_INFO);
    p.send("sub", { gid: g.hex });
    await p.next("sub.ok");
    const before = await signEvent(g.owner, {
      group: g.gid,
      ts: Date.now() - 1000,
      kind: 16,
      tags: [],
      payload: new TextEncoder().encode("still a member"),
    });
    await victim.node.publish(before);
    await until(() => p.frames.some((f) => f.get("t") === "events" && f.get("live")));
    const remove = await signEvent(g.owner, {
      group: g.gid,
      ts: Date.now(),
      kind: 1,
      tags: [],
      payload: encodeMembership({ action: ACTION_REMOVE, member: mKey.publicKey }),
    });
    await victim.node.publish(remove);
    const err = await p.next("error");
    assertEquals([err.get("code"), err.get("gid")], ["UNKNOWN_GROUP", g.hex]);
    p.frames.length = 0;
    const after = await signEvent(g.owner, {
      group: g.gid,
      ts: Date.now() + 1,
      kind: 16,
      tags: [],
      payload: new TextEncoder().encode("TOP-SECRET-after"),
    });
    await victim.node.publish(after);
    p.send("want", { gid: g.hex, ids: [after.id] });
    assertEquals((await p.next("error")).get("code"), "NOT_SUBSCRIBED");
    await new Promise((r) => setTimeout(r, 300));
    const evs = p.frames.filter((f) => f.get("t") === "events").flatMap((f) => f.get("events") as Uint8Array[]);
    assertEquals(evs.filter(containsSecret), []);
    // Its sub again is the unknown-group answer.
    p.send("sub", { gid: g.hex });
    assertEquals((await p.next("error")).get("code"), "UNKNOWN_GROUP");
  } finally {
    await victim.done();
  }
});

Deno.test("A removed member's event backdated to before its removal is judged by its ts, the same on every node", async () => {
  // The rule: membership is judged as of an event's ts, so every node reaches the same verdict whatever order
  // events arrive in (convergence). A removed member can therefore still sign events dated before its removal;
  // removal stops its reads at once and its writes from then on, not what it could have written before.
  const mKey = await generateKeyPair();
  const a = await served(), b = await served();
  try {
    const g = await closedGroupWith(a.node, [mKey.publicKey, b.node.key.publicKey], 0);
    const remove = await signEvent(g.owner, {
      group: g.gid,
      ts: Date.now() - 10_000,
      kind: 1,
      tags: [],
      payload: encodeMembership({ action: ACTION_REMOVE, member: mKey.publicKey }),
    });
    await a.node.publish(remove);
    const backdated = await signEvent(mKey, {
      group: g.gid,
      ts: Date.now() - 20_000,
      kind: 16,
      tags: [],
      payload: new Uint8Array([1]),
    });
    const late = await signEvent(mKey, {
      group: g.gid,
      ts: Date.now(),
      kind: 16,
      tags: [],
      payload: new Uint8Array([2]),
    });
    assertEquals((await a.node.publish([backdated, late])).map((r) => r.code ?? r.status), ["stored", "FORBIDDEN"]);
    // Node b gets the backdated event before the removal: the same verdicts.
    const held = (await a.node.query({ gid: g.hex, limit: 100 }))!.events.map((e) => e.slice());
    const isRemove = (e: Uint8Array) => toHex(e) === toHex(remove.bytes);
    const isManifest = (e: Uint8Array) => toHex(e) === toHex(g.manifest.bytes);
    await b.node.publish(g.manifest);
    const first = await b.node.publish(held.filter((e) => !isRemove(e) && !isManifest(e)));
    assert(first.every((r) => r.status === "stored"), JSON.stringify(first));
    assertEquals((await b.node.publish(remove))[0]!.status, "stored");
    assertEquals((await b.node.publish(late))[0]!.code, "FORBIDDEN");
    assertEquals((await a.node.merkle(g.hex))!.root, (await b.node.merkle(g.hex))!.root);
  } finally {
    await b.done();
    await a.done();
  }
});

Deno.test("A sync session's bytes on the wire carry no event payload in clear", async () => {
  const mKey = await generateKeyPair();
  const a = await served(), b = await served(mKey);
  try {
    const g = await closedGroupWith(a.node, [mKey.publicKey], 50);
    const s = await b.node.sync.connect(a.ws, [g.hex]);
    const total = (await a.node.merkle(g.hex))!.count;
    await until(async () => (await b.node.merkle(g.hex))?.count === total);
    const wire = s.secure.wire;
    assert(wire.bytesIn > 50 * 20, `only ${wire.bytesIn} bytes arrived`);
    s.close();
    // Capture by a recording channel: every byte handed to the socket.
    const rec: Uint8Array[] = [];
    const c = await served();
    try {
      const ws = new WebSocket(`${a.ws}/v1/sync`);
      await new Promise((r) => ws.onopen = r);
      const ch = socketChannel(ws);
      const origSend = ch.send;
      ch.send = (f) => (rec.push(f.slice()), origSend(f));
      const onFrame = () => ch.onFrame;
      const { SyncSession } = await import("../net/sync.ts");
      const sess = new SyncSession(b.node.sync, ch, "client", a.ws);
      const tap = onFrame();
      ch.onFrame = (f) => (rec.push(f.slice()), tap?.(f));
      sess.secure.onFrame; // the session reads through the secure channel
      await sess.ready();
      await b.node.publish(
        await signEvent(mKey, {
          group: g.gid,
          ts: Date.now(),
          kind: 16,
          tags: [],
          payload: new TextEncoder().encode("TOP-SECRET-live"),
        }),
      );
      await sess.sync(g.hex);
      await until(async () => (await a.node.merkle(g.hex))?.count === total + 1);
      sess.close();
    } finally {
      await c.done();
    }
    assert(rec.length > 3);
    assertEquals(rec.filter(containsSecret).length, 0, "an event payload crossed the wire in clear");
  } finally {
    await b.done();
    await a.done();
  }
});

Deno.test("Sessions are bounded per remote address, and an idle authenticated session is closed", async () => {
  const victim = await served(undefined, { sync_sessions_per_addr_max: 3, sync_idle_ms: 1500 });
  try {
    const k = await generateKeyPair();
    const peers = [];
    for (let i = 0; i < 3; i++) {
      const p = await socketPeer(victim.url, "/v1/sync", k, "sync", SYNC_INFO);
      await p.sec.ready;
      peers.push(p);
    }
    const fourth = await socketPeer(victim.url, "/v1/sync", k, "sync", SYNC_INFO);
    assertEquals(await fourth.endCode(), "OVERLOADED");
    // Those that subscribe to nothing are closed once idle, which frees the slots.
    for (const p of peers) assert((await p.closed(5000)).startsWith("idle"), "an idle session stayed open");
    const again = await socketPeer(victim.url, "/v1/sync", k, "sync", SYNC_INFO);
    await again.sec.ready;
    again.sec.close("done");
  } finally {
    await victim.done();
  }
});

Deno.test("A session's subscriptions are capped, apart from the node-wide subscriber limit", async () => {
  const victim = await served(undefined, { sync_session_groups_max: 2 });
  try {
    const gids = [];
    for (let i = 0; i < 3; i++) {
      const g = await createGroup(await generateKeyPair(), { name: `g${i}`, policy: 0 });
      await victim.node.publish(g.manifest);
      gids.push(toHex(g.gid));
    }
    const p = await socketPeer(victim.url, "/v1/sync", await generateKeyPair(), "sync", SYNC_INFO);
    for (const gid of gids) p.send("sub", { gid });
    await p.next("sub.ok");
    await p.next("sub.ok");
    const e = await p.next("error");
    assertEquals([e.get("code"), e.get("gid")], ["OVERLOADED", gids[2]]);
    // Someone else can still subscribe.
    const q = await socketPeer(victim.url, "/v1/sync", await generateKeyPair(), "sync", SYNC_INFO);
    q.send("sub", { gid: gids[2] });
    assertEquals((await q.next("sub.ok")).get("gid"), gids[2]);
    p.sec.close("done");
    q.sec.close("done");
  } finally {
    await victim.done();
  }
});

Deno.test("A credit grant past the window the peer announced is a violation, and the grant is capped", async () => {
  const victim = await served();
  try {
    const p = await socketPeer(victim.url, "/v1/sync", await generateKeyPair(), "sync", SYNC_INFO);
    for (let i = 0; i < 3; i++) p.send("credit", { n: 1_000_000, b: 1 << 30 });
    assertEquals(await p.endCode(), "BAD_FRAME");
    const errs = p.frames.filter((f) => f.get("t") === "error").map((f) => String(f.get("message")));
    assert(errs.some((m) => m.includes("past the window")), errs.join("; "));
  } finally {
    await victim.done();
  }
});

Deno.test("makeEvents is used by the memory tests' data", async () => {
  // Guards the helper the memory tests (tests/memory_test.ts, deno task test:memory) build their data with.
  const g = await createGroup(await generateKeyPair(), { name: "m", policy: 0 });
  const evs = await makeEvents({ owner: await generateKeyPair(), gid: g.gid, manifest: g.manifest }, 2);
  assertEquals(evs.length, 2);
});

Deno.test("A removed member's bearer token stops reading the closed group at once", async () => {
  const mKey = await generateKeyPair();
  const victim = await served();
  try {
    const g = await closedGroupWith(victim.node, [mKey.publicKey], 1);
    const ch = await (await fetch(`${victim.url}/v1/auth/challenge`)).json();
    const { answerChallenge } = await import("../storage/auth_message.ts");
    const { fromHex } = await import("../core/bytes.ts");
    const sig = await answerChallenge(mKey, "http", fromHex(ch.challenge)!, victim.node.key.publicKey);
    const tok = await (await fetch(`${victim.url}/v1/auth/token`, {
      method: "POST",
      body: JSON.stringify({ key: toHex(mKey.publicKey), challenge: ch.challenge, sig: toHex(sig) }),
    })).json();
    const read = () =>
      fetch(`${victim.url}/v1/groups/${g.hex}/events`, { headers: { authorization: `Bearer ${tok.token}` } });
    const before = await read();
    assertEquals(before.status, 200);
    await before.body?.cancel();
    await victim.node.publish(
      await signEvent(g.owner, {
        group: g.gid,
        ts: Date.now(),
        kind: 1,
        tags: [],
        payload: encodeMembership({ action: ACTION_REMOVE, member: mKey.publicKey }),
      }),
    );
    const after = await read();
    assertEquals([after.status, (await after.json()).error], [404, "UNKNOWN_GROUP"]);
  } finally {
    await victim.done();
  }
});

Deno.test("DHT sessions: a claimed key must sign, and a sync handshake is refused on the DHT route", async () => {
  const victim = await served();
  try {
    const claimed = await generateKeyPair(), actual = await generateKeyPair();
    const info = { v: 1, addr: "", frame: 65536 };
    const forged = await socketPeer(victim.url, "/v1/dht", { ...actual, publicKey: claimed.publicKey }, "dht", info);
    assertEquals(await forged.endCode(), "BAD_AUTH");
    const wrong = await socketPeer(victim.url, "/v1/dht", actual, "sync", SYNC_INFO);
    assertEquals(await wrong.endCode(), "BAD_FRAME");
    const right = await socketPeer(victim.url, "/v1/dht", actual, "dht", info);
    right.send("req", { id: 1, op: "ping" });
    assertEquals((await right.next("res")).get("id"), 1);
    right.sec.close("done");
  } finally {
    await victim.done();
  }
});

/** Resolves with the client socket's close event (code and reason as the node sent them). */
function closeEventOf(ws: WebSocket): Promise<CloseEvent> {
  return new Promise((resolve) => ws.addEventListener("close", (ev) => resolve(ev as CloseEvent)));
}

Deno.test("A neg of another negentropy version is answered with the bare byte 0x61, and the session stays", async () => {
  const victim = await served();
  try {
    const mKey = await generateKeyPair();
    const g = await closedGroupWith(victim.node, [mKey.publicKey], 3);
    const p = await socketPeer(victim.url, "/v1/sync", mKey, "sync", SYNC_INFO);
    p.send("sub", { gid: g.hex });
    await p.next("sub.ok");
    p.send("neg", { gid: g.hex, msg: new Uint8Array([0x62, 0x00, 0x01, 0x02]) });
    assertEquals([...(await p.next("neg")).get("msg") as Uint8Array], [0x61]);
    // Then v1 works on the same session.
    const s = new VectorStorage();
    s.seal();
    p.send("neg", { gid: g.hex, msg: new Reconciler(s).initiate() });
    assertEquals(((await p.next("neg")).get("msg") as Uint8Array)[0], 0x61);
    assertEquals(p.frames.filter((f) => f.get("t") === "error"), []);
    const closing = closeEventOf(p.ws);
    p.sec.close("done");
    assertEquals((await closing).code, 1000);
  } finally {
    await victim.done();
  }
});

Deno.test("A malformed negentropy message ends the session with BAD_FRAME and WebSocket close code 1002", async () => {
  const victim = await served();
  try {
    const mKey = await generateKeyPair();
    const g = await closedGroupWith(victim.node, [mKey.publicKey], 3);
    for (
      const [msg, detail] of [
        [[0x61, 0x00, 0x00, 0x03], "unknown mode 3 at byte 3"],
        [[0x61, 0x80], "truncated varint (timestamp) at byte 1"],
        [[0x61, 0x00, 0x00, 0x02, 0x05, 0x00], "id list of 5 ids at byte 4"],
        [[0x61, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00], "range after the end bound at byte 4"],
      ] as const
    ) {
      const p = await socketPeer(victim.url, "/v1/sync", mKey, "sync", SYNC_INFO);
      const closing = closeEventOf(p.ws);
      p.send("sub", { gid: g.hex });
      await p.next("sub.ok");
      p.send("neg", { gid: g.hex, msg: Uint8Array.from(msg) });
      assertEquals(await p.endCode(), "BAD_FRAME");
      const err = p.frames.find((f) => f.get("t") === "error")!;
      assert(String(err.get("message")).includes(detail), String(err.get("message")));
      const ev = await closing;
      assertEquals(ev.code, 1002);
      assert(ev.reason.startsWith("BAD_FRAME"), ev.reason);
    }
  } finally {
    await victim.done();
  }
});

Deno.test("Close codes: a frame that is not CBOR gets 1002, a policy violation 1008, a normal bye 1000", async () => {
  const victim = await served(undefined, { sync_idle_ms: 1000 });
  try {
    const k = await generateKeyPair();
    // Garbage inside the encrypted session.
    const bad = await socketPeer(victim.url, "/v1/sync", k, "sync", SYNC_INFO);
    const badClose = closeEventOf(bad.ws);
    await bad.sec.ready;
    bad.sec.send(new Uint8Array([0xff, 0x00]));
    assert(["BAD_CBOR", "BAD_FRAME"].includes(await bad.endCode()));
    assertEquals((await badClose).code, 1002);
    // A frame before the handshake completed, in clear: refused as UNAUTHORIZED/BAD_FRAME and closed in error.
    const ws = new WebSocket(victim.ws + "/v1/sync");
    const wsClose = closeEventOf(ws);
    await new Promise((r) => ws.onopen = r);
    ws.send(encodeCbor(new Map([["t", "sub"]]) as never));
    const ev = await wsClose;
    assert(ev.code === 1002 || ev.code === 1008, `${ev.code} ${ev.reason}`);
    // Idle: the node says bye and closes normally.
    const idle = await socketPeer(victim.url, "/v1/sync", k, "sync", SYNC_INFO);
    const idleClose = closeEventOf(idle.ws);
    assert((await idle.closed(5000)).includes("idle"));
    assertEquals(idle.frames.find((f) => f.get("t") === "bye")?.get("t"), "bye");
    assertEquals((await idleClose).code, 1000);
  } finally {
    await victim.done();
  }
});
