/**
 * Private helpers of the Merkle index: byte comparison, hex, varints and
 * the corruption error. Hot paths call these with offsets to avoid
 * allocating views, so they take more arguments than a public API would.
 *
 * @module
 */

import { XfError } from "../core/errors.ts";

/** Bytes in an event id and in every node of the tree. */
export const ID = 32;

/** Compare a stored 32-byte id at `a[aOff]` with a bound id (a prefix sorts first). */
export function compareIdAt(a: Uint8Array, aOff: number, b: Uint8Array): number {
  const n = b.length < ID ? b.length : ID;
  for (let i = 0; i < n; i++) {
    const d = a[aOff + i]! - b[i]!;
    if (d !== 0) return d < 0 ? -1 : 1;
  }
  return b.length < ID ? 1 : 0;
}

/** Compare the key `(ts, a[aOff..aOff+32])` with a bound (an `Item` or `Bound` of `item.ts`). */
export function compareKeyAt(ts: number, a: Uint8Array, aOff: number, bound: { ts: number; id: Uint8Array }): number {
  if (ts !== bound.ts) return ts < bound.ts ? -1 : 1;
  return compareIdAt(a, aOff, bound.id);
}

/** Compare two stored keys `(aTs, a[aOff])` and `(bTs, b[bOff])`. */
export function compareStoredKeys(
  aTs: number,
  a: Uint8Array,
  aOff: number,
  bTs: number,
  b: Uint8Array,
  bOff: number,
): number {
  if (aTs !== bTs) return aTs < bTs ? -1 : 1;
  for (let i = 0; i < ID; i++) {
    const d = a[aOff + i]! - b[bOff + i]!;
    if (d !== 0) return d < 0 ? -1 : 1;
  }
  return 0;
}

/** Whether `a[aOff..aOff+len]` equals `b[bOff..bOff+len]`. */
export function bytesEqualAt(a: Uint8Array, aOff: number, b: Uint8Array, bOff: number, len: number): boolean {
  for (let i = 0; i < len; i++) if (a[aOff + i] !== b[bOff + i]) return false;
  return true;
}

/** The big-endian u32 at `bytes[off..off+4]` (the content rules read a node's first bytes with it). */
export function u32At(bytes: Uint8Array, off: number): number {
  return ((bytes[off]! << 24) | (bytes[off + 1]! << 16) | (bytes[off + 2]! << 8) | bytes[off + 3]!) >>> 0;
}

/** Copy 32 bytes from `src[srcOff]` to `dst[dstOff]`. */
export function copy32(dst: Uint8Array, dstOff: number, src: Uint8Array, srcOff: number): void {
  for (let i = 0; i < ID; i++) dst[dstOff + i] = src[srcOff + i]!;
}

/** Throw unless `item` has a 32-byte id and a non-negative safe-integer ts. */
export function assertItem(item: { ts: number; id: Uint8Array }, what: string): void {
  if (!(item?.id instanceof Uint8Array) || item.id.length !== ID) {
    throw new TypeError(`Cannot index ${what}: id must be 32 bytes, got '${String(item?.id?.length)}'`);
  }
  if (!Number.isSafeInteger(item.ts) || item.ts < 0) {
    throw new RangeError(`Cannot index ${what}: ts must be a non-negative safe integer, got '${item.ts}'`);
  }
}

/** The error for a page or proof that the store returned wrong. */
export function corruption(message: string): XfError {
  return new XfError("STORAGE_CORRUPTION", message);
}

/** Append an unsigned LEB128 varint (7 bits a byte, low group first) of a safe integer. */
export function writeVarint(out: Uint8Array, off: number, n: number): number {
  if (n < 0x80) {
    out[off] = n;
    return off + 1;
  }
  while (n >= 0x80) {
    out[off++] = (n % 0x80) | 0x80;
    n = Math.floor(n / 0x80);
  }
  out[off++] = n;
  return off;
}

/** Bytes {@linkcode writeVarint} takes for `n`. */
export function varintLength(n: number): number {
  if (n < 0x80) return 1;
  if (n < 0x4000) return 2;
  let len = 1;
  while (n >= 0x80) {
    n = Math.floor(n / 0x80);
    len++;
  }
  return len;
}
