/**
 * A data link between two stages: a `MessagePort` with credit in both
 * directions. The sending side ({@linkcode Outlet}) has a window of
 * batches and of bytes; the receiving side ({@linkcode Inlet}) returns
 * credit when its stage has finished a batch. Batches sent and not yet
 * credited are kept, so when the receiver is restarted (a new port is
 * wired in) they are sent again: nothing in a crashed stage's mailbox is
 * lost. Large buffers are transferred, not copied.
 *
 * After a restart the link is on probation: what was in flight goes again
 * one batch at a time (each alone), so a batch that crashes its receiver
 * again is known exactly. Such a poison batch is
 * handed to `onPoison` (the dead-letter record) instead of being sent a
 * third time, and the rest flows.
 *
 * A batch sent `alone` (the index link's event-by-event retry of a batch that
 * crashed it twice, see actors/root.ts `isolate`) goes only when nothing is in
 * flight, and nothing goes beside it: a crash while it is in flight is always
 * counted against it, so two crashes name exactly one poison event.
 *
 * ```
 *  stage A ── Outlet ══ MessagePort ══ Inlet ── stage B
 *            {s, m, at, n}  ──────────►
 *            ◄──────────  {credit: s}
 * ```
 *
 * @module
 */

/** What travels on a link: a sequence number, the message, when it was sent (ms since the epoch), its bytes. */
export interface LinkFrame<T> {
  s: number;
  m: T;
  /** `performance.timeOrigin + performance.now()` at send, for per-stage queue time. */
  at: number;
}

/** A batch handed back by a link after it crashed its receiver twice. */
export interface Poisoned<T> {
  msg: T;
  crashes: number;
}

/** A batch an outlet holds: queued, or sent and not credited. `alone`: never in flight beside another. */
export interface Queued<T> {
  msg: T;
  bytes: number;
  crashes: number;
  alone: boolean;
}

/** Wall-clock milliseconds comparable across Workers. */
export function nowMs(): number {
  return performance.timeOrigin + performance.now();
}

/** The buffers of a message worth transferring (typed arrays over their own whole buffer). */
export function transferables(msg: unknown, out: Transferable[] = [], depth = 0): Transferable[] {
  if (depth > 3 || msg === null || typeof msg !== "object") return out;
  if (ArrayBuffer.isView(msg)) {
    const b = msg.buffer;
    if (b instanceof ArrayBuffer && msg.byteOffset === 0 && msg.byteLength === b.byteLength && !out.includes(b)) {
      out.push(b);
    }
    return out;
  }
  for (const v of Object.values(msg as Record<string, unknown>)) transferables(v, out, depth + 1);
  return out;
}

/** Bytes of the buffers in a message (what counts against a link's byte window). */
export function bytesOf(msg: unknown, depth = 0): number {
  if (depth > 3 || msg === null || typeof msg !== "object") return 0;
  if (ArrayBuffer.isView(msg)) return msg.byteLength;
  let n = 0;
  for (const v of Object.values(msg as Record<string, unknown>)) n += bytesOf(v, depth + 1);
  return n;
}

/** The sending side of a link. */
export class Outlet<T> {
  /** Sent, not credited, by sequence number, in send order. */
  readonly inflight = new Map<number, Queued<T>>();
  /** Waiting for credit. */
  readonly queue: Queued<T>[] = [];
  readonly stats = { sent: 0, credited: 0, poisoned: 0 };
  #port: MessagePort | null = null;
  #next = 1;
  #inflightBytes = 0;
  #probation = false;
  #idle: (() => void)[] = [];

  constructor(
    readonly name: string,
    readonly windowBatches: number,
    readonly windowBytes: number,
    private readonly onPoison: (p: Poisoned<T>) => void = () => {},
  ) {}

  /** Connect to a (new) receiver. After a restart (`restarted`), what it had not finished is sent again. */
  wire(port: MessagePort, restarted = false): void {
    this.#port?.close();
    this.#port = port;
    port.onmessage = (ev: MessageEvent) => this.#credit((ev.data as { credit: number }).credit);
    if (restarted && this.inflight.size > 0) {
      const again = [...this.inflight.values()];
      this.inflight.clear();
      this.#inflightBytes = 0;
      // Only a batch alone in flight is counted: with several, the crash is not pinned on any one of them. Each of
      // them goes again alone, so a crash from here on is pinned on exactly one (a poison batch among several costs
      // one crash more, not one per batch that goes beside it).
      if (again.length === 1) again[0]!.crashes++;
      for (const a of again) a.alone = true;
      // Probation: one batch at a time until the first is credited, so a poison batch is isolated.
      this.#probation = true;
      const poison = again.filter((a) => a.crashes >= 2);
      for (const p of poison) {
        this.stats.poisoned++;
        this.onPoison({ msg: p.msg, crashes: p.crashes });
      }
      this.queue.unshift(...again.filter((a) => a.crashes < 2));
    }
    this.#pump();
    if (this.depth() === 0) { for (const r of this.#idle.splice(0)) r(); }
  }

  /**
   * Queue a message; it goes when the receiver has credit. `alone`: it goes only when nothing is in flight, and
   * nothing goes while it is in flight (so a crash meanwhile is counted against it).
   */
  send(msg: T, alone = false): void {
    this.queue.push({ msg, bytes: bytesOf(msg), crashes: 0, alone });
    this.#pump();
  }

  /** Batches queued here plus those in the receiver's mailbox. */
  depth(): number {
    return this.queue.length + this.inflight.size;
  }

  /** True when nothing waits here for credit (the sender may take more input). */
  hasRoom(): boolean {
    return this.queue.length === 0;
  }

  /** Resolves once everything sent has been credited. */
  drained(): Promise<void> {
    if (this.depth() === 0) return Promise.resolve();
    return new Promise((r) => this.#idle.push(r));
  }

  #credit(s: number) {
    const f = this.inflight.get(s);
    if (!f) return;
    this.inflight.delete(s);
    this.#inflightBytes -= f.bytes;
    this.stats.credited++;
    this.#probation = false;
    this.#pump();
    if (this.canSend()) { for (const r of this.#creditWaiters.splice(0)) r(); }
    if (this.depth() === 0) { for (const r of this.#idle.splice(0)) r(); }
    else if (this.hasRoom()) { for (const r of this.#roomWaiters.splice(0)) r(); }
  }

  #roomWaiters: (() => void)[] = [];
  #creditWaiters: (() => void)[] = [];

  /** True when a batch sent now would go at once (nothing queued, window not full). */
  canSend(): boolean {
    return this.#port !== null && this.queue.length === 0 && !this.#aloneInFlight() &&
      this.inflight.size < (this.#probation ? 1 : this.windowBatches);
  }

  /** Resolves once a batch sent then would go at once (the root gathers requests until then). */
  sendable(): Promise<void> {
    if (this.canSend()) return Promise.resolve();
    return new Promise((r) => this.#creditWaiters.push(r));
  }
  /** Resolves once the queue here is empty. */
  room(): Promise<void> {
    if (this.hasRoom()) return Promise.resolve();
    return new Promise((r) => this.#roomWaiters.push(r));
  }

  #pump() {
    const port = this.#port;
    if (!port) return;
    const window = this.#probation ? 1 : this.windowBatches;
    while (this.queue.length > 0 && this.inflight.size < window) {
      const head = this.queue[0]!;
      // A batch sent alone waits for the link to empty, and holds it while it is in flight.
      if (this.inflight.size > 0 && (head.alone || this.#aloneInFlight())) break;
      // The byte window never blocks a lone batch (a batch larger than the window still goes, alone).
      if (this.inflight.size > 0 && this.#inflightBytes + head.bytes > this.windowBytes) break;
      this.queue.shift();
      const s = this.#next++;
      this.inflight.set(s, head);
      this.#inflightBytes += head.bytes;
      this.stats.sent++;
      const frame: LinkFrame<T> = { s, m: head.msg, at: nowMs() };
      // Kept for a resend, so copied (structured clone), not transferred.
      port.postMessage(frame);
    }
    if (this.hasRoom()) { for (const r of this.#roomWaiters.splice(0)) r(); }
  }

  /** A batch sent alone is in flight (then it is the only one). */
  #aloneInFlight(): boolean {
    for (const f of this.inflight.values()) if (f.alone) return true;
    return false;
  }

  /** Stop sending (the receiver is going away); what is in flight stays for a rewire. */
  unwire(): void {
    this.#port?.close();
    this.#port = null;
  }
}

/** The receiving side of a link. */
export class Inlet<T> {
  #port: MessagePort;
  constructor(port: MessagePort, onFrame: (f: LinkFrame<T>) => void) {
    this.#port = port;
    port.onmessage = (ev: MessageEvent) => onFrame(ev.data as LinkFrame<T>);
  }

  /** The batch with this sequence number is finished: the sender may send another. */
  credit(s: number): void {
    this.#port.postMessage({ credit: s });
  }

  close(): void {
    this.#port.close();
  }
}
