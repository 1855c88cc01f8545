// The real-node smoke of the many-node simulation: a seeded run of REAL nodes (node.ts: the pipeline, RocksDB,
// real time), where tests/sim_test.ts runs the deterministic one (replica stores on a simulated disk, network and
// clock, many seeds, exact replay). This one checks what the deterministic one cannot reach: the node's own
// SyncHost (net/peers.ts NodeSync over the pipeline) under the same kind of churn. A seed fixes the steps, not the
// interleaving (real time), so it does not replay exactly.
//
// Four nodes in-process, one
// open and one closed group, and one seed that drives every choice — who
// publishes what (with clocks skewed by up to ±60 s), membership changes by the
// owner, which pairs connect over a lossy channel (frames dropped, duplicated,
// reordered, delayed, the link closed), links cut, nodes restarted without
// letting their sessions drain. Invariants are checked as it goes and after a
// final heal. This is the stronger form of tests/convergence_test.ts, which is
// kept as a small, fixed scenario (clean closes only).
//
// Seeds: the test prints them; `XF_SIM_REAL_SEED=123` runs one again,
// `XF_SIM_REAL_SEEDS=20` runs 20 (`deno task test:sim`). Real time and real storage
// are used (neither is injected in this codebase yet), so a seed fixes the
// sequence of steps and each link's fate per frame, but not how far a sync got
// when the next step lands; waits are for quiescence, not fixed sleeps.
import { toHex } from "../core/bytes.ts";
import { assert, assertEquals } from "@std/assert";
import type { FrameChannel } from "../net/sync.ts";
import { SyncSession } from "../net/sync.ts";
import { openNode, type XfNode } from "../node.ts";
import { generateKeyPair, type KeyPair } from "../storage/ed25519.ts";
import {
  createGroup,
  eventId,
  KIND_MEMBERSHIP,
  POLICY_CLOSED,
  POLICY_OPEN,
  signEvent,
  type StoredEvent,
} from "../storage/event.ts";
import { ACTION_ADD, ACTION_REMOVE, encodeMembership } from "../storage/membership.ts";
import { sfc32 } from "./_rand.ts";

/** Nodes in the simulation; the last one is never a member of the closed group. */
const NODES = 4;
/** Steps per seed. */
const STEPS_MAX = Number(Deno.env.get("XF_SIM_REAL_STEPS") ?? 40);
/** Clock skew of published events, either way. */
const SKEW_MS = 60_000;
/** Invariants that read every acknowledged event are checked every this many steps. */
const CHECK_EVERY = 5;
/** Heal rounds (every ordered pair synced) before giving up on convergence. */
const HEAL_ROUNDS_MAX = 4;
/** How long one sync of the final heal may take. */
const SYNC_TIMEOUT_MS = 10_000;

type Rand = () => number;
const pick = <T>(rand: Rand, xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;

/** How a lossy link treats frames (per frame, per direction). */
interface Faults {
  drop: number;
  dup: number;
  reorder: number;
  close: number;
  delayMs: number;
}

const CLEAN: Faults = { drop: 0, dup: 0, reorder: 0, close: 0, delayMs: 0 };

/**
 * A channel pair like `channelPair()`, whose two directions each draw from
 * their own PRNG (seeded from the simulation's), so frame n of a direction
 * meets the same fate on every replay. Order is kept (FIFO) except where a
 * frame is held back to be reordered.
 */
function lossyPair(seed: number, faults: Faults): { ends: [FrameChannel, FrameChannel]; close(r: string): void } {
  const mk = (): FrameChannel => ({ send: () => {}, close: () => {}, onFrame: null, onClose: null });
  const a = mk(), b = mk();
  let open = true;
  const close = (reason: string) => {
    if (!open) return;
    open = false;
    queueMicrotask(() => {
      a.onClose?.(reason);
      b.onClose?.(reason);
    });
  };
  const direction = (to: FrameChannel, rand: Rand) => {
    let lastAt = 0;
    let held: Uint8Array | null = null;
    const deliver = (f: Uint8Array) => {
      const at = Math.max(lastAt, Date.now() + Math.floor(rand() * faults.delayMs));
      lastAt = at;
      const go = () => open && to.onFrame?.(f);
      if (at <= Date.now()) queueMicrotask(go);
      else setTimeout(go, at - Date.now());
    };
    return (frame: Uint8Array) => {
      if (!open) return;
      const f = frame.slice();
      const r = rand();
      if (r < faults.close) return close("link closed by the simulation");
      if (r < faults.close + faults.drop) return;
      if (r < faults.close + faults.drop + faults.reorder && !held) return void (held = f);
      deliver(f);
      if (r < faults.close + faults.drop + faults.reorder + faults.dup) deliver(f);
      if (held) deliver(held), held = null;
    };
  };
  const seeds = sfc32(seed);
  a.send = direction(b, sfc32(Math.floor(seeds() * 2 ** 32)));
  b.send = direction(a, sfc32(Math.floor(seeds() * 2 ** 32)));
  a.close = close;
  b.close = close;
  return { ends: [a, b], close };
}

interface Link {
  a: number;
  b: number;
  client: SyncSession;
  server: SyncSession;
  close(reason: string): void;
}

async function settle(nodes: XfNode[], gids: string[], ms = 5000): Promise<void> {
  // Quiescent: every root (and count) unchanged across a few polls.
  const snap = async () =>
    JSON.stringify(await Promise.all(nodes.flatMap((n) => gids.map((g) => n.merkle(g).then((r) => r?.root ?? "")))));
  const end = Date.now() + ms;
  let last = await snap(), same = 0;
  while (Date.now() < end && same < 3) {
    await new Promise((r) => setTimeout(r, 30));
    const now = await snap();
    same = now === last ? same + 1 : 0;
    last = now;
  }
}

/** Final members of the closed group: the owner's membership events folded in `(ts, id)` order. */
function finalMembers(initial: Set<number>, changes: { ts: number; id: string; node: number; add: boolean }[]) {
  const m = new Set(initial);
  for (const c of changes.slice().sort((x, y) => x.ts - y.ts || (x.id < y.id ? -1 : 1))) {
    if (c.add) m.add(c.node);
    else m.delete(c.node);
  }
  return m;
}

async function simulate(seed: number): Promise<void> {
  const rand = sfc32(seed);
  const log: string[] = [];
  const note = (s: string) => log.push(s);
  const dirs = await Promise.all(Array.from({ length: NODES }, () => Deno.makeTempDir({ prefix: "xf-sim-" })));
  const keys: KeyPair[] = await Promise.all(dirs.map(() => generateKeyPair()));
  const owner = await generateKeyPair();
  const limits = { sync_handshake_ms: 2000 };
  const open = async (i: number) => await openNode({ dataDir: dirs[i]!, workers: false, key: keys[i]!, limits });
  const nodes: XfNode[] = [];
  for (let i = 0; i < NODES; i++) nodes.push(await open(i));
  const links = new Set<Link>();
  /** Every link made, to tally how sessions ended. */
  const all: Link[] = [];
  const outsider = NODES - 1;
  try {
    const og = await createGroup(owner, { name: "open", policy: POLICY_OPEN, ts: Date.now() - 200_000 });
    const cg = await createGroup(owner, { name: "closed", policy: POLICY_CLOSED, ts: Date.now() - 200_000 });
    const openGid = toHex(og.gid), closedGid = toHex(cg.gid);
    const gids = [openGid, closedGid];
    /** Per node and group: ids the node acknowledged as stored (published there, or held before a restart). */
    const acked = nodes.map(() => new Map<string, Set<string>>(gids.map((g) => [g, new Set<string>()])));
    const closedIds = new Set<string>();
    const changes: { ts: number; id: string; node: number; add: boolean }[] = [];
    const initialMembers = new Set([0, 1, 2].filter((i) => i !== outsider));
    /** The closed group's members as node 0 (where every membership change is published) last folded them. */
    let members = new Set(initialMembers);

    const publish = async (at: number, gid: string, evs: { id: Uint8Array; ts: number }[], bytes: Uint8Array[]) => {
      const res = await nodes[at]!.publish(bytes);
      res.forEach((r, i) => {
        if (r.status === "rejected") return;
        const id = toHex(evs[i]!.id);
        acked[at]!.get(gid)!.add(id);
        if (gid === closedGid) closedIds.add(id);
      });
      return res;
    };
    // Set-up: both manifests and the initial members at node 0; the others get the groups by syncing.
    const admit = [];
    for (const i of initialMembers) {
      admit.push(
        await signEvent(owner, {
          group: cg.gid,
          ts: Date.now() - 120_000 + i,
          kind: KIND_MEMBERSHIP,
          tags: [],
          payload: encodeMembership({ action: ACTION_ADD, member: keys[i]!.publicKey }),
        }),
      );
    }
    await publish(0, openGid, [og.manifest], [og.manifest.bytes]);
    await publish(0, closedGid, [cg.manifest, ...admit], [cg.manifest, ...admit].map(encode));

    const holds = async (i: number, gid: string) => (await nodes[i]!.merkle(gid)) !== null;
    const checkAcked = async (why: string) => {
      for (let i = 0; i < NODES; i++) {
        for (const [gid, ids] of acked[i]!) {
          for (const id of ids) {
            assert(
              (await nodes[i]!.get(id)) !== null,
              `seed ${seed}: node ${i} lost acknowledged ${id} of ${gid.slice(0, 8)} (${why})`,
            );
          }
        }
      }
      for (const id of closedIds) {
        assertEquals(await nodes[outsider]!.get(id), null, `seed ${seed}: the non-member holds closed-group ${id}`);
      }
      assertEquals(await nodes[outsider]!.merkle(closedGid), null, `seed ${seed}: the non-member holds the group`);
    };
    const cut = (l: Link, reason: string) => {
      l.close(reason);
      links.delete(l);
    };
    const connect = (a: number, b: number, faults: Faults) => {
      const pair = lossyPair(Math.floor(rand() * 2 ** 32), faults);
      const server = new SyncSession(nodes[b]!.sync, pair.ends[1], "server", `node${b}`);
      const client = new SyncSession(nodes[a]!.sync, pair.ends[0], "client", `node${a}`);
      const l: Link = { a, b, client, server, close: pair.close };
      links.add(l);
      all.push(l);
      return l;
    };

    for (let step = 0; step < STEPS_MAX; step++) {
      for (const l of links) if (l.client.state === "closed" || l.server.state === "closed") cut(l, "ended");
      const r = rand();
      if (r < 0.35) {
        // Publish 1-20 events at a random node holding the group, its clock skewed.
        const at = Math.floor(rand() * NODES);
        const closed = rand() < 0.4;
        const gid = closed ? closedGid : openGid;
        const n = 1 + Math.floor(rand() * 20);
        const skew = Math.floor((rand() * 2 - 1) * SKEW_MS);
        note(`${step}: publish ${n} at node ${at} in ${closed ? "closed" : "open"}, skew ${skew} ms`);
        if (!(await holds(at, gid))) continue;
        const evs = [];
        for (let k = 0; k < n; k++) {
          evs.push(
            await signEvent(owner, {
              group: closed ? cg.gid : og.gid,
              ts: Date.now() + skew + k,
              kind: 16,
              tags: [["s", `${seed}/${step}/${k}`]],
              payload: new TextEncoder().encode(`event ${step}.${k}`),
            }),
          );
        }
        await publish(at, gid, evs, evs.map(encode));
      } else if (r < 0.42) {
        // The owner adds or removes a member node (never the outsider, never node 0), at node 0.
        const who = 1 + Math.floor(rand() * (outsider - 1));
        const add = !members.has(who);
        const skew = Math.floor((rand() * 2 - 1) * SKEW_MS);
        note(`${step}: ${add ? "add" : "remove"} node ${who}, skew ${skew} ms`);
        const e = await signEvent(owner, {
          group: cg.gid,
          ts: Date.now() + skew,
          kind: KIND_MEMBERSHIP,
          tags: [],
          payload: encodeMembership({ action: add ? ACTION_ADD : ACTION_REMOVE, member: keys[who]!.publicKey }),
        });
        const [res] = await publish(0, closedGid, [e], [encode(e)]);
        if (res!.status === "stored") {
          changes.push({ ts: e.ts, id: toHex(e.id), node: who, add });
          members = finalMembers(initialMembers, changes);
        }
      } else if (r < 0.65) {
        // Connect a random pair: lossy at a low rate, or clean.
        const a = Math.floor(rand() * NODES);
        const b = (a + 1 + Math.floor(rand() * (NODES - 1))) % NODES;
        const lossy = rand() < 0.6;
        const faults = lossy ? { drop: 0.02, dup: 0.01, reorder: 0.01, close: 0.005, delayMs: 8 } : CLEAN;
        note(`${step}: connect ${a}→${b}${lossy ? " lossy" : ""}`);
        const l = connect(a, b, faults);
        for (const g of gids) l.client.sync(g).catch(() => {});
      } else if (r < 0.78) {
        const list = [...links];
        if (!list.length) continue;
        const l = pick(rand, list);
        note(`${step}: cut ${l.a}→${l.b}`);
        cut(l, "cut by the simulation");
      } else if (r < 0.86) {
        // A killed restart: links cut without a bye, then the node closed at once and reopened on its dir.
        const i = Math.floor(rand() * NODES);
        note(`${step}: restart node ${i}`);
        for (const l of [...links]) if (l.a === i || l.b === i) cut(l, "node killed");
        const before = await Promise.all(gids.map((g) => nodes[i]!.merkle(g)));
        const ids = await Promise.all(
          gids.map(async (g) => ((await nodes[i]!.query({ gid: g, limit: 10_000 }))?.events ?? []).map(eventIdHex)),
        );
        await nodes[i]!.close();
        assertEquals(nodes[i]!.sync.memory.used, 0, `seed ${seed}: node ${i} holds queued bytes after close`);
        nodes[i] = await open(i);
        const after = await Promise.all(gids.map((g) => nodes[i]!.merkle(g)));
        for (const [k, g] of gids.entries()) {
          // What it held (indexed) before a clean close is acknowledged: it must survive.
          for (const id of ids[k]!) acked[i]!.get(g)!.add(id);
          assert((after[k]?.count ?? 0) >= (before[k]?.count ?? 0), `seed ${seed}: node ${i} lost events in ${g}`);
        }
        await checkAcked(`after restarting node ${i}`);
      } else {
        // A quiet phase: let links work until roots stop moving.
        note(`${step}: settle`);
        await settle(nodes, gids, 300 + Math.floor(rand() * 700));
      }
      if (step % CHECK_EVERY === 0) await checkAcked(`step ${step}`);
    }

    // Heal: every link closed, then every ordered pair synced on a clean link until nothing changes.
    for (const l of [...links]) cut(l, "heal");
    await settle(nodes, gids, 1000);
    for (const n of nodes) assertEquals(n.sync.memory.used, 0, `seed ${seed}: queued bytes left with no links`);
    const finalM = finalMembers(initialMembers, changes);
    const snapshot = async () =>
      JSON.stringify(await Promise.all(nodes.flatMap((n) => gids.map((g) => n.merkle(g).then((r) => r?.root ?? "")))));
    let before = await snapshot(), round = 0;
    for (; round < HEAL_ROUNDS_MAX; round++) {
      for (let a = 0; a < NODES; a++) {
        for (let b = 0; b < NODES; b++) {
          if (a === b) continue;
          const l = connect(a, b, CLEAN);
          const synced = Promise.all(gids.map((g) => l.client.sync(g))).then(() => true, () => false);
          const timer = new Promise<boolean>((r) => setTimeout(() => r(false), SYNC_TIMEOUT_MS));
          const ok = await Promise.race([synced, timer]);
          assert(ok, `seed ${seed}: heal sync ${a}→${b} did not finish (${l.client.closeReason})`);
          await settle([nodes[a]!, nodes[b]!], gids, 2000);
          cut(l, "healed");
        }
      }
      const now = await snapshot();
      if (now === before) break;
      before = now;
    }
    await settle(nodes, gids, 1000);
    for (const n of nodes) assertEquals(n.sync.memory.used, 0, `seed ${seed}: queued bytes left after the heal`);
    await checkAcked("after the heal");
    // The open group: every node holds the union of what was acknowledged anywhere, under one root.
    const openRoots = await Promise.all(nodes.map((n) => n.merkle(openGid)));
    const openUnion = new Set(acked.flatMap((m) => [...m.get(openGid)!]));
    assertEquals(new Set(openRoots.map((x) => x?.root)).size, 1, `seed ${seed}: open-group roots differ`);
    assertEquals(openRoots[0]!.count, openUnion.size, `seed ${seed}: open group is not the union`);
    // The closed group: its final members agree, and hold what any of them acknowledged.
    const ms = [...finalM];
    const closedRoots = await Promise.all(ms.map((i) => nodes[i]!.merkle(closedGid)));
    assertEquals(
      new Set(closedRoots.map((x) => x?.root)).size,
      1,
      `seed ${seed}: closed-group roots of members differ`,
    );
    for (const i of ms) {
      for (const j of ms) {
        for (const id of acked[j]!.get(closedGid)!) {
          assert((await nodes[i]!.get(id)) !== null, `seed ${seed}: member ${i} lacks ${id} acknowledged at ${j}`);
        }
      }
    }
    for (let i = 0; i < NODES; i++) {
      for (const g of gids) {
        const f = await nodes[i]!.fsck(g);
        if (f) assert(f.ok, `seed ${seed}: fsck of node ${i} failed for ${g}`);
      }
    }
    const ends = new Map<string, number>();
    for (const l of all) {
      for (const s of [l.client, l.server]) {
        const why = s.closeReason.split(":")[0]!.slice(0, 24);
        ends.set(why, (ends.get(why) ?? 0) + 1);
        // An end the simulation did not cause (and that the faults cannot explain) is worth reading in full.
        if (/^[A-Z_]+:/.test(s.closeReason) && !s.closeReason.startsWith("BAD_FRAME")) {
          console.log(`sim seed ${seed}: ${s.role} ${l.a}→${l.b} ended: ${s.closeReason}`);
        }
      }
    }
    console.log(
      `sim seed ${seed}: ${all.length} links, session ends ${JSON.stringify(Object.fromEntries(ends))}`,
    );
    console.log(
      `sim seed ${seed}: ${STEPS_MAX} steps, ${changes.length} membership changes, open ${openUnion.size} events, ` +
        `closed members [${ms}] ${closedRoots[0]?.count ?? 0} events, heal rounds ${round + 1}`,
    );
  } catch (e) {
    console.error(`sim seed ${seed} failed; run it again with XF_SIM_REAL_SEED=${seed}\n  ${log.join("\n  ")}`);
    throw e;
  } finally {
    for (const l of links) l.close("end");
    for (const n of nodes) await n.close().catch(() => {});
    for (const d of dirs) await Deno.remove(d, { recursive: true }).catch(() => {});
  }
}

const encode = (e: StoredEvent): Uint8Array => e.bytes;

function eventIdHex(bytes: Uint8Array): string {
  return toHex(eventId(bytes));
}

const one = Deno.env.get("XF_SIM_REAL_SEED");
const count = Number(Deno.env.get("XF_SIM_REAL_SEEDS") ?? 1);
if (!Number.isInteger(count) || count < 1) {
  throw new Error(`XF_SIM_REAL_SEEDS must be a positive count, not "${count}"`);
}
const base = Number(Deno.env.get("XF_SIM_REAL_BASE") ?? Date.now() % 1_000_000);
const seeds = one !== undefined ? [Number(one)] : Array.from({ length: count }, (_, i) => base + i);

for (const seed of seeds) {
  Deno.test(
    `Real-node simulation seed ${seed}: lossy links, skewed clocks, membership changes and killed restarts converge`,
    {
      sanitizeOps: false,
      sanitizeResources: false,
    },
    async () => {
      console.log(`sim seed ${seed} (again: XF_SIM_REAL_SEED=${seed})`);
      await simulate(seed);
    },
  );
}
