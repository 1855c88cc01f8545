/**
 * Property-based fuzzing of every decoder that reads bytes from outside.
 *
 * Each property feeds a decoder arbitrary input and mutations of real
 * encodings (bit flips, truncations, insertions, duplicated slices). The
 * only outcomes allowed are a correct result (it re-encodes to the same
 * bytes where the format is canonical) or an `XfError` with one of the codes
 * the decoder documents; no other exception, no case slower than
 * `CASE_MS_MAX`. The default run uses fixed seeds and a few thousand cases;
 * `deno task test:fuzz` (`XF_FUZZ_RUNS=1000000`) runs that many cases in
 * total with random seeds. fast-check prints the seed of a failure.
 *
 * Minimal counterexamples found are kept in `tests/fixtures/fuzz/` and
 * replayed by the last test of this file.
 */

import { negentropyVarint } from "../merkle/fingerprint.ts";
import { bytesEqual, concatBytes, fromHex, toHex } from "../core/bytes.ts";
import fc from "npm:fast-check@4.11.0";
import { assert, assertEquals } from "@std/assert";
import { sha256 } from "@noble/hashes/sha2";
import { type CborValue, decodeCbor, encodeCbor, skipItem } from "../storage/cbor.ts";
import { ERROR_STATUS, type ErrorCode, XfError } from "../core/errors.ts";
import {
  createGroup,
  decodeEvent,
  decodeManifest,
  encodeEvent,
  encodeManifest,
  peekEvent,
  signEvent,
  signingBytes,
  type StoredEvent,
} from "../storage/event.ts";
import { generateKeyPair } from "../storage/ed25519.ts";
import { decodeMembership, encodeMembership } from "../storage/membership.ts";
import { decodeTombstone, encodeTombstone } from "../storage/deletion.ts";
import { decodeFrame, encodeFrame } from "../net/frames.ts";
import { Reconciler } from "../merkle/negentropy.ts";
import { VectorStorage } from "../merkle/negentropy_storage.ts";
import * as dht from "../net/dht/records.ts";
import { MerkleTree } from "../merkle/tree.ts";
import { verifyProof } from "../merkle/proof.ts";
import { Wal, type WalFs } from "../storage/wal.ts";
import { readSse, type SseMessage } from "../client/sse.ts";
import { XfClientError } from "../client/errors.ts";
import { arrivalCursor, parseCursor, parseStreamQuery, timeCursor } from "../net/stream.ts";

// ---------------------------------------------------------------------------
// Run configuration

const FUZZ_RUNS = Number(Deno.env.get("XF_FUZZ_RUNS") ?? 0);
/** Cases in the default run, over all properties. */
const DEFAULT_RUNS = 5000;
const TOTAL_RUNS = FUZZ_RUNS > 0 ? FUZZ_RUNS : DEFAULT_RUNS;
/** The slowest a single case may be (a hang or a quadratic blow-up fails). */
const CASE_MS_MAX = 1000;
/** Largest fuzzed input, in bytes. */
const INPUT_BYTES_MAX = 2048;

/** Weight of each property in the total number of cases. */
const WEIGHTS: Record<string, number> = {
  "cbor.arbitrary": 8,
  "cbor.mutated": 8,
  "cbor.values": 4,
  "cbor.hugeHeads": 2,
  "skipItem": 6,
  "event.arbitrary": 4,
  "event.mutated": 10,
  "peekEvent": 3,
  "manifest": 4,
  "membership": 4,
  "tombstone": 4,
  "frame": 8,
  "negentropy.responder": 8,
  "negentropy.initiator": 5,
  "negentropy.hugeCounts": 2,
  "record": 6,
  "proof": 6,
  "wal": 3,
  "sse": 3,
  "cursor": 4,
  "streamQuery": 2,
};
const WEIGHT_SUM = Object.values(WEIGHTS).reduce((a, b) => a + b, 0);
let casesRun = 0;

function params(name: string): fc.Parameters<unknown> {
  // A property missing here once ran no case at all (its count was NaN, and the total printed NaN).
  if (!(name in WEIGHTS)) throw new Error(`fuzz property "${name}" has no weight in WEIGHTS`);
  const numRuns = Math.max(10, Math.round((TOTAL_RUNS * WEIGHTS[name]!) / WEIGHT_SUM));
  casesRun += numRuns;
  // Fixed seeds by default (reproducible); random ones under test:fuzz. fast-check reports the seed on failure.
  if (FUZZ_RUNS > 0) return { numRuns };
  let seed = 0x5eed;
  for (const c of name) seed = (seed * 31 + c.charCodeAt(0)) | 0;
  return { numRuns, seed };
}

/** Run `fn`, failing when it takes longer than `CASE_MS_MAX`. */
function timed<T>(what: string, fn: () => T): T {
  const t0 = performance.now();
  const out = fn();
  checkTime(what, t0);
  return out;
}

async function timedAsync<T>(what: string, fn: () => Promise<T>): Promise<T> {
  const t0 = performance.now();
  const out = await fn();
  checkTime(what, t0);
  return out;
}

function checkTime(what: string, t0: number): void {
  const ms = performance.now() - t0;
  if (ms > CASE_MS_MAX) throw new Error(`${what} took ${ms.toFixed(0)} ms, over ${CASE_MS_MAX} ms`);
}

/** Require `e` to be an XfError with a stable code among `codes`; rethrow anything else. */
function expectCode(e: unknown, codes: readonly ErrorCode[], what: string): ErrorCode {
  if (!(e instanceof XfError)) {
    throw new Error(`${what} threw ${(e as Error)?.name ?? typeof e}: ${(e as Error)?.message ?? e}`, { cause: e });
  }
  if (!(e.code in ERROR_STATUS)) throw new Error(`${what} threw unstable code "${e.code}"`);
  if (!codes.includes(e.code)) throw new Error(`${what} threw ${e.code} (${e.message}), expected one of ${codes}`);
  return e.code;
}

/** Outcome of a decoder: its value, or the code it refused with. */
type Outcome<T> = { ok: true; value: T } | { ok: false; code: ErrorCode };

function outcome<T>(what: string, codes: readonly ErrorCode[], fn: () => T): Outcome<T> {
  return timed(what, () => {
    try {
      return { ok: true, value: fn() };
    } catch (e) {
      return { ok: false, code: expectCode(e, codes, what) };
    }
  });
}

// ---------------------------------------------------------------------------
// Inputs: arbitrary bytes and mutations of real encodings

type Mutation =
  | { op: "flip"; pos: number; bit: number }
  | { op: "set"; pos: number; value: number }
  | { op: "cut"; pos: number }
  | { op: "del"; pos: number; len: number }
  | { op: "ins"; pos: number; bytes: Uint8Array }
  | { op: "dup"; start: number; len: number; at: number }
  | { op: "head"; pos: number; byte: number; fill: number };

/** CBOR heads with 1-, 2-, 4- and 8-byte arguments, of every major type. */
const HEAD_BYTES = [0x18, 0x19, 0x1a, 0x1b].flatMap((info) => [0, 1, 2, 3, 4, 5, 6, 7].map((m) => (m << 5) | info));

const mutationArb: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ op: fc.constant("flip" as const), pos: fc.nat(), bit: fc.nat(7) }),
  fc.record({ op: fc.constant("set" as const), pos: fc.nat(), value: fc.nat(255) }),
  fc.record({ op: fc.constant("cut" as const), pos: fc.nat() }),
  fc.record({ op: fc.constant("del" as const), pos: fc.nat(), len: fc.integer({ min: 1, max: 40 }) }),
  fc.record({ op: fc.constant("ins" as const), pos: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 12 }) }),
  fc.record({
    op: fc.constant("dup" as const),
    start: fc.nat(),
    len: fc.integer({ min: 1, max: 80 }),
    at: fc.nat(),
  }),
  fc.record({
    op: fc.constant("head" as const),
    pos: fc.nat(),
    byte: fc.constantFrom(...HEAD_BYTES),
    fill: fc.constantFrom(0x00, 0x7f, 0x80, 0xff),
  }),
);

/** Apply mutations in order; positions wrap around the current length. */
function mutate(base: Uint8Array, muts: readonly Mutation[]): Uint8Array {
  let b: Uint8Array = base.slice();
  for (const m of muts) {
    const n = b.length;
    switch (m.op) {
      case "flip":
        if (n) b[m.pos % n]! ^= 1 << m.bit;
        break;
      case "set":
        if (n) b[m.pos % n] = m.value;
        break;
      case "cut":
        b = b.slice(0, m.pos % (n + 1));
        break;
      case "del": {
        const p = m.pos % (n + 1);
        b = concatBytes(b.subarray(0, p), b.subarray(p + m.len));
        break;
      }
      case "ins": {
        const p = m.pos % (n + 1);
        b = concatBytes(b.subarray(0, p), m.bytes, b.subarray(p));
        break;
      }
      case "dup": {
        if (!n) break;
        const s = m.start % n;
        const slice = b.slice(s, s + m.len);
        const at = m.at % (n + 1);
        b = concatBytes(b.subarray(0, at), slice, b.subarray(at));
        break;
      }
      case "head": {
        // A head claiming a huge argument, over whatever was there.
        if (!n) break;
        const p = m.pos % n;
        const size = 1 << ((m.byte & 0x1f) - 24);
        b = b.slice();
        b[p] = m.byte;
        for (let i = 1; i <= size && p + i < b.length; i++) b[p + i] = m.fill;
        break;
      }
    }
    if (b.length > INPUT_BYTES_MAX * 2) b = b.slice(0, INPUT_BYTES_MAX * 2);
  }
  return b;
}

const bytesArb = fc.uint8Array({ maxLength: INPUT_BYTES_MAX });
/** Mutations of one of `pool` (1 to 4 of them). */
const mutatedOf = (pool: readonly Uint8Array[]) =>
  fc.tuple(fc.constantFrom(...pool), fc.array(mutationArb, { minLength: 1, maxLength: 4 })).map(([b, m]) =>
    mutate(b, m)
  );
/** Arbitrary bytes, mutations of real encodings, or the real encodings themselves. */
const inputOf = (pool: readonly Uint8Array[]) =>
  fc.oneof(
    { arbitrary: bytesArb, weight: 2 },
    { arbitrary: mutatedOf(pool), weight: 6 },
    { arbitrary: fc.constantFrom(...pool), weight: 1 },
  );

// ---------------------------------------------------------------------------
// Real encodings

const stringArb = fc.oneof(
  fc.string({ maxLength: 12 }),
  fc.string({ unit: "binary", maxLength: 8 }),
  fc.string({ maxLength: 6 }).map((s) => "\uFEFF" + s),
);
const intArb = fc.oneof(
  fc.integer({ min: -1000, max: 1000 }),
  fc.integer({ min: Number.MIN_SAFE_INTEGER, max: Number.MAX_SAFE_INTEGER }),
  fc.constantFrom(23, 24, 255, 256, 65535, 65536, 2 ** 32 - 1, 2 ** 32, -24, -25, -(2 ** 32) - 1),
);
const bigArb = fc.oneof(
  fc.bigInt({ min: -(2n ** 64n), max: 2n ** 64n - 1n }),
  fc.constantFrom(2n ** 53n, -(2n ** 53n), 2n ** 64n - 1n, -(2n ** 64n), 2n ** 53n - 1n),
);
const { value: cborValueArb } = fc.letrec<{ value: CborValue }>((tie) => ({
  value: fc.oneof(
    { depthSize: "small", maxDepth: 5 },
    intArb,
    bigArb,
    stringArb,
    fc.uint8Array({ maxLength: 40 }),
    fc.boolean(),
    fc.constant(null),
    fc.array(tie("value"), { maxLength: 5 }),
    fc.array(fc.tuple(fc.oneof(fc.string({ maxLength: 6 }), fc.integer()), tie("value")), { maxLength: 4 }).map(
      (es) => new Map<string | number, CborValue>(es),
    ),
  ),
}));
const cborPool = fc.sample(cborValueArb, { numRuns: 200, seed: 7 }).map((v) => encodeCbor(v));

const author = await generateKeyPair();
const { gid, manifest } = await createGroup(author, { name: "fuzz", policy: 1, ts: 1000 });
const events: StoredEvent[] = [manifest];
for (let i = 0; i < 12; i++) {
  events.push(
    await signEvent(author, {
      group: gid,
      ts: [0, 23, 24, 255, 1e6, 2 ** 32, Date.now(), Number.MAX_SAFE_INTEGER][i % 8]!,
      kind: [16, 17, 1, 2, 300, 65536][i % 6]!,
      tags: Array.from({ length: i % 4 }, (_, j) => [`t${j}`, "v".repeat(i * 7 + j)] as [string, string]),
      payload: i === 1
        ? encodeMembership({ action: 0, member: author.publicKey })
        : crypto.getRandomValues(new Uint8Array(i * 37)),
    }),
  );
}
const eventPool = events.map((e) => e.bytes);
const manifestPool = [manifest.payload, encodeManifest({ nonce: new Uint8Array(16), name: "", policy: 0 })];
const membershipPool = ([0, 1, 2, 3] as const).map((action) => encodeMembership({ action, member: author.publicKey }));
const tombstonePool = [
  encodeTombstone([author.publicKey]),
  encodeTombstone([gid, author.publicKey, new Uint8Array(32).fill(9)]),
];
const framePool = [
  encodeFrame("ping"),
  encodeFrame("events", { g: gid, ev: eventPool.slice(0, 3), n: 3 }),
  encodeFrame("neg", { g: gid, m: new Uint8Array(40), s: 7 }),
  encodeFrame("hello", { v: 1, key: author.publicKey, groups: [gid, gid], name: "node" }),
];
const FRAME_MAX = 4096;

// Negentropy: two overlapping sets, large enough for fingerprint ranges.
const nid = (i: number) => sha256(new Uint8Array([i & 0xff, i >> 8]));
function vector(items: number[]): VectorStorage {
  const v = new VectorStorage();
  for (const i of items) v.insert(1000 + Math.floor(i / 3), nid(i));
  v.seal();
  return v;
}
const storeA = vector(Array.from({ length: 80 }, (_, i) => i));
const storeB = vector(Array.from({ length: 80 }, (_, i) => i + 30));
const idsA = new Set(Array.from({ length: 80 }, (_, i) => toHex(nid(i))));
const negInit = new Reconciler(storeB).initiate();
const negPool = [
  negInit,
  new Reconciler(storeA, { idListReply: true }).reconcile(negInit).output!,
  new Reconciler(storeA).reconcile(negInit).output!,
  new Reconciler(vector([1, 2, 3])).initiate(),
  new Reconciler(vector([]), { idListReply: true }).reconcile(new Reconciler(vector([5, 6])).initiate()).output!,
];

// DHT records.
const node = await dht.generateKeyPair();
const recordPool: Uint8Array[] = [];
for (const addr of ["ws://a", "wss://node.example:4443/xf", "ws://[::1]:1", "ws://é.example"]) {
  const r = await dht.signRecord(
    { group: gid, nodeKey: node.publicKey, addr, root: nid(1), count: addr.length, ts: 1000, expires: 2000 },
    node.privateKey,
  );
  recordPool.push(dht.encodeRecord(r));
}

// Merkle proofs over a tree of several levels.
const treeItems = Array.from({ length: 3000 }, (_, i) => ({ ts: i, id: nid(i) }));
const built = MerkleTree.build(treeItems);
const tree = new MerkleTree({ get: (h: Uint8Array) => built.put.get(toHex(h)) }, built.root);
const rootHash = built.root.hash;
const proofs = [0, 1, 2, 77, 1500, 2999].map((i) => ({ item: treeItems[i]!, proof: tree.prove(treeItems[i]!)! }));

// ---------------------------------------------------------------------------
// CBOR

const CBOR_CODES: ErrorCode[] = ["EMPTY_BODY", "BAD_CBOR", "NOT_DETERMINISTIC"];

function checkCbor(bytes: Uint8Array): void {
  const o = outcome("decodeCbor", CBOR_CODES, () => decodeCbor(bytes));
  if (o.ok) {
    // One logical value has exactly one encoding: it re-encodes to the same bytes.
    const again = outcome("encodeCbor", [], () => encodeCbor(o.value));
    assert(again.ok && bytesEqual(again.value, bytes), `decodeCbor(${toHex(bytes)}) does not re-encode to its bytes`);
  }
}

Deno.test("decodeCbor() on arbitrary bytes decodes canonically or refuses with a CBOR code", () => {
  fc.assert(fc.property(bytesArb, (b) => checkCbor(b)), params("cbor.arbitrary"));
});

Deno.test("decodeCbor() on mutated encodings decodes canonically or refuses with a CBOR code", () => {
  fc.assert(fc.property(mutatedOf(cborPool), (b) => checkCbor(b)), params("cbor.mutated"));
});

Deno.test("decodeCbor(encodeCbor(v)) re-encodes to the same bytes", () => {
  fc.assert(
    fc.property(cborValueArb, (v) => {
      const b = encodeCbor(v);
      checkCbor(b);
      assert(outcome("decodeCbor", [], () => decodeCbor(b)).ok);
    }),
    params("cbor.values"),
  );
});

/** A head of major type `major` claiming `arg` (length or count), then `tail`. */
function hugeHead(major: number, arg: bigint, tail: Uint8Array): Uint8Array {
  const h = new Uint8Array(9);
  h[0] = (major << 5) | 27;
  new DataView(h.buffer).setBigUint64(1, arg);
  return concatBytes(h, tail);
}

Deno.test("decodeCbor() and skipItem() refuse huge claimed lengths without allocating them", () => {
  const heap0 = Deno.memoryUsage().heapUsed;
  fc.assert(
    fc.property(
      fc.constantFrom(2, 3, 4, 5),
      fc.oneof(fc.bigInt({ min: 2n ** 32n, max: 2n ** 64n - 1n }), fc.constantFrom(2n ** 53n - 1n, 2n ** 64n - 1n)),
      fc.uint8Array({ maxLength: 64 }),
      fc.nat(3),
      (major, arg, tail, nest) => {
        // Nest the huge item inside arrays or maps, so its head is not the first.
        let b = hugeHead(major, arg, tail);
        for (let i = 0; i < nest; i++) b = concatBytes(new Uint8Array([0x81]), b);
        const o = outcome("decodeCbor", CBOR_CODES, () => decodeCbor(b));
        assert(!o.ok, `decodeCbor accepted a head claiming ${arg}`);
        const s = outcome("skipItem", ["BAD_CBOR"], () => skipItem(b, 0));
        assert(!s.ok, `skipItem accepted a head claiming ${arg}`);
      },
    ),
    params("cbor.hugeHeads"),
  );
  const grown = Deno.memoryUsage().heapUsed - heap0;
  assert(grown < 64 * 1024 * 1024, `heap grew by ${grown} bytes`);
});

Deno.test("skipItem() finds the end of any well-formed item, and the same end as decodeCbor", () => {
  fc.assert(
    fc.property(inputOf(cborPool), (b) => {
      const s = outcome("skipItem", ["BAD_CBOR"], () => skipItem(b, 0));
      if (s.ok) {
        assert(s.value > 0 && s.value <= b.length, `skipItem end ${s.value} outside 1..${b.length}`);
        // The item ends where skipItem says: skipping just its bytes ends at the same place.
        assertEquals(outcome("skipItem", ["BAD_CBOR"], () => skipItem(b.subarray(0, s.value), 0)), s);
      }
      const d = outcome("decodeCbor", CBOR_CODES, () => decodeCbor(b));
      if (d.ok) assert(s.ok && s.value === b.length, `decodeCbor accepts ${toHex(b)} but skipItem gives ${s}`);
    }),
    params("skipItem"),
  );
});

// ---------------------------------------------------------------------------
// Events

const EVENT_CODES: ErrorCode[] = ["EMPTY_BODY", "BAD_CBOR", "NOT_DETERMINISTIC", "BAD_EVENT", "EVENT_TOO_LARGE"];

function checkEvent(bytes: Uint8Array): void {
  const o = outcome("decodeEvent", EVENT_CODES, () => decodeEvent(bytes));
  if (!o.ok) return;
  const e = o.value;
  assert(bytesEqual(encodeEvent(e), bytes), `decodeEvent(${toHex(bytes)}) does not re-encode to its bytes`);
  assert(bytesEqual(e.id, sha256(bytes)), "event id is not SHA-256 of its bytes");
  assert(bytesEqual(e.signed!, signingBytes(e)), "the signed bytes differ from signingBytes()");
  assertEquals(peekEvent(bytes), { ts: e.ts, kind: e.kind });
  assert(e.group.length === 32 && e.author.length === 32 && e.sig.length === 64);
  assert(Number.isSafeInteger(e.ts) && Number.isSafeInteger(e.kind));
}

Deno.test("decodeEvent() on arbitrary bytes decodes canonically or refuses with an event code", () => {
  fc.assert(fc.property(bytesArb, (b) => checkEvent(b)), params("event.arbitrary"));
});

Deno.test("decodeEvent() on mutated signed events decodes canonically or refuses with an event code", () => {
  fc.assert(fc.property(mutatedOf(eventPool), (b) => checkEvent(b)), params("event.mutated"));
});

Deno.test("decodeEvent() refuses an event over the size limit before reading it", () => {
  const big = concatBytes(eventPool[0]!, new Uint8Array(64 * 1024));
  assertEquals(outcome("decodeEvent", EVENT_CODES, () => decodeEvent(big)), { ok: false, code: "EVENT_TOO_LARGE" });
});

Deno.test("peekEvent() never throws, and answers null or two non-negative integers", () => {
  fc.assert(
    fc.property(inputOf(eventPool), (b) => {
      const p = timed("peekEvent", () => peekEvent(b));
      if (p !== null) assert(p.ts >= 0 && p.kind >= 0 && Number.isInteger(p.ts) && Number.isInteger(p.kind));
    }),
    params("peekEvent"),
  );
});

Deno.test("decodeManifest() decodes canonically or refuses with BAD_MANIFEST", () => {
  fc.assert(
    fc.property(inputOf(manifestPool), (b) => {
      const o = outcome("decodeManifest", ["BAD_MANIFEST"], () => decodeManifest(b));
      if (o.ok) {
        assert(bytesEqual(encodeManifest(o.value), b), `decodeManifest(${toHex(b)}) does not re-encode to its bytes`);
      }
    }),
    params("manifest"),
  );
});

Deno.test("decodeMembership() decodes canonically or refuses with BAD_EVENT", () => {
  fc.assert(
    fc.property(inputOf(membershipPool), (b) => {
      const o = outcome("decodeMembership", ["BAD_EVENT"], () => decodeMembership(b));
      if (o.ok) assert(bytesEqual(encodeMembership(o.value), b), `decodeMembership(${toHex(b)}) does not re-encode`);
    }),
    params("membership"),
  );
});

Deno.test("decodeTombstone() decodes canonically or refuses with BAD_EVENT", () => {
  fc.assert(
    fc.property(inputOf(tombstonePool), (b) => {
      const o = outcome("decodeTombstone", ["BAD_EVENT"], () => decodeTombstone(b));
      if (o.ok) assert(bytesEqual(encodeTombstone(o.value), b), `decodeTombstone(${toHex(b)}) does not re-encode`);
    }),
    params("tombstone"),
  );
});

// ---------------------------------------------------------------------------
// Frames

Deno.test("decodeFrame() decodes a canonical map with a text type or refuses with a frame code", () => {
  fc.assert(
    fc.property(inputOf(framePool), fc.constantFrom(FRAME_MAX, 64), (b, max) => {
      const o = outcome("decodeFrame", ["BAD_FRAME", "FRAME_TOO_LARGE"], () => decodeFrame(b, max));
      if (o.ok) {
        assert(b.length <= max && typeof o.value.get("t") === "string");
        assert(
          bytesEqual(encodeCbor(o.value as Map<string, CborValue>), b),
          `decodeFrame(${toHex(b)}) does not re-encode`,
        );
      } else if (b.length > max) assertEquals(o.code, "FRAME_TOO_LARGE");
    }),
    params("frame"),
  );
});

// ---------------------------------------------------------------------------
// Negentropy

/** A reply must itself be a message a peer can read. */
function checkReply(output: Uint8Array | null, limit: number): void {
  if (output === null) return;
  assert(output[0] === 0x61, "reply does not start with the version byte");
  assert(output.length <= limit, `reply of ${output.length} bytes is over the frame limit ${limit}`);
  const peer = new Reconciler(storeB);
  peer.initiate();
  outcome("reconcile(reply)", [], () => peer.reconcile(output));
}

Deno.test("Reconciler.reconcile() as responder answers or refuses a peer's message with BAD_FRAME", () => {
  fc.assert(
    fc.property(
      fc.oneof(inputOf(negPool), bytesArb.map((b) => concatBytes(new Uint8Array([0x61]), b))),
      fc.boolean(),
      fc.constantFrom(0, 4096, 60_000),
      (msg, idListReply, frameSizeLimit) => {
        const r = new Reconciler(storeA, { idListReply, frameSizeLimit });
        const o = outcome("reconcile", ["BAD_FRAME"], () => r.reconcile(msg));
        if (!o.ok) return;
        checkReply(o.value.output, frameSizeLimit || Infinity);
        for (const id of o.value.have) assert(idsA.has(toHex(id)), "reported as have an id we do not hold");
        for (const id of o.value.need) assert(id.length === 32);
      },
    ),
    params("negentropy.responder"),
  );
});

Deno.test("Reconciler.reconcile() as initiator handles or refuses a peer's reply with BAD_FRAME or UNSUPPORTED_VERSION", () => {
  fc.assert(
    fc.property(inputOf(negPool), (msg) => {
      const r = new Reconciler(storeA);
      r.initiate();
      const o = outcome("reconcile", ["BAD_FRAME", "UNSUPPORTED_VERSION"], () => r.reconcile(msg));
      if (o.ok) checkReply(o.value.output, 60_000);
    }),
    params("negentropy.initiator"),
  );
});

Deno.test("Reconciler.reconcile() refuses varints claiming huge counts without allocating them", () => {
  const heap0 = Deno.memoryUsage().heapUsed;
  fc.assert(
    fc.property(
      fc.oneof(fc.integer({ min: 2 ** 20, max: 2 ** 53 }), fc.constantFrom(2 ** 53, 2 ** 32, 2 ** 40)),
      fc.constantFrom(0, 1, 2, 3),
      fc.uint8Array({ maxLength: 64 }),
      (count, where, tail) => {
        // where: 0 id count, 1 bound length, 2 timestamp, 3 mode
        const v = negentropyVarint(count);
        const parts = where === 0
          ? [[0x61, 0x00, 0x00, 0x02], v]
          : where === 1
          ? [[0x61, 0x01], v]
          : where === 2
          ? [[0x61], v, [0x00]]
          : [[0x61, 0x00, 0x00], v];
        const msg = concatBytes(...parts.map((p) => new Uint8Array(p)), tail);
        const o = outcome("reconcile", ["BAD_FRAME"], () => new Reconciler(storeA).reconcile(msg));
        if (where !== 2) assert(!o.ok, `a varint claiming ${count} was accepted`);
      },
    ),
    params("negentropy.hugeCounts"),
  );
  const grown = Deno.memoryUsage().heapUsed - heap0;
  assert(grown < 64 * 1024 * 1024, `heap grew by ${grown} bytes`);
});

// ---------------------------------------------------------------------------
// DHT records

Deno.test("decodeRecord() answers a canonical record or null, and never throws", () => {
  fc.assert(
    fc.property(inputOf(recordPool), (b) => {
      const r = timed("decodeRecord", () => {
        try {
          return dht.decodeRecord(b);
        } catch (e) {
          throw new Error(`decodeRecord threw (its contract is null): ${e}`);
        }
      });
      if (r !== null) {
        assert(bytesEqual(dht.encodeRecord(r), b), `decodeRecord(${toHex(b)}) does not re-encode to its bytes`);
      }
    }),
    params("record"),
  );
});

// ---------------------------------------------------------------------------
// Merkle proofs

Deno.test("verifyProof() never throws, and holds for a changed proof only if it is the same proof", () => {
  const idArb = fc.oneof(
    fc.constant(null),
    fc.uint8Array({ minLength: 32, maxLength: 32 }),
    fc.uint8Array({ maxLength: 40 }),
  );
  fc.assert(
    fc.property(
      fc.constantFrom(...proofs),
      fc.array(mutationArb, { maxLength: 3 }),
      fc.oneof(fc.constant(null), bytesArb),
      idArb,
      idArb,
      (p, muts, other, id, root) => {
        const proof = other ?? mutate(p.proof, muts);
        const eventId = id ?? p.item.id;
        const r = root ?? rootHash;
        const ok = timed("verifyProof", () => {
          try {
            return verifyProof(proof, eventId, r);
          } catch (e) {
            throw new Error(`verifyProof threw (its contract is false): ${e}`);
          }
        });
        assert(typeof ok === "boolean");
        if (ok) {
          assert(bytesEqual(r, rootHash) && bytesEqual(eventId, p.item.id), "a proof verified for another id or root");
          assert(bytesEqual(proof, p.proof), `a changed proof verified: ${toHex(proof)}`);
        }
        if (!other && muts.length === 0 && id === null && root === null) assert(ok, "a real proof does not verify");
      },
    ),
    params("proof"),
  );
});

// ---------------------------------------------------------------------------
// WAL recovery

/** A WAL written by storage/wal.ts: its segment files and its records in seq order. */
const walDir = await Deno.makeTempDir({ prefix: "xf_fuzz_wal_" });
const walRecords: Uint8Array[] = [];
const walFiles = new Map<string, Uint8Array>();
try {
  const { wal } = await Wal.open(walDir, { checkpointSeq: 0n, limits: { wal_segment_bytes_max: 300 } });
  for (let i = 0; i < 24; i++) {
    const batch = Array.from({ length: 1 + (i % 3) }, (_, j) => {
      const p = new Uint8Array((i * 13 + j * 7) % 90);
      p.fill(i * 3 + j);
      if (p.length >= 4) new DataView(p.buffer).setUint32(0, walRecords.length + j);
      return p;
    });
    await wal.append(batch);
    walRecords.push(...batch);
  }
  await wal.close();
  for await (const e of Deno.readDir(walDir)) walFiles.set(e.name, await Deno.readFile(`${walDir}/${e.name}`));
} finally {
  await Deno.remove(walDir, { recursive: true });
}
const walNames = [...walFiles.keys()].sort();

/** The records a segment holds, as [seq, end offset], from its real bytes. */
function segmentRecords(buf: Uint8Array): { seq: number; end: number }[] {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const out: { seq: number; end: number }[] = [];
  for (let off = 16; off + 16 <= buf.length;) {
    const len = view.getUint32(off, true);
    off += 16 + len;
    out.push({ seq: Number(view.getBigUint64(off - len - 8, true)), end: off });
  }
  return out;
}

/** A WalFs over a map of files, so that each case recovers from its own copy. */
function memFs(files: Map<string, Uint8Array>): WalFs {
  const name = (path: string) => path.slice(path.lastIndexOf("/") + 1);
  return {
    mkdir: () => Promise.resolve(),
    readDir: () => Promise.resolve([...files.keys()]),
    readFile: (path) => {
      const b = files.get(name(path));
      return b ? Promise.resolve(b.slice()) : Promise.reject(new Deno.errors.NotFound(path));
    },
    openFile: (path) => {
      const n = name(path);
      return Promise.resolve({
        write: (data: Uint8Array) =>
          Promise.resolve(void files.set(n, concatBytes(files.get(n) ?? new Uint8Array(), data))),
        syncData: () => Promise.resolve(),
        close: () => {},
      });
    },
    truncate: (path, length) => Promise.resolve(void files.set(name(path), files.get(name(path))!.slice(0, length))),
    remove: (path) => Promise.resolve(void files.delete(name(path))),
  };
}

Deno.test("Wal.open() on damaged segments recovers the acknowledged prefix or refuses with WAL_CORRUPTION", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.nat(walNames.length - 1),
      fc.array(mutationArb.filter((m) => m.op !== "head"), { minLength: 1, maxLength: 2 }),
      fc.nat(walRecords.length),
      async (segIndex, muts, cpNum) => {
        const files = new Map(walFiles);
        const name = walNames[segIndex]!;
        const orig = walFiles.get(name)!;
        const damaged = mutate(orig, muts);
        files.set(name, damaged);
        let firstDiff = 0;
        while (firstDiff < Math.min(orig.length, damaged.length) && orig[firstDiff] === damaged[firstDiff]) {
          firstDiff++;
        }
        if (firstDiff === orig.length && damaged.length === orig.length) return; // unchanged
        const cp = BigInt(cpNum);
        const result = await timedAsync("Wal.open", async () => {
          try {
            const { wal } = await Wal.open("/mem", { checkpointSeq: cp, fs: memFs(files) });
            const got: { seq: bigint; payload: Uint8Array }[] = [];
            for await (const batch of wal.replay(cp)) got.push(...batch);
            await wal.close();
            return got;
          } catch (e) {
            expectCode(e, ["WAL_CORRUPTION"], "Wal.open");
            return null;
          }
        });
        if (result === null) return;
        // Never a silently wrong record: what is replayed is the originals from cp + 1 on, in order.
        result.forEach((r, i) => {
          assertEquals(r.seq, cp + 1n + BigInt(i), "replayed seqs are not contiguous from the checkpoint");
          assert(bytesEqual(r.payload, walRecords[Number(r.seq) - 1]!), `record ${r.seq} replayed with other bytes`);
        });
        // Every acknowledged record before the damage is kept; damage before the last segment loses nothing.
        const isLast = segIndex === walNames.length - 1;
        const intact = isLast
          ? Math.max(
            0,
            ...segmentRecords(orig).filter((r) => r.end <= firstDiff).map((r) => r.seq),
            ...walNames.slice(0, segIndex).flatMap((n) => segmentRecords(walFiles.get(n)!).map((r) => r.seq)),
          )
          : walRecords.length;
        const kept = Number(cp) + result.length;
        assert(
          kept >= Math.max(intact, Number(cp)) || result.length === 0 && intact <= Number(cp),
          `recovery kept records up to ${kept}, but records up to ${intact} were intact (segment ${name}, ` +
            `first damaged byte ${firstDiff}, checkpoint ${cp})`,
        );
      },
    ),
    params("wal"),
  );
});

// ---------------------------------------------------------------------------
// Server-sent events

/** The EventSource parsing rules over a whole stream at once: the reference readSse is checked against. */
function referenceSse(text: string): SseMessage[] {
  const out: SseMessage[] = [];
  let event = "", data: string[] = [], lastEventId = "";
  const lines = text.split(/\r\n|\n|\r/);
  lines.pop(); // an unterminated last line is never processed
  for (const line of lines) {
    if (line === "") {
      if (data.length > 0) out.push({ event: event || "message", data: data.join("\n"), lastEventId });
      event = "";
      data = [];
      continue;
    }
    if (line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
    else if (field === "id" && !value.includes("\0")) lastEventId = value;
  }
  return out;
}

function streamOf(bytes: Uint8Array, cuts: number[]): ReadableStream<Uint8Array> {
  const points = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
  const chunks: Uint8Array[] = [];
  let prev = 0;
  for (const p of [...points, bytes.length]) {
    if (p > prev) chunks.push(bytes.slice(prev, p));
    prev = p;
  }
  return new ReadableStream({
    pull(c) {
      const next = chunks.shift();
      if (next) c.enqueue(next);
      else c.close();
    },
  });
}

async function readAll(body: ReadableStream<Uint8Array>): Promise<SseMessage[]> {
  const got: SseMessage[] = [];
  for await (const m of readSse(body)) got.push(m);
  return got;
}

Deno.test("readSse() parses any byte stream, however chunked, as EventSource does", async () => {
  const sseText = fc.string({
    unit: fc.constantFrom("data", "event", "id", ":", " ", "\r", "\n", "\r\n", "a", "é", "\0", "\uFEFF", "x:y"),
    maxLength: 60,
  });
  const sseBytes = fc.oneof(
    sseText.map((s) => new TextEncoder().encode(s)),
    fc.tuple(sseText, fc.uint8Array({ maxLength: 4 }), sseText).map(([a, b, c]) =>
      concatBytes(new TextEncoder().encode(a), b, new TextEncoder().encode(c))
    ),
  );
  await fc.assert(
    fc.asyncProperty(sseBytes, fc.array(fc.nat(), { maxLength: 8 }), async (bytes, cuts) => {
      const got = await timedAsync("readSse", () => readAll(streamOf(bytes, cuts)));
      assertEquals(got, referenceSse(new TextDecoder().decode(bytes)));
    }),
    params("sse"),
  );
});

Deno.test("readSse() reads a long line in small chunks in linear time", async () => {
  const line = new TextEncoder().encode(`data: ${"x".repeat(256 * 1024)}\n\n`);
  const cuts = Array.from({ length: line.length / 16 }, (_, i) => i * 16);
  const t0 = performance.now();
  const got = await readAll(streamOf(line, cuts));
  const ms = performance.now() - t0;
  assertEquals(got.length, 1);
  assert(ms < 3000, `reading 256 KiB in 16-byte chunks took ${ms.toFixed(0)} ms`);
});

Deno.test("readSse() refuses an endless line or message with XfClientError BAD_RESPONSE", async () => {
  for (const unit of ["x", "data: x\n"]) {
    const chunk = new TextEncoder().encode(unit.repeat(64 * 1024 / unit.length));
    let sent = 0;
    const body = new ReadableStream<Uint8Array>({
      pull(c) {
        if (sent++ < 80) c.enqueue(chunk);
        else c.close();
      },
    });
    let error: unknown = null;
    try {
      await readAll(body);
    } catch (e) {
      error = e;
    }
    assert(error instanceof XfClientError && error.code === "BAD_RESPONSE", `${JSON.stringify(unit)}: ${error}`);
  }
});

// ---------------------------------------------------------------------------
// Stream cursors and queries

Deno.test("parseCursor() parses a cursor that formats back to itself, or refuses with BAD_QUERY", () => {
  const hexDigits = (n: number) =>
    fc.string({ unit: fc.constantFrom(..."0123456789abcdef"), minLength: n, maxLength: n });
  const valid = fc.oneof(
    fc.nat().map((n) => arrivalCursor(n)),
    fc.tuple(fc.nat(), hexDigits(64), fc.nat()).map(([ts, id, s]) => timeCursor(ts, id, s)),
    fc.tuple(hexDigits(16), hexDigits(16), hexDigits(64)).map(([a, b, id]) => `t${a}${id}.${b}`),
    hexDigits(16).map((h) => `a${h}`),
  );
  const cursor = fc.oneof(
    fc.string({ maxLength: 120 }),
    fc.tuple(valid, fc.array(mutationArb, { maxLength: 2 })).map(([s, m]) =>
      new TextDecoder().decode(mutate(new TextEncoder().encode(s), m))
    ),
    valid,
  );
  fc.assert(
    fc.property(cursor, (s) => {
      const o = outcome("parseCursor", ["BAD_QUERY"], () => parseCursor(s));
      if (!o.ok) return;
      const c = o.value;
      const again = c.kind === "arrival" ? arrivalCursor(c.seq) : timeCursor(c.ts, c.id, c.snapshot);
      assertEquals(again, s);
    }),
    params("cursor"),
  );
});

Deno.test("parseStreamQuery() validates every field or refuses with BAD_QUERY", () => {
  const str = fc.oneof(
    fc.string({ maxLength: 20 }),
    fc.nat().map(String),
    fc.constantFrom("", "9".repeat(16), "a".repeat(64)),
  );
  fc.assert(
    fc.property(
      fc.record({
        since: str,
        cursor: str,
        kinds: fc.array(str, { maxLength: 70 }),
        authors: fc.array(str, { maxLength: 70 }),
      }, {
        requiredKeys: ["kinds", "authors"],
      }),
      fc.option(str, { nil: undefined }),
      (q, last) => {
        const o = outcome("parseStreamQuery", ["BAD_QUERY"], () => parseStreamQuery(q, last));
        if (!o.ok) return;
        const v = o.value;
        assert(v.since === undefined || Number.isSafeInteger(v.since) && v.since >= 0);
        assert(v.kinds.length <= 64 && v.kinds.every((k) => Number.isSafeInteger(k) && k >= 0));
        assert(v.authors.length <= 64 && v.authors.every((a) => /^[0-9a-f]{64}$/.test(a)));
      },
    ),
    params("streamQuery"),
  );
});

// ---------------------------------------------------------------------------
// Fixtures: the minimal counterexamples found, replayed

/** A kept counterexample: the decoder, its input in hex and the expected outcome. */
interface FuzzFixture {
  decoder: string;
  hex: string;
  /** "ok" (decodes and re-encodes to the same bytes), "null", or an error code. */
  expect: string;
  finding: string;
  /** Where a byte stream is cut into chunks (readSse). */
  chunks?: number[];
}

const REPLAY: Record<string, (b: Uint8Array, fx: FuzzFixture) => Promise<string>> = {
  decodeCbor: (b) => result(() => (checkCbor(b), "ok")),
  skipItem: (b) => result(() => skipItem(b, 0) === b.length ? "ok" : "short"),
  decodeEvent: (b) => result(() => (checkEvent(b), decodeEvent(b), "ok")),
  decodeRecord: (b) =>
    result(() => {
      const r = dht.decodeRecord(b);
      return r === null ? "null" : bytesEqual(dht.encodeRecord(r), b) ? "ok" : "not canonical";
    }),
  readSse: async (b, fx) => {
    try {
      const got = await readAll(streamOf(b, fx.chunks ?? []));
      assertEquals(got, referenceSse(new TextDecoder().decode(b)));
      return "ok";
    } catch (e) {
      return e instanceof XfClientError ? e.code : String(e);
    }
  },
};

function result(fn: () => unknown): Promise<string> {
  try {
    const v = fn();
    return Promise.resolve(typeof v === "string" ? v : "ok");
  } catch (e) {
    return Promise.resolve(e instanceof XfError ? e.code : String(e));
  }
}

Deno.test("fuzz fixtures replay with their expected outcome", async () => {
  const dir = new URL("./fixtures/fuzz/", import.meta.url);
  for await (const f of Deno.readDir(dir)) {
    if (!f.name.endsWith(".json")) continue;
    const fx = JSON.parse(await Deno.readTextFile(new URL(f.name, dir))) as FuzzFixture;
    const run = REPLAY[fx.decoder];
    if (!run) throw new Error(`${f.name}: no replay for decoder "${fx.decoder}"`);
    assertEquals(await run(fromHex(fx.hex)!, fx), fx.expect, `${f.name}: ${fx.finding}`);
  }
});

Deno.test({
  name: "fuzz cases run",
  fn() {
    console.log(
      `fuzz: ${casesRun} cases over ${Object.keys(WEIGHTS).length} properties (seeds ${
        FUZZ_RUNS ? "random" : "fixed"
      })`,
    );
  },
});
