/**
 * Authenticated, encrypted peer sessions for `/v1/sync` and `/v1/dht`
 * (session protocol v2): an ephemeral X25519 exchange, each side's Ed25519
 * key signing the handshake transcript, then ChaCha20-Poly1305 frames keyed
 * from the exchange. It is SIGMA-I in the shape of Noise XX: identities
 * travel encrypted, and each signature covers both ephemeral keys, both
 * challenges, the purpose and the version, so a relay can neither read a
 * session nor pass one side's proof off as its own.
 *
 * ```
 *  initiator (dials)                                   responder
 *   hs1 {v, p, e_i, c_i}                         ──►                    plaintext
 *                        ◄──  hs2 {e_r, c_r, box_r}                    box_r under k_hs_r
 *   hs3 {box_i}                                   ──►                   box_i under k_hs_i
 *   then every frame: ChaCha20-Poly1305(k_dir, counter_dir, frame)
 *
 *  h0 = SHA-256(cbor(["xf-session", 2, p]))  h1 = SHA-256(h0 ‖ hs1)  ss = X25519(e_i, e_r)
 *  h2 = SHA-256(h1 ‖ e_r ‖ c_r)                       k_hs_i ‖ k_hs_r = HKDF(ss, h2, "xf-session hs")
 *  box_r = [payload_r, Ed25519_r(cbor(["xf-session-v2", "responder", h2, payload_r]))]
 *  h3 = SHA-256(h2 ‖ box_r)
 *  box_i = [payload_i, Ed25519_i(cbor(["xf-session-v2", "initiator", h3, payload_i]))]
 *  h4 = SHA-256(h3 ‖ box_i)                           k_i ‖ k_r = HKDF(ss, h4, "xf-session transport")
 *  payload = cbor({key: Ed25519 public key, info: {…the sender's limits, address…}})
 * ```
 *
 * Nonces are 64-bit frame counters, one per direction, never sent: a frame
 * replayed, dropped, reordered or altered fails authentication and ends the
 * session (`BAD_FRAME`). A handshake message replayed byte for byte answers
 * another ephemeral key and fails (`BAD_AUTH`).
 *
 * @module
 */

import { x25519 } from "@noble/curves/ed25519";
import { chacha20poly1305 } from "@noble/ciphers/chacha";
import { hkdf } from "@noble/hashes/hkdf";
import { sha256 } from "@noble/hashes/sha2";
import { type CborValue, decodeCbor, encodeCbor } from "../storage/cbor.ts";
import { type Ed25519, type KeyPair, webCryptoEd25519 } from "../storage/ed25519.ts";
import { type ErrorCode, toWire, XfError } from "../core/errors.ts";
import { decodeFrame, encodeFrame, field, type Frame, isBytes, isUint } from "./frames.ts";
import { HANDSHAKE_BYTES_MAX } from "../core/limits.ts";
import { type Clock, realClock, realRandom, type TimerHandle } from "../core/clock.ts";

/** Version of the session protocol (carried in `hs1`). */
export const SESSION_VERSION = 2;
/** Bytes an AEAD tag adds to every frame. */
export const AEAD_TAG_BYTES = 16;

/** What a session is for; a proof made for one is useless for the other. */
export type SessionPurpose = "sync" | "dht";

/** WebSocket close code of a normal end (`bye`, node stopping). */
export const CLOSE_NORMAL = 1000;
/** WebSocket close code of a protocol error (a frame that does not parse or breaks the protocol). */
export const CLOSE_PROTOCOL_ERROR = 1002;
/** WebSocket close code of a policy violation (limits, refusals, anything else that ends a session in error). */
export const CLOSE_POLICY_VIOLATION = 1008;

const PROTOCOL_ERRORS: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  "BAD_FRAME",
  "BAD_CBOR",
  "FRAME_TOO_LARGE",
  "UNSOLICITED",
  "NOT_SUBSCRIBED",
  "UNSUPPORTED_VERSION",
]);

/** The WebSocket close code for a session ended by error `code`: 1002 (protocol error) or 1008 (policy). */
export function closeCodeOf(code: ErrorCode): number {
  return PROTOCOL_ERRORS.has(code) ? CLOSE_PROTOCOL_ERROR : CLOSE_POLICY_VIOLATION;
}

/** A bidirectional channel of binary frames (a WebSocket, or a test pipe). */
export interface FrameChannel {
  send(frame: Uint8Array): void;
  /** Close with a reason and a WebSocket close code (default {@linkcode CLOSE_NORMAL}). */
  close(reason: string, code?: number): void;
  onFrame: ((frame: Uint8Array) => void) | null;
  onClose: ((reason: string) => void) | null;
  /** Bytes handed to `send` and not yet written to the socket (0 where unknown). */
  buffered?(): number;
}

/** Options of a {@linkcode SecureChannel}. */
export interface SecureOptions {
  key: KeyPair;
  purpose: SessionPurpose;
  role: "initiator" | "responder";
  /** What we tell the peer about ourselves (limits, address), signed into the handshake. */
  info: Record<string, CborValue>;
  /** Largest plaintext frame accepted once the session is up. */
  frameMax: number;
  /** Time the peer has to complete the handshake. */
  handshakeMs: number;
  /**
   * Source of the handshake's randomness (the ephemeral X25519 secret, then the challenge), `n` bytes
   * a call; default `crypto.getRandomValues`. Fixed only to make test vectors reproducible (and in the simulation).
   */
  random?: (n: number) => Uint8Array;
  /** The clock of the handshake's timeout (default {@linkcode realClock}; a simulation's virtual one in tests). */
  clock?: Clock;
  /** Ed25519 for the proofs (default {@linkcode webCryptoEd25519}; a simulation's deterministic one in tests). */
  ed25519?: Ed25519;
}

/** The proven peer: its Ed25519 key and the info it signed. */
export interface PeerProof {
  key: Uint8Array;
  info: Map<string, unknown>;
}

const enc = new TextEncoder();
const concat = (...parts: Uint8Array[]): Uint8Array => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
};
const h = (...parts: Uint8Array[]): Uint8Array => sha256(concat(...parts));
const ZERO12 = new Uint8Array(12);

function nonceOf(counter: number): Uint8Array {
  const n = new Uint8Array(12);
  new DataView(n.buffer).setBigUint64(4, BigInt(counter), true);
  return n;
}

/** The signed message of one side: purpose-bound by the transcript hash. */
function signedBytes(role: "initiator" | "responder", th: Uint8Array, payload: Uint8Array): Uint8Array {
  return encodeCbor(["xf-session-v2", role, th, payload]);
}

/**
 * A {@linkcode FrameChannel} that runs the handshake over `raw`, then
 * carries frames encrypted. `ready` resolves with the peer's proven key and
 * info, or rejects with the code that ended the handshake. Frames passed to
 * `send` before the handshake completes are refused (thrown away): the
 * sessions above send nothing until `ready`.
 */
export class SecureChannel implements FrameChannel {
  onFrame: ((frame: Uint8Array) => void) | null = null;
  onClose: ((reason: string) => void) | null = null;
  /** Resolves once both sides proved who they are. */
  readonly ready: Promise<PeerProof>;
  /** Bytes of handshake and ciphertext received and sent (for tests and figures). */
  readonly wire = { bytesIn: 0, bytesOut: 0 };

  #raw: FrameChannel;
  #o: SecureOptions;
  #state: "handshake" | "open" | "closed" = "handshake";
  #eSecret: Uint8Array;
  #ePublic: Uint8Array;
  #challenge: Uint8Array;
  #th: Uint8Array = new Uint8Array(0);
  #ss: Uint8Array | null = null;
  #hsIn: Uint8Array | null = null;
  #hsOut: Uint8Array | null = null;
  #kOut: Uint8Array | null = null;
  #kIn: Uint8Array | null = null;
  #nOut = 0;
  #nIn = 0;
  #step = 0;
  #work: Promise<void> = Promise.resolve();
  #timer: TimerHandle;
  #clock: Clock;
  #resolve!: (p: PeerProof) => void;
  #reject!: (e: XfError) => void;

  constructor(raw: FrameChannel, options: SecureOptions) {
    this.#raw = raw;
    this.#o = options;
    const random = options.random ?? realRandom;
    this.#clock = options.clock ?? realClock;
    this.#eSecret = random(32).slice();
    this.#challenge = random(32).slice();
    this.#ePublic = x25519.getPublicKey(this.#eSecret);
    this.ready = new Promise<PeerProof>((res, rej) => {
      this.#resolve = res;
      this.#reject = rej;
    });
    this.ready.catch(() => {}); // observed by whoever awaits it
    raw.onFrame = (f) => this.#onRaw(f);
    raw.onClose = (reason) => this.#closed(reason || "connection closed");
    this.#timer = this.#clock.setTimeout(
      () => this.#fail("TIMEOUT", `No ${options.purpose} handshake within ${options.handshakeMs} ms`),
      options.handshakeMs,
    );
    this.#th = h(encodeCbor(["xf-session", SESSION_VERSION, options.purpose]));
    if (options.role === "initiator") {
      const hs1 = encodeFrame("hs1", { v: SESSION_VERSION, p: options.purpose, e: this.#ePublic, c: this.#challenge });
      this.#th = h(this.#th, hs1);
      this.#rawSend(hs1);
    }
  }

  /** Whether frames flow encrypted now. */
  get open(): boolean {
    return this.#state === "open";
  }

  /** Bytes queued on the socket. */
  buffered(): number {
    return this.#raw.buffered?.() ?? 0;
  }

  /** Send one frame, encrypted (dropped unless the session is open). */
  send(frame: Uint8Array): void {
    if (this.#state !== "open") return;
    this.#rawSend(chacha20poly1305(this.#kOut!, nonceOf(this.#nOut++)).encrypt(frame));
  }

  /** Close the connection. */
  close(reason: string): void {
    if (this.#state === "closed") return;
    this.#raw.close(reason);
    this.#closed(reason);
  }

  /** End with a coded error: sent to the peer (encrypted once open), then closed. */
  fail(code: ErrorCode, message: string): void {
    this.#fail(code, message);
  }

  #rawSend(bytes: Uint8Array): void {
    this.wire.bytesOut += bytes.length;
    this.#raw.send(bytes);
  }

  #fail(code: ErrorCode, message: string): void {
    if (this.#state === "closed") return;
    const err = encodeFrame("error", { code, message });
    if (this.#state === "open") this.send(err);
    else this.#rawSend(err);
    this.#raw.close(`${code}: ${message}`.slice(0, 120), closeCodeOf(code));
    this.#closed(`${code}: ${message}`, new XfError(code, message));
  }

  #closed(reason: string, err?: XfError): void {
    if (this.#state === "closed") return;
    const wasOpen = this.#state === "open";
    this.#state = "closed";
    this.#clock.clearTimeout(this.#timer);
    if (!wasOpen) this.#reject(err ?? new XfError("BAD_AUTH", `Handshake ended: ${reason}`));
    this.onClose?.(reason);
  }

  #onRaw(bytes: Uint8Array): void {
    if (this.#state === "closed") return;
    this.wire.bytesIn += bytes.length;
    if (this.#state === "open") return this.#transport(bytes);
    // Handshake messages are handled one after another (signing and verifying are async); frames that
    // arrive while the last one is checked are decrypted after it, in order.
    this.#work = this.#work.then(() => this.#state === "open" ? this.#transport(bytes) : this.#handshake(bytes))
      .catch((e) => {
        const w = toWire(e);
        this.#fail(w.code === "INTERNAL" ? "BAD_FRAME" : w.code, w.message);
      });
  }

  #transport(bytes: Uint8Array): void {
    if (this.#state !== "open") return;
    {
      if (bytes.length > this.#o.frameMax + AEAD_TAG_BYTES) {
        return this.#fail(
          "FRAME_TOO_LARGE",
          `Frame of ${bytes.length - AEAD_TAG_BYTES} bytes is over the limit ${this.#o.frameMax}`,
        );
      }
      let plain: Uint8Array;
      try {
        plain = chacha20poly1305(this.#kIn!, nonceOf(this.#nIn++)).decrypt(bytes);
      } catch {
        // The responder refuses our proof in clear (it has no keys it trusts): the session ends with its code.
        const refusal = this.#nIn === 1 && this.#o.role === "initiator" ? plainError(bytes) : null;
        if (refusal) {
          this.#raw.close(`peer error ${refusal.code}`);
          return this.#closed(`${refusal.code}: peer refused the handshake: ${refusal.message}`);
        }
        return this.#fail("BAD_FRAME", `Cannot authenticate frame ${this.#nIn - 1}: altered, replayed or reordered`);
      }
      this.onFrame?.(plain);
    }
  }

  async #handshake(bytes: Uint8Array): Promise<void> {
    if (this.#state !== "handshake") return;
    const f = decodeFrame(bytes, HANDSHAKE_BYTES_MAX, "Handshake message");
    const t = f.get("t");
    if (t === "error") {
      const code = String(f.get("code") ?? "BAD_AUTH");
      const message = String(f.get("message") ?? "").slice(0, 200);
      this.#raw.close(`peer error ${code}`);
      const known = code as ErrorCode;
      return this.#closed(`peer error ${code}: ${message}`, new XfError(known, `Peer refused: ${message}`));
    }
    const role = this.#o.role;
    const expected = role === "responder" ? ["hs1", "hs3"][this.#step] : "hs2";
    if (t !== expected || (role === "initiator" && this.#step > 0)) {
      throw new XfError("BAD_FRAME", `Handshake message "${String(t)}" out of order (expected "${expected}")`);
    }
    this.#step++;
    if (t === "hs1") return await this.#onHs1(f, bytes);
    if (t === "hs2") return await this.#onHs2(f);
    return await this.#onHs3(f);
  }

  /** Responder: the initiator's ephemeral key and challenge; answer with ours and our proof. */
  async #onHs1(f: Frame, bytes: Uint8Array): Promise<void> {
    const v = field<number>(f, "v", isUint, "a version");
    if (v !== SESSION_VERSION) {
      throw new XfError("BAD_FRAME", `Session protocol version "${v}" is not supported (this node speaks 2)`);
    }
    const p = f.get("p");
    if (p !== this.#o.purpose) {
      throw new XfError("BAD_FRAME", `Handshake for "${String(p).slice(0, 20)}" on the ${this.#o.purpose} route`);
    }
    const eI = field<Uint8Array>(f, "e", isBytes(32), "32 bytes");
    field<Uint8Array>(f, "c", isBytes(32), "32 bytes");
    this.#th = h(this.#th, bytes);
    this.#th = h(this.#th, this.#ePublic, this.#challenge);
    this.#keys(eI, "hs");
    const box = await this.#box("responder");
    this.#rawSend(encodeFrame("hs2", { e: this.#ePublic, c: this.#challenge, box }));
    this.#th = h(this.#th, box);
  }

  /** Initiator: the responder's key exchange and proof; check it, then prove ourselves. */
  async #onHs2(f: Frame): Promise<void> {
    const eR = field<Uint8Array>(f, "e", isBytes(32), "32 bytes");
    const cR = field<Uint8Array>(f, "c", isBytes(32), "32 bytes");
    const boxR = field<Uint8Array>(f, "box", isBytes(), "bytes");
    this.#th = h(this.#th, eR, cR);
    this.#keys(eR, "hs");
    const peer = await this.#open(boxR, "responder");
    this.#th = h(this.#th, boxR);
    const box = await this.#box("initiator");
    this.#rawSend(encodeFrame("hs3", { box }));
    this.#th = h(this.#th, box);
    this.#up(peer);
  }

  /** Responder: the initiator's proof. */
  async #onHs3(f: Frame): Promise<void> {
    const boxI = field<Uint8Array>(f, "box", isBytes(), "bytes");
    const peer = await this.#open(boxI, "initiator");
    this.#th = h(this.#th, boxI);
    this.#up(peer);
  }

  #keys(peerEphemeral: Uint8Array, label: "hs"): void {
    let ss: Uint8Array;
    try {
      ss = x25519.getSharedSecret(this.#eSecret, peerEphemeral);
    } catch {
      throw new XfError("BAD_AUTH", "Cannot complete handshake: the ephemeral key is not a valid X25519 point");
    }
    if (ss.every((b) => b === 0)) {
      throw new XfError("BAD_AUTH", "Cannot complete handshake: the ephemeral key is of low order");
    }
    this.#ss = ss;
    const k = hkdf(sha256, ss, this.#th, enc.encode(`xf-session ${label}`), 64);
    const kI = k.subarray(0, 32), kR = k.subarray(32, 64);
    this.#hsOut = this.#o.role === "initiator" ? kI : kR;
    this.#hsIn = this.#o.role === "initiator" ? kR : kI;
  }

  async #box(role: "initiator" | "responder"): Promise<Uint8Array> {
    const payload = encodeCbor(
      new Map<string, CborValue>([
        ["key", this.#o.key.publicKey],
        ["info", new Map(Object.entries(this.#o.info).filter(([, v]) => v !== undefined))],
      ]),
    );
    const sig = await (this.#o.ed25519 ?? webCryptoEd25519).sign(this.#o.key, signedBytes(role, this.#th, payload));
    return chacha20poly1305(this.#hsOut!, ZERO12).encrypt(encodeCbor([payload, sig]));
  }

  async #open(box: Uint8Array, role: "initiator" | "responder"): Promise<PeerProof> {
    let plain: Uint8Array;
    try {
      plain = chacha20poly1305(this.#hsIn!, ZERO12).decrypt(box);
    } catch {
      throw new XfError("BAD_AUTH", "Cannot accept proof: it was not made for this session");
    }
    const v = decodeCbor(plain);
    if (!Array.isArray(v) || v.length !== 2 || !isBytes()(v[0]) || !isBytes(64)(v[1])) {
      throw new XfError("BAD_FRAME", "Cannot read proof: expected [payload, sig]");
    }
    const payload = v[0] as Uint8Array, sig = v[1] as Uint8Array;
    const m = decodeCbor(payload);
    const key = m instanceof Map ? m.get("key") : undefined;
    const info = m instanceof Map ? m.get("info") : undefined;
    if (!isBytes(32)(key) || !(info instanceof Map)) {
      throw new XfError("BAD_FRAME", "Cannot read proof: expected {key: 32 bytes, info: map}");
    }
    const ed = this.#o.ed25519 ?? webCryptoEd25519;
    if (!(await ed.verify(key as Uint8Array, sig, signedBytes(role, this.#th, payload)))) {
      throw new XfError("BAD_AUTH", "Cannot accept proof: the signature does not verify for that key");
    }
    return { key: (key as Uint8Array).slice(), info: info as Map<string, unknown> };
  }

  #up(peer: PeerProof): void {
    const k = hkdf(sha256, this.#ss!, this.#th, enc.encode("xf-session transport"), 64);
    const kI = k.slice(0, 32), kR = k.slice(32, 64);
    this.#kOut = this.#o.role === "initiator" ? kI : kR;
    this.#kIn = this.#o.role === "initiator" ? kR : kI;
    this.#ss = this.#hsIn = this.#hsOut = null;
    this.#eSecret.fill(0);
    this.#state = "open";
    this.#clock.clearTimeout(this.#timer);
    this.#resolve(peer);
  }
}

/** A handshake-time `error` frame in clear, if `bytes` is one. */
function plainError(bytes: Uint8Array): { code: string; message: string } | null {
  try {
    const f = decodeFrame(bytes, HANDSHAKE_BYTES_MAX);
    if (f.get("t") !== "error") return null;
    return {
      code: String(f.get("code") ?? "BAD_AUTH").slice(0, 40),
      message: String(f.get("message") ?? "").slice(0, 200),
    };
  } catch {
    return null;
  }
}
