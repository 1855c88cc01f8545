/**
 * The peer sync protocol (`GET /v1/sync`, WebSocket, CBOR frames, version 1).
 * One {@linkcode SyncSession} runs each end of a connection; it is written
 * against a {@linkcode FrameChannel} so two sessions can be piped together
 * in-process in tests, and against a {@linkcode SyncHost} (the node).
 *
 * ```
 *  client (connects)                          server
 *    │ hello {v, node, challenge, limits}  ──►  │
 *    │ ◄──  hello {v, node, challenge, limits}  │
 *    │ auth {sig over server's challenge}  ──►  │   both sides check the other's
 *    │ ◄──  auth {sig over client's challenge}  │   proof before anything else
 *    │ sub {gid}                           ──►  │   member of a closed group?
 *    │ ◄──  sub.ok {gid, root, count}           │   (else error UNKNOWN_GROUP)
 *    │ neg {gid, msg}  (negentropy v1)     ──►  │   answered from the Merkle
 *    │ ◄──  neg {gid, msg}                      │   index, no scan
 *    │   … until the client's reconciler is done; meanwhile either side:
 *    │ want {gid, ids}  /  events {gid, events} │   what the other lacks
 *    │ missing {gid, ids}                       │   asked for, but not held
 *    │ credit {n}                               │   receiver grants more events
 *    │ ◄──  events {gid, events, live: true}    │   new events, both ways
 *    │ bye {reason}  /  error {code, message}   │
 * ```
 *
 * Every frame is bounded (`sync_frame_bytes_max`); a peer may send at most
 * the events it was granted (`credit`), and events queued for a peer that
 * grants none are bounded (`sync_peer_queue_events_max`). A peer that breaks
 * a rule is sent `error` with a code and cut off.
 *
 * @module
 */

import { sha256 } from "@noble/hashes/sha2";
import { peekEvent } from "../storage/event.ts";
import { decodeFrame, encodeFrame, field, type Frame, isBytes, isUint } from "./frames.ts";
import { fromHex, type KeyPair, toHex } from "../storage/ed25519.ts";
import { type ErrorCode, toWire, XfError } from "../storage/errors.ts";
import type { Limits } from "../actors/limits.ts";
import type { EventResult } from "../actors/batch.ts";
import { answerChallenge, type Authenticator } from "./auth.ts";

/** Events held per session to try again once their manifest or membership arrives. */
export const RETRY_EVENTS_MAX = 10_000;

/** Ids remembered per session as received from the peer, so they are not echoed back. */
export const ECHO_IDS_MAX = 100_000;

/** Protocol version spoken here. */
export const SYNC_VERSION = 1;

/** A bidirectional channel of binary frames (a WebSocket, or a test pipe). */
export interface FrameChannel {
  send(frame: Uint8Array): void;
  close(reason: string): void;
  onFrame: ((frame: Uint8Array) => void) | null;
  onClose: ((reason: string) => void) | null;
}

/** What a session needs from its node. */
export interface SyncHost {
  key: KeyPair;
  auth: Authenticator;
  limits: Limits;
  /** Whether the group exists here and `peer` may read it. */
  access(gid: string, peer: Uint8Array): Promise<{ readable: boolean; root: string; count: number }>;
  reconcile(
    gid: string,
    session: string | null,
    msg: Uint8Array | null,
  ): Promise<{ output: Uint8Array | null; have: Uint8Array[]; need: Uint8Array[] } | null>;
  getMany(ids: Uint8Array[]): Promise<(Uint8Array | null)[]>;
  /** The group's manifest and membership events, in `(ts, id)` order. */
  admission(gid: string): Promise<Uint8Array[]>;
  submit(gid: string, events: Uint8Array[]): Promise<EventResult[]>;
  subscribe(gid: string, cb: (events: Uint8Array[]) => void): Promise<() => Promise<void>>;
  /** Groups this node serves (a client subscribes to each). */
  groups(): Promise<string[]>;
  /** Progress and peer sightings, for /metrics, the peers route and library users. */
  report(ev: SyncReport): void;
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

  private myChallenge: Uint8Array | null = null;
  private peerAuthed = false;
  private sentAuth = false;
  private strikes = 0;
  /** Groups the peer subscribed to here (we push to it and accept its events). */
  private theirSubs = new Map<string, () => Promise<void>>();
  /** Groups we subscribed to at the peer (accepted by it). */
  private ourSubs = new Map<string, () => Promise<void>>();
  /** Credit: events we may still send, and events we granted and not yet received. */
  private sendCredit = 0;
  private granted: number;
  private queue: { gid: string; events: Uint8Array[]; live: boolean }[] = [];
  private queued = 0;
  private progress = new Map<string, { missing: number; received: number; sent: number; done: boolean }>();
  private readyWaiters: ((ok: boolean) => void)[] = [];
  private doneWaiters = new Map<string, (() => void)[]>();
  private handshakeTimer: ReturnType<typeof setTimeout>;
  private work: Promise<void> = Promise.resolve();
  private sessionId = toHex(crypto.getRandomValues(new Uint8Array(8)));

  constructor(
    private readonly host: SyncHost,
    private readonly ch: FrameChannel,
    readonly role: "client" | "server",
    readonly addr: string = "",
  ) {
    this.granted = host.limits.sync_credit_events;
    ch.onFrame = (f) => this.onFrame(f);
    ch.onClose = (reason) => this.closed(reason || "connection closed");
    this.handshakeTimer = setTimeout(
      () => this.fail("AUTH_REQUIRED" as ErrorCode, `No hello and auth within ${host.limits.sync_handshake_ms} ms`),
      host.limits.sync_handshake_ms,
    );
    this.myChallenge = host.auth.challenge().challenge;
    this.send(frame("hello", {
      v: SYNC_VERSION,
      node: host.key.publicKey,
      challenge: this.myChallenge,
      frame: host.limits.sync_frame_bytes_max,
      credit: this.granted,
    }));
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

  private send(bytes: Uint8Array) {
    if (this.state === "closed") return;
    this.stats.framesOut++;
    this.stats.bytesOut += bytes.length;
    this.ch.send(bytes);
  }

  /** Close with a reason (sends `bye`). */
  close(reason = "bye"): void {
    if (this.state === "closed") return;
    this.send(frame("bye", { reason }));
    this.ch.close(reason);
    this.closed(reason);
  }

  private fail(code: ErrorCode | string, message: string) {
    if (this.state === "closed") return;
    this.send(frame("error", { code, message }));
    this.ch.close(`${code}: ${message}`);
    this.closed(`${code}: ${message}`);
  }

  private strike(code: ErrorCode, message: string, gid?: string) {
    this.send(frame("error", { code, message, gid }));
    if (++this.strikes >= this.host.limits.sync_strikes_max) {
      this.fail(code, `Too many protocol violations; last: ${message}`);
    }
  }

  private closed(reason: string) {
    if (this.state === "closed") return;
    this.state = "closed";
    this.closeReason = reason;
    clearTimeout(this.handshakeTimer);
    for (const w of this.readyWaiters.splice(0)) w(false);
    for (const ws of this.doneWaiters.values()) for (const w of ws) w();
    this.doneWaiters.clear();
    for (const unsub of [...this.theirSubs.values(), ...this.ourSubs.values()]) unsub().catch(() => {});
    this.theirSubs.clear();
    this.ourSubs.clear();
    this.queue = [];
    this.host.report({ type: "closed", node: this.peer, reason });
  }

  private onFrame(bytes: Uint8Array) {
    if (this.state === "closed") return;
    this.stats.framesIn++;
    this.stats.bytesIn += bytes.length;
    let f: Frame;
    try {
      f = decodeFrame(bytes, this.host.limits.sync_frame_bytes_max, "Frame");
    } catch (e) {
      const w = toWire(e);
      return this.fail(w.code, w.message);
    }
    // Frames are handled one after another, in arrival order.
    this.work = this.work.then(() => this.handle(f)).catch((e) => {
      const w = toWire(e);
      this.fail(w.code === "INTERNAL" ? "BAD_FRAME" : w.code, w.message);
    });
  }

  private async handle(f: Frame) {
    if (this.state === "closed") return;
    const t = f.get("t") as string;
    if (t === "error") {
      const code = String(f.get("code") ?? "");
      const gid = f.get("gid");
      if (typeof gid === "string") {
        // A refused subscription or a refused event batch: not fatal to the session.
        this.host.report({ type: "progress", gid, node: this.peer, missing: 0, received: 0, sent: 0, done: true });
        this.finish(gid);
        return;
      }
      return this.closed(`peer error ${code}: ${String(f.get("message") ?? "")}`);
    }
    if (t === "bye") return this.closed(`peer said bye: ${String(f.get("reason") ?? "")}`);
    if (t === "hello") return await this.onHello(f);
    if (t === "auth") return await this.onAuth(f);
    if (this.state !== "ready") return this.fail("UNAUTHORIZED", `Frame "${t}" before hello and auth`);
    switch (t) {
      case "sub":
        return await this.onSub(field<string>(f, "gid", isGid, "64 hex digits"));
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
        return await this.onEvents(f);
      case "credit": {
        const n = field<number>(f, "n", isUint, "a count");
        this.sendCredit += n;
        return this.pump();
      }
      default:
        return this.strike("BAD_FRAME", `Unknown frame type "${t}"`);
    }
  }

  private async onHello(f: Frame) {
    if (this.peerKey) return this.fail("BAD_FRAME", "Second hello");
    const v = field<number>(f, "v", isUint, "a version");
    if (v !== SYNC_VERSION) {
      return this.fail("BAD_FRAME", `Protocol version "${v}" is not supported (this node speaks ${SYNC_VERSION})`);
    }
    const node = field<Uint8Array>(f, "node", isBytes(32), "32 bytes");
    const challenge = field<Uint8Array>(f, "challenge", isBytes(32), "32 bytes");
    this.sendCredit = Math.min(
      field<number>(f, "credit", isUint, "a count"),
      this.host.limits.sync_peer_queue_events_max,
    );
    this.peerKey = node.slice();
    const sig = await answerChallenge(this.host.key, "sync", challenge, node);
    this.send(frame("auth", { sig }));
    this.sentAuth = true;
    this.maybeReady();
  }

  private async onAuth(f: Frame) {
    if (!this.peerKey || !this.myChallenge) return this.fail("UNAUTHORIZED", "auth before hello");
    const sig = field<Uint8Array>(f, "sig", isBytes(64), "64 bytes");
    const challenge = this.myChallenge;
    this.myChallenge = null;
    try {
      await this.host.auth.check("sync", challenge, this.peerKey, sig);
    } catch (e) {
      const w = toWire(e);
      return this.fail(w.code, w.message);
    }
    this.peerAuthed = true;
    this.maybeReady();
  }

  private maybeReady() {
    if (this.state !== "hello" || !this.peerAuthed || !this.sentAuth) return;
    this.state = "ready";
    clearTimeout(this.handshakeTimer);
    for (const w of this.readyWaiters.splice(0)) w(true);
  }

  /**
   * Subscribe to a group at the peer and reconcile it; resolves when the
   * reconciliation and the transfer it started are done (or refused).
   */
  async sync(gid: string): Promise<void> {
    if (!(await this.ready())) throw new XfError("STAGE_DOWN", `Session closed: ${this.closeReason}`);
    const done = new Promise<void>((r) => {
      const list = this.doneWaiters.get(gid) ?? [];
      list.push(r);
      this.doneWaiters.set(gid, list);
    });
    this.progress.set(gid, { missing: 0, received: 0, sent: 0, done: false });
    this.send(frame("sub", { gid }));
    return await done;
  }

  private finish(gid: string) {
    const p = this.progress.get(gid);
    if (p && !p.done) {
      p.done = true;
      this.host.report({ type: "progress", gid, node: this.peer, ...p });
    }
    for (const w of this.doneWaiters.get(gid) ?? []) w();
    this.doneWaiters.delete(gid);
  }

  private async onSub(gid: string) {
    const peer = this.peerKey!;
    const a = await this.host.access(gid, peer);
    if (!a.readable) {
      // The same answer for a group that does not exist and one the peer may not see.
      this.send(frame("error", { code: "UNKNOWN_GROUP", message: `Group "${gid}" is not known to this node`, gid }));
      return;
    }
    if (!this.theirSubs.has(gid)) {
      const unsub = await this.host.subscribe(gid, (events) => this.enqueue(gid, events, true));
      this.theirSubs.set(gid, unsub);
    }
    this.host.report({ type: "peer", gid, node: this.peer, addr: this.addr, root: a.root });
    this.send(frame("sub.ok", { gid, root: a.root, count: a.count }));
    // The manifest and membership events go first, so a joining peer can admit everything after them.
    this.enqueue(gid, await this.host.admission(gid), false);
  }

  private async onSubOk(f: Frame) {
    const gid = field<string>(f, "gid", isGid, "64 hex digits");
    const root = String(f.get("root") ?? "");
    this.host.report({ type: "peer", gid, node: this.peer, addr: this.addr, root });
    // The group may be new here (joining): what arrives makes it known.
    if (!this.ourSubs.has(gid)) {
      const unsub = await this.host.subscribe(gid, (events) => this.enqueue(gid, events, true)).catch(
        () => async () => {},
      );
      this.ourSubs.set(gid, unsub);
    }
    const res = await this.host.reconcile(gid, this.sessionId + gid, null);
    if (!res) return this.finish(gid);
    this.stats.negRounds++;
    this.send(frame("neg", { gid, msg: res.output! }));
  }

  private async onNeg(gid: string, msg: Uint8Array) {
    const theirs = this.theirSubs.has(gid);
    const ours = this.ourSubs.has(gid);
    if (!theirs && !ours) return this.strike("NOT_SUBSCRIBED", `neg for group "${gid}" without a subscription`, gid);
    this.stats.negRounds++;
    if (this.role === "server" || theirs && !ours) {
      const res = await this.host.reconcile(gid, null, msg);
      if (!res) return this.strike("UNKNOWN_GROUP" as ErrorCode, `Group "${gid}" is not known to this node`, gid);
      await this.act(gid, res.have, res.need);
      this.send(frame("neg", { gid, msg: res.output ?? new Uint8Array([0x61]) }));
      return;
    }
    // Client side: our initiator session continues.
    const res = await this.host.reconcile(gid, this.sessionId + gid, msg);
    if (!res) return this.strike("BAD_FRAME", `No reconciliation under way for group "${gid}"`, gid);
    await this.act(gid, res.have, res.need);
    if (res.output) this.send(frame("neg", { gid, msg: res.output }));
    else this.reconciled(gid);
  }

  /** Ids asked of the peer and not yet received, per group. */
  private pendingWants = new Map<string, Set<string>>();
  private retry: { gid: string; bytes: Uint8Array }[] = [];

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
    // Done when every wanted event arrived; checked as events come in.
    if ((this.pendingWants.get(gid)?.size ?? 0) === 0) this.finish(gid);
    else this.reconcileDone.add(gid);
  }
  private reconcileDone = new Set<string>();

  private checkDone(gid: string) {
    if ((this.pendingWants.get(gid)?.size ?? 0) === 0 && this.reconcileDone.has(gid)) {
      this.reconcileDone.delete(gid);
      this.finish(gid);
    }
  }

  /** The peer does not hold some ids we asked for (gone since it listed them): stop waiting for them. */
  private onMissing(f: Frame) {
    const gid = field<string>(f, "gid", isGid, "64 hex digits");
    const ids = field<Uint8Array[]>(f, "ids", (v) => Array.isArray(v) && v.every(isBytes(32)), "a list of ids");
    const wanted = this.pendingWants.get(gid);
    if (!wanted) return;
    for (const id of ids) wanted.delete(toHex(id));
    this.checkDone(gid);
  }

  /** Send what the peer lacks; ask for what we lack. */
  private async act(gid: string, have: Uint8Array[], need: Uint8Array[]) {
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
    if (have.length) await this.sendEvents(gid, have);
  }

  private async onWant(f: Frame) {
    const gid = field<string>(f, "gid", isGid, "64 hex digits");
    const ids = field<unknown[]>(
      f,
      "ids",
      (v) => Array.isArray(v) && v.length <= this.host.limits.sync_want_ids_max && v.every(isBytes(32)),
      "a list of ids",
    );
    if (!this.theirSubs.has(gid) && !this.ourSubs.has(gid)) {
      return this.strike("NOT_SUBSCRIBED", `want for group "${gid}" without a subscription`, gid);
    }
    await this.sendEvents(gid, ids as Uint8Array[], true);
  }

  private async sendEvents(gid: string, ids: Uint8Array[], answerMissing = false) {
    const gidBytes = fromHex(gid)!;
    const events: Uint8Array[] = [];
    const missing: Uint8Array[] = [];
    for (let i = 0; i < ids.length; i += 512) {
      const chunk = ids.slice(i, i + 512);
      (await this.host.getMany(chunk)).forEach((b, j) => {
        // Only events of this group.
        if (b && b.length > 36 && equal32(b.subarray(4, 36), gidBytes)) events.push(b);
        else missing.push(chunk[j]!);
      });
    }
    // Manifests, then membership, then the rest: a joining peer can accept them in this order.
    events.sort((a, b) => engineKind(a) - engineKind(b));
    this.enqueue(gid, events, false);
    if (answerMissing && missing.length) this.send(frame("missing", { gid, ids: missing }));
  }

  /** Ids the peer sent us: they are not streamed back to it. */
  private fromPeer = new Set<string>();

  private enqueue(gid: string, events: Uint8Array[], live: boolean) {
    if (live && this.fromPeer.size) events = events.filter((e) => !this.fromPeer.has(toHex(sha256(e))));
    if (this.state === "closed" || events.length === 0) return;
    this.queue.push({ gid, events, live });
    this.queued += events.length;
    if (this.queued > this.host.limits.sync_peer_queue_events_max) {
      return this.fail("PEER_TOO_SLOW", `Peer granted no credit while ${this.queued} events waited for it`);
    }
    this.pump();
  }

  private pump() {
    const max = this.host.limits.sync_frame_bytes_max - 1024;
    while (this.state === "ready" && this.sendCredit > 0 && this.queue.length) {
      const head = this.queue[0]!;
      const out: Uint8Array[] = [];
      let bytes = 0;
      while (head.events.length && out.length < this.sendCredit && bytes + head.events[0]!.length + 8 <= max) {
        const e = head.events.shift()!;
        bytes += e.length + 8;
        out.push(e);
      }
      if (out.length === 0 && head.events.length) {
        // A single event larger than the frame budget cannot be sent; drop it from the queue.
        head.events.shift();
        this.queued--;
        continue;
      }
      if (!head.events.length) this.queue.shift();
      this.queued -= out.length;
      this.sendCredit -= out.length;
      this.stats.eventsSent += out.length;
      const p = this.progress.get(head.gid);
      if (p) p.sent += out.length;
      this.send(frame("events", { gid: head.gid, events: out, live: head.live || undefined }));
    }
  }

  private async onEvents(f: Frame) {
    const gid = field<string>(f, "gid", isGid, "64 hex digits");
    const events = field<Uint8Array[]>(
      f,
      "events",
      (v) => Array.isArray(v) && v.every(isBytes()),
      "a list of byte strings",
    );
    this.granted -= events.length;
    if (this.granted < 0) {
      return this.fail("CREDIT_EXCEEDED", `Peer sent ${-this.granted} events more than the credit it was granted`);
    }
    if (!this.theirSubs.has(gid) && !this.ourSubs.has(gid)) {
      this.granted += events.length;
      this.send(frame("credit", { n: events.length }));
      return this.strike("NOT_SUBSCRIBED", `Events for group "${gid}" without a subscription`, gid);
    }
    this.stats.eventsReceived += events.length;
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
        if (w.code === "OVERLOADED" || w.code === "STAGE_DOWN") await new Promise((r) => setTimeout(r, 200));
        results = events.map((_, idx) => ({ req: 0, idx, status: "rejected", code: w.code }));
      }
    }
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
    let rejected = 0;
    for (const r of results) {
      if (r.status === "rejected") rejected++;
      else this.stats.eventsStored++;
    }
    this.stats.eventsRejected += rejected;
    const p = this.progress.get(gid);
    if (p && !f.get("live")) {
      p.received += events.length;
      this.host.report({ type: "progress", gid, node: this.peer, ...p });
    }
    const wanted = this.pendingWants.get(gid);
    if (wanted) {
      for (const e of events) wanted.delete(toHex(sha256(e)));
      this.checkDone(gid);
    }
    this.granted += events.length;
    this.send(frame("credit", { n: events.length }));
    // A peer that sends mostly garbage is cut off.
    const notYet = new Set(["OVERLOADED", "STAGE_DOWN", "TIMEOUT", "UNKNOWN_GROUP", "FORBIDDEN", "SHUTTING_DOWN"]);
    const bad = results.filter((r) => r.status === "rejected" && !notYet.has(r.code ?? ""));
    if (bad.length > 0 && bad.length === events.length) {
      this.strike("BAD_FRAME", `All ${events.length} events of the batch were rejected, e.g. ${bad[0]!.code}`, gid);
    }
  }
}

function equal32(a: Uint8Array, b: Uint8Array): boolean {
  for (let i = 0; i < 32; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** An event's kind if it is an engine kind (< 16), else 16: for ordering a transfer. */
function engineKind(ev: Uint8Array): number {
  return Math.min(peekEvent(ev)?.kind ?? 16, 16);
}
