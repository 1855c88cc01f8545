/**
 * The host of one stage, inside its Worker (or in-process over a
 * MessageChannel in tests): it wires the stage's links, hands data
 * batches to the stage's pure `receive` at most `concurrency` at a time,
 * performs the effects, and answers the root's control messages.
 *
 * ```
 *            control (parent ⇄ host): init, call/reply, rewire, stop, report, crash
 *  upstream ══ Inlet ─► mailbox ─► receive(state, msg) ─► effects ─► Outlet ══ downstream
 *                                        ▲                   │
 *                                        └── answers ◄── run (crypto, WAL, RocksDB)
 * ```
 *
 * Bad input is answered by the stage (it reports rejections); a broken
 * invariant throws, and the host reports `crash` and stops taking input:
 * the supervisor restarts the stage ("let it crash").
 *
 * @module
 */

import { Inlet, type LinkFrame, nowMs, Outlet, type Poisoned } from "./link.ts";
import type { BaseConfig, CommonEffect, Input, Report, StageModule } from "./stage.ts";
import { MODULES } from "./stages.ts";
import { niceThisThread } from "./thread_priority.ts";
import { toWire, type WireError, XfError } from "../core/errors.ts";
import type { Limits } from "../core/limits.ts";
import { Histogram } from "./histogram.ts";
import { toHexAt } from "../core/bytes.ts";
import { sha256 } from "@noble/hashes/sha2";

/** How an outgoing link is described to a host. */
export interface OutletSpec {
  port: MessagePort;
  window: number;
  bytes: number;
}

/** Messages from the root to a host. */
export type ToHost =
  | {
    t: "init";
    stage: string;
    config: BaseConfig & Record<string, unknown>;
    inputs: Record<string, MessagePort>;
    outputs: Record<string, OutletSpec>;
    /** Feedback ports (no credit: small messages bounded by the data that caused them), in and out. */
    signalsIn: Record<string, MessagePort>;
    signalsOut: Record<string, MessagePort>;
    /** Request ports: this stage asks (`rpcOut`) or answers (`rpcIn`) another stage directly. */
    rpcOut: Record<string, MessagePort>;
    rpcIn: Record<string, MessagePort>;
    /** Tests: crash on this data batch (1-based), once. */
    crashAtBatch?: number;
    /** Tests: crash on every batch whose first event id starts with this hex (a poison batch). */
    poisonPrefix?: string;
  }
  | { t: "rewire"; out: string; port: MessagePort; restarted: boolean }
  | { t: "input"; name: string; port: MessagePort }
  | { t: "rpc"; name: string; port: MessagePort }
  | { t: "rpcIn"; name: string; port: MessagePort }
  | { t: "signalIn"; name: string; port: MessagePort }
  | { t: "signalOut"; name: string; port: MessagePort }
  | { t: "call"; id: number; msg: { type: string } & Record<string, unknown> }
  | { t: "reply"; id: number; ok: boolean; value?: unknown; error?: WireError }
  | { t: "stop" };

/** Per-stage timing, in seconds: queue wait (sent → taken) and service (taken → done). */
export interface StageTiming {
  queue: Histogram;
  service: Histogram;
  batches: number;
  events: number;
}

/** Messages from a host to the root. */
export type FromHost =
  | { t: "ready" }
  | { t: "stopped" }
  | { t: "report"; msg: Report }
  | { t: "ask"; id: number; msg: { type: string } & Record<string, unknown> }
  | { t: "reply"; id: number; ok: boolean; value?: unknown; error?: WireError }
  | { t: "crash"; error: WireError };

/** The endpoint a host talks to its parent through (a Worker's global scope, or a port). */
export interface ParentEndpoint {
  postMessage(m: unknown, transfer?: Transferable[]): void;
  addEventListener(type: "message", l: (ev: MessageEvent) => void): void;
}

/**
 * Host a stage on `parent`. Call it synchronously at the top of a Worker
 * entry, before any `await`, so no message is missed.
 */
export function host(parent: ParentEndpoint, modules: Record<string, () => Promise<StageModule>> = MODULES): void {
  let mod: StageModule | null = null;
  let effects: ReturnType<StageModule["effects"]> | null = null;
  let state: unknown = null;
  let limits: Limits | null = null;
  let crashed = false;
  let stopping = false;
  let started: Promise<void> | null = null;
  const inlets = new Map<string, Inlet<unknown>>();
  /** Every inlet ever wired (replaced ones included), closed when the host ends. */
  const allInlets: Inlet<unknown>[] = [];
  /** The name of every inlet ever wired (its upstream stage). */
  const inletNames = new Map<Inlet<unknown>, string>();
  /** Inlets of a dead upstream incarnation (`host.fence`): what still comes by them is handed back, never taken. */
  const fenced = new Set<Inlet<unknown>>();
  /** `host.fence` calls waiting for the fenced inlets' batches in service to finish. */
  let fenceWaiters: (() => void)[] = [];
  let stageName = "";
  /** Close every port this host holds: an open port would keep an in-process host's thread alive. */
  const closeAll = () => {
    for (const i of allInlets) i.close();
    for (const o of outlets.values()) o.unwire();
    for (const p of signalsIn) p.close();
    for (const p of signalsOut.values()) p.close();
    for (const p of rpcOut.values()) p.close();
  };
  const signalsOut = new Map<string, MessagePort>();
  const signalsIn: MessagePort[] = [];
  const outlets = new Map<string, Outlet<unknown>>();
  const mailbox: { from: string; inlet: Inlet<unknown>; frame: LinkFrame<unknown>; tok: number }[] = [];
  /**
   * Batches in service: the inlet they came by (credit goes back there, not to whatever inlet has its name now:
   * a restarted upstream numbers its batches from 1 again), frame sequence and when they were taken.
   */
  const active = new Map<number, { inlet: Inlet<unknown>; s: number; taken: number }>();
  /** Hex ids an outlet sent again at its receiver's last restart, by outlet. */
  const resent = new Map<string, Set<string>>();
  let nextTok = 1;
  let batches = 0;
  let crashAt = 0;
  let poisonPrefix = "";
  const timing: StageTiming = { queue: new Histogram(), service: new Histogram(), batches: 0, events: 0 };
  const asks = new Map<
    number,
    { resolve(v: unknown): void; reject(e: unknown): void; to?: string; msg?: unknown }
  >();
  let nextAsk = 1;

  const post = (m: FromHost) => parent.postMessage(m);

  const crash = (e: unknown) => {
    if (crashed) return;
    crashed = true;
    closeAll();
    const release = Promise.resolve().then(() => effects?.stop?.(state)).catch(() => {});
    const bound = new Promise((r) => setTimeout(r, limits?.stage_shutdown_ms ?? 5000));
    Promise.race([release, bound]).then(() => post({ t: "crash", error: toWire(e) }));
  };

  /** Perform effects; a stage effect's answer is received as messages. */
  const perform = (effs: unknown[]) => {
    for (const raw of effs) {
      const e = raw as CommonEffect<string> | { do: string };
      switch (e.do) {
        case "send": {
          const s = e as Extract<CommonEffect<string>, { do: "send" }>;
          const o = outlets.get(s.to);
          if (!o) throw new XfError("INTERNAL", `Stage has no outgoing link "${s.to}"`);
          o.send(s.msg, s.alone === true);
          break;
        }
        case "signal": {
          const s = e as Extract<CommonEffect<string>, { do: "signal" }>;
          signalsOut.get(s.to)?.postMessage(s.msg);
          break;
        }
        case "report":
          post({ t: "report", msg: (e as Extract<CommonEffect<string>, { do: "report" }>).msg });
          break;
        case "done":
          finish((e as Extract<CommonEffect<string>, { do: "done" }>).tok);
          break;
        default:
          Promise.resolve()
            .then(() => effects!.run(e, state))
            .then((answer) => {
              if (crashed || answer === undefined) return;
              for (const m of Array.isArray(answer) ? answer : [answer]) receive(m);
            })
            .catch(crash);
      }
    }
  };

  const receive = (msg: unknown) => {
    if (crashed) return;
    try {
      perform(mod!.logic.receive(state, msg));
    } catch (e) {
      crash(e);
    }
  };

  /** A batch is done: once what it produced has left this stage, credit goes back upstream. */
  const finish = (tok: number) => {
    const a = active.get(tok);
    if (!a) return;
    active.delete(tok);
    if (fenceWaiters.length && fenced.has(a.inlet)) checkFences();
    Promise.all([...outlets.values()].map((o) => o.room())).then(() => {
      if (crashed) return;
      a.inlet.credit(a.s);
      timing.service.observe((nowMs() - a.taken) / 1000);
      timing.batches++;
      pump();
    });
  };

  const pump = () => {
    if (crashed || !mod) return;
    while (mailbox.length > 0 && active.size < mod.logic.concurrency) {
      const { from, inlet, frame, tok } = mailbox.shift()!;
      const taken = nowMs();
      timing.queue.observe(Math.max(0, taken - frame.at) / 1000);
      active.set(tok, { inlet, s: frame.s, taken });
      batches++;
      if (batches === crashAt) return crash(new XfError("INTERNAL", `Injected fault: crash at batch ${crashAt}`));
      if (poisonPrefix && isPoison(frame.m, poisonPrefix)) {
        return crash(new XfError("INTERNAL", `Injected fault: poison batch (ids starting ${poisonPrefix})`));
      }
      receive({ type: "input", from, tok, msg: frame.m, now: taken } satisfies Input<unknown>);
    }
  };

  const addInput = (name: string, port: MessagePort) => {
    // The old inlet stays open until its batches are credited (its sender is gone; the credit is harmless).
    const inlet: Inlet<unknown> = new Inlet(port, (frame) => {
      if (crashed) return;
      if (fenced.has(inlet)) return handBack(inlet, frame);
      mailbox.push({ from: name, inlet, frame, tok: nextTok++ });
      if (started) started.then(pump);
    });
    inlets.set(name, inlet);
    allInlets.push(inlet);
    inletNames.set(inlet, name);
  };

  /** A fenced batch goes back to the root (which answers its events "send it again"), credited (harmless). */
  const handBack = (inlet: Inlet<unknown>, frame: LinkFrame<unknown>) => {
    post({ t: "report", msg: { type: "fenced", stage: stageName, batch: frame.m } });
    inlet.credit(frame.s);
  };

  /**
   * `host.fence`: the upstream `name` was restarted (its new inlet is wired already, the root sends the rewire
   * first on this same port). Every older inlet of that name is fenced: batches from it not yet taken, now or
   * arriving later (a MessagePort gives no order against the control port), are handed back, never taken; the
   * answer comes once the batches from it the stage had taken are finished (their reports posted before it). So
   * after the answer nothing the dead incarnation sent can still reach the stage.
   */
  const hostFence = (name: string): Promise<{ handedBack: number }> => {
    const current = inlets.get(name);
    for (const [inlet, n] of inletNames) if (n === name && inlet !== current) fenced.add(inlet);
    let handedBack = 0;
    for (let i = 0; i < mailbox.length;) {
      const m = mailbox[i]!;
      if (fenced.has(m.inlet)) {
        mailbox.splice(i, 1);
        handBack(m.inlet, m.frame);
        handedBack++;
      } else i++;
    }
    return new Promise((resolve) => {
      fenceWaiters.push(() => resolve({ handedBack }));
      checkFences();
    });
  };
  /**
   * `host.holds`: which of `ids` (32 bytes each) are in a batch the outlet `output` still holds, queued or sent and
   * not credited, or sent again at the receiver's last restart (their answers come from the new receiver). Answers
   * one byte per id, 1 held.
   */
  const hostHolds = (output: string, ids: Uint8Array): Uint8Array => {
    const o = outlets.get(output);
    const held = o ? idsOf([...o.inflight.values(), ...o.queue].map((f) => f.msg)) : new Set<string>();
    for (const id of resent.get(output) ?? []) held.add(id);
    const out = new Uint8Array(ids.length / 32);
    for (let i = 0; i < out.length; i++) out[i] = held.has(hex32(ids, i * 32)) ? 1 : 0;
    return out;
  };
  const checkFences = () => {
    for (const a of active.values()) if (fenced.has(a.inlet)) return;
    const ws = fenceWaiters;
    fenceWaiters = [];
    for (const w of ws) w();
  };

  // A batch that crashed its receiver twice goes to the root's dead-letter record, with the error.
  const onPoison = (out: string) => (p: Poisoned<unknown>) => {
    if (!crashed) post({ t: "report", msg: { type: "dead", stage: out, batch: p.msg, crashes: p.crashes } });
  };

  parent.addEventListener("message", (ev: MessageEvent) => {
    const m = ev.data as ToHost;
    if (crashed && m.t !== "stop") return;
    switch (m.t) {
      case "init":
        limits = m.config.limits as Limits;
        stageName = m.stage;
        crashAt = m.crashAtBatch ?? 0;
        poisonPrefix = m.poisonPrefix ?? "";
        started = (async () => {
          const load = modules[m.stage];
          if (!load) throw new XfError("INTERNAL", `No stage "${m.stage}"`);
          mod = await load();
          effects = mod.effects({
            ask,
            request,
            receive,
            room: (to) => outlets.get(to)?.room() ?? Promise.resolve(),
          });
          if (typeof m.config.nice === "number") {
            const why = niceThisThread(m.config.nice);
            if (why) console.warn(`Stage ${m.stage} keeps its thread priority: ${why}`);
          }
          state = mod.logic.init(m.config);
          await effects.start?.(state, m.config);
          for (const [name, spec] of Object.entries(m.outputs)) {
            const o = new Outlet<unknown>(name, spec.window, spec.bytes, onPoison(name));
            o.wire(spec.port);
            outlets.set(name, o);
          }
          for (const [name, port] of Object.entries(m.signalsOut)) signalsOut.set(name, port);
          for (const [name, port] of Object.entries(m.signalsIn)) addSignalIn(name, port);
          for (const [name, port] of Object.entries(m.rpcOut)) wireRpc(name, port);
          for (const [name, port] of Object.entries(m.rpcIn)) serveRpc(name, port);
          for (const [name, port] of Object.entries(m.inputs)) addInput(name, port);
        })().then(() => {
          post({ t: "ready" });
          pump();
        }, crash);
        return;
      // A peer stage was restarted: its new ends of the links arrive here (after our own start).
      case "rewire":
      case "input":
      case "rpc":
      case "rpcIn":
      case "signalIn":
      case "signalOut":
        (started ?? Promise.resolve()).then(() => rewire(m)).catch(crash);
        return;
      case "call": {
        const id = m.id;
        (started ?? Promise.resolve())
          .then(() => {
            if (m.msg.type === "host.timing") return hostTiming();
            if (m.msg.type === "host.gc") return hostGc();
            if (m.msg.type === "host.fence") return hostFence(String(m.msg.input));
            if (m.msg.type === "host.holds") return hostHolds(String(m.msg.output), m.msg.ids as Uint8Array);
            if (!effects?.call) throw new XfError("INTERNAL", "Stage takes no requests");
            return effects.call(m.msg, state);
          })
          .then(
            (value) => post({ t: "reply", id, ok: true, value }),
            (e) => post({ t: "reply", id, ok: false, error: toWire(e) }),
          );
        return;
      }
      case "reply":
        return settle(m);
      case "stop":
        if (stopping) return;
        stopping = true;
        (async () => {
          while (!crashed && (mailbox.length > 0 || active.size > 0)) await new Promise((r) => setTimeout(r, 5));
          await Promise.all([...outlets.values()].map((o) => o.room()));
          closeAll();
          await effects?.stop?.(state);
        })().then(() => post({ t: "stopped" }), crash);
        return;
    }
  });

  // A full collection, when the root asks under memory pressure (only with --expose-gc; otherwise false).
  const hostGc = () => {
    const gc = (globalThis as { gc?: () => void }).gc;
    if (gc) gc();
    return !!gc;
  };

  const hostTiming = () => ({
    queue: timing.queue.snapshot(),
    service: timing.service.snapshot(),
    batches: timing.batches,
    mailbox: mailbox.length + active.size,
    outlets: Object.fromEntries([...outlets].map(([k, o]) => [k, { depth: o.depth(), ...o.stats }])),
  });

  const rpcOut = new Map<string, MessagePort>();
  const ends = new Map<string, MessagePort>();
  /** Keep one port per named end; a replaced one is closed. */
  const keep = (key: string, port: MessagePort) => {
    ends.get(key)?.close();
    ends.set(key, port);
    signalsIn.push(port);
  };
  function addSignalIn(name: string, port: MessagePort) {
    keep(`signal:${name}`, port);
    port.onmessage = (ev: MessageEvent) => receive({ type: "signal", from: name, msg: ev.data });
  }
  function serveRpc(name: string, port: MessagePort) {
    keep(`rpc:${name}`, port);
    port.onmessage = (ev: MessageEvent) => {
      const q = ev.data as { id: number; msg: { type: string } & Record<string, unknown> };
      Promise.resolve()
        .then(() => effects!.call!(q.msg, state))
        .then(
          (value) => port.postMessage({ t: "reply", id: q.id, ok: true, value }),
          (e) => port.postMessage({ t: "reply", id: q.id, ok: false, error: toWire(e) }),
        );
    };
  }
  function rewire(m: Extract<ToHost, { t: "rewire" | "input" | "rpc" | "rpcIn" | "signalIn" | "signalOut" }>) {
    switch (m.t) {
      case "rewire": {
        const o = outlets.get(m.out);
        // What goes again to a restarted receiver: its answers come from the new one (see `host.holds`).
        if (o && m.restarted) resent.set(m.out, idsOf([...o.inflight.values()].map((f) => f.msg)));
        return o?.wire(m.port, m.restarted);
      }
      case "input":
        return addInput(m.name, m.port);
      case "rpc":
        rpcOut.get(m.name)?.close();
        wireRpc(m.name, m.port);
        // Requests the restarted stage never answered are asked again of the new one.
        for (const [id, a] of asks) if (a.to === m.name) m.port.postMessage({ id, msg: a.msg });
        return;
      case "rpcIn":
        return serveRpc(m.name, m.port);
      case "signalIn":
        return addSignalIn(m.name, m.port);
      case "signalOut":
        signalsOut.get(m.name)?.close();
        signalsOut.set(m.name, m.port);
        return;
    }
  }
  function settle(m: Extract<ToHost, { t: "reply" }>) {
    const a = asks.get(m.id);
    if (!a) return;
    asks.delete(m.id);
    if (m.ok) a.resolve(m.value);
    else a.reject(new XfError((m.error?.code ?? "INTERNAL") as never, m.error?.message ?? "failed"));
  }

  function wireRpc(name: string, port: MessagePort) {
    rpcOut.set(name, port);
    port.onmessage = (ev: MessageEvent) => settle(ev.data as Extract<ToHost, { t: "reply" }>);
  }

  /** Ask another stage over a direct request port; fails with TIMEOUT (e.g. while it restarts). */
  function request<T>(to: string, msg: { type: string } & Record<string, unknown>): Promise<T> {
    const port = rpcOut.get(to);
    if (!port) return Promise.reject(new XfError("INTERNAL", `Stage has no request port to "${to}"`));
    const ms = limits?.request_timeout_ms ?? 10_000;
    return new Promise<T>((resolve, reject) => {
      const id = nextAsk++;
      const timer = setTimeout(() => {
        asks.delete(id);
        reject(new XfError("TIMEOUT", `Request to stage "${to}" timed out after ${ms} ms`));
      }, ms);
      asks.set(id, {
        resolve: (v) => (clearTimeout(timer), resolve(v as T)),
        reject: (e) => (clearTimeout(timer), reject(e)),
        to,
        msg,
      });
      port.postMessage({ id, msg });
    });
  }

  /** Ask the root (control path; for rare lookups only, never per batch). */
  function ask<T>(msg: { type: string } & Record<string, unknown>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const id = nextAsk++;
      asks.set(id, { resolve: resolve as (v: unknown) => void, reject });
      post({ t: "ask", id, msg });
    });
  }
  (parent as { start?: () => void }).start?.();
}

/**
 * Tests: the batch's first event id starts with one of the comma-separated hex prefixes. A record replayed from the
 * WAL carries no id yet (zeros): its id is hashed from its bytes, so a poison event stays poison when it comes again
 * from the WAL (a resend, or the index's event-by-event retry, root.ts `isolate`).
 */
function isPoison(msg: unknown, prefixes: string): boolean {
  const batch = (msg as { batch?: { ids?: Uint8Array; bytes?: Uint8Array; ends?: Uint32Array } } | null)?.batch;
  const b = batch?.ids;
  if (!b || b.length < 32) return false;
  let hex = hex32(b, 0);
  if (/^0+$/.test(hex) && batch.bytes && batch.ends?.length) {
    hex = hex32(sha256(batch.bytes.subarray(0, batch.ends[0])), 0); // an event id is the SHA-256 of its bytes;
  }
  return prefixes.split(",").some((p) => hex.startsWith(p));
}

/** Hex ids of the events in link messages that carry a batch. */
function idsOf(msgs: unknown[]): Set<string> {
  const out = new Set<string>();
  for (const m of msgs) {
    const b = (m as { batch?: { ids?: Uint8Array } } | null)?.batch?.ids;
    for (let i = 0; b && i + 32 <= b.length; i += 32) out.add(hex32(b, i));
  }
  return out;
}

/** Hex of the 32 bytes at `at`. */
function hex32(b: Uint8Array, at: number): string {
  return toHexAt(b, at, 32);
}
