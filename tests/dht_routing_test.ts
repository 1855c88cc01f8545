import { K_BUCKET, ROUTING_ENTRIES_MAX, ROUTING_FAILURES_MAX } from "../core/limits.ts";
import { bytesEqual, Prng } from "../core/bytes.ts";
import { assert, assertEquals, assertThrows } from "@std/assert";
import { commonPrefixLength, compareDistance, type Contact, nodeIdOf, RoutingTable } from "../net/dht/routing.ts";
import { XfError } from "../core/errors.ts";

const rng = new Prng(0x5eed);

/** A real contact: id = SHA-256(key). */
function contact(lastSeen = 0): Contact {
  const key = rng.bytes(32);
  return { id: nodeIdOf(key), key, addr: `sim:${rng.u32()}`, lastSeen };
}

/** A contact whose id shares exactly `bit` leading bits with `self` (for tables with verifyIds off). */
function contactAt(self: Uint8Array, bit: number, lastSeen = 0): Contact {
  const id = rng.bytes(32);
  for (let i = 0; i < bit; i++) setBit(id, i, getBit(self, i));
  setBit(id, bit, 1 - getBit(self, bit));
  return { id, key: rng.bytes(32), addr: `sim:${rng.u32()}`, lastSeen };
}

function getBit(b: Uint8Array, i: number): number {
  return (b[i >> 3]! >> (7 - (i & 7))) & 1;
}

function setBit(b: Uint8Array, i: number, v: number): void {
  const m = 0x80 >> (i & 7);
  b[i >> 3] = v ? b[i >> 3]! | m : b[i >> 3]! & ~m;
}

function assertInvariants(t: RoutingTable): void {
  const sizes = t.bucketSizes();
  assert(sizes.every((s) => s <= t.k), `a bucket holds more than k: ${sizes}`);
  assertEquals(sizes.reduce((a, b) => a + b, 0), t.size());
  assert(t.size() <= t.entriesMax);
  const last = sizes.length - 1;
  let at = 0;
  const all = t.contacts();
  for (const [i, n] of sizes.entries()) {
    for (const c of all.slice(at, at + n)) {
      const cpl = commonPrefixLength(t.self, c.id);
      assert(i < last ? cpl === i : cpl >= last, `contact with prefix ${cpl} in bucket ${i} of ${sizes.length}`);
    }
    at += n;
  }
}

Deno.test("RoutingTable.insert() keeps every bucket at most k and in the right bucket", () => {
  const t = new RoutingTable(contact().id);
  let pending = 0;
  for (let i = 0; i < 3000; i++) {
    const r = t.insert(contact(i));
    if (r.status === "pending" || r.status === "queued") pending++;
  }
  assertInvariants(t);
  assert(pending > 0, "far buckets should have filled up");
  assert(t.bucketCount() > 5);
});

Deno.test("RoutingTable.insert() refuses itself, bad ids and bad addresses", () => {
  const me = contact();
  const t = new RoutingTable(me.id);
  assertEquals(t.insert(me), { status: "refused", code: "SELF" });
  const other = contact();
  assertEquals(t.insert({ ...other, id: contact().id }), { status: "refused", code: "BAD_CONTACT" });
  assertEquals(t.insert({ ...other, id: other.id.subarray(0, 31) }), { status: "refused", code: "BAD_CONTACT" });
  assertEquals(t.insert({ ...other, addr: "" }), { status: "refused", code: "BAD_CONTACT" });
  assertEquals(t.insert({ ...other, addr: "é".repeat(200) }), { status: "refused", code: "BAD_CONTACT" });
  assertEquals(t.insert({ ...other, lastSeen: NaN }), { status: "refused", code: "BAD_CONTACT" });
  assertEquals(t.insert(other), { status: "added" });
  assertEquals(t.insert({ ...other, addr: "sim:new", lastSeen: 5 }), { status: "updated" });
  assertEquals(t.get(other.id)?.addr, "sim:new");
  assertEquals(t.size(), 1);
});

Deno.test("RoutingTable.insert() pings the least recently seen before replacing it", () => {
  const self = contact().id;
  const t = new RoutingTable(self, { verifyIds: false });
  // Fill bucket 0 (the far half) with k contacts, oldest first. A contact of
  // the near half first, so that bucket 0 is split off and can fill.
  t.insert(contactAt(self, 5));
  const far = Array.from({ length: K_BUCKET }, (_, i) => contactAt(self, 0, i));
  for (const c of far) assertEquals(t.insert(c).status, "added");
  assertEquals(t.bucketSizes()[0], K_BUCKET);

  // A newcomer: the oldest is to be pinged; the newcomer is not in yet.
  const n1 = contactAt(self, 0, 100);
  const r1 = t.insert(n1);
  assertEquals(r1.status, "pending");
  assert(r1.status === "pending" && bytesEqual(r1.ping.id, far[0]!.id));
  assert(!t.has(n1.id));

  // A second newcomer while the ping is out waits on the same ping.
  const n2 = contactAt(self, 0, 101);
  assertEquals(t.insert(n2), { status: "queued" });

  // The oldest answers: it stays (now most recent), the newcomer is dropped.
  assert(t.seen(far[0]!.id, 200));
  assert(t.has(far[0]!.id) && !t.has(n1.id) && !t.has(n2.id));
  assertEquals(t.contacts().filter((c) => commonPrefixLength(self, c.id) === 0).at(-1)?.lastSeen, 200);

  // Next newcomer: now far[1] is the least recently seen; it fails and is replaced.
  const n3 = contactAt(self, 0, 300);
  const r3 = t.insert(n3);
  assert(r3.status === "pending" && bytesEqual(r3.ping.id, far[1]!.id));
  const promoted = t.failed(far[1]!.id);
  assert(promoted && bytesEqual(promoted.id, n3.id));
  assert(t.has(n3.id) && !t.has(far[1]!.id));
  assertEquals(t.bucketSizes()[0], K_BUCKET);
  assertInvariants(t);
});

Deno.test("RoutingTable.failed() drops a contact after ROUTING_FAILURES_MAX failures in a row", () => {
  const t = new RoutingTable(contact().id);
  const c = contact();
  t.insert(c);
  for (let i = 1; i < ROUTING_FAILURES_MAX; i++) t.failed(c.id);
  assert(t.has(c.id));
  t.seen(c.id, 10); // an answer resets the count
  for (let i = 1; i < ROUTING_FAILURES_MAX; i++) t.failed(c.id);
  assert(t.has(c.id));
  t.failed(c.id);
  assert(!t.has(c.id));
  assertEquals(t.size(), 0);
});

Deno.test("RoutingTable.remove() lets a waiting newcomer take the slot", () => {
  const self = contact().id;
  const t = new RoutingTable(self, { verifyIds: false });
  t.insert(contactAt(self, 3));
  const far = Array.from({ length: K_BUCKET }, (_, i) => contactAt(self, 0, i));
  for (const c of far) t.insert(c);
  const n = contactAt(self, 0, 50);
  assertEquals(t.insert(n).status, "pending");
  assert(t.remove(far[7]!.id));
  assert(t.has(n.id));
  assert(!t.remove(far[7]!.id));
  assertInvariants(t);
});

Deno.test("RoutingTable splits only the bucket that holds the local id", () => {
  const self = contact().id;
  const t = new RoutingTable(self, { verifyIds: false });
  // 3k contacts far away (bucket 0) and a few near: bucket 0 never splits.
  for (let i = 0; i < 3 * K_BUCKET; i++) t.insert(contactAt(self, 0, i));
  for (let i = 0; i < 5; i++) t.insert(contactAt(self, 10 + i, i));
  assertEquals(t.bucketSizes()[0], K_BUCKET);
  assertEquals(t.size(), K_BUCKET + 5);
  assertInvariants(t);
});

Deno.test(`RoutingTable holds at most ROUTING_ENTRIES_MAX (${ROUTING_ENTRIES_MAX}) contacts`, () => {
  const self = contact().id;
  const t = new RoutingTable(self, { verifyIds: false });
  const refused: Record<string, number> = {};
  // k contacts at every prefix length: 256 * 20 = 5120 candidates, each bucket has room.
  for (let bit = 255; bit >= 0; bit--) {
    for (let i = 0; i < K_BUCKET; i++) {
      const r = t.insert(contactAt(self, bit, i));
      if (r.status === "refused") refused[r.code] = (refused[r.code] ?? 0) + 1;
    }
  }
  assertEquals(t.size(), ROUTING_ENTRIES_MAX);
  assert((refused.TABLE_FULL ?? 0) > 0);
  assertInvariants(t);
  const small = new RoutingTable(self, { entriesMax: 30 });
  for (let i = 0; i < 500; i++) small.insert(contact(i));
  assertEquals(small.size(), 30);
});

Deno.test("RoutingTable.closest() matches brute force", () => {
  const t = new RoutingTable(contact().id);
  const all: Contact[] = [];
  for (let i = 0; i < 2000; i++) {
    const c = contact(i);
    if (t.insert(c).status === "added") all.push(c);
  }
  for (let q = 0; q < 200; q++) {
    const target = q % 2 ? rng.bytes(32) : all[q % all.length]!.id;
    const want = all.slice().sort((a, b) => compareDistance(target, a.id, b.id)).slice(0, K_BUCKET);
    const got = t.closest(target, K_BUCKET);
    assertEquals(got.map((c) => c.addr), want.map((c) => c.addr));
  }
  assertEquals(t.closest(rng.bytes(32), 0), []);
  assertEquals(t.closest(rng.bytes(32), 10_000).length, t.size());
});

Deno.test("RoutingTable.closest() matches brute force in a deep table, for targets at every depth", () => {
  const self = contact().id;
  const t = new RoutingTable(self, { verifyIds: false });
  const all: Contact[] = [];
  for (let bit = 0; bit < 40; bit++) {
    for (let i = 0; i < 1 + (bit % 7); i++) {
      const c = contactAt(self, bit, i);
      if (t.insert(c).status === "added") all.push(c);
    }
  }
  assert(t.bucketCount() > 30);
  for (let q = 0; q < 300; q++) {
    const target = contactAt(self, q % 45).id;
    for (const n of [1, 5, K_BUCKET, 60]) {
      const want = all.slice().sort((a, b) => compareDistance(target, a.id, b.id)).slice(0, n);
      assertEquals(t.closest(target, n).map((c) => c.addr), want.map((c) => c.addr));
    }
  }
});

Deno.test("RoutingTable.stale() lists contacts not seen lately, oldest first", () => {
  const t = new RoutingTable(contact().id);
  const cs = [contact(100), contact(50), contact(900)];
  for (const c of cs) t.insert(c);
  assertEquals(t.stale(1000, 500).map((c) => c.lastSeen), [50, 100]);
  t.seen(cs[1]!.id, 1000);
  assertEquals(t.stale(1000, 500).map((c) => c.lastSeen), [100]);
});

Deno.test("RoutingTable.toJSON() round-trips through fromJSON()", () => {
  const t = new RoutingTable(contact().id);
  for (let i = 0; i < 300; i++) t.insert(contact(i));
  const json = JSON.parse(JSON.stringify(t));
  const back = RoutingTable.fromJSON(json);
  assertEquals(back.size(), t.size());
  assertEquals(back.bucketSizes(), t.bucketSizes());
  const target = rng.bytes(32);
  assertEquals(back.closest(target).map((c) => c.addr), t.closest(target).map((c) => c.addr));
});

Deno.test("RoutingTable.fromJSON() rejects corrupt data with STORAGE_CORRUPTION", () => {
  const t = new RoutingTable(contact().id);
  t.insert(contact());
  const good = t.toJSON();
  const bad: unknown[] = [
    null,
    { ...good, v: 2 },
    { ...good, self: "zz" },
    { ...good, contacts: "no" },
    { ...good, contacts: [{ ...good.contacts[0]!, key: "00" }] },
    { ...good, contacts: [{ ...good.contacts[0]!, lastSeen: "1" }] },
  ];
  for (const b of bad) {
    const e = assertThrows(() => RoutingTable.fromJSON(b), XfError);
    assertEquals(e.code, "STORAGE_CORRUPTION");
  }
});
