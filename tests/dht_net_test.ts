// The DHT over real sockets: RPC between in-process nodes on 127.0.0.1, refusals, persistence.
import { ANNOUNCE_TTL_MS, HANDSHAKE_BYTES_MAX } from "../core/limits.ts";
import { toHex } from "../core/bytes.ts";
import { assert, assertEquals, assertRejects } from "@std/assert";
import { openNode, type XfNode } from "../node.ts";
import type { Limits } from "../core/limits.ts";
import { serve } from "../net/server.ts";
import { channelPair } from "../net/peers.ts";
import { socketPeer } from "./_peer.ts";
import { type DhtHost, DhtSession } from "../net/dht/rpc.ts";
import { announce, encodeRecord, signRecord } from "../net/dht/records.ts";
import { decodeCbor, encodeCbor } from "../storage/cbor.ts";
import { generateKeyPair, type KeyPair } from "../storage/ed25519.ts";
import { XfError } from "../core/errors.ts";
import { createGroup, POLICY_CLOSED, signEvent } from "../storage/event.ts";
import { ACTION_ADD, encodeMembership } from "../storage/membership.ts";
import { makeEvents, testGroup, until } from "./_helpers.ts";

interface Served {
  node: XfNode;
  url: string;
  dir: string;
  /** Close the node and the server; remove the dir unless `keep`. */
  done(keep?: boolean): Promise<void>;
}

async function servedNode(opts: { key?: KeyPair; limits?: Partial<Limits>; dir?: string } = {}): Promise<Served> {
  const dir = opts.dir ?? await Deno.makeTempDir({ prefix: "xf-dht-" });
  const node = await openNode({
    workers: false,
    dataDir: dir,
    ...(opts.key ? { key: opts.key } : {}),
    ...(opts.limits ? { limits: opts.limits } : {}),
  });
  const srv = await serve(node, { host: "127.0.0.1", port: 0 });
  node.publicUrl = srv.url.replace(/^http/, "ws");
  let closed = false;
  return {
    node,
    url: node.publicUrl,
    dir,
    async done(keep = false) {
      if (closed) return;
      closed = true;
      await node.close();
      await srv.shutdown();
      if (!keep) await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
  };
}

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return "ok";
  } catch (e) {
    return e instanceof XfError ? e.code : `not an XfError: ${(e as Error).message}`;
  }
}

Deno.test("DHT RPC between two nodes over real sockets: bootstrap, lookup, announce, find peers and providers", async () => {
  const a = await servedNode(), b = await servedNode();
  try {
    const g = await testGroup();
    const gid = toHex(g.gid);
    await a.node.publish([g.manifest, ...await makeEvents(g, 10)]);
    await b.node.publish(g.manifest);
    assertEquals(await b.node.dht.ping(a.url), a.node.key.publicKey);
    assertEquals(await b.node.dht.bootstrap(gid, [a.url]), 1);
    // The requester said where it listens, so the answerer knows it too.
    assertEquals((await a.node.dht.contacts(gid)).map((c) => c.addr), [b.url]);
    const found = await b.node.dht.lookup(gid, a.node.dht.selfId);
    assertEquals(found.map((c) => c.addr), [a.url]);
    const ab = await a.node.dht.announce(gid);
    const bb = await b.node.dht.announce(gid);
    assertEquals([ab?.stored, bb?.stored], [1, 1]);
    assertEquals(bb!.record.count, 1);
    const peers = await b.node.dht.findPeers(gid);
    assertEquals(peers.map((r) => r.addr).sort(), [a.url, b.url].sort());
    // Providers of "any events" and of A's exact root: A, who holds 11 events.
    const providers = await b.node.dht.findProviders(gid);
    assertEquals(providers[0]?.addr, a.url);
    assertEquals(providers[0]?.count, 11);
    assertEquals((await b.node.dht.findProviders(gid, ab!.record.root)).map((r) => r.addr), [a.url]);
    // Discovery lists the members among the node's peers and syncs with them.
    b.node.dht.join(gid, [a.url]);
    a.node.dht.join(gid, []);
    await until(async () => (await b.node.merkle(gid))?.count === 11);
    await until(() =>
      a.node.sync.peersOf(gid).some((p) => p.key === toHex(b.node.key.publicKey)) &&
      b.node.sync.peersOf(gid).some((p) => p.key === toHex(a.node.key.publicKey) && p.addr === a.url)
    );
    const metrics = await a.node.metrics();
    assert(/xf_dht_requests_in_total [1-9]/.test(metrics), "DHT figures are in /metrics");
  } finally {
    await b.done();
    await a.done();
  }
});

Deno.test("Discovery subscribes again once a member it found comes to hold the group", async () => {
  const a = await servedNode(), b = await servedNode();
  try {
    const g = await testGroup();
    const gid = toHex(g.gid);
    await a.node.publish([g.manifest, ...await makeEvents(g, 10)]);
    a.node.dht.join(gid, []);
    b.node.dht.join(gid, [a.url]); // B does not hold the group: A's subscription at B is refused at first
    await until(() => [...a.node.sync.sessions].some((s) => s.role === "client" && s.state === "ready"));
    await new Promise((r) => setTimeout(r, 300)); // the subscription is refused meanwhile
    assertEquals(await b.node.merkle(gid), null);
    await b.node.publish(g.manifest); // now B holds it (as if from another member)
    const t0 = Date.now();
    await until(async () => (await b.node.merkle(gid))?.count === 11, 8000);
    assert(Date.now() - t0 >= 300, "the events came by a later subscription, not the first one");
    assert(b.node.sync.peersOf(gid).some((p) => p.addr === a.url));
  } finally {
    await b.done();
    await a.done();
  }
});

Deno.test("A group's routing table is saved in RocksDB and reloaded on start", async () => {
  const a = await servedNode();
  const key = await generateKeyPair();
  let b = await servedNode({ key });
  try {
    const g = await testGroup();
    const gid = toHex(g.gid);
    await a.node.publish(g.manifest);
    assertEquals(await b.node.dht.bootstrap(gid, [a.url]), 1);
    await b.done(true);
    b = await servedNode({ key, dir: b.dir });
    const saved = await b.node.pipeline.index<Uint8Array>({ type: "index.peers.load", gid });
    assertEquals(JSON.parse(new TextDecoder().decode(saved)).self, toHex(b.node.dht.selfId));
    assertEquals((await b.node.dht.contacts(gid)).map((c) => c.addr), [a.url]);
  } finally {
    await b.done();
    await a.done();
  }
});

Deno.test("announce refuses unsigned, forged, expired, too long-lived, malformed and other nodes' records", async () => {
  const a = await servedNode(), b = await servedNode();
  try {
    const g = await testGroup();
    const gid = toHex(g.gid);
    await a.node.publish(g.manifest);
    const now = Date.now();
    const fields = { group: g.gid, nodeKey: b.node.key.publicKey, addr: b.url, root: new Uint8Array(32), count: 0 };
    const send = (bytes: Uint8Array) => codeOf(b.node.dht.request(a.url, "announce", { record: bytes }));
    const good = await announce(fields, b.node.key.privateKey, now);
    assertEquals(await send(encodeRecord({ ...good, sig: new Uint8Array(64) })), "UNSIGNED");
    assertEquals(await send(encodeRecord({ ...good, count: 1_000 })), "BAD_SIGNATURE");
    const expired = await signRecord({ ...fields, ts: now - ANNOUNCE_TTL_MS, expires: now - 1 }, b.node.key.privateKey);
    assertEquals(await send(encodeRecord(expired)), "EXPIRED");
    const tooLong = await signRecord({ ...fields, ts: now, expires: now + 2 * ANNOUNCE_TTL_MS }, b.node.key.privateKey);
    assertEquals(await send(encodeRecord(tooLong)), "TTL_TOO_LONG");
    assertEquals(await send(new Uint8Array([1, 2, 3])), "BAD_RECORD");
    const other = await generateKeyPair();
    const theirs = await announce({ ...fields, nodeKey: other.publicKey }, other.privateKey, now);
    assertEquals(await send(encodeRecord(theirs)), "NOT_SIGNER");
    assertEquals(a.node.dht.store.get(g.gid, Date.now()).length, 0);
    assertEquals(await send(encodeRecord(good)), "ok");
    assertEquals(await send(encodeRecord(good)), "STALE");
    assertEquals(a.node.dht.store.get(g.gid, Date.now()).map((r) => r.addr), [b.url]);
    assertEquals(gid.length, 64);
  } finally {
    await b.done();
    await a.done();
  }
});

Deno.test("A non-member's DHT requests about a closed group get the answer an unknown group gets", async () => {
  const ownerKey = await generateKeyPair();
  const a = await servedNode({ key: ownerKey }), outsider = await servedNode(), member = await servedNode();
  try {
    const { gid, manifest } = await createGroup(ownerKey, { name: "closed", policy: POLICY_CLOSED });
    const add = await signEvent(ownerKey, {
      group: gid,
      ts: Date.now(),
      kind: 1,
      tags: [],
      payload: encodeMembership({ action: ACTION_ADD, member: member.node.key.publicKey }),
    });
    await a.node.publish([manifest, add]);
    await a.node.dht.announce(toHex(gid));
    const unknown = crypto.getRandomValues(new Uint8Array(32));
    const answer = async (node: XfNode, op: "find_node" | "find_peers" | "find_providers", g: Uint8Array) => {
      try {
        await node.dht.request(a.url, op, { gid: g, target: g });
        return "ok";
      } catch (e) {
        const x = e as XfError;
        return `${x.code}: ${x.message.replace(toHex(g), "GID")}`;
      }
    };
    for (const op of ["find_node", "find_peers", "find_providers"] as const) {
      const closed = await answer(outsider.node, op, gid);
      assert(closed.startsWith("UNKNOWN_GROUP"), closed);
      assertEquals(closed, await answer(outsider.node, op, unknown));
      assertEquals(await answer(member.node, op, gid), "ok");
    }
    // Its own valid announcement for the closed group is refused the same way, and not stored.
    const rec = await announce(
      { group: gid, nodeKey: outsider.node.key.publicKey, addr: outsider.url, root: new Uint8Array(32), count: 0 },
      outsider.node.key.privateKey,
      Date.now(),
    );
    assertEquals(
      await codeOf(outsider.node.dht.request(a.url, "announce", { record: encodeRecord(rec) })),
      "UNKNOWN_GROUP",
    );
    // The member sees the owner's announcement; the outsider is not among the group's records.
    const { res } = await member.node.dht.request(a.url, "find_peers", { gid });
    assertEquals((res.get("records") as Uint8Array[]).length, 1);
    assertEquals(a.node.dht.store.get(gid, Date.now()).map((r) => r.addr), [a.url]);
  } finally {
    await member.done();
    await outsider.done();
    await a.done();
  }
});

/** A raw WebSocket to /v1/dht that records the frames it gets. */
async function rawDht(url: string) {
  const ws = new WebSocket(`${url}/v1/dht`);
  ws.binaryType = "arraybuffer";
  const frames: Map<string, unknown>[] = [];
  const closed = new Promise<void>((r) => ws.addEventListener("close", () => r()));
  ws.onmessage = (ev) => frames.push(decodeCbor(new Uint8Array(ev.data as ArrayBuffer)) as Map<string, unknown>);
  await new Promise<void>((resolve, reject) => {
    ws.onopen = () => resolve();
    ws.onerror = () => reject(new Error("cannot open"));
  });
  return { ws, frames, closed };
}

Deno.test("An oversized DHT frame is refused with FRAME_TOO_LARGE and a garbage one with BAD_FRAME", async () => {
  const a = await servedNode();
  try {
    // Before the handshake: the first message must be a small hs1.
    for (
      const [bytes, code] of [
        [new Uint8Array(HANDSHAKE_BYTES_MAX + 1), "FRAME_TOO_LARGE"],
        [new Uint8Array([0xff, 0x00, 0x13]), "BAD_FRAME"],
      ] as const
    ) {
      const raw = await rawDht(a.url);
      raw.ws.send(bytes);
      await raw.closed;
      const err = raw.frames.find((f) => f.get("t") === "error");
      assertEquals(err?.get("code"), code);
    }
    // A request in clear instead of a handshake is not answered.
    const raw = await rawDht(a.url);
    raw.ws.send(encodeCbor(new Map<string, string | number>([["t", "req"], ["id", 1], ["op", "ping"]])));
    await raw.closed;
    assertEquals(raw.frames.find((f) => f.get("t") === "error")?.get("code"), "BAD_FRAME");
    assertEquals(raw.frames.some((f) => f.get("t") === "res"), false);
    // After the handshake: an oversized frame and a garbage frame end the session with their codes.
    const me = await generateKeyPair();
    const info = { v: 1, addr: "", frame: 65536 };
    const big = await socketPeer(a.url, "/v1/dht", me, "dht", info);
    await big.sec.ready;
    big.sec.send(new Uint8Array(a.node.limits.dht_frame_bytes_max + 1));
    assertEquals(await big.endCode(), "FRAME_TOO_LARGE");
    const junk = await socketPeer(a.url, "/v1/dht", me, "dht", info);
    await junk.sec.ready;
    junk.sec.send(new Uint8Array([0xff, 0x00, 0x13]));
    assertEquals(await junk.endCode(), "BAD_FRAME");
  } finally {
    await a.done();
  }
});

Deno.test("A flood of find_node requests from one peer is refused with RATE_LIMITED", async () => {
  const a = await servedNode(), b = await servedNode();
  try {
    const g = await testGroup();
    const gid = g.gid;
    await a.node.publish(g.manifest);
    const max = a.node.limits.dht_requests_per_sec_max;
    const n = max + 10;
    const codes = await Promise.all(
      Array.from({ length: n }, () => codeOf(b.node.dht.request(a.url, "find_node", { gid, target: gid }))),
    );
    const limited = codes.filter((c) => c === "RATE_LIMITED").length;
    assert(limited >= 5, `only ${limited} of ${n} were limited: ${codes.join(",")}`);
    assert(codes.filter((c) => c === "ok").length >= max - 5);
    assertEquals(codes.filter((c) => c !== "ok" && c !== "RATE_LIMITED"), []);
    // The session stays open, and the bucket refills.
    await new Promise((r) => setTimeout(r, 300));
    assertEquals(await codeOf(b.node.dht.request(a.url, "find_node", { gid, target: gid })), "ok");
    assert(/xf_dht_rate_limited_total [1-9]/.test(await a.node.metrics()));
  } finally {
    await b.done();
    await a.done();
  }
});

Deno.test("A DHT request that gets no answer fails with TIMEOUT", async () => {
  const key = await generateKeyPair(), other = await generateKeyPair();
  const limits = (await import("../core/limits.ts")).limitsWith({});
  const host = (k: KeyPair, handle: DhtHost["handle"]): DhtHost => ({
    key: k,
    limits,
    addr: () => "",
    admit: () => true,
    handle,
    closed: () => {},
  });
  const [c1, c2] = channelPair();
  const silent = new DhtSession(host(other, () => new Promise(() => {})), c2, "server");
  const client = new DhtSession(host(key, () => Promise.resolve({})), c1, "client");
  try {
    assert(await client.ready());
    await until(() => silent.peer !== "");
    assertEquals(silent.peer, toHex(key.publicKey));
    await assertRejects(() => client.request("ping", {}, 100), XfError, "unanswered after 100 ms");
    assertEquals(client.inflight, 0);
  } finally {
    client.close();
    silent.close();
  }
});
