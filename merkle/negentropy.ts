/**
 * Negentropy protocol v1 (the range-based set reconciliation of NIP-77),
 * byte-for-byte wire compatible with nostr-tools' `nip77.Negentropy`, over the
 * rank-based {@linkcode NegentropyStorage} so that fingerprints can come from
 * the Merkle index in O(log N).
 *
 * A message is the version byte `0x61` followed by ranges, each an upper
 * bound (delta-encoded timestamp varint, id-prefix length varint, prefix
 * bytes), a mode varint (0 skip, 1 fingerprint, 2 id list) and the mode's
 * payload (16 bytes, or a count varint and that many 32-byte ids).
 *
 * @module
 */

import { negentropyVarint } from "./fingerprint.ts";
import { bytesEqual } from "../core/bytes.ts";
import { XfError } from "../core/errors.ts";
import {
  compareItems,
  FINGERPRINT_BYTES,
  ID_BYTES,
  type NegentropyItem,
  type NegentropyStorage,
} from "./negentropy_storage.ts";

export type { NegentropyItem, NegentropyStorage } from "./negentropy_storage.ts";

/** The protocol version byte of negentropy v1. */
export const PROTOCOL_VERSION = 0x61;
/** The frame size limit when none is given (as nostr-tools). */
export const FRAME_SIZE_LIMIT_DEFAULT = 60_000;
/** The smallest non-zero frame size limit (0 means unlimited). */
export const FRAME_SIZE_LIMIT_MIN = 4096;
/** Bytes kept free under the frame size limit for the closing fingerprint range. */
const FRAME_SLACK_BYTES = 200;
/** Fingerprint ranges a mismatched range is split into. */
const BUCKETS = 16;
/** Ranges with fewer items than this are sent as id lists. */
const ID_LIST_ITEMS_MAX = BUCKETS * 2;
/** The largest varint value we accept (timestamps and counts are numbers). */
const VARINT_MAX = 2 ** 53;

const MODE_SKIP = 0;
const MODE_FINGERPRINT = 1;
const MODE_ID_LIST = 2;

const EMPTY = new Uint8Array(0);
const END_BOUND: NegentropyItem = { ts: Infinity, id: EMPTY };

/** Options of a {@linkcode Reconciler}. */
export interface ReconcilerOptions {
  /**
   * Largest message this side produces, in bytes: 0 (unlimited) or at least
   * {@linkcode FRAME_SIZE_LIMIT_MIN}; default
   * {@linkcode FRAME_SIZE_LIMIT_DEFAULT}. A round that would exceed it is cut
   * short and the rest of the key space is left to later rounds.
   */
  frameSizeLimit?: number;
  /**
   * When true, a responder answers each id-list range with its own ids, as
   * the C++ reference and strfry do, so the initiator learns the whole
   * difference and the responder learns nothing. Default false: as
   * nostr-tools, the receiver of an id list reports the difference for that
   * range itself and replies nothing for it.
   */
  idListReply?: boolean;
}

/** Work counted by a {@linkcode Reconciler} over its lifetime. */
export interface ReconcilerStats {
  /** Messages produced (non-null) plus messages consumed. */
  messages: number;
  /** Bytes of the messages consumed. */
  bytesIn: number;
  /** Bytes of the messages produced. */
  bytesOut: number;
  /** Calls to {@linkcode NegentropyStorage.fingerprint}. */
  fingerprintsComputed: number;
}

/** What one {@linkcode Reconciler.reconcile} call found and answers. */
export interface ReconcileResult {
  /** The message to send back, or null when the initiator is done. */
  output: Uint8Array | null;
  /** Ids we have and the peer lacks (learned this round). */
  have: Uint8Array[];
  /** Ids the peer has and we lack (learned this round). */
  need: Uint8Array[];
}

/** A growable byte buffer. */
class Writer {
  #buf = new Uint8Array(512);
  length = 0;

  #reserve(n: number): void {
    if (this.length + n <= this.#buf.length) return;
    const next = new Uint8Array(
      Math.max(this.#buf.length * 2, this.length + n),
    );
    next.set(this.#buf.subarray(0, this.length));
    this.#buf = next;
  }

  byte(b: number): void {
    this.#reserve(1);
    this.#buf[this.length++] = b;
  }

  varint(n: number): void {
    if (n < 0x80) this.byte(n);
    else this.bytes(negentropyVarint(n));
  }

  bytes(b: Uint8Array): void {
    this.#reserve(b.length);
    this.#buf.set(b, this.length);
    this.length += b.length;
  }

  truncate(length: number): void {
    this.length = length;
  }

  result(): Uint8Array {
    return this.#buf.slice(0, this.length);
  }
}

function malformed(detail: string): XfError {
  return new XfError("BAD_FRAME", `Cannot decode negentropy message: ${detail}`);
}

/** A cursor over an incoming message; every read is bounds-checked. */
class Reader {
  pos = 0;
  constructor(readonly buf: Uint8Array) {}

  get remaining(): number {
    return this.buf.length - this.pos;
  }

  byte(what: string): number {
    if (this.pos >= this.buf.length) {
      throw malformed(`truncated ${what} at byte ${this.pos}`);
    }
    return this.buf[this.pos++]!;
  }

  varint(what: string): number {
    const start = this.pos;
    let n = 0;
    for (;;) {
      if (this.pos >= this.buf.length) {
        throw malformed(`truncated varint (${what}) at byte ${start}`);
      }
      const b = this.buf[this.pos++]!;
      const low = b & 0x7f;
      if (n > (VARINT_MAX - low) / 128) {
        throw malformed(`varint (${what}) at byte ${start} exceeds 2^53`);
      }
      n = n * 128 + low;
      if ((b & 0x80) === 0) return n;
    }
  }

  bytes(n: number, what: string): Uint8Array {
    if (n > this.remaining) {
      throw malformed(
        `truncated ${what} at byte ${this.pos}: need ${n} bytes, ${this.remaining} left`,
      );
    }
    const out = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }
}

function keyOf(id: Uint8Array): string {
  return String.fromCharCode(...id);
}

/**
 * One side of a negentropy v1 reconciliation. The initiator calls
 * {@linkcode Reconciler.initiate} and feeds each reply to
 * {@linkcode Reconciler.reconcile} until its output is null; the responder
 * only calls `reconcile` and sends back each output.
 *
 * The storage must not change during a reconciliation.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { Reconciler } from "./negentropy.ts";
 * import { VectorStorage } from "./negentropy_storage.ts";
 * const a = new VectorStorage(), b = new VectorStorage();
 * a.insert(1, new Uint8Array(32).fill(1));
 * b.insert(2, new Uint8Array(32).fill(2));
 * a.seal();
 * b.seal();
 * // The server answers id lists with its own ids, so the client learns the whole difference.
 * const client = new Reconciler(a), server = new Reconciler(b, { idListReply: true });
 * let msg: Uint8Array | null = client.initiate();
 * const need: Uint8Array[] = [];
 * while (msg !== null) {
 *   const reply = server.reconcile(msg).output!;
 *   const r = client.reconcile(reply);
 *   need.push(...r.need);
 *   msg = r.output;
 * }
 * assert(need.length === 1 && need[0]![0] === 2);
 * ```
 */
export class Reconciler {
  /** Work done so far. */
  readonly stats: ReconcilerStats = {
    messages: 0,
    bytesIn: 0,
    bytesOut: 0,
    fingerprintsComputed: 0,
  };
  readonly #storage: NegentropyStorage;
  readonly #frameSizeLimit: number;
  readonly #idListReply: boolean;
  #initiator = false;
  #lastTsIn = 0;
  #lastTsOut = 0;

  /** Make one side of a reconciliation over `storage`. */
  constructor(storage: NegentropyStorage, options: ReconcilerOptions = {}) {
    const limit = options.frameSizeLimit ?? FRAME_SIZE_LIMIT_DEFAULT;
    if (
      !Number.isSafeInteger(limit) ||
      (limit !== 0 && limit < FRAME_SIZE_LIMIT_MIN)
    ) {
      throw new RangeError(
        `Cannot use frameSizeLimit "${limit}": must be 0 (unlimited) or an integer >= ${FRAME_SIZE_LIMIT_MIN}`,
      );
    }
    this.#storage = storage;
    this.#frameSizeLimit = limit;
    this.#idListReply = options.idListReply ?? false;
  }

  /** The first message of a reconciliation; makes this side the initiator. */
  initiate(): Uint8Array {
    this.#initiator = true;
    this.#lastTsOut = 0;
    const out = new Writer();
    out.byte(PROTOCOL_VERSION);
    this.#splitRange(0, this.#storage.size(), END_BOUND, out);
    const msg = out.result();
    this.stats.messages++;
    this.stats.bytesOut += msg.length;
    return msg;
  }

  /**
   * Process a message from the peer. Returns the reply and the differences
   * found in this message's id-list ranges. The initiator's output is null
   * when reconciliation is complete; a responder always replies (at least
   * the version byte, on which the initiator completes).
   *
   * An id may be reported again in a later round when a frame size limit
   * cut a round short. Throws `XfError` `BAD_FRAME` on a malformed message
   * (the detail names the byte offset of the offending field).
   *
   * A message of another protocol version (a first byte 0x60..0x6f other
   * than {@linkcode PROTOCOL_VERSION}) is, as in the negentropy spec and the
   * C++ reference, answered by a responder with the single byte of our
   * version (and nothing learned); an initiator throws `XfError`
   * `UNSUPPORTED_VERSION` instead, which ends that reconciliation.
   */
  reconcile(msg: Uint8Array): ReconcileResult {
    if (!(msg instanceof Uint8Array)) {
      throw new TypeError(
        `Cannot reconcile a ${typeof msg}: expected a Uint8Array`,
      );
    }
    this.stats.messages++;
    this.stats.bytesIn += msg.length;
    const r = new Reader(msg);
    const version = r.byte("protocol version");
    if (version !== PROTOCOL_VERSION) {
      if (version < 0x60 || version > 0x6f) {
        throw malformed(`bad protocol version byte 0x${version.toString(16)} at byte 0`);
      }
      if (this.#initiator) {
        throw new XfError(
          "UNSUPPORTED_VERSION",
          `Cannot reconcile: the peer answered with negentropy protocol version ${version - 0x60} (byte 0x${
            version.toString(16)
          }); this node speaks only version ${PROTOCOL_VERSION - 0x60}`,
        );
      }
      // The spec's fallback: reply with only the version we support, so the initiator can retry in it.
      const output = Uint8Array.of(PROTOCOL_VERSION);
      this.stats.messages++;
      this.stats.bytesOut += output.length;
      return { output, have: [], need: [] };
    }
    this.#lastTsIn = 0;
    this.#lastTsOut = 0;

    const storage = this.#storage;
    const size = storage.size();
    const reply = this.#idListReply && !this.#initiator;
    const out = new Writer();
    out.byte(PROTOCOL_VERSION);
    const have: Uint8Array[] = [];
    const need: Uint8Array[] = [];
    let prevBound: NegentropyItem = { ts: 0, id: EMPTY };
    let prevIndex = 0;
    let skipPending = false;
    const flushSkip = () => {
      if (!skipPending) return;
      skipPending = false;
      this.#encodeBound(prevBound, out);
      out.varint(MODE_SKIP);
    };

    while (r.remaining > 0) {
      const rangeStart = r.pos;
      if (prevBound.ts === Infinity) {
        throw malformed(`range after the end bound at byte ${rangeStart}`);
      }
      let mark = out.length;
      const bound = this.#decodeBound(r);
      if (compareItems(bound, prevBound) <= 0) {
        throw malformed(`bound out of order at byte ${rangeStart}`);
      }
      const modeAt = r.pos;
      const mode = r.varint("mode");
      const lower = prevIndex;
      let upper = storage.findLowerBound(prevIndex, size, bound);

      if (mode === MODE_SKIP) {
        skipPending = true;
      } else if (mode === MODE_FINGERPRINT) {
        const theirs = r.bytes(FINGERPRINT_BYTES, "fingerprint");
        if (bytesEqual(theirs, this.#fingerprint(lower, upper))) {
          skipPending = true;
        } else {
          flushSkip();
          this.#splitRange(lower, upper, bound, out);
        }
      } else if (mode === MODE_ID_LIST) {
        const countAt = r.pos;
        const count = r.varint("id count");
        if (count * ID_BYTES > r.remaining) {
          throw malformed(
            `id list of ${count} ids at byte ${countAt} exceeds the ${r.remaining} bytes left in the message`,
          );
        }
        const theirs = new Map<string, Uint8Array>();
        for (let i = 0; i < count; i++) {
          const id = r.bytes(ID_BYTES, "id");
          const k = keyOf(id);
          if (!theirs.has(k)) theirs.set(k, id);
        }
        if (reply) {
          const base = out.length; // the C++ reference does not count the pending skip
          flushSkip();
          let endBound = bound;
          const ids = new Writer();
          let n = 0;
          storage.iterate(lower, upper, (item, i) => {
            if (this.#exceeds(base + ids.length)) {
              endBound = { ts: item.ts, id: item.id.slice() };
              upper = i;
              return false;
            }
            ids.bytes(item.id);
            n++;
          });
          this.#encodeBound(endBound, out);
          out.varint(MODE_ID_LIST);
          out.varint(n);
          out.bytes(ids.result());
          mark = out.length;
        } else {
          skipPending = true;
          storage.iterate(lower, upper, (item) => {
            const k = keyOf(item.id);
            if (theirs.has(k)) theirs.delete(k);
            else have.push(item.id.slice());
          });
          for (const id of theirs.values()) need.push(id.slice());
        }
      } else {
        throw malformed(`unknown mode ${mode} at byte ${modeAt}`);
      }

      if (this.#exceeds(out.length)) {
        // Drop this range's answer; cover everything from here on with one fingerprint.
        out.truncate(mark);
        const rest = this.#fingerprint(upper, size);
        this.#encodeBound(END_BOUND, out);
        out.varint(MODE_FINGERPRINT);
        out.bytes(rest);
        break;
      }
      prevIndex = upper;
      prevBound = bound;
    }

    let output: Uint8Array | null = out.result();
    if (output.length === 1 && this.#initiator) output = null;
    if (output !== null) {
      this.stats.messages++;
      this.stats.bytesOut += output.length;
    }
    return { output, have, need };
  }

  #exceeds(n: number): boolean {
    return this.#frameSizeLimit !== 0 &&
      n > this.#frameSizeLimit - FRAME_SLACK_BYTES;
  }

  #fingerprint(begin: number, end: number): Uint8Array {
    this.stats.fingerprintsComputed++;
    return this.#storage.fingerprint(begin, end);
  }

  /** Describe `[lower, upper)` (ending at `upperBound`): ids if few, else 16 fingerprints. */
  #splitRange(
    lower: number,
    upper: number,
    upperBound: NegentropyItem,
    out: Writer,
  ): void {
    const storage = this.#storage;
    const count = upper - lower;
    if (count < ID_LIST_ITEMS_MAX) {
      this.#encodeBound(upperBound, out);
      out.varint(MODE_ID_LIST);
      out.varint(count);
      storage.iterate(lower, upper, (item) => {
        out.bytes(item.id);
      });
      return;
    }
    const perBucket = Math.floor(count / BUCKETS);
    const withExtra = count % BUCKETS;
    let curr = lower;
    for (let i = 0; i < BUCKETS; i++) {
      const n = perBucket + (i < withExtra ? 1 : 0);
      const fp = this.#fingerprint(curr, curr + n);
      curr += n;
      const next = curr === upper ? upperBound : minimalBound(storage.getItem(curr - 1), storage.getItem(curr));
      this.#encodeBound(next, out);
      out.varint(MODE_FINGERPRINT);
      out.bytes(fp);
    }
  }

  #encodeBound(bound: NegentropyItem, out: Writer): void {
    if (bound.ts === Infinity) {
      this.#lastTsOut = Infinity;
      out.varint(0);
    } else {
      const delta = bound.ts - this.#lastTsOut;
      if (!(delta >= 0)) {
        throw new Error(
          `Negentropy invariant: bound ts ${bound.ts} encoded out of order`,
        );
      }
      this.#lastTsOut = bound.ts;
      out.varint(delta + 1);
    }
    out.varint(bound.id.length);
    out.bytes(bound.id);
  }

  #decodeBound(r: Reader): NegentropyItem {
    const start = r.pos;
    const v = r.varint("timestamp");
    let ts: number;
    if (v === 0 || this.#lastTsIn === Infinity) {
      ts = Infinity;
    } else {
      ts = v - 1 + this.#lastTsIn;
      if (ts > Number.MAX_SAFE_INTEGER) {
        throw malformed(`timestamp at byte ${start} exceeds 2^53`);
      }
    }
    this.#lastTsIn = ts;
    const lenAt = r.pos;
    const len = r.varint("bound length");
    if (len > ID_BYTES) {
      throw malformed(
        `bound id prefix of ${len} bytes at byte ${lenAt} exceeds ${ID_BYTES}`,
      );
    }
    return { ts, id: r.bytes(len, "bound id") };
  }
}

/** The shortest bound that sorts after `prev` and not after `curr`. */
function minimalBound(
  prev: NegentropyItem,
  curr: NegentropyItem,
): NegentropyItem {
  if (curr.ts !== prev.ts) return { ts: curr.ts, id: EMPTY };
  let shared = 0;
  while (shared < ID_BYTES && curr.id[shared] === prev.id[shared]) shared++;
  return { ts: curr.ts, id: curr.id.slice(0, shared + 1) };
}
