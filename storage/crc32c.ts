/**
 * CRC-32C (Castagnoli), slicing-by-8: the checksum of every WAL record.
 * Pure: no Deno API.
 *
 * @module
 */

const CRC_TABLE = makeCrcTable();

function makeCrcTable(): Uint32Array {
  // Slicing-by-8: table k maps a byte to its CRC contribution k bytes later.
  const t = new Uint32Array(8 * 256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    t[i] = c >>> 0;
  }
  for (let i = 0; i < 256; i++) {
    let c = t[i]!;
    for (let k = 1; k < 8; k++) {
      c = t[c & 0xff]! ^ (c >>> 8);
      t[k * 256 + i] = c >>> 0;
    }
  }
  return t;
}

/**
 * The CRC-32C (Castagnoli) checksum of `bytes`, as an unsigned 32-bit number.
 * Pass a previous result as `crc` to continue a checksum over more bytes.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { crc32c } from "./crc32c.ts";
 * assert(crc32c(new TextEncoder().encode("123456789")) === 0xe3069283);
 * ```
 */
export function crc32c(bytes: Uint8Array, crc = 0): number {
  const t = CRC_TABLE;
  let c = ~crc >>> 0;
  let i = 0;
  const n = bytes.length;
  while (n - i >= 8) {
    const a = c ^
      (bytes[i]! | (bytes[i + 1]! << 8) | (bytes[i + 2]! << 16) |
        (bytes[i + 3]! << 24));
    c = t[1792 + (a & 0xff)]! ^ t[1536 + ((a >>> 8) & 0xff)]! ^
      t[1280 + ((a >>> 16) & 0xff)]! ^
      t[1024 + (a >>> 24)]! ^ t[768 + bytes[i + 4]!]! ^
      t[512 + bytes[i + 5]!]! ^
      t[256 + bytes[i + 6]!]! ^ t[bytes[i + 7]!]!;
    i += 8;
  }
  while (i < n) c = t[(c ^ bytes[i++]!) & 0xff]! ^ (c >>> 8);
  return ~c >>> 0;
}
