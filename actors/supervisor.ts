/**
 * A supervisor as data (Erlang/OTP): child specs in start order, a restart
 * strategy and a restart intensity. Children start in order and stop in
 * reverse. When a child crashes the supervisor restarts it (`one_for_one`,
 * the pipeline's strategy: the links of a restarted stage are wired anew
 * and its upstream sends again what it had not finished) or it and every
 * child started after it (`rest_for_one`); more than `intensityMax`
 * restarts within `periodMs` escalates: the supervisor stops everything and
 * reports the failure.
 *
 * @module
 */

import { type InitMessage, type Spawned, type StageHooks, StageRef } from "./stage_ref.ts";
import { XfError } from "../core/errors.ts";
import { LIMITS, type Limits } from "../core/limits.ts";
import { log } from "./log.ts";

/** How a child is restarted. */
export type Restart = "permanent" | "transient" | "temporary";

/** One child: how to start it, when to restart it, how long it may take to stop. */
export interface ChildSpec {
  id: string;
  start: () => Spawned;
  /** The init message of each (re)start: config and fresh link ends (the root wires the peers' ends). */
  init: () => InitMessage;
  restart: Restart;
  shutdownMs: number;
}

/** Supervisor options. */
export interface SupervisorOptions {
  strategy: "one_for_one" | "rest_for_one";
  intensityMax?: number;
  periodMs?: number;
  /** A child's report (results, progress). */
  onReport: StageHooks["onReport"];
  /** A child's request to the root. */
  onAsk: StageHooks["onAsk"];
  /** Called after a child (and its followers) restarted. */
  onRestart?(ids: string[], cause: XfError): void;
  /** Restart intensity exceeded: everything is stopped. */
  onEscalate(cause: XfError): void;
  /** Injected clock for tests. */
  now?: () => number;
  /** The node's limits in force (its children's start, call and stop times; the intensity defaults). */
  limits?: Limits;
}

/** Supervises an ordered list of children. */
export class Supervisor {
  readonly children: StageRef[];
  private readonly restarts: number[] = [];
  private restarting: Promise<void> = Promise.resolve();
  private stopped = false;
  /** Restarts done, for /metrics. */
  restartCount = 0;

  constructor(readonly specs: ChildSpec[], private readonly opts: SupervisorOptions) {
    this.children = specs.map((s) =>
      new StageRef(s.id, s.start, {
        onReport: (from, msg) => opts.onReport(from, msg),
        onAsk: (from, msg) => opts.onAsk(from, msg),
        onCrash: (from, error) => this.onCrash(from, error),
      }, opts.limits ?? LIMITS)
    );
  }

  /** The child with this id. */
  child(id: string): StageRef {
    const c = this.children.find((c) => c.id === id);
    if (!c) throw new TypeError(`No child "${id}"`);
    return c;
  }

  /** Start every child, in order. */
  async start(): Promise<void> {
    try {
      for (let i = 0; i < this.children.length; i++) {
        await this.children[i]!.start(this.specs[i]!.init());
      }
    } catch (e) {
      // A child that fails at boot fails the start; nothing is restarted behind the caller's back.
      this.stopped = true;
      for (const c of this.children) c.closed = true;
      await this.stopAll();
      throw e;
    }
    this.#booted = true;
  }

  #booted = false;

  /** Stop every child, in reverse order. */
  async stop(): Promise<void> {
    this.stopped = true;
    for (const c of this.children) c.closed = true;
    await this.restarting.catch(() => {});
    for (let i = this.children.length - 1; i >= 0; i--) {
      await this.children[i]!.stop(this.specs[i]!.shutdownMs);
    }
  }

  private onCrash(id: string, error: XfError) {
    if (this.stopped || !this.#booted) return;
    const i = this.children.findIndex((c) => c.id === id);
    const spec = this.specs[i]!;
    if (spec.restart === "temporary") {
      this.children[i]!.closed = true;
      this.children[i]!.kill(error); // not restarted: its requests fail now
      return;
    }
    const now = (this.opts.now ?? Date.now)();
    const period = this.opts.periodMs ?? (this.opts.limits ?? LIMITS).restart_period_ms;
    this.restarts.push(now);
    while (this.restarts.length && this.restarts[0]! <= now - period) this.restarts.shift();
    if (this.restarts.length > (this.opts.intensityMax ?? (this.opts.limits ?? LIMITS).restart_intensity_max)) {
      log.pipeline.error("restart intensity exceeded: stopping every stage", {
        stage: id,
        restarts: this.restarts.length,
        periodMs: period,
        error: `${error.code}: ${error.message}`,
      });
      this.stopped = true;
      for (const c of this.children) c.closed = true;
      this.stopAll().finally(() => this.opts.onEscalate(error));
      return;
    }
    const from = i;
    const to = this.opts.strategy === "rest_for_one" ? this.children.length - 1 : i;
    this.restarting = this.restarting.then(async () => {
      if (this.stopped) return;
      // Stop the followers in reverse order (the crashed one is down already).
      for (let j = to; j >= from; j--) {
        const c = this.children[j]!;
        if (c.state !== "down") await c.stop(this.specs[j]!.shutdownMs);
      }
      for (let j = from; j <= to; j++) {
        const c = this.children[j]!;
        c.stats.restarts++;
        await c.start(this.specs[j]!.init());
      }
      this.restartCount++;
      log.pipeline.warn("stage restarted", {
        stage: id,
        restarted: this.children.slice(from, to + 1).map((c) => c.id).join(","),
        error: `${error.code}: ${error.message}`,
        restarts: this.restartCount,
      });
      this.opts.onRestart?.(this.children.slice(from, to + 1).map((c) => c.id), error);
    }).catch((e) => {
      this.stopped = true;
      this.stopAll().finally(() => this.opts.onEscalate(e));
    });
  }

  private async stopAll() {
    for (let i = this.children.length - 1; i >= 0; i--) {
      const c = this.children[i]!;
      if (c.state === "up") await c.stop(this.specs[i]!.shutdownMs);
      else c.kill(new XfError("SHUTTING_DOWN", "Supervisor stopped"));
    }
  }
}
