// A deterministic, seeded simulation of many nodes syncing (issue 13, in the manner of FoundationDB's and
// TigerBeetle's simulators). One seed drives every choice; time, storage, the network and randomness are
// injected, so a seed replays exactly (the same trace hash).
//
// What is real, and what is simulated:
// - Each node is a storage/replica_store.ts ReplicaStore (the node's keyspaces and admission rules, the same
//   storage functions the node's pipeline uses) over a tests/_sim_kv.ts SimDisk: writes that land after a latency
//   and are lost at a power loss unless synced, reads that fail or come back damaged, a full disk.
// - Nodes sync with the real net/sync.ts SyncSession, INCLUDING the real encrypted handshake (net/secure.ts:
//   X25519, Ed25519 over the transcript, ChaCha20-Poly1305 frames), over a simulated FrameChannel per connection
//   that drops, duplicates, reorders and delays frames and is cut (partitions, restarts) as the seed says. A frame
//   dropped, duplicated or reordered fails the AEAD and ends the session (as on a real socket, where it cannot
//   happen short of a broken relay): what is exercised is every way a session ends, and that nodes converge anyway.
// - Time is a virtual clock (core/clock.ts Clock) with a timer queue the driver advances; each node reads it
//   with its own skew (±60 s, and jumps). Randomness (handshake keys and challenges, session ids, key pairs, group
//   nonces, payloads) comes from the seed. Inside the world Ed25519 is noble's, synchronous (WebCrypto's promises
//   may settle after other tasks: a thread pool), injected into the stores (`checker`) and the handshake
//   (`SyncHost.ed25519`). After each delivered frame or fired timer the driver lets the microtask queue run dry (one
//   MessageChannel macrotask) before the next, so the interleaving is a function of the seed alone. A real timer
//   set inside the world is a violation (the run would depend on the machine).
//
// The workload: an open group (owner node 0) and two closed groups (owners nodes 1 and 0), the owners adding and
// removing members (never the last node, the outsider: it is never a member of a closed group), everyone
// publishing with skewed clocks, connections made and cut, partitions, restarts (power loss or clean), disk faults;
// deleting (kind 2 tombstones: own events, any as the owner, targets not held yet, others' it may not delete, a
// manifest; and a deleted event's bytes sent again to a node holding its tombstone), and retention changes (kind 3
// settings by the owner, now and then by another node). `deletesMore` gives deletion a larger share.
//
// Invariants, after every step (and at every frame sent, for the one about sending):
// - no acknowledged event lost: an event `apply` answered `stored` for a local publish (a synced write), or one
//   received whose write a later synced write (or the disk) made durable, is held by its node, unless a tombstone
//   the node holds names it, it is below the highest retention boundary seen there, or it is named by (or is) a
//   tombstone the truth does not let delete all it names (dropped once a target it may not delete arrives);
// - deletion: no node holds an event named by a tombstone it holds; a deleted event sent again to a node holding a
//   valid tombstone for it is refused (DELETED; FORBIDDEN or EXPIRED only where its own rules say), never stored;
// - nothing corrupt held: every event a node holds is one the simulation made, with the bytes it made;
// - no closed-group event at a non-member: a node never added to a closed group holds nothing of it, and no node
//   sends a closed group's events to a peer that its own membership state does not let read the group;
// - bounded memory: each session's queued bytes within `sync_peer_queue_bytes_max`, each node's within
//   `sync_memory_bytes_max` and equal to the sum over its sessions (no leak when sessions end), live subscriptions
//   and timers within a bound per open session (none once all are closed), the simulation's own queues bounded;
// - convergence: after a final heal (faults off, every pair connected), within bounded virtual time, every node
//   that should hold a group (all nodes for the open group, the current members for a closed one) holds it under
//   one root; a tombstone the truth lets delete all it names, once a holder holds it, is at every holder and none
//   holds its targets; no holder holds an application event below its retention boundary. A divergence counts as
//   the known issue only when each event not held by all is a removed member's late write, an event deleted where
//   it lacks by such a late tombstone, or (beside a late write, which moves boundaries) one below the boundary there.
import { sha256 } from "@noble/hashes/sha2";
import { toHex } from "../core/bytes.ts";
import type { Clock, TimerHandle } from "../core/clock.ts";
import { toWire, type WireError, XfError } from "../core/errors.ts";
import { type Limits, limitsWith } from "../core/limits.ts";
import { ByteBudget, type FrameChannel, type SyncHost, SyncSession } from "../net/sync.ts";
import { decodeFrame } from "../net/frames.ts";
import { type Ed25519, type KeyPair, keyPairFromSeed } from "../storage/ed25519.ts";
import { ed25519 as noble } from "@noble/curves/ed25519";
import {
  createGroup,
  decodeEvent,
  KIND_MANIFEST,
  KIND_MEMBERSHIP,
  KIND_SETTINGS,
  KIND_TOMBSTONE,
  POLICY_CLOSED,
  POLICY_OPEN,
  signEvent,
} from "../storage/event.ts";
import { eventKey, groupKey, KS } from "../storage/keys.ts";
import {
  ACTION_ADD,
  ACTION_REMOVE,
  encodeMembership,
  GroupState,
  type MembershipEvent,
} from "../storage/membership.ts";
import { type EventChecker, ReplicaStore } from "../storage/replica_store.ts";
import { encodeTombstone } from "../storage/deletion.ts";
import { encodeSettings, retentionBoundary, type Settings, type SettingsRecord } from "../storage/retention.ts";
import { settingsKey } from "../storage/deleted_set.ts";
import { checkManifestEvent } from "../storage/event.ts";
import { decodeGroup, loadGroupState, membersKey } from "../storage/group_record.ts";
import { HEALTHY, SimDisk } from "./_sim_kv.ts";
import { sfc32 } from "./_rand.ts";
export { sfc32 };

// ---------- seeded randomness ----------

type Rand = () => number;
const int = (rand: Rand, lo: number, hi: number) => lo + Math.floor(rand() * (hi - lo + 1));
const pick = <T>(rand: Rand, xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;
const fork = (rand: Rand): Rand => sfc32(Math.floor(rand() * 2 ** 32));
const bytesOf = (rand: Rand, n: number): Uint8Array => {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.floor(rand() * 256);
  return out;
};

// ---------- Ed25519 on microtasks alone ----------

// WebCrypto's Ed25519 promises may settle after other tasks (a thread pool), so the order in which sessions and
// stores go on would depend on the machine. Inside the simulated world everything signs and verifies with noble
// (synchronous, wrapped in settled promises); the driver itself may use WebCrypto while the world is idle.

/** The handshake's signatures, deterministic. */
const NOBLE: Ed25519 = Object.freeze({
  sign: (key: KeyPair, m: Uint8Array) => Promise.resolve(noble.sign(m, key.seed)),
  verify: (pub: Uint8Array, sig: Uint8Array, m: Uint8Array) => {
    try {
      return Promise.resolve(noble.verify(sig, m, pub, { zip215: false }));
    } catch {
      return Promise.resolve(false);
    }
  },
});

/**
 * The stores' step 1 (id, strict decode, signature), as storage/replica_store.ts `checkEvents` does it, with noble.
 * A verdict is kept by id (the hash of the whole event, signature included), so each distinct event is verified
 * once per run whichever node receives it; damaged bytes have another id and are verified afresh.
 */
function checkerOf(limits: Limits, verdicts: Map<string, boolean>): EventChecker {
  return (events) => {
    const ids = new Uint8Array(events.length * 32);
    const errors: (WireError | null)[] = [];
    events.forEach((bytes, i) => {
      const id = sha256(bytes);
      ids.set(id, i * 32);
      try {
        const ev = decodeEvent(bytes, limits, id);
        const k = toHex(id);
        let ok = verdicts.get(k);
        if (ok === undefined) {
          try {
            ok = noble.verify(ev.sig, ev.signed!, ev.author, { zip215: false });
          } catch {
            ok = false;
          }
          verdicts.set(k, ok);
        }
        if (!ok) {
          throw new XfError("BAD_SIGNATURE", "Cannot accept event: the signature does not verify for its author");
        }
        errors.push(null);
      } catch (e) {
        errors.push(toWire(e));
      }
    });
    return Promise.resolve({ ids, errors });
  };
}

// ---------- options and result ----------

/** Deliberate breakage, to show the invariants can fail (never set in the normal runs). */
export interface Sabotage {
  /** The disks ignore `sync`: a power loss takes acknowledged writes too. */
  noSync?: boolean;
  /** Every node answers a peer's `access` as readable: closed groups reach non-members. */
  leakClosed?: boolean;
  /** The disks drop one event write in ten, silently. */
  skipWrites?: boolean;
  /** Each node's sync byte budget never gets bytes back. */
  leakMemory?: boolean;
  /** The disks keep the bytes of events their store forgets: deleted events stay held. */
  keepDeleted?: boolean;
}

/** A byte budget that keeps what it is given back (the `leakMemory` sabotage). */
class LeakyBudget extends ByteBudget {
  override give(_n: number): void {}
}

/** Options of one run. */
export interface SimOptions {
  seed: number;
  /** Driver steps before the final heal (default 200). */
  steps?: number;
  /** Nodes (default 5, at least 4). */
  nodes?: number;
  sabotage?: Sabotage;
  /** Keep the whole trace (default: the last {@linkcode TRACE_KEEP} lines). */
  traceAll?: boolean;
  /** A share of steps (0 to 0.25, default 0) that delete before they wait (5 % of the steps delete by default). */
  deletesMore?: number;
}

/** What a run found. */
export interface SimResult {
  seed: number;
  /** SHA-256 (hex) over every step, every delivered frame's bytes and every timer fired. */
  hash: string;
  violations: string[];
  /**
   * Divergences explained by the known issue KNOWN_LATE_WRITE (a removed member's write dated after its removal,
   * kept by the nodes that took it before they learnt of the removal), kept apart from `violations`.
   */
  known: string[];
  /** Notable, not invariant failures. */
  notes: string[];
  stats: Record<string, number>;
  /** The trace (its last lines unless `traceAll`). */
  trace: string[];
}

/** Virtual time at the start (ms since the Unix epoch). */
const T0 = 1_700_000_000_000;
/** Clock skew of a node, either way. */
const SKEW_MS = 60_000;
/** Trace lines kept for a failure report. */
export const TRACE_KEEP = 400;
/** Heal rounds (every pair connected and synced) before convergence is a violation. */
const HEAL_ROUNDS_MAX = 3;
/** Virtual time one heal round may take. */
const HEAL_ROUND_MS_MAX = 120_000;
/** A heal round is quiet once no frame moved for this long and every sync it started is done. */
const QUIET_MS = 3_000;
/** Virtual time a publish waits for its store to answer (its disk's latency, writes queued before it). */
const PUBLISH_WAIT_MS = 1_000;
/** Tasks one advance may run (a timer that re-arms itself at 0 ms would otherwise spin). */
const TASKS_PER_ADVANCE_MAX = 200_000;
/** Timers a node may have per session not closed (handshake timeout, ticker, pump retry, store retry). */
const TIMERS_PER_SESSION_MAX = 4;
/** Connections between one pair of nodes at once. */
const CONNS_PER_PAIR_MAX = 2;
/** Bytes in flight on one direction of a link: the socket bound the session honours, plus frames it sends anyway. */
const LINK_INFLIGHT_BYTES_MAX = (limits: Limits) =>
  limits.sync_socket_buffer_bytes_max + 8 * limits.sync_frame_bytes_max;
/** Tasks in the scheduler's queue at once. */
const TASKS_QUEUED_MAX = 100_000;

/** Limits tight enough that credit, socket back-pressure and queue bounds are exercised with small loads. */
const TIGHT = {
  sync_credit_events: 16,
  sync_credit_bytes_max: 192 * 1024,
  sync_frame_bytes_max: 128 * 1024,
  sync_socket_buffer_bytes_max: 48 * 1024,
  sync_peer_queue_bytes_max: 512 * 1024,
  sync_memory_bytes_max: 2 * 1024 * 1024,
  sync_want_ids_max: 32,
  sync_handshake_ms: 5_000,
};

// ---------- the scheduler (virtual time) ----------

interface Task {
  at: number;
  seq: number;
  id: number;
  fn: () => void;
  tag: string;
  every: number;
}

class Scheduler {
  now = T0;
  #seq = 0;
  #next = 1;
  /** Sorted by (at, seq). */
  #tasks: Task[] = [];
  #byId = new Map<number, Task>();

  add(delay: number, fn: () => void, tag: string, every = 0): number {
    const id = this.#next++;
    this.#insert({ at: this.now + Math.max(0, Math.floor(delay)), seq: this.#seq++, id, fn, tag, every });
    return id;
  }

  #insert(t: Task): void {
    let lo = 0, hi = this.#tasks.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      const m = this.#tasks[mid]!;
      if (m.at < t.at || (m.at === t.at && m.seq < t.seq)) lo = mid + 1;
      else hi = mid;
    }
    this.#tasks.splice(lo, 0, t);
    this.#byId.set(t.id, t);
  }

  cancel(id: number): void {
    const t = this.#byId.get(id);
    if (!t) return;
    this.#byId.delete(id);
    this.#tasks.splice(this.#tasks.indexOf(t), 1);
  }

  cancelTag(tag: string): number {
    const gone = this.#tasks.filter((t) => t.tag === tag);
    for (const t of gone) this.cancel(t.id);
    return gone.length;
  }

  count(tag: string): number {
    let n = 0;
    for (const t of this.#tasks) if (t.tag === tag) n++;
    return n;
  }

  get size(): number {
    return this.#tasks.length;
  }

  /** The next task due by `until`, taken off the queue (an interval is put back for its next time). */
  take(until: number): Task | undefined {
    const t = this.#tasks[0];
    if (!t || t.at > until) return undefined;
    this.#tasks.shift();
    this.now = t.at;
    if (t.every > 0) this.#insert({ ...t, at: t.at + t.every, seq: this.#seq++ });
    else this.#byId.delete(t.id);
    return t;
  }
}

// ---------- the network ----------

interface LinkFaults {
  drop: number;
  dup: number;
  reorder: number;
  latMin: number;
  latMax: number;
}

const CLEAN: LinkFaults = { drop: 0, dup: 0, reorder: 0, latMin: 1, latMax: 20 };

// ---------- the world ----------

interface Run {
  node: number;
  epoch: number;
  tag: string;
  store: ReplicaStore;
  memory: ByteBudget;
  sessions: SyncSession[];
  subs: number;
  dead: boolean;
  /** The node's membership state per closed group, kept in step with its store (what its sessions judge by). */
  mirror: Map<string, GroupState>;
}

interface SimNode {
  i: number;
  key: KeyPair;
  disk: SimDisk;
  skew: number;
  run: Run | null;
  /** The restart under way, if any (opening a store takes a few reads: it migrates old Merkle trees). */
  starting: Promise<void> | null;
  epoch: number;
  /** Hex ids acknowledged durable at this node. */
  acked: Set<string>;
  /** Per group: the highest retention boundary seen at this node (application events below it may be forgotten). */
  floor: Map<string, number>;
  /** Events stored from sync, waiting for a synced write: hex id and the disk's batch number at the time. */
  pending: { id: string; seq: number }[];
  random: Rand;
}

interface Conn {
  id: number;
  a: number;
  b: number;
  link: SimLink;
  client: SyncSession;
  server: SyncSession;
  settled: number;
}

interface Created {
  gid: string;
  author: number;
  ts: number;
  kind: number;
  bytes: Uint8Array;
}

interface Tomb {
  id: string;
  gid: string;
  author: number;
  ts: number;
  targets: string[];
}

interface GroupInfo {
  gid: string;
  name: string;
  policy: number;
  owner: number;
  /** Nodes ever made members (the owner included). */
  ever: Set<number>;
  /** Membership events the owner stored. */
  membership: MembershipEvent[];
}

/** Run one seed; see the module comment. */
export async function simulate(options: SimOptions): Promise<SimResult> {
  const w = new World(options);
  try {
    await w.run();
  } finally {
    await w.dispose();
  }
  return w.result();
}

class World {
  readonly seed: number;
  readonly steps: number;
  readonly n: number;
  readonly sabotage: Sabotage;
  readonly rand: Rand;
  readonly sched = new Scheduler();
  readonly limits: Limits;
  readonly nodes: SimNode[] = [];
  readonly groups: GroupInfo[] = [];
  readonly created = new Map<string, Created>();
  readonly checker: EventChecker;
  readonly verdicts = new Map<string, boolean>();
  readonly conns = new Set<Conn>();
  readonly violations: string[] = [];
  readonly known: string[] = [];
  readonly notes: string[] = [];
  readonly stats: Record<string, number> = {};
  readonly traceAll: boolean;
  readonly deletesMore: number;
  readonly trace: string[] = [];
  readonly hasher = sha256.create();
  /** Nodes on side A of a partition (empty: none). */
  partition = new Set<number>();
  step = 0;
  lastFrameAt = T0;
  #connId = 0;
  #mc = new MessageChannel();
  #wake: (() => void) | null = null;
  #restore: (() => void)[] = [];
  #over = false;
  #digest = "";

  constructor(o: SimOptions) {
    this.seed = o.seed;
    this.steps = o.steps ?? 200;
    this.n = Math.max(4, o.nodes ?? 5);
    this.sabotage = o.sabotage ?? {};
    this.traceAll = o.traceAll ?? false;
    this.deletesMore = Math.min(0.25, Math.max(0, o.deletesMore ?? 0));
    this.rand = sfc32(o.seed);
    this.limits = this.rand() < 0.25 ? limitsWith({}) : limitsWith(TIGHT);
    this.checker = checkerOf(this.limits, this.verdicts);
    this.#mc.port1.onmessage = () => {
      const w = this.#wake;
      this.#wake = null;
      w?.();
    };
    // A real timer in the simulated code would make a run depend on the machine's speed: counted, a violation.
    const g = globalThis as unknown as Record<string, unknown>;
    for (const name of ["setTimeout", "setInterval"]) {
      const real = g[name] as (...a: unknown[]) => unknown;
      g[name] = (...a: unknown[]) => {
        this.count("realTimers");
        return real(...a);
      };
      this.#restore.push(() => g[name] = real);
    }
    const onRejection = (e: PromiseRejectionEvent) => {
      e.preventDefault();
      this.violation(
        `unhandled rejection: ${toWire(e.reason).message} ${
          (e.reason as Error)?.stack?.split("\n").slice(1, 4).join(" ")
        }`,
      );
    };
    globalThis.addEventListener("unhandledrejection", onRejection);
    this.#restore.push(() => globalThis.removeEventListener("unhandledrejection", onRejection));
  }

  /** End the world: links cut, what is in flight let run out (unrecorded), the globals given back. */
  async dispose(): Promise<void> {
    this.#digest = toHex(this.hasher.digest());
    this.#over = true;
    for (const c of this.conns) c.link.cut("end of the simulation");
    await this.drain();
    this.#mc.port1.close();
    this.#mc.port2.close();
    for (const r of this.#restore.splice(0)) r();
  }

  result(): SimResult {
    return {
      seed: this.seed,
      hash: this.#digest,
      violations: this.violations,
      known: this.known,
      notes: this.notes,
      stats: this.stats,
      trace: this.trace,
    };
  }

  // ---- bookkeeping ----

  count(k: string, n = 1): void {
    this.stats[k] = (this.stats[k] ?? 0) + n;
  }

  /** A high-water mark (stats named `max.*`, which a summary over seeds takes the maximum of). */
  high(k: string, n: number): void {
    if (n > (this.stats[`max.${k}`] ?? 0)) this.stats[`max.${k}`] = n;
  }

  /** Bytes into the trace hash (a delivered frame). */
  hash(bytes: Uint8Array): void {
    if (!this.#over) this.hasher.update(bytes);
  }

  log(line: string): void {
    if (this.#over) return;
    const s = `${this.step} +${this.sched.now - T0} ${line}`;
    this.hasher.update(new TextEncoder().encode(s + "\n"));
    this.trace.push(s);
    if (!this.traceAll && this.trace.length > TRACE_KEEP) this.trace.shift();
  }

  violation(msg: string): void {
    if (this.#over) return;
    if (this.violations.length < 20) this.violations.push(`seed ${this.seed} step ${this.step}: ${msg}`);
    this.log(`VIOLATION ${msg}`);
  }

  /** Let every microtask run: one macrotask, after which nothing simulated is left to run but the timer queue. */
  drain(): Promise<void> {
    return new Promise<void>((r) => {
      this.#wake = r;
      this.#mc.port2.postMessage(0);
    });
  }

  /** Run the timer queue for `ms` of virtual time, draining after each task. */
  async advance(ms: number): Promise<void> {
    const until = this.sched.now + ms;
    await this.runUntil(() => false, ms);
    this.sched.now = Math.max(this.sched.now, until);
  }

  /** Run due tasks one at a time (draining after each) until `done()` or `ms` of virtual time have passed. */
  async runUntil(done: () => boolean, ms: number): Promise<void> {
    const until = this.sched.now + ms;
    for (let n = 0; !done(); n++) {
      if (n >= TASKS_PER_ADVANCE_MAX) {
        this.violation(`more than ${TASKS_PER_ADVANCE_MAX} tasks in ${ms} ms of virtual time`);
        break;
      }
      const t = this.sched.take(until);
      if (!t) break;
      this.count("tasks");
      try {
        t.fn();
      } catch (e) {
        const where = (e as Error).stack?.split("\n").slice(1, 4).join(" ");
        this.violation(`a ${t.tag} task threw: ${toWire(e).message} ${where}`);
      }
      await this.drain();
    }
  }

  /** Node `i`'s clock: the virtual time with its skew; its timers are tagged with its current run. */
  clockOf(node: SimNode, tag: string): Clock {
    const s = this.sched;
    const cancel = (h: TimerHandle | undefined) => {
      if (h !== undefined) s.cancel(h as unknown as number);
    };
    return {
      now: () => s.now + node.skew,
      monotonic: () => s.now,
      setTimeout: (fn, ms) => s.add(ms, fn, tag) as unknown as TimerHandle,
      clearTimeout: cancel,
      setInterval: (fn, ms) => s.add(ms, fn, tag, Math.max(1, ms)) as unknown as TimerHandle,
      clearInterval: cancel,
    };
  }

  // ---- set-up ----

  async setUp(): Promise<void> {
    for (let i = 0; i < this.n; i++) {
      const r = fork(this.rand);
      const disk = new SimDisk(fork(r));
      if (this.sabotage.noSync) disk.ignoreSync = true;
      if (this.sabotage.skipWrites) disk.skipEventWrites = 0.1;
      if (this.sabotage.keepDeleted) disk.keepEventDeletes = true;
      disk.writeLatencyMax = pick(r, [0, 2, 10]);
      this.nodes.push({
        i,
        key: await keyPairFromSeed(bytesOf(r, 32)),
        disk,
        skew: int(r, -SKEW_MS, SKEW_MS),
        run: null,
        starting: null,
        epoch: 0,
        acked: new Set(),
        floor: new Map(),
        pending: [],
        random: fork(r),
      });
    }
    for (const nd of this.nodes) await this.start(nd);
    const outsider = this.n - 1;
    const specs = [
      { name: "open", policy: POLICY_OPEN, owner: 0, members: [] as number[] },
      { name: "closed-a", policy: POLICY_CLOSED, owner: 1, members: [2] },
      { name: "closed-b", policy: POLICY_CLOSED, owner: 0, members: [3 % outsider] },
    ];
    for (const s of specs) {
      const owner = this.nodes[s.owner]!;
      const { gid, manifest } = await createGroup(owner.key, {
        name: s.name,
        policy: s.policy,
        ts: this.sched.now + owner.skew - 300_000,
        nonce: bytesOf(this.rand, 16),
      });
      const g: GroupInfo = {
        gid: toHex(gid),
        name: s.name,
        policy: s.policy,
        owner: s.owner,
        ever: new Set([s.owner]),
        membership: [],
      };
      this.groups.push(g);
      this.made(manifest.bytes, g.gid, s.owner);
      await this.publishAt(owner, [manifest.bytes], `create ${s.name}`);
      for (const m of s.members) await this.changeMembership(g, m, ACTION_ADD, -200_000);
    }
  }

  /** An event the simulation made (the truth every node's holdings are checked against). */
  made(bytes: Uint8Array, gid: string, author: number): string {
    const ev = decodeEvent(bytes);
    const id = toHex(ev.id);
    this.created.set(id, { gid, author, ts: ev.ts, kind: ev.kind, bytes });
    return id;
  }

  /** Start (or restart) a node on its disk: a fresh store, its membership mirror loaded. */
  async start(nd: SimNode): Promise<void> {
    nd.epoch++;
    const tag = `n${nd.i}.${nd.epoch}`;
    // The disk's latency runs on the node's timers (a task per batch in flight, gone if the node dies first).
    const kv = nd.disk.open((ms, fn) => void this.sched.add(ms, fn, `${tag}.disk`));
    const store = await ReplicaStore.open(kv, {
      limits: this.limits,
      now: () => this.sched.now + nd.skew,
      checker: this.checker,
    });
    const run: Run = {
      node: nd.i,
      epoch: nd.epoch,
      tag,
      store,
      memory: this.sabotage.leakMemory
        ? new LeakyBudget(this.limits.sync_memory_bytes_max)
        : new ByteBudget(this.limits.sync_memory_bytes_max),
      sessions: [],
      subs: 0,
      dead: false,
      mirror: new Map(),
    };
    for (const g of this.groups) this.watch(run, nd, g.gid);
    nd.run = run;
  }

  /** A group's name. */
  name(gid: string): string {
    return this.groups.find((x) => x.gid === gid)?.name ?? gid.slice(0, 8);
  }

  /** Keep the run's mirror of a group's membership in step with its store (loaded from the disk, without faults). */
  watch(run: Run, nd: SimNode, gid: string): void {
    run.store.subscribe(gid, (events) => {
      for (const b of events) {
        const ev = decodeEvent(b);
        if (ev.kind === KIND_MANIFEST && !run.mirror.has(gid)) {
          const m = checkManifestEvent(ev);
          run.mirror.set(gid, new GroupState(ev.author, m.policy));
        } else if (ev.kind === KIND_MEMBERSHIP) {
          run.mirror.get(gid)?.apply([ev]);
          const m = this.nodes.findIndex((x) => toHex(x.key.publicKey) === toHex(ev.payload.subarray(4)));
          this.log(`n${nd.i} holds ${ev.payload[1] === ACTION_ADD ? "add" : "remove"} n${m} ${this.name(gid)}`);
        }
      }
    });
    const rec = nd.disk.peek(groupKey(fromHexGid(gid)));
    if (rec) run.mirror.set(gid, loadGroupState(decodeGroup(rec), nd.disk.peek(membersKey(gid))));
  }

  // ---- actions ----

  /**
   * Apply events at a node as published there (local: a synced write); stored ones are acknowledged once `apply`
   * answers, and handed to `onStored`. Waits (running the node's timers: its disk's latency) until it answers.
   */
  async publishAt(nd: SimNode, events: Uint8Array[], what: string, onStored?: (ids: string[]) => void): Promise<void> {
    const run = nd.run;
    if (!run) return;
    let done = false;
    run.store.apply(events, { local: true }).then((res) => {
      done = true;
      const stored: string[] = [];
      // Stored is durable even when the answer comes after the node died: a local write is synced, and a batch
      // lands (the store answers) only while its run lives (a crash cancels the landing, a dead handle throws).
      // The answer may come a drain after the step that crashed the node, which once skipped `onStored`: the
      // owner's membership change was written but the truth lacked it (a member counted as never one, seed 37).
      for (const r of res) {
        if (r.status === "stored") {
          nd.acked.add(r.id!);
          stored.push(r.id!);
        }
        this.count(`publish.${r.status === "rejected" ? r.code : r.status}`);
      }
      this.log(`${what} at n${nd.i}: ${res.map((r) => r.status === "rejected" ? r.code : r.status).join(",")}`);
      if (stored.length) onStored?.(stored);
    }, (e) => {
      done = true;
      const code = toWire(e).code;
      this.count(`publishFailed.${code}`);
      this.log(`${what} at n${nd.i}: failed ${code}`);
    });
    await this.drain();
    await this.runUntil(() => done, PUBLISH_WAIT_MS);
    if (!done) this.log(`${what} at n${nd.i}: not answered within ${PUBLISH_WAIT_MS} ms`);
  }

  async publish(): Promise<void> {
    const nd = pick(this.rand, this.nodes);
    // Mostly a group the node holds; sometimes any (refused where it does not hold it, or may not write).
    const held = this.groups.filter((x) => nd.run?.mirror.has(x.gid));
    const g = pick(this.rand, held.length && this.rand() < 0.85 ? held : this.groups);
    const k = int(this.rand, 1, 4);
    const events: Uint8Array[] = [];
    for (let j = 0; j < k; j++) {
      const r = this.rand();
      const size = r < 0.8
        ? int(this.rand, 0, 400)
        : r < 0.97
        ? int(this.rand, 1000, 20_000)
        : int(this.rand, 40_000, 60_000);
      const ev = await signEvent(nd.key, {
        group: fromHexGid(g.gid),
        ts: this.sched.now + nd.skew + j,
        kind: 16 + int(this.rand, 0, 2),
        tags: [["s", `${this.seed}.${this.step}.${j}`]],
        payload: bytesOf(this.rand, size),
      });
      this.made(ev.bytes, g.gid, nd.i);
      events.push(ev.bytes);
    }
    await this.publishAt(nd, events, `publish ${k} to ${g.name}`);
  }

  /** The owner of a closed group adds or removes a node, its event dated `offset` ms from the owner's clock. */
  async changeMembership(g: GroupInfo, member: number, action: number, offset = 0): Promise<void> {
    const owner = this.nodes[g.owner]!;
    const ev = await signEvent(owner.key, {
      group: fromHexGid(g.gid),
      ts: this.sched.now + owner.skew + offset,
      kind: KIND_MEMBERSHIP,
      tags: [],
      payload: encodeMembership({ action: action as 0 | 1, member: this.nodes[member]!.key.publicKey }),
    });
    this.made(ev.bytes, g.gid, g.owner);
    await this.publishAt(owner, [ev.bytes], `${action === ACTION_ADD ? "add" : "remove"} n${member} ${g.name}`, () => {
      g.membership.push(ev);
      if (action === ACTION_ADD) g.ever.add(member);
      this.refreshWobbly();
    });
  }

  async membership(): Promise<void> {
    const g = pick(this.rand, this.groups.filter((x) => x.policy === POLICY_CLOSED));
    const owner = this.nodes[g.owner]!;
    const st = owner.run?.mirror.get(g.gid);
    if (!st) return;
    const candidates = this.nodes.filter((x) => x.i !== g.owner && x.i !== this.n - 1).map((x) => x.i);
    const m = pick(this.rand, candidates);
    const action = st.isMember(this.nodes[m]!.key.publicKey) ? ACTION_REMOVE : ACTION_ADD;
    await this.changeMembership(g, m, action);
  }

  /** A host for one session of `run`: the store, with the simulation's counts and checks. */
  hostOf(run: Run, nd: SimNode): SyncHost {
    const store = run.store;
    return {
      key: nd.key,
      limits: this.limits,
      memory: run.memory,
      access: async (gid, peer) => {
        const a = await store.access(gid, peer);
        return this.sabotage.leakClosed && a.exists ? { ...a, readable: true, ...(await store.root(gid)) } : a;
      },
      reconcile: (gid, session, msg) => store.reconcile(gid, session, msg),
      getMany: (ids, bytesMax) => store.getMany(ids, bytesMax),
      admission: (gid) => store.admission(gid),
      submit: async (gid, events) => {
        const res = await store.apply(events, { gid });
        for (const r of res) {
          this.count(`received.${r.status === "rejected" ? r.code : r.status}`);
          if (r.status === "stored" && !run.dead) nd.pending.push({ id: r.id!, seq: nd.disk.seq });
        }
        return res;
      },
      subscribe: (gid, cb) => {
        const unsub = store.subscribe(gid, cb);
        run.subs++;
        let done = false;
        return Promise.resolve(() => {
          if (!done) {
            done = true;
            run.subs--;
            unsub();
          }
          return Promise.resolve();
        });
      },
      groups: () => store.groups(),
      report: () => {},
      clock: this.clockOf(nd, run.tag),
      random: (k) => bytesOf(nd.random, k),
      ed25519: NOBLE,
    };
  }

  connect(a: number, b: number, faults: LinkFaults): Conn | null {
    const na = this.nodes[a]!, nb = this.nodes[b]!;
    if (!na.run || !nb.run) return null;
    if (this.partition.size && this.partition.has(a) !== this.partition.has(b)) {
      this.log(`connect n${a}->n${b}: refused (partition)`);
      this.count("connectRefused");
      return null;
    }
    const id = ++this.#connId;
    const link = new SimLink(this, id, faults, fork(this.rand));
    const client = new SyncSession(this.hostOf(na.run, na), link.ends[0], "client", `sim://n${b}`);
    const server = new SyncSession(this.hostOf(nb.run, nb), link.ends[1], "server");
    this.tap(client, na.run, b);
    this.tap(server, nb.run, a);
    na.run.sessions.push(client);
    nb.run.sessions.push(server);
    const c: Conn = { id, a, b, link, client, server, settled: 0 };
    this.conns.add(c);
    this.count("conns");
    this.log(`connect n${a}->n${b} L${id} ${JSON.stringify(faults)}`);
    void client.ready().then((ok) => {
      if (ok) { for (const g of this.groups) this.syncGroup(c, g.gid); }
    });
    return c;
  }

  syncGroup(c: Conn, gid: string): void {
    void c.client.sync(gid).then(() => c.settled++, () => c.settled++);
  }

  /** Check every frame a session sends: a closed group's events go only to a peer its node lets read them. */
  tap(s: SyncSession, run: Run, to: number): void {
    const from = run.node;
    const sec = s.secure;
    const send = sec.send.bind(sec);
    sec.send = (f: Uint8Array) => {
      let t: unknown, gid: unknown, n = 0;
      try {
        const fr = decodeFrame(f, this.limits.sync_frame_bytes_max);
        t = fr.get("t");
        gid = fr.get("gid");
        n = (fr.get("events") as unknown[] | undefined)?.length ?? 0;
      } catch { /* the session's own frames always decode */ }
      const gname = this.groups.find((x) => x.gid === gid)?.name ?? "";
      this.log(`n${from}>n${to} ${String(t)} ${gname}${n ? ` ${n}` : ""}`);
      if (t === "events" && typeof gid === "string" && n > 0) {
        const g = this.groups.find((x) => x.gid === gid);
        const st = run.mirror.get(gid);
        if (g?.policy === POLICY_CLOSED && st && !st.canRead(this.nodes[to]!.key.publicKey)) {
          this.violation(`n${from} sent ${n} events of ${g.name} to n${to}, which its own state does not let read it`);
          void run.store.access(gid, this.nodes[to]!.key.publicKey).then((a) =>
            this.log(`DEBUG store access ${JSON.stringify(a)} sessions ${s.peer.slice(0, 8)}`)
          );
        }
      }
      send(f);
    };
  }

  /** Close or cut a connection. */
  disconnect(): void {
    const list = [...this.conns];
    if (!list.length) return;
    const c = pick(this.rand, list);
    const how = int(this.rand, 0, 2);
    this.log(`disconnect L${c.id} ${["client bye", "server bye", "cut"][how]}`);
    if (how === 0) c.client.close("bye from the simulation");
    else if (how === 1) c.server.close("bye from the simulation");
    else c.link.cut("link cut by the simulation");
  }

  /** A node stops: sessions cut, timers gone, unsynced writes lost (all kept for a clean stop); back after a while. */
  crash(nd: SimNode, clean: boolean): void {
    const run = nd.run;
    if (!run) return;
    this.log(`${clean ? "stop" : "crash"} n${nd.i}`);
    this.count(clean ? "stops" : "crashes");
    for (const c of this.conns) {
      if (c.a === nd.i) c.link.cut("node down", 0);
      else if (c.b === nd.i) c.link.cut("node down", 1);
    }
    run.dead = true;
    nd.run = null;
    this.sched.cancelTag(run.tag);
    this.sched.cancelTag(`${run.tag}.disk`);
    const kept = nd.disk.powerLoss(clean);
    // Events received and written up to the last batch kept are durable now; the rest are gone, not acknowledged.
    for (const p of nd.pending) if (p.seq <= kept) nd.acked.add(p.id);
    nd.pending = [];
    const down = int(this.rand, 0, 5_000);
    this.sched.add(down, () => {
      nd.starting = this.start(nd).then(() => this.log(`n${nd.i} up`), (e) => this.violation(`restart failed: ${e}`));
    }, "sim");
  }

  partitionStep(): void {
    if (this.partition.size) {
      this.log("partition healed");
      this.partition = new Set();
      return;
    }
    const side = new Set<number>();
    for (const nd of this.nodes) if (this.rand() < 0.5) side.add(nd.i);
    if (side.size === 0 || side.size === this.n) return;
    this.partition = side;
    this.log(`partition [${[...side]}] | rest`);
    this.count("partitions");
    for (const c of this.conns) {
      if (side.has(c.a) !== side.has(c.b)) c.link.cut("partition");
    }
  }

  diskFault(): void {
    const nd = pick(this.rand, this.nodes);
    const r = this.rand();
    if (r < 0.35) nd.disk.faults = { ...HEALTHY };
    else if (r < 0.7) nd.disk.faults = { readError: this.rand() * 0.05, damage: 0, full: false };
    else if (r < 0.85) nd.disk.faults = { readError: 0, damage: this.rand() * 0.2, full: false };
    else nd.disk.faults = { ...HEALTHY, full: true };
    this.log(`disk n${nd.i} ${JSON.stringify(nd.disk.faults)}`);
  }

  // ---- the run ----

  async run(): Promise<void> {
    this.log(`seed ${this.seed} nodes ${this.n} credit ${this.limits.sync_credit_events}`);
    await this.setUp();
    this.check();
    for (this.step = 1; this.step <= this.steps; this.step++) {
      await this.oneStep();
      await this.advance(int(this.rand, 0, 50));
      this.check();
      if (this.violations.length) return;
    }
    await this.heal();
  }

  async oneStep(): Promise<void> {
    const r = this.rand();
    const up = this.nodes.filter((x) => x.run);
    if (r < 0.22) return await this.publish();
    if (r < 0.28) return await this.membership();
    if (r < 0.40) {
      const a = pick(this.rand, up), b = pick(this.rand, up);
      if (!a || !b || a === b) return;
      let n = 0;
      for (const c of this.conns) if ((c.a === a.i && c.b === b.i) || (c.a === b.i && c.b === a.i)) n++;
      if (n >= CONNS_PER_PAIR_MAX) return;
      const lossy = this.rand() < 0.35;
      const f: LinkFaults = lossy
        ? { drop: this.rand() * 0.02, dup: this.rand() * 0.01, reorder: this.rand() * 0.01, latMin: 1, latMax: 300 }
        : { ...CLEAN, latMax: int(this.rand, 1, 80) };
      this.connect(a.i, b.i, f);
      return;
    }
    if (r < 0.46) return this.disconnect();
    if (r < 0.51) {
      const list = [...this.conns].filter((c) => c.client.state === "ready");
      if (!list.length) return;
      const c = pick(this.rand, list);
      const g = pick(this.rand, this.groups);
      this.log(`resync L${c.id} ${g.name}`);
      return this.syncGroup(c, g.gid);
    }
    if (r < 0.54) return this.partitionStep();
    if (r < 0.58) {
      if (!up.length) return;
      return this.crash(pick(this.rand, up), this.rand() < 0.3);
    }
    if (r < 0.63) return this.diskFault();
    if (r < 0.65) {
      const nd = pick(this.rand, this.nodes);
      nd.skew = int(this.rand, -SKEW_MS, SKEW_MS);
      this.log(`clock n${nd.i} skew ${nd.skew}`);
      return;
    }
    if (r < 0.70) return await this.deleteStep();
    if (r < 0.71) return await this.retentionStep();
    // The deletion-heavy mix: some waits begin with a delete step (time still passes, so nodes sync what they delete).
    if (r < 0.71 + this.deletesMore) await this.deleteStep();
    this.log(`advance`);
    await this.advance(int(this.rand, 10, 3_000));
  }

  /** Tombstones the simulation made (hex id): their group, signer, `ts` and targets (hex). */
  readonly tombs = new Map<string, Tomb>();
  /**
   * Tombstones (hex) the truth does not let delete all they name, and their targets: they may leave a node and
   * (targets) come back.
   */
  readonly wobbly = new Set<string>();

  /**
   * Delete (issue 13): a node signs a tombstone (kind 2) for events of a group it holds, mostly its own (any
   * author's when it owns the group), sometimes another's it may not delete (refused FORBIDDEN where a target is
   * held, and where none is, kept pending and dropped once one arrives), or one not held yet (pending); or a
   * deleted event's bytes are sent again to a node holding its tombstone (refused DELETED: it never comes back).
   */
  async deleteStep(): Promise<void> {
    const up = this.nodes.filter((x) => x.run);
    if (!up.length) return;
    if (this.rand() < 0.2) return await this.resendDeleted();
    const nd = pick(this.rand, up);
    const held = this.groups.filter((x) => nd.run!.mirror.has(x.gid));
    if (!held.length) return;
    const g = pick(this.rand, held);
    const app = (id: string) => (this.created.get(id)?.kind ?? 0) >= 16;
    const here = [...nd.disk.keys(KS.time, g.gid)].map((k) => k.slice(-64)).filter(app);
    const all = [...this.created].filter(([, c]) => c.gid === g.gid && c.kind >= 16).map(([id]) => id);
    const mine = (id: string) => this.created.get(id)!.author === nd.i;
    const r = this.rand();
    let mode: string, from: string[];
    if (r < 0.55) [mode, from] = ["own", here.filter(mine)];
    else if (r < 0.75 && g.owner === nd.i) [mode, from] = ["owner", all];
    else if (r < 0.85) [mode, from] = ["own-pending", all.filter((id) => mine(id) && !here.includes(id))];
    else if (r < 0.95) [mode, from] = ["others", all.filter((id) => !mine(id))];
    else {
      const m = [...this.created].find(([, c]) => c.gid === g.gid && c.kind === KIND_MANIFEST)!;
      [mode, from] = ["manifest", [m[0]]];
    }
    if (!from.length) return;
    const targets = new Set<string>();
    for (let k = int(this.rand, 1, 3); k > 0; k--) targets.add(pick(this.rand, from));
    // Now and then one of its own held events besides (a tombstone is refused or dropped whole).
    if (mode !== "own" && this.rand() < 0.3) {
      const own = here.filter(mine);
      if (own.length) targets.add(pick(this.rand, own));
    }
    const list = [...targets];
    const ev = await signEvent(nd.key, {
      group: fromHexGid(g.gid),
      ts: this.sched.now + nd.skew,
      kind: KIND_TOMBSTONE,
      tags: [],
      payload: encodeTombstone(list.map(fromHexGid)),
    });
    const id = this.made(ev.bytes, g.gid, nd.i);
    const tomb: Tomb = { id, gid: g.gid, author: nd.i, ts: ev.ts, targets: list };
    this.tombs.set(id, tomb);
    this.refreshWobbly();
    this.count(`delete.${mode}`);
    await this.publishAt(nd, [ev.bytes], `delete ${mode} ${list.map((t) => t.slice(0, 8))} in ${g.name}`);
  }

  /**
   * Retention (kind 3 settings): mostly a group's owner keeps the newest N events or those within some ms of the
   * newest, or everything; now and then another node tries (refused FORBIDDEN: not an admin).
   */
  async retentionStep(): Promise<void> {
    const g = pick(this.rand, this.groups);
    const owner = this.rand() < 0.85;
    const nd = owner ? this.nodes[g.owner]! : pick(this.rand, this.nodes);
    const r = this.rand();
    const settings: Settings = r < 0.5
      ? { retention_events: int(this.rand, 10, 120) }
      : r < 0.85
      ? { retention_ms: int(this.rand, 20_000, 150_000) }
      : {};
    const ev = await signEvent(nd.key, {
      group: fromHexGid(g.gid),
      ts: this.sched.now + nd.skew,
      kind: KIND_SETTINGS,
      tags: [],
      payload: encodeSettings(settings),
    });
    this.made(ev.bytes, g.gid, nd.i);
    this.count("retention");
    await this.publishAt(nd, [ev.bytes], `retention ${JSON.stringify(settings)} in ${g.name}`);
  }

  /** A node's retention boundary in a group, from its settings record and its set alone (as its store has it). */
  boundaryAt(nd: SimNode, gid: string): number {
    const raw = nd.disk.peek(settingsKey(gid));
    if (!raw) return 0;
    // The same until the disk writes or loses power.
    const at = `${nd.i}.${gid}`, when = `${nd.disk.epoch}.${nd.disk.seq}`;
    const hit = this.#bounds.get(at);
    if (hit?.when === when) return hit.b;
    const b = this.#boundaryNow(raw, nd, gid);
    this.#bounds.set(at, { when, b });
    return b;
  }

  #bounds = new Map<string, { when: string; b: number }>();

  #boundaryNow(raw: Uint8Array, nd: SimNode, gid: string): number {
    const s = JSON.parse(new TextDecoder().decode(raw)) as SettingsRecord;
    const ts = [...nd.disk.keys(KS.time, gid)].map((k) => parseInt(k.slice(66, 82), 16)).sort((a, b) => a - b);
    if (!ts.length) return 0;
    const n = s.retention_events;
    return retentionBoundary(s, ts.at(-1)!, n !== undefined && ts.length >= n ? ts[ts.length - n]! : null);
  }

  /**
   * Targets of tombstones the truth (as of now: a later membership event may be dated before a tombstone) does not
   * let delete all they name: they may be deleted at a node and come back (a dropped tombstone), so they are not
   * counted lost. Grows only.
   */
  refreshWobbly(): void {
    for (const t of this.tombs.values()) {
      if (this.mayDeleteAll(t)) continue;
      // Dropped (forgotten) where a target it may not delete arrives, and its targets taken again.
      this.wobbly.add(t.id);
      for (const id of t.targets) this.wobbly.add(id);
    }
  }

  /** Whether the truth (the owners' membership events) lets a tombstone's signer delete every target it names. */
  mayDeleteAll(t: Tomb): boolean {
    const g = this.groups.find((x) => x.gid === t.gid)!;
    const truth = this.truth(g);
    const signer = this.nodes[t.author]!.key.publicKey;
    if (!truth.canWrite(signer, t.ts)) return false;
    return t.targets.every((id) => {
      const c = this.created.get(id);
      return c !== undefined && c.gid === t.gid && c.kind >= 16 &&
        (c.author === t.author || truth.isAdmin(signer, t.ts));
    });
  }

  /** A deleted event's bytes, sent again to a node that holds its tombstone: refused `DELETED`, never stored. */
  async resendDeleted(): Promise<void> {
    const cands: { nd: SimNode; target: string; tomb: string }[] = [];
    for (const nd of this.nodes) {
      if (!nd.run) continue;
      for (const t of this.tombs.values()) {
        // A tombstone the truth lets delete all it names (another is dropped when a target it may not delete comes).
        if (!nd.disk.has(eventKey(fromHexGid(t.id))) || !this.mayDeleteAll(t)) continue;
        for (const target of t.targets) {
          if (this.created.get(target)!.kind >= 16) cands.push({ nd, target, tomb: t.id });
        }
      }
    }
    if (!cands.length) return;
    const { nd, target, tomb } = pick(this.rand, cands);
    const run = nd.run!;
    const c = this.created.get(target)!;
    let done = false;
    run.store.apply([c.bytes], { gid: c.gid }).then((res) => {
      done = true;
      const r = res[0]!;
      const code = r.status === "rejected" ? r.code! : r.status;
      this.count(`resend.${code}`);
      this.log(
        `resend ${target.slice(0, 8)} (${this.describe(target)}; tombstone ${tomb.slice(0, 8)}) at n${nd.i}: ${code}`,
      );
      if (run.dead) return;
      // Refused DELETED; or refused before the deleted set is read (step 3: FORBIDDEN for an author who may not
      // write at its ts, EXPIRED) or by a disk fault. Never stored, never a duplicate (it is not held).
      if (r.status !== "rejected") {
        this.violation(`n${nd.i} ${r.status} ${target.slice(0, 12)} again, deleted by ${tomb.slice(0, 12)} it holds`);
      } else if (r.code === "FORBIDDEN" && run.mirror.get(c.gid)?.canWrite(this.nodes[c.author]!.key.publicKey, c.ts)) {
        this.violation(
          `n${nd.i} refused ${target.slice(0, 12)} (deleted by ${tomb.slice(0, 12)}) FORBIDDEN: ${r.message}`,
        );
      } else if (r.code === "EXPIRED" && c.ts >= this.boundaryAt(nd, c.gid)) {
        this.violation(
          `n${nd.i} refused ${target.slice(0, 12)} (deleted by ${tomb.slice(0, 12)}) EXPIRED above its boundary`,
        );
      } else if (!["DELETED", "FORBIDDEN", "EXPIRED"].includes(r.code!) && !r.code!.startsWith("STORAGE_")) {
        this.violation(`n${nd.i} refused ${target.slice(0, 12)} (deleted by ${tomb.slice(0, 12)}) ${r.code}`);
      }
    }, (e) => {
      done = true;
      this.count(`resendFailed.${toWire(e).code}`);
    });
    await this.drain();
    await this.runUntil(() => done, PUBLISH_WAIT_MS);
  }

  // ---- invariants ----

  check(): void {
    for (const nd of this.nodes) {
      // Received events become acknowledged once a synced write made them durable.
      if (nd.pending.length) {
        const keep: { id: string; seq: number }[] = [];
        for (const p of nd.pending) {
          if (p.seq <= nd.disk.durableSeq) nd.acked.add(p.id);
          else keep.push(p);
        }
        nd.pending = keep;
      }
      // Retention: application events below the highest boundary seen here may be gone.
      for (const g of this.groups) {
        const b = this.boundaryAt(nd, g.gid);
        if (b > (nd.floor.get(g.gid) ?? 0)) nd.floor.set(g.gid, b);
      }
      const expired = (id: string) => {
        const c = this.created.get(id);
        return c !== undefined && c.kind >= 16 && c.ts < (nd.floor.get(c.gid) ?? 0);
      };
      // Deleted here: targets of the tombstones this node holds (none of which it may hold).
      const gone = new Set<string>();
      for (const t of this.tombs.values()) {
        if (!nd.disk.has(eventKey(fromHexGid(t.id)))) continue;
        for (const id of t.targets) {
          gone.add(id);
          if (nd.disk.has(eventKey(fromHexGid(id)))) {
            this.violation(
              `n${nd.i} holds ${id.slice(0, 12)} (${this.describe(id)}), deleted by ${t.id.slice(0, 12)} (${
                this.describe(t.id)
              }) which it holds`,
            );
          }
        }
      }
      for (const id of nd.acked) {
        if (!gone.has(id) && !this.wobbly.has(id) && !expired(id) && !nd.disk.has(eventKey(fromHexGid(id)))) {
          this.violation(`n${nd.i} lost acknowledged ${id.slice(0, 12)} (${this.describe(id)})`);
          nd.acked.delete(id);
        }
      }
      // Nothing corrupt held: every event is one the simulation made.
      for (const k of nd.disk.keys(KS.event)) {
        const id = k.slice(2);
        const c = this.created.get(id);
        if (!c) this.violation(`n${nd.i} holds ${id.slice(0, 12)}, an event nobody made (damaged bytes stored?)`);
      }
      // Closed groups: nothing at a node never made a member.
      for (const g of this.groups) {
        if (g.policy !== POLICY_CLOSED || g.ever.has(nd.i)) continue;
        if (nd.disk.has(groupKey(fromHexGid(g.gid)))) this.violation(`n${nd.i} (never a member) holds ${g.name}`);
        for (const _ of nd.disk.keys(KS.time, g.gid)) {
          this.violation(`n${nd.i} (never a member) holds events of ${g.name}`);
          break;
        }
      }
      this.checkMemory(nd);
    }
    if (this.sched.size > TASKS_QUEUED_MAX) this.violation(`${this.sched.size} tasks queued`);
    this.high("tasksQueued", this.sched.size);
    const max = LINK_INFLIGHT_BYTES_MAX(this.limits);
    for (const c of this.conns) {
      if (c.client.state === "closed" && c.server.state === "closed" && c.link.inflight[0] + c.link.inflight[1] === 0) {
        this.conns.delete(c);
        continue;
      }
      for (const k of [0, 1] as const) {
        this.high("linkInflightBytes", c.link.inflight[k]);
        if (c.link.inflight[k] > max) {
          this.violation(`L${c.id} holds ${c.link.inflight[k]} bytes in flight (max ${max})`);
        }
      }
    }
    if (this.stats.realTimers) this.violation(`${this.stats.realTimers} real timers set: the run is not deterministic`);
  }

  checkMemory(nd: SimNode): void {
    const run = nd.run;
    if (!run) return;
    const l = this.limits;
    let queued = 0;
    run.sessions = run.sessions.filter((s) => {
      if (s.queuedBytes > l.sync_peer_queue_bytes_max) {
        this.violation(`a session of n${nd.i} queues ${s.queuedBytes} bytes (max ${l.sync_peer_queue_bytes_max})`);
      }
      queued += s.queuedBytes;
      this.high("sessionQueuedBytes", s.queuedBytes);
      if (s.state === "closed" && s.queuedBytes !== 0) {
        this.violation(`a closed session of n${nd.i} still counts ${s.queuedBytes} queued bytes`);
      }
      if (s.state === "closed" && s.queuedBytes === 0) {
        this.count(`end.${endOf(s.closeReason)}`);
        this.log(`n${nd.i} session with ${s.peer.slice(0, 8)} ended: ${s.closeReason.slice(0, 160)}`);
      }
      return s.state !== "closed" || s.queuedBytes !== 0;
    });
    if (run.memory.used !== queued) {
      this.violation(`n${nd.i}'s sync memory counts ${run.memory.used} bytes, its sessions queue ${queued}`);
      run.memory.used = queued;
    }
    this.high("nodeSyncMemoryBytes", run.memory.used);
    if (run.memory.used > l.sync_memory_bytes_max) {
      this.violation(`n${nd.i}'s sync memory ${run.memory.used} > ${l.sync_memory_bytes_max}`);
    }
    const open = run.sessions.filter((s) => s.state !== "closed").length;
    const subsMax = 2 * this.groups.length * open;
    if (run.subs > subsMax) this.violation(`n${nd.i} has ${run.subs} live subscriptions for ${open} open sessions`);
    const timers = this.sched.count(run.tag);
    this.high("sessionsOpen", open);
    if (timers > TIMERS_PER_SESSION_MAX * open) {
      this.violation(`n${nd.i} has ${timers} timers for ${open} open sessions`);
    }
  }

  describe(id: string): string {
    const c = this.created.get(id);
    if (!c) return "unknown";
    const g = this.groups.find((x) => x.gid === c.gid);
    return `${g?.name} kind ${c.kind} by n${c.author} ts ${c.ts - T0}`;
  }

  // ---- the final heal ----

  async heal(): Promise<void> {
    this.step = this.steps + 1;
    this.log("heal: faults off, every connection closed");
    this.partition = new Set();
    for (const nd of this.nodes) nd.disk.faults = { ...HEALTHY };
    for (const c of this.conns) c.link.cut("heal");
    // Nodes that are down come up (their restart task is due within 5 s).
    await this.advance(6_000);
    await Promise.all(this.nodes.map((nd) => nd.starting));
    this.check();
    for (const nd of this.nodes) {
      const run = nd.run!;
      if (run.memory.used !== 0) this.violation(`n${nd.i} counts ${run.memory.used} queued bytes with no session`);
      if (run.subs !== 0) this.violation(`n${nd.i} has ${run.subs} live subscriptions with no session`);
      const timers = this.sched.count(run.tag);
      if (timers !== 0) this.violation(`n${nd.i} has ${timers} timers with no session`);
    }
    const started = this.sched.now;
    let round = 0;
    let diverged: string[] = [];
    for (; round < HEAL_ROUNDS_MAX; round++) {
      this.log(`heal round ${round + 1}`);
      const conns: Conn[] = [];
      // Every ordered pair: a session's client subscribes, and a node takes a group it lacks only by asking.
      for (let a = 0; a < this.n; a++) {
        for (let b = 0; b < this.n; b++) {
          const c = a === b ? null : this.connect(a, b, CLEAN);
          if (c) conns.push(c);
        }
      }
      const t0 = this.sched.now;
      for (;;) {
        await this.advance(500);
        this.check();
        const done = conns.every((c) =>
          c.client.state === "closed" || (c.client.state === "ready" && c.settled >= this.groups.length)
        );
        if (done && this.sched.now - this.lastFrameAt >= QUIET_MS) break;
        if (this.sched.now - t0 > HEAL_ROUND_MS_MAX) {
          this.violation(`heal round ${round + 1} not quiet after ${HEAL_ROUND_MS_MAX} ms`);
          break;
        }
      }
      for (const c of conns) {
        for (const s of [c.client, c.server]) {
          if (s.state === "closed") this.notes.push(`seed ${this.seed}: heal session L${c.id} ended: ${s.closeReason}`);
        }
      }
      diverged = await this.divergence();
      for (const gid of diverged) {
        const { odd } = this.explain(gid);
        this.log(`heal round ${round + 1}: ${this.name(gid)} differs: ${odd.slice(0, 4).join("; ")}`);
      }
      for (const c of conns) c.client.close("heal round over");
      await this.advance(1_000);
      if (diverged.length === 0) break;
    }
    this.count("healRounds", Math.min(round + 1, HEAL_ROUNDS_MAX));
    this.count("healMs", this.sched.now - started);
    if (diverged.length) this.classify(diverged);
    this.check();
    this.checkDeleted();
    this.checkRetained();
    // Memory returns to nothing once every session is closed.
    for (const nd of this.nodes) {
      const run = nd.run!;
      if (run.memory.used !== 0 || run.subs !== 0 || this.sched.count(run.tag) !== 0) {
        this.violation(`n${nd.i} after the heal: ${run.memory.used} bytes, ${run.subs} subscriptions, timers left`);
      }
    }
    // Every event held has exactly the bytes made.
    for (const nd of this.nodes) {
      for (const k of nd.disk.keys(KS.event)) {
        const c = this.created.get(k.slice(2));
        const v = nd.disk.peek(fromHexGid(k))!;
        if (c && toHex(sha256(v)) !== k.slice(2)) this.violation(`n${nd.i} holds damaged bytes of ${k.slice(2, 14)}`);
      }
    }
    for (const nd of this.nodes) {
      for (const g of this.groups) {
        this.log(`n${nd.i} ${g.name} ${(await nd.run!.store.root(g.gid)).root.slice(0, 16)}`);
      }
    }
    const ds = this.nodes.map((x) => x.disk.stats);
    for (const k of ["lost", "readErrors", "damaged", "refused", "syncs"] as const) {
      this.count(`disk.${k}`, ds.reduce((s, d) => s + d[k], 0));
    }
    this.count("events", this.created.size);
    this.count("virtualMs", this.sched.now - T0);
  }

  /**
   * After the heal: a tombstone whose signer the truth lets delete all it names, once one holder of its group holds
   * it, is held by every holder, and no holder holds any of its targets.
   */
  checkDeleted(): void {
    for (const t of this.tombs.values()) {
      const g = this.groups.find((x) => x.gid === t.gid)!;
      const holders = this.holders(g).map((i) => this.nodes[i]!);
      const has = (nd: SimNode, id: string) => nd.disk.has(eventKey(fromHexGid(id)));
      const at = holders.filter((nd) => has(nd, t.id));
      this.count("healTombstonesHeld", at.length ? 1 : 0);
      if (!at.length || !this.mayDeleteAll(t)) continue;
      for (const nd of holders) {
        if (!has(nd, t.id)) this.violation(`n${nd.i} lacks tombstone ${t.id.slice(0, 12)} (${this.describe(t.id)})`);
        for (const id of t.targets) {
          if (has(nd, id)) {
            this.violation(`n${nd.i} holds ${id.slice(0, 12)} (${this.describe(id)}) deleted by ${t.id.slice(0, 12)}`);
          }
        }
      }
    }
  }

  /** After the heal: no holder of a group holds an application event below its retention boundary there. */
  checkRetained(): void {
    for (const g of this.groups) {
      for (const i of this.holders(g)) {
        const nd = this.nodes[i]!;
        const b = this.boundaryAt(nd, g.gid);
        if (b > 0) this.count("healRetained");
        for (const k of nd.disk.keys(KS.time, g.gid)) {
          const c = this.created.get(k.slice(-64));
          if (c && c.kind >= 16 && c.ts < b) {
            this.violation(
              `n${i} holds ${k.slice(-64, -52)} (${this.describe(k.slice(-64))}) below ${g.name}'s boundary ${b - T0}`,
            );
            break;
          }
        }
      }
    }
  }

  /** Who should hold each group (all for the open one, the current members for a closed one). */
  holders(g: GroupInfo): number[] {
    if (g.policy === POLICY_OPEN) return this.nodes.map((x) => x.i);
    const st = this.truth(g);
    return this.nodes.filter((x) => st.isMember(x.key.publicKey)).map((x) => x.i);
  }

  /** A closed group's membership as its owner made it. */
  truth(g: GroupInfo): GroupState {
    const st = new GroupState(this.nodes[g.owner]!.key.publicKey, g.policy);
    st.apply(g.membership);
    return st;
  }

  /** Groups whose holders disagree: "name: n0 root…, n1 root…". */
  async divergence(): Promise<string[]> {
    const out: string[] = [];
    for (const g of this.groups) {
      const roots: string[] = [];
      for (const i of this.holders(g)) {
        const nd = this.nodes[i]!;
        const held = nd.disk.has(groupKey(fromHexGid(g.gid)));
        roots.push(held ? (await nd.run!.store.root(g.gid)).root : "none");
      }
      if (new Set(roots).size > 1) out.push(g.gid);
    }
    return out;
  }

  /** Divergence after the heal: explained by the known late-write issue, or a violation. */
  classify(gids: string[]): void {
    for (const gid of gids) {
      const { odd, unexplained } = this.explain(gid);
      const msg = `${this.name(gid)} diverged after ${HEAL_ROUNDS_MAX} heal rounds: ${odd.slice(0, 6).join("; ")}`;
      if (unexplained || odd.length === 0) this.violation(msg);
      else this.known.push(`seed ${this.seed}: ${msg}`);
    }
  }

  /** What the holders of a group disagree on: each event not held by all, and how many are not late writes. */
  explain(gid: string): { odd: string[]; unexplained: number } {
    const g = this.groups.find((x) => x.gid === gid)!;
    const truth = this.truth(g);
    const sets = this.holders(g).map((i) => ({
      i,
      ids: new Set([...this.nodes[i]!.disk.keys(KS.time, gid)].map((k) => k.slice(-64))),
    }));
    const union = new Set(sets.flatMap((s) => [...s.ids]));
    const odd: string[] = [];
    let unexplained = 0, lates = 0, prunedOnly = 0;
    for (const id of union) {
      const lacking = sets.filter((s) => !s.ids.has(id)).map((s) => s.i);
      if (!lacking.length) continue;
      const c = this.created.get(id);
      const lateOf = (x: { author: number; ts: number }) => !truth.canWrite(this.nodes[x.author]!.key.publicKey, x.ts);
      const late = c !== undefined && lateOf(c);
      // Deleted where it lacks by a late tombstone (one dated after its signer's removal) held there.
      const lateTombs = [...this.tombs.values()].filter((t) => t.gid === gid && t.targets.includes(id) && lateOf(t));
      const byLate = !late && c !== undefined && lateTombs.length > 0 &&
        lacking.every((i) => lateTombs.some((t) => this.nodes[i]!.disk.has(eventKey(fromHexGid(t.id)))));
      // Forgotten where it lacks by retention: explained only beside a late write (which moves the boundary).
      const pruned = !late && !byLate && c !== undefined && c.kind >= 16 &&
        lacking.every((i) => c.ts < (this.nodes[i]!.floor.get(gid) ?? 0));
      if (late) lates++;
      else if (pruned) prunedOnly++;
      else if (!byLate) unexplained++;
      odd.push(
        `${id.slice(0, 12)} (${this.describe(id)}${
          late
            ? ", dated after its author's removal"
            : byLate
            ? ", deleted there by a late tombstone"
            : pruned
            ? ", below the retention boundary there"
            : ""
        }) not at [${lacking}]`,
      );
    }
    return { odd, unexplained: unexplained + (lates > 0 ? 0 : prunedOnly) };
  }
}

/** A session's end, for the tally: its error code, or the first words of its reason. */
function endOf(reason: string): string {
  const code = /^(?:peer error )?([A-Z_]{4,})\b/.exec(reason)?.[1];
  return code ?? reason.split(/[\s:]+/).slice(0, 3).join("_");
}

/** Bytes of a hex string (gid, id or key). */
function fromHexGid(hex: string): Uint8Array {
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(i * 2, i * 2 + 2), 16);
  return out;
}

/**
 * One connection's two directions. Frames are delivered in order after a latency, except where the seed drops,
 * duplicates or reorders one; a close from one end reaches the other after what that end sent; a cut loses what is
 * in flight and tells both ends (the end whose node died at once).
 */
class SimLink {
  readonly ends: [FrameChannel, FrameChannel];
  readonly inflight: [number, number] = [0, 0];
  #sendOpen: [boolean, boolean] = [true, true];
  #endClosed: [boolean, boolean] = [false, false];
  #cut = false;
  #lastAt: [number, number] = [0, 0];

  constructor(readonly w: World, readonly id: number, readonly faults: LinkFaults, readonly rand: Rand) {
    const end = (k: 0 | 1): FrameChannel => ({
      send: (f) => this.#send(k, f),
      close: (reason) => this.#closeFrom(k, reason),
      onFrame: null,
      onClose: null,
      buffered: () => this.inflight[k],
    });
    this.ends = [end(0), end(1)];
  }

  #lat(): number {
    return int(this.rand, this.faults.latMin, this.faults.latMax);
  }

  #send(k: 0 | 1, f: Uint8Array): void {
    if (!this.#sendOpen[k]) return;
    const w = this.w;
    const bytes = f.slice();
    const r = this.rand();
    const fz = this.faults;
    if (r < fz.drop) {
      w.count("framesDropped");
      w.log(`L${this.id} drop ${k} ${bytes.length}`);
      return;
    }
    let at = w.sched.now + this.#lat();
    if (r < fz.drop + fz.reorder) {
      w.count("framesReordered");
      at = w.sched.now + this.faults.latMin; // may overtake frames still in flight
    } else at = Math.max(at, this.#lastAt[k]);
    this.#lastAt[k] = Math.max(this.#lastAt[k], at);
    this.#deliverAt(k, at, bytes);
    if (r >= fz.drop + fz.reorder && r < fz.drop + fz.reorder + fz.dup) {
      w.count("framesDuplicated");
      this.#deliverAt(k, at, bytes);
    }
  }

  #deliverAt(k: 0 | 1, at: number, bytes: Uint8Array): void {
    this.inflight[k] += bytes.length;
    this.w.sched.add(at - this.w.sched.now, () => {
      this.inflight[k] -= bytes.length;
      const to = k === 0 ? 1 : 0;
      if (this.#cut || this.#endClosed[to]) return;
      this.w.count("frames");
      this.w.lastFrameAt = this.w.sched.now;
      this.w.hash(bytes);
      this.w.log(`L${this.id} ${k}>${to} ${bytes.length}`);
      this.ends[to].onFrame?.(bytes);
    }, "net");
  }

  #closeFrom(k: 0 | 1, reason: string): void {
    if (this.#endClosed[k]) return;
    this.#endClosed[k] = true;
    this.#sendOpen[k] = false;
    const to = k === 0 ? 1 : 0;
    const at = Math.max(this.w.sched.now + this.#lat(), this.#lastAt[k] + 1);
    this.w.sched.add(at - this.w.sched.now, () => {
      this.#sendOpen[to] = false;
      if (this.#endClosed[to]) return;
      this.#endClosed[to] = true;
      this.w.log(`L${this.id} closed at ${to}: ${reason.slice(0, 60)}`);
      this.ends[to].onClose?.(reason);
    }, "net");
  }

  /** The network fails: nothing more arrives; `dead`'s end hears at once, the other after a latency. */
  cut(reason: string, dead?: 0 | 1): void {
    if (this.#cut) return;
    this.#cut = true;
    this.#sendOpen = [false, false];
    this.w.log(`L${this.id} cut: ${reason}`);
    for (const k of [0, 1] as const) {
      if (this.#endClosed[k]) continue;
      this.#endClosed[k] = true;
      const tell = () => this.ends[k].onClose?.(reason);
      if (k === dead) tell();
      else this.w.sched.add(this.#lat(), tell, "net");
    }
  }
}
