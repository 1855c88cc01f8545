/**
 * Deterministic CBOR (RFC 8949 §4.2.1), the subset Xaeroflux needs:
 * unsigned and negative integers, byte strings, text strings, arrays, maps
 * with text or integer keys, booleans and null.
 *
 * The encoder always writes the shortest head and definite lengths, and
 * sorts map keys by their encoded bytes. The decoder is strict: it refuses
 * anything the encoder would not have written (longer heads than needed,
 * indefinite lengths, tags, floats, unsorted or repeated map keys, invalid
 * UTF-8), so one logical value has exactly one encoding.
 *
 * cbor-x is used elsewhere for frames; it is not used here because by
 * default it tags byte strings and writes large integers as floats.
 *
 * @module
 */

import { compareBytes } from "../core/bytes.ts";
import { XfError } from "../core/errors.ts";
import { CBOR_DEPTH_MAX, CBOR_ITEMS_MAX } from "../core/limits.ts";

/** A value this codec can encode. */
export type CborValue =
  | number
  | bigint
  | string
  | Uint8Array
  | boolean
  | null
  | CborValue[]
  | Map<string | number, CborValue>;

const textEncoder = new TextEncoder();
// ignoreBOM: a leading U+FEFF is part of the string; stripping it would give one value two encodings.
const textDecoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

class Writer {
  buf: Uint8Array<ArrayBuffer> = new Uint8Array(256);
  len = 0;
  ensure(n: number) {
    if (this.len + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.len + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.len));
    this.buf = next;
  }
  byte(b: number) {
    this.ensure(1);
    this.buf[this.len++] = b;
  }
  bytes(b: Uint8Array) {
    this.ensure(b.length);
    this.buf.set(b, this.len);
    this.len += b.length;
  }
  head(major: number, n: number | bigint): void {
    const m = major << 5;
    if (typeof n === "number") {
      if (n < 24) return this.byte(m | n);
      if (n < 0x100) return this.byte(m | 24), this.byte(n);
      if (n < 0x10000) return this.byte(m | 25), this.byte(n >> 8), this.byte(n & 0xff);
      if (n < 0x100000000) {
        this.byte(m | 26);
        this.ensure(4);
        new DataView(this.buf.buffer).setUint32(this.len, n);
        this.len += 4;
        return;
      }
      n = BigInt(n);
    }
    if (n < 0x100000000n) return this.head(major, Number(n));
    if (n >= 1n << 64n) throw new XfError("BAD_EVENT", `Cannot encode integer "${n}": over 64 bits`);
    this.byte(m | 27);
    this.ensure(8);
    new DataView(this.buf.buffer).setBigUint64(this.len, n);
    this.len += 8;
  }
}

function write(w: Writer, v: CborValue, depth: number): void {
  if (depth > CBOR_DEPTH_MAX) throw new XfError("BAD_EVENT", "Cannot encode value: nested too deep");
  if (typeof v === "number") {
    if (!Number.isSafeInteger(v)) {
      throw new XfError("BAD_EVENT", `Cannot encode number "${v}": not a safe integer`);
    }
    return v >= 0 ? w.head(0, v) : w.head(1, -1 - v);
  }
  if (typeof v === "bigint") return v >= 0n ? w.head(0, v) : w.head(1, -1n - v);
  if (typeof v === "string") {
    const b = textEncoder.encode(v);
    w.head(3, b.length);
    return w.bytes(b);
  }
  if (v instanceof Uint8Array) {
    w.head(2, v.length);
    return w.bytes(v);
  }
  if (v === false) return w.byte(0xf4);
  if (v === true) return w.byte(0xf5);
  if (v === null) return w.byte(0xf6);
  if (Array.isArray(v)) {
    w.head(4, v.length);
    for (const x of v) write(w, x, depth + 1);
    return;
  }
  if (v instanceof Map) {
    const entries = [...v.entries()].map(([k, x]) => [encodeCbor(k), x] as const);
    entries.sort((a, b) => compareBytes(a[0], b[0]));
    w.head(5, entries.length);
    for (const [k, x] of entries) {
      w.bytes(k);
      write(w, x, depth + 1);
    }
    return;
  }
  throw new XfError("BAD_EVENT", `Cannot encode value of type "${typeof v}"`);
}

/**
 * One CBOR array of already-encoded items: the array head, then the items'
 * bytes as they are (a batch body for `POST /v1/groups/:gid/events`).
 *
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { cborArrayOf } from "./cbor.ts";
 * assertEquals(cborArrayOf([new Uint8Array([1]), new Uint8Array([2])]), new Uint8Array([0x82, 1, 2]));
 * ```
 */
export function cborArrayOf(items: readonly Uint8Array[]): Uint8Array {
  const n = items.length;
  const head = n < 24
    ? [0x80 | n]
    : n < 0x100
    ? [0x98, n]
    : n < 0x10000
    ? [0x99, n >> 8, n & 0xff]
    : [0x9a, (n >>> 24) & 0xff, (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff];
  let len = head.length;
  for (const it of items) len += it.length;
  const out = new Uint8Array(len);
  out.set(head);
  let o = head.length;
  for (const it of items) {
    out.set(it, o);
    o += it.length;
  }
  return out;
}

/**
 * Encode a value as deterministic CBOR.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { encodeCbor } from "./cbor.ts";
 * const bytes = encodeCbor([1, new Uint8Array([0xaa]), "hi"]);
 * assert(bytes[0] === 0x83);
 * ```
 */
export function encodeCbor(v: CborValue): Uint8Array<ArrayBuffer> {
  const w = new Writer();
  write(w, v, 0);
  return w.buf.slice(0, w.len);
}

/** A strict reader over one buffer; `pos` is the next byte to read. */
export class CborReader {
  pos: number;
  readonly end: number;
  constructor(readonly buf: Uint8Array, start = 0, end = buf.length) {
    this.pos = start;
    this.end = end;
  }

  private fail(code: "BAD_CBOR" | "NOT_DETERMINISTIC", what: string): never {
    throw new XfError(code, `Cannot decode CBOR at byte ${this.pos}: ${what}`);
  }

  /** True when every byte has been read. */
  done(): boolean {
    return this.pos >= this.end;
  }

  /** Read a head: major type and argument (as number, or bigint past 2^53). */
  head(): { major: number; arg: number | bigint; info: number } {
    if (this.pos >= this.end) this.fail("BAD_CBOR", "truncated (expected a head)");
    const b = this.buf[this.pos++]!;
    const major = b >> 5;
    const info = b & 0x1f;
    if (major === 7) return { major, arg: info, info };
    if (info < 24) return { major, arg: info, info };
    const size = info === 24 ? 1 : info === 25 ? 2 : info === 26 ? 4 : info === 27 ? 8 : 0;
    if (size === 0) {
      this.pos--;
      this.fail(
        info === 31 ? "NOT_DETERMINISTIC" : "BAD_CBOR",
        info === 31 ? "indefinite length" : `reserved additional info ${info}`,
      );
    }
    if (this.pos + size > this.end) this.fail("BAD_CBOR", "truncated (head argument)");
    let arg: number | bigint = 0;
    const view = new DataView(this.buf.buffer, this.buf.byteOffset + this.pos, size);
    if (size === 1) arg = view.getUint8(0);
    else if (size === 2) arg = view.getUint16(0);
    else if (size === 4) arg = view.getUint32(0);
    else {
      const big = view.getBigUint64(0);
      arg = big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(big) : big;
    }
    const min = size === 1 ? 24 : size === 2 ? 0x100 : size === 4 ? 0x10000 : 0x100000000;
    if (arg < min) this.fail("NOT_DETERMINISTIC", `integer ${arg} not in its shortest form`);
    this.pos += size;
    return { major, arg, info };
  }

  private len(arg: number | bigint, what: string): number {
    if (typeof arg === "bigint" || arg > this.end - this.pos) {
      this.fail("BAD_CBOR", `truncated (${what} of length ${arg})`);
    }
    return arg as number;
  }

  /** Read an unsigned integer. */
  uint(): number {
    const h = this.head();
    if (h.major !== 0) this.fail("BAD_CBOR", `expected an unsigned integer, found major type ${h.major}`);
    if (typeof h.arg === "bigint") this.fail("BAD_CBOR", `integer ${h.arg} is over 2^53`);
    return h.arg;
  }

  /** Read a byte string (a view into the buffer). */
  bytes(): Uint8Array {
    const h = this.head();
    if (h.major !== 2) this.fail("BAD_CBOR", `expected a byte string, found major type ${h.major}`);
    const n = this.len(h.arg, "byte string");
    const out = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  /** Read a UTF-8 text string. */
  text(): string {
    const h = this.head();
    if (h.major !== 3) this.fail("BAD_CBOR", `expected a text string, found major type ${h.major}`);
    const n = this.len(h.arg, "text string");
    let s: string;
    try {
      s = textDecoder.decode(this.buf.subarray(this.pos, this.pos + n));
    } catch {
      this.fail("BAD_CBOR", "text string is not valid UTF-8");
    }
    this.pos += n;
    return s;
  }

  /** Read an array head and return its length. */
  array(): number {
    const h = this.head();
    if (h.major !== 4) this.fail("BAD_CBOR", `expected an array, found major type ${h.major}`);
    if (typeof h.arg === "bigint" || h.arg > CBOR_ITEMS_MAX) {
      this.fail("BAD_CBOR", `array of ${h.arg} items is over the limit ${CBOR_ITEMS_MAX}`);
    }
    return h.arg;
  }

  /** Peek at the major type of the next item without reading it. */
  peekMajor(): number {
    if (this.pos >= this.end) this.fail("BAD_CBOR", "truncated (expected an item)");
    return this.buf[this.pos]! >> 5;
  }

  /** Read any value (strictly deterministic). */
  any(depth = 0): CborValue {
    if (depth > CBOR_DEPTH_MAX) this.fail("BAD_CBOR", `nested deeper than ${CBOR_DEPTH_MAX}`);
    const start = this.pos;
    const h = this.head();
    switch (h.major) {
      case 0:
        return h.arg;
      case 1:
        // -1 - (2^53 - 1) = -2^53 is not a safe integer: it is a bigint, as the encoder needs it.
        return typeof h.arg === "bigint" || h.arg === Number.MAX_SAFE_INTEGER ? -1n - BigInt(h.arg) : -1 - h.arg;
      case 2:
      case 3:
        this.pos = start;
        return h.major === 2 ? this.bytes().slice() : this.text();
      case 4: {
        const n = this.len(h.arg, "items");
        if (n > CBOR_ITEMS_MAX) this.fail("BAD_CBOR", `array of ${n} items is over the limit`);
        const out: CborValue[] = [];
        for (let i = 0; i < n; i++) out.push(this.any(depth + 1));
        return out;
      }
      case 5: {
        const n = this.len(h.arg, "items");
        if (n > CBOR_ITEMS_MAX) this.fail("BAD_CBOR", `map of ${n} entries is over the limit`);
        const out = new Map<string | number, CborValue>();
        let prev: Uint8Array | null = null;
        for (let i = 0; i < n; i++) {
          const ks = this.pos;
          const k = this.any(depth + 1);
          const kb = this.buf.subarray(ks, this.pos);
          if (typeof k !== "string" && typeof k !== "number") {
            this.fail("BAD_CBOR", "map key is not a text string or integer");
          }
          if (prev && compareBytes(prev, kb) >= 0) {
            this.fail("NOT_DETERMINISTIC", "map keys not in sorted order or repeated");
          }
          prev = kb;
          out.set(k, this.any(depth + 1));
        }
        return out;
      }
      case 6:
        this.pos = start;
        return this.fail("NOT_DETERMINISTIC", "tags are not allowed");
      default:
        if (h.info === 20) return false;
        if (h.info === 21) return true;
        if (h.info === 22) return null;
        this.pos = start;
        return this.fail("BAD_CBOR", `simple value or float (0x${this.buf[start]!.toString(16)}) not allowed`);
    }
  }

  /** Skip one item, checking it is well formed and deterministic; return its byte span. */
  skip(): [number, number] {
    const start = this.pos;
    this.any();
    return [start, this.pos];
  }
}

/**
 * Decode exactly one deterministic CBOR item that fills `bytes`.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { decodeCbor, encodeCbor } from "./cbor.ts";
 * assert((decodeCbor(encodeCbor([1, 2])) as number[])[1] === 2);
 * ```
 */
export function decodeCbor(bytes: Uint8Array): CborValue {
  if (bytes.length === 0) throw new XfError("EMPTY_BODY", "Cannot decode CBOR: no bytes");
  const r = new CborReader(bytes);
  const v = r.any();
  if (!r.done()) throw new XfError("BAD_CBOR", `Cannot decode CBOR: ${bytes.length - r.pos} bytes after the item`);
  return v;
}

/**
 * The end offset of the CBOR item starting at `pos`, checking only that it
 * is well formed (not that it is deterministic): used to split a batch into
 * its events so each can be judged on its own. Throws `BAD_CBOR`.
 */
export function skipItem(buf: Uint8Array, pos: number, end: number = buf.length, depth = 0): number {
  const fail = (what: string): never => {
    throw new XfError("BAD_CBOR", `Cannot decode CBOR at byte ${pos}: ${what}`);
  };
  if (depth > CBOR_DEPTH_MAX) fail(`nested deeper than ${CBOR_DEPTH_MAX}`);
  if (pos >= end) fail("truncated (expected an item)");
  const b = buf[pos]!;
  const major = b >> 5;
  const info = b & 0x1f;
  let p = pos + 1;
  let arg = info;
  if (info >= 24) {
    const size = info === 24 ? 1 : info === 25 ? 2 : info === 26 ? 4 : info === 27 ? 8 : 0;
    if (size === 0) fail(info === 31 ? "indefinite lengths are not allowed" : `reserved additional info ${info}`);
    if (p + size > end) fail("truncated (head argument)");
    let v = 0;
    for (let i = 0; i < size; i++) v = v * 256 + buf[p + i]!;
    // An integer, tag or float may be past 2^53; only a length or count must fit.
    if (!Number.isSafeInteger(v) && major >= 2 && major <= 5) fail("length over 2^53");
    arg = v;
    p += size;
  }
  if (major === 2 || major === 3) {
    if (arg > end - p) fail(`truncated (string of length ${arg})`);
    return p + arg;
  }
  if (major === 4 || major === 5) {
    const items = major === 5 ? arg * 2 : arg;
    if (items > end - p) fail(`truncated (${items} items)`);
    for (let i = 0; i < items; i++) p = skipItem(buf, p, end, depth + 1);
    return p;
  }
  if (major === 6) return skipItem(buf, p, end, depth + 1);
  if (major === 7 && info >= 24 && info <= 27) return p; // floats: well formed, judged later
  return p;
}
