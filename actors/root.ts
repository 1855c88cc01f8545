/**
 * The root actor: supervises the five stages (`rest_for_one`), routes every
 * message between them, admits requests (503 past the in-flight limit),
 * collects per-event results and answers each request once all its events
 * are settled: `stored` (durable), `duplicate` or `rejected`.
 *
 * ```
 *  HTTP / library ──► root ──► ingest ──► decode ──► wal-flush ──► index ──► advertise
 *                      ▲          │          │           │ ack        │            │
 *                      └──────────┴──────────┴───────────┴────────────┴────────────┘
 *                         results, acks, indexed, deliveries (all routed by the root)
 * ```
 *
 * @module
 */

import { inProcessSpawner, type Spawned, workerSpawner } from "./child.ts";
import { Supervisor } from "./supervisor.ts";
import { serveStage, type Stage } from "./runtime.ts";
import type { Endpoint } from "./endpoint.ts";
import { type EventBatch, type EventResult, unpackBatch } from "./batch.ts";
import { type Limits, limitsWith } from "./limits.ts";
import { ingestStage, type Submission } from "./ingest.ts";
import { decodeStage } from "./decode.ts";
import { walFlushStage } from "./wal_flush.ts";
import { indexStage } from "./index_stage.ts";
import { advertiseStage, type SubscriptionFilter } from "./advertise.ts";
import { XfError } from "../storage/errors.ts";
import { openDataDir } from "../storage/format.ts";
import { DATA_FORMAT_VERSION } from "../version.ts";
import { Histogram } from "./histogram.ts";

/** The pipeline's stages, in start order. */
export const STAGES = ["ingest", "decode", "wal", "index", "advertise"] as const;
/** A stage name. */
export type StageName = typeof STAGES[number];

/** Faults to inject in tests: a stage crashes on its Nth data batch, once. */
export type Faults = Partial<Record<StageName, { crashAtBatch: number }>>;

/** Options of a pipeline. */
export interface PipelineOptions {
  /** Data directory (WAL under `wal/`, RocksDB under `db/`); null = memory only, no WAL. */
  dataDir: string;
  limits?: Partial<Limits>;
  /** Run stages in Workers (default) or in-process over MessageChannels. */
  workers?: boolean;
  faults?: Faults;
  /** Called when the supervisor gives up (restart intensity exceeded). */
  onFatal?: (e: XfError) => void;
}

const STAGE_LOGIC: Record<StageName, () => Stage<never>> = {
  ingest: ingestStage as () => Stage<never>,
  decode: decodeStage as () => Stage<never>,
  wal: walFlushStage as () => Stage<never>,
  index: indexStage as () => Stage<never>,
  advertise: advertiseStage as () => Stage<never>,
};

const STAGE_WORKER: Record<StageName, URL> = {
  ingest: new URL("./ingest_worker.ts", import.meta.url),
  decode: new URL("./decode_worker.ts", import.meta.url),
  wal: new URL("./wal_flush_worker.ts", import.meta.url),
  index: new URL("./index_worker.ts", import.meta.url),
  advertise: new URL("./advertise_worker.ts", import.meta.url),
};

interface OpenRequest {
  n: number | null;
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
  };
  /** Per event stored or duplicate: seconds from its request's admission to its acknowledgement. */
  readonly ackSeconds: Histogram = new Histogram();
  state: "starting" | "ready" | "stopping" | "stopped" | "failed" = "starting";
  /** What recovery did at the last start. */
  recovery = "";
  /** The disk is full: writes are refused with STORAGE_FULL (reads are served) until space returns. */
  storageFull = false;

  private nextReq = 1;
  private nextSub = 1;
  private requests = new Map<number, OpenRequest>();
  private outbox: Submission[] = [];
  private flushScheduled = false;
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

  constructor(readonly opts: PipelineOptions) {
    this.limits = limitsWith(opts.limits);
    const workers = opts.workers ?? true;
    this.supervisor = new Supervisor(
      STAGES.map((name) => ({
        id: name,
        start: this.spawner(name, workers),
        config: () => this.stageConfig(name),
        restart: "permanent" as const,
        shutdownMs: this.limits.stage_shutdown_ms,
        window: this.limits.stage_mailbox_batches_max,
      })),
      {
        strategy: "rest_for_one",
        intensityMax: this.limits.restart_intensity_max,
        periodMs: this.limits.restart_period_ms,
        onEmit: (from, to, msg) => this.route(from, to, msg),
        onAsk: (_from, to, msg, t) => {
          // Authorization reads membership: let the index first hold every event acknowledged so far.
          const m = msg as { type?: string };
          const ask = m.type === "index.authorize" ? { ...m, after: this.ackedSeq } : msg;
          return this.supervisor.child(to).call(ask, t);
        },
        onRestart: (ids) => this.restarted(ids as StageName[]),
        onEscalate: (e) => this.fatal(e),
      },
    );
  }

  private spawner(name: StageName, workers: boolean): () => Spawned {
    if (!workers) {
      return inProcessSpawner((ep: Endpoint) => serveStage(ep, STAGE_LOGIC[name]));
    }
    return workerSpawner(STAGE_WORKER[name], (e) => this.supervisor.child(name).crashed(e));
  }

  private stageConfig(name: StageName): unknown {
    const base: Record<string, unknown> = { limits: this.limits };
    const fault = this.opts.faults?.[name];
    if (fault && !this.startedOnce.has(name)) base.crashAtBatch = fault.crashAtBatch;
    this.startedOnce.add(name);
    if (name === "wal") base.dir = `${this.opts.dataDir}/wal`;
    if (name === "index") base.dir = `${this.opts.dataDir}/db`;
    return base;
  }

  /** Start the stages, replay the WAL past the index's checkpoint, and get ready. */
  async start(): Promise<void> {
    // Before any stage touches the WAL: refuse a newer format or a directory another process holds.
    await openDataDir(this.opts.dataDir, DATA_FORMAT_VERSION);
    await this.supervisor.start();
    await this.replay();
    this.state = "ready";
  }

  private async replay() {
    const cp = await this.index<number>({ type: "index.checkpoint" });
    this.lastCheckpoint = cp;
    const done = new Promise<void>((r) => (this.replayDone = r));
    const { replayed, from, recovery } = await this.supervisor.child("wal").call<
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

  private restarted(ids: StageName[]) {
    this.counters.restarts++;
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
    for (const r of this.requests.values()) n += (r.n ?? 1) - r.settled;
    return n;
  }

  /**
   * Submit a request body (one event or a CBOR array of events); resolves
   * once every event is settled, with one result per event in input order.
   * Throws `OVERLOADED` past the in-flight limit, or the body's error.
   */
  submit(gid: Uint8Array | null, body: Uint8Array): Promise<EventResult[]> {
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
        results: [],
        settled: 0,
        admitted: performance.now(),
        resolve,
        reject,
        timer,
      });
      this.outbox.push({ req, gid, body });
      if (!this.flushScheduled) {
        this.flushScheduled = true;
        queueMicrotask(() => this.flushOutbox());
      }
    });
  }

  private flushOutbox() {
    this.flushScheduled = false;
    const subs = this.outbox.splice(0);
    if (!subs.length) return;
    // Adaptive batching: while ingest is busy, its waiting message takes the new requests too, so
    // under load the stages see few large batches; when idle, a request goes at once.
    const ingest = this.supervisor.child("ingest");
    const last = ingest.queue.at(-1) as { type: string; subs: Submission[]; bytes?: number } | undefined;
    const bytes = subs.reduce((n, s) => n + s.body.length, 0);
    if (last?.type === "ingest.submit" && (last.bytes ?? 0) + bytes <= this.limits.http_body_bytes_max) {
      last.subs.push(...subs);
      last.bytes = (last.bytes ?? 0) + bytes;
      return;
    }
    ingest.send({ type: "ingest.submit", subs, bytes });
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

  private settle(items: EventResult[]) {
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

  /** Route a message from a stage. */
  private route(_from: string, to: string, msg: unknown) {
    if (to !== "root") return this.supervisor.child(to).send(msg);
    const m = msg as { type: string } & Record<string, unknown>;
    switch (m.type) {
      case "ingest.split": {
        const r = this.requests.get(m.req as number);
        if (!r) return;
        r.n = m.n as number;
        this.counters.eventsIn += r.n;
        return this.maybeDone(m.req as number, r);
      }
      case "ingest.failed": {
        const r = this.requests.get(m.req as number);
        if (!r) return;
        clearTimeout(r.timer);
        this.requests.delete(m.req as number);
        return r.reject(new XfError(m.code as never, m.message as string));
      }
      case "pipeline.results":
        return this.settle(m.items as EventResult[]);
      case "decode.rejected":
        return this.supervisor.child("ingest").send({ type: "ingest.release", ids: m.ids, stored: false });
      case "wal.appended":
        this.ackedSeq = Math.max(this.ackedSeq, m.lastSeq as number);
        this.counters.walAppended += m.n as number;
        this.ackedNotIndexed += m.n as number;
        return;
      case "index.indexed":
        return this.indexed(m as never);
      case "wal.full":
        this.storageFull = m.full as boolean;
        return;
      case "advertise.deliver":
        return this.deliver(m.batch as EventBatch, m.matches as { sub: number; idxs: number[] }[]);
    }
  }

  private indexed(m: { n: number; replayN: number; lastSeq: number; stored: Uint8Array; duplicates: Uint8Array }) {
    this.counters.indexBatches++;
    this.counters.indexed += m.stored.length / 32;
    if (m.replayN) {
      this.replayWaiting -= m.replayN;
      if (this.replayWaiting <= 0) this.replayDone?.();
    }
    this.ackedNotIndexed = Math.max(0, this.ackedNotIndexed - m.n);
    const ids = new Uint8Array(m.stored.length + m.duplicates.length);
    ids.set(m.stored);
    ids.set(m.duplicates, m.stored.length);
    if (ids.length) this.supervisor.child("ingest").send({ type: "ingest.release", ids, stored: true });
    if (m.lastSeq > this.lastCheckpoint) {
      this.lastCheckpoint = m.lastSeq;
      this.checkpointTimer ??= setTimeout(() => {
        this.checkpointTimer = null;
        this.supervisor.child("wal").call({ type: "wal.checkpoint", seq: this.lastCheckpoint }).catch(() => {});
      }, 200);
    }
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

  /** Mailbox depth (queued + in the child's mailbox, in batches) per stage. */
  depths(): Record<StageName, number> {
    const out = {} as Record<StageName, number>;
    for (const s of STAGES) out[s] = this.supervisor.child(s).depth();
    return out;
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
    await this.supervisor.stop();
    for (const r of this.requests.values()) {
      clearTimeout(r.timer);
      r.reject(new XfError("SHUTTING_DOWN", "Node stopped before the request finished"));
    }
    this.requests.clear();
    this.state = "stopped";
  }
}
