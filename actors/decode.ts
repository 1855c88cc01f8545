/**
 * Stage 2, decode: the deterministic-CBOR check, the event shape, the
 * clock, the group (its manifest must be known) and the signature. What
 * passes goes to wal-flush; what fails is answered to the root with its
 * code.
 *
 * Messages it takes (data): `decode.batch`.
 * It sends: `wal` ← `wal.append`; `root` ← `pipeline.results`,
 * `decode.rejected`. It asks `index` ← `index.group`.
 *
 * @module
 */

import { toHex } from "../core/bytes.ts";
import type { Stage, StageContext } from "./runtime.ts";
import { type BatchItem, type EventBatch, type EventResult, packBatch, unpackBatch } from "./batch.ts";
import { DECODE_GROUPS_MAX, DECODE_PENDING_MEMBERSHIP_MAX, LIMITS, type Limits } from "../core/limits.ts";
import {
  APP_KIND_MIN,
  checkManifestEvent,
  decodeEvent,
  KIND_MANIFEST,
  KIND_MEMBERSHIP,
  POLICY_CLOSED,
  type StoredEvent,
  verifyEvent,
} from "../storage/event.ts";
import { toWire, XfError } from "../core/errors.ts";
import { GroupState } from "../storage/membership.ts";
import type { AuthorizeItem } from "./index_stage.ts";

/** Messages the decode stage takes. */
export type DecodeMsg = { type: "decode.batch"; batch: EventBatch };

/** What decode knows of a group. */
export interface GroupInfo {
  owner: string;
  policy: number;
}

/** Decode's config. */
export interface DecodeConfig {
  limits: Limits;
  /** Injected clock (ms). */
  now?: () => number;
}

/** The decode stage's logic. */
export function decodeStage(): Stage<DecodeConfig> {
  let limits: Limits = { ...LIMITS };
  let now = Date.now;
  const groups = new Map<string, GroupInfo>();

  async function knownGroups(gids: Set<string>, ctx: StageContext): Promise<void> {
    const missing = [...gids].filter((g) => !groups.has(g));
    if (missing.length === 0) return;
    const infos = await ctx.ask<(GroupInfo | null)[]>("index", { type: "index.groups", gids: missing });
    missing.forEach((g, i) => {
      const info = infos[i];
      if (info) remember(g, info);
    });
  }

  /** Membership events admitted lately, per group (bounded), sent along with authorization requests. */
  const recentMembership = new Map<string, AuthorizeItem[]>();
  function rememberMembership(ev: StoredEvent) {
    const gid = toHex(ev.group);
    const list = recentMembership.get(gid) ?? [];
    list.push({ gid, author: ev.author, ts: ev.ts, kind: ev.kind, id: ev.id, payload: ev.payload });
    if (list.length > DECODE_PENDING_MEMBERSHIP_MAX) list.shift();
    recentMembership.set(gid, list);
    if (recentMembership.size > DECODE_GROUPS_MAX) recentMembership.delete(recentMembership.keys().next().value!);
  }

  function remember(gid: string, info: GroupInfo) {
    if (groups.size >= DECODE_GROUPS_MAX) groups.delete(groups.keys().next().value!);
    groups.set(gid, info);
  }

  /** Resolved when the batch before has been admitted. */
  let turn: Promise<void> = Promise.resolve();

  async function batch(b: EventBatch, ctx: StageContext) {
    // Take a turn now, in arrival order; it is used after the signatures are verified.
    const prev = turn;
    let done!: () => void;
    turn = new Promise<void>((r) => (done = r));
    try {
      await decodeAndAdmit(b, prev, ctx);
    } finally {
      done();
    }
  }

  async function decodeAndAdmit(b: EventBatch, prev: Promise<void>, ctx: StageContext) {
    const results: EventResult[] = [];
    const rejectedIds: Uint8Array[] = [];
    const reject = (it: BatchItem, e: unknown) => {
      const w = toWire(e);
      results.push({
        req: it.req,
        idx: it.idx,
        status: "rejected",
        id: toHex(it.id),
        code: w.code,
        message: w.message,
      });
      rejectedIds.push(it.id);
    };
    const decoded: { it: BatchItem; ev: StoredEvent }[] = [];
    const horizon = now() + limits.event_future_ms;
    for (const it of unpackBatch(b)) {
      try {
        const ev = decodeEvent(it.bytes, limits, it.id);
        if (ev.ts > horizon) {
          throw new XfError(
            "TS_IN_FUTURE",
            `Cannot accept event: ts "${ev.ts}" is more than ${limits.event_future_ms} ms ahead of this node's clock`,
          );
        }
        if (ev.kind !== KIND_MANIFEST && ev.kind !== KIND_MEMBERSHIP && ev.kind < APP_KIND_MIN) {
          throw new XfError(
            "RESERVED_KIND",
            `Cannot accept event: kind "${ev.kind}" is reserved for the engine and not supported by this node`,
          );
        }
        decoded.push({ it, ev });
      } catch (e) {
        reject(it, e);
      }
    }
    // Signatures, verified in parallel (WebCrypto spreads them over threads); two batches may be here at once.
    const valid = await Promise.all(decoded.map((d) => verifyEvent(d.ev)));
    // From here on batches go one at a time, in arrival order: a manifest admits its group for the
    // batches after it, membership changes count for later events, and the WAL sees arrival order.
    await prev;
    await admit(decoded, valid, results, rejectedIds, reject, ctx);
  }

  async function admit(
    decoded: { it: BatchItem; ev: StoredEvent }[],
    valid: boolean[],
    results: EventResult[],
    rejectedIds: Uint8Array[],
    reject: (it: BatchItem, e: unknown) => void,
    ctx: StageContext,
  ) {
    // Groups: manifests in this batch introduce their group; others must be known.
    const needed = new Set<string>();
    for (const d of decoded) if (d.ev.kind !== KIND_MANIFEST) needed.add(toHex(d.ev.group));
    let lookupError: unknown = null;
    try {
      await knownGroups(needed, ctx);
    } catch (e) {
      lookupError = e;
    }
    const passed: { it: BatchItem; ev: StoredEvent }[] = [];
    const newGroups = new Map<string, GroupState>();
    decoded.forEach((d, i) => {
      try {
        if (!valid[i]) {
          throw new XfError("BAD_SIGNATURE", "Cannot accept event: the signature does not verify for its author");
        }
        const gid = toHex(d.ev.group);
        if (d.ev.kind === KIND_MANIFEST) {
          const m = checkManifestEvent(d.ev);
          if (!groups.has(gid)) {
            remember(gid, { owner: toHex(d.ev.author), policy: m.policy });
            newGroups.set(gid, new GroupState(d.ev.author, m.policy));
          }
        } else if (!groups.has(gid)) {
          if (lookupError) throw lookupError;
          throw new XfError(
            "UNKNOWN_GROUP",
            `Cannot accept event: this node does not hold the manifest of group "${gid}"`,
          );
        }
        passed.push(d);
      } catch (e) {
        reject(d.it, e);
      }
    });
    // Write authorization: membership events in any group, every event of a closed group. Groups
    // created in this batch are judged here; the others by the index, which holds their state.
    const needsAuth = (ev: StoredEvent) =>
      ev.kind !== KIND_MANIFEST &&
      (ev.kind === KIND_MEMBERSHIP || groups.get(toHex(ev.group))?.policy === POLICY_CLOSED);
    const remote = passed.filter((d) => needsAuth(d.ev) && !newGroups.has(toHex(d.ev.group)));
    let verdicts: ({ ok: true } | { ok: false; code: string; message: string })[] = [];
    if (remote.length) {
      try {
        verdicts = await ctx.ask("index", {
          type: "index.authorize",
          // Membership events admitted here lately may not be indexed yet: the index counts them too.
          pending: [...new Set(remote.map((d) => toHex(d.ev.group)))].flatMap((g) => recentMembership.get(g) ?? []),
          items: remote.map((d) => ({
            gid: toHex(d.ev.group),
            author: d.ev.author,
            ts: d.ev.ts,
            kind: d.ev.kind,
            id: d.ev.id,
            payload: d.ev.payload,
          })),
        });
      } catch (e) {
        verdicts = remote.map(() => ({ ok: false, code: toWire(e).code, message: toWire(e).message }));
      }
    }
    const verdictOf = new Map(remote.map((d, i) => [d, verdicts[i]!]));
    const accepted: BatchItem[] = [];
    for (const d of passed) {
      let v = verdictOf.get(d) ?? { ok: true as const };
      const local = newGroups.get(toHex(d.ev.group));
      if (local && needsAuth(d.ev)) {
        if (d.ev.kind === KIND_MEMBERSHIP) {
          v = local.judgeMembership(d.ev);
          if (v.ok) local.apply([d.ev]);
        } else if (!local.canWrite(d.ev.author, d.ev.ts)) {
          v = {
            ok: false,
            code: "FORBIDDEN",
            message: `Cannot accept event: author "${toHex(d.ev.author)}" is not a member`,
          };
        }
      }
      if (v.ok) {
        accepted.push(d.it);
        if (d.ev.kind === KIND_MEMBERSHIP) rememberMembership(d.ev);
      } else reject(d.it, new XfError(v.code as never, v.message));
    }
    if (results.length) {
      ctx.emit("root", { type: "pipeline.results", items: results });
      const ids = new Uint8Array(rejectedIds.length * 32);
      rejectedIds.forEach((id, i) => ids.set(id, i * 32));
      ctx.emit("root", { type: "decode.rejected", ids });
    }
    if (accepted.length) ctx.emit("wal", { type: "wal.append", batch: packBatch(accepted) });
  }

  return {
    // Two batches at once: one decodes while the other's signatures are verified.
    concurrency: 2,
    start(config) {
      limits = config.limits;
      if (config.now) now = config.now;
    },
    async data(raw, ctx) {
      const msg = raw as DecodeMsg;
      if (msg.type === "decode.batch") return await batch(msg.batch, ctx);
      throw new XfError("INTERNAL", `Decode cannot handle message "${(msg as { type: string }).type}"`);
    },
    call(raw) {
      const msg = raw as { type: string };
      if (msg.type === "decode.stats") return { groups: groups.size };
      throw new XfError("INTERNAL", `Decode cannot answer "${msg.type}"`);
    },
  };
}
