/**
 * The CBOR frames of the sync and DHT protocols: deterministic CBOR maps
 * `{t: type, …}`, bounded in size, decoded strictly.
 *
 * @module
 */

import { type CborValue, decodeCbor, encodeCbor } from "../storage/cbor.ts";
import { XfError } from "../core/errors.ts";

/** A decoded frame. */
export type Frame = Map<string, unknown>;

/** Encode a frame of type `t` (undefined fields are left out). */
export function encodeFrame(t: string, fields: Record<string, unknown> = {}): Uint8Array {
  const m = new Map<string, CborValue>([["t", t]]);
  for (const [k, v] of Object.entries(fields)) if (v !== undefined) m.set(k, v as CborValue);
  return encodeCbor(m);
}

/**
 * Decode a frame of at most `max` bytes; throws `FRAME_TOO_LARGE`, or
 * `BAD_FRAME` for anything but a deterministic CBOR map with a text `t`.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { decodeFrame, encodeFrame } from "./frames.ts";
 * assert(decodeFrame(encodeFrame("ping", { n: 1 }), 1024).get("n") === 1);
 * ```
 */
export function decodeFrame(bytes: Uint8Array, max: number, what = "frame"): Frame {
  if (bytes.length > max) {
    throw new XfError("FRAME_TOO_LARGE", `${what} of ${bytes.length} bytes is over the limit ${max}`);
  }
  let v: unknown;
  try {
    v = decodeCbor(bytes);
  } catch (e) {
    throw new XfError("BAD_FRAME", `Cannot decode ${what}: ${(e as Error).message}`);
  }
  if (!(v instanceof Map) || typeof v.get("t") !== "string") {
    throw new XfError("BAD_FRAME", `Cannot decode ${what}: not a CBOR map with a type`);
  }
  return v as Frame;
}

/** A field of a frame, checked; throws `BAD_FRAME` naming it. */
export function field<T>(f: Frame, name: string, check: (v: unknown) => boolean, what: string): T {
  const v = f.get(name);
  if (!check(v)) throw new XfError("BAD_FRAME", `Frame "${String(f.get("t"))}" needs ${name} as ${what}`);
  return v as T;
}

/** A checker for byte strings (of length `n`, if given). */
export const isBytes = (n?: number) => (v: unknown): boolean =>
  v instanceof Uint8Array && (n === undefined || v.length === n);

/** A checker for non-negative safe integers. */
export const isUint = (v: unknown): boolean => typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
