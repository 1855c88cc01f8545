// The deterministic many-node simulation (issue 13): replica stores on a simulated disk, the real sync sessions and
// handshake over a simulated network, virtual time, one seed per run (tests/_sim_net.ts says what is simulated and
// what is real, and which invariants are checked after every step). A seed replays exactly (the same trace hash).
//
// `XF_SIM_SEEDS=200` runs seeds 1..200 (`deno task test:sim` does; the default run has 3), `XF_SIM_DELETE_SEEDS=100`
// as many of the deletion-heavy mix (a quarter more of the steps delete; default 3), `XF_SIM_SEED=7` runs one
// and prints its whole trace if it fails (`XF_SIM_TRACE=1`: always), `XF_SIM_STEPS=400` steps per seed (default
// 200), `XF_SIM_BASE=1000` shifts the first seed. The real-node smoke of the same churn is tests/sim_real_test.ts.
import { assert, assertEquals, assertNotEquals } from "@std/assert";
import { type SimResult, simulate } from "./_sim_net.ts";
import { SimDisk } from "./_sim_kv.ts";
import { sfc32 } from "./_sim_net.ts";
import { MemoryKv } from "../storage/kv.ts";
import { ReplicaStore } from "../storage/replica_store.ts";
import { generateKeyPair, type KeyPair } from "../storage/ed25519.ts";
import { createGroup, KIND_MEMBERSHIP, POLICY_CLOSED, POLICY_OPEN, signEvent } from "../storage/event.ts";
import { ACTION_ADD, ACTION_REMOVE, encodeMembership } from "../storage/membership.ts";
import { ByteBudget, type SyncHost, SyncSession } from "../net/sync.ts";
import { channelPair } from "../net/channel.ts";
import { LIMITS } from "../core/limits.ts";
import { toHex } from "../core/bytes.ts";
import { XfError } from "../core/errors.ts";
import type { Clock, TimerHandle } from "../core/clock.ts";

const ONE = Deno.env.get("XF_SIM_SEED");
const STEPS = Number(Deno.env.get("XF_SIM_STEPS") ?? 200);
const BASE = Number(Deno.env.get("XF_SIM_BASE") ?? 1);
const COUNT = Number(Deno.env.get("XF_SIM_SEEDS") ?? 3);
for (const [k, v] of [["XF_SIM_STEPS", STEPS], ["XF_SIM_BASE", BASE], ["XF_SIM_SEEDS", COUNT]] as const) {
  if (!Number.isSafeInteger(v) || v < 1) throw new Error(`${k} must be a positive integer, not "${v}"`);
}
const DELETE_COUNT = Number(Deno.env.get("XF_SIM_DELETE_SEEDS") ?? 3);
if (!Number.isSafeInteger(DELETE_COUNT) || DELETE_COUNT < 0) {
  throw new Error(`XF_SIM_DELETE_SEEDS must be a non-negative integer, not "${DELETE_COUNT}"`);
}
/** Steps taken from waiting and given to deleting in the deletion-heavy runs (see `SimOptions.deletesMore`). */
const DELETES_MORE = 0.25;
const DELETE_SEEDS = ONE !== undefined ? [Number(ONE)] : Array.from({ length: DELETE_COUNT }, (_, i) => BASE + i);
const SEEDS = ONE !== undefined ? [Number(ONE)] : Array.from({ length: COUNT }, (_, i) => BASE + i);
const TRACE = Deno.env.get("XF_SIM_TRACE") === "1";

function report(r: SimResult): string {
  return `seed ${r.seed} (replay: XF_SIM_SEED=${r.seed} deno test -A tests/sim_test.ts)\n  ${
    r.violations.join("\n  ")
  }\n` +
    `  trace (${ONE !== undefined ? "whole" : "last lines"}):\n    ${r.trace.join("\n    ")}`;
}

Deno.test("sim: one seed replays exactly (the same trace hash twice), another differs", async () => {
  const a = await simulate({ seed: 4242, steps: 150 });
  const b = await simulate({ seed: 4242, steps: 150 });
  assertEquals(a.hash, b.hash);
  assertEquals(a.stats, b.stats);
  assertEquals(a.trace, b.trace);
  assertNotEquals((await simulate({ seed: 4243, steps: 150 })).hash, a.hash);
  // The run did something: events stored and received, faults injected, the heal converged.
  const s = a.stats;
  assert((s["publish.stored"] ?? 0) > 0 && (s["received.stored"] ?? 0) > 0, JSON.stringify(s));
  assert((s.crashes ?? 0) + (s.stops ?? 0) > 0 && (s.partitions ?? 0) > 0, JSON.stringify(s));
  assert((s.healRounds ?? 0) > 0 && (s.frames ?? 0) > 0, JSON.stringify(s));
  assertEquals(a.violations, []);
});

Deno.test(`sim: invariants hold for ${SEEDS.length} seed(s), ${STEPS} steps each`, async () => {
  const totals: Record<string, number> = {};
  const failed: string[] = [];
  const known: string[] = [];
  const t0 = performance.now();
  for (const seed of SEEDS) {
    const r = await simulate({ seed, steps: STEPS, traceAll: ONE !== undefined || TRACE });
    for (const [k, v] of Object.entries(r.stats)) {
      totals[k] = k.startsWith("max.") ? Math.max(totals[k] ?? 0, v) : (totals[k] ?? 0) + v;
    }
    if (TRACE) console.log(r.trace.join("\n"));
    if (r.violations.length) failed.push(report(r));
    known.push(...r.known);
  }
  const ms = Math.round(performance.now() - t0);
  console.log(`sim seeds ${SEEDS[0]}..${SEEDS.at(-1)} in ${ms} ms: ${JSON.stringify(totals)}`);
  if (known.length) {
    console.log(
      `known issue KNOWN_LATE_WRITE (see the ignored test below), ${known.length} time(s):\n${known.join("\n")}`,
    );
  }
  if (failed.length) console.error(failed.join("\n\n"));
  assertEquals(failed.length, 0, `${failed.length} seed(s) broke an invariant`);
});

Deno.test(`sim: invariants hold for ${DELETE_SEEDS.length} seed(s) of the deletion-heavy mix, ${STEPS} steps each`, async () => {
  const failed: string[] = [];
  const totals: Record<string, number> = {};
  const t0 = performance.now();
  for (const seed of DELETE_SEEDS) {
    const r = await simulate({ seed, steps: STEPS, deletesMore: DELETES_MORE });
    for (const k of Object.keys(r.stats)) {
      if (/^(delete|resend|received\.DELETED|publish\.FORBIDDEN)/.test(k)) totals[k] = (totals[k] ?? 0) + r.stats[k]!;
    }
    if (r.violations.length) failed.push(report(r));
  }
  const ms = Math.round(performance.now() - t0);
  console.log(
    `sim deletion-heavy seeds ${DELETE_SEEDS[0]}..${DELETE_SEEDS.at(-1)} in ${ms} ms: ${JSON.stringify(totals)}`,
  );
  // Deletion happened: own and others' tombstones, and deleted events sent again were refused.
  assert((totals["delete.own"] ?? 0) > 0 && (totals["resend.DELETED"] ?? 0) > 0, JSON.stringify(totals));
  if (failed.length) console.error(failed.join("\n\n"));
  assertEquals(failed.length, 0, `${failed.length} seed(s) broke an invariant`);
});

// The checks can fail: each sabotage breaks one promise, and some early seed catches it.
Deno.test("sim: the invariants catch lost syncs, skipped writes, a closed group let through, leaked memory and deleted events kept", async () => {
  const cases = [
    [{ noSync: true }, "lost acknowledged"],
    [{ skipWrites: true }, "lost acknowledged"],
    [{ leakClosed: true }, "never a member|does not let read it"],
    [{ leakMemory: true }, "sync memory counts"],
    [{ keepDeleted: true }, "deleted by [0-9a-f]+ .* which it holds"],
  ] as const;
  for (const [sabotage, want] of cases) {
    let caught = "";
    for (let seed = 1; seed <= 10 && !caught; seed++) {
      caught = (await simulate({ seed, steps: 120, sabotage })).violations[0] ?? "";
    }
    assert(new RegExp(want).test(caught), `${JSON.stringify(sabotage)}: no seed of 1..10 caught it (${caught})`);
  }
});

// Regressions: seeds that break an invariant with the fix named reverted (checked when they were pinned). A seed is
// tied to the simulation as it is (a change to the workload or to sync's timing moves what it does), so each bug also
// has a small direct test below, which does not move.
for (
  const [seed, what] of [
    [5, "SyncSession queued the array a store's listeners share, and take() emptied the other sessions' queues"],
    [68, "a removal stored while a session subscribed went unseen: the removed member got the group's events"],
    [403, "a removal stored while the admission was read for a peer: the removed member got it"],
    [242, "a retention prune read an event damaged, passed it for good, and kept it below the boundary"],
    [116, "a membership event refused on a read error left its change in the write's state: a key never added read"],
  ] as const
) {
  Deno.test(`sim: regression seed ${seed}: ${what}`, async () => {
    const r = await simulate({ seed });
    assertEquals(r.violations, [], report(r));
  });
}

// The same with a quarter more of the steps deleting (`deletesMore`): tombstones every few steps, deleted events sent again.
for (
  const [seed, what] of [
    [63, "a held tombstone read damaged could not be judged: its entry went and the deleted event was stored again"],
    [112, "a held target (a manifest) read damaged counted as not held: a tombstone naming it was kept"],
  ] as const
) {
  Deno.test(`sim: regression seed ${seed} (deletion-heavy): ${what}`, async () => {
    const r = await simulate({ seed, deletesMore: DELETES_MORE });
    assertEquals(r.violations, [], report(r));
  });
}

/** A sync host over a replica store (what the simulation's nodes are, on real time and WebCrypto). */
function hostOf(
  store: ReplicaStore,
  key: KeyPair,
  gates: { subscribe?: () => Promise<void>; admission?: () => Promise<void> } = {},
): SyncHost {
  return {
    key,
    limits: LIMITS,
    memory: new ByteBudget(LIMITS.sync_memory_bytes_max),
    access: (gid, peer) => store.access(gid, peer),
    reconcile: (gid, session, msg) => store.reconcile(gid, session, msg),
    getMany: (ids, max) => store.getMany(ids, max),
    admission: async (gid) => {
      await gates.admission?.();
      return store.admission(gid);
    },
    submit: (gid, events) => store.apply(events, { gid }),
    subscribe: async (gid, cb) => {
      await gates.subscribe?.();
      const unsub = store.subscribe(gid, cb);
      return () => Promise.resolve(unsub());
    },
    groups: () => store.groups(),
    report: () => {},
  };
}

async function until(what: string, ok: () => boolean | Promise<boolean>, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await ok())) {
    if (Date.now() > end) throw new XfError("TIMEOUT", `Timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

Deno.test("SyncSession: live events a store hands to several sessions as one array reach every peer", async () => {
  const [ka, kb, kc] = await Promise.all([generateKeyPair(), generateKeyPair(), generateKeyPair()]);
  const { gid: g, manifest } = await createGroup(ka, { name: "shared", policy: POLICY_OPEN });
  const gid = toHex(g);
  const a = await ReplicaStore.open(new MemoryKv());
  const peers = await Promise.all([kb, kc].map(() => ReplicaStore.open(new MemoryKv())));
  await a.apply([manifest.bytes], { local: true });
  const sessions: SyncSession[] = [];
  for (const [k, p] of [[kb, peers[0]!], [kc, peers[1]!]] as const) {
    const [x, y] = channelPair();
    const client = new SyncSession(hostOf(p, k), x, "client");
    sessions.push(client, new SyncSession(hostOf(a, ka), y, "server"));
    await client.sync(gid);
  }
  try {
    const events = [];
    for (let i = 0; i < 5; i++) {
      events.push(await signEvent(ka, { group: g, ts: Date.now(), kind: 16, tags: [], payload: new Uint8Array([i]) }));
    }
    await a.apply(events.map((e) => e.bytes), { local: true }); // one write: its listeners get one array
    for (const p of peers) await until("the live events", async () => (await p.root(gid)).count === 6);
    for (const p of peers) assertEquals((await p.root(gid)).root, (await a.root(gid)).root);
  } finally {
    for (const s of sessions) s.close();
  }
});

// Found by the simulation (seeds 49, later 68, and 403): a peer's right was checked when it subscribed, and a removal stored
// before the subscription was in place (or while the group's manifest and membership were read for it) went unseen.
for (const step of ["subscribe", "admission"] as const) {
  Deno.test(`SyncSession: a removal stored while the node ${step === "subscribe" ? "subscribes" : "reads the admission"} keeps the group from the peer`, async () => {
    const [owner, member] = await Promise.all([generateKeyPair(), generateKeyPair()]);
    const { gid: g, manifest } = await createGroup(owner, { name: "club", policy: POLICY_CLOSED });
    const gid = toHex(g);
    const membership = (action: number, ts: number) =>
      signEvent(owner, {
        group: g,
        ts,
        kind: KIND_MEMBERSHIP,
        tags: [],
        payload: encodeMembership({ action: action as 0 | 1, member: member.publicKey }),
      });
    const node = await ReplicaStore.open(new MemoryKv());
    const now = Date.now();
    await node.apply([manifest.bytes, (await membership(ACTION_ADD, now - 1000)).bytes], { local: true });
    // The node's step waits until the removal is stored (as a busy store makes it wait).
    let release!: () => void, reached = false;
    const gate = new Promise<void>((r) => release = r);
    const peer = await ReplicaStore.open(new MemoryKv());
    const [x, y] = channelPair();
    const client = new SyncSession(hostOf(peer, member), x, "client");
    const server = new SyncSession(hostOf(node, owner, { [step]: () => (reached = true, gate) }), y, "server");
    try {
      const synced = client.sync(gid);
      await until(`the node to ${step}`, () => reached);
      const [r] = await node.apply([(await membership(ACTION_REMOVE, now)).bytes], { local: true });
      assertEquals(r!.status, "stored");
      release();
      await synced;
      await new Promise((r) => setTimeout(r, 50));
      assertEquals(await peer.group(gid), null, "the removed member got the group");
      assertEquals(client.stats.eventsReceived, 0);
    } finally {
      client.close();
      server.close();
    }
  });
}

/** A clock whose time moves only when the test says (timers run in order, a real macrotask after each). */
class ManualClock implements Clock {
  t = 1_700_000_000_000;
  /** How far the wall clock is stepped from the monotonic one. */
  step = 0;
  #timers = new Map<number, { at: number; fn: () => void; every: number }>();
  #next = 1;
  now(): number {
    return this.t + this.step;
  }
  monotonic(): number {
    return this.t;
  }
  setTimeout(fn: () => void, ms: number): TimerHandle {
    this.#timers.set(this.#next, { at: this.t + ms, fn, every: 0 });
    return this.#next++ as unknown as TimerHandle;
  }
  setInterval(fn: () => void, ms: number): TimerHandle {
    this.#timers.set(this.#next, { at: this.t + ms, fn, every: Math.max(1, ms) });
    return this.#next++ as unknown as TimerHandle;
  }
  clearTimeout(h: TimerHandle | undefined): void {
    this.#timers.delete(h as unknown as number);
  }
  clearInterval(h: TimerHandle | undefined): void {
    this.#timers.delete(h as unknown as number);
  }
  async advance(ms: number): Promise<void> {
    const end = this.t + ms;
    for (;;) {
      const due = [...this.#timers].filter(([, x]) => x.at <= end).sort((a, b) => a[1].at - b[1].at || a[0] - b[0])[0];
      if (!due) break;
      const [id, x] = due;
      this.t = x.at;
      if (x.every) x.at += x.every;
      else this.#timers.delete(id);
      x.fn();
      await new Promise((r) => setTimeout(r, 0));
    }
    this.t = end;
  }
}

// Found by the simulation (seed 8, then 86: "PEER_TOO_SLOW: Peer made no progress for 15000 ms with 0 ids and 0 bytes
// owed"): the stall clock ran from the last progress ever, so a session idle for longer than sync_stall_ms that sent
// one frame was cut if a tick saw the frame still in its socket; and it ran on the wall clock, so a clock stepped
// forward (seed 86: +108 s) cut a session that had just sent one.
Deno.test("SyncSession: a session idle past sync_stall_ms is not cut for a frame in its socket; one that stalls is", async () => {
  const clock = new ManualClock();
  const [ka, kb] = await Promise.all([generateKeyPair(), generateKeyPair()]);
  const [x, y] = channelPair();
  let inSocket = 0;
  x.buffered = () => inSocket;
  const [sa, sb] = await Promise.all([ReplicaStore.open(new MemoryKv()), ReplicaStore.open(new MemoryKv())]);
  const client = new SyncSession({ ...hostOf(sa, ka), clock }, x, "client");
  const server = new SyncSession({ ...hostOf(sb, kb), clock }, y, "server");
  try {
    assert(await client.ready());
    await clock.advance(LIMITS.sync_stall_ms + 5_000); // idle, nothing owed
    clock.step += 2 * LIMITS.sync_stall_ms; // the wall clock is stepped forward
    inSocket = 100; // a frame just sent, not yet taken by the socket
    await clock.advance(1_000);
    assertEquals(client.state, "ready", client.closeReason);
    await clock.advance(LIMITS.sync_stall_ms + 1_000); // and it stays there: the peer does not read
    assertEquals(client.state, "closed");
    assert(client.closeReason.startsWith("PEER_TOO_SLOW"), client.closeReason);
  } finally {
    client.close();
    server.close();
  }
});

// KNOWN ISSUE found by this simulation, not fixed here (it is a rule of membership, storage/membership.ts and the
// node's decode stage, not of sync): KNOWN_LATE_WRITE. A member removed at ts t0 may still sign events dated after
// t0 until it learns of its removal (or with a clock ahead of the owner's). A node that receives such an event
// BEFORE the removal admits it (the author is a member as far as it knows) and keeps it; a node that has the removal
// refuses it (FORBIDDEN), every reconciliation, forever. The members' roots never agree again. Seen in about 2 of
// 100 seeds (e.g. 32: "closed-b kind 18 by n2 ts 120423, dated after its author's removal"). The invariants test
// counts these apart (it prints them). A fix: a removal takes the removed member's events dated at or after it out
// of the set where they are held (as a tombstone would), so the set is again a function of the events alone.
Deno.test({
  name: "sim: known issue KNOWN_LATE_WRITE, a removed member's late write splits the members' roots (seed 32, pinned)",
  ignore: true,
  async fn() {
    const r = await simulate({ seed: 32 });
    assertEquals([...r.violations, ...r.known], []);
  },
});

Deno.test("SimDisk: a power loss keeps synced batches and a prefix of the rest; old handles fail", async () => {
  for (let seed = 1; seed <= 20; seed++) {
    const disk = new SimDisk(sfc32(seed));
    const kv = disk.open();
    const key = (i: number) => new Uint8Array([0x78, i]);
    await kv.batch([{ type: "put", key: key(0), value: new Uint8Array([0]) }], { sync: true });
    for (let i = 1; i <= 5; i++) await kv.batch([{ type: "put", key: key(i), value: new Uint8Array([i]) }]);
    assert(disk.has(key(5)));
    const kept = disk.powerLoss();
    const held = [0, 1, 2, 3, 4, 5].filter((i) => disk.has(key(i)));
    // Batch 1 was synced; of batches 2..6 a prefix survives, up to `kept`.
    assertEquals(held, [0, 1, 2, 3, 4, 5].slice(0, kept));
    await kv.get(key(0)).then(
      () => assert(false, "an old handle still reads"),
      (e) => assertEquals(e.code, "SHUTTING_DOWN"),
    );
    const kv2 = disk.open();
    assertEquals(await kv2.get(key(0)), new Uint8Array([0]));
    disk.faults = { readError: 0, damage: 0, full: true };
    await kv2.batch([{ type: "put", key: key(9), value: new Uint8Array([9]) }]).then(
      () => assert(false, "a full disk took a write"),
      (e) => assertEquals(e.code, "STORAGE_FULL"),
    );
    assert(!disk.has(key(9)));
  }
});
