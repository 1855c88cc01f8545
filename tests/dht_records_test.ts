import { ANNOUNCE_TTL_MS } from "../core/limits.ts";
import { assert, assertEquals, assertRejects } from "@std/assert";
import {
  announce,
  AnnouncementStore,
  type AnnounceRecord,
  checkRecord,
  decodeRecord,
  encodeRecord,
  encodeRecordBody,
  exportPrivateKey,
  generateKeyPair,
  importPrivateKey,
  signRecord,
  verifyRecord,
} from "../net/dht/records.ts";

const NOW = 1_800_000_000_000;
const group = new Uint8Array(32).fill(7);
const root = new Uint8Array(32).fill(9);

async function member(addr = "ws://10.0.0.1:7878") {
  const kp = await generateKeyPair();
  const rec = (now = NOW, fields: Partial<AnnounceRecord> = {}) =>
    announce({ group, nodeKey: kp.publicKey, addr, root, count: 42, ...fields }, kp.privateKey, now);
  return { ...kp, rec };
}

Deno.test("AnnouncementStore.put() keeps a valid record from its own node", async () => {
  const a = await member();
  const store = new AnnouncementStore();
  const r = await a.rec();
  assertEquals(await store.put(r, NOW, { sender: a.publicKey }), { ok: true, replaced: false });
  const got = store.get(group, NOW + 1);
  assertEquals(got.length, 1);
  assertEquals(got[0]?.count, 42);
  assertEquals(store.getOne(group, a.publicKey, NOW)?.addr, r.addr);
});

Deno.test("AnnouncementStore.put() refuses a forged record: BAD_SIGNATURE", async () => {
  const a = await member();
  const store = new AnnouncementStore();
  const r = await a.rec();
  // Tampered after signing: another address, root or count.
  for (const forged of [{ ...r, addr: "ws://evil:1" }, { ...r, root: new Uint8Array(32) }, { ...r, count: 1 }]) {
    assertEquals(await store.put(forged, NOW), { ok: false, code: "BAD_SIGNATURE" });
  }
  // A signature bit flipped.
  const sig = r.sig.slice();
  sig[5]! ^= 1;
  assertEquals(await store.put({ ...r, sig }, NOW), { ok: false, code: "BAD_SIGNATURE" });
  // A key that is not a valid Ed25519 point.
  assertEquals(await store.put({ ...r, nodeKey: new Uint8Array(32).fill(0xff) }, NOW), {
    ok: false,
    code: "BAD_SIGNATURE",
  });
  assertEquals(store.size(), 0);
});

Deno.test("AnnouncementStore.put() refuses an unsigned record: UNSIGNED", async () => {
  const a = await member();
  const store = new AnnouncementStore();
  const r = await a.rec();
  for (const sig of [new Uint8Array(64), new Uint8Array(0), new Uint8Array(63)]) {
    assertEquals(await store.put({ ...r, sig }, NOW), { ok: false, code: "UNSIGNED" });
  }
});

Deno.test("AnnouncementStore.put() refuses expired, too long-lived and future records", async () => {
  const a = await member();
  const store = new AnnouncementStore();
  const r = await a.rec();
  assertEquals(r.expires, NOW + ANNOUNCE_TTL_MS);
  assertEquals(await store.put(r, r.expires), { ok: false, code: "EXPIRED" });
  assertEquals(await store.put(r, r.expires + 1), { ok: false, code: "EXPIRED" });
  const long = await signRecord({ ...r, expires: r.ts + ANNOUNCE_TTL_MS + 1 }, a.privateKey);
  assertEquals(await store.put(long, NOW), { ok: false, code: "TTL_TOO_LONG" });
  const future = await a.rec(NOW + 11 * 60 * 1000);
  assertEquals(await store.put(future, NOW), { ok: false, code: "TS_IN_FUTURE" });
  // A record that ends before it starts cannot even be signed, nor stored.
  await assertRejects(() => signRecord({ ...r, expires: r.ts - 1 }, a.privateKey), RangeError, "expires");
  assertEquals(await store.put({ ...r, expires: r.ts - 1 }, NOW), { ok: false, code: "BAD_RECORD" });
  assertEquals(await store.put({ ...r, group: group.subarray(1) }, NOW), { ok: false, code: "BAD_RECORD" });
});

Deno.test("AnnouncementStore.put() refuses one node announcing for another", async () => {
  const a = await member();
  const b = await member("ws://10.0.0.2:7878");
  const store = new AnnouncementStore();
  // B sends A's genuine record as its own announcement.
  const ra = await a.rec();
  assertEquals(await store.put(ra, NOW, { sender: b.publicKey }), { ok: false, code: "NOT_SIGNER" });
  // B signs a record that names A as the node.
  const fake = await signRecord(
    { group, nodeKey: a.publicKey, addr: "ws://evil:1", root, count: 1, ts: NOW, expires: NOW + 1000 },
    b.privateKey,
  );
  assertEquals(await store.put(fake, NOW), { ok: false, code: "BAD_SIGNATURE" });
  assertEquals(await checkRecord(fake, NOW), "BAD_SIGNATURE");
  // A's record relayed by B in a find-peers answer (no sender) is fine.
  assertEquals((await store.put(ra, NOW)).ok, true);
});

Deno.test("AnnouncementStore keeps the newest record per (group, node)", async () => {
  const a = await member();
  const store = new AnnouncementStore();
  const old = await a.rec(NOW);
  const newer = await a.rec(NOW + 60_000, { count: 43 });
  assertEquals(await store.put(newer, NOW + 60_000), { ok: true, replaced: false });
  assertEquals(await store.put(old, NOW + 60_000), { ok: false, code: "STALE" });
  assertEquals(await store.put(newer, NOW + 60_000), { ok: false, code: "STALE" });
  const newest = await a.rec(NOW + 120_000, { count: 44 });
  assertEquals(await store.put(newest, NOW + 120_000), { ok: true, replaced: true });
  assertEquals(store.get(group, NOW + 120_000).map((r) => r.count), [44]);
  assertEquals(store.size(), 1);
});

Deno.test("AnnouncementStore drops expired records and is bounded per group", async () => {
  const store = new AnnouncementStore({ perGroupMax: 3 });
  const members = await Promise.all([1, 2, 3, 4].map((i) => member(`ws://10.0.0.${i}:7878`)));
  for (const [i, m] of members.slice(0, 3).entries()) {
    assert((await store.put(await m.rec(NOW + i * 1000), NOW + i * 1000)).ok);
    store.verify(m.publicKey, `ws://10.0.0.${i + 1}:7878`);
  }
  // Every record is verified: the newcomer finds no room.
  assertEquals(await store.put(await members[3]!.rec(NOW + 3000), NOW + 3000), { ok: false, code: "GROUP_FULL" });
  // Once the first has expired, there is room again.
  const later = NOW + ANNOUNCE_TTL_MS + 500;
  assertEquals(store.get(group, later).length, 2);
  assert((await store.put(await members[3]!.rec(later), later)).ok);
  assertEquals(store.prune(NOW + 10 * ANNOUNCE_TTL_MS), 3);
  assertEquals(store.size(), 0);
  assertEquals(store.groupCount(), 0);
});

Deno.test("AnnouncementStore: in a full group a newcomer replaces the youngest unverified record only", async () => {
  const store = new AnnouncementStore({ perGroupMax: 3 });
  const ms = await Promise.all([1, 2, 3, 4, 5].map((i) => member(`ws://10.0.0.${i}:7878`)));
  const put = async (i: number, at: number) => (await store.put(await ms[i]!.rec(at), at)).ok;
  assert(await put(0, NOW));
  assert(await put(1, NOW + 1));
  assert(await put(2, NOW + 2));
  store.verify(ms[1]!.publicKey, "ws://10.0.0.2:7878/");
  assert(await put(3, NOW + 3)); // replaces 2, the youngest unverified
  assert(await put(4, NOW + 4)); // replaces 3
  const held = (at: number) => store.ranked(group, at).map((r) => r.addr);
  assertEquals(held(NOW + 5), ["ws://10.0.0.2:7878", "ws://10.0.0.1:7878", "ws://10.0.0.5:7878"]);
  assertEquals(store.info(group, ms[1]!.publicKey)?.verified, true);
  assertEquals(store.info(group, ms[0]!.publicKey)?.firstSeen, NOW);
  // A refresh keeps when the node was first seen; get() still lists the newest first.
  assert(await put(0, NOW + 6));
  assertEquals(store.info(group, ms[0]!.publicKey)?.firstSeen, NOW);
  assertEquals(store.get(group, NOW + 7)[0]?.addr, "ws://10.0.0.1:7878");
  assertEquals(held(NOW + 7)[1], "ws://10.0.0.1:7878");
});

Deno.test("AnnouncementStore caps the records announced from one network address: ADDR_FULL", async () => {
  const store = new AnnouncementStore({ perAddrMax: 2 });
  const ms = await Promise.all([1, 2, 3, 4].map((i) => member(`ws://10.0.0.${i}:7878`)));
  const put = async (i: number, remote: string) => (await store.put(await ms[i]!.rec(NOW), NOW, { remote })).ok || "no";
  assertEquals([await put(0, "2001:db8::1"), await put(1, "2001:db8::2")], [true, true]);
  assertEquals(await store.put(await ms[2]!.rec(NOW), NOW, { remote: "2001:db8::3" }), {
    ok: false,
    code: "ADDR_FULL",
  });
  assertEquals(await put(2, "2001:db8:0:1::3"), true); // another /64
  // A node's own refresh from the same address is no newcomer; relayed records (no remote) are not counted.
  assertEquals((await store.put(await ms[0]!.rec(NOW + 1), NOW + 1, { remote: "2001:db8::1" })).ok, true);
  assertEquals((await store.put(await ms[3]!.rec(NOW), NOW)).ok, true);
});

Deno.test("AnnouncementStore is bounded in groups", async () => {
  const a = await member();
  const store = new AnnouncementStore({ groupsMax: 2 });
  for (const g of [1, 2]) assert((await store.put(await a.rec(NOW, { group: new Uint8Array(32).fill(g) }), NOW)).ok);
  const third = await a.rec(NOW, { group: new Uint8Array(32).fill(3) });
  assertEquals(await store.put(third, NOW), { ok: false, code: "TOO_MANY_GROUPS" });
});

Deno.test("encodeRecord() round-trips and decodeRecord() rejects malformed bytes", async () => {
  const a = await member("ws://[::1]:7878/ü");
  const r = await a.rec();
  const bytes = encodeRecord(r);
  const back = decodeRecord(bytes);
  assertEquals(back, r);
  assert(await verifyRecord(back!));
  assertEquals(decodeRecord(bytes.subarray(0, bytes.length - 1)), null);
  const wrongDomain = bytes.slice();
  wrongDomain[0]! ^= 1;
  assertEquals(decodeRecord(wrongDomain), null);
  const longer = new Uint8Array(bytes.length + 1);
  longer.set(bytes);
  assertEquals(decodeRecord(longer), null);
  // The signed body is canonical: same fields, same bytes.
  assertEquals(encodeRecordBody({ ...r }), encodeRecordBody(back!));
});

Deno.test("Private keys survive PKCS8 and JWK export and import", async () => {
  const a = await member();
  const pkcs8 = await importPrivateKey(await exportPrivateKey(a.privateKey));
  const jwk = await importPrivateKey(await crypto.subtle.exportKey("jwk", a.privateKey));
  for (const key of [pkcs8, jwk]) {
    const r = await announce({ group, nodeKey: a.publicKey, addr: "ws://a", root, count: 0 }, key, NOW);
    assertEquals(await checkRecord(r, NOW, { sender: a.publicKey }), null);
  }
  await assertRejects(() => importPrivateKey(new Uint8Array(10)));
});
