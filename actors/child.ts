/**
 * The parent side of one child actor: a bounded credit window for data
 * batches, requests with mandatory timeouts, and the list of batches the
 * child has not finished, which are sent again when it is restarted (so
 * nothing in its mailbox is lost when it crashes).
 *
 * @module
 */

import type { Endpoint, FromChild, ToChild } from "./endpoint.ts";
import { fromWire, toWire, XfError } from "../core/errors.ts";
import { LIMITS } from "../core/limits.ts";

/** A started child: its endpoint and how to stop it hard. */
export interface Spawned {
  endpoint: Endpoint;
  terminate(): void;
}

/** How the parent routes what a child says. */
export interface ChildHooks {
  onEmit(from: string, to: string, msg: unknown): void;
  onAsk(from: string, to: string, msg: unknown, timeoutMs: number): Promise<unknown>;
  onCrash(from: string, error: XfError): void;
}

/** Parent-side handle on one child actor. */
export class ChildRef {
  /** Data batches sent but not credited, by seq, in send order. */
  readonly inflight = new Map<number, unknown>();
  /** Data batches waiting for credit. */
  readonly queue: unknown[] = [];
  /** Counters for /metrics. */
  readonly stats = { sent: 0, credited: 0, restarts: 0, crashes: 0 };
  state: "down" | "starting" | "up" | "stopping" = "down";

  private spawned: Spawned | null = null;
  private nextSeq = 1;
  private nextCall = 1;
  private calls = new Map<
    number,
    { msg: unknown; resolve(v: unknown): void; reject(e: unknown): void; timer: ReturnType<typeof setTimeout> }
  >();
  private waiters: { t: string; resolve(): void; reject(e: unknown): void }[] = [];

  constructor(
    readonly id: string,
    private readonly spawn: () => Spawned,
    private readonly hooks: ChildHooks,
    readonly window: number = LIMITS.stage_mailbox_batches_max,
  ) {}

  /** Batches queued here plus those in the child's mailbox. */
  depth(): number {
    return this.queue.length + this.inflight.size;
  }

  /** Start (or restart) the child; resends unfinished batches after `ready`. */
  async start(config: unknown, timeoutMs: number = LIMITS.request_timeout_ms): Promise<void> {
    this.state = "starting";
    const spawned = this.spawn();
    this.spawned = spawned;
    spawned.endpoint.addEventListener("message", (ev) => {
      if (this.spawned === spawned) this.onMessage(ev.data as FromChild);
    });
    (spawned.endpoint as { start?: () => void }).start?.();
    this.post({ t: "init", config });
    await this.waitFor("ready", timeoutMs, `Stage "${this.id}" did not start within ${timeoutMs} ms`);
    this.state = "up";
    for (const w of this.upWaiters.splice(0)) w();
    // Requests that were in flight when the previous child crashed are asked again.
    for (const [id, c] of this.calls) this.post({ t: "call", id, msg: c.msg });
    // Unfinished batches go first, in their original order.
    const again = [...this.inflight.values()];
    this.inflight.clear();
    this.queue.unshift(...again);
    this.flush();
  }

  /** Queue a data batch; it is sent when the child has credit. */
  send(msg: unknown): void {
    this.queue.push(msg);
    this.flush();
  }

  /** Ask the child; rejects with `TIMEOUT` or `STAGE_DOWN`. */
  call<T = unknown>(msg: unknown, timeoutMs: number = LIMITS.request_timeout_ms): Promise<T> {
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
      this.post({ t: "call", id, msg });
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
  async stop(shutdownMs: number = LIMITS.stage_shutdown_ms): Promise<void> {
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
    if (!keepCalls || this.closed) {
      for (const c of this.calls.values()) {
        clearTimeout(c.timer);
        c.reject(new XfError("STAGE_DOWN", `Stage "${this.id}" went down: ${reason.message}`));
      }
      this.calls.clear();
    }
    for (const w of this.waiters.splice(0)) w.reject(reason);
  }

  private flush() {
    while (this.state === "up" && this.inflight.size < this.window && this.queue.length > 0) {
      const msg = this.queue.shift();
      const seq = this.nextSeq++;
      this.inflight.set(seq, msg);
      this.stats.sent++;
      this.post({ t: "data", seq, msg });
    }
  }

  private post(m: ToChild) {
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

  private onMessage(m: FromChild) {
    switch (m.t) {
      case "ready":
      case "stopped":
        for (const w of this.waiters.filter((x) => x.t === m.t)) w.resolve();
        this.waiters = this.waiters.filter((x) => x.t !== m.t);
        return;
      case "credit":
        if (this.inflight.delete(m.seq)) this.stats.credited++;
        this.flush();
        return;
      case "emit":
        this.hooks.onEmit(this.id, m.to, m.msg);
        return;
      case "ask": {
        const id = m.id;
        this.hooks.onAsk(this.id, m.to, m.msg, m.timeoutMs).then(
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
    return { endpoint: w, terminate: () => w.terminate() };
  };
}

/** Spawn a child in-process over a MessageChannel (for unit tests). */
export function inProcessSpawner(serve: (endpoint: Endpoint) => void): () => Spawned {
  return () => {
    const ch = new MessageChannel();
    serve(ch.port2);
    return {
      endpoint: ch.port1,
      terminate: () => {
        ch.port1.close();
        ch.port2.close();
      },
    };
  };
}
