// Negentropy v1: our Reconciler against itself and against nostr-tools (the
// reference peer), message bytes compared with nostr-tools' own run.

import { negentropyVarint } from "../merkle/fingerprint.ts";
import { Prng } from "../core/bytes.ts";
import { assert, assertEquals, assertInstanceOf, assertStringIncludes, assertThrows } from "@std/assert";
import { bytesToHex, hexToBytes } from "@noble/hashes/utils";
import { nip77 } from "npm:nostr-tools@2.25.2";
import { XfError } from "../core/errors.ts";
import { PROTOCOL_VERSION, Reconciler, type ReconcilerOptions } from "../merkle/negentropy.ts";
import { compareItems, IdSum, type NegentropyStorage, SubRange, VectorStorage } from "../merkle/negentropy_storage.ts";
import { MerkleTree } from "../merkle/mod.ts";

const { Negentropy, NegentropyStorageVector } = nip77;

interface Item {
  ts: number;
  id: Uint8Array;
}

/**
 * `n` distinct items. Timestamps collide often (span n/4), and one item in
 * eight shares a 1..20-byte id prefix with an earlier one, so minimal bounds
 * need id prefixes.
 */
function makeItems(n: number, seed: number, tsBase = 0): Item[] {
  const r = new Prng(seed).float;
  const span = Math.max(1, Math.floor(n / 4));
  const out: Item[] = [];
  for (let i = 0; i < n; i++) {
    const id = new Uint8Array(32);
    for (let k = 0; k < 32; k++) id[k] = Math.floor(r() * 256);
    const prev = out[Math.floor(r() * out.length)];
    let ts = tsBase + Math.floor(r() * span);
    if (prev !== undefined && r() < 0.125) {
      id.set(prev.id.subarray(0, 1 + Math.floor(r() * 20)));
      ts = prev.ts;
    }
    out.push({ ts, id });
  }
  return out;
}

interface Case {
  a: Item[];
  b: Item[];
  onlyA: Set<string>;
  onlyB: Set<string>;
}

function makeCase(
  common: number,
  onlyA: number,
  onlyB: number,
  seed: number,
  tsBase = 0,
): Case {
  const all = makeItems(common + onlyA + onlyB, seed, tsBase);
  const c = all.slice(0, common);
  const xa = all.slice(common, common + onlyA);
  const xb = all.slice(common + onlyA);
  return {
    a: [...c, ...xa],
    b: [...c, ...xb],
    onlyA: new Set(xa.map((x) => bytesToHex(x.id))),
    onlyB: new Set(xb.map((x) => bytesToHex(x.id))),
  };
}

interface Step {
  output: Uint8Array | null;
  have: string[];
  need: string[];
}

/** One side of a run, ours or nostr-tools', behind the same face. */
interface Party {
  initiate(): Uint8Array;
  reconcile(msg: Uint8Array): Step;
}

function ours(
  items: Item[],
  options: ReconcilerOptions = {},
): Party & { rec: Reconciler } {
  const s = new VectorStorage();
  for (const x of items) s.insert(x.ts, x.id);
  s.seal();
  const rec = new Reconciler(s, options);
  return {
    rec,
    initiate: () => rec.initiate(),
    reconcile(msg) {
      const r = rec.reconcile(msg);
      return {
        output: r.output,
        have: r.have.map(bytesToHex),
        need: r.need.map(bytesToHex),
      };
    },
  };
}

/** nostr-tools; `frameSizeLimit` 0 stands for unlimited (it has no such setting). */
function theirs(items: Item[], frameSizeLimit = 60_000): Party {
  const s = new NegentropyStorageVector();
  for (const x of items) s.insert(x.ts, bytesToHex(x.id));
  s.seal();
  const neg = new Negentropy(
    s,
    frameSizeLimit === 0 ? Number.MAX_SAFE_INTEGER : frameSizeLimit,
  );
  let initiator = false;
  return {
    initiate() {
      initiator = true;
      return hexToBytes(neg.initiate());
    },
    reconcile(msg) {
      const have: string[] = [], need: string[] = [];
      const out = neg.reconcile(
        bytesToHex(msg),
        (id) => have.push(id),
        (id) => need.push(id),
      );
      // A nostr-tools responder with nothing to add returns null; a peer sends the bare version byte.
      const output = out === null ? (initiator ? null : new Uint8Array([PROTOCOL_VERSION])) : hexToBytes(out);
      return { output, have, need };
    },
  };
}

interface Transcript {
  msgs: string[];
  initHave: string[];
  initNeed: string[];
  respHave: string[];
  respNeed: string[];
}

const ROUNDS_MAX = 1000;

function run(init: Party, resp: Party): Transcript {
  const t: Transcript = {
    msgs: [],
    initHave: [],
    initNeed: [],
    respHave: [],
    respNeed: [],
  };
  let msg = init.initiate();
  t.msgs.push(bytesToHex(msg));
  for (let round = 0; round < ROUNDS_MAX; round++) {
    const r = resp.reconcile(msg);
    t.respHave.push(...r.have);
    t.respNeed.push(...r.need);
    if (r.output === null) throw new Error("a responder always replies");
    t.msgs.push(bytesToHex(r.output));
    const i = init.reconcile(r.output);
    t.initHave.push(...i.have);
    t.initNeed.push(...i.need);
    if (i.output === null) return t;
    t.msgs.push(bytesToHex(i.output));
    msg = i.output;
  }
  throw new Error(`no convergence in ${ROUNDS_MAX} rounds`);
}

/** In nostr-tools semantics each side learns the ranges the other sent as id lists. */
function assertDifference(t: Transcript, c: Case): void {
  assertEquals(new Set([...t.initHave, ...t.respNeed]), c.onlyA, "A \\ B");
  assertEquals(new Set([...t.initNeed, ...t.respHave]), c.onlyB, "B \\ A");
}

/**
 * Run nostr-tools against itself, then ours against ours, ours against
 * nostr-tools and nostr-tools against ours; every run must send the same
 * bytes and report the same ids as the reference run.
 */
function checkAll(c: Case, frameSizeLimit = 60_000): Transcript {
  const ref = run(theirs(c.a, frameSizeLimit), theirs(c.b, frameSizeLimit));
  assertDifference(ref, c);
  const opts = { frameSizeLimit };
  const runs: [string, Transcript][] = [
    ["ours vs ours", run(ours(c.a, opts), ours(c.b, opts))],
    ["ours vs nostr-tools", run(ours(c.a, opts), theirs(c.b, frameSizeLimit))],
    ["nostr-tools vs ours", run(theirs(c.a, frameSizeLimit), ours(c.b, opts))],
  ];
  for (const [name, t] of runs) {
    assertEquals(t.msgs.length, ref.msgs.length, `${name}: message count`);
    for (let i = 0; i < t.msgs.length; i++) {
      if (t.msgs[i] !== ref.msgs[i]) {
        throw new Error(`${name}: message ${i} differs from nostr-tools'`);
      }
    }
    assertEquals(t, ref, name);
  }
  return ref;
}

const SHAPES: [string, (n: number, k: number) => [number, number, number]][] = [
  ["identical", (n) => [n, 0, 0]],
  ["only the initiator has extras", (n, k) => [n, k, 0]],
  ["only the responder has extras", (n, k) => [n, 0, k]],
  ["both have extras", (n, k) => [n, k, k]],
];

for (const n of [0, 1, 10, 1000]) {
  Deno.test(`Reconciler matches nostr-tools byte for byte on ${n} common items`, () => {
    const k = Math.max(1, Math.floor(n / 10));
    for (const [name, shape] of SHAPES) {
      const [common, a, b] = shape(n, k);
      try {
        checkAll(makeCase(common, a, b, 1000 * n + a * 7 + b));
      } catch (e) {
        throw new Error(
          `${name} (${common} + ${a} / ${b}): ${(e as Error).message}`,
          { cause: e },
        );
      }
    }
  });
}

Deno.test("Reconciler matches nostr-tools on one difference in 1,000", () => {
  checkAll(makeCase(999, 1, 0, 11));
  checkAll(makeCase(999, 0, 1, 12));
  checkAll(makeCase(999, 1, 1, 13));
});

Deno.test("Reconciler matches nostr-tools on 100,000 items", () => {
  checkAll(makeCase(100_000, 0, 0, 21));
  const t = checkAll(makeCase(100_000, 40, 60, 22));
  assert(t.msgs.length >= 3);
});

Deno.test("Reconciler matches nostr-tools over several rounds under a 4096-byte frame limit", () => {
  const c = makeCase(2_000, 5_000, 5_000, 31);
  const t = checkAll(c, 4096);
  assert(
    t.msgs.length > 6,
    `expected many rounds, got ${t.msgs.length} messages`,
  );
  for (const m of t.msgs) {
    assert(m.length / 2 <= 4096, `message of ${m.length / 2} bytes`);
  }
});

Deno.test("Reconciler cuts rounds exactly where nostr-tools does, limits 4096 to 4127", () => {
  const c = makeCase(200, 1_000, 1_000, 33);
  for (let limit = 4096; limit < 4128; limit++) {
    const ref = run(theirs(c.a, limit), theirs(c.b, limit));
    const t = run(
      ours(c.a, { frameSizeLimit: limit }),
      ours(c.b, { frameSizeLimit: limit }),
    );
    if (t.msgs.join() !== ref.msgs.join()) {
      throw new Error(`frameSizeLimit ${limit}: messages differ`);
    }
    assertEquals(t, ref);
  }
});

Deno.test("Reconciler with frameSizeLimit 0 sends what an unlimited nostr-tools sends", () => {
  const t = checkAll(makeCase(2_000, 5_000, 5_000, 32), 0);
  assert(
    t.msgs.some((m) => m.length / 2 > 60_000),
    "a message above nostr-tools' default limit",
  );
});

Deno.test("Reconciler with idListReply gives the initiator the whole difference", () => {
  for (
    const [common, a, b, limit] of [[0, 0, 5, 0], [0, 5, 0, 0], [
      300,
      40,
      50,
      0,
    ], [2_000, 5_000, 5_000, 4096]]
  ) {
    const c = makeCase(common!, a!, b!, 41 + common!);
    const opts = { frameSizeLimit: limit!, idListReply: true };
    for (
      const init of [ours(c.a, { frameSizeLimit: limit! }), theirs(c.a, limit)]
    ) {
      const t = run(init, ours(c.b, opts));
      assertEquals(new Set(t.initHave), c.onlyA);
      assertEquals(new Set(t.initNeed), c.onlyB);
      assertEquals(t.respHave, []);
      assertEquals(t.respNeed, []);
      if (limit) { for (const m of t.msgs) assert(m.length / 2 <= limit); }
    }
  }
});

Deno.test("Reconciler handles millisecond and near-2^53 timestamps", () => {
  for (const base of [1_700_000_000_000, Number.MAX_SAFE_INTEGER - 10_000]) {
    const c = makeCase(3000, 30, 40, 51, base);
    const t = run(ours(c.a), ours(c.b));
    assertDifference(t, c);
  }
});

Deno.test("Reconciler counts messages, bytes and fingerprints", () => {
  const c = makeCase(1000, 10, 10, 61);
  const a = ours(c.a), b = ours(c.b);
  const t = run(a, b);
  const bytes = t.msgs.map((m) => m.length / 2);
  const sent = (parity: number) => bytes.filter((_, i) => i % 2 === parity).reduce((x, y) => x + y, 0);
  assertEquals(a.rec.stats.bytesOut, sent(0));
  assertEquals(a.rec.stats.bytesIn, sent(1));
  assertEquals(b.rec.stats.bytesIn, sent(0));
  assertEquals(b.rec.stats.bytesOut, sent(1));
  assertEquals(a.rec.stats.messages + b.rec.stats.messages, 2 * t.msgs.length);
  assert(a.rec.stats.fingerprintsComputed >= 16);
  assert(b.rec.stats.fingerprintsComputed >= 16);
});

function assertBad(msg: number[] | Uint8Array, text: string): void {
  const e = assertThrows(() => ours(makeItems(100, 71)).reconcile(Uint8Array.from(msg)));
  assertInstanceOf(e, XfError);
  assertEquals(e.code, "BAD_FRAME");
  assertStringIncludes(e.message, "Cannot decode negentropy message: ");
  assertStringIncludes(e.message, text);
}

Deno.test("Reconciler.reconcile() refuses malformed messages", () => {
  assertBad([], "truncated protocol version at byte 0");
  assertBad([0x00, 0x00, 0x00, 0x00], "bad protocol version byte 0x0 at byte 0");
  assertBad([0x70], "bad protocol version byte 0x70 at byte 0");
  assertBad([0x61, 0x80], "truncated varint (timestamp) at byte 1");
  assertBad([0x61, 0x00, 0x00], "truncated varint (mode) at byte 3");
  assertBad(
    [0x61, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0, 0],
    "exceeds 2^53",
  );
  assertBad([0x61, 0x00, 0x00, 0x03], "unknown mode 3 at byte 3");
  // The offsets are the offending field's, not the range's: a second range starts at byte 4 here.
  assertBad([0x61, 0x02, 0x00, 0x00, 0x00, 0x00, 0x07], "unknown mode 7 at byte 6");
  assertBad(
    [0x61, 0x00, 0x21, ...new Uint8Array(33), 0x00],
    "bound id prefix of 33 bytes at byte 2",
  );
  assertBad(
    [0x61, 0x02, 0x00, 0x00, 0x03, 0x21, ...new Uint8Array(33), 0x00],
    "bound id prefix of 33 bytes at byte 5",
  );
  assertBad([0x61, 0x00, 0x02, 0x01], "truncated bound id at byte 3");
  assertBad([0x61, 0x00, 0x00, 0x01, 1, 2, 3], "truncated fingerprint at byte 4");
  assertBad([
    0x61,
    0x00,
    0x00,
    0x02,
    ...negentropyVarint(1000),
    ...new Uint8Array(64),
  ], "id list of 1000 ids at byte 4");
  assertBad(
    [0x61, 0x00, 0x00, 0x02, 0xff, 0xff, 0xff, 0x7f],
    "id list of 268435455 ids at byte 4",
  );
  assertBad(
    [0x61, 0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x05, ...new Uint8Array(64)],
    "id list of 5 ids at byte 7 exceeds the 64 bytes left",
  );
  assertBad([0x61, 0x06, 0x00, 0x00, 0x01, 0x00, 0x00], "bound out of order");
  assertBad(
    [0x61, 0x06, 0x01, 0x05, 0x00, 0x01, 0x01, 0x04, 0x00],
    "bound out of order",
  );
  assertBad([0x61, 0x01, 0x00, 0x00], "bound out of order"); // (0, "") is not above the start
  assertBad(
    [0x61, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00],
    "range after the end bound at byte 4",
  ); // trailing bytes after the last range
});

Deno.test("Reconciler: a responder answers an unsupported protocol version with the bare version byte 0x61", () => {
  for (const v of [0x60, 0x62, 0x6f]) {
    const r = ours(makeItems(100, 71)).rec;
    const res = r.reconcile(Uint8Array.from([v, 0x00, 0x00, 0x07, 0xff])); // the rest is another version's: not read
    assertEquals([...res.output!], [0x61]);
    assertEquals(res.have.length + res.need.length, 0);
    assertEquals(r.stats.bytesOut, 1);
  }
  // Out of the version range (0x60..0x6f) it is not a negentropy message at all.
  const e = assertThrows(() => ours(makeItems(10, 71)).rec.reconcile(Uint8Array.of(0x5f)), XfError);
  assertEquals(e.code, "BAD_FRAME");
});

Deno.test("Reconciler: an initiator given another version's reply ends with UNSUPPORTED_VERSION", () => {
  const r = ours(makeItems(100, 71)).rec;
  r.initiate();
  const e = assertThrows(() => r.reconcile(Uint8Array.of(0x62)), XfError);
  assertEquals(e.code, "UNSUPPORTED_VERSION");
  assertStringIncludes(e.message, "version 2 (byte 0x62)");
  // The bare byte of our own version is the ordinary end: nothing left to reconcile.
  const done = ours(makeItems(100, 71)).rec;
  done.initiate();
  assertEquals(done.reconcile(Uint8Array.of(0x61)).output, null);
});

Deno.test("Reconciler.reconcile() on mutated messages returns or throws XfError", () => {
  const c = makeCase(2000, 50, 50, 81);
  const t = run(ours(c.a), ours(c.b));
  const storage = new VectorStorage();
  for (const x of c.b) storage.insert(x.ts, x.id);
  storage.seal();
  const r = new Prng(82).float;
  for (let i = 0; i < 5000; i++) {
    const base = hexToBytes(t.msgs[i % t.msgs.length]!);
    const m = r() < 0.3 ? base.slice(0, Math.floor(r() * base.length)) : base.slice();
    for (
      let k = 0, flips = 1 + Math.floor(r() * 4);
      k < flips && m.length > 1;
      k++
    ) {
      m[1 + Math.floor(r() * (m.length - 1))] = Math.floor(r() * 256);
    }
    try {
      new Reconciler(storage, {
        frameSizeLimit: i % 2 ? 0 : 4096,
        idListReply: i % 3 === 0,
      }).reconcile(m);
    } catch (e) {
      if (!(e instanceof XfError)) throw e;
    }
  }
});

Deno.test("Reconciler refuses a frameSizeLimit between 1 and 4095", () => {
  const s = new VectorStorage();
  s.seal();
  assertThrows(() => new Reconciler(s, { frameSizeLimit: 4095 }), RangeError);
  assertThrows(() => new Reconciler(s, { frameSizeLimit: 1.5 }), RangeError);
  new Reconciler(s, { frameSizeLimit: 0 });
  new Reconciler(s, { frameSizeLimit: 4096 });
});

Deno.test("VectorStorage agrees with nostr-tools' storage on fingerprints and lower bounds", () => {
  const items = makeItems(5000, 91);
  const mine = new VectorStorage();
  const ref = new NegentropyStorageVector();
  for (const x of items) {
    mine.insert(x.ts, x.id);
    ref.insert(x.ts, bytesToHex(x.id));
  }
  mine.seal();
  ref.seal();
  const r = new Prng(92).float;
  for (let i = 0; i < 300; i++) {
    const a = Math.floor(r() * 5001), b = Math.floor(r() * 5001);
    const [lo, hi] = a <= b ? [a, b] : [b, a];
    assertEquals(mine.fingerprint(lo, hi), ref.fingerprint(lo, hi));
    const x = items[Math.floor(r() * items.length)]!;
    const bound = {
      ts: x.ts + (r() < 0.2 ? 1 : 0),
      id: x.id.slice(0, Math.floor(r() * 33)),
    };
    assertEquals(
      mine.findLowerBound(lo, hi, bound),
      ref.findLowerBound(lo, hi, { timestamp: bound.ts, id: bound.id }),
    );
  }
  assertEquals(
    mine.findLowerBound(0, 5000, { ts: Infinity, id: new Uint8Array(0) }),
    5000,
  );
  for (let i = 1; i < 5000; i++) {
    assert(compareItems(mine.getItem(i - 1), mine.getItem(i)) < 0);
  }
});

Deno.test("VectorStorage.seal() refuses duplicate items", () => {
  const s = new VectorStorage();
  s.insert(5, new Uint8Array(32).fill(1));
  s.insert(5, new Uint8Array(32).fill(1));
  assertThrows(() => s.seal(), RangeError, "duplicate");
});

Deno.test("IdSum adds, subtracts and wraps mod 2^256", () => {
  const ones = new Uint8Array(32).fill(0xff);
  const s = new IdSum();
  s.add(ones);
  s.add(new Uint8Array(32).fill(0).map((_, i) => (i === 0 ? 1 : 0)));
  assertEquals(s.bytes(), new Uint8Array(32));
  const items = makeItems(100, 93);
  const all = new IdSum(), head = new IdSum();
  items.forEach((x, i) => {
    all.add(x.id);
    if (i < 40) head.add(x.id);
  });
  const tail = new IdSum();
  for (const x of items.slice(40)) tail.add(x.id);
  all.subtractSum(head);
  assertEquals(all.bytes(), tail.bytes());
  assertEquals(negentropyVarint(0), new Uint8Array([0]));
  assertEquals(
    negentropyVarint(2 ** 53),
    new Uint8Array([0x90, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00]),
  );
});

// ---- SubRange: partial sync over a time range ----

function vector(items: Item[]): VectorStorage {
  const s = new VectorStorage();
  for (const x of items) s.insert(x.ts, x.id);
  s.seal();
  return s;
}

function merkle(items: Item[]): MerkleTree {
  const sorted = [...items].sort(compareItems);
  const { root, put } = MerkleTree.build(sorted);
  return new MerkleTree({ get: (h) => put.get(bytesToHex(h)) }, root, { cachePages: put.size + 16 });
}

/** A party over any storage (ours). */
function over(storage: NegentropyStorage, options: ReconcilerOptions = {}): Party {
  const rec = new Reconciler(storage, options);
  return {
    initiate: () => rec.initiate(),
    reconcile(msg) {
      const r = rec.reconcile(msg);
      return { output: r.output, have: r.have.map(bytesToHex), need: r.need.map(bytesToHex) };
    },
  };
}

const inRange = (since: number, until: number) => (x: Item) => x.ts >= since && x.ts < until;

Deno.test("SubRange answers as a storage of just the items in [since, until)", () => {
  const items = makeItems(3000, 71, 1_000); // ts in 1000..1750
  const r = new Prng(72).float;
  for (const [since, until] of [[1_200, 1_400], [0, 1_100], [1_700, Infinity], [1_300, 1_300], [5_000, 6_000]]) {
    const want = vector(items.filter(inRange(since!, until!)));
    for (const base of [vector(items), merkle(items)]) {
      const sub = new SubRange(base, since!, until!);
      const n = want.size();
      assertEquals(sub.size(), n);
      for (let i = 0; i < n; i++) assertEquals(sub.getItem(i), want.getItem(i));
      const seen: number[] = [];
      sub.iterate(0, n, (item, i) => void seen.push(i, item.ts));
      const expect: number[] = [];
      want.iterate(0, n, (item, i) => void expect.push(i, item.ts));
      assertEquals(seen, expect);
      for (let k = 0; k < 50 && n > 0; k++) {
        const a = Math.floor(r() * n), b = a + Math.floor(r() * (n - a + 1));
        assertEquals(sub.fingerprint(a, b), want.fingerprint(a, b));
        const bound = { ts: 900 + Math.floor(r() * 1000), id: items[k]!.id.subarray(0, Math.floor(r() * 4)) };
        assertEquals(sub.findLowerBound(a, b, bound), want.findLowerBound(a, b, bound));
      }
      assertThrows(() => sub.getItem(n), RangeError);
      assertThrows(() => sub.fingerprint(0, n + 1), RangeError);
    }
  }
});

Deno.test("SubRange refuses a range that is not 0 <= since <= until in safe integers", () => {
  const s = vector(makeItems(10, 73));
  for (const [since, until] of [[-1, 5], [1.5, 5], [10, 9], [NaN, 5], [0, 2 ** 53], [Infinity, Infinity]]) {
    assertThrows(() => new SubRange(s, since!, until!), RangeError);
  }
});

Deno.test("Reconciler over SubRanges sends what nostr-tools sends over just the range, and finds its difference", () => {
  for (const [common, a, b, limit] of [[3_000, 40, 60, 60_000], [20_000, 300, 200, 4096], [500, 0, 0, 60_000]]) {
    const c = makeCase(common!, a!, b!, 81 + common!, 1_000_000); // nostr-tools reads 32-bit varints
    const lo = 1_000_000 + Math.floor((common! + a! + b!) / 16);
    const hi = lo + Math.floor((common! + a! + b!) / 8);
    const keep = inRange(lo, hi);
    const ref = run(theirs(c.a.filter(keep), limit), theirs(c.b.filter(keep), limit));
    const t = run(
      over(new SubRange(merkle(c.a), lo, hi), { frameSizeLimit: limit! }),
      over(new SubRange(merkle(c.b), lo, hi), { frameSizeLimit: limit! }),
    );
    assertEquals(t, ref);
    const hex = (xs: Item[]) => new Set(xs.filter(keep).map((x) => bytesToHex(x.id)));
    const onlyA = hex(c.a.filter((x) => c.onlyA.has(bytesToHex(x.id))));
    const onlyB = hex(c.b.filter((x) => c.onlyB.has(bytesToHex(x.id))));
    assertEquals(new Set([...t.initHave, ...t.respNeed]), onlyA);
    assertEquals(new Set([...t.initNeed, ...t.respHave]), onlyB);
    assert(onlyA.size < c.onlyA.size || a === 0, "some differences lie outside the range");
  }
});

Deno.test("SubRange finds its ranks again when the storage changes between messages", () => {
  const items = makeItems(400, 91, 100); // ts 100..199
  const tree = merkle(items);
  const sub = new SubRange(tree, 150, 180);
  const first = sub.getItem(0);
  const n = sub.size();
  // Items before the range shift every rank of the tree, not the range's items.
  tree.insert([{ ts: 10, id: new Uint8Array(32).fill(1) }, { ts: 20, id: new Uint8Array(32).fill(2) }]);
  assertEquals(sub.size(), n);
  assertEquals(sub.getItem(0), first);
  tree.insert([{ ts: 170, id: new Uint8Array(32).fill(3) }]);
  assertEquals(sub.size(), n + 1);
});
