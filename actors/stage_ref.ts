/**
 * The root's handle on one stage's host: it spawns the Worker (or an
 * in-process host over a MessageChannel, for tests), sends it its links
 * at (re)start, asks it requests with mandatory timeouts, hears its
 * reports and its crash. Data does not pass here: it flows on the links
 * between the stages (`link.ts`).
 *
 * @module
 */

import type { FromHost, ParentEndpoint, ToHost } from "./host.ts";
import { host } from "./host.ts";
import type { Report } from "./stage.ts";
import { fromWire, toWire, XfError } from "../core/errors.ts";
import { LIMITS, type Limits } from "../core/limits.ts";

/** The parent's end of a host. */
export interface Endpoint {
  postMessage(message: unknown, transfer?: Transferable[]): void;
  addEventListener(type: "message", listener: (ev: MessageEvent) => void): void;
}

/** A started child: its endpoint and how to stop it hard. */
export interface Spawned {
  endpoint: Endpoint;
  /** Stop the child at once. What it posted before stays readable on `endpoint` until `release`. */
  terminate(): void;
  /** Close `endpoint` (after a terminate): late messages of the dead child are dropped from then on. */
  release?(): void;
}

/** What the root does with what a stage says. */
export interface StageHooks {
  onReport(from: string, msg: Report): void;
  onAsk(from: string, msg: { type: string } & Record<string, unknown>): Promise<unknown>;
  onCrash(from: string, error: XfError): void;
}

/** The init message of a (re)start and the ports it transfers. */
export interface InitMessage {
  msg: Extract<ToHost, { t: "init" }>;
  transfer: Transferable[];
}

/** Parent-side handle on one stage. */
export class StageRef {
  /** Counters for /metrics. */
  readonly stats = { restarts: 0, crashes: 0 };
  state: "down" | "starting" | "up" | "stopping" = "down";

  private spawned: Spawned | null = null;
  /** The previous child, terminated after a crash: its endpoint may still deliver reports it posted before. */
  private dead: Spawned | null = null;
  private nextCall = 1;
  private calls = new Map<
    number,
    { msg: unknown; resolve(v: unknown): void; reject(e: unknown): void; timer: ReturnType<typeof setTimeout> }
  >();
  private waiters: { t: string; resolve(): void; reject(e: unknown): void }[] = [];

  constructor(
    readonly id: string,
    private readonly spawn: () => Spawned,
    private readonly hooks: StageHooks,
    /** The node's limits in force (start, call and stop times). */
    private readonly limits: Limits = LIMITS,
  ) {}

  /** Start (or restart) the stage with its links; requests asked meanwhile go to the new one. */
  async start(init: InitMessage, timeoutMs: number = this.limits.stage_start_ms): Promise<void> {
    this.state = "starting";
    const spawned = this.spawn();
    this.spawned = spawned;
    spawned.endpoint.addEventListener("message", (ev) => {
      const m = ev.data as FromHost;
      if (this.spawned === spawned) this.onMessage(m);
      // A dead child's reports are facts (events appended, answered, indexed): those it posted before it died still
      // count, else a batch whose credit went back before the crash would never be answered.
      else if (m.t === "report") this.hooks.onReport(this.id, m.msg);
    });
    (spawned.endpoint as { start?: () => void }).start?.();
    spawned.endpoint.postMessage(init.msg, init.transfer);
    await this.waitFor("ready", timeoutMs, `Stage "${this.id}" did not start within ${timeoutMs} ms`);
    this.state = "up";
    for (const w of this.upWaiters.splice(0)) w();
    // Requests that were in flight when the previous host crashed are asked again.
    for (const [id, c] of this.calls) this.post({ t: "call", id, msg: c.msg as never });
  }

  /** Hand the host a message with ports (a peer's new link ends). */
  wire(msg: ToHost, transfer: Transferable[]): void {
    this.spawned?.endpoint.postMessage(msg, transfer);
  }

  /** Ask the child; rejects with `TIMEOUT` or `STAGE_DOWN`. */
  call<T = unknown>(msg: unknown, timeoutMs: number = this.limits.request_timeout_ms): Promise<T> {
    if (this.state !== "up") {
      if (this.state === "stopping" || this.closed) {
        return Promise.reject(new XfError("STAGE_DOWN", `Stage "${this.id}" is ${this.state}`));
      }
      // Down or restarting: wait for it to come up, within the same timeout.
      const started = Date.now();
      return this.whenUp(timeoutMs).then(() => this.call<T>(msg, Math.max(1, timeoutMs - (Date.now() - started))));
    }
    const id = this.nextCall++;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.calls.delete(id);
        reject(new XfError("TIMEOUT", `Request to stage "${this.id}" timed out after ${timeoutMs} ms`));
      }, timeoutMs);
      this.calls.set(id, { msg, resolve: resolve as (v: unknown) => void, reject, timer });
      this.post({ t: "call", id, msg: msg as never });
    });
  }

  /** Set once the child is stopped for good; calls then fail at once. */
  closed = false;
  private upWaiters: (() => void)[] = [];

  private whenUp(timeoutMs: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.upWaiters = this.upWaiters.filter((w) => w !== done);
        reject(new XfError("STAGE_DOWN", `Stage "${this.id}" did not come up within ${timeoutMs} ms`));
      }, timeoutMs);
      const done = () => {
        clearTimeout(timer);
        resolve();
      };
      this.upWaiters.push(done);
    });
  }

  /** Stop cleanly (finish the mailbox, run the stage's stop), or terminate after `shutdownMs`. */
  async stop(shutdownMs: number = this.limits.stage_shutdown_ms): Promise<void> {
    if (!this.spawned) return;
    if (this.state === "up") {
      this.state = "stopping";
      this.post({ t: "stop" });
      try {
        await this.waitFor("stopped", shutdownMs, `Stage "${this.id}" did not stop within ${shutdownMs} ms`);
      } catch { /* terminated below */ }
    }
    this.kill(new XfError("SHUTTING_DOWN", `Stage "${this.id}" stopped`));
  }

  /**
   * Terminate at once (after a crash, or when a stop times out). Requests in
   * flight fail, unless `keepCalls` (a crash the supervisor will restart
   * from): then they are asked again of the new child, within their timeouts.
   */
  kill(reason: XfError, keepCalls = false): void {
    const s = this.spawned;
    this.spawned = null;
    this.state = "down";
    s?.terminate();
    // The last dead child's endpoint stays open for its late reports until the next death or the final stop.
    this.dead?.release?.();
    this.dead = s;
    if (!keepCalls || this.closed) {
      this.dead?.release?.();
      this.dead = null;
    }
    if (!keepCalls || this.closed) {
      for (const c of this.calls.values()) {
        clearTimeout(c.timer);
        c.reject(new XfError("STAGE_DOWN", `Stage "${this.id}" went down: ${reason.message}`));
      }
      this.calls.clear();
    }
    for (const w of this.waiters.splice(0)) w.reject(reason);
  }

  private post(m: ToHost) {
    this.spawned?.endpoint.postMessage(m);
  }

  private waitFor(t: string, timeoutMs: number, message: string): Promise<void> {
    return new Promise((resolve, reject) => {
      const w = {
        t,
        resolve: () => {
          clearTimeout(timer);
          resolve();
        },
        reject: (e: unknown) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((x) => x !== w);
        reject(new XfError("TIMEOUT", message));
      }, timeoutMs);
      this.waiters.push(w);
    });
  }

  private onMessage(m: FromHost) {
    switch (m.t) {
      case "ready":
      case "stopped":
        for (const w of this.waiters.filter((x) => x.t === m.t)) w.resolve();
        this.waiters = this.waiters.filter((x) => x.t !== m.t);
        return;
      case "report":
        this.hooks.onReport(this.id, m.msg);
        return;
      case "ask": {
        const id = m.id;
        this.hooks.onAsk(this.id, m.msg).then(
          (value) => this.post({ t: "reply", id, ok: true, value }),
          (e) => this.post({ t: "reply", id, ok: false, error: toWire(e) }),
        );
        return;
      }
      case "reply": {
        const c = this.calls.get(m.id);
        if (!c) return;
        this.calls.delete(m.id);
        clearTimeout(c.timer);
        if (m.ok) c.resolve(m.value);
        else c.reject(fromWire(m.error as never));
        return;
      }
      case "crash":
        this.crashed(fromWire(m.error as never));
        return;
    }
  }

  /**
   * Test only: end the child at once, as if its Worker thread died (no stop,
   * no crash message, whatever it was doing is lost), and report it the way
   * the Worker's error event does.
   */
  terminateAbruptly(): void {
    const s = this.spawned;
    if (!s) return;
    s.terminate();
    this.crashed(new XfError("INTERNAL", `Stage "${this.id}" was terminated abruptly`));
  }

  /** The child died (crash message, or a Worker error event). */
  crashed(error: XfError): void {
    if (this.state === "down") return;
    this.stats.crashes++;
    this.kill(error, true);
    this.hooks.onCrash(this.id, error);
  }
}

/** Spawn a child as a real Worker; its errors become crashes. */
export function workerSpawner(url: URL, onError: (e: XfError) => void): () => Spawned {
  return () => {
    const w = new Worker(url, { type: "module" });
    w.onerror = (ev) => {
      ev.preventDefault();
      onError(new XfError("INTERNAL", `Worker ${url.pathname.split("/").pop()} failed: ${ev.message}`));
    };
    // The child talks on a port, not on the Worker's own channel: see actors/stage_worker.ts.
    const ch = new MessageChannel();
    w.postMessage(ch.port2, [ch.port2]);
    return { endpoint: ch.port1, terminate: () => w.terminate(), release: () => ch.port1.close() };
  };
}

/** Spawn a stage's host in-process over a MessageChannel (tests: no Worker; `modules` may add test stages). */
export function inProcessSpawner(modules?: Parameters<typeof host>[1]): () => Spawned {
  return () => {
    const ch = new MessageChannel();
    host(ch.port2 as unknown as ParentEndpoint, modules);
    return { endpoint: ch.port1, terminate: () => ch.port2.close(), release: () => ch.port1.close() };
  };
}
