import { fromHex, toHex } from "../core/bytes.ts";
import { code } from "./_helpers.ts";
import { assert, assertEquals } from "@std/assert";
import { decodeEvent, encodeEvent, eventId, groupIdOf, signEvent, verifyEvent } from "../storage/event.ts";
import { keyPairFromSeed } from "../storage/ed25519.ts";
import { decodeCbor, encodeCbor, skipItem } from "../storage/cbor.ts";

const vectors = JSON.parse(await Deno.readTextFile(new URL("./fixtures/events_v1.json", import.meta.url)));
const hex = (s: string) => fromHex(s)!;

Deno.test("decodeEvent() reads every committed v1 vector and its id", async () => {
  for (const v of vectors.events) {
    const e = decodeEvent(hex(v.bytes));
    assertEquals(toHex(e.group), v.group);
    assertEquals(toHex(e.author), v.signer);
    assertEquals(e.ts, v.ts);
    assertEquals(e.kind, v.kind);
    assertEquals(e.tags, v.tags);
    assertEquals(toHex(e.payload), v.payload);
    assertEquals(toHex(e.sig), v.sig);
    assertEquals(toHex(e.id), v.id);
    assertEquals(toHex(eventId(hex(v.bytes))), v.id);
    assert(await verifyEvent(e));
  }
});

Deno.test("signEvent() reproduces the committed vectors byte for byte", async () => {
  const keys = new Map<string, Uint8Array>();
  for (const k of vectors.keys) {
    const kp = await keyPairFromSeed(hex(k.seed));
    assertEquals(toHex(kp.publicKey), k.publicKey);
    keys.set(k.publicKey, hex(k.seed));
  }
  for (const v of vectors.events) {
    const kp = await keyPairFromSeed(keys.get(v.signer)!);
    const e = await signEvent(kp, {
      group: hex(v.group),
      ts: v.ts,
      kind: v.kind,
      tags: v.tags,
      payload: hex(v.payload),
    });
    assertEquals(toHex(e.bytes), v.bytes);
    assertEquals(toHex(e.id), v.id);
    assertEquals(toHex(encodeEvent(e)), v.bytes);
  }
  const g = vectors.group;
  assertEquals(toHex(groupIdOf(hex(g.owner), hex(g.nonce))), g.id);
});

Deno.test("encodeCbor() writes shortest heads at every boundary", () => {
  const cases: [number | bigint, string][] = [
    [0, "00"],
    [23, "17"],
    [24, "1818"],
    [255, "18ff"],
    [256, "190100"],
    [65535, "19ffff"],
    [65536, "1a00010000"],
    [2 ** 32 - 1, "1affffffff"],
    [2 ** 32, "1b0000000100000000"],
    [2n ** 64n - 1n, "1bffffffffffffffff"],
    [-1, "20"],
    [-25, "3818"],
  ];
  for (const [v, h] of cases) assertEquals(toHex(encodeCbor(v)), h);
  assertEquals(toHex(encodeCbor(new Uint8Array([1, 2]))), "420102"); // no tag 64
  assertEquals(toHex(encodeCbor("é")), "62c3a9");
  assertEquals(toHex(encodeCbor(new Map<string, number>([["b", 1], ["a", 2]]))), "a2616102616201");
});

Deno.test("decodeCbor() refuses non-deterministic encodings", () => {
  assertEquals(code(() => decodeCbor(hex("1817"))), "NOT_DETERMINISTIC"); // 23 in 2 bytes
  assertEquals(code(() => decodeCbor(hex("190017"))), "NOT_DETERMINISTIC");
  assertEquals(code(() => decodeCbor(hex("9f01ff"))), "NOT_DETERMINISTIC"); // indefinite array
  assertEquals(code(() => decodeCbor(hex("c240"))), "NOT_DETERMINISTIC"); // tag
  assertEquals(code(() => decodeCbor(hex("a2616201616102"))), "NOT_DETERMINISTIC"); // unsorted map
  assertEquals(code(() => decodeCbor(hex("f93c00"))), "BAD_CBOR"); // float
  assertEquals(code(() => decodeCbor(hex("62c3"))), "BAD_CBOR"); // truncated
  assertEquals(code(() => decodeCbor(hex("61ff"))), "BAD_CBOR"); // invalid UTF-8
  assertEquals(code(() => decodeCbor(new Uint8Array())), "EMPTY_BODY");
  assertEquals(code(() => decodeCbor(hex("0101"))), "BAD_CBOR"); // trailing bytes
});

Deno.test("decodeEvent() rejects each malformed event with a stable code", async () => {
  const kp = await keyPairFromSeed(new Uint8Array(32).fill(9));
  const good = await signEvent(kp, {
    group: new Uint8Array(32),
    ts: 1000,
    kind: 16,
    tags: [],
    payload: new Uint8Array(4),
  });
  const b = good.bytes;
  // ts 1000 = 19 03e8 at offset 70; write it in 4 bytes instead of 2.
  const longTs = new Uint8Array([...b.subarray(0, 70), 0x1a, 0, 0, 0x03, 0xe8, ...b.subarray(73)]);
  assertEquals(toHex(b.subarray(70, 73)), "1903e8");
  assertEquals(code(() => decodeEvent(longTs)), "NOT_DETERMINISTIC");
  assertEquals(code(() => decodeEvent(b.subarray(0, b.length - 5))), "BAD_CBOR");
  assertEquals(code(() => decodeEvent(new Uint8Array())), "EMPTY_BODY");
  assertEquals(code(() => decodeEvent(hex("a0"))), "BAD_EVENT");
  assertEquals(code(() => decodeEvent(encodeCbor([1, 2, 3]))), "BAD_EVENT");
  const fields = [1, new Uint8Array(32), new Uint8Array(32), 5, 16, [], new Uint8Array(0), new Uint8Array(64)] as const;
  const with_ = (i: number, v: unknown) => encodeCbor(fields.map((f, j) => (j === i ? v : f)) as never);
  assertEquals(code(() => decodeEvent(with_(0, 2))), "BAD_EVENT"); // version
  assertEquals(code(() => decodeEvent(with_(1, new Uint8Array(31)))), "BAD_EVENT"); // group length
  assertEquals(code(() => decodeEvent(with_(3, "5"))), "BAD_EVENT"); // ts type
  assertEquals(code(() => decodeEvent(with_(3, -5))), "BAD_EVENT"); // negative ts
  assertEquals(code(() => decodeEvent(with_(5, [["a"]]))), "BAD_EVENT"); // tag shape
  assertEquals(code(() => decodeEvent(with_(5, [["a", "x".repeat(257)]]))), "BAD_EVENT"); // tag length
  assertEquals(code(() => decodeEvent(with_(5, Array.from({ length: 65 }, () => ["a", "b"])))), "BAD_EVENT");
  assertEquals(code(() => decodeEvent(with_(7, new Uint8Array(63)))), "BAD_EVENT"); // sig length
  assertEquals(code(() => decodeEvent(with_(6, new Uint8Array(65 * 1024)))), "EVENT_TOO_LARGE");
  decodeEvent(with_(5, [["a", "x".repeat(256)]])); // exactly at the limit is fine
  // A flipped payload byte keeps the shape but breaks the signature.
  const flipped = b.slice();
  flipped[b.length - 70] = flipped[b.length - 70]! ^ 1;
  assert(!(await verifyEvent(decodeEvent(flipped))));
});

Deno.test("skipItem() finds item ends without judging determinism", () => {
  const b = hex("82" + "1817" + "62c3a9");
  assertEquals(skipItem(b, 0), b.length);
  assertEquals(code(() => skipItem(hex("8301"), 0)), "BAD_CBOR");
});

Deno.test("decodeEvent() gives the signed bytes without re-encoding, equal to signingBytes()", async () => {
  const { signingBytes } = await import("../storage/event.ts");
  for (const v of vectors.events) {
    const e = decodeEvent(hex(v.bytes));
    assertEquals(toHex(e.signed!), toHex(signingBytes(e)));
  }
});
