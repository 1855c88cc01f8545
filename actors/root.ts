/**
 * The root actor: the pipeline declared as data (its stages, its links,
 * their limits, its supervision), the supervisor that keeps it running,
 * admission (503 past the in-flight limit), and the per-request results.
 * The root is not on the data path: batches flow on direct links between
 * the stages' Workers; the root hears only their reports (results, acks,
 * progress, deliveries) and answers the rare request a stage asks it.
 *
 * ```
 *  HTTP / library ─► root ═► ingest ═► decode ═► wal_flush ═► index ═► advertise
 *                     ▲        ║ ▲ ▲     │          │   │       │ ║        │
 *                     │        ╚═══════════════ index.has (request port) ══╝
 *                     │          └─┴──────── release (signals) ─────┘
 *                     └── reports: split, failed, results (acks), appended, indexed, deliver, dead
 * ```
 *
 * @module
 */

import { type InitMessage, inProcessSpawner, type Spawned, workerSpawner } from "./stage_ref.ts";
import { Supervisor } from "./supervisor.ts";
import { log } from "./log.ts";
import { nowMs, Outlet } from "./link.ts";
import type { OutletSpec, ToHost } from "./host.ts";
import type { EventResultWire, Report } from "./stage.ts";
import { type EventBatch, type EventResult, unpackBatch } from "./batch.ts";
import {
  DECODE_FENCE_RETRY_MS,
  type Limits,
  limitsWith,
  MEMORY_BUDGET_BYTES,
  MEMORY_RELIEF_EVERY_MS,
  MEMORY_RELIEF_RATIO,
} from "../core/limits.ts";
import type { Submission } from "./ingest.ts";
import type { SubscriptionFilter } from "./advertise.ts";
import { XfError } from "../core/errors.ts";
import { toHex } from "../core/bytes.ts";
import { openDataDir } from "../storage/format.ts";
import { DATA_FORMAT_VERSION } from "../version.ts";
import { Histogram, type HistogramData } from "./histogram.ts";
import { encodeCbor } from "../storage/cbor.ts";

/** The pipeline's stages, in start order; each id is also its file (`actors/<id>.ts`). */
export const STAGES = ["ingest", "decode", "wal_flush", "index", "advertise"] as const;
/** A stage name. */
export type StageName = typeof STAGES[number];

/** A link of the pipeline: `as` is its name at the sender. */
export interface LinkSpec {
  /** data: batches with credit; signal: small feedback, no credit; rpc: requests and replies. */
  kind: "data" | "signal" | "rpc";
  from: StageName | "root";
  to: StageName;
  as: string;
}

/** The wiring, as data. */
export const LINKS: readonly LinkSpec[] = [
  { kind: "data", from: "root", to: "ingest", as: "ingest" },
  { kind: "data", from: "ingest", to: "decode", as: "decode" },
  { kind: "data", from: "decode", to: "wal_flush", as: "wal" },
  { kind: "data", from: "wal_flush", to: "index", as: "index" },
  { kind: "data", from: "index", to: "advertise", as: "advertise" },
  { kind: "signal", from: "root", to: "ingest", as: "ingest" },
  { kind: "signal", from: "decode", to: "ingest", as: "ingest" },
  { kind: "signal", from: "wal_flush", to: "ingest", as: "ingest" },
  { kind: "signal", from: "index", to: "ingest", as: "ingest" },
  { kind: "signal", from: "index", to: "decode", as: "decode" },
  { kind: "rpc", from: "ingest", to: "index", as: "index" },
];

/**
 * Each stage's thread priority (Linux nice value) when it runs in a Worker. The index is off the acknowledgement path:
 * on a machine with fewer cores than busy threads its RocksDB and Merkle work yields to the threads an
 * acknowledgement waits for, and catches up when they idle (its backlog is bounded by `pipeline_inflight_events_max`).
 */
export const STAGE_NICE: Readonly<Record<StageName, number>> = {
  ingest: 0,
  decode: 0,
  wal_flush: 0,
  index: 10,
  advertise: 0,
};

/**
 * Faults to inject in tests: a stage crashes on its Nth data batch (once), or on every poison batch (with
 * `poisonCrashes`, only until it has restarted that many times: a fault beside a batch, not in it).
 */
export type Faults = Partial<
  Record<StageName, { crashAtBatch?: number; poisonPrefix?: string; poisonCrashes?: number }>
>;

/** Options of a pipeline. */
export interface PipelineOptions {
  /** Data directory (WAL under `wal/`, RocksDB under `db/`). */
  dataDir: string;
  limits?: Partial<Limits>;
  /** Run stages in Workers (default) or in-process over MessageChannels. */
  workers?: boolean;
  faults?: Faults;
  /** Called when the supervisor gives up (restart intensity exceeded). */
  onFatal?: (e: XfError) => void;
  /** Thread priorities of stages in Workers, over {@linkcode STAGE_NICE} (0: as the process). */
  nice?: Partial<Record<StageName, number>>;
}

interface OpenRequest {
  n: number | null;
  /** Events the body announces (its CBOR array head), counted in flight until ingest has split it. */
  est: number;
  results: (EventResult | undefined)[];
  settled: number;
  /** When the request was admitted (performance.now() ms), for `xf_ack_seconds`. */
  admitted: number;
  resolve(r: EventResult[]): void;
  reject(e: XfError): void;
  timer: ReturnType<typeof setTimeout>;
}

/** Figures for /metrics. */
export interface PipelineCounters {
  requests: number;
  eventsIn: number;
  stored: number;
  duplicates: number;
  rejected: Record<string, number>;
  overloaded: number;
  walAppended: number;
  indexed: number;
  indexBatches: number;
  restarts: number;
  deadLetters: number;
  /** WAL checkpoint rounds run (each asks the index what RocksDB's tables hold and drops covered segments). */
  walCheckpoints: number;
  /** Events a dead decode had admitted that wal_flush fenced off after its restart (never appended from there). */
  fenced: number;
  /** Events of batches the index crashed on twice, sent to it again one at a time from the WAL (`isolate`). */
  isolated: number;
}

/** A batch set aside after it crashed a stage twice. */
export interface DeadLetter {
  stage: StageName;
  at: string;
  events: number;
  error: string;
  /** The file holding its events (CBOR array of event bytes), under the data directory. */
  file: string;
}

/** Per stage: queue wait and service time histograms (seconds), batches served. */
export interface StageTimings {
  queue: HistogramData;
  service: HistogramData;
  batches: number;
  mailbox: number;
}

/** The root actor and its supervised pipeline. */
export class Pipeline {
  readonly limits: Limits;
  readonly supervisor: Supervisor;
  readonly counters: PipelineCounters = {
    requests: 0,
    eventsIn: 0,
    stored: 0,
    duplicates: 0,
    rejected: {},
    overloaded: 0,
    walAppended: 0,
    indexed: 0,
    indexBatches: 0,
    restarts: 0,
    deadLetters: 0,
    walCheckpoints: 0,
    fenced: 0,
    isolated: 0,
  };
  /** Per event stored or duplicate: seconds from its request's admission to its acknowledgement. */
  readonly ackSeconds: Histogram = new Histogram();
  /** Batches set aside (newest last, at most `dead_letters_max`). */
  readonly deadLetters: DeadLetter[] = [];
  state: "starting" | "ready" | "stopping" | "stopped" | "failed" = "starting";
  /** What recovery did at the last start. */
  recovery = "";
  /** The disk is full: writes are refused with STORAGE_FULL (reads are served) until space returns. */
  storageFull = false;

  private nextReq = 1;
  private nextSub = 1;
  private requests = new Map<number, OpenRequest>();
  private outbox: Submission[] = [];
  private outboxBytes = 0;
  private flushScheduled = false;
  #waitingCredit = false;
  private ackedNotIndexed = 0;
  /** Highest WAL seq acknowledged: reads wait until the index holds it (read your writes). */
  private ackedSeq = 0;
  private replayWaiting = 0;
  private replayDone: (() => void) | null = null;
  private subscribers = new Map<
    number,
    { filter: SubscriptionFilter; cb: (events: Uint8Array[], seqs: number[]) => void }
  >();
  private lastCheckpoint = 0;
  private checkpointTimer: ReturnType<typeof setTimeout> | null = null;
  private startedOnce = new Set<StageName>();
  private lastCrash = new Map<string, string>();
  /** The root's own link into ingest, and its signal port. */
  private toIngest: Outlet<{ type: "submit"; subs: Submission[] }>;
  private ingestSignal: MessagePort | null = null;
  /** Link ends made at boot, taken by each stage's first init. */
  private bootEnds: Map<string, MessagePort> | null = null;

  constructor(readonly opts: PipelineOptions) {
    this.limits = limitsWith(opts.limits);
    const workers = opts.workers ?? true;
    this.toIngest = new Outlet(
      "ingest",
      this.limits.stage_mailbox_batches_max,
      this.limits.stage_link_bytes_max,
      (p) => this.dead("ingest", p.msg),
    );
    this.supervisor = new Supervisor(
      STAGES.map((name) => ({
        id: name,
        start: this.spawner(name, workers),
        init: () => this.init(name),
        restart: "permanent" as const,
        shutdownMs: this.limits.stage_shutdown_ms,
      })),
      {
        strategy: "one_for_one",
        limits: this.limits,
        intensityMax: this.limits.restart_intensity_max,
        periodMs: this.limits.restart_period_ms,
        onReport: (from, msg) => this.report(from as StageName, msg),
        onAsk: (from, msg) => this.answer(msg, from as StageName),
        onRestart: (ids, cause) => this.restarted(ids as StageName[], cause),
        onEscalate: (e) => this.fatal(e),
      },
    );
  }

  private spawner(name: StageName, workers: boolean): () => Spawned {
    if (!workers) return inProcessSpawner();
    return workerSpawner(
      new URL("./stage_worker.ts", import.meta.url),
      (e) => this.supervisor.child(name).crashed(e),
    );
  }

  /** Ends of every link at boot. */
  private makeBootEnds() {
    const ends = new Map<string, MessagePort>();
    for (const l of LINKS) {
      const ch = new MessageChannel();
      ends.set(`${l.kind}:${l.from}>${l.to}:tx`, ch.port1);
      ends.set(`${l.kind}:${l.from}>${l.to}:rx`, ch.port2);
    }
    return ends;
  }

  /**
   * The init message of a stage's (re)start. At boot its ends come from the boot table; at a restart every link
   * touching it is made anew and the peers are handed their new ends (an upstream sender then sends again what
   * the crashed stage had not finished).
   */
  private init(name: StageName): InitMessage {
    const boot = this.bootEnds;
    const restart = !boot;
    const msg: Extract<ToHost, { t: "init" }> = {
      t: "init",
      stage: name,
      config: this.stageConfig(name),
      inputs: {},
      outputs: {},
      signalsIn: {},
      signalsOut: {},
      rpcOut: {},
      rpcIn: {},
    };
    const transfer: Transferable[] = [];
    const outlet = (port: MessagePort): OutletSpec => ({
      port,
      window: this.limits.stage_mailbox_batches_max,
      bytes: this.limits.stage_link_bytes_max,
    });
    for (const l of LINKS) {
      if (l.from !== name && l.to !== name) continue;
      let tx: MessagePort, rx: MessagePort;
      if (boot) {
        tx = boot.get(`${l.kind}:${l.from}>${l.to}:tx`)!;
        rx = boot.get(`${l.kind}:${l.from}>${l.to}:rx`)!;
      } else {
        const ch = new MessageChannel();
        [tx, rx] = [ch.port1, ch.port2];
      }
      const mine = l.from === name ? tx : rx;
      const theirs = l.from === name ? rx : tx;
      transfer.push(mine);
      if (l.from === name) {
        if (l.kind === "data") msg.outputs[l.as] = outlet(mine);
        else if (l.kind === "signal") msg.signalsOut[l.as] = mine;
        else msg.rpcOut[l.as] = mine;
      } else {
        if (l.kind === "data") msg.inputs[l.from] = mine;
        else if (l.kind === "signal") msg.signalsIn[l.from] = mine;
        else msg.rpcIn[l.from] = mine;
      }
      // The other end: the root's own, or a running peer's (at boot, the peer takes it at its own init).
      if (l.from === "root") {
        if (l.kind === "data") this.toIngest.wire(theirs, restart);
        else {
          this.ingestSignal?.close();
          this.ingestSignal = theirs;
        }
        continue;
      }
      if (!restart) continue;
      const peer = this.supervisor.child(l.from === name ? l.to : l.from);
      const wire: ToHost = l.from === name
        ? (l.kind === "data"
          ? { t: "input", name: l.from, port: theirs }
          : l.kind === "signal"
          ? { t: "signalIn", name: l.from, port: theirs }
          : { t: "rpcIn", name: l.from, port: theirs })
        : (l.kind === "data"
          ? { t: "rewire", out: l.as, port: theirs, restarted: true }
          : l.kind === "signal"
          ? { t: "signalOut", name: l.as, port: theirs }
          : { t: "rpc", name: l.as, port: theirs });
      peer.wire(wire, [theirs]);
    }
    // A restarted decode authorizes only against group states that hold everything its dead incarnation admitted.
    if (restart && name === "decode") this.#decodeFence = this.fenceDecode();
    const fault = this.opts.faults?.[name];
    if (
      fault?.poisonPrefix &&
      (fault.poisonCrashes === undefined || this.supervisor.child(name).stats.restarts < fault.poisonCrashes)
    ) msg.poisonPrefix = fault.poisonPrefix;
    if (fault?.crashAtBatch && !this.startedOnce.has(name)) msg.crashAtBatch = fault.crashAtBatch;
    this.startedOnce.add(name);
    return { msg, transfer };
  }

  private stageConfig(name: StageName): { limits: Limits } & Record<string, unknown> {
    const base: { limits: Limits } & Record<string, unknown> = { limits: this.limits };
    if (name === "wal_flush") base.dir = `${this.opts.dataDir}/wal`;
    if (name === "index") base.dir = `${this.opts.dataDir}/db`;
    // In-process stages share the caller's thread: only a Worker's own thread is re-prioritised.
    const nice = this.opts.nice?.[name] ?? STAGE_NICE[name];
    if ((this.opts.workers ?? true) && nice > 0) base.nice = nice;
    return base;
  }

  /** Start the stages, replay the WAL past the index's checkpoint, and get ready. */
  async start(): Promise<void> {
    // Before any stage touches the WAL: refuse a newer format or a directory another process holds.
    await openDataDir(this.opts.dataDir, DATA_FORMAT_VERSION);
    this.bootEnds = this.makeBootEnds();
    try {
      await this.supervisor.start();
    } finally {
      this.bootEnds = null;
    }
    await this.replay();
    this.state = "ready";
    // Mailbox depths for /health, without a round trip per request.
    // And memory: past MEMORY_RELIEF_RATIO of the budget, every isolate collects its garbage (see relieveMemory).
    const poll = setInterval(() => {
      this.timings().catch(() => {});
      this.checkMemory();
    }, 1000);
    Deno.unrefTimer(poll);
    this.#poll = poll;
  }

  #poll: ReturnType<typeof setInterval> | null = null;
  #lastRelief = -Infinity;

  /** Times every isolate of the node was asked to collect garbage because RSS neared the budget. */
  memoryReliefs = 0;

  private checkMemory() {
    const rss = Deno.memoryUsage().rss;
    const now = performance.now();
    if (rss < MEMORY_BUDGET_BYTES * MEMORY_RELIEF_RATIO || now - this.#lastRelief < MEMORY_RELIEF_EVERY_MS) return;
    this.#lastRelief = now;
    this.relieveMemory().catch(() => {});
  }

  /**
   * Ask every isolate (this thread and each stage's Worker) for a full garbage collection. V8 sizes each heap by its
   * allocation rate, so after a burst of large events the node's eight isolates hold garbage worth about 100 MiB
   * (`tests/memory_test.ts`: 418 MiB after loading 16 MB of 16 KiB events, 333–351 MiB with this; BENCHMARKS.md).
   * Needs `--v8-flags=--expose-gc` (the start task and the README's service unit pass it); without it nothing
   * happens. Returns the isolates that collected.
   */
  async relieveMemory(timeoutMs = 1000): Promise<number> {
    this.memoryReliefs++;
    const gc = (globalThis as { gc?: () => void }).gc;
    if (!gc) return 0;
    gc();
    const done = await Promise.all(STAGES.map(async (s) => {
      try {
        return await this.supervisor.child(s).call<boolean>({ type: "host.gc" }, timeoutMs) ? 1 : 0;
      } catch {
        return 0;
      }
    }));
    return 1 + done.reduce((a: number, b) => a + b, 0);
  }

  private async replay() {
    const cp = await this.index<number>({ type: "index.checkpoint" });
    this.lastCheckpoint = cp;
    const done = new Promise<void>((r) => (this.replayDone = r));
    const { replayed, from, recovery } = await this.supervisor.child("wal_flush").call<
      { replayed: number; from: number; recovery: string }
    >({ type: "wal.replay", after: cp }, this.limits.request_timeout_ms * 6);
    this.replayWaiting += replayed;
    if (this.replayWaiting <= 0) this.replayDone?.();
    await done;
    const { restored } = await this.index<{ restored: number }>({ type: "index.stats" });
    this.recovery = `${recovery}${recovery && !recovery.endsWith(".") ? ". " : recovery ? " " : ""}` +
      `Replayed ${replayed} records after seq ${from} (the index's checkpoint is ${cp})` +
      (restored ? `, restoring ${restored} acknowledged events RocksDB had lost.` : ".");
  }

  private restarted(ids: StageName[], cause: XfError) {
    this.counters.restarts++;
    if (this.state === "ready" && ids.includes("wal_flush")) {
      // Puts it had not sent yet died with it: the WAL sends again what the index lacks. (A restarted index needs
      // no resend: wal_flush's link sends it what it had not finished; resending there would replay a poison
      // batch the index keeps crashing on.)
      this.resend().catch((e) => log.pipeline.error("resend after a restart failed", { error: String(e) }));
    }
    for (const id of ids) this.lastCrash.set(id, `${cause.code}: ${cause.message}`);
    if (ids.includes("advertise")) {
      for (const [sub, s] of this.subscribers) {
        this.supervisor.child("advertise").call({ type: "advertise.subscribe", sub, filter: s.filter }).catch(() => {});
      }
    }
  }

  private fatal(e: XfError) {
    this.state = "failed";
    for (const r of this.requests.values()) {
      clearTimeout(r.timer);
      r.reject(new XfError("STAGE_DOWN", `The pipeline stopped: ${e.message}`));
    }
    this.requests.clear();
    this.opts.onFatal?.(e);
  }

  /** Events admitted and not yet settled and indexed. */
  inflight(): number {
    let n = this.ackedNotIndexed;
    for (const r of this.requests.values()) n += (r.n ?? r.est) - r.settled;
    return n;
  }

  /**
   * Submit a request body (one event or a CBOR array of events); resolves
   * once every event is settled, with one result per event in input order.
   * `reader` (HTTP: the token's hex key, "" anonymous) must be able to see
   * the path group `gid`, else the whole request is `UNKNOWN_GROUP`; the
   * library and peers pass null. Throws `OVERLOADED` past the in-flight
   * limit, or the body's error.
   */
  submit(gid: Uint8Array | null, body: Uint8Array, reader: string | null = null): Promise<EventResult[]> {
    if (this.state !== "ready") {
      return Promise.reject(
        new XfError(this.state === "starting" ? "STAGE_DOWN" : "SHUTTING_DOWN", `Node is ${this.state}`),
      );
    }
    if (this.storageFull) {
      return Promise.reject(new XfError("STORAGE_FULL", "Cannot store events: the disk is full; retry later"));
    }
    if (this.inflight() >= this.limits.pipeline_inflight_events_max) {
      this.counters.overloaded++;
      return Promise.reject(new XfError("OVERLOADED", `Cannot accept more events now: ${this.inflight()} in flight`));
    }
    const req = this.nextReq++;
    this.counters.requests++;
    return new Promise<EventResult[]>((resolve, reject) => {
      const timer = setTimeout(() => this.timeout(req), this.limits.request_timeout_ms);
      this.requests.set(req, {
        n: null,
        est: announcedEvents(body),
        results: [],
        settled: 0,
        admitted: performance.now(),
        resolve,
        reject,
        timer,
      });
      this.outbox.push({ req, gid, reader, body });
      this.outboxBytes += body.length;
      this.scheduleFlush();
    });
  }

  private scheduleFlush() {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    queueMicrotask(() => this.flushOutbox());
  }

  /**
   * Batching by latency: when ingest has credit, what is waiting goes at once (a lone request of 20 events goes
   * alone); while its window is full, requests gather here and go together when credit returns.
   */
  private flushOutbox() {
    this.flushScheduled = false;
    if (!this.outbox.length) return;
    if (!this.toIngest.canSend()) {
      if (!this.#waitingCredit) {
        this.#waitingCredit = true;
        this.toIngest.sendable().then(() => {
          this.#waitingCredit = false;
          this.scheduleFlush();
        });
      }
      return;
    }
    let bytes = 0;
    let k = 0;
    while (
      k < this.outbox.length && (k === 0 || bytes + this.outbox[k]!.body.length <= this.limits.http_body_bytes_max)
    ) {
      bytes += this.outbox[k]!.body.length;
      k++;
    }
    const subs = this.outbox.splice(0, k);
    this.outboxBytes -= bytes;
    this.toIngest.send({ type: "submit", subs });
    if (this.outbox.length) this.scheduleFlush();
  }

  private timeout(req: number) {
    const r = this.requests.get(req);
    if (!r) return;
    this.requests.delete(req);
    const n = r.n ?? 0;
    const out: EventResult[] = [];
    for (let i = 0; i < n; i++) {
      out.push(
        r.results[i] ?? {
          req,
          idx: i,
          status: "rejected",
          code: "TIMEOUT",
          message:
            `Event not settled within ${this.limits.request_timeout_ms} ms; it may still be stored, send it again`,
        },
      );
    }
    if (r.n === null) r.reject(new XfError("TIMEOUT", `Request not split within ${this.limits.request_timeout_ms} ms`));
    else r.resolve(out);
  }

  private settle(items: EventResultWire[]) {
    for (const it of items) {
      const r = this.requests.get(it.req);
      if (!r || r.results[it.idx]) continue; // answered already (a resend after a restart)
      r.results[it.idx] = it;
      r.settled++;
      if (it.status === "stored" || it.status === "duplicate") {
        this.ackSeconds.observe((performance.now() - r.admitted) / 1000);
        if (it.status === "stored") this.counters.stored++;
        else this.counters.duplicates++;
      } else this.counters.rejected[it.code ?? "INTERNAL"] = (this.counters.rejected[it.code ?? "INTERNAL"] ?? 0) + 1;
      this.maybeDone(it.req, r);
    }
  }

  private maybeDone(req: number, r: OpenRequest) {
    if (r.n === null || r.settled < r.n) return;
    clearTimeout(r.timer);
    this.requests.delete(req);
    r.resolve(r.results as EventResult[]);
  }

  private fail(req: number, code: string, message: string) {
    const r = this.requests.get(req);
    if (!r) return;
    clearTimeout(r.timer);
    this.requests.delete(req);
    r.reject(new XfError(code as never, message));
  }

  /** What a stage reports. */
  private report(from: StageName, m: Report) {
    switch (m.type) {
      case "split": {
        const r = this.requests.get(m.req);
        if (!r || r.n !== null) return;
        r.n = m.n;
        this.counters.eventsIn += r.n;
        return this.maybeDone(m.req, r);
      }
      case "failed":
        return this.fail(m.req, m.code, m.message);
      case "results":
        return this.settle(m.items);
      case "appended":
        this.ackedSeq = Math.max(this.ackedSeq, m.lastSeq);
        this.counters.walAppended += m.n;
        this.ackedNotIndexed += m.n;
        return;
      case "indexed":
        return this.indexed(m);
      case "full":
        this.storageFull = m.full;
        return;
      case "deliver":
        return this.deliver(m.batch as EventBatch, m.matches);
      case "dead":
        return this.dead(m.stage as StageName, m.batch, from);
      case "fenced":
        return this.fencedOff(m.batch);
    }
  }

  /**
   * The seq a restarted decode's group loads wait for the index to hold (issue 11). Decode authorizes writes against
   * the group states it holds; a new decode loads them from the index. What the dead decode admitted may still be on
   * its way to the WAL (posted on its link to wal_flush, in wal_flush's mailbox, being appended): a load answered
   * before it is indexed misses it, and a removed member's next write would be admitted. Waiting for the acks known
   * when asked is not enough, and frames on the dead link have no order against anything the root sends, so:
   *  1. `host.fence` (sent to wal_flush after the new decode's link, on the same port): every older inlet from decode
   *     is fenced. Its batches not yet taken, now or arriving later, are never appended: they come back here
   *     (`fenced`): released in ingest, answered by the copy ingest sends the new decode again, else time out.
   *     The answer comes once the batches from it that wal_flush had taken are appended (or refused).
   *  2. `wal.stats`: the WAL's last seq then. Everything the dead decode admitted that will ever be in the WAL is at
   *     or below it (also records a crashed wal_flush wrote and never acknowledged: the resend after its restart
   *     brings them to the index).
   *  3. The new decode's loads (and tombstone target lookups) ask the index with `after` that seq.
   * A wal_flush restart meanwhile keeps the call: the new host has no older inlet (the fence is empty) and the
   * dead decode's batches died with the old host. Nothing changes while decode runs: no round trip per write.
   */
  private fenceDecode(): Promise<number> {
    const wal = this.supervisor.child("wal_flush");
    const fence = (async () => {
      for (;;) {
        try {
          await wal.call({ type: "host.fence", input: "decode" });
          return (await wal.call<{ lastSeq: number }>({ type: "wal.stats" })).lastSeq;
        } catch (e) {
          if (wal.closed || this.state === "stopping" || this.state === "stopped" || this.state === "failed") throw e;
          await new Promise((r) => setTimeout(r, DECODE_FENCE_RETRY_MS));
        }
      }
    })();
    fence.catch(() => {});
    return fence;
  }

  #decodeFence: Promise<number> | null = null;

  /** The seq decode's loads wait for: a restart's fence, bounded by the request timeout (then STAGE_DOWN, retry). */
  private async decodeAfter(): Promise<number> {
    const fence = this.#decodeFence;
    if (!fence) return this.ackedSeq;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(
            new XfError("STAGE_DOWN", "Cannot load the group yet: the restarted decode stage waits for the WAL; retry"),
          ),
        this.limits.request_timeout_ms,
      );
    });
    try {
      return Math.max(this.ackedSeq, await Promise.race([fence, late]));
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Batches of a dead decode that wal_flush fenced off: never appended. Their ids are released in ingest (else a copy
   * sent again would be answered "duplicate" while nothing holds it). Ingest may be sending the same batch to the new
   * decode again (the dead one's credit for it never came back): that copy's answer (stored, duplicate, or refused by
   * the new decode's judgement) is the true one. Ingest is asked which it holds (`host.holds`: its rewire to the new
   * decode came before the fence, on the same port, so its answer is final); the others are answered `STAGE_DOWN` now
   * ("not stored, send it again"), not left to time out.
   */
  private fencedOff(msg: unknown) {
    const batch = (msg as { batch?: EventBatch } | null)?.batch;
    if (!batch) return;
    const items = unpackBatch(batch).map((it) => ({ req: it.req, idx: it.idx, id: it.id.slice() }));
    this.counters.fenced += items.length;
    const ids = new Uint8Array(items.length * 32);
    items.forEach((it, i) => ids.set(it.id, i * 32));
    this.release(ids, false);
    const asked = items.filter((it) => it.req !== 0);
    if (!asked.length) return;
    const askIds = new Uint8Array(asked.length * 32);
    asked.forEach((it, i) => askIds.set(it.id, i * 32));
    this.supervisor.child("ingest").call<Uint8Array>({ type: "host.holds", output: "decode", ids: askIds }).then(
      (held) => {
        const message =
          "The decode stage restarted before this event reached the WAL; it was not stored: send it again";
        this.settle(
          asked.filter((_, i) => held[i] !== 1).map((it) => ({
            req: it.req,
            idx: it.idx,
            status: "rejected" as const,
            code: "STAGE_DOWN",
            message,
          })),
        );
      },
      // Ingest is down too: its own restart answers or times out what it held.
      // Ingest is down too: its own restart answers or times out what it held.
      () => {},
    );
  }

  /**
   * A stage asks the root: a group's state on decode's first touch, or the targets of a batch's tombstones,
   * once the index holds every ack.
   */
  private async answer(msg: { type: string } & Record<string, unknown>, from?: StageName): Promise<unknown> {
    if (msg.type === "index.groupStates" || msg.type === "index.targets") {
      if (from !== "decode") return this.index(msg);
      return this.supervisor.child("index").call({ ...msg, after: await this.decodeAfter() });
    }
    if (msg.type === "index.durable") return this.supervisor.child("index").call(msg);
    return Promise.reject(new XfError("INTERNAL", `The root cannot answer "${msg.type}"`));
  }

  private indexed(m: Extract<Report, { type: "indexed" }>) {
    this.counters.indexBatches++;
    this.counters.indexed += m.stored;
    if (m.replayN) {
      this.replayWaiting -= m.replayN;
      if (this.replayWaiting <= 0) this.replayDone?.();
    }
    this.ackedNotIndexed = Math.max(0, this.ackedNotIndexed - m.n);
    if (m.lastSeq > this.lastCheckpoint) {
      this.lastCheckpoint = m.lastSeq;
      this.scheduleCheckpoint();
    }
  }

  /** The WAL sends the index every record after the index's contiguous checkpoint again. */
  private async resend() {
    this.#resending = true;
    try {
      const after = await this.supervisor.child("index").call<number>({ type: "index.checkpoint" });
      await this.supervisor.child("wal_flush").call({ type: "wal.resend", after }, this.limits.request_timeout_ms * 6);
    } finally {
      this.#resending = false;
    }
  }

  #resending = false;

  /** A checkpoint round `wal_checkpoint_ms` from now, unless one is due already. */
  private scheduleCheckpoint() {
    this.checkpointTimer ??= setTimeout(() => {
      this.checkpointTimer = null;
      this.checkpoint().catch(() => {});
    }, this.limits.wal_checkpoint_ms);
  }

  /** Let the WAL drop the segments the index holds in RocksDB's table files (it asks the index which: `index.durable`). */
  private async checkpoint() {
    // Never while the WAL is being read back (start's replay, a resend): deleting a segment under it would fail it.
    if (this.state !== "ready" || this.#resending) {
      if (this.state === "starting" || this.#resending) {
        this.scheduleCheckpoint();
      }
      return;
    }
    this.counters.walCheckpoints++;
    await this.supervisor.child("wal_flush").call({ type: "wal.checkpoint", seq: this.lastCheckpoint });
  }

  /**
   * A batch crashed `stage` twice: it is set aside with the error, in a dead-letter file under the data
   * directory, and the rest flows. Events not yet durable (before wal_flush's append) are answered `INTERNAL`;
   * events already acknowledged are kept in the file (they are in the WAL until its checkpoint passes them).
   */
  private dead(stage: StageName, msg: unknown, _from?: StageName) {
    const m = msg as { batch?: EventBatch; subs?: Submission[]; replay?: boolean; isolated?: boolean };
    // Acknowledged events are never set aside in a batch: the index gets them again one by one (`isolate`); only an
    // event that crashes it twice on its own comes back here, `isolated`, to be set aside.
    if (stage === "index" && m.batch && !m.isolated) return this.isolate(m.batch, m.replay === true);
    this.counters.deadLetters++;
    const events: Uint8Array[] = m.batch ? unpackBatch(m.batch).map((it) => it.bytes.slice()) : [];
    const error = this.lastCrash.get(stage) ?? "unknown";
    const at = new Date().toISOString();
    const file = `dead-letter/${at.replace(/[:.]/g, "-")}-${stage}-${this.counters.deadLetters}.cbor`;
    this.deadLetters.push({ stage, at, events: m.subs ? m.subs.length : events.length, error, file });
    if (this.deadLetters.length > this.limits.dead_letters_max) this.deadLetters.shift();
    Deno.mkdir(`${this.opts.dataDir}/dead-letter`, { recursive: true })
      .then(() =>
        Deno.writeFile(
          `${this.opts.dataDir}/${file}`,
          encodeCbor(
            new Map<string, string | Uint8Array[]>([
              ["stage", stage],
              ["error", error],
              ["at", at],
              ["events", m.subs ? m.subs.map((s) => s.body) : events],
            ]),
          ),
        )
      )
      .catch((e) => console.error(`Cannot write dead letter ${file}: ${(e as Error).message}`));
    const message = `Event set aside (dead letter ${file}): stage "${stage}" crashed on its batch twice (${error})`;
    if (m.subs) {
      for (const s of m.subs) this.fail(s.req, "INTERNAL", message);
      return;
    }
    // A batch on its way to decode carries requests decode had to judge whole: they fail whole.
    for (const r of (msg as { requests?: { req: number }[] }).requests ?? []) this.fail(r.req, "INTERNAL", message);
    if (m.batch && stage === "index") {
      // A poison event (it crashed the index twice, alone): acknowledged, set aside in the dead-letter file (the WAL
      // keeps it until its checkpoint passes it); the index's checkpoint must not wait on its seq. It was sent as a
      // replayed record (`isolate`): start's replay counts it done.
      this.skip(m.batch.seqs);
      this.replayWaiting -= m.batch.ends.length;
      if (this.replayWaiting <= 0) this.replayDone?.();
    }
    if (!m.batch || stage === "index" || stage === "advertise") return;
    const items = unpackBatch(m.batch);
    this.settle(
      items.filter((it) => it.req).map((it) => ({
        req: it.req,
        idx: it.idx,
        status: "rejected" as const,
        id: toHex(it.id),
        code: "INTERNAL",
        message,
      })),
    );
    const ids = new Uint8Array(items.length * 32);
    items.forEach((it, i) => ids.set(it.id, i * 32));
    this.release(ids, false);
  }

  /**
   * A batch crashed the index twice, alone in flight. Its events are acknowledged (in the WAL), so it is not set
   * aside: the one event that crashes the index may be in it, or the crashes were faults beside it (an index that
   * died twice while the batch happened to be the only one in flight). wal_flush reads its records again from the
   * WAL and sends each to the index by itself, alone on the link (`wal.isolate`): an event the index takes is
   * indexed as a replayed record; an event that crashes it twice more comes back `isolated` and only it is set
   * aside (`dead`). Meanwhile the index's contiguous checkpoint stops below these seqs, so the WAL keeps their
   * segment and a restart of wal_flush or of the node sends them again. Events counted in flight as acknowledged
   * and not indexed (admission) are counted as replayed records from here.
   */
  private isolate(batch: EventBatch, replay: boolean) {
    const n = batch.ends.length;
    this.counters.isolated += n;
    // Replayed records were counted in start's replay already; each comes back `indexed` (or `dead`) as one again.
    if (!replay) this.ackedNotIndexed = Math.max(0, this.ackedNotIndexed - n);
    const seqs = [...batch.seqs];
    log.pipeline.warn("the index crashed twice on a batch: its events go again one at a time", {
      events: n,
      seqs: `${seqs[0]}..${seqs.at(-1)}`,
      error: this.lastCrash.get("index") ?? "unknown",
    });
    this.supervisor.child("wal_flush").call<{ sent: number; missing: number[] }>(
      { type: "wal.isolate", seqs: batch.seqs },
      this.limits.request_timeout_ms * 6,
    ).then(
      ({ missing }) => {
        if (!missing.length) return;
        // Not in the WAL: a checkpoint found them in RocksDB's tables (held), else WAL damage lost them. Either way
        // nothing can send them again, and the index's checkpoint must not wait on them for good.
        log.pipeline.error("records the index crashed on are no longer in the WAL", { seqs: missing.join(",") });
        this.skip(Float64Array.from(missing));
      },
      // wal_flush died first: its restart sends the WAL's records after the index's checkpoint (below these) again.
      (e) => log.pipeline.warn("the index's retry of a batch waits for wal_flush's restart", { error: String(e) }),
    );
  }

  /** The index's checkpoint no longer waits on these seqs (set aside, or gone from the WAL). */
  private skip(seqs: Float64Array) {
    this.supervisor.child("index").call({ type: "index.skip", seqs }).catch(() => {});
  }

  /**
   * Tell ingest these ids are no longer in flight: indexed (`stored`, remembered as recent) or not (forgotten,
   * e.g. dropped as damaged, so a peer's copy is not taken for a duplicate).
   */
  release(ids: Uint8Array, stored: boolean): void {
    this.ingestSignal?.postMessage({ type: "release", ids, stored });
  }

  private deliver(batch: EventBatch, matches: { sub: number; idxs: number[] }[]) {
    const items = unpackBatch(batch);
    for (const { sub, idxs } of matches) {
      const s = this.subscribers.get(sub);
      if (!s) continue;
      try {
        s.cb(idxs.map((i) => items[i]!.bytes.slice()), idxs.map((i) => items[i]!.seq));
      } catch (e) {
        console.error(`Subscriber ${sub} threw: ${(e as Error).message}`);
      }
    }
  }

  /** Ask the index stage; it answers once it holds every event acknowledged so far. */
  index<T>(msg: object, timeoutMs?: number): Promise<T> {
    return this.supervisor.child("index").call<T>({ ...msg, after: this.ackedSeq }, timeoutMs);
  }

  /** Subscribe to events as they are indexed; returns the unsubscribe function. */
  async subscribe(
    filter: SubscriptionFilter,
    cb: (events: Uint8Array[], seqs: number[]) => void,
  ): Promise<() => Promise<void>> {
    const sub = this.nextSub++;
    await this.supervisor.child("advertise").call({ type: "advertise.subscribe", sub, filter });
    this.subscribers.set(sub, { filter, cb });
    return async () => {
      this.subscribers.delete(sub);
      await this.supervisor.child("advertise").call({ type: "advertise.unsubscribe", sub }).catch(() => {});
    };
  }

  /** The last timings fetched (for /health's mailbox depths without a round trip). */
  lastTimings: Partial<Record<StageName, StageTimings>> = {};

  /** Per stage: queue wait and service time (seconds), batches, mailbox; a stage that does not answer is left out. */
  async timings(timeoutMs = 1000): Promise<Partial<Record<StageName, StageTimings>>> {
    const out: Partial<Record<StageName, StageTimings>> = {};
    await Promise.all(STAGES.map(async (s) => {
      try {
        out[s] = await this.supervisor.child(s).call<StageTimings>({ type: "host.timing" }, timeoutMs);
      } catch { /* down */ }
    }));
    this.lastTimings = out;
    return out;
  }

  /** Requests waiting at the root for ingest's credit, in bytes. */
  waitingBytes(): number {
    return this.outboxBytes;
  }

  /** Stop: refuse new work, let in-flight requests finish (bounded), stop stages in reverse. */
  async stop(): Promise<void> {
    if (this.state === "stopped" || this.state === "stopping") return;
    this.state = "stopping";
    const deadline = Date.now() + this.limits.stage_shutdown_ms;
    while ((this.requests.size > 0 || this.ackedNotIndexed > 0) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 10));
    }
    if (this.checkpointTimer) clearTimeout(this.checkpointTimer);
    if (this.#poll !== null) clearInterval(this.#poll);
    await this.supervisor.stop();
    this.toIngest.unwire();
    this.ingestSignal?.close();
    for (const r of this.requests.values()) {
      clearTimeout(r.timer);
      r.reject(new XfError("SHUTTING_DOWN", "Node stopped before the request finished"));
    }
    this.requests.clear();
    this.state = "stopped";
  }
}

/**
 * Events a body announces before ingest splits it: the length in the head of an array of events, else 1. A request
 * waiting at the root for ingest's credit counts this many events in flight, so admission bounds what waits there
 * (counting it as one let thousands of 100-event bodies pile up under overload).
 */
export function announcedEvents(body: Uint8Array): number {
  if (body.length < 2 || body[0]! >> 5 !== 4) return 1;
  const info = body[0]! & 0x1f;
  const head = info < 24 ? 1 : info === 24 ? 2 : info === 25 ? 3 : info === 26 ? 5 : 0;
  // One event is itself an array whose first item is the version (an integer); a batch's first item is an array.
  if (head === 0 || body.length <= head || body[head]! >> 5 !== 4) return 1;
  const v = new DataView(body.buffer, body.byteOffset, body.byteLength);
  const n = info < 24 ? info : info === 24 ? body[1]! : info === 25 ? v.getUint16(1) : v.getUint32(1);
  return Math.max(1, n);
}

/** Milliseconds comparable across Workers (re-exported for benchmarks). */
export { nowMs };
