// A deterministic, seeded simulation of one node's pipeline (issue 13, the single-node part). The five stages'
// pure LOGICS (actors/ingest.ts, decode.ts, wal_flush.ts, index.ts, advertise.ts) run under a scheduler driven by
// one seed: no Worker, no host, no MessagePort, no real clock.
//
// What is simulated, and what is real:
// - Time: a simulated clock, handed to the stages as the `now` of their Input messages (never Date.now).
// - Links: simulated queues with link.ts's rules (window, credit back when the receiver's batch is `done` and
//   everything it produced has left the receiver's outlets, resend of what was not credited after the receiver
//   restarts, probation of one batch, a batch that crashed its receiver twice is dead-lettered). Frames in
//   transit, credits in transit, and signals (FIFO per port) are each delivered when the seed says.
// - decode `verify`: real, actors/verify.ts verifyAll. decode `load`: the real index runtime's
//   `index.groupStates`, answered once the index holds every acknowledged seq (as the root does).
// - ingest `lookup`: the real index runtime's `index.has` (or, by seed, "the index is restarting": no answer).
// - wal_flush `append`: a real storage/wal.ts `Wal` over tests/_power_loss_fs.ts (in memory; it needs no timer).
//   Appends are issued to the WAL in the order the logic asks (as the host does) and their answers come back in
//   that order (the WAL resolves group commits in order); when, is up to the seed. wal_flush's own runtime is NOT
//   used (it opens real files for its reserve and retention record); retention (segment deletion) is not
//   simulated, so WAL replay always starts at the index's checkpoint, as root.ts's start does.
// - index `write` and its reads: the REAL index runtime (actors/index.ts `effects(ctx)` with `dir: null`, so a
//   MemoryKv). The MemoryKv's contents are the node's "disk": they survive a crash of the index stage and a power
//   loss (MemoryKv has no memtable, so FlushTracker counts every write as flushed; RocksDB losing unsynced writes
//   is not simulated).
// - The root: a small model of actors/root.ts (outbox sent when the ingest link has credit, reports, dead letters,
//   replay at start before taking requests).
//
// Faults by seed: a crash of one stage (its state re-inited, its runtime restarted, its uncredited input resent);
// a power loss (the WAL file system keeps only synced data plus a random torn tail, every stage and link is lost,
// then the node starts again: WAL recovery, replay after the index's checkpoint); a poison batch (decode crashes
// on any batch holding one chosen event). Workload by seed: authors publishing to an open and a closed group, the
// closed group's owner adding and removing members, an outsider writing to the closed group, duplicates, bad
// signatures.
import { sha256 } from "@noble/hashes/sha2";
import { logic as ingestLogic, type Presence } from "../actors/ingest.ts";
import { logic as decodeLogic } from "../actors/decode.ts";
import { logic as walLogic } from "../actors/wal_flush.ts";
import { effects as indexEffects, type IndexEffect, logic as indexLogic } from "../actors/index.ts";
import { logic as advertiseLogic } from "../actors/advertise.ts";
import type { EventResultWire, HostContext, Report, StageLogic } from "../actors/stage.ts";
import { type EventBatch, packBatch, unpackBatch } from "../actors/batch.ts";
import { verifyAll } from "../actors/verify.ts";
import { Wal } from "../storage/wal.ts";
import { PowerLossFs } from "./_power_loss_fs.ts";
import { MemoryKv } from "../storage/kv.ts";
import { type Limits, limitsWith } from "../core/limits.ts";
import { type KeyPair, keyPairFromSeed } from "../storage/ed25519.ts";
import { createGroup, KIND_MEMBERSHIP, POLICY_CLOSED, POLICY_OPEN, signEvent } from "../storage/event.ts";
import { ACTION_ADD, ACTION_REMOVE, encodeMembership } from "../storage/membership.ts";
import { cborArrayOf } from "../storage/cbor.ts";
import { toHex } from "../core/bytes.ts";
import { KS } from "../storage/keys.ts";
import { sfc32 } from "./_rand.ts";
export { sfc32 };

// ---------- seeded randomness ----------

// ---------- options ----------

/** Deliberate breakage, to show the invariants can fail (never set in the committed tests' normal runs). */
export interface Sabotage {
  /** The WAL's fdatasync does nothing (PowerLossFs `noSync`). */
  noSync?: boolean;
  /** A stage credits its input batch as soon as it takes it, not when the batch is done and sent on. */
  creditOnTake?: boolean;
  /** The root does not fence a dead decode's writes off before the new decode loads groups (issue 11 comes back). */
  noDecodeFence?: boolean;
  /** The root sets a batch the index crashed on twice aside and skips its seqs, as before `isolate` (known bug 3). */
  noIndexIsolation?: boolean;
}

/** Options of one simulation run. */
export interface SimOptions {
  seed: number;
  /** Scheduler steps before the final quiesce (default 800). */
  steps?: number;
  /** Per step: chance of a stage crash (default 0.01). */
  crashRate?: number;
  /** Per step: chance of a power loss (default 0.004, at most `powerLossMax`). */
  powerLossRate?: number;
  powerLossMax?: number;
  /** Put one poison event in the workload (default true). */
  poison?: boolean;
  /** Crash decode once, right after it sends the closed group's removal of member A on to wal_flush (issue 11). */
  crashDecodeAfterRemoval?: boolean;
  sabotage?: Sabotage;
}

/** What a run found. */
export interface SimResult {
  seed: number;
  hash: string;
  violations: string[];
  /**
   * Violations explained by a known bug (sim_pipeline_test.ts KNOWN BUGS: an acknowledged batch dead-lettered into
   * wal_flush or the index), kept apart from `violations` (the pinned tests in sim_pipeline_test.ts fail on them).
   */
  known: string[];
  /** Notable, not invariant failures (a stage logic throwing, stuck requests…). */
  notes: string[];
  stats: Record<string, number>;
}

// ---------- the model ----------

type Name = "ingest" | "decode" | "wal_flush" | "index" | "advertise";
const STAGES: Name[] = ["ingest", "decode", "wal_flush", "index", "advertise"];
// deno-lint-ignore no-explicit-any
type AnyLogic = StageLogic<any, any, any>;
const LOGICS: Record<Name, AnyLogic> = {
  ingest: ingestLogic as AnyLogic,
  decode: decodeLogic as AnyLogic,
  wal_flush: walLogic as AnyLogic,
  index: indexLogic as AnyLogic,
  advertise: advertiseLogic as AnyLogic,
};
/** Data links: from, to, name at the sender (root.ts LINKS). */
const DATA: [Name | "root", Name, string][] = [
  ["root", "ingest", "ingest"],
  ["ingest", "decode", "decode"],
  ["decode", "wal_flush", "wal"],
  ["wal_flush", "index", "index"],
  ["index", "advertise", "advertise"],
];
const EPOCH_MS = 1_700_000_000_000;
const WAL_DIR = "/sim/wal";
/** Requests the root puts in one submit to ingest. */
const SUBMIT_REQUESTS_MAX = 4;
/** `XF_SIM_TRACE=1`: print every scheduling decision. */
const TRACE = Deno.env.get("XF_SIM_TRACE") === "1";

/** An event of the workload, as the simulation knows it. */
interface SimEvent {
  hex: string;
  bytes: Uint8Array;
  group: "open" | "closed";
  author: string;
  ts: number;
  kind: number;
  badSig: boolean;
  poison: boolean;
  /** For membership events: the action and the member (hex). */
  action?: number;
  member?: string;
}

interface Frame {
  link: Link;
  s: number;
  msg: unknown;
}

class Link {
  queue: { msg: unknown; crashes: number; alone: boolean }[] = [];
  inflight = new Map<number, { msg: unknown; crashes: number; alone: boolean }>();
  /** Posted, not yet in the receiver's mailbox (a MessagePort's queue). */
  transit: Frame[] = [];
  /** Credits posted back, not yet received. */
  credits: number[] = [];
  next = 1;
  probation = false;
  /** The sending host is gone (crashed): credits to it are dropped. */
  dead = false;
  /** A dead decode's link into wal_flush, fenced off (root.ts `fenceDecode`): what comes by it is handed back. */
  fenced = false;
  constructor(
    readonly name: string,
    readonly from: Name | "root",
    readonly to: Name,
    readonly window: number,
    readonly onPoison: (l: Link, msg: unknown) => void,
  ) {}
  canSend() {
    return this.queue.length === 0 && !this.aloneInFlight() &&
      this.inflight.size < (this.probation ? 1 : this.window);
  }
  /** link.ts `send(msg, alone)`: an `alone` batch goes only with nothing in flight, and nothing goes beside it. */
  send(msg: unknown, alone = false) {
    this.queue.push({ msg, crashes: 0, alone });
    this.pump();
  }
  aloneInFlight() {
    return [...this.inflight.values()].some((f) => f.alone);
  }
  pump() {
    const w = this.probation ? 1 : this.window;
    while (this.queue.length && this.inflight.size < w) {
      if (this.inflight.size > 0 && (this.queue[0]!.alone || this.aloneInFlight())) break;
      const h = this.queue.shift()!;
      const s = this.next++;
      this.inflight.set(s, h);
      this.transit.push({ link: this, s, msg: h.msg });
    }
  }
  credit(s: number) {
    if (!this.inflight.delete(s)) return;
    this.probation = false;
    this.pump();
  }
  /** The receiver was restarted: a new port; what it had not finished is sent again (link.ts `wire(…, true)`). */
  receiverRestarted() {
    this.transit = [];
    this.credits = [];
    if (this.inflight.size > 0) {
      const again = [...this.inflight.values()];
      this.inflight.clear();
      // link.ts: only a batch alone in flight is a suspect.
      if (again.length === 1) again[0]!.crashes++;
      // link.ts: each goes again alone, so the next crash is pinned on one batch.
      for (const a of again) a.alone = true;
      this.probation = true;
      for (const p of again.filter((a) => a.crashes >= 2)) this.onPoison(this, p.msg);
      this.queue.unshift(...again.filter((a) => a.crashes < 2));
    }
    this.pump();
  }
}

interface Stage {
  name: Name;
  logic: AnyLogic;
  state: unknown;
  epoch: number;
  mailbox: Frame[];
  active: Map<number, { link: Link; s: number }>;
  finishing: { tok: number; link: Link; s: number }[];
  nextTok: number;
}

interface PendingEffect {
  id: number;
  stage: Name;
  epoch: number;
  eff: { do: string } & Record<string, unknown>;
  /** wal append: the WAL's answer, issued at once. */
  answer?: Promise<{ ok: true; firstSeq: number } | { ok: false; error: string }>;
  /** decode load: the acknowledged seq the index must hold first. */
  after?: number;
}

interface Req {
  req: number;
  events: SimEvent[];
  results: (EventResultWire | undefined)[];
  /** Was the closed group's removal of member A acknowledged when this request was submitted? */
  removalAckedAtSubmit: boolean;
}

// ---- the index's "disk": one MemoryKv's arrays, adopted by every instance the index runtime opens ----

interface Disk {
  keys: Uint8Array[];
  values: Uint8Array[];
}
let adopt: Disk | null = null;
const origGet = MemoryKv.prototype.get;
let patched = 0;
function patchKv() {
  if (patched++ > 0) return;
  MemoryKv.prototype.get = function (this: MemoryKv, key: Uint8Array) {
    if (adopt) {
      const self = this as unknown as Disk;
      self.keys = adopt.keys;
      self.values = adopt.values;
      adopt = null;
    }
    return origGet.call(this, key);
  };
}
function unpatchKv() {
  if (--patched === 0) MemoryKv.prototype.get = origGet;
}

function startsWith(k: Uint8Array, p: Uint8Array) {
  if (k.length < p.length) return false;
  for (let i = 0; i < p.length; i++) if (k[i] !== p[i]) return false;
  return true;
}

const noCtx: HostContext = {
  ask: () => Promise.reject(new Error("no root in the simulation")),
  request: () => Promise.reject(new Error("no request ports in the simulation")),
  receive: () => {},
  room: () => Promise.resolve(),
};

/** One simulation run. */
export class Sim {
  readonly rand: () => number;
  readonly limits: Limits;
  readonly fs: PowerLossFs;
  readonly disk: Disk = { keys: [], values: [] };
  readonly hasher = sha256.create();
  readonly violations: string[] = [];
  readonly notes: string[] = [];
  /** Violations of a known, reported bug (KNOWN_BUG below), kept apart so the suite guards everything else. */
  readonly known: string[] = [];
  readonly stats: Record<string, number> = {
    steps: 0,
    submitted: 0,
    stored: 0,
    duplicate: 0,
    rejected: 0,
    crashes: 0,
    powerLosses: 0,
    deadLetters: 0,
    replayed: 0,
    logicThrows: 0,
    indexWrites: 0,
  };
  clock = EPOCH_MS;
  step = 0;
  stages = {} as Record<Name, Stage>;
  links = new Map<string, Link>();
  /** Links whose sender died, still holding posted frames. */
  deadLinks: Link[] = [];
  signals = new Map<string, unknown[]>();
  pending: PendingEffect[] = [];
  nextEffect = 1;
  indexRt!: {
    start(st: unknown, config: unknown): Promise<void>;
    run(eff: IndexEffect, st?: unknown): Promise<unknown>;
    call(msg: { type: string } & Record<string, unknown>, st?: unknown): Promise<unknown>;
    stop(st?: unknown): Promise<void>;
  };
  wal!: Wal;
  replayIt: AsyncIterator<{ seq: bigint; payload: Uint8Array }[]> | null = null;
  replayFed = 0;
  // root
  ready = false;
  replayWaiting = 0;
  ackedSeq = 0;
  nextReq = 1;
  requests = new Map<number, Req>();
  outbox: { req: number; gid: null; reader: null; body: Uint8Array }[] = [];
  // what the world knows
  events = new Map<string, SimEvent>();
  acked = new Map<string, SimEvent>();
  /** Ids dead-lettered or poison: excluded from nothing, only reported. */
  indexDirty = true;
  // workload
  keys!: {
    openOwner: KeyPair;
    closedOwner: KeyPair;
    authors: KeyPair[];
    memberA: KeyPair;
    memberB: KeyPair;
    outsider: KeyPair;
  };
  groups!: { open: Uint8Array; closed: Uint8Array };
  setup: SimEvent[] = [];
  bodies: Uint8Array[] = [];
  addB: SimEvent | null = null;
  removeA: SimEvent | null = null;
  poisonHex = "";
  counter = 0;
  powerLosses = 0;

  constructor(readonly opts: SimOptions) {
    this.rand = sfc32(opts.seed);
    this.limits = limitsWith({
      stage_mailbox_batches_max: 3,
      stage_batch_events_max: 4,
      wal_commit_records_max: 8,
      index_batch_events_max: 8,
      wal_segment_bytes_max: 4096,
      decode_verify_workers_max: 0,
    });
    this.fs = new PowerLossFs({ noSync: opts.sabotage?.noSync ?? false, rand: sfc32(opts.seed ^ 0x5f3759df) });
    this.fs.beforeOp = (op) => this.onWalOp(op);
  }

  trace(line: string) {
    if (TRACE) console.log(`${this.step}|${line}`);
    this.hasher.update(new TextEncoder().encode(`${this.step}|${line}\n`));
  }
  violate(what: string, known = false) {
    const list = known ? this.known : this.violations;
    if (list.length < 20) list.push(`seed ${this.opts.seed} step ${this.step}: ${what}`);
  }
  r(n: number) {
    return Math.floor(this.rand() * n);
  }

  // ---------- boot, crash, power loss ----------

  async boot() {
    for (const n of STAGES) {
      this.stages[n] = {
        name: n,
        logic: LOGICS[n],
        state: LOGICS[n].init({ limits: this.limits }),
        epoch: (this.stages[n]?.epoch ?? 0) + 1,
        mailbox: [],
        active: new Map(),
        finishing: [],
        nextTok: 1,
      };
    }
    this.links.clear();
    this.deadLinks = [];
    for (const [from, to, as] of DATA) this.links.set(`${from}>${to}`, this.newLink(from, to, as));
    this.signals.clear();
    for (const f of ["root", "decode", "wal_flush", "index"]) this.signals.set(f, []);
    this.pending = [];
    await this.startIndex();
    this.wal = (await Wal.open(WAL_DIR, { checkpointSeq: 0n, fs: this.fs, limits: this.limits })).wal;
    // root.ts start: replay the WAL after the index's checkpoint, then take requests.
    const cp = (this.stages.index.state as { checkpoint: number }).checkpoint;
    this.replayIt = this.wal.replay(BigInt(cp))[Symbol.asyncIterator]();
    this.replayFed = 0;
    this.replayWaiting = 0;
    this.ready = false;
    this.ackedSeq = 0;
    this.decodeRestarts = 0;
    this.decodeFence = null;
    this.isolateIt = null;
    this.isolations = [];
    this.trace(`boot cp=${cp}`);
  }

  newLink(from: Name | "root", to: Name, as: string) {
    return new Link(as, from, to, this.limits.stage_mailbox_batches_max, (l, m) => this.dead(l, m));
  }

  async startIndex() {
    adopt = this.disk;
    this.indexRt = indexEffects(noCtx) as unknown as Sim["indexRt"];
    await this.indexRt.start(this.stages.index.state as never, { limits: this.limits, dir: null });
    if (adopt) throw new Error("the index runtime did not open its MemoryKv");
    this.indexDirty = true;
  }

  /** Let it crash: the host stops, the supervisor starts the stage again and rewires its links. */
  async crash(name: Name, why: string) {
    this.stats.crashes!++;
    this.trace(`crash ${name} ${why}`);
    const st = this.stages[name];
    const mine = this.pending.filter((p) => p.stage === name);
    this.pending = this.pending.filter((p) => p.stage !== name);
    if (name === "index") {
      // A write the logic asked for may have reached the store before the crash, or not.
      for (const p of mine) {
        if (p.eff.do === "write" && this.rand() < 0.5) {
          this.trace("write landed before the crash");
          await this.indexRt.run(p.eff as IndexEffect).catch(() => {});
        }
      }
      await this.indexRt.stop(st.state as never);
    }
    if (name === "wal_flush") {
      // Acknowledged, not indexed yet: at risk of the second known bug.
      for (const h of this.acked.keys()) if (!this.indexedIds.has(h)) this.atRiskAtWalCrash.add(h);
      // stop(): the WAL closes once its queued group commits are done (synced, never acknowledged).
      await this.wal.close().catch(() => {});
      // root.ts `isolate`: the call dies with the host; the resend after its restart covers the records.
      await this.isolateIt?.return?.(undefined);
      this.isolateIt = null;
      this.isolations = [];
    }
    // The host's outgoing links die with it (posted frames still arrive); its signal ports close.
    for (const [key, l] of this.links) {
      if (l.from === name) {
        l.dead = true;
        if (name === "decode" && !this.opts.sabotage?.noDecodeFence) l.fenced = true;
        l.queue = [];
        if (l.transit.length) this.deadLinks.push(l);
        this.links.set(key, this.newLink(l.from, l.to, l.name));
      }
    }
    if (name !== "ingest") this.signals.set(name, []);
    else for (const k of this.signals.keys()) this.signals.set(k, []);
    if (name === "decode") {
      this.decodeRestarts++;
      // root.ts `fenceDecode` (issue 11): wal_flush fences the dead decode's link: its frames not yet taken go back
      // (released in ingest); the new decode's loads wait until those wal_flush had taken are done, then for the
      // index to hold the WAL's last seq.
      if (!this.opts.sabotage?.noDecodeFence) {
        const w = this.stages.wal_flush;
        for (const f of w.mailbox.filter((f) => f.link.fenced)) this.fencedOff(f.link, f.msg);
        w.mailbox = w.mailbox.filter((f) => !f.link.fenced);
        this.decodeFence = { seq: null };
      }
    }
    st.state = st.logic.init({ limits: this.limits });
    st.epoch++;
    st.mailbox = [];
    st.active.clear();
    st.finishing = [];
    st.nextTok = 1;
    if (name === "index") await this.startIndex();
    if (name === "wal_flush") {
      this.wal = (await Wal.open(WAL_DIR, { checkpointSeq: 0n, fs: this.fs, limits: this.limits })).wal;
    }
    for (const l of this.links.values()) if (l.to === name) l.receiverRestarted();
    if (name === "wal_flush" && this.ready) {
      // root.ts `restarted`: the WAL sends again every record after the index's contiguous checkpoint.
      const cp = (this.stages.index.state as { checkpoint: number }).checkpoint;
      this.replayIt = this.wal.replay(BigInt(cp))[Symbol.asyncIterator]();
      this.replayFed = 0;
      this.trace(`resend after ${cp}`);
    }
  }

  async powerLoss(now = true) {
    this.stats.powerLosses!++;
    this.powerLosses++;
    this.armed = false;
    this.trace("power loss");
    if (now) this.fs.powerLoss();
    await this.indexRt.stop(this.stages.index.state as never);
    // The clients of open requests see the connection drop.
    this.requests.clear();
    this.outbox = [];
    await this.boot();
  }

  /** root.ts `fenceDecode`: the fence of the last decode restart; `seq` the WAL's last seq once it is done. */
  decodeFence: { seq: number | null } | null = null;

  /** The seq a decode load waits for beyond the acks it saw: null while the fence waits for wal_flush. */
  decodeFenceSeq(): number | null {
    const f = this.decodeFence;
    if (!f) return 0;
    if (f.seq === null) {
      if ([...this.stages.wal_flush.active.values()].some((a) => a.link.fenced)) return null;
      f.seq = Number(this.wal.stats().lastSeq);
      this.trace(`decode fence done at seq ${f.seq}`);
    }
    return f.seq;
  }

  /** root.ts `fencedOff`: a batch of a dead decode wal_flush did not take: released in ingest, not answered. */
  fencedOff(l: Link, msg: unknown) {
    const m = msg as { batch?: EventBatch };
    void l;
    if (!m.batch) return;
    const items = unpackBatch(m.batch);
    this.stats.fenced = (this.stats.fenced ?? 0) + items.length;
    this.trace(`fenced ${items.length}`);
    const ids = new Uint8Array(items.length * 32);
    items.forEach((it, i) => ids.set(it.id, i * 32));
    this.signals.get("root")!.push({ type: "release", ids, stored: false });
  }

  /**
   * root.ts `isolate`: the records of a batch the index crashed on twice go again one at a time, read from the WAL
   * (wal_flush `wal.isolate`), each alone on the link; paced by the link's room, as the runtime's loop is.
   */
  isolations: number[][] = [];
  isolateIt: AsyncIterator<{ seq: bigint; payload: Uint8Array }> | null = null;
  async *isolateRecords(seqs: number[]): AsyncGenerator<{ seq: bigint; payload: Uint8Array }> {
    const want = new Set(seqs);
    const lo = Math.min(...seqs), hi = Math.max(...seqs);
    const found = new Set<number>();
    read: for await (const recs of this.wal.replay(BigInt(lo - 1))) {
      for (const r of recs) {
        const q = Number(r.seq);
        if (q > hi) break read;
        if (want.has(q) && !found.has(q)) {
          found.add(q);
          yield r;
        }
      }
    }
    // Read to the end (not stopped by a wal_flush crash): what the WAL does not hold cannot be sent again.
    const missing = seqs.filter((q) => !found.has(q));
    if (missing.length) {
      this.trace(`isolate missing ${missing}`);
      this.stats.isolateMissing = (this.stats.isolateMissing ?? 0) + missing.length;
      void this.indexRt.call({ type: "index.skip", seqs: Float64Array.from(missing) } as never, null as never);
    }
  }
  async isolateNext() {
    if (!this.isolateIt) this.isolateIt = this.isolateRecords(this.isolations[0]!)[Symbol.asyncIterator]();
    const r = await this.isolateIt.next();
    if (r.done) {
      this.isolateIt = null;
      this.isolations.shift();
      return;
    }
    this.trace(`isolate ${r.value.seq}`);
    const item = { bytes: r.value.payload, req: 0, idx: 0, id: new Uint8Array(32), seq: Number(r.value.seq) };
    this.receive(this.stages.wal_flush, { type: "isolated", batch: packBatch([item]) });
  }

  /** root.ts `dead`: a batch crashed its receiver twice. */
  dead(l: Link, msg: unknown) {
    const m = msg as {
      batch?: EventBatch;
      subs?: { req: number }[];
      requests?: { req: number }[];
      isolated?: boolean;
    };
    if (m.batch && l.to === "index" && !m.isolated && !this.opts.sabotage?.noIndexIsolation) {
      // root.ts `isolate`: not set aside; sent again event by event.
      this.stats.isolated = (this.stats.isolated ?? 0) + m.batch.ends.length;
      this.trace(`isolate ${[...m.batch.seqs]}`);
      this.isolations.push([...m.batch.seqs]);
      return;
    }
    this.stats.deadLetters!++;
    if (m.batch && (l.to === "wal_flush" || l.to === "index")) {
      for (const it of unpackBatch(m.batch)) this.deadAfterAck.add(toHex(it.id));
    }
    this.trace(`dead ${l.to} ${m.subs ? `subs ${m.subs.length}` : `events ${m.batch?.ends.length ?? 0}`}`);
    if (m.subs) {
      for (const s of m.subs) this.requests.delete(s.req);
      return;
    }
    for (const r of m.requests ?? []) this.requests.delete(r.req);
    if (m.batch && l.to === "index") {
      // root.ts `dead`: the index's checkpoint must not wait on a dead letter's seqs.
      void this.indexRt.call({ type: "index.skip", seqs: m.batch.seqs } as never, this.stages.index.state as never);
    }
    if (!m.batch || l.to === "index" || l.to === "advertise") return;
    const items = unpackBatch(m.batch);
    this.settle(
      items.filter((it) => it.req).map((it) => ({
        req: it.req,
        idx: it.idx,
        status: "rejected" as const,
        id: toHex(it.id),
        code: "INTERNAL",
        message: "dead letter",
      })),
    );
    const ids = new Uint8Array(items.length * 32);
    items.forEach((it, i) => ids.set(it.id, i * 32));
    this.signals.get("root")!.push({ type: "release", ids, stored: false });
  }

  // ---------- the host's part ----------

  pumpStage(st: Stage) {
    while (st.mailbox.length && st.active.size < st.logic.concurrency) {
      const f = st.mailbox.shift()!;
      const tok = st.nextTok++;
      st.active.set(tok, { link: f.link, s: f.s });
      if (this.opts.sabotage?.creditOnTake) f.link.credits.push(f.s);
      if (st.name === "decode" && this.poisonHex && this.holds(f.msg, this.poisonHex)) {
        this.pendingCrash = { name: st.name, why: "poison batch" };
        return;
      }
      this.receive(st, { type: "input", from: f.link.from, tok, msg: f.msg, now: this.clock });
      if (this.pendingCrash) return;
    }
  }
  pendingCrash: { name: Name; why: string } | null = null;
  removalSent = false;
  removalCrashed = false;

  /**
   * `crashDecodeAfterRemoval`: decode sent the removal on and ingest has its credit for it (so it is not sent to decode
   * again), and the removal is not acknowledged yet: the moment issue 11 needs.
   */
  removalInFlightPastDecode(): boolean {
    if (!this.removalSent || this.removalCrashed || !this.removeA || this.acked.has(this.removeA.hex)) return false;
    const hex = this.removeA.hex;
    const l = this.links.get("ingest>decode")!;
    if ([...l.inflight.values(), ...l.queue].some((x) => this.holds(x.msg, hex))) return false;
    return true;
  }

  holds(msg: unknown, hex: string): boolean {
    const b = (msg as { batch?: EventBatch }).batch;
    if (!b) return false;
    for (let i = 0; i < b.ends.length; i++) if (toHex(b.ids.subarray(i * 32, i * 32 + 32)) === hex) return true;
    return false;
  }

  receive(st: Stage, msg: unknown) {
    let effs: ({ do: string } & Record<string, unknown>)[];
    try {
      effs = st.logic.receive(st.state, msg);
    } catch (e) {
      this.stats.logicThrows!++;
      this.notes.push(`seed ${this.opts.seed} step ${this.step}: ${st.name} threw: ${(e as Error).message}`);
      this.pendingCrash = { name: st.name, why: `threw ${(e as Error).message}` };
      return;
    }
    for (const e of effs) this.perform(st, e);
  }

  perform(st: Stage, e: { do: string } & Record<string, unknown>) {
    switch (e.do) {
      case "send": {
        const l = [...this.links.values()].find((l) => l.from === st.name && l.name === e.to);
        if (!l) throw new Error(`${st.name} has no link "${e.to}"`);
        l.send(e.msg, e.alone === true);
        if (
          st.name === "decode" && this.opts.crashDecodeAfterRemoval && !this.removalCrashed && this.removeA &&
          this.holds(e.msg, this.removeA.hex)
        ) {
          this.removalSent = true;
        }
        return;
      }
      case "signal":
        this.signals.get(st.name)!.push(e.msg);
        return;
      case "report":
        return this.report(st.name, e.msg as Report);
      case "done": {
        const a = st.active.get(e.tok as number);
        if (!a) return;
        st.active.delete(e.tok as number);
        if (this.opts.sabotage?.creditOnTake) return this.pumpStage(st);
        st.finishing.push({ tok: e.tok as number, link: a.link, s: a.s });
        return;
      }
      default: {
        const p: PendingEffect = { id: this.nextEffect++, stage: st.name, epoch: st.epoch, eff: e };
        if (e.do === "append") {
          p.answer = this.wal.append(e.records as Uint8Array[]).then(
            (r) => ({ ok: true as const, firstSeq: Number(r.firstSeq) }),
            (err) => ({ ok: false as const, error: String(err) }),
          );
        }
        if (e.do === "load") p.after = this.ackedSeq;
        this.pending.push(p);
      }
    }
  }

  // ---------- the root's part ----------

  report(from: Name, m: Report) {
    switch (m.type) {
      case "results":
        return this.settle(m.items);
      case "failed":
        this.trace(`failed ${m.req} ${m.code}`);
        this.requests.delete(m.req);
        return;
      case "appended":
        this.ackedSeq = Math.max(this.ackedSeq, m.lastSeq);
        return;
      case "indexed":
        this.indexDirty = true;
        this.stats.indexWrites!++;
        if (m.replayN) {
          this.replayWaiting -= m.replayN;
          if (this.replayWaiting <= 0 && !this.replayIt) this.ready = true;
        }
        return;
      case "split":
      case "full":
      case "deliver":
      case "dead":
        return;
    }
    void from;
  }

  settle(items: EventResultWire[]) {
    for (const it of items) {
      const r = this.requests.get(it.req);
      if (!r || r.results[it.idx]) continue;
      r.results[it.idx] = it;
      this.stats[it.status]!++;
      const ev = r.events[it.idx];
      if (r.results.filter(Boolean).length === r.events.length) this.requests.delete(it.req);
      this.trace(`result ${it.req}.${it.idx} ${it.status} ${it.code ?? ""} ${it.id?.slice(0, 12) ?? ""}`);
      if (it.status === "duplicate" && ev) this.duplicates.add(ev.hex);
      if (it.status !== "stored" || !ev) continue;
      if (it.id !== ev.hex) this.violate(`stored result for ${it.req}.${it.idx} names ${it.id}, not ${ev.hex}`);
      this.acked.set(ev.hex, ev);
      // A closed-group event by a non-member is never acknowledged.
      if (ev.badSig) this.violate(`event with a bad signature acknowledged: ${ev.hex}`);
      if (ev.poison) this.violate(`poison event acknowledged: ${ev.hex}`);
      if (ev.group === "closed" && ev.kind >= 16) {
        if (ev.author === toHex(this.keys.outsider.publicKey)) {
          this.violate(`closed-group event by an outsider acknowledged: ${ev.hex}`);
        }
        if (
          ev.author === toHex(this.keys.memberA.publicKey) && r.removalAckedAtSubmit && this.removeA &&
          ev.ts >= this.removeA.ts
        ) {
          this.violate(
            `closed-group event by member A after its acknowledged removal acknowledged: ${ev.hex}${
              this.deadAfterAck.has(this.removeA.hex)
                ? " (the removal was dead-lettered into wal_flush or the index)"
                : ""
            }`,
            // Known bug 3 (sim_pipeline_test.ts): an acknowledged removal dead-lettered on its way into the index is
            // never indexed, so any decode that loads the group later (restart, power loss) lacks it.
            this.deadAfterAck.has(this.removeA.hex),
          );
        }
      }
    }
  }

  // ---------- the workload ----------

  async makeKeys() {
    const k = async (i: number) => {
      const s = new Uint8Array(32);
      new DataView(s.buffer).setUint32(0, this.opts.seed >>> 0);
      s[31] = i;
      return await keyPairFromSeed(s);
    };
    this.keys = {
      openOwner: await k(1),
      closedOwner: await k(2),
      authors: [await k(3), await k(4), await k(5)],
      memberA: await k(6),
      memberB: await k(7),
      outsider: await k(8),
    };
    const nonce = (i: number) => new Uint8Array(16).fill(i);
    const o = await createGroup(this.keys.openOwner, {
      name: "open",
      policy: POLICY_OPEN,
      ts: EPOCH_MS,
      nonce: nonce(1),
    });
    const c = await createGroup(this.keys.closedOwner, {
      name: "closed",
      policy: POLICY_CLOSED,
      ts: EPOCH_MS,
      nonce: nonce(2),
    });
    this.groups = { open: o.gid, closed: c.gid };
    const addA = await this.membership(ACTION_ADD, this.keys.memberA, EPOCH_MS + 1);
    this.setup = [
      this.register(o.manifest.bytes, toHex(o.manifest.id), "open", this.keys.openOwner, EPOCH_MS, 0),
      this.register(c.manifest.bytes, toHex(c.manifest.id), "closed", this.keys.closedOwner, EPOCH_MS, 0),
      addA,
    ];
  }

  register(
    bytes: Uint8Array,
    hex: string,
    group: "open" | "closed",
    author: KeyPair,
    ts: number,
    kind: number,
    extra: Partial<SimEvent> = {},
  ): SimEvent {
    const ev: SimEvent = {
      hex,
      bytes,
      group,
      author: toHex(author.publicKey),
      ts,
      kind,
      badSig: false,
      poison: false,
      ...extra,
    };
    if (!this.events.has(hex)) this.events.set(hex, ev);
    return this.events.get(hex)!;
  }

  async membership(action: typeof ACTION_ADD | typeof ACTION_REMOVE, member: KeyPair, ts: number): Promise<SimEvent> {
    const e = await signEvent(this.keys.closedOwner, {
      group: this.groups.closed,
      ts,
      kind: KIND_MEMBERSHIP,
      tags: [],
      payload: encodeMembership({ action, member: member.publicKey }),
    });
    return this.register(e.bytes, toHex(e.id), "closed", this.keys.closedOwner, ts, KIND_MEMBERSHIP, {
      action,
      member: toHex(member.publicKey),
    });
  }

  async app(group: "open" | "closed", author: KeyPair, ts: number, extra: Partial<SimEvent> = {}): Promise<SimEvent> {
    const n = this.counter++;
    const e = await signEvent(author, {
      group: this.groups[group],
      ts,
      kind: 16 + (n % 3),
      tags: [["n", String(n)]],
      payload: new TextEncoder().encode(`sim ${this.opts.seed} event ${n}`),
    });
    if (extra.badSig) {
      const bytes = e.bytes.slice();
      bytes[bytes.length - 1]! ^= 0x01; // the signature is the last field
      return this.register(bytes, toHex(sha256(bytes)), group, author, ts, e.kind, { badSig: true });
    }
    return this.register(e.bytes, toHex(e.id), group, author, ts, e.kind, extra);
  }

  submit(events: SimEvent[]) {
    const req = this.nextReq++;
    const body = cborArrayOf(events.map((e) => e.bytes));
    this.bodies.push(body);
    this.bodyEvents.set(body, events);
    this.stats.submitted! += events.length;
    this.requests.set(req, {
      req,
      events,
      results: [],
      removalAckedAtSubmit: !!this.removeA && this.acked.has(this.removeA.hex),
    });
    this.outbox.push({ req, gid: null, reader: null, body });
    this.trace(`submit ${req} ${events.map((e) => e.hex.slice(0, 12)).join(",")}`);
  }

  async workload() {
    const ts = () => this.clock - this.r(5000);
    const k = this.r(100);
    if (this.nextReq === 1 || k < 4) return this.submit(this.setup); // setup first, resent now and then
    if (k < 40) {
      const author = this.keys.authors[this.r(3)]!;
      const n = 1 + this.r(3);
      const evs = [];
      for (let i = 0; i < n; i++) evs.push(await this.app("open", author, ts()));
      return this.submit(evs);
    }
    if (k < 60) {
      const who = [this.keys.closedOwner, this.keys.memberA, this.keys.memberB][this.r(3)]!;
      return this.submit([await this.app("closed", who, ts())]);
    }
    if (k < 66) return this.submit([await this.app("closed", this.keys.outsider, ts())]);
    if (k < 70 && !this.addB) {
      this.addB = await this.membership(ACTION_ADD, this.keys.memberB, this.clock);
      return this.submit([this.addB]);
    }
    if (k < 74 && !this.removeA && this.step > 100) {
      this.removeA = await this.membership(ACTION_REMOVE, this.keys.memberA, this.clock);
      return this.submit([this.removeA]);
    }
    if (k < 74 && this.removeA) {
      // Resent until acknowledged, then member A writes again (must be refused).
      if (!this.acked.has(this.removeA.hex)) return this.submit([this.removeA]);
      return this.submit([await this.app("closed", this.keys.memberA, this.clock)]);
    }
    if (k < 86 && this.bodies.length) {
      // A duplicate: a whole earlier request sent again.
      const body = this.bodies[this.r(this.bodies.length)]!;
      const evs = this.eventsOf(body);
      if (evs) return this.submit(evs);
    }
    if (k < 94) {
      return this.submit([
        await this.app(this.r(2) ? "open" : "closed", this.keys.authors[0]!, ts(), { badSig: true }),
      ]);
    }
    if (this.opts.poison !== false && !this.poisonHex) {
      const ev = await this.app("open", this.keys.authors[1]!, ts(), { poison: true });
      this.poisonHex = ev.hex;
      return this.submit([ev]);
    }
    return this.submit([await this.app("open", this.keys.authors[2]!, ts())]);
  }

  bodyEvents = new Map<Uint8Array, SimEvent[]>();
  eventsOf(body: Uint8Array): SimEvent[] | null {
    return this.bodyEvents.get(body) ?? null;
  }

  // ---------- scheduling ----------

  /** Every step that may happen now, in a fixed order (the seed picks one). */
  ready_(): { label: string; run: () => Promise<void> | void }[] {
    const out: { label: string; run: () => Promise<void> | void }[] = [];
    for (const l of [...this.links.values(), ...this.deadLinks]) {
      if (l.transit.length) {
        out.push({
          label: `deliver ${l.from}>${l.to}`,
          run: () => {
            const f = l.transit.shift()!;
            if (l.fenced) return this.fencedOff(l, f.msg);
            const st = this.stages[l.to];
            st.mailbox.push(f);
            this.pumpStage(st);
          },
        });
      }
      if (l.credits.length) out.push({ label: `credit ${l.from}>${l.to}`, run: () => l.credit(l.credits.shift()!) });
    }
    this.deadLinks = this.deadLinks.filter((l) => l.transit.length);
    for (const n of STAGES) {
      const st = this.stages[n];
      if (!st.finishing.length) continue;
      const outs = [...this.links.values()].filter((l) => l.from === n);
      if (!outs.every((l) => l.queue.length === 0)) continue;
      out.push({
        label: `finish ${n}`,
        run: () => {
          const f = st.finishing.shift()!;
          if (!f.link.dead) f.link.credits.push(f.s);
          this.pumpStage(st);
        },
      });
    }
    for (const [from, q] of this.signals) {
      if (!q.length) continue;
      out.push({
        label: `signal ${from}`,
        run: () => this.receive(this.stages.ingest, { type: "signal", from, msg: q.shift() }),
      });
    }
    const walHead = this.pending.find((p) => p.eff.do === "append");
    for (const p of this.pending) {
      if (p.eff.do === "append" && p !== walHead) continue;
      if (p.eff.do === "load") {
        const fence = this.decodeFenceSeq();
        if (fence === null) continue;
        if ((this.stages.index.state as { checkpoint: number }).checkpoint < Math.max(p.after!, fence)) continue;
      }
      out.push({ label: `effect ${p.stage} ${p.eff.do} #${p.id}`, run: () => this.runEffect(p) });
    }
    const toIngest = this.links.get("root>ingest")!;
    if (this.ready && this.outbox.length && toIngest.canSend()) {
      out.push({
        label: "root flush",
        // The root bounds a submit (by bytes, http_body_bytes_max; here by requests).
        run: () => toIngest.send({ type: "submit", subs: this.outbox.splice(0, SUBMIT_REQUESTS_MAX) }),
      });
    }
    const replayLink = this.links.get("wal_flush>index")!;
    if (this.replayIt && replayLink.queue.length === 0) out.push({ label: "replay", run: () => this.replayNext() });
    if (this.isolations.length && replayLink.queue.length === 0) {
      out.push({ label: "isolate", run: () => this.isolateNext() });
    }
    return out;
  }

  async replayNext() {
    const r = await this.replayIt!.next();
    if (r.done) {
      this.replayIt = null;
      this.replayWaiting += this.replayFed;
      this.stats.replayed! += this.replayFed;
      this.trace(`replay done ${this.replayFed}`);
      if (this.replayWaiting <= 0) this.ready = true;
      return;
    }
    const items = r.value;
    this.replayFed += items.length;
    const batch = packBatch(items.map((x) => ({
      bytes: x.payload,
      req: 0,
      idx: 0,
      id: new Uint8Array(32),
      seq: Number(x.seq),
    })));
    this.receive(this.stages.wal_flush, { type: "replayed", batch });
  }

  async runEffect(p: PendingEffect) {
    this.pending = this.pending.filter((x) => x !== p);
    const st = this.stages[p.stage];
    if (st.epoch !== p.epoch) return;
    const e = p.eff;
    let answer: unknown;
    switch (e.do) {
      case "lookup": {
        let known: Presence[] = [];
        if (this.rand() >= 0.1) {
          known = await this.indexRt.call({ type: "index.has", ids: e.ids }, null as never) as Presence[];
        }
        answer = { type: "looked", tok: e.tok, known };
        break;
      }
      case "verify":
        answer = { type: "verified", tok: e.tok, ok: verifyAll(e.checks as never) };
        break;
      case "load": {
        const groups = await this.indexRt.call({ type: "index.groupStates", gids: e.gids }, null as never);
        answer = { type: "loaded", groups };
        break;
      }
      case "append": {
        const a = await p.answer!;
        if (!a.ok) {
          this.pendingCrash = { name: "wal_flush", why: `append failed: ${a.error}` };
          return;
        }
        answer = { type: "appended", tok: e.tok, firstSeq: a.firstSeq };
        this.trace(`appended ${a.firstSeq}`);
        break;
      }
      case "write":
        try {
          answer = await this.indexRt.run(e as IndexEffect, st.state as never);
          const w = answer as { stored: Uint8Array; duplicates: Uint8Array; lastSeq: number; toks: number[] };
          const seqs = (e as unknown as { batches: { batch: EventBatch }[] }).batches
            .map((b) => [...b.batch.seqs].join("+")).join(",");
          this.trace(`written toks ${w.toks} stored ${w.stored.length / 32} dup ${w.duplicates.length / 32} ${seqs}`);
          for (const ids of [w.stored, w.duplicates]) {
            for (let i = 0; i < ids.length; i += 32) this.indexedIds.add(toHex(ids.subarray(i, i + 32)));
          }
        } catch (err) {
          this.pendingCrash = { name: "index", why: `write failed: ${(err as Error).message}` };
          return;
        }
        break;
      default:
        throw new Error(`no simulated runtime for effect "${e.do}" of ${p.stage}`);
    }
    if (st.epoch !== p.epoch) return;
    this.receive(st, answer);
  }

  // ---------- invariants ----------

  async checkEveryStep() {
    // Queues bounded: no link holds more than its window in flight, no receiver more than the window from it, and
    // what waits for credit at a sender is bounded by what its batches in service produced.
    for (const l of this.links.values()) {
      const w = l.probation ? 1 : l.window;
      if (l.inflight.size > w) this.violate(`link ${l.from}>${l.to}: ${l.inflight.size} in flight, window ${w}`);
      const st = this.stages[l.to];
      const held = st.mailbox.filter((f) => f.link === l).length +
        [...st.active.values(), ...st.finishing].filter((a) => a.link === l).length + l.transit.length;
      if (held > l.window) this.violate(`stage ${l.to} holds ${held} batches of link ${l.from}>${l.to}`);
      // What waits for credit at a sender: a restarted receiver's unfinished batches (at most a window) sent again,
      // and what the sender's own uncredited input batches produced (credit goes back only once the outlets have
      // room): one batch each, but ingest cuts a submit of at most SUBMIT_REQUESTS_MAX requests into at most one
      // batch per request and one more; wal_flush's replay adds one (it waits for room before the next).
      const fanout = l.from === "ingest" ? SUBMIT_REQUESTS_MAX + 1 : 1;
      const from = l.from === "root" ? null : this.stages[l.from];
      const inputs = from ? from.mailbox.length + from.active.size + from.finishing.length : 0;
      const bound = l.window + fanout * inputs + (l.from === "wal_flush" ? 1 : 0);
      if (l.queue.length > bound) {
        this.violate(`link ${l.from}>${l.to}: ${l.queue.length} batches wait for credit (bound ${bound})`);
      }
    }
    if (this.indexDirty) await this.checkIndex();
  }

  /** No event indexed twice: per group, events = time entries = arrival entries = the Merkle tree's count. */
  async checkIndex() {
    this.indexDirty = false;
    for (const [name, gid] of Object.entries(this.groups)) {
      const time = Uint8Array.of(KS.time, ...gid);
      const arrival = Uint8Array.of(KS.arrival, ...gid);
      let nTime = 0, nArrival = 0;
      const ids = new Set<string>();
      for (const k of this.disk.keys) {
        if (startsWith(k, time)) {
          nTime++;
          ids.add(toHex(k.subarray(k.length - 32)));
        } else if (startsWith(k, arrival)) nArrival++;
      }
      const m = await this.indexRt.call({ type: "index.merkle", gid: toHex(gid) }, null as never) as
        | { count: number }
        | null;
      const count = m?.count ?? 0;
      if (nTime !== ids.size || nArrival !== ids.size || count !== ids.size) {
        this.violate(
          `${name} group: ${ids.size} distinct ids, ${nTime} time entries, ${nArrival} arrival entries, Merkle count ${count}`,
        );
      }
    }
  }

  duplicates = new Set<string>();
  /** Ids in batches dead-lettered on their way into wal_flush or the index (the second known bug). */
  deadAfterAck = new Set<string>();
  /** Ids a write of the index answered as held. */
  indexedIds = new Set<string>();
  /** Acknowledged ids not yet indexed when wal_flush crashed (the second known bug). */
  atRiskAtWalCrash = new Set<string>();

  /** A `duplicate` answer for an event the index does not hold (after quiesce): noted, not an invariant. */
  async checkDuplicates() {
    const list = [...this.duplicates].filter((h) => !this.acked.has(h));
    if (!list.length) return;
    const ids = new Uint8Array(list.length * 32);
    list.forEach((h, i) => ids.set(hexBytes(h), i * 32));
    const has = await this.indexRt.call({ type: "index.has", ids }) as boolean[];
    const missing = list.filter((_, i) => !has[i]);
    if (missing.length) {
      this.stats.duplicateNotHeld = missing.length;
      const kinds = missing.map((h) => {
        const e = this.events.get(h)!;
        return e.badSig ? "bad signature" : e.poison ? "poison" : e.group === "closed" ? "closed group" : "open group";
      });
      this.notes.push(
        `seed ${this.opts.seed}: ${missing.length} events answered "duplicate" are not held (${kinds.join(", ")}; ${
          missing.slice(0, 3).map((h) => h.slice(0, 12)).join(", ")
        })`,
      );
    }
  }

  /** After recovery: every acknowledged event is in the index. */
  async checkAcked(when: string) {
    const list = [...this.acked.values()];
    if (!list.length) return;
    const ids = new Uint8Array(list.length * 32);
    list.forEach((e, i) => ids.set(hexBytes(e.hex), i * 32));
    const has = await this.indexRt.call({ type: "index.has", ids }, null as never) as boolean[];
    // The second known bug loses the index's copy only: the WAL still holds the record. An acknowledged event the
    // WAL lost too is a durability failure, never excused.
    const inWal = new Set<string>();
    if (has.some((h) => !h)) {
      for await (const recs of this.wal.replay(0n)) for (const r of recs) inWal.add(toHex(sha256(r.payload)));
    }
    list.forEach((e, i) => {
      if (!has[i]) {
        const dead = this.deadAfterAck.has(e.hex) && inWal.has(e.hex);
        const risk = this.atRiskAtWalCrash.has(e.hex) && inWal.has(e.hex);
        this.violate(
          `${when}: acknowledged event ${e.hex} (${e.group}) missing from the index${
            dead ? " (its batch was dead-lettered into wal_flush or the index)" : ""
          }${risk ? " (acknowledged, not yet indexed when wal_flush crashed)" : ""}`,
          dead || risk,
        );
      }
    });
    // A closed-group event by member B is acknowledged only with B's addition held too.
    const b = toHex(this.keys.memberB.publicKey);
    if (list.some((e) => e.group === "closed" && e.kind >= 16 && e.author === b) && this.addB) {
      const [held] = await this.indexRt.call(
        { type: "index.has", ids: hexBytes(this.addB.hex) },
        null as never,
      ) as boolean[];
      if (!held) this.violate(`${when}: member B's event acknowledged, B's addition not held`);
    }
  }

  // ---------- the run ----------

  /** Crashes of decode alone since the last boot (a whole restart reloads every group from a caught-up index). */
  decodeRestarts = 0;
  armed = false;
  powerGone = false;
  onWalOp(op: string) {
    if (!this.armed || this.rand() < 0.3) return;
    this.armed = false;
    this.powerGone = true;
    this.trace(`power goes at a WAL ${op}`);
    this.fs.powerLoss();
    throw new Error(`power lost at a WAL ${op}`);
  }

  async one(allowFaults: boolean, allowWork: boolean): Promise<boolean> {
    if (this.powerGone) {
      this.powerGone = false;
      await this.powerLoss(false);
      return true;
    }
    this.step++;
    this.stats.steps!++;
    if (this.opts.crashDecodeAfterRemoval && this.removalInFlightPastDecode()) {
      this.removalCrashed = true;
      await this.crash("decode", "injected: the removal is on its way to the WAL");
      return true;
    }
    this.clock += this.r(30);
    if (allowFaults && this.ready) {
      const f = this.rand();
      const crashRate = this.opts.crashRate ?? 0.01;
      const plRate = this.opts.powerLossRate ?? 0.004;
      // More likely while acknowledged events wait for the index (what recovery must replay).
      const lag = this.ackedSeq > (this.stages.index.state as { checkpoint: number }).checkpoint;
      const pl = lag ? plRate * 5 : plRate;
      if (f < pl && this.powerLosses < (this.opts.powerLossMax ?? 2)) {
        if (this.rand() < 0.5) {
          await this.powerLoss();
          return true;
        }
        // Or the power goes at the WAL's next write or sync (between a write and its fdatasync, say).
        this.armed = true;
        this.trace("power loss armed");
      }
      if (f < plRate + crashRate) {
        await this.crash(STAGES[this.r(STAGES.length)]!, "injected");
        return true;
      }
    }
    if (allowWork && this.ready && this.rand() < 0.3) {
      await this.workload();
      return true;
    }
    const ready = this.ready_();
    if (!ready.length) return false;
    const a = ready[this.r(ready.length)]!;
    this.trace(a.label);
    await a.run();
    while (this.pendingCrash) {
      const c = this.pendingCrash;
      this.pendingCrash = null;
      await this.crash(c.name, c.why);
    }
    return true;
  }

  async quiesce(): Promise<void> {
    for (let i = 0; i < 200_000; i++) {
      if (!(await this.one(false, false))) return;
      await this.checkEveryStep();
    }
    this.notes.push(`seed ${this.opts.seed}: did not quiesce`);
  }

  async run(): Promise<SimResult> {
    patchKv();
    try {
      await this.makeKeys();
      await this.boot();
      return await this.body();
    } catch (e) {
      // The node could not go on (e.g. the WAL refused to open after a power loss): that is a failure too.
      this.violate(`the simulation stopped: ${(e as Error).message}`);
      return this.result();
    } finally {
      unpatchKv();
      await this.wal?.close().catch(() => {});
    }
  }

  /** The state of links, stages and effects (for a trace). */
  dump(): string {
    const out: string[] = [];
    for (const l of [...this.links.values(), ...this.deadLinks]) {
      out.push(
        `link ${l.from}>${l.to}${l.dead ? " (dead)" : ""}: queue ${l.queue.length} inflight [${[
          ...l.inflight.keys(),
        ]}] ` +
          `transit ${l.transit.length} credits ${l.credits.length} probation ${l.probation}`,
      );
    }
    for (const st of Object.values(this.stages)) {
      out.push(
        `stage ${st.name} e${st.epoch}: mailbox ${st.mailbox.length} active [${[...st.active.keys()]}] finishing ${
          st.finishing.map((f) => f.tok)
        } state ${
          JSON.stringify(st.state, (k, v) =>
            k === "limits" ? undefined : v instanceof Map ? [...v.keys()] : v instanceof Set ? [...v].length : v)
            .slice(0, 300)
        }`,
      );
    }
    for (const p of this.pending) out.push(`pending #${p.id} ${p.stage} ${p.eff.do} e${p.epoch} after ${p.after}`);
    out.push(`signals ${[...this.signals].map(([k, v]) => `${k}:${v.length}`)}; outbox ${this.outbox.length}`);
    return out.join("\n");
  }

  result(): SimResult {
    return {
      seed: this.opts.seed,
      hash: toHex(this.hasher.digest()),
      violations: this.violations,
      known: this.known,
      notes: this.notes,
      stats: this.stats,
    };
  }

  async body(): Promise<SimResult> {
    {
      const steps = this.opts.steps ?? 800;
      for (let i = 0; i < steps; i++) {
        await this.one(true, true);
        await this.checkEveryStep();
        if (this.violations.length) break;
        if (this.readyAfterBoot()) await this.checkAcked("after recovery");
      }
      await this.quiesce();
      await this.checkAcked("at the end");
      await this.checkDuplicates();
      // Requests still open once nothing can happen: their clients would wait for the timeout.
      if (this.requests.size) {
        if (TRACE) console.log(this.dump());
        this.stats.stuckRequests = this.requests.size;
        this.notes.push(
          `seed ${this.opts.seed}: ${this.requests.size} requests never answered (${
            [...this.requests.values()].map((r) => `${r.req}: ${r.results.filter(Boolean).length}/${r.events.length}`)
              .slice(0, 5).join(", ")
          })`,
        );
      }
      await this.powerLoss();
      await this.quiesce();
      await this.checkAcked("after the final power loss and recovery");
      await this.checkIndex();
      this.stats.acked = this.acked.size;
      this.trace(`end acked=${this.acked.size}`);
      return this.result();
    }
  }

  wasReady = true;
  /** True once, when the node becomes ready after a boot (the replay is indexed). */
  readyAfterBoot(): boolean {
    const now = this.ready;
    const edge = now && !this.wasReady;
    this.wasReady = now;
    return edge;
  }
}

function hexBytes(hex: string): Uint8Array {
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** Run one seed. */
export function simulate(opts: SimOptions): Promise<SimResult> {
  return new Sim(opts).run();
}
