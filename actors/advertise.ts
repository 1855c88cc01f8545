/**
 * Stage 5, advertise: tells whoever listens that events were indexed. It
 * holds the live subscriptions (group and kind filters) and reports which
 * subscriber gets which events of each indexed batch. Entirely pure: it has
 * no effects of its own.
 *
 * Takes: `indexed` (data, from the index). Reports `deliver`. Answers the
 * root's `advertise.subscribe`, `advertise.unsubscribe`, `advertise.stats`.
 *
 * @module
 */

import type { CommonEffect, Input, StageLogic, StageModule } from "./stage.ts";
import type { AdvertiseIndexed } from "./index.ts";
import { unpackBatch } from "./batch.ts";
import type { Limits } from "../core/limits.ts";
import { toHex } from "../core/bytes.ts";
import { peekEvent } from "../storage/event.ts";
import { XfError } from "../core/errors.ts";

/** A live subscription's filter. */
export interface SubscriptionFilter {
  /** Hex group id; all groups when absent. */
  gid?: string;
  kinds?: number[];
}

/** Messages advertise takes. */
export type AdvertiseIn = Input<AdvertiseIndexed>;

/** Effects advertise asks for (only the common ones). */
export type AdvertiseEffect = CommonEffect<never>;

/** Advertise's state. */
export interface AdvertiseState {
  limits: Limits;
  subs: Map<number, SubscriptionFilter>;
  delivered: number;
}

/** The advertise stage's logic. */
export const logic: StageLogic<AdvertiseState, AdvertiseIn, AdvertiseEffect> = {
  concurrency: 1,
  init: (config) => ({ limits: config.limits, subs: new Map(), delivered: 0 }),
  receive(st, msg) {
    const done: AdvertiseEffect = { do: "done", tok: msg.tok };
    if (st.subs.size === 0) return [done];
    const batch = msg.msg.batch;
    const meta = unpackBatch(batch).map((it) => ({
      gid: toHex(it.bytes.subarray(4, 36)),
      kind: peekEvent(it.bytes)?.kind ?? -1,
    }));
    const matches: { sub: number; idxs: number[] }[] = [];
    for (const [sub, f] of st.subs) {
      const idxs: number[] = [];
      meta.forEach((m, i) => {
        if (f.gid && f.gid !== m.gid) return;
        if (f.kinds?.length && !f.kinds.includes(m.kind)) return;
        idxs.push(i);
      });
      if (idxs.length) matches.push({ sub, idxs });
      st.delivered += idxs.length;
    }
    if (!matches.length) return [done];
    return [{ do: "report", msg: { type: "deliver", batch, matches } }, done];
  },
};

/** Advertise's runtime: only the subscription requests. */
export const effects = () => ({
  run() {},
  call(msg: { type: string } & Record<string, unknown>, st: AdvertiseState) {
    switch (msg.type) {
      case "advertise.subscribe":
        if (st.subs.size >= st.limits.subscribers_max) {
          throw new XfError("OVERLOADED", `Cannot subscribe: ${st.limits.subscribers_max} subscribers already`);
        }
        st.subs.set(msg.sub as number, msg.filter as SubscriptionFilter);
        return true;
      case "advertise.unsubscribe":
        return st.subs.delete(msg.sub as number);
      case "advertise.stats":
        return { subscribers: st.subs.size, delivered: st.delivered };
    }
    throw new XfError("INTERNAL", `Advertise cannot answer "${msg.type}"`);
  },
});

export default { logic, effects } satisfies StageModule<AdvertiseState, AdvertiseIn, AdvertiseEffect>;
