/**
 * Stage 2, decode: the deterministic-CBOR check, the event shape, the
 * clock, the group and its membership, and the signature. What passes goes
 * to wal-flush; what fails is reported with its code.
 *
 * Decode holds the state it needs to authorize writes: each group's owner,
 * policy and membership (`storage/membership.ts`, the one place the rules
 * live). A manifest it admits creates its group here; a membership event it
 * admits changes the state at once, so the next event sees it — decode is
 * the single door every event passes (HTTP, the library, peers). A group
 * it has not seen since start is loaded once from the index (`load`
 * effect, answered after the index holds every acknowledged event); writes
 * never wait for the index otherwise.
 *
 * Batches are admitted one at a time in arrival order (a manifest admits
 * its group for the events after it, and the WAL sees arrival order), while
 * the signatures of the next batch are verified (`verify` effect).
 *
 * Takes: `batch` (data, from ingest); `verified`, `loaded` (its effects'
 * answers). Sends: `wal` ← `append`; `ingest` ← `release` (signal);
 * reports `results` and `failed` (a request whose group the reader may not
 * see: `UNKNOWN_GROUP`, the same answer as a group not held).
 *
 * @module
 */

import type { CommonEffect, EventResultWire, HostContext, Input, StageLogic, StageModule } from "./stage.ts";
import type { DecodeBatch, Release } from "./ingest.ts";
import { type BatchItem, packBatch, unpackBatch } from "./batch.ts";
import type { Limits } from "../core/limits.ts";
import {
  APP_KIND_MIN,
  checkManifestEvent,
  decodeEvent,
  KIND_MANIFEST,
  KIND_SETTINGS,
  KIND_TOMBSTONE,
} from "../storage/event.ts";
import { decodeSettings, isForgettableKind, judgeSettings } from "../storage/retention.ts";
import { decodeTombstone, mayDelete, type TargetInfo } from "../storage/deletion.ts";
import type { StoredEvent } from "../storage/event.ts";
import { fromHex, toHex } from "../core/bytes.ts";
import { toWire, XfError } from "../core/errors.ts";
import { authorizeWrite, GroupState, type GroupStateJSON } from "../storage/membership.ts";
import { type SigCheck, verifyAll } from "./verify.ts";

/** A batch decode hands to wal-flush. */
export interface WalAppend {
  type: "append";
  batch: import("./batch.ts").EventBatch;
}

/** A held event as the index answers `index.targets` (decode judges a tombstone with it); null when not held. */
export type TargetWire = { group: string; author: string; kind: number; ts: number } | null;

/**
 * A group's state as the index hands it to decode: null when the group is not held; `retained` its retention
 * boundary (the lowest `ts` of an application event it keeps, 0 for all).
 */
export type LoadedGroup = [gid: string, state: GroupStateJSON | null, retained?: number];

/** The index tells decode a group's retention boundary moved (signal: no credit, one per change). */
export interface RetainedSignal {
  type: "retained";
  gids: string[];
  ts: number[];
}

/** Messages decode takes. */
export type DecodeIn =
  | Input<DecodeBatch>
  | { type: "verified"; tok: number; ok: boolean[] }
  | { type: "loaded"; groups: LoadedGroup[] }
  | { type: "load-failed"; gids: string[]; code: string; message: string }
  | { type: "signal"; from: string; msg: RetainedSignal }
  /** The targets a batch's tombstones name, as the index holds them (null: the index did not answer). */
  | { type: "targets"; tok: number; found: TargetWire[] | null };

/** Effects decode asks for. */
export type DecodeEffect =
  | CommonEffect<"wal">
  | { do: "verify"; tok: number; checks: SigCheck[] }
  | { do: "load"; gids: string[] }
  | { do: "targets"; tok: number; ids: Uint8Array };

interface Pending {
  tok: number;
  items: BatchItem[];
  decoded: { it: BatchItem; ev: StoredEvent }[];
  results: EventResultWire[];
  rejected: Uint8Array[];
  requests: DecodeBatch["requests"];
  deferred: DecodeBatch["deferred"];
  valid: boolean[] | null;
  /** Groups it needs loaded before it can be admitted. */
  needs: Set<string>;
  /** Per tombstone (position in `decoded`): the ids it names. */
  tombstones: Map<number, Uint8Array[]>;
  /** The targets held in the index (hex id → fields, null: not held); null until the index answers. */
  targets: Map<string, TargetWire> | null;
}

/** Decode's state. */
export interface DecodeState {
  limits: Limits;
  /** Group states (LRU, at most `decode_groups_max`); a load that found nothing is `null`. */
  groups: Map<string, GroupState | null>;
  /** Groups asked of the index and not yet answered. */
  loading: Set<string>;
  /** Per group held in `groups`: its retention boundary (absent: 0); events older are refused EXPIRED. */
  retained: Map<string, number>;
  /** Groups whose load failed (the index was down), with the error, for the batches waiting on them. */
  failed: Map<string, { code: string; message: string }>;
  /** Batches in arrival order: admitted from the head once verified and their groups are loaded. */
  order: Pending[];
}

function reject(p: Pending, it: BatchItem, e: unknown) {
  const w = toWire(e);
  p.results.push({ req: it.req, idx: it.idx, status: "rejected", id: toHex(it.id), code: w.code, message: w.message });
  p.rejected.push(it.id);
}

/** A manifest whose group id follows from its owner and nonce (the signature is checked apart). */
function isOwnManifest(ev: StoredEvent): boolean {
  try {
    checkManifestEvent(ev);
    return true;
  } catch {
    return false;
  }
}

function touch(st: DecodeState, gid: string, g: GroupState | null) {
  st.groups.delete(gid);
  st.groups.set(gid, g);
  if (st.groups.size > st.limits.decode_groups_max) {
    const old = st.groups.keys().next().value!;
    st.groups.delete(old);
    st.retained.delete(old);
  }
}

function fromWire(id: Uint8Array, w: TargetWire): TargetInfo | null {
  return w ? { id, group: fromHex(w.group)!, author: fromHex(w.author)!, kind: w.kind, ts: w.ts } : null;
}

/** Decode a batch, ask for its signatures and any group not loaded. */
function take(st: DecodeState, msg: Input<DecodeBatch>): DecodeEffect[] {
  const limits = st.limits;
  const p: Pending = {
    tok: msg.tok,
    items: unpackBatch(msg.msg.batch),
    decoded: [],
    results: [],
    rejected: [],
    requests: msg.msg.requests,
    deferred: msg.msg.deferred ?? [],
    valid: null,
    needs: new Set(),
    tombstones: new Map(),
    targets: new Map(),
  };
  const horizon = msg.now + limits.event_future_ms;
  for (const it of p.items) {
    try {
      const ev = decodeEvent(it.bytes, limits, it.id);
      if (ev.ts > horizon) {
        throw new XfError(
          "TS_IN_FUTURE",
          `Cannot accept event: ts "${ev.ts}" is more than ${limits.event_future_ms} ms ahead of this node's clock`,
        );
      }
      if (ev.kind > KIND_SETTINGS && ev.kind < APP_KIND_MIN) {
        throw new XfError(
          "RESERVED_KIND",
          `Cannot accept event: kind "${ev.kind}" is reserved for the engine and not supported by this node`,
        );
      }
      if (ev.kind === KIND_TOMBSTONE) p.tombstones.set(p.decoded.length, decodeTombstone(ev.payload));
      if (ev.kind === KIND_SETTINGS) decodeSettings(ev.payload);
      p.decoded.push({ it, ev });
      if (ev.kind !== KIND_MANIFEST) p.needs.add(toHex(ev.group));
    } catch (e) {
      reject(p, it, e);
    }
  }
  for (const r of p.requests) p.needs.add(r.gid);
  st.order.push(p);
  const effects: DecodeEffect[] = [];
  const missing = [...p.needs].filter((g) => !st.groups.has(g) && !st.loading.has(g));
  if (missing.length) {
    for (const g of missing) st.loading.add(g);
    effects.push({ do: "load", gids: missing });
  }
  if (p.tombstones.size) {
    // Tombstones are judged against the targets held: one lookup per batch that has any.
    const all = new Map<string, Uint8Array>();
    for (const ts of p.tombstones.values()) for (const t of ts) all.set(toHex(t), t);
    const ids = new Uint8Array(all.size * 32);
    [...all.values()].forEach((t, i) => ids.set(t, i * 32));
    p.targets = null;
    effects.push({ do: "targets", tok: p.tok, ids });
  }
  effects.push({
    do: "verify",
    tok: p.tok,
    checks: p.decoded.map((d) => ({ author: d.ev.author, sig: d.ev.sig, signed: d.ev.signed! })),
  });
  return effects;
}

/** Admit batches from the head of the arrival order while they are ready. */
function admitReady(st: DecodeState): DecodeEffect[] {
  const effects: DecodeEffect[] = [];
  while (st.order.length) {
    const p = st.order[0]!;
    if (!p.valid || !p.targets || [...p.needs].some((g) => st.loading.has(g))) break;
    st.order.shift();
    effects.push(...admit(st, p));
  }
  return effects;
}

function admit(st: DecodeState, p: Pending): DecodeEffect[] {
  const effects: DecodeEffect[] = [];
  // A request whose group the reader may not see is answered UNKNOWN_GROUP whole, as for a group not held;
  // only a group not held can be created, by its own manifest in the request.
  const refused = new Set<number>();
  for (const r of p.requests) {
    const g = st.groups.get(r.gid) ?? null;
    const key = fromHex(r.reader || "00".repeat(32));
    if (g && key?.length === 32 && g.canRead(key)) continue;
    const creates = p.decoded.some((d, i) =>
      d.it.req === r.req && d.ev.kind === KIND_MANIFEST && p.valid![i] && toHex(d.ev.group) === r.gid &&
      isOwnManifest(d.ev)
    );
    if (g || !creates) {
      refused.add(r.req);
      effects.push({
        do: "report",
        msg: {
          type: "failed",
          req: r.req,
          code: "UNKNOWN_GROUP",
          message: `Cannot accept events: group "${r.gid}" is not known to this node`,
        },
      });
    }
  }
  // Ingest's answers for these requests (duplicates, mismatches), now that the reader may see the group.
  for (const r of p.deferred) if (!refused.has(r.req)) p.results.push(r);
  const accepted: BatchItem[] = [];
  /** Events accepted earlier in this batch, which a tombstone after them may name. */
  const here = new Map<string, TargetInfo>();
  p.decoded.forEach((d, i) => {
    if (refused.has(d.it.req)) return void p.rejected.push(d.it.id);
    try {
      if (!p.valid![i]) {
        throw new XfError("BAD_SIGNATURE", "Cannot accept event: the signature does not verify for its author");
      }
      const gid = toHex(d.ev.group);
      const g = st.groups.get(gid) ?? null;
      if (d.ev.kind === KIND_MANIFEST) {
        const m = checkManifestEvent(d.ev);
        if (!g) touch(st, gid, new GroupState(d.ev.author, m.policy));
      } else {
        if (!g) {
          const f = st.failed.get(gid);
          if (f) throw new XfError(f.code as never, f.message);
          throw new XfError(
            "UNKNOWN_GROUP",
            `Cannot accept event: this node does not hold the manifest of group "${gid}"`,
          );
        }
        const v = authorizeWrite(g, d.ev);
        if (!v.ok) throw new XfError(v.code as never, v.message);
        if (d.ev.kind === KIND_SETTINGS) {
          const j = judgeSettings(g, d.ev);
          if (!j.ok) throw new XfError(j.code, j.message);
        }
        const floor = st.retained.get(gid) ?? 0;
        if (isForgettableKind(d.ev.kind) && d.ev.ts < floor) {
          throw new XfError(
            "EXPIRED",
            `Cannot accept event: ts "${d.ev.ts}" is older than group "${gid}"'s retention boundary "${floor}"`,
          );
        }
        const targets = p.tombstones.get(i);
        // A tombstone is refused whole when a target held may not be deleted by its signer; a target not held
        // is left to the index (pending until it arrives, see storage/deletion.ts).
        for (const t of targets ?? []) {
          const h = toHex(t);
          const info = here.get(h) ?? fromWire(t, p.targets!.get(h) ?? null);
          if (!info) continue;
          const j = mayDelete(g, d.ev, info);
          if (!j.ok) throw new XfError(j.code, j.message);
        }
      }
      here.set(toHex(d.ev.id), d.ev);
      accepted.push(d.it);
    } catch (e) {
      reject(p, d.it, e);
    }
  });
  if (p.results.length) effects.push({ do: "report", msg: { type: "results", items: p.results } });
  if (p.rejected.length) {
    const ids = new Uint8Array(p.rejected.length * 32);
    p.rejected.forEach((id, i) => ids.set(id, i * 32));
    effects.push({ do: "signal", to: "ingest", msg: { type: "release", ids, stored: false } satisfies Release });
  }
  if (accepted.length) {
    effects.push({ do: "send", to: "wal", msg: { type: "append", batch: packBatch(accepted) } satisfies WalAppend });
  }
  effects.push({ do: "done", tok: p.tok });
  return effects;
}

/** The decode stage's logic. */
export const logic: StageLogic<DecodeState, DecodeIn, DecodeEffect> = {
  // Two batches at once: one is admitted while the next one's signatures are verified.
  concurrency: 2,
  init: (config) => ({
    limits: config.limits,
    groups: new Map(),
    loading: new Set(),
    retained: new Map(),
    failed: new Map(),
    order: [],
  }),
  receive(st, msg) {
    switch (msg.type) {
      case "input":
        return [...take(st, msg), ...admitReady(st)];
      case "verified": {
        const p = st.order.find((x) => x.tok === msg.tok);
        if (p) p.valid = msg.ok;
        return admitReady(st);
      }
      case "targets": {
        const p = st.order.find((x) => x.tok === msg.tok);
        if (p) {
          // Unanswered (the index restarting): every target counts as not held, and the index judges.
          const ids = [...new Set([...p.tombstones.values()].flat().map((t) => toHex(t)))];
          p.targets = new Map(ids.map((h, i) => [h, msg.found?.[i] ?? null]));
        }
        return admitReady(st);
      }
      case "signal":
        if (msg.msg.type === "retained") {
          msg.msg.gids.forEach((gid, i) => {
            if (st.groups.has(gid)) st.retained.set(gid, msg.msg.ts[i] ?? 0);
          });
        }
        return [];
      case "loaded":
        for (const [gid, json, retained] of msg.groups) {
          st.loading.delete(gid);
          st.failed.delete(gid);
          if (retained) st.retained.set(gid, retained);
          // Loaded while a manifest admitted here created it: what decode holds is newer.
          if (st.groups.get(gid)) continue;
          touch(st, gid, json ? GroupState.fromJSON(json) : null);
        }
        return admitReady(st);
      case "load-failed": {
        for (const gid of msg.gids) {
          st.loading.delete(gid);
          st.failed.set(gid, { code: msg.code, message: msg.message });
        }
        const effects = admitReady(st);
        // Not remembered as absent: the next batch asks again.
        for (const gid of msg.gids) {
          st.failed.delete(gid);
          if (st.groups.get(gid) === null) st.groups.delete(gid);
        }
        return effects;
      }
    }
  },
};

/** Verify on this thread below this many signatures; larger batches are shared with the helper Worker. */
const VERIFY_SPLIT_MIN = 64;

/** Decode's runtime: signatures (here and on a helper Worker), and group loads from the index. */
export const effects = (ctx: HostContext) => {
  let helper: Worker | null = null;
  let next = 1;
  const waiting = new Map<number, (ok: boolean[]) => void>();
  const onHelper = (ev: MessageEvent<{ id: number; ok: boolean[] }>) => {
    waiting.get(ev.data.id)?.(ev.data.ok);
    waiting.delete(ev.data.id);
  };
  const remote = (checks: SigCheck[]) =>
    new Promise<boolean[]>((resolve) => {
      const id = next++;
      waiting.set(id, resolve);
      helper!.postMessage({ id, checks });
    });
  return {
    start(_st: DecodeState, config: { limits: Limits }) {
      if (config.limits.decode_verify_workers_max > 0) {
        helper = new Worker(new URL("./verify_worker.ts", import.meta.url), { type: "module" });
        helper.onmessage = onHelper;
      }
    },
    async run(eff: DecodeEffect): Promise<DecodeIn | void> {
      if (eff.do === "verify") {
        const n = eff.checks.length;
        if (!helper || n < VERIFY_SPLIT_MIN) return { type: "verified", tok: eff.tok, ok: verifyAll(eff.checks) };
        // Half to the helper, half here: both cores verify.
        const half = n >> 1;
        const there = remote(eff.checks.slice(0, half));
        const here = verifyAll(eff.checks.slice(half));
        return { type: "verified", tok: eff.tok, ok: [...(await there), ...here] };
      }
      if (eff.do === "targets") {
        try {
          // Through the root, which asks once the index holds every event acknowledged so far: a target
          // acknowledged before its tombstone is judged here, not only by the index after the tombstone's ack.
          const found = await ctx.ask<TargetWire[]>({ type: "index.targets", ids: eff.ids });
          return { type: "targets", tok: eff.tok, found };
        } catch {
          return { type: "targets", tok: eff.tok, found: null };
        }
      }
      if (eff.do === "load") {
        try {
          const groups = await ctx.ask<LoadedGroup[]>({ type: "index.groupStates", gids: eff.gids });
          return { type: "loaded", groups };
        } catch (e) {
          const w = toWire(e);
          return { type: "load-failed", gids: eff.gids, code: w.code, message: w.message };
        }
      }
    },
    stop() {
      helper?.terminate();
      for (const w of waiting.values()) w([]);
      waiting.clear();
    },
  };
};

export default { logic, effects } satisfies StageModule<DecodeState, DecodeIn, DecodeEffect>;
