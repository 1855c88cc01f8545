// The DHT against floods of fresh keys and against announced addresses that point inside the host or its cloud:
// store policy, per-address caps and rate limits, the address check. In-process (DhtService.handle, the store), so
// they do not depend on the session handshake; one test runs over real sockets on 127.0.0.1.
import { toHex } from "../core/bytes.ts";
import { assert, assertEquals } from "@std/assert";
import { openNode, type XfNode } from "../node.ts";
import { serve } from "../net/server.ts";
import type { DhtPeer } from "../net/dht/rpc.ts";
import {
  announce,
  AnnouncementStore,
  checkPeerAddress,
  decodeRecord,
  encodeRecord,
  generateKeyPair,
  type KeyPair,
} from "../net/dht/records.ts";
import { XfError } from "../core/errors.ts";
import { tempNode, testGroup } from "./_helpers.ts";

const FLOOD = 1_040;
const root = new Uint8Array(32);

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return "ok";
  } catch (e) {
    return e instanceof XfError ? e.code : `not an XfError: ${(e as Error).message}`;
  }
}

/** A node holding one open group, and a way to announce to it in-process as any key from any address. */
async function groupNode() {
  const t = await tempNode();
  const g = await testGroup();
  await t.node.publish(g.manifest);
  const dht = t.node.dht;
  const ann = async (kp: KeyPair, addr: string, remote?: string) => {
    const r = await announce({ group: g.gid, nodeKey: kp.publicKey, addr, root, count: 1 }, kp.privateKey, Date.now());
    const peer: DhtPeer = { key: kp.publicKey, addr, ...(remote === undefined ? {} : { remote }) };
    return codeOf(dht.handle(peer, "announce", new Map<string, unknown>([["record", encodeRecord(r)]])));
  };
  const findPeers = async (asker: KeyPair) => {
    const res = await dht.handle(
      { key: asker.publicKey, addr: "" },
      "find_peers",
      new Map<string, unknown>([["gid", g.gid]]),
    );
    return (res.records as Uint8Array[]).map((b) => toHex(decodeRecord(b)!.nodeKey));
  };
  return { ...t, g, dht, ann, findPeers };
}

Deno.test("checkPeerAddress() takes ws:// and wss:// host[:port] addresses and refuses the rest", () => {
  const good = [
    "ws://127.0.0.1:7878",
    "ws://127.0.0.1:7878/",
    "wss://node.example.org",
    "wss://node.example.org:8443",
    "ws://localhost:7878",
    "ws://10.0.0.7:7878",
    "ws://[::1]:7878",
    "ws://[2001:db8::7]:7878",
    "ws://a",
  ];
  for (const a of good) assertEquals(checkPeerAddress(a), null, a);
  const bad = [
    "",
    "http://169.254.169.254/latest",
    "https://node.example.org",
    "ftp://node.example.org",
    "ws://169.254.169.254",
    "ws://169.254.1.2:7878",
    "ws://2852039166", // 169.254.169.254 as one number
    "ws://0xa9.0xfe.0xa9.0xfe",
    "ws://0.0.0.0:7878",
    "ws://0:7878",
    "ws://224.0.0.1:7878",
    "ws://239.255.255.250:1900",
    "ws://255.255.255.255:7878",
    "ws://100.100.100.200",
    "ws://[::]:7878",
    "ws://[fe80::1]:7878",
    "ws://[febf::1]:7878",
    "ws://[ff02::1]:7878",
    "ws://[fd00:ec2::254]",
    "ws://[::ffff:169.254.169.254]",
    "ws://[64:ff9b::169.254.169.254]",
    "ws://metadata.google.internal",
    "ws://metadata.google.internal.",
    "ws://METADATA:80",
    "ws://metadata",
    "ws://127.0.0.1:0",
    "ws://127.0.0.1:7878/v1/dht",
    "ws://127.0.0.1:7878/?x=1",
    "ws://127.0.0.1:7878#x",
    "ws://user:pw@127.0.0.1:7878",
    "ws://127.0.0.1:7878 ",
    "ws://" + "a".repeat(260),
    "not a url",
  ];
  for (const a of bad) assert(checkPeerAddress(a) !== null, `"${a}" was accepted`);
});

Deno.test("AnnouncementStore.put() refuses a record whose address cannot be announced: BAD_RECORD", async () => {
  const kp = await generateKeyPair();
  const group = new Uint8Array(32).fill(3);
  const store = new AnnouncementStore();
  for (const addr of ["http://169.254.169.254/latest", "ws://0.0.0.0:7878", "ws://[fe80::1]:7878"]) {
    const r = await announce({ group, nodeKey: kp.publicKey, addr, root, count: 0 }, kp.privateKey, 1_000);
    assertEquals(await store.put(r, 1_000, { sender: kp.publicKey }), { ok: false, code: "BAD_RECORD" });
  }
  assertEquals(store.size(), 0);
});

Deno.test("A DHT announce of http://169.254.169.254/latest is refused with BAD_RECORD and never handed out", async () => {
  const n = await groupNode();
  try {
    const evil = await generateKeyPair();
    assertEquals(await n.ann(evil, "http://169.254.169.254/latest", "198.51.100.1"), "BAD_RECORD");
    assertEquals(await n.ann(evil, "ws://[fd00:ec2::254]", "198.51.100.1"), "BAD_RECORD");
    assertEquals(await n.findPeers(evil), []);
  } finally {
    await n.done();
  }
});

Deno.test("1,040 fresh keys from one address neither fill a group's store nor push out a verified member", async () => {
  const n = await groupNode();
  try {
    const member = await generateKeyPair(), late = await generateKeyPair();
    const mAddr = "ws://127.0.0.1:9001", lAddr = "ws://127.0.0.1:9002";
    assertEquals(await n.ann(member, mAddr, "127.0.0.1"), "ok");
    // Both answered requests of ours at their addresses: verified contacts.
    n.dht.store.verify(member.publicKey, mAddr);
    n.dht.store.verify(late.publicKey, lAddr);
    const codes = new Map<string, number>();
    for (let i = 0; i < FLOOD; i++) {
      const code = await n.ann(await generateKeyPair(), `ws://203.0.113.7:${10_000 + i}`, "203.0.113.7");
      codes.set(code, (codes.get(code) ?? 0) + 1);
    }
    const cap = n.node.limits.dht_records_per_addr_max;
    assertEquals(Object.fromEntries(codes), { ok: cap, ADDR_FULL: FLOOD - cap });
    // The member's refresh and a late verified member's first announce both succeed.
    assertEquals(await n.ann(member, mAddr, "127.0.0.1"), "ok");
    assertEquals(await n.ann(late, lAddr, "127.0.0.2"), "ok");
    const answer = await n.findPeers(member);
    assertEquals(answer.slice(0, 2).sort(), [toHex(member.publicKey), toHex(late.publicKey)].sort());
    assertEquals(answer.length, 2 + cap);
  } finally {
    await n.done();
  }
});

Deno.test("1,040 fresh keys from distinct addresses cannot push a verified member out of a full group", async () => {
  const n = await groupNode();
  try {
    const member = await generateKeyPair(), late = await generateKeyPair();
    const mAddr = "ws://127.0.0.1:9001", lAddr = "ws://127.0.0.1:9002";
    assertEquals(await n.ann(member, mAddr, "127.0.0.1"), "ok");
    n.dht.store.verify(member.publicKey, mAddr);
    n.dht.store.verify(late.publicKey, lAddr);
    const flood = async (from: number, count: number) => {
      for (let i = from; i < from + count; i++) {
        const ip = `198.18.${i >> 8}.${i & 255}`;
        assertEquals(await n.ann(await generateKeyPair(), `ws://${ip}:7878`, ip), "ok");
      }
    };
    await flood(0, FLOOD);
    assertEquals(await n.ann(member, mAddr, "127.0.0.1"), "ok");
    assertEquals(await n.ann(late, lAddr, "127.0.0.2"), "ok");
    await flood(FLOOD, 40); // unverified newcomers replace the youngest unverified records, never these two
    const all = n.dht.store.get(n.g.gid, Date.now());
    assertEquals(all.length, n.dht.store.perGroupMax);
    const answer = await n.findPeers(member);
    assertEquals(answer.length, n.node.limits.dht_answer_records_max);
    assertEquals(answer.slice(0, 2).sort(), [toHex(member.publicKey), toHex(late.publicKey)].sort());
  } finally {
    await n.done();
  }
});

Deno.test("DhtService.admit() limits requests per remote address, whatever the key", async () => {
  const t = await tempNode();
  try {
    const dht = t.node.dht;
    const max = t.node.limits.dht_requests_per_addr_per_sec_max;
    const fresh = () => crypto.getRandomValues(new Uint8Array(32));
    let admitted = 0;
    for (let i = 0; i < FLOOD; i++) if (dht.admit(fresh(), "203.0.113.7")) admitted++;
    assert(admitted >= max && admitted <= max + 20, `${admitted} of ${FLOOD} admitted from one address`);
    assert(dht.admit(fresh(), "203.0.113.8"), "another address has its own bucket");
    // An IPv6 /64 is one address: its hosts share a bucket.
    let v6 = 0;
    for (let i = 0; i < FLOOD; i++) if (dht.admit(fresh(), `2001:db8:1:2::${i.toString(16)}`)) v6++;
    assert(v6 >= max && v6 <= max + 20, `${v6} of ${FLOOD} admitted from one /64`);
    assert(dht.admit(fresh(), "2001:db8:1:3::1"));
    // The per-key bucket still holds, with or without a known address.
    const key = fresh();
    let perKey = 0;
    for (let i = 0; i < 200; i++) if (dht.admit(key)) perKey++;
    assert(perKey <= t.node.limits.dht_requests_per_sec_max + 5, `${perKey} admitted for one key`);
  } finally {
    await t.done();
  }
});

Deno.test("A hello address that cannot be announced does not enter the routing table", async () => {
  const n = await groupNode();
  try {
    const evil = await generateKeyPair(), good = await generateKeyPair();
    const req = new Map<string, unknown>([["gid", n.g.gid], ["target", n.g.gid]]);
    await n.dht.handle({ key: evil.publicKey, addr: "ws://169.254.169.254" }, "find_node", req);
    await n.dht.handle({ key: good.publicKey, addr: "ws://127.0.0.1:9003" }, "find_node", req);
    assertEquals((await n.dht.contacts(toHex(n.g.gid))).map((c) => c.addr), ["ws://127.0.0.1:9003"]);
  } finally {
    await n.done();
  }
});

Deno.test("DhtService.announce() skips, and says so once, when the node's own address cannot be announced", async () => {
  const n = await groupNode();
  const warn = console.warn;
  const said: string[] = [];
  console.warn = (...a: unknown[]) => said.push(a.join(" "));
  try {
    n.node.publicUrl = "ws://0.0.0.0:7878";
    const gid = toHex(n.g.gid);
    assertEquals(await n.dht.announce(gid), null);
    assertEquals(await n.dht.announce(gid), null);
    assertEquals(said.length, 1, said.join("\n"));
    assert(said[0]!.includes("ws://0.0.0.0:7878"), said[0]);
    assertEquals(n.dht.store.get(n.g.gid, Date.now()), []);
  } finally {
    console.warn = warn;
    await n.done();
  }
});

Deno.test("A node that answers our request at its announced address becomes a verified record (real sockets)", async () => {
  const open = async () => {
    const dir = await Deno.makeTempDir({ prefix: "xf-dht-sec-" });
    const node: XfNode = await openNode({ workers: false, dataDir: dir });
    const srv = await serve(node, { host: "127.0.0.1", port: 0 });
    node.publicUrl = srv.url.replace(/^http/, "ws");
    return {
      node,
      url: node.publicUrl,
      async done() {
        await node.close();
        await srv.shutdown();
        await Deno.remove(dir, { recursive: true }).catch(() => {});
      },
    };
  };
  const a = await open(), b = await open();
  try {
    const g = await testGroup();
    await a.node.publish(g.manifest);
    await b.node.publish(g.manifest);
    const r = await announce(
      { group: g.gid, nodeKey: b.node.key.publicKey, addr: b.url, root, count: 0 },
      b.node.key.privateKey,
      Date.now(),
    );
    assertEquals(await codeOf(b.node.dht.request(a.url, "announce", { record: encodeRecord(r) })), "ok");
    assertEquals(a.node.dht.store.info(g.gid, b.node.key.publicKey)?.verified, false);
    await a.node.dht.ping(b.url, b.node.key.publicKey);
    assertEquals(a.node.dht.store.info(g.gid, b.node.key.publicKey)?.verified, true);
  } finally {
    await b.done();
    await a.done();
  }
});
