/**
 * The child side of an actor: delivers a parent's messages to a
 * {@linkcode Stage}'s logic one data batch at a time (or up to the stage's
 * `concurrency`), returns credit when a batch is done, routes the stage's
 * outputs and requests through the parent, and reports a crash.
 *
 * Bad input is answered (a stage emits rejections); a broken invariant
 * throws, and the runtime reports `crash` and stops delivering: the
 * supervisor restarts the actor ("let it crash").
 *
 * @module
 */

import type { Endpoint, FromChild, ToChild } from "./endpoint.ts";
import { fromWire, toWire, XfError } from "../core/errors.ts";
import { LIMITS } from "../core/limits.ts";

/** What a stage can do besides computing: send and ask. */
export interface StageContext {
  /** Send a data message to another stage (or `"root"`). */
  emit(to: string, msg: unknown): void;
  /** Ask another stage and wait for its reply (always with a timeout). */
  ask<T = unknown>(to: string, msg: unknown, timeoutMs?: number): Promise<T>;
}

/** An actor's logic, independent of its transport. */
export interface Stage<Config = unknown> {
  /** Data batches handled at once (default 1: strictly one after another). */
  readonly concurrency?: number;
  /** Called once with the config before any message. */
  start?(config: Config, ctx: StageContext): Promise<void> | void;
  /** One data message; credit returns to the sender when this settles. */
  data(msg: unknown, ctx: StageContext): Promise<void> | void;
  /** A request; its return value is the reply. */
  call?(msg: unknown, ctx: StageContext): Promise<unknown> | unknown;
  /** Called on a clean stop; release resources here. */
  stop?(): Promise<void> | void;
}

/**
 * Serve a stage over an endpoint (a Worker's global scope or a port).
 * Call it synchronously at the top of a Worker entry file, before any
 * `await`, so no message is missed.
 */
export function serveStage<C>(endpoint: Endpoint, makeStage: () => Stage<C>): void {
  const stage = makeStage();
  const pending = new Map<
    number,
    { resolve(v: unknown): void; reject(e: unknown): void; timer: ReturnType<typeof setTimeout> }
  >();
  const dataQueue: { seq: number; msg: unknown }[] = [];
  let nextAsk = 1;
  let active = 0;
  let crashed = false;
  let started: Promise<void> | null = null;
  // Tests inject a crash on the Nth data batch through the config.
  let crashAt = 0;
  let batches = 0;
  const post = (m: FromChild) => endpoint.postMessage(m);

  const ctx: StageContext = {
    emit(to, msg) {
      if (!crashed) post({ t: "emit", to, msg });
    },
    ask<T>(to: string, msg: unknown, timeoutMs: number = LIMITS.request_timeout_ms): Promise<T> {
      const id = nextAsk++;
      return new Promise<T>((resolve, reject) => {
        const timer = setTimeout(() => {
          pending.delete(id);
          reject(new XfError("TIMEOUT", `Request to stage "${to}" timed out after ${timeoutMs} ms`));
        }, timeoutMs);
        pending.set(id, { resolve: resolve as (v: unknown) => void, reject, timer });
        post({ t: "ask", id, to, msg, timeoutMs });
      });
    },
  };

  const crash = (e: unknown) => {
    if (crashed) return;
    crashed = true;
    for (const p of pending.values()) clearTimeout(p.timer);
    pending.clear();
    // Release what the stage holds (the RocksDB lock, WAL files) before the
    // supervisor starts a successor; bounded, then report.
    const release = Promise.resolve().then(() => stage.stop?.()).catch(() => {});
    const bound = new Promise((r) => setTimeout(r, LIMITS.stage_shutdown_ms));
    Promise.race([release, bound]).then(() => post({ t: "crash", error: toWire(e) }));
  };

  const pump = () => {
    const limit = stage.concurrency ?? 1;
    while (!crashed && active < limit && dataQueue.length > 0) {
      const { seq, msg } = dataQueue.shift()!;
      if (++batches === crashAt) return crash(new XfError("INTERNAL", `Injected fault: crash at batch ${crashAt}`));
      active++;
      Promise.resolve()
        .then(() => stage.data(msg, ctx))
        .then(() => {
          active--;
          if (!crashed) post({ t: "credit", seq });
          pump();
        }, crash);
    }
  };

  const onMessage = (ev: MessageEvent) => {
    const m = ev.data as ToChild;
    if (crashed) return;
    switch (m.t) {
      case "init":
        crashAt = (m.config as { crashAtBatch?: number } | null)?.crashAtBatch ?? 0;
        started = Promise.resolve()
          .then(() => stage.start?.(m.config as C, ctx))
          .then(() => post({ t: "ready" }), crash);
        return;
      case "data":
        dataQueue.push({ seq: m.seq, msg: m.msg });
        if (started) started.then(pump);
        return;
      case "call": {
        const id = m.id;
        (started ?? Promise.resolve())
          .then(() => {
            if (!stage.call) throw new XfError("INTERNAL", "Stage takes no requests");
            return stage.call(m.msg, ctx);
          })
          .then(
            (value) => post({ t: "reply", id, ok: true, value }),
            (e) => post({ t: "reply", id, ok: false, error: toWire(e) }),
          );
        return;
      }
      case "reply": {
        const p = pending.get(m.id);
        if (!p) return; // timed out already
        pending.delete(m.id);
        clearTimeout(p.timer);
        if (m.ok) p.resolve(m.value);
        else p.reject(fromWire(m.error as never));
        return;
      }
      case "stop":
        Promise.resolve()
          .then(async () => {
            while (active > 0 || dataQueue.length > 0) await new Promise((r) => setTimeout(r, 5));
            await stage.stop?.();
          })
          .then(() => post({ t: "stopped" }), crash);
        return;
    }
  };
  endpoint.addEventListener("message", onMessage);
  // A Worker's global scope needs start() for ports; harmless elsewhere.
  (endpoint as { start?: () => void }).start?.();
}
