/**
 * What a stage is: a typed, pure `receive(state, msg) → effects`, with its
 * message union beside it, and a thin runtime that performs the effects.
 *
 * - `receive` does no I/O, reads no clock and draws no randomness: time
 *   enters as message fields. It may change the state object it is given
 *   (it owns it) and returns the effects to perform, as data.
 * - The effects every stage shares are performed by the host
 *   (`actors/host.ts`): `send` on an outgoing link (credit-bounded),
 *   (`alone`: by itself in flight), `signal` on a feedback port (small, never blocks), `report` to the root,
 *   `done` (the input batch `tok` is finished: credit goes back upstream
 *   once everything it produced has been sent on).
 * - A stage's own effects (crypto, WAL files, RocksDB) are performed by its
 *   runtime (`Effects.run`); the answer comes back as a message.
 *
 * A stage's logic is tested by feeding it messages, with no Worker and no
 * disk (`tests/stages_test.ts`).
 *
 * @module
 */

import type { Limits } from "../core/limits.ts";

/** The effects every host performs. `O` names the stage's outgoing links. */
export type CommonEffect<O extends string> =
  /** `alone`: it goes only when nothing else is in flight on the link, and holds it (actors/link.ts). */
  | { do: "send"; to: O; msg: unknown; alone?: boolean }
  | { do: "signal"; to: string; msg: unknown }
  | { do: "report"; msg: Report }
  | { do: "done"; tok: number };

/** Messages a stage sends to the root (results, progress, deliveries, conditions). */
export type Report =
  | { type: "split"; req: number; n: number }
  | { type: "failed"; req: number; code: string; message: string }
  | { type: "results"; items: EventResultWire[] }
  | { type: "appended"; n: number; lastSeq: number }
  | { type: "indexed"; n: number; replayN: number; lastSeq: number; stored: number }
  | { type: "full"; full: boolean }
  | { type: "deliver"; batch: unknown; matches: { sub: number; idxs: number[] }[] }
  | { type: "dead"; stage: string; batch: unknown; crashes: number }
  /** A batch from a restarted upstream's old incarnation, fenced off by `host.fence`: never taken by the stage. */
  | { type: "fenced"; stage: string; batch: unknown };

/** Per-event outcome (the same shape as `EventResult` in batch.ts). */
export interface EventResultWire {
  req: number;
  idx: number;
  status: "stored" | "duplicate" | "rejected";
  id?: string;
  code?: string;
  message?: string;
}

/** What every stage's config holds. */
export interface BaseConfig {
  limits: Limits;
}

/** A stage's pure logic. */
export interface StageLogic<S, In, Eff> {
  /** Data batches in service at once (the host's mailbox hands out at most this many). */
  readonly concurrency: number;
  init(config: BaseConfig & Record<string, unknown>): S;
  /** One message: a data batch (with the host's `tok`), or an effect's answer. */
  receive(state: S, msg: In): Eff[];
}

/** What the host offers a stage's runtime. */
export interface HostContext {
  /** Ask the root (the control path: rare lookups such as a group's state on first touch, never per batch). */
  ask<T>(msg: { type: string } & Record<string, unknown>): Promise<T>;
  /** Ask another stage over a direct request port (declared in the pipeline's wiring). */
  request<T>(to: string, msg: { type: string } & Record<string, unknown>): Promise<T>;
  /** Hand the logic a message from a runtime loop (e.g. WAL replay), as if an effect had answered. */
  receive(msg: unknown): void;
  /** Resolves once nothing waits for credit on the outgoing link `to` (a runtime loop paces itself by it). */
  room(to: string): Promise<void>;
}

/** A stage's runtime: performs its own effects, answers requests, releases resources. */
export interface Effects<S, In, Eff> {
  /** Before the first message (open files, RocksDB). */
  start?(state: S, config: BaseConfig & Record<string, unknown>): Promise<void> | void;
  /** Perform one of the stage's own effects; what it resolves to is received as messages. */
  run(eff: Eff, state: S): Promise<In | In[] | void> | In | In[] | void;
  /** Answer a request from the root (reads, stats). */
  call?(msg: { type: string } & Record<string, unknown>, state: S): Promise<unknown> | unknown;
  /** A clean stop (or after a crash, bounded): close what the stage holds. */
  stop?(state: S): Promise<void> | void;
}

/** A stage module: its logic and its runtime. The host imports it by name. */
export interface StageModule<S = unknown, In = unknown, Eff = unknown> {
  logic: StageLogic<S, In, Eff>;
  effects: (ctx: HostContext) => Effects<S, In, Eff>;
}

/**
 * Run a stage's logic on messages without a host (for tests): effects are
 * collected; `answer` may turn a stage effect into messages received next.
 */
export function drive<S, In, Eff>(
  logic: StageLogic<S, In, Eff>,
  state: S,
  msgs: In[],
  answer: (eff: Eff) => In[] = () => [],
): Eff[] {
  const out: Eff[] = [];
  const queue = [...msgs];
  while (queue.length) {
    for (const e of logic.receive(state, queue.shift()!)) {
      out.push(e);
      queue.push(...answer(e));
    }
  }
  return out;
}

/** An input data batch with the host's token, as the stage receives it. */
export interface Input<M> {
  type: "input";
  from: string;
  tok: number;
  msg: M;
  /** When it was taken from the mailbox (ms since the epoch): the stage's "now". */
  now: number;
}
