// Tombstones (kind 2): the rules (storage/deletion.ts), the stages that apply them, and a node end to end.
import { assert, assertEquals, assertThrows } from "@std/assert";
import { Prng, toHex } from "../core/bytes.ts";
import { XfError } from "../core/errors.ts";
import { TOMBSTONE_TARGETS_MAX } from "../core/limits.ts";
import {
  decodeTombstone,
  encodeTombstone,
  type HeldTombstone,
  mayDelete,
  planDeletions,
  type TargetInfo,
  type WriteEvent,
} from "../storage/deletion.ts";
import {
  createGroup,
  eventId,
  KIND_MANIFEST,
  KIND_MEMBERSHIP,
  KIND_SETTINGS,
  KIND_TOMBSTONE,
  signEvent,
  type StoredEvent,
} from "../storage/event.ts";
import { generateKeyPair, type KeyPair } from "../storage/ed25519.ts";
import {
  ACTION_ADD,
  ACTION_MAKE_ADMIN,
  ACTION_REVOKE_ADMIN,
  encodeMembership,
  GroupState,
} from "../storage/membership.ts";
import { encodeCbor } from "../storage/cbor.ts";
import { makeEvents, queryAll, syncLink, tempNode, testGroup, until } from "./_helpers.ts";
import type { XfNode } from "../node.ts";
import { createApp } from "../net/app.ts";
import { serve } from "../net/server.ts";
import { XfClient } from "../client/client.ts";
import { logic as ingest, PRESENCE, type Presence } from "../actors/ingest.ts";
import { type DecodeEffect, type DecodeIn, logic as decode } from "../actors/decode.ts";
import { packBatch, unpackBatch } from "../actors/batch.ts";
import type { EventResultWire } from "../actors/stage.ts";
import type { KvOp } from "../storage/kv.ts";
import { openRocks } from "../storage/kv_rocks.ts";
import { deletedKey, eventKey, KS } from "../storage/keys.ts";
import { type Limits, limitsWith } from "../core/limits.ts";

const enc = new TextEncoder();
const L: Limits = limitsWith({});

/** A tombstone signed by `key` in group `g` naming `targets`. */
function tombstone(key: KeyPair, g: { gid: Uint8Array }, targets: (StoredEvent | Uint8Array)[], ts = Date.now()) {
  return signEvent(key, {
    group: g.gid,
    ts,
    kind: KIND_TOMBSTONE,
    tags: [],
    payload: encodeTombstone(targets.map((t) => t instanceof Uint8Array ? t : t.id)),
  });
}

function post(key: KeyPair, g: { gid: Uint8Array }, text: string, ts = Date.now() - 60_000) {
  return signEvent(key, { group: g.gid, ts, kind: 16, tags: [], payload: enc.encode(text) });
}

function member(owner: KeyPair, g: { gid: Uint8Array }, action: number, who: KeyPair, ts: number) {
  return signEvent(owner, {
    group: g.gid,
    ts,
    kind: KIND_MEMBERSHIP,
    tags: [],
    payload: encodeMembership({ action: action as 0, member: who.publicKey }),
  });
}

async function allIds(node: XfNode, gid: string): Promise<string[]> {
  return (await queryAll(node, gid)).map((b) => toHex(eventId(b))).sort();
}

const codes = (rs: { status: string; code?: string }[]) => rs.map((r) => r.code ?? r.status);

// ---------- the payload ----------

Deno.test("encodeTombstone() and decodeTombstone() round-trip 1 and 256 ids; anything else is BAD_EVENT", () => {
  const ids = Array.from({ length: TOMBSTONE_TARGETS_MAX }, (_, i) => new Uint8Array(32).fill(i));
  assertEquals(decodeTombstone(encodeTombstone(ids.slice(0, 1))), ids.slice(0, 1));
  assertEquals(decodeTombstone(encodeTombstone(ids)), ids);
  const bad = (payload: Uint8Array, what: string) => {
    const e = assertThrows(() => decodeTombstone(payload), XfError);
    assertEquals(e.code, "BAD_EVENT", what);
    assert(e.message.startsWith("Cannot decode tombstone payload"), e.message);
  };
  bad(new Uint8Array(), "no bytes");
  bad(encodeCbor([]), "no target");
  bad(encodeCbor([...ids, new Uint8Array(32).fill(0xff)]), "257 targets");
  bad(encodeCbor([new Uint8Array(31)]), "31 bytes");
  bad(encodeCbor([ids[1]!, ids[2]!, ids[1]!]), "named twice");
  bad(encodeCbor(["ab".repeat(32)]), "a text string");
  bad(encodeCbor(new Map([["a", 1]])), "a map");
  bad(new Uint8Array([...encodeCbor([ids[0]!]), 0x00]), "trailing bytes");
  bad(new Uint8Array([0x98, 0x01, 0x58, 0x20, ...ids[0]!]), "a long array head");
  bad(new Uint8Array([0x81, 0x58, 0x20, ...ids[0]!.subarray(0, 16)]), "truncated");
  assertThrows(() => encodeTombstone([]), XfError, "no target id");
  assertThrows(() => encodeTombstone([ids[0]!, ids[0]!]), XfError, "named twice");
});

// ---------- the rule ----------

Deno.test("mayDelete(): the author, the owner, an admin at the tombstone's ts; nobody else; never engine kinds", async () => {
  const [owner, admin, alice, bob] = await Promise.all([1, 2, 3, 4].map(() => generateKeyPair()));
  const group = new Uint8Array(32).fill(7);
  const st = new GroupState(owner!.publicKey, 1);
  const m = (action: number, who: KeyPair, ts: number, n: number) => ({
    ts,
    id: new Uint8Array(32).fill(n),
    author: owner!.publicKey,
    payload: encodeMembership({ action: action as 0, member: who.publicKey }),
  });
  // alice and bob are members from ts 10; admin is admin from 100 to 200.
  st.apply([m(ACTION_ADD, alice!, 10, 1), m(ACTION_ADD, bob!, 10, 2)]);
  st.apply([m(ACTION_MAKE_ADMIN, admin!, 100, 3), m(ACTION_REVOKE_ADMIN, admin!, 200, 4)]);
  const target: TargetInfo = { id: new Uint8Array(32).fill(9), group, author: alice!.publicKey, kind: 16, ts: 50 };
  const by = (k: KeyPair, ts: number) => mayDelete(st, { group, author: k.publicKey, ts }, target);
  assert(by(alice!, 300).ok, "the author");
  assert(by(owner!, 300).ok, "the owner");
  assert(by(admin!, 150).ok, "an admin at ts 150");
  const revoked = by(admin!, 250);
  assert(!revoked.ok && revoked.code === "FORBIDDEN" && revoked.message.includes("not its author"));
  assert(!by(admin!, 50).ok, "not yet an admin at ts 50");
  assert(!by(bob!, 300).ok, "another member");
  assert(!by(await generateKeyPair(), 300).ok, "a stranger");
  for (const kind of [KIND_MANIFEST, KIND_MEMBERSHIP, KIND_TOMBSTONE, KIND_SETTINGS, 15]) {
    const j = mayDelete(st, { group, author: owner!.publicKey, ts: 300 }, { ...target, kind });
    assert(!j.ok && j.message.includes("may never be deleted"), `kind ${kind}`);
  }
  const other = mayDelete(st, { group: new Uint8Array(32), author: alice!.publicKey, ts: 300 }, target);
  assert(!other.ok && other.message.includes("not the tombstone's group"));
});

// ---------- convergence: a model of nodes over planDeletions ----------

/** A node of the model: what the index holds and its deleted set, fed one event at a time as the index is. */
class ModelNode {
  held = new Map<string, WriteEvent>();
  entries = new Map<string, Map<string, boolean>>();
  constructor(readonly state: GroupState) {}

  /** Offer an event, as ingest (a confirmed deleted id is refused) then the index's write (planDeletions). */
  offer(e: WriteEvent): string {
    const hex = toHex(e.id);
    if (this.held.has(hex)) return "duplicate";
    if ([...(this.entries.get(hex)?.values() ?? [])].some((c) => c)) return "deleted";
    // Read what the index reads: the targets the tombstone names, the entries of the id, their tombstones.
    const held = new Map<string, TargetInfo>();
    for (const t of e.targets ?? []) {
      const h = this.held.get(toHex(t));
      if (h) held.set(toHex(t), h);
    }
    const entries = new Map<string, Map<string, boolean>>();
    const named = this.entries.get(hex);
    if (named?.size) entries.set(hex, new Map(named));
    const tombstones = new Map<string, HeldTombstone>();
    for (const x of named?.keys() ?? []) {
      const t = this.held.get(x);
      if (t) tombstones.set(x, { signer: t, targets: t.targets! });
    }
    const plan = planDeletions({ events: [e], held, entries, tombstones, state: () => this.state });
    for (const f of plan.forget) this.held.delete(toHex(f.id));
    for (const c of plan.changes) {
      const th = toHex(c.target);
      const m = this.entries.get(th) ?? new Map<string, boolean>();
      if (c.confirmed === null) m.delete(toHex(c.tomb));
      else m.set(toHex(c.tomb), c.confirmed);
      if (m.size) this.entries.set(th, m);
      else this.entries.delete(th);
    }
    if (plan.keep.length) {
      this.held.set(hex, e);
      return "stored";
    }
    return plan.refused.length ? "deleted" : "rejected";
  }

  ids(): string[] {
    return [...this.held.keys()].sort();
  }
}

Deno.test("planDeletions(): nodes fed the same events in any order, then syncing what they hold, end with one set", async () => {
  const seeds = Number(Deno.env.get("XF_DELETION_SEEDS") ?? 300);
  const keys = await Promise.all([0, 1, 2, 3, 4].map(() => generateKeyPair()));
  const [owner, admin, alice, bob, stranger] = keys as [KeyPair, KeyPair, KeyPair, KeyPair, KeyPair];
  const group = new Uint8Array(32).fill(3);
  const state = new GroupState(owner.publicKey, 0);
  state.apply([{
    ts: 1,
    id: new Uint8Array(32).fill(1),
    author: owner.publicKey,
    payload: encodeMembership({ action: ACTION_MAKE_ADMIN, member: admin.publicKey }),
  }]);
  let dropped = 0, refused = 0, forgotten = 0;
  for (let seed = 1; seed <= seeds; seed++) {
    const r = new Prng(seed);
    const events: WriteEvent[] = [];
    const ev = (author: KeyPair, kind: number, targets?: Uint8Array[]): WriteEvent => ({
      id: r.bytes(32),
      group,
      author: author.publicKey,
      kind,
      ts: 10 + r.int(1000),
      ...(targets ? { targets } : {}),
    });
    // A membership event (never deletable), posts by everyone, then tombstones by anyone over any of them,
    // unknown ids included.
    events.push(ev(owner, KIND_MEMBERSHIP));
    for (let i = 0; i < 3 + r.int(6); i++) events.push(ev(r.pick(keys), 16 + r.int(3)));
    for (let i = 0; i < 1 + r.int(5); i++) {
      const pool = [...events.map((e) => e.id), r.bytes(32)];
      const n = 1 + r.int(3);
      const targets = [...new Set(Array.from({ length: n }, () => r.pick(pool)))];
      // Mostly signers that may delete (the author of the first target, the owner, the admin).
      const first = events.find((e) => e.id === targets[0]);
      const signer = r.float() < 0.5 && first
        ? keys.find((k) => toHex(k.publicKey) === toHex(first.author))!
        : r.pick([owner, admin, alice, bob, stranger]);
      events.push(ev(signer, KIND_TOMBSTONE, targets));
    }
    // Three nodes, each given a random part of the events in a random order (every event reaches one).
    const nodes = [0, 1, 2].map(() => new ModelNode(state));
    const shuffled = (xs: WriteEvent[]) => {
      const a = [...xs];
      for (let i = a.length - 1; i > 0; i--) {
        const j = r.int(i + 1);
        [a[i], a[j]] = [a[j]!, a[i]!];
      }
      return a;
    };
    for (const e of shuffled(events)) {
      const to = nodes.filter(() => r.float() < 0.5);
      for (const n of to.length ? to : [r.pick(nodes)]) {
        const res = n.offer(e);
        if (res === "deleted") refused++;
      }
    }
    // Sync: each node offers what it holds to each other node, until nothing changes.
    for (let round = 0;; round++) {
      assert(round < 20, `seed ${seed}: no fixpoint after 20 rounds`);
      const before = nodes.map((n) => n.ids().join());
      for (const a of nodes) {
        for (const b of nodes) if (a !== b) { for (const e of shuffled([...a.held.values()])) b.offer(e); }
      }
      if (nodes.every((n, i) => n.ids().join() === before[i])) break;
    }
    const sets = nodes.map((n) => n.ids());
    assertEquals(sets[1], sets[0], `seed ${seed}`);
    assertEquals(sets[2], sets[0], `seed ${seed}`);
    // What the set is: no held tombstone names a held event; every held tombstone may delete the targets held
    // before it... and every event deleted is gone.
    const held = nodes[0]!.held;
    for (const e of held.values()) {
      for (const t of e.targets ?? []) assert(!held.has(toHex(t)), `seed ${seed}: a held tombstone names a held event`);
    }
    forgotten += events.length - held.size;
    dropped += events.filter((e) => e.targets && !held.has(toHex(e.id))).length;
  }
  // The workload exercises every branch: refused re-arrivals, dropped tombstones, forgotten targets.
  assert(refused > 0 && dropped > 0 && forgotten > 0, JSON.stringify({ refused, dropped, forgotten }));
});

// ---------- the stages ----------

const input = <M>(tok: number, msg: M) => ({ type: "input" as const, from: "up", tok, msg, now: Date.now() });
type Eff = { do: string } & Record<string, unknown>;
const resultsOf = (effs: readonly unknown[]): EventResultWire[] =>
  (effs as Eff[]).filter((e) => e.do === "report" && (e.msg as { type: string }).type === "results")
    .flatMap((e) => (e.msg as { items: EventResultWire[] }).items);

Deno.test("ingest: an id the index answers deleted is refused DELETED; a deleted release leaves recent and joins the filter", async () => {
  const g = await testGroup();
  const [a, b] = await makeEvents(g, 2);
  const st = ingest.init({ limits: L });
  const sub = (req: number, e: StoredEvent) => ({ req, gid: null, reader: null, body: e.bytes });
  ingest.receive(st, input(1, { type: "submit" as const, subs: [sub(1, a!), sub(2, b!)] }));
  const known: Presence[] = [PRESENCE.deleted, PRESENCE.absent];
  const eff = ingest.receive(st, { type: "looked", tok: 1, known });
  assertEquals(resultsOf(eff).map((r) => [r.req, r.status, r.code]), [[1, "rejected", "DELETED"]]);
  const sent = (eff as Eff[]).filter((e) => e.do === "send");
  assertEquals(sent.map((e) => unpackBatch((e.msg as { batch: never }).batch).map((it) => it.req)), [[2]]);
  assert(!st.pending.has(toHex(a!.id)), "a refused id is no longer in flight");
  // b is indexed (recent: a copy is a duplicate without asking), then a tombstone deletes it.
  st.filter = null;
  ingest.receive(st, { type: "signal", from: "index", msg: { type: "release", ids: b!.id, stored: true } });
  const dup = ingest.receive(st, input(2, { type: "submit" as const, subs: [sub(3, b!)] }));
  assertEquals(resultsOf(dup).map((r) => r.status), ["duplicate"]);
  const { IdFilter } = await import("../storage/id_filter.ts");
  st.filter = IdFilter.sized(1000);
  ingest.receive(st, {
    type: "signal",
    from: "index",
    msg: { type: "release", ids: b!.id, stored: false, deleted: true },
  });
  assert(st.filter.mayHave(b!.id), "a deleted id joins the filter, so the index is asked");
  const again = ingest.receive(st, input(3, { type: "submit" as const, subs: [sub(4, b!)] }));
  assertEquals(resultsOf(again), []);
  assertEquals((again as Eff[]).filter((e) => e.do === "lookup").length, 1);
});

Deno.test("decode: a tombstone waits for its targets; one its signer may not delete is FORBIDDEN whole; a bad payload is BAD_EVENT", async () => {
  const g = await testGroup();
  const [alice, bob] = [await generateKeyPair(), await generateKeyPair()];
  const mine = await post(alice, g, "alice's");
  const theirs = await post(bob, g, "bob's");
  const here = await post(bob, g, "bob's, in the same batch");
  const byAlice = await tombstone(alice, g, [mine]); // her own: admitted
  const mixed = await tombstone(alice, g, [mine, theirs]); // bob's too: refused whole
  const sameBatch = await tombstone(alice, g, [here]); // judged against the batch's own event
  const unknown = await tombstone(bob, g, [crypto.getRandomValues(new Uint8Array(32))]); // pending: admitted
  const badPayload = await signEvent(alice, {
    group: g.gid,
    ts: Date.now(),
    kind: KIND_TOMBSTONE,
    tags: [],
    payload: encodeCbor([]),
  });
  const list = [here, byAlice, mixed, sameBatch, unknown, badPayload];
  const st = decode.init({ limits: L });
  const batch = packBatch(list.map((e, i) => ({ bytes: e.bytes, req: 1, idx: i, id: e.id, seq: 0 })));
  const first = decode.receive(st, input(1, { type: "batch" as const, batch, requests: [], deferred: [] }));
  assertEquals(resultsOf(first), []);
  const asks = (first as DecodeEffect[]).filter((e) => e.do === "targets") as { ids: Uint8Array }[];
  assertEquals(asks.length, 1, "one lookup for the batch");
  const asked: string[] = [];
  for (let i = 0; i < asks[0]!.ids.length; i += 32) asked.push(toHex(asks[0]!.ids.subarray(i, i + 32)));
  assertEquals(asked.length, 4, "each target once");
  const state = new GroupState(g.owner.publicKey, 0);
  const steps: DecodeIn[] = [
    { type: "verified", tok: 1, ok: [true, true, true, true, true] },
    { type: "loaded", groups: [[toHex(g.gid), state.toJSON()]] },
  ];
  for (const m of steps) assertEquals(resultsOf(decode.receive(st, m)), [], "still waiting for the targets");
  const wire = (e: StoredEvent, author: KeyPair) => ({
    group: toHex(e.group),
    author: toHex(author.publicKey),
    kind: 16,
    ts: e.ts,
  });
  const found = asked.map((h) =>
    h === toHex(mine.id) ? wire(mine, alice) : h === toHex(theirs.id) ? wire(theirs, bob) : null
  );
  const eff = decode.receive(st, { type: "targets", tok: 1, found });
  const out = Object.fromEntries(resultsOf(eff).map((r) => [r.idx, r.code]));
  assertEquals(out, { 2: "FORBIDDEN", 3: "FORBIDDEN", 5: "BAD_EVENT" });
  const appended = (eff as Eff[]).filter((e) => e.do === "send" && e.to === "wal");
  assertEquals(unpackBatch((appended[0]!.msg as { batch: never }).batch).map((it) => it.idx), [0, 1, 4]);
  // The index did not answer: every target counts as not held, and the index's write judges.
  const st2 = decode.init({ limits: L });
  const b2 = packBatch([mixed].map((e, i) => ({ bytes: e.bytes, req: 1, idx: i, id: e.id, seq: 0 })));
  decode.receive(st2, input(2, { type: "batch" as const, batch: b2, requests: [], deferred: [] }));
  decode.receive(st2, { type: "verified", tok: 2, ok: [true] });
  decode.receive(st2, { type: "loaded", groups: [[toHex(g.gid), state.toJSON()]] });
  const e2 = decode.receive(st2, { type: "targets", tok: 2, found: null });
  assertEquals((e2 as Eff[]).filter((e) => e.do === "send" && e.to === "wal").length, 1);
});

// ---------- a node ----------

/** A closed group on a node: owner, an admin from ts-100 s to ts-10 s, two members; their posts at ts-50 s. */
async function closedSetup(node: XfNode) {
  const t0 = Date.now();
  const owner = await generateKeyPair();
  const [admin, m1, m2] = [await generateKeyPair(), await generateKeyPair(), await generateKeyPair()];
  const { gid, manifest } = await createGroup(owner, { name: "closed", policy: 1 });
  const g = { gid };
  const setup = [
    manifest,
    await member(owner, g, ACTION_ADD, m1, t0 - 200_000),
    await member(owner, g, ACTION_ADD, m2, t0 - 200_000),
    await member(owner, g, ACTION_MAKE_ADMIN, admin, t0 - 100_000),
    await member(owner, g, ACTION_REVOKE_ADMIN, admin, t0 - 10_000),
  ];
  assertEquals(codes(await node.publish(setup)), setup.map(() => "stored"));
  return { t0, owner, admin, m1, m2, gid, g, manifest, setup };
}

Deno.test("Who may delete: the author, the owner, an admin as of the tombstone's ts; a revoked admin, another member and a non-member may not", async () => {
  const t = await tempNode();
  try {
    const { t0, owner, admin, m1, m2, gid, g } = await closedSetup(t.node);
    const posts = [];
    for (let i = 0; i < 6; i++) posts.push(await post(m1, g, `post ${i}`, t0 - 50_000 + i));
    assertEquals(codes(await t.node.publish(posts)), posts.map(() => "stored"));
    const stranger = await generateKeyPair();
    const res = await t.node.publish([
      await tombstone(m1, g, [posts[0]!]), // the author
      await tombstone(owner, g, [posts[1]!]), // the owner
      await tombstone(admin, g, [posts[2]!], t0 - 20_000), // an admin at that ts
      await tombstone(admin, g, [posts[3]!], t0 - 5_000), // revoked at t0 - 10 s
      await tombstone(m2, g, [posts[4]!]), // another member
      await tombstone(stranger, g, [posts[5]!]), // not a member (of a closed group: may not even write)
    ]);
    assertEquals(codes(res), ["stored", "stored", "stored", "FORBIDDEN", "FORBIDDEN", "FORBIDDEN"]);
    assert(res[3]!.message!.includes("not its author, nor the owner or an admin"), res[3]!.message);
    const held = await Promise.all(posts.map(async (p) => (await t.node.get(toHex(p.id))) !== null));
    assertEquals(held, [false, false, false, true, true, true]);
    // 5 setup events + 6 posts - 3 deleted + 3 tombstones.
    assertEquals((await t.node.merkle(toHex(gid)))!.count, 11);
  } finally {
    await t.done();
  }
});

Deno.test("Manifests, membership events and tombstones are never deleted; a target in another group is FORBIDDEN; a bad payload is BAD_EVENT", async () => {
  const t = await tempNode();
  try {
    const { owner, gid, g, manifest, setup } = await closedSetup(t.node);
    const other = await testGroup();
    const [foreign] = await makeEvents(other, 1);
    const mine = await post(owner, g, "mine");
    await t.node.publish([other.manifest, foreign!, mine]);
    const first = await tombstone(owner, g, [mine]);
    assertEquals(codes(await t.node.publish(first)), ["stored"]);
    const res = await t.node.publish([
      await tombstone(owner, g, [manifest]),
      await tombstone(owner, g, [setup[1]!]),
      await tombstone(owner, g, [first]),
      await tombstone(owner, g, [foreign!]),
      await signEvent(owner, { group: gid, ts: Date.now(), kind: KIND_TOMBSTONE, tags: [], payload: encodeCbor([]) }),
      await signEvent(owner, {
        group: gid,
        ts: Date.now(),
        kind: KIND_TOMBSTONE,
        tags: [],
        payload: encodeCbor(
          Array.from({ length: 257 }, (_, i) => new Uint8Array(32).fill(i % 256).map((b, j) => j ? b : i >> 8)),
        ),
      }),
    ]);
    assertEquals(codes(res), ["FORBIDDEN", "FORBIDDEN", "FORBIDDEN", "FORBIDDEN", "BAD_EVENT", "BAD_EVENT"]);
    for (const r of res.slice(0, 3)) assert(r.message!.includes("may never be deleted"), r.message);
    assert(res[3]!.message!.includes("not the tombstone's group"), res[3]!.message);
    for (const e of [manifest, setup[1]!, first, foreign!]) assert((await t.node.get(toHex(e.id))) !== null);
  } finally {
    await t.done();
  }
});

Deno.test("A tombstone forgets its target everywhere: events, time and arrival indexes, Merkle set; GET 410, POST again DELETED", async () => {
  const t = await tempNode();
  try {
    const g = await testGroup();
    const gid = toHex(g.gid);
    const evs = await makeEvents(g, 5);
    await t.node.publish([g.manifest, ...evs]);
    const target = evs[2]!;
    const before = await t.node.merkle(gid);
    assert((await t.node.proof(gid, toHex(target.id))) !== null);
    const x = await tombstone(g.owner, g, [target]);
    assertEquals(codes(await t.node.publish(x)), ["stored"]);
    assertEquals(await t.node.get(toHex(target.id)), null);
    assertEquals(await t.node.deletedIn(toHex(target.id)), gid);
    assertEquals(await t.node.proof(gid, toHex(target.id)), null);
    const after = await t.node.merkle(gid);
    assertEquals(after!.count, before!.count); // one gone, the tombstone in
    assert(after!.root !== before!.root);
    const ids = await allIds(t.node, gid);
    assert(!ids.includes(toHex(target.id)) && ids.includes(toHex(x.id)));
    const arr = await t.node.arrivals({ gid, after: 0, limit: 100 });
    assertEquals(arr!.events.map((b) => toHex(eventId(b))).includes(toHex(target.id)), false);
    assertEquals(arr!.events.length, 6);
    // Over HTTP: 410 DELETED for the id, and for the event posted again.
    const app = createApp(t.node);
    const got = await app.request(`/v1/events/${toHex(target.id)}`);
    assertEquals([got.status, (await got.json()).error], [410, "DELETED"]);
    const again = await app.request(`/v1/groups/${gid}/events`, {
      method: "POST",
      body: target.bytes as BodyInit,
      headers: { "content-type": "application/cbor" },
    });
    assertEquals([again.status, (await again.json()).error], [410, "DELETED"]);
    assertEquals(codes(await t.node.publish(target)), ["DELETED"]);
    // An id never seen is still 404.
    const none = await app.request(`/v1/events/${"ab".repeat(32)}`);
    assertEquals(none.status, 404);
    const f = await t.node.fsck(gid);
    assert(f!.ok && f!.tombstones.checked === 1, JSON.stringify(f));
    const d = await t.node.fsckDeleted();
    assertEquals([d.ok, d.entries, d.confirmed], [true, 1, 1]);
  } finally {
    await t.done();
  }
});

Deno.test("A deleted event of a closed group is 404 to those who may not read the group, 410 to its members", async () => {
  const t = await tempNode();
  try {
    const { m1, g, gid } = await closedSetup(t.node);
    const p = await post(m1, g, "secret");
    await t.node.publish([p, await tombstone(m1, g, [p])]);
    const app = createApp(t.node);
    assertEquals((await app.request(`/v1/events/${toHex(p.id)}`)).status, 404);
    assertEquals(await t.node.deletedIn(toHex(p.id)), toHex(gid));
  } finally {
    await t.done();
  }
});

Deno.test("Tombstone before its target or after it: two nodes end with the same set and root", async () => {
  const a = await tempNode(), b = await tempNode(), c = await tempNode();
  try {
    const g = await testGroup();
    const gid = toHex(g.gid);
    const [alice, bob] = [await generateKeyPair(), await generateKeyPair()];
    const common = await makeEvents(g, 20);
    const t1 = await post(alice, g, "alice deletes this");
    const x1 = await tombstone(alice, g, [t1]); // valid
    const t2 = await post(alice, g, "bob may not delete this");
    const x2 = await tombstone(bob, g, [t2]); // invalid: dropped when t2 arrives, refused when t2 is held
    for (const n of [a, b, c]) await n.node.publish([g.manifest, ...common]);
    // a: targets first, one request each.
    for (const e of [t1, x1, t2, x2]) await a.node.publish(e);
    // b: tombstones first.
    for (const e of [x1, x2, t1, t2]) await b.node.publish(e);
    // c: all in one request (one index write), tombstones first.
    await c.node.publish([x2, x1, t2, t1]);
    const roots = await Promise.all([a, b, c].map(async (n) => (await n.node.merkle(gid))!.root));
    assertEquals(roots[1], roots[0]);
    assertEquals(roots[2], roots[0]);
    const ids = await allIds(a.node, gid);
    assertEquals(await allIds(b.node, gid), ids);
    assertEquals(await allIds(c.node, gid), ids);
    assert(!ids.includes(toHex(t1.id)) && ids.includes(toHex(x1.id)));
    assert(ids.includes(toHex(t2.id)) && !ids.includes(toHex(x2.id)));
    for (const n of [a, b, c]) {
      assertEquals(codes(await n.node.publish([t1, x2])), ["DELETED", "FORBIDDEN"]);
      assert((await n.node.fsck(gid))!.ok);
      assert((await n.node.fsckDeleted()).ok);
    }
  } finally {
    await a.done();
    await b.done();
    await c.done();
  }
});

/** Pipe two nodes together in-process: a is the client (it initiates), b the server. */

Deno.test("Duplicate tombstones, and a tombstone naming an id not held: pending until it arrives, then judged", async () => {
  const t = await tempNode();
  try {
    const g = await testGroup();
    const gid = toHex(g.gid);
    const [alice, bob] = [await generateKeyPair(), await generateKeyPair()];
    await t.node.publish(g.manifest);
    // Two tombstones of one target (its author's and the owner's): both held, the target gone.
    const p = await post(alice, g, "twice deleted");
    await t.node.publish(p);
    const xa = await tombstone(alice, g, [p]);
    const xo = await tombstone(g.owner, g, [p]);
    assertEquals(codes(await t.node.publish([xa, xo, xa])), ["stored", "stored", "duplicate"]);
    assertEquals((await t.node.fsckDeleted()).entries, 2);
    // A tombstone naming an id never seen here (alice's, not yet arrived) beside one held.
    const later = await post(alice, g, "arrives after its tombstone");
    const held = await post(alice, g, "held");
    await t.node.publish(held);
    const x = await tombstone(alice, g, [later, held]);
    assertEquals(codes(await t.node.publish(x)), ["stored"]);
    assertEquals(await t.node.get(toHex(held.id)), null);
    assertEquals(await t.node.deletedIn(toHex(later.id)), null, "pending: never held, not yet judged");
    // It arrives: alice may delete it, so it is refused (by the index, after its ack), and then at once.
    await t.node.publish(later);
    assertEquals(await t.node.get(toHex(later.id)), null);
    assertEquals(await t.node.deletedIn(toHex(later.id)), gid);
    assertEquals(codes(await t.node.publish(later)), ["DELETED"]);
    // A tombstone by alice naming bob's event (not held yet) and her own (held): it deletes hers...
    const bobs = await post(bob, g, "bob's");
    const hers = await post(alice, g, "hers");
    await t.node.publish(hers);
    const bad = await tombstone(alice, g, [bobs, hers]);
    assertEquals(codes(await t.node.publish(bad)), ["stored"]);
    assertEquals(await t.node.get(toHex(hers.id)), null);
    // ...until bob's arrives: she may not delete it, so her tombstone was invalid: it goes, bob's is stored,
    // and hers may come back (by sync, or posted again).
    assertEquals(codes(await t.node.publish(bobs)), ["stored"]);
    assert((await t.node.get(toHex(bobs.id))) !== null);
    assertEquals(await t.node.get(toHex(bad.id)), null);
    assertEquals(await t.node.deletedIn(toHex(hers.id)), null);
    assertEquals(codes(await t.node.publish(hers)), ["stored"]);
    // The invalid tombstone arriving again is refused: bob's event is held now.
    assertEquals(codes(await t.node.publish(bad)), ["FORBIDDEN"]);
    assert((await t.node.fsck(gid))!.ok);
    assert((await t.node.fsckDeleted()).ok);
  } finally {
    await t.done();
  }
});

Deno.test("Re-arrival by sync: a peer offline during the deletion sends the target, it is refused DELETED, and the peer deletes it too", async () => {
  const a = await tempNode(), b = await tempNode();
  try {
    const g = await testGroup();
    const gid = toHex(g.gid);
    const evs = await makeEvents(g, 30);
    await a.node.publish([g.manifest, ...evs]);
    await b.node.publish([g.manifest, ...evs]);
    // b is offline: a deletes two events.
    const x = await tombstone(g.owner, g, [evs[3]!, evs[17]!]);
    await a.node.publish(x);
    // b comes back and syncs: it sends evs[3] and evs[17] (a refuses them) and gets the tombstone.
    const { client, server } = syncLink(b.node, a.node);
    await client.sync(gid);
    await until(async () => (await b.node.get(toHex(evs[3]!.id))) === null);
    await until(async () => (await b.node.merkle(gid))!.root === (await a.node.merkle(gid))!.root);
    assertEquals(await allIds(b.node, gid), await allIds(a.node, gid));
    assertEquals(await b.node.deletedIn(toHex(evs[17]!.id)), gid);
    // The refusals were no strike: the session is still open and syncs again with nothing to move.
    await client.sync(gid);
    assertEquals(codes(await a.node.publish(evs[3]!)), ["DELETED"]);
    client.close();
    server.close();
  } finally {
    await a.done();
    await b.done();
  }
});

Deno.test("Sync mends what an order took: a tombstone found invalid later gives back the targets it had deleted", async () => {
  const a = await tempNode(), b = await tempNode();
  try {
    const g = await testGroup();
    const gid = toHex(g.gid);
    const [alice, bob] = [await generateKeyPair(), await generateKeyPair()];
    const hers = await post(alice, g, "hers");
    const his = await post(bob, g, "his");
    const x = await tombstone(alice, g, [hers, his]); // she may not delete his
    // a: both held first, so the tombstone is refused. b: hers, the tombstone (deletes hers), then his (drops it).
    await a.node.publish([g.manifest, hers, his]);
    assertEquals(codes(await a.node.publish(x)), ["FORBIDDEN"]);
    await b.node.publish([g.manifest, hers]);
    await b.node.publish(x);
    await b.node.publish(his);
    assertEquals(await b.node.get(toHex(hers.id)), null, "deleted while the tombstone stood");
    const { client, server } = syncLink(b.node, a.node);
    await client.sync(gid);
    await until(async () => (await b.node.merkle(gid))!.root === (await a.node.merkle(gid))!.root);
    assertEquals(await allIds(b.node, gid), [g.manifest, hers, his].map((e) => toHex(e.id)).sort());
    client.close();
    server.close();
  } finally {
    await a.done();
    await b.done();
  }
});

Deno.test("A live subscription gets the tombstone like any event; a stream's backfill leaves the target out", async () => {
  const t = await tempNode();
  try {
    const g = await testGroup();
    const gid = toHex(g.gid);
    const evs = await makeEvents(g, 3);
    await t.node.publish([g.manifest, ...evs]);
    const got: string[] = [];
    const stop = await t.node.subscribe({ gid }, (events) => got.push(...events.map((b) => toHex(eventId(b)))));
    const x = await tombstone(g.owner, g, [evs[1]!]);
    await t.node.publish(x);
    await until(() => got.includes(toHex(x.id)));
    await stop();
    const back = await t.node.arrivals({ gid, after: 0, limit: 100 });
    assertEquals(back!.events.map((b) => toHex(eventId(b))), [g.manifest, evs[0]!, evs[2]!, x].map((e) => toHex(e.id)));
  } finally {
    await t.done();
  }
});

Deno.test("A restart keeps deletions: RocksDB holds the deleted set; the deleted event is still refused", async () => {
  const dir = await Deno.makeTempDir({ prefix: "xf-del-" });
  try {
    const g = await testGroup();
    const gid = toHex(g.gid);
    const evs = await makeEvents(g, 10);
    let t = await tempNode({ dataDir: dir });
    await t.node.publish([g.manifest, ...evs]);
    const pendingId = crypto.getRandomValues(new Uint8Array(32));
    await t.node.publish(await tombstone(g.owner, g, [evs[4]!, pendingId]));
    const root = (await t.node.merkle(gid))!.root;
    await t.node.close();
    t = await tempNode({ dataDir: dir });
    try {
      assertEquals((await t.node.merkle(gid))!.root, root);
      assertEquals(await t.node.get(toHex(evs[4]!.id)), null);
      assertEquals(await t.node.deletedIn(toHex(evs[4]!.id)), gid);
      assertEquals(codes(await t.node.publish(evs[4]!)), ["DELETED"]);
      assertEquals((await t.node.fsckDeleted()).entries, 2);
      assert((await t.node.fsck(gid))!.ok);
    } finally {
      await t.node.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});

Deno.test("Crash safety: the tombstone, its target's removal and the deleted-set entry are one RocksDB batch", async () => {
  const dir = await Deno.makeTempDir({ prefix: "xf-del-" });
  // Record every batch the index writes (in-process stages: the same RocksKv class).
  const probe = await openRocks(`${dir}/probe`);
  const proto = Object.getPrototypeOf(probe) as { batch(ops: KvOp[], o?: unknown): Promise<void> };
  await probe.close();
  const original = proto.batch;
  const batches: KvOp[][] = [];
  proto.batch = function (this: unknown, ops: KvOp[], o?: unknown) {
    batches.push(ops);
    return original.call(this, ops, o);
  };
  const t = await tempNode({ dataDir: `${dir}/node` });
  try {
    const g = await testGroup();
    const evs = await makeEvents(g, 3);
    await t.node.publish([g.manifest, ...evs]);
    const x = await tombstone(g.owner, g, [evs[1]!]);
    await t.node.publish(x);
    await t.node.merkle(toHex(g.gid)); // the index has written it
    const hex = (k: Uint8Array) => toHex(k);
    const withX = batches.filter((ops) => ops.some((o) => o.type === "put" && hex(o.key) === hex(eventKey(x.id))));
    assertEquals(withX.length, 1);
    const ops = withX[0]!;
    const has = (type: string, pred: (k: Uint8Array) => boolean) => ops.some((o) => o.type === type && pred(o.key));
    const target = toHex(evs[1]!.id);
    assert(has("del", (k) => hex(k) === hex(eventKey(evs[1]!.id))), "the target's bytes");
    assert(has("del", (k) => k[0] === KS.time && hex(k).endsWith(target)), "its time-index entry");
    assert(has("del", (k) => k[0] === KS.arrival), "its arrival-index entry");
    assert(has("put", (k) => hex(k) === hex(deletedKey(evs[1]!.id, x.id))), "its deleted-set entry");
    assert(has("put", (k) => k[0] === KS.merkle || k[0] === KS.journal), "the Merkle change (pages or journal)");
    // Nothing about the deletion was written in any other batch.
    const elsewhere = batches.filter((b) => b !== ops).flat().filter((o) =>
      o.type === "del" || o.key[0] === KS.deleted
    );
    assertEquals(elsewhere, []);
  } finally {
    proto.batch = original;
    await t.node.close();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});

Deno.test("fsck finds a deleted event stored again and a deleted-set entry whose tombstone is gone", async () => {
  const dir = await Deno.makeTempDir({ prefix: "xf-del-" });
  try {
    const g = await testGroup();
    const gid = toHex(g.gid);
    const evs = await makeEvents(g, 4);
    let t = await tempNode({ dataDir: dir });
    await t.node.publish([g.manifest, ...evs]);
    const x = await tombstone(g.owner, g, [evs[0]!]);
    await t.node.publish(x);
    await t.node.close();
    // Damage: the deleted event's bytes put back, and an entry naming a tombstone nobody holds.
    const kv = await openRocks(`${dir}/db`);
    await kv.batch([
      { type: "put", key: eventKey(evs[0]!.id), value: evs[0]!.bytes },
      { type: "put", key: deletedKey(evs[1]!.id, new Uint8Array(32).fill(5)), value: Uint8Array.of(1) },
    ]);
    await kv.close();
    t = await tempNode({ dataDir: dir });
    try {
      const f = await t.node.fsck(gid);
      assert(!f!.ok);
      assertEquals(f!.tombstones.problems, [`tombstone ${toHex(x.id)} names ${toHex(evs[0]!.id)}, still stored`]);
      const d = await t.node.fsckDeleted();
      assert(!d.ok);
      assertEquals(
        [...d.problems].sort(),
        [
          `deleted ${toHex(evs[0]!.id)} is still stored (tombstone ${toHex(x.id)})`,
          `deleted ${toHex(evs[1]!.id)} is still stored (tombstone ${"05".repeat(32)})`,
          `deleted ${toHex(evs[1]!.id)}: its tombstone ${"05".repeat(32)} is not held`,
        ].sort(),
      );
    } finally {
      await t.node.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});

Deno.test("XfClient.delete() publishes a tombstone; the node then answers DELETED for the event", async () => {
  const t = await tempNode();
  const s = await serve(t.node, { host: "127.0.0.1", port: 0 });
  try {
    const key = await generateKeyPair();
    const xf = new XfClient(s.url, { key });
    const { gid } = await xf.createGroup({ name: "c", policy: "open" });
    const sent = await xf.send(gid, { kind: 16, payload: enc.encode("oops") });
    const other = new XfClient(s.url, { key: await generateKeyPair() });
    const theirs = await other.send(gid, { kind: 16, payload: enc.encode("theirs") });
    const del = await xf.delete(gid, [sent.event.id]);
    assertEquals(del.result.status, "stored");
    assertEquals(del.event.kind, KIND_TOMBSTONE);
    const e = await xf.event(sent.event.id).then(() => null, (e) => e);
    assertEquals([e?.code, e?.status], ["DELETED", 410]);
    // Not the owner, not the author: FORBIDDEN, thrown.
    const kept = await xf.send(gid, { kind: 16, payload: enc.encode("kept") });
    const f = await other.delete(gid, [kept.event.id]).then(() => null, (e) => e);
    assertEquals([f?.code, f?.status], ["FORBIDDEN", 403]);
    const mine = await xf.delete(gid, [theirs.event.id]); // the owner may
    assertEquals(mine.result.status, "stored");
  } finally {
    await s.shutdown();
    await t.done();
  }
});

Deno.test("After compact_after_forgotten deleted events the index compacts in the background; writes go on meanwhile", async () => {
  const t = await tempNode({ limits: { compact_after_forgotten: 40 } });
  try {
    const g = await testGroup("compact");
    await t.node.publish(g.manifest);
    const evs = await makeEvents(g, 200);
    await t.node.publish(evs);
    const stats = () =>
      t.node.pipeline.index<{ compactions: number; compactionsDone: number; deleted: number }>({
        type: "index.stats",
      });
    // 39 deleted: below the threshold, no compaction.
    assertEquals((await t.node.publish(await tombstone(g.owner, g, evs.slice(0, 39))))[0]!.status, "stored");
    await until(async () => (await stats()).deleted === 39);
    assertEquals((await stats()).compactions, 0);
    // One more reaches it: a compaction starts, and the node takes writes while it runs.
    assertEquals((await t.node.publish(await tombstone(g.owner, g, evs.slice(39, 41))))[0]!.status, "stored");
    await until(async () => (await stats()).compactions === 1);
    const more = await makeEvents(g, 50, Date.now() - 5000);
    assert((await t.node.publish(more)).every((r) => r.status === "stored"));
    await until(async () => (await stats()).compactionsDone === 1);
    for (const e of evs.slice(0, 41)) assertEquals(await t.node.get(toHex(e.id)), null);
    for (const e of [...evs.slice(41), ...more]) assert(await t.node.get(toHex(e.id)));
  } finally {
    await t.done();
  }
});
