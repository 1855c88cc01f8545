import { MEMBERSHIP_EVENTS_MAX } from "../core/limits.ts";
import { Prng } from "../core/bytes.ts";
import { compareBytes, toHex } from "../core/bytes.ts";
import { code } from "./_helpers.ts";
import { assert, assertEquals, assertFalse, assertThrows } from "@std/assert";
import { sha256 } from "@noble/hashes/sha2";
import { encodeCbor } from "../storage/cbor.ts";
import { generateKeyPair } from "../storage/ed25519.ts";
import { XfError } from "../core/errors.ts";
import { KIND_MEMBERSHIP, POLICY_CLOSED, POLICY_OPEN, signEvent } from "../storage/event.ts";
import {
  ACTION_ADD,
  ACTION_MAKE_ADMIN,
  ACTION_REMOVE,
  ACTION_REVOKE_ADMIN,
  decodeMembership,
  encodeMembership,
  GroupState,
  type MembershipAction,
  type MembershipEvent,
} from "../storage/membership.ts";

const key = (n: number) => new Uint8Array(32).fill(n);
const OWNER = key(1);
const A = key(2);
const B = key(3);
const C = key(4);

let counter = 0;
/** A membership event as plain data; the id is unique per call unless `idByte` fixes it. */
function ev(author: Uint8Array, ts: number, action: MembershipAction, member: Uint8Array, idByte?: number) {
  const id = idByte === undefined ? sha256(encodeCbor([ts, author, action, member, counter++])) : key(idByte);
  return { ts, id, author, payload: encodeMembership({ action, member }) };
}

function shuffle<T>(xs: T[], rand: () => number): T[] {
  const out = xs.slice();
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

/** A naive reference: sort everything, fold from scratch up to `atTs`. */
function reference(owner: Uint8Array, events: MembershipEvent[], atTs = Infinity) {
  const o = toHex(owner);
  const state = new Map<string, { member: boolean; admin: boolean }>();
  const sorted = events.slice().sort((a, b) => a.ts - b.ts || compareBytes(a.id, b.id));
  for (const e of sorted) {
    if (e.ts > atTs) break;
    const signer = toHex(e.author);
    if (signer !== o && !state.get(signer)?.admin) continue;
    const { action, member } = decodeMembership(e.payload);
    const m = toHex(member);
    if (m === o) continue;
    const cur = state.get(m) ?? { member: false, admin: false };
    if (action === ACTION_ADD) state.set(m, { member: true, admin: cur.admin });
    if (action === ACTION_REMOVE) state.set(m, { member: false, admin: false });
    if (action === ACTION_MAKE_ADMIN) state.set(m, { member: true, admin: true });
    if (action === ACTION_REVOKE_ADMIN) state.set(m, { member: cur.member, admin: false });
  }
  const members = [o, ...[...state].filter(([, s]) => s.member).map(([k]) => k)].sort();
  const admins = [o, ...[...state].filter(([, s]) => s.admin).map(([k]) => k)].sort();
  return { members, admins };
}

Deno.test("encodeMembership() and decodeMembership() round-trip every action", () => {
  for (const action of [ACTION_ADD, ACTION_REMOVE, ACTION_MAKE_ADMIN, ACTION_REVOKE_ADMIN] as const) {
    const payload = encodeMembership({ action, member: A });
    assertEquals(payload, encodeCbor([action, A]));
    assertEquals(decodeMembership(payload), { action, member: A });
  }
});

Deno.test("decodeMembership() rejects malformed payloads with BAD_EVENT", () => {
  const m = Array.from(A);
  const bad: Array<[string, number[]]> = [
    ["empty", []],
    ["not an array", [0x01]],
    ["array of 1", [0x81, 0x00]],
    ["array of 3", [0x83, 0x00, 0x58, 0x20, ...m, 0x00]],
    ["action 4", [0x82, 0x04, 0x58, 0x20, ...m]],
    ["action as text", [0x82, 0x61, 0x30, 0x58, 0x20, ...m]],
    ["negative action", [0x82, 0x20, 0x58, 0x20, ...m]],
    ["member of 31 bytes", [0x82, 0x00, 0x58, 0x1f, ...m.slice(1)]],
    ["member of 33 bytes", [0x82, 0x00, 0x58, 0x21, ...m, 0x00]],
    ["member as text", [0x82, 0x00, 0x78, 0x20, ...m]],
    ["trailing byte", [0x82, 0x00, 0x58, 0x20, ...m, 0x00]],
    ["truncated", [0x82, 0x00, 0x58, 0x20, ...m.slice(1)]],
    ["long action head", [0x82, 0x18, 0x00, 0x58, 0x20, ...m]],
    ["long member head", [0x82, 0x00, 0x59, 0x00, 0x20, ...m]],
    ["indefinite array", [0x9f, 0x00, 0x58, 0x20, ...m, 0xff]],
    ["tagged", [0xc0, 0x82, 0x00, 0x58, 0x20, ...m]],
  ];
  const state = new GroupState(OWNER, POLICY_CLOSED);
  for (const [what, bytes] of bad) {
    const payload = new Uint8Array(bytes);
    assertEquals(code(() => decodeMembership(payload)), "BAD_EVENT", what);
    const e = { ts: 1, id: key(9), author: OWNER, payload };
    const verdict = state.judgeMembership(e);
    assertEquals(verdict.ok ? "ok" : verdict.code, "BAD_EVENT", what);
    assertEquals(code(() => state.apply([e])), "BAD_EVENT", what);
  }
  assertEquals(state.size, 0);
  assertEquals(code(() => encodeMembership({ action: 4 as MembershipAction, member: A })), "BAD_EVENT");
  assertEquals(code(() => encodeMembership({ action: ACTION_ADD, member: new Uint8Array(31) })), "BAD_EVENT");
  assertThrows(() => decodeMembership(new Uint8Array([0x82, 0x04, 0x40])), XfError, 'action "4"');
});

Deno.test("GroupState.apply() rejects a malformed event whole, before changing anything", () => {
  const state = new GroupState(OWNER, POLICY_CLOSED);
  const good = ev(OWNER, 10, ACTION_ADD, A);
  assertEquals(code(() => state.apply([good, { ...good, id: new Uint8Array(31) }])), "BAD_EVENT");
  assertEquals(
    code(() => state.apply([good, { ...ev(OWNER, 11, ACTION_ADD, B), author: key(0).subarray(1) }])),
    "BAD_EVENT",
  );
  assertEquals(code(() => state.apply([good, { ...ev(OWNER, 11, ACTION_ADD, B), ts: -1 }])), "BAD_EVENT");
  assertEquals(code(() => state.apply([good, { ...ev(OWNER, 11, ACTION_ADD, B), ts: 1.5 }])), "BAD_EVENT");
  assertEquals(state.size, 0);
  assertFalse(state.isMember(A));
});

Deno.test("GroupState applies add, remove, make admin and revoke admin", () => {
  const state = new GroupState(OWNER, POLICY_CLOSED);
  assertEquals(state.members(), [toHex(OWNER)]);
  state.apply([ev(OWNER, 10, ACTION_ADD, A)]);
  assert(state.isMember(A) && !state.isAdmin(A));
  state.apply([ev(OWNER, 20, ACTION_MAKE_ADMIN, A)]);
  assert(state.isMember(A) && state.isAdmin(A));
  state.apply([ev(OWNER, 30, ACTION_REVOKE_ADMIN, A)]);
  assert(state.isMember(A) && !state.isAdmin(A), "revoking admin keeps the member");
  state.apply([ev(OWNER, 40, ACTION_REMOVE, A)]);
  assertFalse(state.isMember(A));
  // History stays queryable.
  assertEquals([0, 9, 10, 19, 20, 29, 30, 39, 40].map((t) => state.isMember(A, t)), [
    false,
    false,
    true,
    true,
    true,
    true,
    true,
    true,
    false,
  ]);
  assertEquals([10, 20, 29, 30].map((t) => state.isAdmin(A, t)), [false, true, true, false]);
  // Ineffective but valid events: add a member twice, revoke a non-admin, remove a non-member.
  state.apply([ev(OWNER, 50, ACTION_ADD, B), ev(OWNER, 51, ACTION_ADD, B), ev(OWNER, 52, ACTION_REVOKE_ADMIN, B)]);
  state.apply([ev(OWNER, 53, ACTION_REMOVE, C)]);
  assertEquals(state.members(), [toHex(OWNER), toHex(B)].sort());
  assertEquals(state.admins(), [toHex(OWNER)]);
});

Deno.test("GroupState: make admin adds a non-member, and remove also revokes admin", () => {
  const state = new GroupState(OWNER, POLICY_CLOSED);
  state.apply([ev(OWNER, 10, ACTION_MAKE_ADMIN, A)]);
  assert(state.isMember(A) && state.isAdmin(A));
  state.apply([ev(OWNER, 20, ACTION_REMOVE, A)]);
  assertFalse(state.isMember(A));
  assertFalse(state.isAdmin(A));
  // A re-added admin comes back as a plain member.
  state.apply([ev(OWNER, 30, ACTION_ADD, A)]);
  assert(state.isMember(A) && !state.isAdmin(A));
});

Deno.test("GroupState: the owner cannot be removed or demoted", () => {
  const state = new GroupState(OWNER, POLICY_CLOSED);
  state.apply([ev(OWNER, 5, ACTION_MAKE_ADMIN, A)]);
  for (const signer of [OWNER, A]) {
    for (const action of [ACTION_REMOVE, ACTION_REVOKE_ADMIN] as const) {
      const e = ev(signer, 10, action, OWNER);
      const verdict = state.judgeMembership(e);
      assertEquals(verdict.ok ? "ok" : verdict.code, "FORBIDDEN");
      state.apply([e]); // arriving through sync anyway: no effect
    }
  }
  // Adding the owner or making them admin is accepted and changes nothing.
  assert(state.judgeMembership(ev(A, 20, ACTION_ADD, OWNER)).ok);
  state.apply([ev(A, 20, ACTION_ADD, OWNER), ev(OWNER, 21, ACTION_MAKE_ADMIN, OWNER)]);
  for (const t of [0, 10, 100, undefined]) {
    assert(state.isMember(OWNER, t) && state.isAdmin(OWNER, t));
  }
  assert(state.canWrite(OWNER, 0) && state.canRead(OWNER));
  assertEquals(state.members(), [toHex(OWNER), toHex(A)].sort());
});

Deno.test("GroupState: a non-admin's membership event has no effect and judge says FORBIDDEN", () => {
  const state = new GroupState(OWNER, POLICY_CLOSED);
  state.apply([ev(OWNER, 10, ACTION_ADD, A)]);
  for (const signer of [A, B]) { // a plain member, a stranger
    const e = ev(signer, 20, ACTION_ADD, C);
    const verdict = state.judgeMembership(e);
    assertFalse(verdict.ok);
    if (!verdict.ok) {
      assertEquals(verdict.code, "FORBIDDEN");
      assert(verdict.message.includes(`"${toHex(signer)}"`), verdict.message);
    }
    assertEquals(state.apply([e]), 1, "stored, but ignored by the state");
    assertFalse(state.isMember(C));
  }
  // A member cannot promote or remove anyone either, themselves included.
  state.apply([ev(A, 30, ACTION_MAKE_ADMIN, A), ev(B, 31, ACTION_REMOVE, A)]);
  assert(state.isMember(A) && !state.isAdmin(A));
  assertEquals(state.size, 5);
});

Deno.test("GroupState: an admin made admin later (by ts) cannot act before that ts", () => {
  const state = new GroupState(OWNER, POLICY_CLOSED);
  const early = ev(A, 5, ACTION_ADD, B);
  const promote = ev(OWNER, 10, ACTION_MAKE_ADMIN, A, 0x50);
  const late = ev(A, 15, ACTION_ADD, C);
  state.apply([early, late]); // A's events arrive before A's promotion
  assertFalse(state.isMember(B));
  assertFalse(state.isMember(C));
  state.apply([promote]);
  assertFalse(state.isMember(B), "A was not admin at ts 5");
  assert(state.isMember(C), "A was admin at ts 15");
  const no = state.judgeMembership(early);
  assertEquals(no.ok ? "ok" : no.code, "FORBIDDEN");
  assert(state.judgeMembership(late).ok);
  // Same ts as the promotion: the (ts, id) order decides.
  const lo = ev(A, 10, ACTION_ADD, B, 0x4f);
  const hi = ev(A, 10, ACTION_ADD, B, 0x51);
  assertFalse(state.judgeMembership(lo).ok);
  assert(state.judgeMembership(hi).ok);
  // Demotion ends the right: events after it have no effect.
  state.apply([ev(OWNER, 20, ACTION_REVOKE_ADMIN, A), ev(A, 25, ACTION_REMOVE, C)]);
  assert(state.isMember(C));
});

Deno.test("GroupState gives the same state for 50 shuffles of the same events", () => {
  const events = [
    ev(A, 5, ACTION_ADD, B), // A not admin yet: no effect
    ev(OWNER, 10, ACTION_MAKE_ADMIN, A),
    ev(A, 12, ACTION_ADD, B),
    ev(A, 13, ACTION_MAKE_ADMIN, C),
    ev(C, 14, ACTION_ADD, key(5)),
    ev(OWNER, 20, ACTION_REMOVE, A), // A loses member and admin
    ev(A, 21, ACTION_REMOVE, B), // no effect
    ev(C, 22, ACTION_REMOVE, B),
    ev(C, 23, ACTION_ADD, A), // A is back as a member only
    ev(A, 24, ACTION_ADD, key(6)), // no effect
    ev(OWNER, 30, ACTION_REVOKE_ADMIN, C),
    ev(C, 31, ACTION_ADD, key(7)), // no effect
    ev(OWNER, 40, ACTION_ADD, B),
    ev(OWNER, 40, ACTION_REMOVE, key(5)),
    ev(OWNER, 40, ACTION_MAKE_ADMIN, key(5)),
  ];
  const inOrder = new GroupState(OWNER, POLICY_CLOSED);
  inOrder.apply(events.slice().sort((a, b) => a.ts - b.ts || compareBytes(a.id, b.id)));
  const want = JSON.stringify(inOrder.toJSON());
  const ref = reference(OWNER, events);
  assertEquals(inOrder.members(), ref.members);
  assertEquals(inOrder.admins(), ref.admins);
  const keys = [OWNER, A, B, C, key(5), key(6), key(7)];
  const grid = (s: GroupState) =>
    keys.map((k) => Array.from({ length: 45 }, (_, t) => [s.isMember(k, t), s.isAdmin(k, t), s.canWrite(k, t)]));
  const wantGrid = grid(inOrder);
  const rand = new Prng(42).float;
  for (let round = 0; round < 50; round++) {
    const state = new GroupState(OWNER, POLICY_CLOSED);
    const order = shuffle(events, rand);
    // Deliver in random chunks, with some duplicates.
    for (let i = 0; i < order.length;) {
      const n = 1 + Math.floor(rand() * 4);
      state.apply(order.slice(i, i + n).concat(rand() < 0.3 ? [order[0]!] : []));
      i += n;
    }
    assertEquals(JSON.stringify(state.toJSON()), want, `round ${round}`);
    assertEquals(state.members(), ref.members, `round ${round}`);
    assertEquals(state.admins(), ref.admins, `round ${round}`);
    assertEquals(grid(state), wantGrid, `round ${round}`);
  }
});

Deno.test("GroupState matches a naive refold at every ts for random event sets", () => {
  const rand = new Prng(7).float;
  const pool = [OWNER, A, B, C, key(5)];
  for (let round = 0; round < 20; round++) {
    const events: MembershipEvent[] = [];
    for (let i = 0; i < 60; i++) {
      const signer = pool[Math.floor(rand() * pool.length)]!;
      const member = pool[Math.floor(rand() * pool.length)]!;
      const action = Math.floor(rand() * 4) as MembershipAction;
      events.push(ev(signer, Math.floor(rand() * 30), action, member));
    }
    const state = new GroupState(OWNER, POLICY_CLOSED);
    const order = shuffle(events, rand);
    for (let i = 0; i < order.length; i += 7) state.apply(order.slice(i, i + 7));
    for (let t = 0; t <= 30; t++) {
      const ref = reference(OWNER, events, t);
      for (const k of pool) {
        assertEquals(state.isMember(k, t), ref.members.includes(toHex(k)), `round ${round} ts ${t}`);
        assertEquals(state.isAdmin(k, t), ref.admins.includes(toHex(k)), `round ${round} ts ${t}`);
      }
    }
    const ref = reference(OWNER, events);
    assertEquals(state.members(), ref.members);
    assertEquals(state.admins(), ref.admins);
  }
});

Deno.test("GroupState.canWrite() is false after removal, true before, and true again after re-add", () => {
  const state = new GroupState(OWNER, POLICY_CLOSED);
  state.apply([ev(OWNER, 100, ACTION_ADD, A), ev(OWNER, 200, ACTION_REMOVE, A), ev(OWNER, 300, ACTION_ADD, A)]);
  assertFalse(state.canWrite(A, 99));
  assert(state.canWrite(A, 100), "a key added at ts 100 may write at ts 100");
  assert(state.canWrite(A, 199));
  assertFalse(state.canWrite(A, 200), "a key removed at ts 200 may not write at ts 200");
  assertFalse(state.canWrite(A, 299));
  assert(state.canWrite(A, 300));
  assert(state.canWrite(A, 10_000));
  assert(state.canRead(A));
});

Deno.test("GroupState: open groups let anyone read and write, closed groups only members", () => {
  const events = [ev(OWNER, 10, ACTION_ADD, A), ev(OWNER, 20, ACTION_REMOVE, A)];
  const open = new GroupState(OWNER, POLICY_OPEN);
  const closed = new GroupState(OWNER, POLICY_CLOSED);
  open.apply(events);
  closed.apply(events);
  for (const k of [A, B]) {
    assert(open.canRead(k));
    assert(open.canWrite(k, 0) && open.canWrite(k, 15) && open.canWrite(k, 25));
    assertFalse(closed.canRead(k));
    assertFalse(closed.canWrite(k, 0));
    assertFalse(closed.canWrite(k, 25));
  }
  assert(closed.canWrite(A, 15));
  assertFalse(closed.canWrite(B, 15));
  assert(closed.canRead(OWNER) && closed.canWrite(OWNER, 0));
  assertEquals(code(() => new GroupState(OWNER, 2)), "BAD_MANIFEST");
  assertEquals(code(() => new GroupState(new Uint8Array(31), POLICY_OPEN)), "BAD_MANIFEST");
});

Deno.test("GroupState.toJSON() round-trips through fromJSON()", () => {
  const state = new GroupState(OWNER, POLICY_CLOSED);
  state.apply([
    ev(OWNER, 10, ACTION_MAKE_ADMIN, A),
    ev(A, 20, ACTION_ADD, B),
    ev(B, 25, ACTION_ADD, C), // no effect, kept
    ev(OWNER, 30, ACTION_REMOVE, B),
  ]);
  const json = JSON.parse(JSON.stringify(state.toJSON()));
  const back = GroupState.fromJSON(json);
  assertEquals(back.toJSON(), state.toJSON());
  assertEquals(back.size, 4);
  assertEquals(back.policy, POLICY_CLOSED);
  assertEquals(back.members(), state.members());
  assertEquals(back.admins(), state.admins());
  for (let t = 0; t < 40; t += 5) assertEquals(back.isMember(B, t), state.isMember(B, t));
  assertEquals(code(() => GroupState.fromJSON({ ...json, v: 2 })), "STORAGE_CORRUPTION");
  assertEquals(code(() => GroupState.fromJSON({ ...json, owner: "zz" })), "STORAGE_CORRUPTION");
  assertEquals(
    code(() => GroupState.fromJSON({ ...json, events: [{ ...json.events[0], action: 9 }] })),
    "STORAGE_CORRUPTION",
  );
  assertEquals(
    code(() => GroupState.fromJSON({ ...json, events: [{ ...json.events[0], id: "00" }] })),
    "STORAGE_CORRUPTION",
  );
  assertEquals(code(() => GroupState.fromJSON(json, { eventsMax: 3 })), "STORAGE_CORRUPTION");
});

Deno.test("GroupState.apply() bounds the event log", () => {
  assertEquals(MEMBERSHIP_EVENTS_MAX, 100_000);
  assertEquals(new GroupState(OWNER, POLICY_OPEN).eventsMax, MEMBERSHIP_EVENTS_MAX);
  const state = new GroupState(OWNER, POLICY_CLOSED, { eventsMax: 10 });
  const events = Array.from({ length: 10 }, (_, i) => ev(OWNER, i, ACTION_ADD, key(10 + i)));
  assertEquals(state.apply(events), 10);
  assertEquals(state.apply(events), 0, "duplicates are skipped and do not count");
  const before = JSON.stringify(state.toJSON());
  assertThrows(() => state.apply([ev(OWNER, 0, ACTION_REMOVE, key(10))]), XfError, "the limit is 10");
  assertEquals(code(() => state.apply([ev(OWNER, 99, ACTION_ADD, A)])), "OVERLOADED");
  assertEquals(JSON.stringify(state.toJSON()), before, "a refused batch changes nothing");
  assert(state.isMember(key(10)));
  assertEquals(state.size, 10);
});

Deno.test("GroupState accepts events signed with signEvent()", async () => {
  const owner = await generateKeyPair();
  const admin = await generateKeyPair();
  const member = await generateKeyPair();
  const group = new Uint8Array(32);
  const sign = (kp: typeof owner, ts: number, action: MembershipAction, who: Uint8Array) =>
    signEvent(kp, { group, ts, kind: KIND_MEMBERSHIP, tags: [], payload: encodeMembership({ action, member: who }) });
  const state = new GroupState(owner.publicKey, POLICY_CLOSED);
  const promote = await sign(owner, 1000, ACTION_MAKE_ADMIN, admin.publicKey);
  const add = await sign(admin, 2000, ACTION_ADD, member.publicKey);
  assert(state.judgeMembership(promote).ok);
  assertFalse(state.judgeMembership(add).ok, "before the promotion is held");
  state.apply([promote]);
  assert(state.judgeMembership(add).ok);
  state.apply([add]);
  assertEquals(state.members(), [owner, admin, member].map((k) => toHex(k.publicKey)).sort());
  assert(state.canWrite(member.publicKey, 2000));
  assertFalse(state.canWrite(member.publicKey, 1999));
});
