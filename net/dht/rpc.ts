/**
 * The DHT RPC protocol (`GET /v1/dht`, WebSocket, CBOR frames, version 1).
 * One {@linkcode DhtSession} runs each end of a connection, written against a
 * {@linkcode FrameChannel} (a WebSocket, or a test pipe) and a
 * {@linkcode DhtHost} (the node's DHT service, which answers requests).
 *
 * ```
 *  client (connects, initiator)                    server (responder)
 *    │ hs1 / hs2 / hs3 (net/secure.ts)          ◄─►  │   purpose "dht"; info {v, addr, frame}
 *    │   then every frame AEAD-encrypted              │   signed into the handshake
 *    │ req {id, op, …}                          ──►  │   ping | find_node | announce |
 *    │ ◄──  res {id, …}  or  res {id, error, message}│   find_peers | find_providers
 *    │ bye {reason}  /  error {code, message}        │   (fatal)
 * ```
 *
 * Requests and answers (group ids, targets and roots are 32 bytes; contacts
 * are `[key, addr]` pairs, the id being SHA-256 of the key; records are
 * {@linkcode encodeRecord} bytes):
 *
 * | op | request | answer |
 * |---|---|---|
 * | `ping` | — | `{node}` |
 * | `find_node` | `{gid, target}` | `{contacts}` (the k closest known) |
 * | `announce` | `{record}` (the sender's own) | `{stored}` |
 * | `find_peers` | `{gid}` | `{records}` (valid, unexpired) |
 * | `find_providers` | `{gid, root?}` | `{records}` of nodes holding `root` (else any events) |
 *
 * Every frame is bounded (`dht_frame_bytes_max`), every request has a
 * timeout (`dht_request_timeout_ms`, then `TIMEOUT`), a session holds at
 * most `dht_inflight_max` requests, and a peer making more than
 * `dht_requests_per_sec_max` requests a second is answered `RATE_LIMITED`.
 * A refusal of one request is an `error` in its `res`; a broken rule (bad
 * frame, oversized frame, failed proof) is a fatal `error` and the end.
 *
 * @module
 */

import { toHex } from "../../core/bytes.ts";
import type { CborValue } from "../../storage/cbor.ts";
import { type KeyPair } from "../../storage/ed25519.ts";
import { ERROR_STATUS, type ErrorCode, toWire, XfError } from "../../core/errors.ts";
import type { Limits } from "../../core/limits.ts";
import { type FrameChannel, SecureChannel } from "../secure.ts";
import { decodeFrame, encodeFrame, field, type Frame, isBytes, isUint } from "../frames.ts";

/** Protocol version spoken here. */
export const DHT_VERSION = 1;

/** The requests of the protocol. */
export const DHT_OPS = ["ping", "find_node", "announce", "find_peers", "find_providers"] as const;

/** One request kind. */
export type DhtOp = typeof DHT_OPS[number];

/** A decoded frame: a CBOR map with a string `t`. */
export type DhtFrame = Frame;

/** An authenticated peer as a request handler sees it. */
export interface DhtPeer {
  /** Its proven Ed25519 public key. */
  key: Uint8Array;
  /** The address it says it listens on ("" if none). */
  addr: string;
  /** The network address the request came from (the socket's remote IP); "" or absent when unknown. */
  remote?: string;
}

/** What a session needs from its node. */
export interface DhtHost {
  key: KeyPair;
  limits: Limits;
  /** Our own listening address for the hello ("" if none). */
  addr(): string;
  /** Whether `peer`, connected from `remote`, may make one more request now (the rate limits). */
  admit(peer: Uint8Array, remote?: string): boolean;
  /** Answer one request; throws an {@linkcode XfError} to refuse it. */
  handle(peer: DhtPeer, op: DhtOp, req: DhtFrame): Promise<Record<string, CborValue | undefined>>;
  /** The session ended. */
  closed(session: DhtSession): void;
}

/** Totals of a session. */
export interface DhtSessionStats {
  framesIn: number;
  framesOut: number;
  bytesIn: number;
  bytesOut: number;
  requestsIn: number;
  requestsOut: number;
  refused: number;
}

const frame = encodeFrame;

export { field, isBytes };

function codeOf(code: unknown): ErrorCode {
  return typeof code === "string" && code in ERROR_STATUS ? code as ErrorCode : "INTERNAL";
}

interface Pending {
  resolve: (f: DhtFrame) => void;
  reject: (e: XfError) => void;
  timer: ReturnType<typeof setTimeout>;
}

/** One end of a DHT connection: either side may send requests once both are proven. */
export class DhtSession {
  readonly stats: DhtSessionStats = {
    framesIn: 0,
    framesOut: 0,
    bytesIn: 0,
    bytesOut: 0,
    requestsIn: 0,
    requestsOut: 0,
    refused: 0,
  };
  /** The peer's public key, once it said hello (proven once `state` is "ready"). */
  peerKey: Uint8Array | null = null;
  /** The address the peer says it listens on. */
  peerAddr = "";
  state: "hello" | "ready" | "closed" = "hello";
  closeReason = "";
  /** When the session last sent or answered a request (ms). */
  lastUsed: number = Date.now();

  #secure: SecureChannel;
  #readyWaiters: ((ok: boolean) => void)[] = [];
  #pending = new Map<number, Pending>();
  #nextId = 1;
  /** Requests from the peer queued or being answered. */
  #queued = 0;
  #work: Promise<void> = Promise.resolve();

  constructor(
    private readonly host: DhtHost,
    ch: FrameChannel,
    readonly role: "client" | "server",
    /** The remote network address of the connection ("" if unknown). */
    readonly remote: string = "",
  ) {
    const l = host.limits;
    this.#secure = new SecureChannel(ch, {
      key: host.key,
      purpose: "dht",
      role: role === "client" ? "initiator" : "responder",
      info: { v: DHT_VERSION, addr: host.addr(), frame: l.dht_frame_bytes_max },
      frameMax: l.dht_frame_bytes_max,
      handshakeMs: l.dht_request_timeout_ms,
    });
    this.#secure.onFrame = (f) => this.#onFrame(f);
    this.#secure.onClose = (reason) => this.#closed(reason || "connection closed");
    this.#secure.ready.then((p) => this.#onProven(p.key, p.info), () => {});
  }

  /** Resolves when both sides proved who they are (false if the session closed first). */
  ready(): Promise<boolean> {
    if (this.state === "ready") return Promise.resolve(true);
    if (this.state === "closed") return Promise.resolve(false);
    return new Promise((r) => this.#readyWaiters.push(r));
  }

  /** Peer key as hex ("" before hello). */
  get peer(): string {
    return this.peerKey ? toHex(this.peerKey) : "";
  }

  /** Requests sent and not yet answered. */
  get inflight(): number {
    return this.#pending.size;
  }

  /**
   * Send a request and wait for its answer. Rejects with the peer's code if
   * it refused, `TIMEOUT` after `timeoutMs`, `OVERLOADED` if this session
   * already waits on `dht_inflight_max` answers, `STAGE_DOWN` if it closed.
   */
  async request(
    op: DhtOp,
    fields: Record<string, CborValue | undefined> = {},
    timeoutMs: number = this.host.limits.dht_request_timeout_ms,
  ): Promise<DhtFrame> {
    if (!(await this.ready())) throw new XfError("STAGE_DOWN", `DHT session closed: ${this.closeReason}`);
    if (this.#pending.size >= this.host.limits.dht_inflight_max) {
      throw new XfError("OVERLOADED", `DHT session already waits on ${this.#pending.size} answers`);
    }
    const id = this.#nextId++;
    this.lastUsed = Date.now();
    this.stats.requestsOut++;
    return await new Promise<DhtFrame>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new XfError("TIMEOUT", `DHT ${op} to "${this.peer.slice(0, 16)}…" unanswered after ${timeoutMs} ms`));
      }, timeoutMs);
      this.#pending.set(id, { resolve, reject, timer });
      this.#send(frame("req", { ...fields, id, op }));
    });
  }

  /** Close with a reason (sends `bye`). */
  close(reason = "bye"): void {
    if (this.state === "closed") return;
    this.#send(frame("bye", { reason }));
    this.#secure.close(reason);
    this.#closed(reason);
  }

  #send(bytes: Uint8Array): void {
    if (this.state === "closed") return;
    this.stats.framesOut++;
    this.stats.bytesOut += bytes.length;
    this.#secure.send(bytes);
  }

  #fail(code: ErrorCode, message: string): void {
    if (this.state === "closed") return;
    this.stats.framesOut++;
    this.#secure.fail(code, message);
    this.#closed(`${code}: ${message}`);
  }

  #closed(reason: string): void {
    if (this.state === "closed") return;
    this.state = "closed";
    this.closeReason = reason;
    this.#secure.close(reason); // the socket too, whoever ended the session
    for (const w of this.#readyWaiters.splice(0)) w(false);
    for (const p of this.#pending.values()) {
      clearTimeout(p.timer);
      p.reject(new XfError("STAGE_DOWN", `DHT session closed: ${reason}`));
    }
    this.#pending.clear();
    this.host.closed(this);
  }

  #onFrame(bytes: Uint8Array): void {
    if (this.state === "closed") return;
    this.stats.framesIn++;
    this.stats.bytesIn += bytes.length;
    let f: DhtFrame;
    try {
      f = decodeFrame(bytes, this.host.limits.dht_frame_bytes_max, "DHT frame") as DhtFrame;
    } catch (e) {
      const w = toWire(e);
      return this.#fail(w.code, w.message);
    }
    const t = f.get("t") as string;
    if (t === "res") return this.#onRes(f);
    if (t === "req") {
      // Refused at once, before any work is queued: a flood costs the node nothing but the refusals.
      const id = f.get("id");
      if (!isUint(id)) return this.#fail("BAD_FRAME", 'DHT frame "req" needs id as a request id');
      this.stats.requestsIn++;
      if (this.peerKey && !this.host.admit(this.peerKey, this.remote)) {
        this.stats.refused++;
        return this.#send(frame("res", {
          id: id as number,
          error: "RATE_LIMITED",
          message: `More than ${this.host.limits.dht_requests_per_sec_max} DHT requests a second`,
        }));
      }
      if (this.#queued >= this.host.limits.dht_inflight_max) {
        this.stats.refused++;
        return this.#send(frame("res", {
          id: id as number,
          error: "OVERLOADED",
          message: `More than ${this.host.limits.dht_inflight_max} DHT requests waiting on this session`,
        }));
      }
      this.#queued++;
    }
    // Frames are handled one after another, in arrival order.
    this.#work = this.#work.then(() => this.#handle(f)).catch((e) => {
      const w = toWire(e);
      this.#fail(w.code === "INTERNAL" ? "BAD_FRAME" : w.code, w.message);
    });
  }

  #onRes(f: DhtFrame): void {
    const id = f.get("id");
    const p = typeof id === "number" ? this.#pending.get(id) : undefined;
    if (!p) return; // late (timed out) or unknown: ignored
    this.#pending.delete(id as number);
    clearTimeout(p.timer);
    const error = f.get("error");
    if (error !== undefined) p.reject(new XfError(codeOf(error), String(f.get("message") ?? error)));
    else p.resolve(f);
  }

  async #handle(f: DhtFrame): Promise<void> {
    if (this.state === "closed") return;
    const t = f.get("t") as string;
    switch (t) {
      case "error":
        return this.#closed(`peer error ${String(f.get("code") ?? "")}: ${String(f.get("message") ?? "")}`);
      case "bye":
        return this.#closed(`peer said bye: ${String(f.get("reason") ?? "")}`);
      case "req":
        try {
          if (this.state !== "ready") return this.#fail("UNAUTHORIZED", "DHT request before hello and auth");
          return await this.#onReq(f);
        } finally {
          this.#queued--;
        }
      default:
        return this.#fail("BAD_FRAME", `Unknown DHT frame type "${t}"`);
    }
  }

  #onProven(key: Uint8Array, info: Map<string, unknown>): void {
    if (this.state !== "hello") return;
    const v = info.get("v");
    if (v !== DHT_VERSION) {
      return this.#fail(
        "BAD_FRAME",
        `DHT protocol version "${String(v)}" is not supported (this node speaks ${DHT_VERSION})`,
      );
    }
    const addr = info.get("addr") ?? "";
    if (typeof addr !== "string" || addr.length > 256 || (addr !== "" && !/^wss?:\/\/\S+$/.test(addr))) {
      return this.#fail("BAD_FRAME", 'DHT handshake needs addr as "" or a ws:// address');
    }
    this.peerKey = key;
    this.peerAddr = addr.replace(/\/+$/, "");
    this.state = "ready";
    this.lastUsed = Date.now();
    for (const w of this.#readyWaiters.splice(0)) w(true);
  }

  async #onReq(f: DhtFrame): Promise<void> {
    const id = f.get("id") as number;
    const op = f.get("op");
    this.lastUsed = Date.now();
    let answer: Record<string, CborValue | undefined>;
    try {
      if (typeof op !== "string" || !(DHT_OPS as readonly string[]).includes(op)) {
        throw new XfError("BAD_FRAME", `Unknown DHT request "${String(op).slice(0, 40)}"`);
      }
      answer = await this.host.handle({ key: this.peerKey!, addr: this.peerAddr, remote: this.remote }, op as DhtOp, f);
    } catch (e) {
      this.stats.refused++;
      const w = toWire(e);
      if (w.code === "INTERNAL") console.error(e);
      return this.#send(frame("res", { id, error: w.code, message: w.message }));
    }
    const out = frame("res", { ...answer, id });
    if (out.length > this.host.limits.dht_frame_bytes_max) {
      return this.#send(frame("res", {
        id,
        error: "FRAME_TOO_LARGE",
        message: `The answer of ${out.length} bytes is over the limit ${this.host.limits.dht_frame_bytes_max}`,
      }));
    }
    this.#send(out);
  }
}
