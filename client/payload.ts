/**
 * Payload helpers: text, JSON and bytes to a `Uint8Array` and back.
 *
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { jsonPayload, readJson, readText, textPayload } from "./payload.ts";
 * assertEquals(readText(textPayload("héllo")), "héllo");
 * assertEquals(readJson(jsonPayload({ a: [1, 2] })), { a: [1, 2] });
 * ```
 *
 * @module
 */

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

/** UTF-8 bytes of a string. */
export function textPayload(text: string): Uint8Array {
  return encoder.encode(text);
}

/** UTF-8 bytes of a value's JSON. */
export function jsonPayload(value: unknown): Uint8Array {
  return encoder.encode(JSON.stringify(value));
}

/** A copy of bytes given as a `Uint8Array`, another typed array, a `DataView` or an `ArrayBuffer`. */
export function bytesPayload(data: ArrayBuffer | ArrayBufferView): Uint8Array {
  if (data instanceof ArrayBuffer) return new Uint8Array(data.slice(0));
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength).slice();
}

/** The string a UTF-8 payload holds; throws `TypeError` on invalid UTF-8. */
export function readText(payload: Uint8Array): string {
  return decoder.decode(payload);
}

/** The value a JSON payload holds; throws on invalid UTF-8 or JSON. */
export function readJson<T = unknown>(payload: Uint8Array): T {
  return JSON.parse(decoder.decode(payload)) as T;
}
