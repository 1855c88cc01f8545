/**
 * Negentropy-compatible fingerprints: id sums modulo 2^256 and the 16-byte
 * fingerprint of a range.
 *
 * The fingerprint of a set of items is, as in negentropy protocol v1
 * (NIP-77), the first 16 bytes of SHA-256 over the 32-byte little-endian
 * sum of the ids (each read as a 256-bit little-endian integer) modulo
 * 2^256, followed by the item count as a negentropy varint (base 128,
 * most significant group first, high bit set on every byte but the last).
 *
 * Sums are kept as eight 32-bit little-endian limbs (`Uint32Array(8)`).
 *
 * @module
 */

import { sha256Short } from "./_sha256.ts";
import { sumToBytes } from "./_sum.ts";

/** Bytes in a fingerprint. */
export const FINGERPRINT_BYTES = 16;

/**
 * An integer from 0 to 2^53 (a count, a timestamp delta) as a negentropy
 * varint: base 128, most significant group first, high bit set on all bytes
 * but the last.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { negentropyVarint } from "./fingerprint.ts";
 * assert(negentropyVarint(300).join() === "130,44");
 * ```
 */
export function negentropyVarint(n: number): Uint8Array {
  if (!Number.isInteger(n) || n < 0 || n > 2 ** 53) {
    throw new RangeError(`Cannot encode varint: '${n}' is not an integer from 0 to 2^53`);
  }
  const groups: number[] = [];
  do {
    groups.push(n % 128);
    n = Math.floor(n / 128);
  } while (n > 0);
  groups.reverse();
  for (let i = 0; i < groups.length - 1; i++) groups[i] = groups[i]! | 0x80;
  return Uint8Array.from(groups);
}

/**
 * The 16-byte negentropy fingerprint of `count` items whose ids sum (mod
 * 2^256) to `sum` (32 bytes little-endian, or eight 32-bit limbs).
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { fingerprintOf } from "./fingerprint.ts";
 * const fp = fingerprintOf(new Uint8Array(32), 0);
 * assert(fp.length === 16);
 * ```
 */
export function fingerprintOf(sum: Uint8Array | Uint32Array, count: number): Uint8Array {
  const sumBytes = sum instanceof Uint32Array ? sumToBytes(sum) : sum;
  if (sumBytes.length !== 32) {
    throw new RangeError(`Cannot fingerprint: sum must be 32 bytes, got '${sumBytes.length}'`);
  }
  const varint = negentropyVarint(count);
  const input = new Uint8Array(32 + varint.length);
  input.set(sumBytes);
  input.set(varint, 32);
  return sha256Short(input).subarray(0, FINGERPRINT_BYTES);
}
