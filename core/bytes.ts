/**
 * The byte helpers every layer uses, one copy each: hex, equality, order and
 * concatenation of byte strings, a seeded PRNG for tests, simulations and
 * benchmarks, and a percentile. Pure: no Deno API, no import (the browser
 * client bundles it).
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { bytesEqual, fromHex, toHex } from "./bytes.ts";
 * assert(toHex(new Uint8Array([0, 255])) === "00ff");
 * assert(bytesEqual(fromHex("00ff")!, new Uint8Array([0, 255])));
 * ```
 *
 * @module
 */

const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, "0"));

/**
 * Lower-case hex of some bytes. One argument only, so `list.map(toHex)` is safe.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { toHex } from "./bytes.ts";
 * assert(toHex(new Uint8Array([0, 255])) === "00ff");
 * assert([new Uint8Array([1]), new Uint8Array([2])].map(toHex).join() === "01,02");
 * ```
 */
export function toHex(bytes: Uint8Array): string {
  return toHexAt(bytes, 0, bytes.length);
}

/**
 * Lower-case hex of `bytes[off..off+len]`.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { toHexAt } from "./bytes.ts";
 * assert(toHexAt(new Uint8Array([1, 2, 255]), 1, 2) === "02ff");
 * ```
 */
export function toHexAt(bytes: Uint8Array, off: number, len: number): string {
  let s = "";
  for (let i = off; i < off + len; i++) s += HEX[bytes[i]!];
  return s;
}

/**
 * Bytes of a hex string (lower or upper case), or `null` if it is not hex of even length.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { fromHex } from "./bytes.ts";
 * assert(fromHex("00FF")?.[1] === 255);
 * assert(fromHex("abc") === null && fromHex("zz") === null);
 * ```
 */
export function fromHex(s: string): Uint8Array | null {
  if (s.length % 2 !== 0) return null;
  const out = new Uint8Array(s.length / 2);
  for (let i = 0; i < out.length; i++) {
    const hi = hexDigit(s.charCodeAt(2 * i));
    const lo = hexDigit(s.charCodeAt(2 * i + 1));
    if (hi < 0 || lo < 0) return null;
    out[i] = (hi << 4) | lo;
  }
  return out;
}

/** The value of a hex digit's char code (either case), or -1. */
function hexDigit(c: number): number {
  if (c >= 48 && c <= 57) return c - 48; // 0-9
  if (c >= 97 && c <= 102) return c - 87; // a-f
  if (c >= 65 && c <= 70) return c - 55; // A-F
  return -1;
}

/** True when two byte strings hold the same bytes. */
export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * Lexicographic order of two byte strings (a shorter prefix first): negative, 0 or positive.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { compareBytes } from "./bytes.ts";
 * assert(compareBytes(new Uint8Array([1]), new Uint8Array([1, 0])) < 0);
 * assert(compareBytes(new Uint8Array([2]), new Uint8Array([1, 9])) > 0);
 * ```
 */
export function compareBytes(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const d = a[i]! - b[i]!;
    if (d !== 0) return d;
  }
  return a.length - b.length;
}

/** The byte strings one after the other, in a new array. */
export function concatBytes(...parts: Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

/**
 * A small seeded PRNG (mulberry32): fast, 32-bit state, deterministic from
 * its seed; for tests, simulations and benchmarks, never for keys. Its
 * methods are bound, so `const rand = new Prng(1).float` works.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { Prng } from "./bytes.ts";
 * const a = new Prng(7), b = new Prng(7);
 * assert(a.u32() === b.u32() && a.float() === b.float());
 * const n = a.int(10);
 * assert(Number.isInteger(n) && n >= 0 && n < 10);
 * ```
 */
export class Prng {
  #s: number;
  /** A generator seeded with `seed` (any number; its low 32 bits count). */
  constructor(seed: number) {
    this.#s = seed >>> 0;
  }
  /** The next uint32. */
  readonly u32 = (): number => {
    let t = (this.#s = (this.#s + 0x6d2b79f5) | 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  };
  /** A float in [0, 1). */
  readonly float = (): number => this.u32() / 4294967296;
  /** An integer in [0, n). */
  readonly int = (n: number): number => Math.floor(this.float() * n);
  /** A standard normal variate (Box–Muller). */
  readonly normal = (): number => {
    const u = 1 - this.float();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * this.float());
  };
  /** `n` random bytes. */
  readonly bytes = (n: number): Uint8Array => {
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i += 4) {
      let x = this.u32();
      for (let j = i; j < Math.min(n, i + 4); j++, x >>>= 8) out[j] = x & 0xff;
    }
    return out;
  };
  /** A random element of a non-empty array. */
  readonly pick = <T>(xs: readonly T[]): T => {
    if (xs.length === 0) throw new RangeError("Cannot pick from an empty array");
    return xs[this.int(xs.length)]!;
  };
}

/**
 * The `p`-th quantile (`p` in 0..1) of numbers sorted ascending, by nearest
 * rank (the smallest value with at least `p` of them at or below it); NaN if
 * there are none.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { percentile } from "./bytes.ts";
 * assert(percentile([1, 2, 3, 4], 0.5) === 2);
 * assert(percentile([1, 2, 3, 4], 0.99) === 4 && percentile([1, 2, 3, 4], 0) === 1);
 * assert(Number.isNaN(percentile([], 0.5)));
 * ```
 */
export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const rank = Math.max(1, Math.ceil(p * sorted.length));
  return sorted[Math.min(rank, sorted.length) - 1]!;
}
