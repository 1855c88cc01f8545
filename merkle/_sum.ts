/**
 * Private 256-bit arithmetic for id sums: eight 32-bit little-endian limbs
 * in a `Uint32Array`, modulo 2^256, as negentropy adds ids.
 *
 * @module
 */

/** Add the 32-byte little-endian integer at `bytes[off]` to `acc` (mod 2^256). */
export function sumAddBytes(acc: Uint32Array, bytes: Uint8Array, off: number): void {
  let carry = 0;
  for (let i = 0; i < 8; i++) {
    const o = off + i * 4;
    const v = (bytes[o]! | (bytes[o + 1]! << 8) | (bytes[o + 2]! << 16) | (bytes[o + 3]! << 24)) >>> 0;
    const s = acc[i]! + v + carry;
    acc[i] = s >>> 0;
    carry = s > 0xffffffff ? 1 : 0;
  }
}

/** Add the limbs `b[bOff..bOff+8]` to `acc` (mod 2^256). */
export function sumAdd(acc: Uint32Array, b: Uint32Array, bOff = 0): void {
  let carry = 0;
  for (let i = 0; i < 8; i++) {
    const s = acc[i]! + b[bOff + i]! + carry;
    acc[i] = s >>> 0;
    carry = s > 0xffffffff ? 1 : 0;
  }
}

/** Subtract the limbs `b[bOff..bOff+8]` from `acc` (mod 2^256). */
export function sumSub(acc: Uint32Array, b: Uint32Array, bOff = 0): void {
  let borrow = 0;
  for (let i = 0; i < 8; i++) {
    const d = acc[i]! - b[bOff + i]! - borrow;
    acc[i] = d >>> 0;
    borrow = d < 0 ? 1 : 0;
  }
}

/** The 32 little-endian bytes of a sum, written at `out[off]`. */
export function sumToBytes(acc: Uint32Array, out: Uint8Array = new Uint8Array(32), off = 0): Uint8Array {
  for (let i = 0; i < 8; i++) {
    const v = acc[i]!;
    const o = off + i * 4;
    out[o] = v & 0xff;
    out[o + 1] = (v >>> 8) & 0xff;
    out[o + 2] = (v >>> 16) & 0xff;
    out[o + 3] = v >>> 24;
  }
  return out;
}

/** Subtract the 32-byte little-endian integer at `bytes[off]` from `acc` (mod 2^256). */
export function sumSubBytes(acc: Uint32Array, bytes: Uint8Array, off: number): void {
  let borrow = 0;
  for (let i = 0; i < 8; i++) {
    const o = off + i * 4;
    const v = (bytes[o]! | (bytes[o + 1]! << 8) | (bytes[o + 2]! << 16) | (bytes[o + 3]! << 24)) >>> 0;
    const d = acc[i]! - v - borrow;
    acc[i] = d >>> 0;
    borrow = d < 0 ? 1 : 0;
  }
}

/** Whether the limbs `a[aOff..aOff+8]` equal the 32 little-endian bytes at `b[bOff]`. */
export function sumEqualsBytes(a: Uint32Array, aOff: number, b: Uint8Array, bOff: number): boolean {
  for (let i = 0; i < 8; i++) {
    const o = bOff + i * 4;
    const v = (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0;
    if (a[aOff + i] !== v) return false;
  }
  return true;
}

/** Whether this platform stores a Uint32Array's words little-endian (so the words of an id are its limbs). */
const LITTLE_ENDIAN = new Uint8Array(Uint32Array.of(1).buffer)[0] === 1;

/**
 * Add the `n` consecutive 32-byte little-endian integers at `bytes[off..]`
 * to `acc` (mod 2^256): a page's id sum. Reads whole words where the bytes
 * are 4-aligned, summing each limb's column in a double (exact below 2^21
 * integers) and carrying once.
 */
export function sumAddMany(acc: Uint32Array, bytes: Uint8Array, off: number, n: number): void {
  if (!LITTLE_ENDIAN || ((bytes.byteOffset + off) & 3) !== 0 || n >= 1 << 21) {
    for (let j = 0; j < n; j++) sumAddBytes(acc, bytes, off + j * 32);
    return;
  }
  const w = new Uint32Array(bytes.buffer, bytes.byteOffset + off, n * 8);
  let carry = 0;
  for (let i = 0; i < 8; i++) {
    let s = acc[i]! + carry;
    for (let k = i; k < w.length; k += 8) s += w[k]!;
    carry = Math.floor(s / 0x100000000);
    acc[i] = s - carry * 0x100000000;
  }
}

/**
 * Prefix sums of `n` consecutive 32-byte little-endian integers at
 * `bytes[off..]`: `out[8 * (j + 1) ..]` gets the sum of the first `j + 1`
 * (mod 2^256), `out[0..8]` is left as it is (zero).
 */
export function prefixSumsInto(out: Uint32Array, bytes: Uint8Array, off: number, n: number): void {
  if (!LITTLE_ENDIAN || ((bytes.byteOffset + off) & 3) !== 0) {
    // Unaligned (a page's sums sit after varints in its encoding): read each limb byte by byte.
    for (let j = 0; j < n; j++) {
      const p = j * 8;
      const q = p + 8;
      const b = off + j * 32;
      let carry = 0;
      for (let i = 0; i < 8; i++) {
        const o = b + i * 4;
        const v = (bytes[o]! | (bytes[o + 1]! << 8) | (bytes[o + 2]! << 16) | (bytes[o + 3]! << 24)) >>> 0;
        const s = out[p + i]! + v + carry;
        out[q + i] = s >>> 0;
        carry = s > 0xffffffff ? 1 : 0;
      }
    }
    return;
  }
  const w = new Uint32Array(bytes.buffer, bytes.byteOffset + off, n * 8);
  for (let j = 0; j < n; j++) {
    const p = j * 8;
    const q = p + 8;
    let carry = 0;
    for (let i = 0; i < 8; i++) {
      const s = out[p + i]! + w[p + i]! + carry;
      out[q + i] = s >>> 0;
      carry = s > 0xffffffff ? 1 : 0;
    }
  }
}
