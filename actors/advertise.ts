/**
 * Stage 5, advertise: tells whoever listens that events were indexed. It
 * holds the live subscriptions (group and kind filters) and sends the root
 * which subscriber gets which events of each indexed batch.
 *
 * Messages it takes (data): `advertise.indexed`. Requests:
 * `advertise.subscribe`, `advertise.unsubscribe`, `advertise.stats`.
 * It sends: `root` ← `advertise.deliver`.
 *
 * @module
 */

import { toHex } from "../core/bytes.ts";
import type { Stage } from "./runtime.ts";
import { type EventBatch, unpackBatch } from "./batch.ts";
import { LIMITS, type Limits } from "../core/limits.ts";
import { peekEvent } from "../storage/event.ts";
import { XfError } from "../core/errors.ts";

/** A live subscription's filter. */
export interface SubscriptionFilter {
  /** Hex group id; all groups when absent. */
  gid?: string;
  kinds?: number[];
}

/** Messages the advertise stage takes. */
export type AdvertiseMsg = { type: "advertise.indexed"; batch: EventBatch };

/** Requests advertise answers. */
export type AdvertiseCall =
  | { type: "advertise.subscribe"; sub: number; filter: SubscriptionFilter }
  | { type: "advertise.unsubscribe"; sub: number }
  | { type: "advertise.stats" };

/** advertise's config. */
export interface AdvertiseConfig {
  limits: Limits;
}

/** The advertise stage's logic. */
export function advertiseStage(): Stage<AdvertiseConfig> {
  let limits: Limits = { ...LIMITS };
  const subs = new Map<number, SubscriptionFilter>();
  let delivered = 0;

  return {
    start(config) {
      limits = config.limits;
    },
    data(raw, ctx) {
      const msg = raw as AdvertiseMsg;
      if (msg.type !== "advertise.indexed") {
        throw new XfError("INTERNAL", `Advertise cannot handle message "${(msg as { type: string }).type}"`);
      }
      if (subs.size === 0) return;
      const items = unpackBatch(msg.batch);
      const meta = items.map((it) => ({ gid: toHex(it.bytes.subarray(4, 36)), kind: peekEvent(it.bytes)?.kind ?? -1 }));
      const matches: { sub: number; idxs: number[] }[] = [];
      for (const [sub, f] of subs) {
        const idxs: number[] = [];
        meta.forEach((m, i) => {
          if (f.gid && f.gid !== m.gid) return;
          if (f.kinds?.length && !f.kinds.includes(m.kind)) return;
          idxs.push(i);
        });
        if (idxs.length) matches.push({ sub, idxs });
        delivered += idxs.length;
      }
      if (matches.length) ctx.emit("root", { type: "advertise.deliver", batch: msg.batch, matches });
    },
    call(raw) {
      const msg = raw as AdvertiseCall;
      switch (msg.type) {
        case "advertise.subscribe":
          if (subs.size >= limits.subscribers_max) {
            throw new XfError("OVERLOADED", `Cannot subscribe: ${limits.subscribers_max} subscribers already`);
          }
          subs.set(msg.sub, msg.filter);
          return true;
        case "advertise.unsubscribe":
          return subs.delete(msg.sub);
        case "advertise.stats":
          return { subscribers: subs.size, delivered };
      }
      throw new XfError("INTERNAL", `Advertise cannot answer "${(msg as { type: string }).type}"`);
    },
  };
}
