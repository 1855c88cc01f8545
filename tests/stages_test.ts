// Each stage's pure logic, fed messages with no Worker and no disk: given what it takes, which effects it asks for.
import { assert, assertEquals, assertThrows } from "@std/assert";
import { IdFilter } from "../storage/id_filter.ts";
import { code, makeEvents, testGroup } from "./_helpers.ts";
import { drive } from "../actors/stage.ts";
import type { EventResultWire, Report } from "../actors/stage.ts";
import type { Input } from "../actors/stage.ts";
import {
  type DecodeBatch,
  type IngestEffect,
  type IngestIn,
  type IngestState,
  logic as ingest,
  type RequestInfo,
  splitBody,
  type Submission,
} from "../actors/ingest.ts";
import { type DecodeEffect, type DecodeIn, type DecodeState, logic as decode } from "../actors/decode.ts";
import { logic as walFlush, type WalEffect, type WalIn, type WalState } from "../actors/wal_flush.ts";
import { type IndexEffect, type IndexIn, type IndexState, logic as index, type Written } from "../actors/index.ts";
import { type AdvertiseState, effects as advertiseEffects, logic as advertise } from "../actors/advertise.ts";
import { type BatchItem, type EventBatch, packBatch, unpackBatch } from "../actors/batch.ts";
import { LIMITS, type Limits, limitsWith } from "../core/limits.ts";
import { cborArrayOf } from "../storage/cbor.ts";
import { eventId, KIND_MEMBERSHIP, signEvent, type StoredEvent } from "../storage/event.ts";
import { ACTION_ADD, encodeMembership, GroupState } from "../storage/membership.ts";
import { generateKeyPair } from "../storage/ed25519.ts";
import { toHex } from "../core/bytes.ts";
import { XfError } from "../core/errors.ts";

// ---------- helpers ----------

type AnyEffect = { do: string } & Record<string, unknown>;

function input<M>(tok: number, msg: M, now = Date.now()): Input<M> {
  return { type: "input", from: "up", tok, msg, now };
}

/** Report messages of one type, in order. */
function reports<T extends Report["type"]>(effs: readonly unknown[], type: T): Extract<Report, { type: T }>[] {
  return (effs as AnyEffect[])
    .filter((e) => e.do === "report" && (e.msg as Report).type === type)
    .map((e) => e.msg as Extract<Report, { type: T }>);
}

/** Every per-event result reported. */
function results(effs: readonly unknown[]): EventResultWire[] {
  return reports(effs, "results").flatMap((r) => r.items);
}

/** `idx → status[:code]` of the results of one request. */
function outcome(effs: readonly unknown[], req?: number): Record<number, string> {
  const out: Record<number, string> = {};
  for (const r of results(effs)) {
    if (req !== undefined && r.req !== req) continue;
    out[r.idx] = r.status + (r.code ? `:${r.code}` : "");
  }
  return out;
}

function sends(effs: readonly unknown[], to: string): Record<string, unknown>[] {
  return (effs as AnyEffect[]).filter((e) => e.do === "send" && e.to === to).map((e) =>
    e.msg as Record<string, unknown>
  );
}

function doneToks(effs: readonly unknown[]): number[] {
  return (effs as AnyEffect[]).filter((e) => e.do === "done").map((e) => e.tok as number);
}

function ofKind<E extends { do: string }, D extends E["do"]>(effs: readonly E[], d: D): Extract<E, { do: D }>[] {
  return effs.filter((e) => e.do === d) as Extract<E, { do: D }>[];
}

/** Released ids (hex) in the `release` signals to ingest, with their `stored` flag. */
function released(effs: readonly unknown[]): { ids: string[]; stored: boolean }[] {
  return (effs as AnyEffect[])
    .filter((e) => e.do === "signal" && e.to === "ingest")
    .map((e) => {
      const m = e.msg as { type: string; ids: Uint8Array; stored: boolean };
      assertEquals(m.type, "release");
      const ids: string[] = [];
      for (let i = 0; i < m.ids.length; i += 32) ids.push(toHex(m.ids.subarray(i, i + 32)));
      return { ids, stored: m.stored };
    });
}

function idsOf(b: EventBatch): string[] {
  return unpackBatch(b).map((it) => toHex(it.id));
}

function hexIds(ids: Uint8Array): string[] {
  const out: string[] = [];
  for (let i = 0; i < ids.length; i += 32) out.push(toHex(ids.subarray(i, i + 32)));
  return out;
}

const L: Limits = limitsWith({});

// ---------- ingest ----------

Deno.test("splitBody() splits an array of events, takes a single event whole, and refuses bad bodies", async () => {
  const g = await testGroup();
  const evs = await makeEvents(g, 3);
  assertEquals(splitBody(cborArrayOf(evs.map((e) => e.bytes)), LIMITS).map(toHex), evs.map((e) => toHex(e.bytes)));
  assertEquals(splitBody(evs[0]!.bytes, LIMITS).map(toHex), [toHex(evs[0]!.bytes)]);
  const code = (b: Uint8Array, limits: Limits = L) => {
    try {
      splitBody(b, limits);
      return "ok";
    } catch (e) {
      return (e as XfError).code;
    }
  };
  assertEquals(code(new Uint8Array()), "EMPTY_BODY");
  assertEquals(code(new Uint8Array([0x80])), "EMPTY_BODY");
  assertEquals(code(new Uint8Array([0x01])), "BAD_CBOR");
  assertEquals(code(evs[0]!.bytes.subarray(0, 40)), "BAD_CBOR");
  assertEquals(code(new Uint8Array([...evs[0]!.bytes, 0])), "BAD_CBOR");
  assertEquals(code(cborArrayOf(evs.map((e) => e.bytes)), limitsWith({ http_batch_events_max: 2 })), "BATCH_TOO_LARGE");
  assertEquals(code(new Uint8Array(100).fill(0x80), limitsWith({ http_body_bytes_max: 50 })), "BODY_TOO_LARGE");
});

function ingestWith(limits: Partial<Limits> = {}): IngestState {
  return ingest.init({ limits: limitsWith(limits) });
}

const submit = (tok: number, subs: Submission[]): IngestIn => input(tok, { type: "submit" as const, subs });

Deno.test("ingest: ids, duplicates within a request, GROUP_MISMATCH, lookup, then one batch to decode", async () => {
  const g = await testGroup(), other = await testGroup();
  const evs = await makeEvents(g, 4);
  const [foreign] = await makeEvents(other, 1);
  const st = ingestWith();
  const body = cborArrayOf([evs[0]!.bytes, evs[1]!.bytes, evs[0]!.bytes, evs[3]!.bytes, foreign!.bytes, evs[2]!.bytes]);
  const first = ingest.receive(st, submit(1, [{ req: 7, gid: g.gid, reader: "", body }]));
  assertEquals(reports(first, "split"), [{ type: "split", req: 7, n: 6 }]);
  // Nothing goes on before the index answered which ids it holds; the batch is not done yet.
  const [lookup] = ofKind(first as IngestEffect[], "lookup");
  assertEquals(lookup!.tok, 1);
  assertEquals(hexIds(lookup!.ids), [evs[0]!, evs[1]!, evs[3]!, evs[2]!].map((e) => toHex(e.id)));
  assertEquals(sends(first, "decode"), []);
  assertEquals(doneToks(first), []);
  assertEquals(results(first), []);
  assertEquals(st.waiting.size, 1);

  // The index holds evs[3].
  const after = ingest.receive(st, { type: "looked", tok: 1, known: [0, 0, 1, 0] });
  // An HTTP request (a reader to check): ingest's own answers go with the batch, for decode to report.
  assertEquals(results(after), []);
  const [batch, ...more] = sends(after, "decode") as unknown as DecodeBatch[];
  assertEquals(more, []);
  assertEquals(
    Object.fromEntries(batch!.deferred.map((r) => [r.idx, r.code ? `${r.status}:${r.code}` : r.status])),
    { 2: "duplicate", 3: "duplicate", 4: "rejected:GROUP_MISMATCH" },
  );
  assertEquals(batch!.deferred.find((r) => r.idx === 4)!.id, toHex(foreign!.id));
  assertEquals(batch!.type, "batch");
  assertEquals(unpackBatch(batch!.batch).map((it) => [it.req, it.idx]), [[7, 0], [7, 1], [7, 5]]);
  assertEquals(idsOf(batch!.batch), [evs[0]!, evs[1]!, evs[2]!].map((e) => toHex(e.id)));
  assertEquals(unpackBatch(batch!.batch)[2]!.bytes, evs[2]!.bytes);
  assertEquals(batch!.requests, [{ req: 7, gid: toHex(g.gid), reader: "" }] satisfies RequestInfo[]);
  assertEquals(doneToks(after), [1]);
  assertEquals((after as AnyEffect[]).at(-1)!.do, "done", "done comes after the send");
  assertEquals(st.waiting.size, 0);
  // An answer for a token nobody waits for changes nothing.
  assertEquals(ingest.receive(st, { type: "looked", tok: 1, known: [] }), []);
});

Deno.test("ingest: duplicates in flight and recently indexed; release signals free or remember ids", async () => {
  const g = await testGroup();
  const evs = await makeEvents(g, 4);
  const st = ingestWith();
  const sub = (req: number, e: StoredEvent): Submission => ({ req, gid: null, reader: null, body: e.bytes });
  // evs[0], evs[1] admitted (lookup pending): in flight.
  ingest.receive(st, submit(1, [sub(1, evs[0]!), sub(2, evs[1]!)]));
  // A copy arriving while the lookup runs is a duplicate at once: no lookup, done.
  const dup = ingest.receive(st, submit(2, [sub(3, evs[1]!)]));
  assertEquals(outcome(dup, 3), { 0: "duplicate" });
  assertEquals(ofKind(dup as IngestEffect[], "lookup"), []);
  assertEquals(sends(dup, "decode"), []);
  assertEquals(doneToks(dup), [2]);
  // Libraries and peers (reader null) are not read-checked: no request info goes to decode.
  const fwd = ingest.receive(st, { type: "looked", tok: 1, known: [0, 0] });
  const [b] = sends(fwd, "decode") as unknown as DecodeBatch[];
  assertEquals(b!.requests, []);
  assertEquals(unpackBatch(b!.batch).map((it) => it.req), [1, 2]);

  // Still in flight after the forward: a duplicate.
  assertEquals(outcome(ingest.receive(st, submit(3, [sub(4, evs[0]!)])), 4), { 0: "duplicate" });
  // Rejected downstream (stored: false): no longer in flight, may be sent again.
  ingest.receive(st, { type: "signal", from: "decode", msg: { type: "release", ids: evs[1]!.id, stored: false } });
  const again = ingest.receive(st, submit(4, [sub(5, evs[1]!)]));
  assertEquals(results(again), []);
  assertEquals(ofKind(again as IngestEffect[], "lookup").length, 1);
  // Indexed (stored: true): remembered, a duplicate without asking the index.
  ingest.receive(st, { type: "signal", from: "index", msg: { type: "release", ids: evs[0]!.id, stored: true } });
  assert(!st.pending.has(toHex(evs[0]!.id)));
  const recent = ingest.receive(st, submit(5, [sub(6, evs[0]!)]));
  assertEquals(outcome(recent, 6), { 0: "duplicate" });
  assertEquals(ofKind(recent as IngestEffect[], "lookup"), []);
  // An id the lookup found in RocksDB is remembered too.
  ingest.receive(st, submit(6, [sub(7, evs[2]!)]));
  assertEquals(outcome(ingest.receive(st, { type: "looked", tok: 6, known: [1] }), 7), { 0: "duplicate" });
  assertEquals(outcome(ingest.receive(st, submit(7, [sub(8, evs[2]!)])), 8), { 0: "duplicate" });
  // Several ids in one release signal.
  const st2 = ingestWith();
  ingest.receive(st2, submit(1, [sub(1, evs[0]!), sub(2, evs[1]!), sub(3, evs[3]!)]));
  const ids = new Uint8Array(64);
  ids.set(evs[0]!.id, 0);
  ids.set(evs[3]!.id, 32);
  ingest.receive(st2, { type: "signal", from: "wal_flush", msg: { type: "release", ids, stored: false } });
  assertEquals([...st2.pending], [toHex(evs[1]!.id)]);
});

Deno.test("ingest: the recent-id memory is bounded (oldest forgotten)", async () => {
  const g = await testGroup();
  const evs = await makeEvents(g, 3);
  const st = ingestWith({ ingest_recent_ids_max: 2 });
  const all = new Uint8Array(96);
  evs.forEach((e, i) => all.set(e.id, i * 32));
  ingest.receive(st, { type: "signal", from: "index", msg: { type: "release", ids: all, stored: true } });
  assertEquals([...st.recent], [toHex(evs[1]!.id), toHex(evs[2]!.id)]);
  const eff = ingest.receive(st, submit(1, [{ req: 1, gid: null, reader: null, body: evs[0]!.bytes }]));
  assertEquals(ofKind(eff as IngestEffect[], "lookup").length, 1, "the forgotten id is asked of the index again");
});

Deno.test("ingest: batches to decode are cut between requests, never inside one", async () => {
  const g = await testGroup();
  const evs = await makeEvents(g, 6);
  const st = ingestWith({ stage_batch_events_max: 2 });
  const body = (es: StoredEvent[]) => cborArrayOf(es.map((e) => e.bytes));
  const eff = drive(
    ingest,
    st,
    [
      submit(1, [
        { req: 1, gid: g.gid, reader: "aa", body: body(evs.slice(0, 3)) },
        { req: 2, gid: g.gid, reader: "", body: body(evs.slice(3, 4)) },
        { req: 3, gid: g.gid, reader: null, body: body(evs.slice(4, 5)) },
        { req: 4, gid: null, reader: "", body: body(evs.slice(5, 6)) },
      ]),
    ],
    (e): IngestIn[] => e.do === "lookup" ? [{ type: "looked", tok: e.tok, known: [] }] : [],
  );
  const batches = sends(eff, "decode") as unknown as DecodeBatch[];
  assertEquals(batches.map((b) => unpackBatch(b.batch).map((it) => it.req)), [[1, 1, 1], [2, 3], [4]]);
  // Each batch carries the reader checks of its own requests only (a path group and a reader).
  assertEquals(batches.map((b) => b.requests.map((r) => r.req)), [[1], [2], []]);
  assertEquals(batches[0]!.requests[0], { req: 1, gid: toHex(g.gid), reader: "aa" });
  assertEquals(doneToks(eff), [1]);
});

Deno.test("ingest: a bad body fails its request alone; an oversized event is rejected; nothing fresh needs no lookup", async () => {
  const g = await testGroup();
  const evs = await makeEvents(g, 2);
  const st = ingestWith({ event_bytes_max: evs[0]!.bytes.length - 1 });
  const eff = ingest.receive(
    st,
    submit(9, [
      { req: 1, gid: null, reader: null, body: new Uint8Array([0x01]) },
      { req: 2, gid: null, reader: null, body: cborArrayOf([evs[0]!.bytes, evs[1]!.bytes]) },
      { req: 3, gid: null, reader: null, body: new Uint8Array() },
    ]),
  );
  const failed = reports(eff, "failed");
  assertEquals(failed.map((f) => [f.req, f.code]), [[1, "BAD_CBOR"], [3, "EMPTY_BODY"]]);
  assertEquals(reports(eff, "split"), [{ type: "split", req: 2, n: 2 }]);
  assertEquals(outcome(eff, 2), { 0: "rejected:EVENT_TOO_LARGE", 1: "rejected:EVENT_TOO_LARGE" });
  assertEquals(ofKind(eff as IngestEffect[], "lookup"), []);
  assertEquals(sends(eff, "decode"), [], "an empty batch is not sent");
  assertEquals(doneToks(eff), [9]);
  assertEquals(st.pending.size, 0);
});

// ---------- decode ----------

function decodeWith(limits: Partial<Limits> = {}): DecodeState {
  return decode.init({ limits: limitsWith(limits) });
}

interface Item {
  bytes: Uint8Array;
  req?: number;
  idx?: number;
}

function items(list: (Item | StoredEvent)[], req = 1): BatchItem[] {
  return list.map((x, i) => {
    const it = x as Item;
    return { bytes: it.bytes, req: it.req ?? req, idx: it.idx ?? i, id: eventId(it.bytes), seq: 0 };
  });
}

function dbatch(tok: number, list: (Item | StoredEvent)[], requests: RequestInfo[] = [], now = Date.now()): DecodeIn {
  return input(tok, { type: "batch" as const, batch: packBatch(items(list)), requests, deferred: [] }, now);
}

/** Answers: every signature valid (unless `bad`), every group not held (unless in `held`). */
function decodeAnswers(bad: Set<string> = new Set(), held: Map<string, GroupState> = new Map()) {
  return (e: DecodeEffect): DecodeIn[] => {
    if (e.do === "verify") {
      return [{ type: "verified", tok: e.tok, ok: e.checks.map((c) => !bad.has(toHex(c.sig))) }];
    }
    if (e.do === "load") return [{ type: "loaded", groups: e.gids.map((g) => [g, held.get(g)?.toJSON() ?? null]) }];
    return [];
  };
}

function appended(effs: readonly unknown[]): BatchItem[][] {
  return sends(effs, "wal").map((m) => {
    assertEquals(m.type, "append");
    return unpackBatch(m.batch as EventBatch);
  });
}

Deno.test("decode: shape, clock (the message's now), reserved kind, signature; release and append", async () => {
  const g = await testGroup();
  const now = Date.now();
  const [ok] = await makeEvents(g, 1, now - 5000);
  // Stamped at the node's real clock, but the batch was taken long before: in the future for decode.
  const [future] = await makeEvents(g, 1, now + L.event_future_ms + 60_000);
  const reserved = await signEvent(g.owner, {
    group: g.gid,
    ts: now - 1000,
    kind: 5, // reserved for the engine, and no engine kind
    tags: [],
    payload: new Uint8Array(),
  });
  const [forged] = await makeEvents(g, 1, now - 4000);
  const garbage = new Uint8Array([0x82, 0x01, 0x02]);
  const st = decodeWith();
  const first = decode.receive(
    st,
    dbatch(3, [g.manifest, ok!, { bytes: garbage }, future!, reserved, forged!], [], now),
  );
  // The group is asked of the index once; the signatures of what decoded are asked for.
  const loads = ofKind(first as DecodeEffect[], "load");
  assertEquals(loads.map((l) => l.gids), [[toHex(g.gid)]]);
  const [verify] = ofKind(first as DecodeEffect[], "verify");
  assertEquals(verify!.tok, 3);
  assertEquals(verify!.checks.map((c) => toHex(c.sig)), [g.manifest, ok!, forged!].map((e) => toHex(e.sig)));
  assertEquals(doneToks(first), []);
  // Signatures answered (forged's is false): still waiting for the group's load.
  const v = decode.receive(st, { type: "verified", tok: 3, ok: [true, true, false] });
  assertEquals(v, []);
  const eff = decode.receive(st, { type: "loaded", groups: [[toHex(g.gid), null]] });
  assertEquals(outcome(eff, 1), {
    2: "rejected:BAD_EVENT",
    3: "rejected:TS_IN_FUTURE",
    4: "rejected:RESERVED_KIND",
    5: "rejected:BAD_SIGNATURE",
  });
  assertEquals(results(eff).find((r) => r.idx === 5)!.id, toHex(forged!.id));
  assertEquals(released(eff), [{
    ids: [garbage, future!.bytes, reserved.bytes, forged!.bytes].map((b) => toHex(eventId(b))),
    stored: false,
  }]);
  assertEquals(appended(eff).map((b) => b.map((it) => it.idx)), [[0, 1]]);
  assertEquals(appended(eff)[0]![1]!.bytes, ok!.bytes);
  assertEquals(doneToks(eff), [3]);
  assert(st.groups.get(toHex(g.gid)) instanceof GroupState, "the manifest created the group");

  // The same future event is fine once the batch's now has caught up: the clock is the message's, not Date.now().
  const later = drive(decode, st, [dbatch(4, [future!], [], now + L.event_future_ms + 60_000)], decodeAnswers());
  assertEquals(results(later), []);
  assertEquals(appended(later).map((b) => b.map((it) => it.idx)), [[0]]);
  // And an event stamped now is in the future for a batch taken well before.
  const [fresh] = await makeEvents(g, 1, now);
  const early = drive(decode, st, [dbatch(5, [fresh!], [], now - L.event_future_ms - 1)], decodeAnswers());
  assertEquals(outcome(early), { 0: "rejected:TS_IN_FUTURE" });
});

Deno.test("decode: UNKNOWN_GROUP without the manifest; a manifest creates its group for the same and the next batch", async () => {
  const g = await testGroup();
  const evs = await makeEvents(g, 4);
  const st = decodeWith();
  const gid = toHex(g.gid);
  const unknown = drive(decode, st, [dbatch(1, [evs[0]!])], decodeAnswers());
  assertEquals(outcome(unknown), { 0: "rejected:UNKNOWN_GROUP" });
  assertEquals(appended(unknown), []);
  assertEquals(released(unknown)[0]!.ids, [toHex(evs[0]!.id)]);
  assertEquals(st.groups.get(gid), null, "remembered as not held");
  // Manifest then events in one batch: no load asked (the group is known not held), the manifest admits the rest.
  const same = drive(decode, st, [dbatch(2, [g.manifest, evs[1]!, evs[2]!])], decodeAnswers());
  assertEquals(ofKind(same, "load"), []);
  assertEquals(results(same), []);
  assertEquals(released(same), []);
  assertEquals(appended(same).map((b) => b.map((it) => it.idx)), [[0, 1, 2]]);
  // The next batch sees the group, with no load.
  const next = drive(decode, st, [dbatch(3, [evs[3]!])], decodeAnswers());
  assertEquals(ofKind(next, "load"), []);
  assertEquals(appended(next).map((b) => b.length), [1]);
  assertEquals(doneToks([...unknown, ...same, ...next]), [1, 2, 3]);

  // In a fresh decode, manifest and event in one batch whose group the index is asked about.
  const st2 = decodeWith();
  const fresh = drive(decode, st2, [dbatch(1, [g.manifest, evs[0]!])], decodeAnswers());
  assertEquals(ofKind(fresh, "load").map((l) => l.gids), [[gid]]);
  assertEquals(appended(fresh).map((b) => b.length), [2]);
});

Deno.test("decode: membership added in one batch lets a member write a closed group; a non-member is FORBIDDEN", async () => {
  const g = await testGroup("closed", 1);
  const member = await generateKeyPair();
  const outsider = await generateKeyPair();
  const base = Date.now() - 100_000;
  const add = await signEvent(g.owner, {
    group: g.gid,
    ts: base,
    kind: KIND_MEMBERSHIP,
    tags: [],
    payload: encodeMembership({ action: ACTION_ADD, member: member.publicKey }),
  });
  // An add signed by someone who is not an admin.
  const badAdd = await signEvent(outsider, {
    group: g.gid,
    ts: base + 1,
    kind: KIND_MEMBERSHIP,
    tags: [],
    payload: encodeMembership({ action: ACTION_ADD, member: outsider.publicKey }),
  });
  const [byMember] = await makeEvents(g, 1, base + 1000, member);
  const [byOutsider] = await makeEvents(g, 1, base + 1000, outsider);
  const [beforeAdd] = await makeEvents(g, 1, base - 1000, member);
  const st = decodeWith();
  const one = drive(
    decode,
    st,
    [dbatch(1, [g.manifest, add, byMember!, byOutsider!, badAdd])],
    decodeAnswers(),
  );
  assertEquals(outcome(one), { 3: "rejected:FORBIDDEN", 4: "rejected:FORBIDDEN" });
  assertEquals(appended(one).map((b) => b.map((it) => it.idx)), [[0, 1, 2]]);
  const [byMember2] = await makeEvents(g, 1, base + 2000, member);
  const two = drive(decode, st, [dbatch(2, [byMember2!, byOutsider!, beforeAdd!])], decodeAnswers());
  // A member may write at or after the ts it was added, not before.
  assertEquals(outcome(two), { 1: "rejected:FORBIDDEN", 2: "rejected:FORBIDDEN" });
  assertEquals(appended(two).map((b) => b.map((it) => it.idx)), [[0]]);
});

Deno.test("decode: a request's reader must see its group, else the request fails UNKNOWN_GROUP whole", async () => {
  const closed = await testGroup("closed", 1);
  const open = await testGroup("open", 0);
  const member = await generateKeyPair();
  const add = await signEvent(closed.owner, {
    group: closed.gid,
    ts: Date.now() - 100_000,
    kind: KIND_MEMBERSHIP,
    tags: [],
    payload: encodeMembership({ action: ACTION_ADD, member: member.publicKey }),
  });
  const [cEv, cEv2] = await makeEvents(closed, 2, Date.now() - 50_000);
  const [oEv] = await makeEvents(open, 1);
  const [nEv] = await makeEvents(await testGroup("absent"), 1);
  const cg = toHex(closed.gid), og = toHex(open.gid);
  // The index holds both groups (the closed one with its member).
  const closedState = new GroupState(closed.owner.publicKey, 1);
  closedState.apply([add]);
  const held = new Map([[cg, closedState], [og, new GroupState(open.owner.publicKey, 0)]]);
  const st = decodeWith();
  const absentGid = toHex(nEv!.group);
  const eff = drive(
    decode,
    st,
    [
      input(1, {
        type: "batch" as const,
        batch: packBatch([
          ...items([cEv!], 1), // anonymous reader on a closed group: refused
          ...items([cEv2!], 2), // the member reads it: accepted
          ...items([oEv!], 3), // anonymous on an open group: accepted
          ...items([nEv!], 4), // a group nobody holds, no manifest: refused
        ]),
        requests: [
          { req: 1, gid: cg, reader: "" },
          { req: 2, gid: cg, reader: toHex(member.publicKey) },
          { req: 3, gid: og, reader: "" },
          { req: 4, gid: absentGid, reader: "" },
        ],
        deferred: [],
      }),
    ],
    decodeAnswers(new Set(), held),
  );
  const failed = reports(eff, "failed");
  assertEquals(failed.map((f) => [f.req, f.code]), [[1, "UNKNOWN_GROUP"], [4, "UNKNOWN_GROUP"]]);
  // The same answer for a closed group as for a group not held (nothing tells them apart).
  assertEquals(failed[0]!.message.replace(cg, "G"), failed[1]!.message.replace(absentGid, "G"));
  // A refused request's events get no per-event result, but are released.
  assertEquals(results(eff), []);
  assertEquals(released(eff)[0]!.ids.sort(), [toHex(cEv!.id), toHex(nEv!.id)].sort());
  assertEquals(appended(eff).map((b) => b.map((it) => it.req)), [[2, 3]]);

  // A request that creates its own group (its manifest inside) passes the reader check.
  const fresh = await testGroup("new", 1);
  const [fEv] = await makeEvents(fresh, 1);
  const creates = drive(
    decode,
    st,
    [dbatch(2, [fresh.manifest, fEv!], [{ req: 1, gid: toHex(fresh.gid), reader: "" }])],
    decodeAnswers(),
  );
  assertEquals(reports(creates, "failed"), []);
  assertEquals(appended(creates).map((b) => b.length), [2]);
  // Not with a manifest whose signature fails, nor with the manifest of another group.
  const forged = await testGroup("forged", 1);
  const [forgedEv] = await makeEvents(forged, 1);
  const bad = drive(
    decode,
    st,
    [dbatch(3, [forged.manifest, forgedEv!], [{ req: 1, gid: toHex(forged.gid), reader: "" }])],
    decodeAnswers(new Set([toHex(forged.manifest.sig)])),
  );
  assertEquals(reports(bad, "failed").map((f) => f.code), ["UNKNOWN_GROUP"]);
  assertEquals(appended(bad), []);
  const other = await testGroup("other", 0);
  const [target] = await makeEvents(await testGroup("target", 1), 1);
  const wrong = drive(
    decode,
    st,
    [dbatch(4, [other.manifest, target!], [{ req: 1, gid: toHex(target!.group), reader: "" }])],
    decodeAnswers(),
  );
  assertEquals(reports(wrong, "failed").map((f) => f.code), ["UNKNOWN_GROUP"]);
  assertEquals(appended(wrong), []);
});

Deno.test("decode: a group not held is loaded once, and admission waits for `loaded`", async () => {
  const g = await testGroup();
  const evs = await makeEvents(g, 3);
  const gid = toHex(g.gid);
  const st = decodeWith();
  const a = decode.receive(st, dbatch(1, [evs[0]!]));
  assertEquals(ofKind(a, "load").map((l) => l.gids), [[gid]]);
  // A second batch of the same group while the load runs asks nothing more.
  const b = decode.receive(st, dbatch(2, [evs[1]!]));
  assertEquals(ofKind(b, "load"), []);
  assertEquals(decode.receive(st, { type: "verified", tok: 1, ok: [true] }), []);
  assertEquals(decode.receive(st, { type: "verified", tok: 2, ok: [true] }), []);
  // The index holds the group: both batches are admitted, in order.
  const loaded = decode.receive(st, {
    type: "loaded",
    groups: [[gid, new GroupState(g.owner.publicKey, 0).toJSON()]],
  });
  assertEquals(results(loaded), []);
  assertEquals(appended(loaded).map((x) => idsOf(packBatch(x))), [[toHex(evs[0]!.id)], [toHex(evs[1]!.id)]]);
  assertEquals(doneToks(loaded), [1, 2]);
  // Held now: no load for the next batch, admitted as soon as it is verified.
  const c = drive(decode, st, [dbatch(3, [evs[2]!])], decodeAnswers());
  assertEquals(ofKind(c, "load"), []);
  assertEquals(doneToks(c), [3]);

  // A failed load rejects the waiting events with its error, and the next batch asks again.
  const st2 = decodeWith();
  decode.receive(st2, dbatch(1, [evs[0]!]));
  decode.receive(st2, { type: "verified", tok: 1, ok: [true] });
  const lf = decode.receive(st2, { type: "load-failed", gids: [gid], code: "STAGE_DOWN", message: "index down" });
  assertEquals(outcome(lf), { 0: "rejected:STAGE_DOWN" });
  assertEquals(doneToks(lf), [1]);
  const retry = decode.receive(st2, dbatch(2, [evs[0]!]));
  assertEquals(ofKind(retry, "load").map((l) => l.gids), [[gid]]);
});

Deno.test("decode: batches are admitted in arrival order when their signatures come back out of order", async () => {
  const g = await testGroup();
  const evs = await makeEvents(g, 3);
  const st = decodeWith();
  // The manifest in the first batch admits the group for the second.
  decode.receive(st, dbatch(1, [g.manifest, evs[0]!]));
  decode.receive(st, dbatch(2, [evs[1]!]));
  decode.receive(st, dbatch(3, [evs[2]!]));
  decode.receive(st, { type: "loaded", groups: [[toHex(g.gid), null]] });
  assertEquals(decode.receive(st, { type: "verified", tok: 3, ok: [true] }), []);
  assertEquals(decode.receive(st, { type: "verified", tok: 2, ok: [true] }), []);
  const eff = decode.receive(st, { type: "verified", tok: 1, ok: [true, true] });
  assertEquals(doneToks(eff), [1, 2, 3]);
  assertEquals(results(eff), [], "the second batch saw the group the first one created");
  assertEquals(appended(eff).map((b) => b.map((it) => toHex(it.id))), [
    [toHex(g.manifest.id), toHex(evs[0]!.id)],
    [toHex(evs[1]!.id)],
    [toHex(evs[2]!.id)],
  ]);
  assertEquals(st.order.length, 0);
});

// ---------- wal_flush ----------

function walWith(): WalState {
  return walFlush.init({ limits: L });
}

function walInput(tok: number, list: { bytes: Uint8Array; req: number; idx: number }[]): WalIn {
  return input(tok, {
    type: "append" as const,
    batch: packBatch(list.map((x) => ({ ...x, id: eventId(x.bytes), seq: 0 }))),
  });
}

Deno.test("wal_flush: append → appended: stored results, put to the index with seqs, done", async () => {
  const g = await testGroup();
  const evs = await makeEvents(g, 3);
  const st = walWith();
  const first = walFlush.receive(
    st,
    walInput(4, [
      { bytes: evs[0]!.bytes, req: 7, idx: 0 },
      { bytes: evs[1]!.bytes, req: 7, idx: 1 },
      { bytes: evs[2]!.bytes, req: 0, idx: 0 }, // synced from a peer: no request to answer
    ]),
  );
  assertEquals(first.length, 1);
  const [app] = ofKind(first as WalEffect[], "append");
  assertEquals(app!.tok, 4);
  assertEquals(app!.records, evs.map((e) => e.bytes));
  const eff = walFlush.receive(st, { type: "appended", tok: 4, firstSeq: 10 });
  assertEquals(eff.map((e) => e.do), ["report", "report", "send", "done"]);
  assertEquals(reports(eff, "appended"), [{ type: "appended", n: 3, lastSeq: 12 }]);
  assertEquals(results(eff), [
    { req: 7, idx: 0, status: "stored", id: toHex(evs[0]!.id) },
    { req: 7, idx: 1, status: "stored", id: toHex(evs[1]!.id) },
  ]);
  const [put] = sends(eff, "index");
  assertEquals(put!.type, "put");
  assertEquals(put!.replay, false);
  const b = put!.batch as EventBatch;
  assertEquals([...b.seqs], [10, 11, 12]);
  assertEquals(idsOf(b), evs.map((e) => toHex(e.id)));
  assertEquals(doneToks(eff), [4]);
  assertEquals(st.appending.size, 0);
  // An answer for nothing pending does nothing.
  assertEquals(walFlush.receive(st, { type: "appended", tok: 4, firstSeq: 99 }), []);
  // Replayed records go to the index marked as replay.
  const replayed = walFlush.receive(st, { type: "replayed", batch: b });
  assertEquals(replayed.map((e) => e.do), ["send"]);
  assertEquals(sends(replayed, "index")[0]!.replay, true);
});

Deno.test("wal_flush: a refusal with a full disk reports `full`, answers STORAGE_FULL, releases; `space` takes writes again", async () => {
  const g = await testGroup();
  const evs = await makeEvents(g, 3);
  const st = walWith();
  walFlush.receive(
    st,
    walInput(1, [{ bytes: evs[0]!.bytes, req: 2, idx: 0 }, { bytes: evs[1]!.bytes, req: 2, idx: 1 }]),
  );
  const refused = walFlush.receive(st, {
    type: "refused",
    tok: 1,
    code: "STORAGE_FULL",
    message: "disk full",
    full: true,
  });
  assertEquals(reports(refused, "full"), [{ type: "full", full: true }]);
  assertEquals(outcome(refused, 2), { 0: "rejected:STORAGE_FULL", 1: "rejected:STORAGE_FULL" });
  assertEquals(released(refused), [{ ids: [toHex(evs[0]!.id), toHex(evs[1]!.id)], stored: false }]);
  assertEquals(sends(refused, "index"), []);
  assertEquals(doneToks(refused), [1]);
  assert(st.full);
  // While full, a batch is refused at once, with no append and no second `full` report.
  const whileFull = walFlush.receive(st, walInput(2, [{ bytes: evs[2]!.bytes, req: 3, idx: 0 }]));
  assertEquals(ofKind(whileFull as WalEffect[], "append"), []);
  assertEquals(reports(whileFull, "full"), []);
  assertEquals(outcome(whileFull, 3), { 0: "rejected:STORAGE_FULL" });
  assertEquals(released(whileFull)[0]!.ids, [toHex(evs[2]!.id)]);
  assertEquals(doneToks(whileFull), [2]);
  // Space again: reported once, and appends resume.
  assertEquals(walFlush.receive(st, { type: "space" }), [{ do: "report", msg: { type: "full", full: false } }]);
  assertEquals(walFlush.receive(st, { type: "space" }), []);
  const resumed = walFlush.receive(st, walInput(3, [{ bytes: evs[2]!.bytes, req: 4, idx: 0 }]));
  assertEquals(resumed.map((e) => e.do), ["append"]);
  // Another refusal that is not about space (full: false) does not mark the disk full.
  const other = walFlush.receive(st, { type: "refused", tok: 3, code: "INTERNAL", message: "io", full: false });
  assertEquals(reports(other, "full"), []);
  assertEquals(outcome(other, 4), { 0: "rejected:INTERNAL" });
  assert(!st.full);
});

// ---------- index ----------

function putInput(tok: number, evs: StoredEvent[], replay = false): IndexIn {
  return input(tok, {
    type: "put" as const,
    batch: packBatch(evs.map((e, i) => ({ bytes: e.bytes, req: 0, idx: i, id: e.id, seq: i + 1 }))),
    replay,
  });
}

function written(toks: number[], lastSeq: number, stored: StoredEvent[], dups: StoredEvent[]): Written {
  const ids = (es: StoredEvent[]) => {
    const b = new Uint8Array(es.length * 32);
    es.forEach((e, i) => b.set(e.id, i * 32));
    return b;
  };
  return {
    type: "written",
    toks,
    n: stored.length + dups.length,
    replayN: 0,
    lastSeq,
    stored: ids(stored),
    duplicates: ids(dups),
    deleted: new Uint8Array(0),
    dropped: new Uint8Array(0),
    fresh: stored.length
      ? packBatch(stored.map((e, i) => ({ bytes: e.bytes, req: 0, idx: i, id: e.id, seq: i })))
      : null,
  };
}

Deno.test("index: group commit — puts during a write wait for the next; written reports, releases, advertises, done", async () => {
  const g = await testGroup();
  const evs = await makeEvents(g, 6);
  const st: IndexState = index.init({ limits: L });
  const w1 = index.receive(st, putInput(1, evs.slice(0, 2)));
  const [write1] = ofKind(w1 as IndexEffect[], "write");
  assertEquals(write1!.toks, [1]);
  assertEquals(idsOf(write1!.batches[0]!.batch), evs.slice(0, 2).map((e) => toHex(e.id)));
  assertEquals(write1!.batches[0]!.replay, false);
  // While the write runs, more puts wait (and are not done).
  assertEquals(index.receive(st, putInput(2, evs.slice(2, 4))), []);
  assertEquals(index.receive(st, putInput(3, evs.slice(4, 6), true)), []);
  const after1 = index.receive(st, written([1], 2, [evs[0]!], [evs[1]!]));
  assertEquals(reports(after1, "indexed"), [{ type: "indexed", n: 2, replayN: 0, lastSeq: 2, stored: 1 }]);
  assertEquals(released(after1), [{ ids: [toHex(evs[0]!.id), toHex(evs[1]!.id)], stored: true }]);
  const [adv] = sends(after1, "advertise");
  assertEquals(adv!.type, "indexed");
  assertEquals(idsOf(adv!.batch as EventBatch), [toHex(evs[0]!.id)]);
  assertEquals(doneToks(after1), [1]);
  // The next write takes both waiting batches at once, after the done.
  const [write2] = ofKind(after1 as IndexEffect[], "write");
  assertEquals(write2!.toks, [2, 3]);
  assertEquals(write2!.batches.map((b) => b.replay), [false, true]);
  assertEquals((after1 as AnyEffect[]).at(-1)!.do, "write");
  // A write with an older seq does not move the checkpoint back; nothing fresh: no advertise, no signal.
  const after2 = index.receive(st, written([2, 3], 1, [], []));
  assertEquals(reports(after2, "indexed")[0]!.lastSeq, 2);
  assertEquals(sends(after2, "advertise"), []);
  assertEquals(released(after2), []);
  assertEquals(doneToks(after2), [2, 3]);
  assertEquals(ofKind(after2 as IndexEffect[], "write"), [], "nothing waits: no write");
  assert(!st.writing);
});

Deno.test("index: one write holds at most index_batch_events_max events (a lone larger batch still goes)", async () => {
  const g = await testGroup();
  const evs = await makeEvents(g, 6);
  const st: IndexState = index.init({ limits: limitsWith({ index_batch_events_max: 3 }) });
  const w = index.receive(st, putInput(1, evs.slice(0, 4)));
  assertEquals(ofKind(w as IndexEffect[], "write")[0]!.toks, [1], "4 events > 3, alone");
  index.receive(st, putInput(2, evs.slice(0, 2)));
  index.receive(st, putInput(3, evs.slice(2, 4)));
  index.receive(st, putInput(4, evs.slice(4, 5)));
  const a = index.receive(st, written([1], 4, [], []));
  assertEquals(ofKind(a as IndexEffect[], "write")[0]!.toks, [2], "2 + 2 > 3");
  const b = index.receive(st, written([2], 6, [], []));
  assertEquals(ofKind(b as IndexEffect[], "write")[0]!.toks, [3, 4], "2 + 1 ≤ 3");
});

// ---------- advertise ----------

Deno.test("advertise: matches indexed events to subscriptions by group and kind", async () => {
  const g = await testGroup(), h = await testGroup();
  const evs = [...await makeEvents(g, 3), ...await makeEvents(h, 2)];
  const st: AdvertiseState = advertise.init({ limits: limitsWith({ subscribers_max: 3 }) });
  const rt = advertiseEffects();
  const batch = packBatch(evs.map((e, i) => ({ bytes: e.bytes, req: 0, idx: i, id: e.id, seq: i })));
  const msg = input(1, { type: "indexed" as const, batch });
  // No subscriber: only done.
  assertEquals(advertise.receive(st, msg), [{ do: "done", tok: 1 }]);
  assertEquals(rt.call({ type: "advertise.subscribe", sub: 1, filter: { gid: toHex(g.gid) } }, st), true);
  assertEquals(rt.call({ type: "advertise.subscribe", sub: 2, filter: { kinds: [17] } }, st), true);
  assertEquals(rt.call({ type: "advertise.subscribe", sub: 3, filter: { gid: toHex(h.gid), kinds: [16] } }, st), true);
  const eff = advertise.receive(st, input(2, { type: "indexed" as const, batch }));
  assertEquals(eff.map((e) => e.do), ["report", "done"]);
  const [d] = reports(eff, "deliver");
  assertEquals(d!.batch, batch);
  // Kinds cycle 16, 17, 18 within each group's events.
  assertEquals(d!.matches, [{ sub: 1, idxs: [0, 1, 2] }, { sub: 2, idxs: [1, 4] }, { sub: 3, idxs: [3] }]);
  assertEquals(rt.call({ type: "advertise.stats" }, st), { subscribers: 3, delivered: 6 });
  // Past subscribers_max: OVERLOADED.
  const e = assertThrows(() => rt.call({ type: "advertise.subscribe", sub: 4, filter: {} }, st), XfError);
  assertEquals(e.code, "OVERLOADED");
  assertEquals(rt.call({ type: "advertise.unsubscribe", sub: 1 }, st), true);
  assertEquals(rt.call({ type: "advertise.unsubscribe", sub: 1 }, st), false);
  assertEquals(rt.call({ type: "advertise.unsubscribe", sub: 3 }, st), true);
  // Only sub 2 is left: a batch with no kind-17 event gives no deliver.
  const none = advertise.receive(st, input(3, { type: "indexed" as const, batch: packBatch(items([evs[0]!])) }));
  assertEquals(none, [{ do: "done", tok: 3 }]);
  assertEquals(code(() => rt.call({ type: "advertise.nope" }, st)), "INTERNAL");
});

Deno.test("ingest: an HTTP request whose events are all duplicates still goes to decode, its answers deferred", async () => {
  const g = await testGroup();
  const [e] = await makeEvents(g, 1);
  const st = ingestWith();
  const http = (req: number): Submission => ({ req, gid: g.gid, reader: "", body: e!.bytes });
  ingest.receive(st, submit(1, [http(1)]));
  ingest.receive(st, { type: "looked", tok: 1, known: [0] });
  // The same event again, while in flight: a duplicate, but not answered here — decode first judges the reader.
  const effs = ingest.receive(st, submit(2, [http(2)]));
  assertEquals(results(effs), []);
  const [b] = sends(effs, "decode") as unknown as DecodeBatch[];
  assertEquals(unpackBatch(b!.batch).length, 0);
  assertEquals(b!.requests.map((r) => r.req), [2]);
  assertEquals(b!.deferred.map((r) => [r.req, r.status]), [[2, "duplicate"]]);
  // Decode, for a reader who may not see the group (none held here), answers the request whole and drops them.
  const dst = decodeWith();
  const out = drive(decode, dst, [input(1, b!)], decodeAnswers());
  assertEquals(reports(out, "failed").map((f) => [f.req, f.code]), [[2, "UNKNOWN_GROUP"]]);
  assertEquals(results(out), []);
});

Deno.test('ingest: with the index\'s id filter, only a "maybe held" id is looked up; fresh ones go on at once', async () => {
  const g = await testGroup();
  const evs = await makeEvents(g, 3);
  const st = ingestWith();
  const held = IdFilter.sized(1000);
  held.add(evs[1]!.id);
  ingest.receive(st, { type: "signal", from: "index", msg: { type: "filter", bits: held.bits, count: 1 } });
  const sub = (req: number, e: StoredEvent): Submission => ({ req, gid: null, reader: null, body: e.bytes });
  // Fresh events the filter never saw: no lookup, straight to decode.
  const fresh = ingest.receive(st, submit(1, [sub(1, evs[0]!), sub(2, evs[2]!)]));
  assertEquals(ofKind(fresh as IngestEffect[], "lookup"), []);
  assertEquals(sends(fresh, "decode").length, 1);
  assertEquals(doneToks(fresh), [1]);
  // The held one: asked of the index, alone; the index says held: a duplicate.
  const maybe = ingest.receive(st, submit(2, [sub(3, evs[1]!)]));
  const [lookup] = ofKind(maybe as IngestEffect[], "lookup");
  assertEquals(hexIds(lookup!.ids), [toHex(evs[1]!.id)]);
  const after = ingest.receive(st, { type: "looked", tok: 2, known: [1] });
  assertEquals(outcome(after, 3), { 0: "duplicate" });
  // An indexed id joins the filter.
  ingest.receive(st, { type: "signal", from: "index", msg: { type: "release", ids: evs[0]!.id, stored: true } });
  assert(st.filter!.mayHave(evs[0]!.id));
});

Deno.test('IdFilter: never a false "not held"; false "maybe" rare at capacity', () => {
  const f = IdFilter.sized(20_000);
  const rnd = () => crypto.getRandomValues(new Uint8Array(32));
  const added = Array.from({ length: f.capacity }, rnd);
  for (const id of added) f.add(id);
  assert(added.every((id) => f.mayHave(id)));
  let fp = 0;
  for (let i = 0; i < 100_000; i++) if (f.mayHave(rnd())) fp++;
  assert(fp < 200, `false maybe ${fp} in 100,000`); // 16 bits per id, 7 probes: about 0.05 %
  assertThrows(() => new IdFilter(new Uint8Array(3)), RangeError);
});
