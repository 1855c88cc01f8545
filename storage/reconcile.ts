/**
 * Negentropy reconciliation over a group's Merkle tree, as a store answers
 * it for a sync session (`SyncHost.reconcile`): an initiator's state is kept
 * between messages under its session id (bounded in count and idle time); a
 * responder answers each message afresh with id lists (the C++ reference's
 * way), so the initiator learns the whole difference. The node's index and
 * the replica both answer through this. No Deno API.
 *
 * @module
 */

import { Reconciler } from "../merkle/negentropy.ts";
import { type NegentropyStorage, SubRange, VectorStorage } from "../merkle/negentropy_storage.ts";
import type { MerkleTree } from "../merkle/mod.ts";
import { XfError } from "../core/errors.ts";
import { RECONCILE_SESSION_IDLE_MS, RECONCILE_SESSIONS_MAX } from "../core/limits.ts";

/** The empty set, for a group not held yet (joining reconciles as the empty set). */
export const EMPTY_SET: VectorStorage = (() => {
  const v = new VectorStorage();
  v.seal();
  return v;
})();

/** One step's answer: the message to send (null when done), ids the peer lacks and ids we lack. */
export interface ReconcileStep {
  output: Uint8Array | null;
  have: Uint8Array[];
  need: Uint8Array[];
}

/** Reconciliation sessions of one store. */
export class ReconcileSessions {
  #sessions = new Map<string, { r: Reconciler; used: number }>();

  /**
   * One step over `tree` (null: the empty set): `session` names an initiator's state (null for a responder);
   * `msg` is the peer's message (null to initiate). With `since`/`until` it reconciles only the items with
   * `since <= ts < until` (partial sync); an initiator's session keeps the range it started with. Throws
   * `BAD_FRAME` for a message to an unknown session, `BAD_QUERY` for a range that is not integer milliseconds.
   */
  step(
    tree: MerkleTree | null,
    session: string | null,
    msg: Uint8Array | null,
    opts: { frameSizeLimit?: number; since?: number | undefined; until?: number | undefined } = {},
    now = Date.now(),
  ): ReconcileStep {
    const whole: NegentropyStorage = tree ?? EMPTY_SET;
    const since = opts.since ?? 0, until = opts.until ?? Infinity;
    if (!Number.isSafeInteger(since) || since < 0 || (until !== Infinity && !Number.isSafeInteger(until))) {
      throw new XfError("BAD_QUERY", `Cannot reconcile range [${since}, ${until}): not integer milliseconds`);
    }
    // An empty range (since >= until, e.g. after raising since to a retention boundary) reconciles nothing.
    const set = since === 0 && until === Infinity ? whole : new SubRange(whole, since, Math.max(since, until));
    const rOpts = opts.frameSizeLimit !== undefined ? { frameSizeLimit: opts.frameSizeLimit } : {};
    const sessions = this.#sessions;
    for (const [k, v] of sessions) if (now - v.used > RECONCILE_SESSION_IDLE_MS) sessions.delete(k);
    let r: Reconciler;
    if (session) {
      const s = sessions.get(session);
      if (!s) {
        if (msg) throw new XfError("BAD_FRAME", `No reconciliation session "${session}"`);
        r = new Reconciler(set, rOpts);
        if (sessions.size >= RECONCILE_SESSIONS_MAX) sessions.delete(sessions.keys().next().value!);
        sessions.set(session, { r, used: now });
      } else {
        r = s.r;
        s.used = now;
      }
    } else {
      r = new Reconciler(set, { ...rOpts, idListReply: true });
    }
    if (!msg) return { output: r.initiate(), have: [], need: [] };
    let res: ReturnType<Reconciler["reconcile"]>;
    try {
      res = r.reconcile(msg);
    } catch (e) {
      if (session) sessions.delete(session); // a failed reconciliation does not resume
      throw e;
    }
    if (session && res.output === null) sessions.delete(session);
    return { output: res.output, have: res.have.map((h) => h.slice()), need: res.need.map((h) => h.slice()) };
  }
}
