/**
 * The peer sync protocol (`GET /v1/sync`, WebSocket, CBOR frames inside an
 * encrypted session, `net/secure.ts`). One {@linkcode SyncSession} runs each
 * end of a connection; it is written against a {@linkcode FrameChannel} so
 * two sessions can be piped together in-process in tests, and against a
 * {@linkcode SyncHost} (the node).
 *
 * ```
 *  client (dials, initiator)                  server (responder)
 *    │ hs1 / hs2 / hs3 (net/secure.ts)     ◄─►  │   X25519 + Ed25519 over the transcript;
 *    │   info: {frame, credit, creditBytes}     │   then every frame is AEAD-encrypted
 *    │ sub {gid, since?, until?}           ──►  │   may the peer read it here?
 *    │ ◄──  sub.ok {gid, root, count,           │   (else error UNKNOWN_GROUP)
 *    │             since?, until?}              │   the range both reconcile (partial sync)
 *    │ neg {gid, msg}  (negentropy v1)     ──►  │   answered from the Merkle
 *    │ ◄──  neg {gid, msg}                      │   index, no scan
 *    │   … until the client's reconciler is done; meanwhile either side:
 *    │ want {gid, ids}  /  events {gid, events} │   what the other lacks
 *    │ missing {gid, ids}                       │   asked for, but not held
 *    │ credit {n, b}                            │   receiver grants more events and bytes
 *    │ ◄──  events {gid, events, live: true}    │   new events, both ways
 *    │ bye {reason}  /  error {code, message}   │
 * ```
 *
 * **The side that asked drives.** Per group a session keeps an explicit
 * state: ours (we sent `sub`: asked → open) and theirs (the peer's `sub`,
 * accepted). A `sub.ok` for a group we did not ask, a `neg` reply when none
 * of ours is outstanding, or a `missing` for ids we never wanted answers
 * nothing we sent: `UNSOLICITED`, and the session ends. Every frame that
 * names a group is checked against the proven peer's right to that group at
 * that moment; when the group's membership changes the right is checked
 * again, and a peer that lost it loses the group's session at once (queued
 * events of it are dropped, nothing more is sent).
 *
 * **Partial sync.** A `sub` may name a time range `[since, until)`; the
 * responder raises `since` to the lowest `ts` it retains, and echoes the
 * range in `sub.ok`; both sides then reconcile exactly that range (a
 * {@linkcode SubRange} of the index) and push live only events in it (and
 * the manifest and membership events, as at `sub`). The initiator asks from
 * its own retained boundary at least, so peers reconcile only what both
 * retain. A `sub` without a range, answered without one, is the whole group.
 *
 * **Bounded in bytes.** Frames are at most `sync_frame_bytes_max`; a peer
 * may send at most the events and bytes it was granted (`credit`); what we
 * owe a peer is kept as ids until it has credit and its socket has room
 * (`sync_socket_buffer_bytes_max`), so a peer that never reads costs ids,
 * not events; queued event bytes are bounded per peer
 * (`sync_peer_queue_bytes_max`) and node-wide (`sync_memory_bytes_max`); a
 * peer that makes no progress for `sync_stall_ms` while we have data for it
 * is cut off (`PEER_TOO_SLOW`).
 *
 * @module
 */

import { bytesEqual, fromHex, toHex } from "../core/bytes.ts";
import { sha256 } from "@noble/hashes/sha2";
import { peekEvent } from "../storage/event.ts";
import { decodeFrame, encodeFrame, field, type Frame, isBytes, isUint } from "./frames.ts";
import { type Ed25519, type KeyPair } from "../storage/ed25519.ts";
import { type ErrorCode, toWire, XfError } from "../core/errors.ts";
import type { Limits } from "../core/limits.ts";
import type { EventResult } from "../actors/batch.ts";
import { log, short } from "../actors/log.ts";
import { type FrameChannel, SecureChannel } from "./secure.ts";
import { type Clock, type RandomSource, realClock, realRandom, type TimerHandle } from "../core/clock.ts";
import { ECHO_IDS_MAX, FETCH_IDS_MAX, RETRY_EVENTS_MAX, SYNC_STORE_RETRY_MS, SYNC_TICK_MS } from "../core/limits.ts";

export type { FrameChannel } from "./secure.ts";

/** Protocol version of the frames inside the session. */
export const SYNC_VERSION = 2;

/** Bytes of events a session fetches ahead of the peer's credit (within `sync_peer_queue_bytes_max`). */
export const PREFETCH_BYTES = 1024 * 1024;

/** A byte budget shared by every session of a node (`sync_memory_bytes_max`). */
export class ByteBudget {
  used = 0;
  constructor(readonly max: number) {}
  /** Take `n` bytes if they fit. */
  take(n: number): boolean {
    if (this.used + n > this.max) return false;
    this.used += n;
    return true;
  }
  /** Give `n` bytes back. */
  give(n: number): void {
    this.used = Math.max(0, this.used - n);
  }
}

/**
 * A time range of a group: the events with `since <= ts < until` (ms since the Unix epoch; `until` is
 * `Infinity` for no upper end). `since >= until` is the empty range.
 */
export interface SyncRange {
  since: number;
  until: number;
}

/** The whole group. */
export const WHOLE_GROUP: Readonly<SyncRange> = Object.freeze({ since: 0, until: Infinity });

/** What a caller may ask of {@linkcode SyncSession.sync}: a range `[since, until)` (default the whole group). */
export interface SyncOptions {
  since?: number;
  until?: number;
}

/**
 * Check a range a caller asked for: `since` and `until`, when given, are non-negative safe integers (ms) and
 * `since < until`; throws `XfError` `BAD_QUERY` otherwise.
 */
export function checkRange(options: SyncOptions, code: "BAD_QUERY" | "BAD_FRAME" = "BAD_QUERY"): SyncRange {
  const { since, until } = options;
  for (const [k, v] of [["since", since], ["until", until]] as const) {
    if (v !== undefined && !isUint(v)) {
      throw new XfError(code, `Cannot sync with ${k} "${String(v)}": not a non-negative integer of milliseconds`);
    }
  }
  if (since !== undefined && until !== undefined && since >= until) {
    throw new XfError(code, `Cannot sync the range [${since}, ${until}): since must be before until`);
  }
  return { since: since ?? 0, until: until ?? Infinity };
}

/** Whether a range is the whole group. */
const isWhole = (r: SyncRange) => r.since === 0 && r.until === Infinity;

/** The range's fields of a `sub` or `sub.ok` frame (`since` always, `until` when it has an end). */
const rangeFields = (r: SyncRange) => ({ since: r.since, ...(r.until === Infinity ? {} : { until: r.until }) });

/** What a session needs from its node. */
export interface SyncHost {
  key: KeyPair;
  limits: Limits;
  /** Outbound bytes queued by all sessions together. */
  memory: ByteBudget;
  /** Whether the group exists here and `peer` may read it. */
  access(gid: string, peer: Uint8Array): Promise<{ exists: boolean; readable: boolean; root: string; count: number }>;
  /**
   * One negentropy step over the group's items in `range` (default the whole group): initiate (`msg` null) or
   * answer. An initiator's `session` keeps the range it started with.
   */
  reconcile(
    gid: string,
    session: string | null,
    msg: Uint8Array | null,
    range?: SyncRange,
  ): Promise<{ output: Uint8Array | null; have: Uint8Array[]; need: Uint8Array[] } | null>;
  /**
   * The lowest `ts` this node keeps of the group (0: all of it): the retention boundary of a kind 3 group
   * settings event (`storage/retention.ts`). Peers reconcile only from there on. Absent: 0.
   */
  retained?(gid: string): Promise<number>;
  /** Events by id (`ids`: n × 32 bytes), in order; a prefix of the ids once `bytesMax` is passed. */
  getMany(ids: Uint8Array, bytesMax?: number): Promise<(Uint8Array | null)[]>;
  /** The group's manifest and membership events, in `(ts, id)` order. */
  admission(gid: string): Promise<Uint8Array[]>;
  submit(gid: string, events: Uint8Array[]): Promise<EventResult[]>;
  subscribe(gid: string, cb: (events: Uint8Array[]) => void): Promise<() => Promise<void>>;
  /** Groups this node serves (a client subscribes to each). */
  groups(): Promise<string[]>;
  /** Ids of this node's damaged events of a group, asked for by id from the peer once the group is open. */
  restore?(gid: string): Uint8Array[];
  /** Progress and peer sightings, for /metrics, the peers route and library users. */
  report(ev: SyncReport): void;
  /** `n` events of a peer's frame were stored `seconds` after the frame arrived (`xf_sync_delivery_seconds`). */
  observeDelivery?(seconds: number, n: number): void;
  /** The clock of the session's timers, stall and idle checks and handshake timeout (default the real one). */
  clock?: Clock;
  /** The source of the session's randomness: its reconciliation id and the handshake's (default `crypto`). */
  random?: RandomSource;
  /** Ed25519 for the handshake's proofs (default WebCrypto's). */
  ed25519?: Ed25519;
}

/** What a session reports as it goes. */
export type SyncReport =
  | { type: "peer"; gid: string; node: string; addr: string; root: string }
  | { type: "progress"; gid: string; node: string; missing: number; received: number; sent: number; done: boolean }
  | { type: "closed"; node: string; reason: string };

/** Totals of a session, for tests and the CLI. */
export interface SessionStats {
  framesIn: number;
  framesOut: number;
  bytesIn: number;
  bytesOut: number;
  negRounds: number;
  eventsSent: number;
  eventsReceived: number;
  eventsStored: number;
  eventsRejected: number;
}

const frame = encodeFrame;

const isGid = (v: unknown) => typeof v === "string" && /^[0-9a-f]{64}$/.test(v);
const isIdList = (max: number) => (v: unknown) => Array.isArray(v) && v.length <= max && v.every(isBytes(32));

/** Our subscription at the peer (we asked). */
interface OurSub {
  state: "asked" | "open";
  /** The range our `sub` asked for, and whether the `sub` carried it (else it asked for the whole group). */
  asked: SyncRange;
  ranged: boolean;
  /** The range both sides reconcile and stream live: the one `sub.ok` echoed (the whole group if none). */
  range: SyncRange;
  /** We sent a `neg` and wait for the peer's reply. */
  negOutstanding: boolean;
  /** Our reconciler finished; done once every wanted event arrived. */
  reconciled: boolean;
  unsub: (() => Promise<void>) | null;
}

/** The peer's subscription here (it asked, we accepted). */
interface TheirSub {
  unsub: (() => Promise<void>) | null;
  /** The range we echoed in `sub.ok`: what we answer its reconciliation over and stream live. */
  range: SyncRange;
}

/** Something owed to the peer: event bytes ready to send, or ids to fetch when it has room. */
type Owed =
  | { gid: string; kind: "events"; events: Uint8Array[]; bytes: number; live: boolean }
  | { gid: string; kind: "ids"; ids: Uint8Array; at: number; answerMissing: boolean };

/** One end of a sync connection. */
export class SyncSession {
  readonly stats: SessionStats = {
    framesIn: 0,
    framesOut: 0,
    bytesIn: 0,
    bytesOut: 0,
    negRounds: 0,
    eventsSent: 0,
    eventsReceived: 0,
    eventsStored: 0,
    eventsRejected: 0,
  };
  /** The peer's public key, once it proved it. */
  peerKey: Uint8Array | null = null;
  state: "hello" | "ready" | "closed" = "hello";
  closeReason = "";
  /** The encrypted channel under the session. */
  readonly secure: SecureChannel;

  private strikes = 0;
  private ours = new Map<string, OurSub>();
  private theirs = new Map<string, TheirSub>();
  /** The peer's right to each group, as last checked (dropped when the group's membership changes). */
  private rights = new Map<string, Promise<boolean>>();
  /** Groups whose right is being checked again: nothing of them is sent meanwhile. */
  private held = new Set<string>();
  /** What the peer granted us: events and bytes we may still send, and its window. */
  private sendCredit = 0;
  private sendCreditBytes = 0;
  private window = { events: 0, bytes: 0, frame: 0 };
  /** What we granted the peer and not yet received. */
  private granted: number;
  private grantedBytes: number;
  private owed: Owed[] = [];
  private owedBytes = 0;
  private owedIds = 0;
  private fetching = false;
  private inboundBytes = 0;
  private lastProgress: number;
  private lastActive: number;
  private ticker: TimerHandle | undefined;
  private retryTimer: TimerHandle | undefined;
  private progress = new Map<string, { missing: number; received: number; sent: number; done: boolean }>();
  private readyWaiters: ((ok: boolean) => void)[] = [];
  private doneWaiters = new Map<string, (() => void)[]>();
  private work: Promise<void> = Promise.resolve();
  private sessionId: string;
  private readonly clock: Clock;
  /** Ids asked of the peer and not yet received, per group. */
  private pendingWants = new Map<string, Set<string>>();
  private retry: { gid: string; bytes: Uint8Array }[] = [];
  /** Groups revoked in this session: frames of them still in flight from the peer are ignored, not unsolicited. */
  private revoked = new Set<string>();
  /** Ids the peer sent us: they are not streamed back to it. */
  private fromPeer = new Set<string>();
  /** Per group this session syncs: when it started and the event bytes moved, for the summary line. */
  private syncTimes = new Map<string, { start: number; bytesIn: number; bytesOut: number }>();

  constructor(
    private readonly host: SyncHost,
    ch: FrameChannel,
    readonly role: "client" | "server",
    /** Where the peer can be dialed (the URL we dialed; "" for a session it opened). */
    readonly addr: string = "",
    /** The remote network address of the connection, for per-address limits ("" if unknown). */
    readonly remote: string = "",
  ) {
    const l = host.limits;
    this.clock = host.clock ?? realClock;
    const random = host.random ?? realRandom;
    this.lastProgress = this.lastActive = this.clock.monotonic();
    this.sessionId = toHex(random(8));
    this.granted = l.sync_credit_events;
    this.grantedBytes = l.sync_credit_bytes_max;
    this.secure = new SecureChannel(ch, {
      key: host.key,
      purpose: "sync",
      role: role === "client" ? "initiator" : "responder",
      info: { v: SYNC_VERSION, frame: l.sync_frame_bytes_max, credit: this.granted, creditBytes: this.grantedBytes },
      frameMax: l.sync_frame_bytes_max,
      handshakeMs: l.sync_handshake_ms,
      random,
      clock: this.clock,
      ...(host.ed25519 ? { ed25519: host.ed25519 } : {}),
    });
    this.secure.onFrame = (f) => this.onFrame(f);
    this.secure.onClose = (reason) => this.closed(reason || "connection closed");
    this.secure.ready.then((proof) => this.onProven(proof.key, proof.info), () => {});
  }

  /** Resolves when both sides proved who they are (false if the session closed first). */
  ready(): Promise<boolean> {
    if (this.state === "ready") return Promise.resolve(true);
    if (this.state === "closed") return Promise.resolve(false);
    return new Promise((r) => this.readyWaiters.push(r));
  }

  /** Peer key as hex ("" before auth). */
  get peer(): string {
    return this.peerKey ? toHex(this.peerKey) : "";
  }

  /** Groups subscribed in either direction. */
  get groupCount(): number {
    return new Set([...this.ours.keys(), ...this.theirs.keys()]).size;
  }

  /** Event bytes queued for the peer (counted in the node-wide budget). */
  get queuedBytes(): number {
    return this.owedBytes;
  }

  private onProven(key: Uint8Array, info: Map<string, unknown>) {
    if (this.state !== "hello") return;
    const num = (k: string, max: number) => {
      const v = info.get(k);
      if (!isUint(v)) throw new XfError("BAD_FRAME", `Handshake info needs ${k} as a count`);
      return Math.min(v as number, max);
    };
    const l = this.host.limits;
    try {
      if (info.get("v") !== SYNC_VERSION) {
        throw new XfError("BAD_FRAME", `Sync frames version "${String(info.get("v"))}" is not supported`);
      }
      this.window = {
        events: num("credit", l.sync_credit_events),
        bytes: num("creditBytes", l.sync_credit_bytes_max),
        frame: Math.max(4096, num("frame", l.sync_frame_bytes_max)),
      };
    } catch (e) {
      const w = toWire(e);
      return this.fail(w.code, w.message);
    }
    this.sendCredit = this.window.events;
    this.sendCreditBytes = this.window.bytes;
    this.peerKey = key;
    this.state = "ready";
    this.lastActive = this.lastProgress = this.clock.monotonic();
    this.ticker = this.clock.setInterval(() => this.tick(), SYNC_TICK_MS);
    for (const w of this.readyWaiters.splice(0)) w(true);
  }

  private send(bytes: Uint8Array) {
    if (this.state === "closed") return;
    this.stats.framesOut++;
    this.stats.bytesOut += bytes.length;
    this.secure.send(bytes);
  }

  /** Close with a reason (sends `bye`). */
  close(reason = "bye"): void {
    if (this.state === "closed") return;
    this.send(frame("bye", { reason }));
    this.secure.close(reason);
    this.closed(reason);
  }

  private fail(code: ErrorCode, message: string) {
    if (this.state === "closed") return;
    this.stats.framesOut++;
    this.secure.fail(code, message);
    this.closed(`${code}: ${message}`);
  }

  private strike(code: ErrorCode, message: string, gid?: string) {
    // Not fatal: the peer is told, and the session goes on until it has too many.
    this.send(frame("error", { code, message, gid, strike: gid === undefined ? true : undefined }));
    if (++this.strikes >= this.host.limits.sync_strikes_max) {
      this.fail(code, `Too many protocol violations; last: ${message}`);
    }
  }

  private closed(reason: string) {
    if (this.state === "closed") return;
    this.state = "closed";
    this.secure.close(reason); // the socket too, whoever ended the session
    this.closeReason = reason;
    this.clock.clearInterval(this.ticker);
    this.clock.clearTimeout(this.retryTimer);
    for (const w of this.readyWaiters.splice(0)) w(false);
    for (const ws of this.doneWaiters.values()) for (const w of ws) w();
    this.doneWaiters.clear();
    for (const s of [...this.theirs.values(), ...this.ours.values()]) s.unsub?.().catch(() => {});
    this.theirs.clear();
    this.ours.clear();
    this.dropOwed(() => true);
    this.retry = [];
    this.fromPeer.clear();
    this.pendingWants.clear();
    this.host.report({ type: "closed", node: this.peer, reason });
  }

  /** Stalls and idleness, once a second. */
  private tick() {
    if (this.state !== "ready") return;
    const now = this.clock.monotonic();
    const l = this.host.limits;
    const waiting = this.owed.length > 0 || this.secure.buffered() > 0;
    // The stall clock runs only while we have something for the peer: a session idle for a while that has just
    // sent a frame (still in the socket) has not stalled.
    if (!waiting) this.lastProgress = now;
    if (waiting && now - this.lastProgress > l.sync_stall_ms) {
      return this.fail(
        "PEER_TOO_SLOW",
        `Peer made no progress for ${l.sync_stall_ms} ms with ${this.owedIds} ids and ${this.owedBytes} bytes owed`,
      );
    }
    if (waiting) this.pump();
    if (this.groupCount > 0 || waiting) this.lastActive = now;
    else if (now - this.lastActive > l.sync_idle_ms) this.close(`idle: no subscription for ${l.sync_idle_ms} ms`);
  }

  private onFrame(bytes: Uint8Array) {
    if (this.state === "closed") return;
    this.stats.framesIn++;
    this.stats.bytesIn += bytes.length;
    this.inboundBytes += bytes.length;
    if (this.inboundBytes > this.host.limits.sync_inbound_bytes_max) {
      return this.fail(
        "RATE_LIMITED",
        `Peer sent ${this.inboundBytes} bytes not yet handled (limit ${this.host.limits.sync_inbound_bytes_max})`,
      );
    }
    const arrived = performance.now();
    let f: Frame;
    try {
      f = decodeFrame(bytes, this.host.limits.sync_frame_bytes_max, "Frame");
    } catch (e) {
      const w = toWire(e);
      return this.fail(w.code, w.message);
    }
    // Frames are handled one after another, in arrival order.
    this.work = this.work.then(() => this.handle(f, arrived)).catch((e) => {
      const w = toWire(e);
      this.fail(w.code === "INTERNAL" ? "BAD_FRAME" : w.code, w.message);
    }).finally(() => this.inboundBytes -= bytes.length);
  }

  private async handle(f: Frame, arrived = performance.now()) {
    if (this.state === "closed") return;
    const t = f.get("t") as string;
    if (t === "error") {
      const code = String(f.get("code") ?? "");
      const gid = f.get("gid");
      if (typeof gid === "string") {
        // A refused subscription or a refused event batch: not fatal to the session.
        this.host.report({ type: "progress", gid, node: this.peer, missing: 0, received: 0, sent: 0, done: true });
        const o = this.ours.get(gid);
        if (o && o.state === "asked") this.ours.delete(gid);
        this.finish(gid);
        return;
      }
      if (f.get("strike") === true) return; // a strike against us: the peer goes on
      return this.closed(`peer error ${code}: ${String(f.get("message") ?? "")}`);
    }
    if (t === "bye") return this.closed(`peer said bye: ${String(f.get("reason") ?? "")}`);
    if (this.state !== "ready") return this.fail("UNAUTHORIZED", `Frame "${t}" before the handshake completed`);
    this.lastActive = this.clock.monotonic();
    switch (t) {
      case "sub":
        return await this.onSub(f);
      case "sub.ok":
        return await this.onSubOk(f);
      case "neg":
        return await this.onNeg(
          field<string>(f, "gid", isGid, "64 hex digits"),
          field<Uint8Array>(f, "msg", isBytes(), "bytes"),
        );
      case "want":
        return await this.onWant(f);
      case "missing":
        return this.onMissing(f);
      case "events":
        return await this.onEvents(f, arrived);
      case "credit":
        return this.onCredit(f);
      default:
        return this.strike("BAD_FRAME", `Unknown frame type "${t}"`);
    }
  }

  // ---- rights ----

  /**
   * May the peer have this group's events from us now? Members of a closed
   * group, anyone for an open one; a group we do not hold has nothing to leak.
   */
  private right(gid: string): Promise<boolean> {
    let r = this.rights.get(gid);
    if (!r) {
      r = this.host.access(gid, this.peerKey!).then((a) => a.readable || !a.exists, () => false);
      this.rights.set(gid, r);
    }
    return r;
  }

  /**
   * The group's manifest or membership changed (or may have, before our subscription to it was in place): hold its
   * traffic and check the peer's right again. Resolves once checked; a peer without it has lost the group then.
   */
  private recheck(gid: string): Promise<boolean> {
    this.rights.delete(gid);
    this.held.add(gid);
    const check = this.right(gid);
    check.then((ok) => {
      if (this.state === "closed") return;
      if (this.rights.get(gid) !== check) return; // checked again meanwhile: the later check decides
      this.held.delete(gid);
      if (ok) this.pump();
      else this.revoke(gid);
    });
    return check;
  }

  /** The peer lost its right to a group: end the group's session at once; nothing more of it is sent. */
  private revoke(gid: string) {
    const o = this.ours.get(gid), th = this.theirs.get(gid);
    o?.unsub?.().catch(() => {});
    th?.unsub?.().catch(() => {});
    this.ours.delete(gid);
    this.theirs.delete(gid);
    if (this.revoked.size < this.host.limits.sync_session_groups_max) this.revoked.add(gid);
    this.pendingWants.delete(gid);
    this.retry = this.retry.filter((r) => r.gid !== gid);
    this.dropOwed((x) => x.gid === gid);
    this.send(frame("error", { code: "UNKNOWN_GROUP", message: `Group "${gid}" is not known to this node`, gid }));
    this.finish(gid);
  }

  /**
   * Live events of a subscribed group: engine events (manifest, membership) make us check the right again. Only
   * events in the subscription's range go to the peer, and the manifest and membership events (as at `sub`).
   */
  private onLive(gid: string, events: Uint8Array[], side: "ours" | "theirs") {
    if (this.state === "closed") return;
    if (events.some((e) => (peekEvent(e)?.kind ?? 16) < 16)) this.recheck(gid);
    const range = (side === "ours" ? this.ours.get(gid)?.range : this.theirs.get(gid)?.range) ?? WHOLE_GROUP;
    if (!isWhole(range)) events = events.filter((e) => inRange(e, range));
    this.enqueue(gid, events, true);
  }

  // ---- subscriptions ----

  private async onSub(f: Frame) {
    const gid = field<string>(f, "gid", isGid, "64 hex digits");
    const ranged = f.has("since") || f.has("until");
    const asked = checkRange({ since: f.get("since") as number, until: f.get("until") as number }, "BAD_FRAME");
    const a = await this.host.access(gid, this.peerKey!);
    if (!a.readable) {
      // The same answer for a group that does not exist and one the peer may not see.
      this.send(frame("error", { code: "UNKNOWN_GROUP", message: `Group "${gid}" is not known to this node`, gid }));
      return;
    }
    // The range both reconcile: what the peer asked, from what we retain on (empty if that is past its end).
    const retained = await this.host.retained?.(gid) ?? 0;
    const since = Math.min(Math.max(asked.since, retained), asked.until);
    const range: SyncRange = { since, until: asked.until };
    const old = this.theirs.get(gid);
    if (old) old.range = range; // a repeated sub: its range holds from now on
    else {
      if (!this.ours.has(gid) && this.groupCount >= this.host.limits.sync_session_groups_max) {
        return this.strike(
          "OVERLOADED",
          `A session may subscribe to ${this.host.limits.sync_session_groups_max} groups at most`,
          gid,
        );
      }
      const sub: TheirSub = { unsub: null, range };
      this.theirs.set(gid, sub);
      this.rights.set(gid, Promise.resolve(true));
      try {
        const unsub = await this.host.subscribe(gid, (events) => this.onLive(gid, events, "theirs"));
        if (this.theirs.get(gid) === sub && this.state !== "closed") sub.unsub = unsub;
        else return void unsub().catch(() => {});
      } catch (e) {
        this.theirs.delete(gid);
        const w = toWire(e);
        this.send(frame("error", { code: w.code, message: w.message, gid }));
        return;
      }
      // Membership may have changed since `access` above, before the subscription was in place to see it (it sees
      // every later change): check again; a peer that lost the group meanwhile is refused, nothing sent.
      await this.recheck(gid);
      if (this.theirs.get(gid) !== sub) return; // revoked, or the session closed
    }
    this.host.report({ type: "peer", gid, node: this.peer, addr: this.addr, root: a.root });
    // A sub with a range, or one we narrowed, is answered with the range; else as before the range existed.
    const echo = ranged || !isWhole(range) ? rangeFields(range) : {};
    this.send(frame("sub.ok", { gid, root: a.root, count: a.count, ...echo }));
    // The manifest and membership events go first, so a joining peer can admit everything after them.
    const current = this.theirs.get(gid);
    const head = await this.host.admission(gid);
    if (this.theirs.get(gid) !== current) return; // revoked while they were read: nothing of the group goes
    this.enqueue(gid, head, false);
  }

  /**
   * Subscribe to a group at the peer and reconcile it; resolves when the
   * reconciliation and the transfer it started are done (or refused). A
   * closed group is offered only to a peer that proved it is a member here.
   *
   * With `since` and/or `until` (ms), only the events with `since <= ts < until`
   * are reconciled and streamed live (partial sync); `since` is raised to the
   * lowest `ts` this node retains. A bad range throws `BAD_QUERY`. A group
   * this session already syncs keeps the range it was asked with.
   */
  async sync(gid: string, options: SyncOptions = {}): Promise<void> {
    const want = checkRange(options);
    if (!(await this.ready())) throw new XfError("STAGE_DOWN", `Session closed: ${this.closeReason}`);
    if (!(await this.right(gid))) return; // the peer may not have it: we do not even name it
    if (this.ours.has(gid)) return;
    // From what we retain on, at least: the peer never sends what we would not keep.
    const retained = await this.host.retained?.(gid) ?? 0;
    const asked: SyncRange = { since: Math.max(want.since, retained), until: want.until };
    if (asked.since >= asked.until) return; // nothing we retain is in the range
    if (this.ours.has(gid) || this.state !== "ready") return;
    const done = new Promise<void>((r) => {
      const list = this.doneWaiters.get(gid) ?? [];
      list.push(r);
      this.doneWaiters.set(gid, list);
    });
    const ranged = !isWhole(asked);
    this.ours.set(gid, {
      state: "asked",
      asked,
      ranged,
      range: WHOLE_GROUP,
      negOutstanding: false,
      reconciled: false,
      unsub: null,
    });
    this.progress.set(gid, { missing: 0, received: 0, sent: 0, done: false });
    this.syncTimes.set(gid, { start: this.clock.monotonic(), bytesIn: 0, bytesOut: 0 });
    this.send(frame("sub", { gid, ...(ranged ? rangeFields(asked) : {}) }));
    return await done;
  }

  private finish(gid: string) {
    const p = this.progress.get(gid);
    if (p && !p.done) {
      p.done = true;
      this.host.report({ type: "progress", gid, node: this.peer, ...p });
      const t = this.syncTimes.get(gid);
      this.syncTimes.delete(gid);
      log.sync.info("group synced", {
        group: short(gid),
        node: short(this.peer),
        missing: p.missing,
        received: p.received,
        sent: p.sent,
        bytesIn: t?.bytesIn ?? 0,
        bytesOut: t?.bytesOut ?? 0,
        durationMs: t ? this.clock.monotonic() - t.start : 0,
      });
    }
    for (const w of this.doneWaiters.get(gid) ?? []) w();
    this.doneWaiters.delete(gid);
  }

  private async onSubOk(f: Frame) {
    const gid = field<string>(f, "gid", isGid, "64 hex digits");
    const o = this.ours.get(gid);
    if (!o || o.state !== "asked") {
      if (this.revoked.has(gid)) return;
      return this.fail("UNSOLICITED", `sub.ok for group "${gid}" that this session did not ask for`);
    }
    o.range = echoedRange(f, o.asked);
    o.state = "open";
    const root = String(f.get("root") ?? "").slice(0, 64);
    this.host.report({ type: "peer", gid, node: this.peer, addr: this.addr, root });
    // The group may be new here (joining): what arrives makes it known.
    try {
      const unsub = await this.host.subscribe(gid, (events) => this.onLive(gid, events, "ours"));
      if (this.ours.get(gid) === o && this.state !== "closed") o.unsub = unsub;
      else unsub().catch(() => {});
    } catch { /* no live stream to the peer; reconciliation still runs */ }
    // The peer's right was checked when we asked; membership may have changed since, before the subscription was in
    // place to see it (it sees every later change): check again before anything of the group goes to the peer.
    await this.recheck(gid);
    if (this.ours.get(gid) !== o) return this.finish(gid); // revoked, or the session closed
    const res = await this.host.reconcile(gid, this.sessionId + gid, null, o.range);
    if (!res || this.ours.get(gid) !== o) return this.finish(gid);
    this.stats.negRounds++;
    o.negOutstanding = true;
    this.send(frame("neg", { gid, msg: res.output! }));
    // Damaged events: reconciliation counts them as held (their ids are in the tree), so ask for them by id.
    const lost = this.host.restore?.(gid) ?? [];
    if (lost.length) this.act(gid, [], lost);
  }

  /** The range each group we subscribed to at the peer is reconciled over (the whole group until `sub.ok`). */
  ranges(): Map<string, SyncRange> {
    return new Map([...this.ours].map(([gid, o]) => [gid, { ...o.range }]));
  }

  /** Ask the peer for events by id in a group this session syncs (restoring damaged events); else nothing. */
  want(gid: string, ids: Uint8Array[]): void {
    if (this.state !== "ready" || this.ours.get(gid)?.state !== "open" || ids.length === 0) return;
    this.act(gid, [], ids);
  }

  private async onNeg(gid: string, msg: Uint8Array) {
    const o = this.ours.get(gid);
    if (o?.negOutstanding) {
      // A reply to our reconciliation.
      o.negOutstanding = false;
      this.stats.negRounds++;
      let res: Awaited<ReturnType<SyncHost["reconcile"]>>;
      try {
        res = await this.host.reconcile(gid, this.sessionId + gid, msg, o.range);
      } catch (e) {
        if (!(e instanceof XfError && e.code === "UNSUPPORTED_VERSION")) throw e;
        // The peer speaks another negentropy version: this group's reconciliation ends; the session stays.
        log.sync.warn("reconciliation refused", { group: short(gid), node: short(this.peer), error: e.message });
        if (this.ours.get(gid) === o) this.finish(gid);
        return;
      }
      if (!res) return this.fail("UNSOLICITED", `No reconciliation under way for group "${gid}"`);
      if (this.ours.get(gid) !== o) return;
      this.act(gid, res.have, res.need);
      if (res.output) {
        o.negOutstanding = true;
        this.send(frame("neg", { gid, msg: res.output }));
      } else this.reconciled(gid);
      return;
    }
    if (!this.theirs.has(gid)) {
      if (this.revoked.has(gid)) return;
      return this.fail("UNSOLICITED", `neg for group "${gid}" that answers nothing this session sent`);
    }
    if (!(await this.right(gid))) return;
    // The peer reconciles with us: we answer as the responder.
    this.stats.negRounds++;
    const res = await this.host.reconcile(gid, null, msg, this.theirs.get(gid)!.range);
    if (!res) return this.strike("UNKNOWN_GROUP", `Group "${gid}" is not known to this node`, gid);
    if (!this.theirs.has(gid)) return;
    this.act(gid, res.have, res.need);
    this.send(frame("neg", { gid, msg: res.output ?? new Uint8Array([0x61]) }));
  }

  private async retryWaiting(gid: string) {
    const mine = this.retry.filter((r) => r.gid === gid);
    this.retry = this.retry.filter((r) => r.gid !== gid);
    const results = await this.host.submit(gid, mine.map((r) => r.bytes)).catch(() => []);
    results.forEach((r, i) => {
      if (r.status !== "rejected") this.stats.eventsStored++;
      else if ((r.code === "UNKNOWN_GROUP" || r.code === "FORBIDDEN") && this.retry.length < RETRY_EVENTS_MAX) {
        this.retry.push(mine[i]!);
      }
    });
  }

  private reconciled(gid: string) {
    const o = this.ours.get(gid);
    if (o) o.reconciled = true;
    this.checkDone(gid);
  }

  private checkDone(gid: string) {
    const o = this.ours.get(gid);
    if ((this.pendingWants.get(gid)?.size ?? 0) === 0 && o?.reconciled) {
      o.reconciled = false;
      this.finish(gid);
    }
  }

  /** The peer does not hold some ids we asked for (gone since it listed them): stop waiting for them. */
  private onMissing(f: Frame) {
    const gid = field<string>(f, "gid", isGid, "64 hex digits");
    const ids = field<Uint8Array[]>(f, "ids", isIdList(this.host.limits.sync_want_ids_max), "a list of ids");
    const wanted = this.pendingWants.get(gid);
    let known = 0;
    for (const id of ids) if (wanted?.delete(toHex(id))) known++;
    if (known < ids.length) {
      if (this.revoked.has(gid)) return;
      return this.fail("UNSOLICITED", `missing for ${ids.length - known} ids of group "${gid}" never asked for`);
    }
    this.checkDone(gid);
  }

  /** Send what the peer lacks (as ids, fetched when it has room); ask for what we lack. */
  private act(gid: string, have: Uint8Array[], need: Uint8Array[]) {
    const p = this.progress.get(gid) ?? { missing: 0, received: 0, sent: 0, done: false };
    this.progress.set(gid, p);
    if (need.length) {
      p.missing += need.length;
      const wanted = this.pendingWants.get(gid) ?? new Set<string>();
      for (const id of need) wanted.add(toHex(id));
      this.pendingWants.set(gid, wanted);
      for (let i = 0; i < need.length; i += this.host.limits.sync_want_ids_max) {
        this.send(frame("want", { gid, ids: need.slice(i, i + this.host.limits.sync_want_ids_max) }));
      }
      this.host.report({ type: "progress", gid, node: this.peer, ...p });
    }
    if (have.length) this.owe(gid, have);
  }

  private async onWant(f: Frame) {
    const gid = field<string>(f, "gid", isGid, "64 hex digits");
    const ids = field<Uint8Array[]>(f, "ids", isIdList(this.host.limits.sync_want_ids_max), "a list of ids");
    if (!this.theirs.has(gid) && this.ours.get(gid)?.state !== "open") {
      return this.strike("NOT_SUBSCRIBED", `want for group "${gid}" without a subscription`, gid);
    }
    if (!(await this.right(gid))) return;
    this.owe(gid, ids, true);
  }

  /** Ids we owe the peer: kept as ids until it has credit and room. */
  private owe(gid: string, ids: Uint8Array[], answerMissing = false) {
    if (this.state === "closed" || ids.length === 0) return;
    this.owedIds += ids.length;
    if (this.owedIds > this.host.limits.sync_want_queue_ids_max) {
      return this.fail(
        "PEER_TOO_SLOW",
        `Peer is owed ${this.owedIds} events it has not taken (limit ${this.host.limits.sync_want_queue_ids_max})`,
      );
    }
    // Kept as one flat copy (32 bytes an id). Ids the peer asked for (want) that we do not hold get `missing`.
    const flat = new Uint8Array(ids.length * 32);
    ids.forEach((id, k) => flat.set(id, k * 32));
    this.owed.push({ gid, kind: "ids", ids: flat, at: 0, answerMissing });
    this.pump();
  }

  /** Queue events for the peer, bounded in bytes per session and node-wide. */
  private enqueue(gid: string, events: Uint8Array[], live: boolean, at?: Owed) {
    if (live && this.fromPeer.size) events = events.filter((e) => !this.fromPeer.has(toHex(sha256(e))));
    if (this.state === "closed" || events.length === 0) return;
    let bytes = 0;
    for (const e of events) bytes += e.length;
    const l = this.host.limits;
    if (this.owedBytes + bytes > l.sync_peer_queue_bytes_max) {
      return this.fail(
        "PEER_TOO_SLOW",
        `Peer has not taken ${this.owedBytes + bytes} bytes of events (limit ${l.sync_peer_queue_bytes_max})`,
      );
    }
    if (!this.host.memory.take(bytes)) {
      return this.fail(
        "PEER_TOO_SLOW",
        `The node's sync memory (${l.sync_memory_bytes_max} bytes) is used up by peers that do not read`,
      );
    }
    this.owedBytes += bytes;
    // Events fetched for owed ids take the ids' place in the queue, so what was owed first goes first.
    const k = at ? this.owed.indexOf(at) : -1;
    // A copy: `take` consumes the queue's array, and the caller's (a store's listeners may share one) is not ours.
    const item: Owed = { gid, kind: "events", events: events.slice(), bytes, live };
    if (k >= 0) this.owed.splice(k, 0, item);
    else this.owed.push(item);
    this.pump();
  }

  /** Drop owed items (closed session, or a group revoked). */
  private dropOwed(which: (o: Owed) => boolean) {
    const keep: Owed[] = [];
    for (const o of this.owed) {
      if (!which(o)) keep.push(o);
      else if (o.kind === "events") {
        this.owedBytes -= o.bytes;
        this.host.memory.give(o.bytes);
      } else this.owedIds -= (o.ids.length - o.at) / 32;
    }
    this.owed = keep;
  }

  private onCredit(f: Frame) {
    const n = field<number>(f, "n", isUint, "a count");
    const b = field<number>(f, "b", isUint, "a byte count");
    if (this.sendCredit + n > this.window.events || this.sendCreditBytes + b > this.window.bytes) {
      // A grant past the window it announced: the peer lies about what it received. Capped, and a strike.
      this.sendCredit = this.window.events;
      this.sendCreditBytes = this.window.bytes;
      this.strike("BAD_FRAME", `credit of ${n} events and ${b} bytes is past the window the peer announced`);
    } else {
      this.sendCredit += n;
      this.sendCreditBytes += b;
    }
    this.lastProgress = this.clock.monotonic();
    this.pump();
  }

  /**
   * Send what is owed while the peer has credit and its socket has room; fetch owed ids ahead, at most
   * {@linkcode PREFETCH_BYTES} of events, so a grant of credit is answered at once.
   */
  private pump() {
    const l = this.host.limits;
    const budget = this.window.frame - 1024;
    let i = 0;
    while (this.state === "ready" && i < this.owed.length) {
      const head = this.owed[i]!;
      if (this.held.has(head.gid)) {
        i++;
        continue;
      }
      if (head.kind === "ids") {
        if (head.at >= head.ids.length) {
          if (!this.fetching) this.owed.splice(i, 1);
          else i++;
          continue;
        }
        // Fetch ahead; while a fetch is under way or the prefetch is full, later items (live events) may go first.
        this.fetch(head);
        i++;
        continue;
      }
      if (this.sendCredit <= 0) return;
      if (this.secure.buffered() > l.sync_socket_buffer_bytes_max) {
        // The socket holds what the peer has not read: try again shortly; the ticker cuts a peer that never reads.
        if (this.retryTimer === undefined) {
          this.retryTimer = this.clock.setTimeout(() => {
            this.retryTimer = undefined;
            this.pump();
          }, 20);
        }
        return;
      }
      const first = head.events[0]!;
      if (first.length + 8 > budget || first.length > this.window.bytes) {
        // An event larger than the peer's frame or window: it can never take it; drop it.
        this.take(head, 1, first.length, i);
        continue;
      }
      if (first.length > this.sendCreditBytes) return; // wait for the peer to grant bytes
      // One frame takes events from this item and the loaded items right after it of the same group and kind.
      const out: Uint8Array[] = [];
      let evBytes = 0;
      const j = i;
      fill: while (j < this.owed.length) {
        const it = this.owed[j]!;
        if (it.kind !== "events" || it.gid !== head.gid || it.live !== head.live) break;
        let n = 0, bytes = 0;
        while (n < it.events.length && out.length < this.sendCredit) {
          const e = it.events[n]!;
          if (evBytes + e.length > this.sendCreditBytes || evBytes + e.length + 8 * (out.length + 1) > budget) {
            this.take(it, n, bytes, j);
            break fill;
          }
          out.push(e);
          n++;
          bytes += e.length;
          evBytes += e.length;
        }
        const emptied = n === it.events.length;
        this.take(it, n, bytes, j);
        if (!emptied) break;
      }
      this.sendCredit -= out.length;
      this.sendCreditBytes = Math.max(0, this.sendCreditBytes - evBytes);
      this.stats.eventsSent += out.length;
      this.lastProgress = this.clock.monotonic();
      const p = this.progress.get(head.gid);
      if (p) p.sent += out.length;
      const st = this.syncTimes.get(head.gid);
      if (st) st.bytesOut += evBytes;
      this.send(frame("events", { gid: head.gid, events: out, live: head.live || undefined }));
    }
  }

  /** Remove the first `n` events (`bytes` of them) of the owed item at index `i`. */
  private take(head: Extract<Owed, { kind: "events" }>, n: number, bytes: number, i: number) {
    head.events.splice(0, n);
    head.bytes -= bytes;
    this.owedBytes -= bytes;
    this.host.memory.give(bytes);
    if (!head.events.length) this.owed.splice(i, 1);
  }

  /** Fetch owed ids from the index: at most what the peer may take and what prefetching may hold. */
  private fetch(head: Extract<Owed, { kind: "ids" }>) {
    if (this.fetching) return;
    const l = this.host.limits;
    const room = Math.min(l.sync_peer_queue_bytes_max, PREFETCH_BYTES) - this.owedBytes;
    if (room <= 0) return;
    const n = Math.min(FETCH_IDS_MAX, Math.max(64, this.window.events), (head.ids.length - head.at) / 32);
    const take = head.ids.subarray(head.at, head.at + n * 32);
    head.at += n * 32;
    this.fetching = true;
    const gid = head.gid;
    this.host.getMany(take, room).then((found) => {
      this.fetching = false;
      if (this.state === "closed") return;
      this.owedIds -= found.length;
      // Not answered (past the byte bound): owed again, first.
      if (found.length < n) head.at -= (n - found.length) * 32;
      if (!this.owed.includes(head)) return this.pump(); // revoked meanwhile
      const gidBytes = fromHex(gid)!;
      const events: Uint8Array[] = [];
      const missing: Uint8Array[] = [];
      found.forEach((b, j) => {
        // Only events of this group.
        if (b && b.length > 36 && bytesEqual(b.subarray(4, 36), gidBytes)) events.push(b);
        else missing.push(take.slice(j * 32, j * 32 + 32));
      });
      // Manifests, then membership, then the rest: a joining peer can accept them in this order.
      events.sort((a, b) => engineKind(a) - engineKind(b));
      if (head.answerMissing && missing.length) this.send(frame("missing", { gid, ids: missing }));
      if (events.length) this.enqueue(gid, events, false, head);
      else this.pump();
    }, (e) => {
      this.fetching = false;
      const w = toWire(e);
      this.fail(w.code, `Cannot read events for the peer: ${w.message}`);
    });
  }

  private async onEvents(f: Frame, arrived: number) {
    const gid = field<string>(f, "gid", isGid, "64 hex digits");
    const events = field<Uint8Array[]>(
      f,
      "events",
      (v) => Array.isArray(v) && v.every(isBytes()),
      "a list of byte strings",
    );
    let bytes = 0;
    for (const e of events) bytes += e.length;
    this.granted -= events.length;
    this.grantedBytes -= bytes;
    if (this.granted < 0 || this.grantedBytes < 0) {
      return this.fail(
        "CREDIT_EXCEEDED",
        `Peer sent ${Math.max(0, -this.granted)} events and ${Math.max(0, -this.grantedBytes)} bytes past its credit`,
      );
    }
    const giveBack = () => {
      this.granted += events.length;
      this.grantedBytes += bytes;
      this.send(frame("credit", { n: events.length, b: bytes }));
    };
    if (!this.theirs.has(gid) && this.ours.get(gid)?.state !== "open") {
      giveBack();
      return this.strike("NOT_SUBSCRIBED", `Events for group "${gid}" without a subscription`, gid);
    }
    this.stats.eventsReceived += events.length;
    const st = this.syncTimes.get(gid);
    if (st) st.bytesIn += bytes;
    for (const e of events) {
      this.fromPeer.add(toHex(sha256(e)));
      if (this.fromPeer.size > ECHO_IDS_MAX) this.fromPeer.delete(this.fromPeer.values().next().value!);
    }
    let results: EventResult[] = [];
    if (events.length) {
      try {
        results = await this.host.submit(gid, events);
      } catch (e) {
        const w = toWire(e);
        // Overloaded or restarting: give the credit back later, after a pause.
        if (w.code === "OVERLOADED" || w.code === "STAGE_DOWN") {
          await new Promise<void>((r) => this.clock.setTimeout(r, SYNC_STORE_RETRY_MS));
        }
        results = events.map((_, idx) => ({ req: 0, idx, status: "rejected", code: w.code }));
      }
    }
    if (this.state === "closed") return;
    // Events that arrived before the manifest or membership event that admits them are tried again.
    const waiting = results.filter((r) =>
      r.status === "rejected" && (r.code === "UNKNOWN_GROUP" || r.code === "FORBIDDEN")
    );
    const stored = results.some((r) => r.status === "stored");
    for (const r of waiting) {
      if (this.retry.length < RETRY_EVENTS_MAX) this.retry.push({ gid, bytes: events[r.idx]! });
    }
    // Something new was stored (a manifest or membership may be among it): try the waiting ones again.
    if (stored && this.retry.length > 0) await this.retryWaiting(gid);
    let rejected = 0, storedNow = 0;
    for (const r of results) {
      if (r.status === "rejected") rejected++;
      else if (r.status === "stored") storedNow++;
    }
    this.stats.eventsStored += results.length - rejected;
    this.stats.eventsRejected += rejected;
    this.host.observeDelivery?.((performance.now() - arrived) / 1000, storedNow);
    // Progress counts only events this session asked for (found missing), so received never exceeds missing;
    // events the peer pushes unasked (what it found we lack, live ones) are in the totals, not here.
    const wanted = this.pendingWants.get(gid);
    let hits = 0;
    if (wanted) {
      for (const e of events) if (wanted.delete(toHex(sha256(e)))) hits++;
    }
    const p = this.progress.get(gid);
    if (p && hits) {
      p.received += hits;
      this.host.report({ type: "progress", gid, node: this.peer, ...p });
    }
    if (wanted) this.checkDone(gid);
    giveBack();
    // A peer that sends mostly garbage is cut off.
    // DELETED: the peer holds what a tombstone here deleted (it lacks the tombstone, which sync sends it).
    // EXPIRED: the peer retains more of the group than we do (it lacks the newer events that moved our boundary).
    const notYet = new Set([
      "OVERLOADED",
      "STAGE_DOWN",
      "TIMEOUT",
      "UNKNOWN_GROUP",
      "FORBIDDEN",
      "SHUTTING_DOWN",
      "DELETED",
      "EXPIRED",
    ]);
    const bad = results.filter((r) => r.status === "rejected" && !notYet.has(r.code ?? ""));
    if (bad.length > 0 && bad.length === events.length) {
      this.strike("BAD_FRAME", `All ${events.length} events of the batch were rejected, e.g. ${bad[0]!.code}`, gid);
    }
  }
}

/** An event's kind if it is an engine kind (< 16), else 16: for ordering a transfer. */
function engineKind(ev: Uint8Array): number {
  return Math.min(peekEvent(ev)?.kind ?? 16, 16);
}

/** Whether an event is in a range; manifests and membership events (kinds 0, 1) always are. */
function inRange(ev: Uint8Array, r: SyncRange): boolean {
  const head = peekEvent(ev);
  if (!head) return false;
  return head.kind < 2 || (head.ts >= r.since && head.ts < r.until);
}

/**
 * The range a `sub.ok` echoes for our `sub` that asked for `asked`: none is the whole group (a peer that
 * predates partial sync); one outside what we asked, or that ends before it starts, is `BAD_FRAME`.
 */
function echoedRange(f: Frame, asked: SyncRange): SyncRange {
  if (!f.has("since") && !f.has("until")) return WHOLE_GROUP;
  const since = field<number>(f, "since", isUint, "a count of milliseconds");
  const until = f.has("until") ? field<number>(f, "until", isUint, "a count of milliseconds") : Infinity;
  if (since < asked.since || until > asked.until || since > until) {
    throw new XfError(
      "BAD_FRAME",
      `sub.ok echoes the range [${since}, ${until}), not within the asked [${asked.since}, ${asked.until})`,
    );
  }
  return { since, until };
}
