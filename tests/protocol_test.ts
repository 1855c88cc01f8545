// The wire vectors of docs/PROTOCOL.md (tests/fixtures/protocol_v2.json): the implementation must produce them
// byte for byte, and they must check out independently of it (transcript, keys, signatures, AEAD, CBOR fields).
import { authMessage } from "../storage/auth_message.ts";
import { fromHex, toHex } from "../core/bytes.ts";
import { assert, assertEquals } from "@std/assert";
import { x25519 } from "@noble/curves/ed25519";
import { chacha20poly1305 } from "@noble/ciphers/chacha";
import { decodeCbor, encodeCbor } from "../storage/cbor.ts";
import { verify } from "../storage/ed25519.ts";
import { decodeFrame } from "../net/frames.ts";
import { decodeRecord, encodeRecordBody, verifyRecord } from "../net/dht/records.ts";
import { parseCursor, sseRecord } from "../net/stream.ts";
import { LIMITS } from "../core/limits.ts";
import { Reconciler } from "../merkle/negentropy.ts";
import { VectorStorage } from "../merkle/negentropy_storage.ts";
import { buildProtocolVectors, deriveSession, diag, nonce } from "./fixtures/make_protocol_vectors.ts";

const fixture = JSON.parse(await Deno.readTextFile(new URL("./fixtures/protocol_v2.json", import.meta.url)));
const hx = (s: string) => fromHex(s)!;
const te = new TextEncoder();

Deno.test("protocol vectors: the implementation produces the fixture byte for byte", async () => {
  const built = JSON.parse(JSON.stringify(await buildProtocolVectors()));
  assertEquals(
    built.handshake,
    fixture.handshake,
    "handshake bytes differ: regenerate only for a new protocol version",
  );
  assertEquals(built, fixture);
});

Deno.test("protocol vectors: the handshake checks out without net/secure.ts", async () => {
  const v = fixture.handshake;
  const hs1 = decodeCbor(hx(v.hs1)) as Map<string, unknown>;
  assertEquals([...hs1.keys()], ["c", "e", "p", "t", "v"]); // deterministic order: bytewise by encoded key
  assertEquals(hs1.get("t"), "hs1");
  assertEquals(hs1.get("v"), 2);
  assertEquals(hs1.get("p"), "sync");
  assertEquals(toHex(hs1.get("e") as Uint8Array), toHex(x25519.getPublicKey(hx(v.initiator.ephemeralSecret))));
  assertEquals(toHex(hs1.get("c") as Uint8Array), v.initiator.challenge);
  const hs2 = decodeCbor(hx(v.hs2)) as Map<string, Uint8Array | string>;
  assertEquals([...hs2.keys()], ["c", "e", "t", "box"]);
  assertEquals(toHex(hs2.get("e") as Uint8Array), v.responder.ephemeralPublic);
  assertEquals(toHex(hs2.get("c") as Uint8Array), v.responder.challenge);
  const hs3 = decodeCbor(hx(v.hs3)) as Map<string, Uint8Array | string>;
  assertEquals([...hs3.keys()], ["t", "box"]);
  const boxR = hs2.get("box") as Uint8Array, boxI = hs3.get("box") as Uint8Array;

  const d = deriveSession(
    "sync",
    hx(v.hs1),
    hx(v.responder.ephemeralPublic),
    hx(v.responder.challenge),
    boxR,
    boxI,
    hx(v.initiator.ephemeralSecret),
  );
  // Both sides compute the same shared secret.
  assertEquals(
    toHex(x25519.getSharedSecret(hx(v.responder.ephemeralSecret), hx(v.initiator.ephemeralPublic))),
    v.sharedSecret,
  );
  for (const k of ["h0", "h1", "h2", "h3", "h4"] as const) assertEquals(toHex(d[k]), v[k], k);
  assertEquals(toHex(d.ss), v.sharedSecret);
  assertEquals(toHex(d.kHsI), v.k_hs_i);
  assertEquals(toHex(d.kHsR), v.k_hs_r);
  assertEquals(toHex(d.kI), v.k_i);
  assertEquals(toHex(d.kR), v.k_r);
  assertEquals(boxR.length, hx(v.box_r_plain).length + 16);

  for (
    const [side, plain, signedHex, th, role] of [
      ["responder", d.boxRPlain, v.signed_r, d.h2, "responder"],
      ["initiator", d.boxIPlain, v.signed_i, d.h3, "initiator"],
    ] as const
  ) {
    const [payload, sig] = decodeCbor(plain) as [Uint8Array, Uint8Array];
    assertEquals(sig.length, 64);
    const p = decodeCbor(payload) as Map<string, unknown>;
    assertEquals([...p.keys()], ["key", "info"]);
    assertEquals(toHex(p.get("key") as Uint8Array), v[side].publicKey);
    assertEquals(diag(p.get("info")), v[side].info);
    const signed = encodeCbor(["xf-session-v2", role, th, payload]);
    assertEquals(toHex(signed), signedHex);
    assert(await verify(hx(v[side].publicKey), sig, signed), `${side} signature`);
    // A signature is bound to its role and transcript.
    assert(!(await verify(hx(v[side].publicKey), sig, encodeCbor(["xf-session-v2", role, d.h4, payload]))));
  }

  // Transport frames: ChaCha20-Poly1305, nonce = 4 zero bytes ‖ u64 LE counter, no associated data.
  assertEquals(v.first_i_nonce, "000000000000000000000000");
  assertEquals(toHex(nonce(1)), "000000000100000000000000");
  assertEquals(toHex(chacha20poly1305(d.kI, nonce(0)).decrypt(hx(v.first_i_wire))), v.first_i_plain);
  assertEquals(toHex(chacha20poly1305(d.kR, nonce(0)).decrypt(hx(v.first_r_wire))), v.first_r_plain);
  assertEquals(hx(v.first_i_wire).length, hx(v.first_i_plain).length + 16);
  assertEquals(decodeFrame(hx(v.first_i_plain), LIMITS.sync_frame_bytes_max).get("t"), "sub");
});

Deno.test("protocol vectors: sync frames decode to their stated fields", async () => {
  for (const f of fixture.sync) {
    const m = decodeFrame(hx(f.hex), LIMITS.sync_frame_bytes_max);
    assertEquals(diag(m), f.value, f.name);
    assertEquals(toHex(encodeCbor(m as Map<string, never>)), f.hex, `${f.name} is deterministic CBOR`);
    const gid = m.get("gid");
    if (gid !== undefined) assert(typeof gid === "string" && /^[0-9a-f]{64}$/.test(gid), `${f.name}: gid is hex text`);
  }
  const credit = fixture.sync.find((f: { name: string }) => f.name === "credit");
  const events = fixture.sync.find((f: { name: string }) => f.name === "events");
  const ev = (decodeCbor(hx(events.hex)) as Map<string, Uint8Array[]>).get("events")!;
  assertEquals(credit.value.b, ev[0]!.length); // credit bytes are event bytes, not frame bytes
  const neg = fixture.sync.find((f: { name: string }) => f.name === "neg (initiate)");
  assertEquals((decodeCbor(hx(neg.hex)) as Map<string, Uint8Array>).get("msg")![0], 0x61);
  // Partial sync: the echoed range is within the asked one, and the range's first message names only its events.
  const sub = fixture.sync.find((f: { name: string }) => f.name === "sub (range)").value;
  const ok = fixture.sync.find((f: { name: string }) => f.name === "sub.ok (range)").value;
  assert(ok.since >= sub.since && ok.until <= sub.until && ok.since < ok.until);
  const rangeNeg = fixture.sync.find((f: { name: string }) => f.name === "neg (range initiate)");
  const empty = new VectorStorage();
  empty.seal();
  const named = new Reconciler(empty).reconcile((decodeCbor(hx(rangeNeg.hex)) as Map<string, Uint8Array>).get("msg")!);
  const v1 = JSON.parse(await Deno.readTextFile(new URL("./fixtures/events_v1.json", import.meta.url))).events as {
    id: string;
    ts: number;
  }[];
  assertEquals(
    named.need.map(toHex),
    v1.filter((e) => e.ts >= ok.since && e.ts < ok.until).map((e) => e.id),
  );
});

Deno.test("protocol vectors: DHT frames, the record and the auth message", async () => {
  for (const f of fixture.dht) {
    const m = decodeFrame(hx(f.hex), LIMITS.dht_frame_bytes_max);
    assertEquals(diag(m), f.value, f.name);
    assertEquals(toHex(encodeCbor(m as Map<string, never>)), f.hex);
    const gid = m.get("gid");
    if (gid !== undefined) assert(gid instanceof Uint8Array && gid.length === 32, `${f.name}: gid is 32 bytes`);
  }
  const r = decodeRecord(hx(fixture.record.hex))!;
  assert(r);
  assertEquals(toHex(r.group), fixture.record.fields.group);
  assertEquals(r.addr, fixture.record.fields.addr);
  assertEquals([r.count, r.ts, r.expires], [
    fixture.record.fields.count,
    fixture.record.fields.ts,
    fixture.record.fields.expires,
  ]);
  assertEquals(toHex(encodeRecordBody(r)), fixture.record.body);
  assertEquals(fixture.record.hex, fixture.record.body + fixture.record.sig);
  assert(fixture.record.body.startsWith(toHex(te.encode("xf-dht-announce-v1"))));
  assert(await verifyRecord(r));
  assert(await verify(r.nodeKey, hx(fixture.record.sig), hx(fixture.record.body)));

  const a = fixture.auth;
  const msg = authMessage("http", hx(a.challenge), hx(a.key), hx(a.node));
  assertEquals(toHex(msg), a.message);
  assertEquals(decodeCbor(msg), ["xf-auth-v1", "http", hx(a.challenge), hx(a.key), hx(a.node)]);
  assert(await verify(hx(a.key), hx(a.sig), msg));
});

Deno.test("protocol vectors: SSE record and stream cursors", () => {
  const s = fixture.stream;
  assertEquals(new TextDecoder().decode(sseRecord(hx(s.sse.event), s.sse.cursor)), s.sse.text);
  const lines = s.sse.text.split("\n");
  assertEquals(lines.slice(0, 2), ["event: event", `id: ${s.sse.cursor}`]);
  assert(lines[2].startsWith("data: {"));
  assertEquals(JSON.parse(lines[2].slice(6)).id.length, 64);
  assertEquals(parseCursor(s.arrivalCursor.cursor), s.arrivalCursor.parsed);
  assertEquals(parseCursor(s.timeCursor.cursor), s.timeCursor.parsed);
  assert(/^a[0-9a-f]{16}$/.test(s.arrivalCursor.cursor));
  assert(/^t[0-9a-f]{16}[0-9a-f]{64}\.[0-9a-f]{16}$/.test(s.timeCursor.cursor));
});
