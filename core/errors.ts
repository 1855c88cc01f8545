/**
 * Stable error codes and the one error class that carries them.
 *
 * Every operating error in Xaeroflux has an upper-case `code` that HTTP
 * clients, peers and library users can match on. Errors cross Worker
 * boundaries as plain `{ name, code, message }` objects and are rebuilt with
 * {@linkcode fromWire}.
 *
 * @module
 */

/** Every stable error code, with the HTTP status it maps to. */
export const ERROR_STATUS = {
  // Input errors (4xx): the request or event is wrong; nothing was stored.
  EMPTY_BODY: 400,
  BAD_CBOR: 400,
  NOT_DETERMINISTIC: 400,
  BAD_EVENT: 400,
  BAD_SIGNATURE: 400,
  BAD_MANIFEST: 400,
  BAD_GROUP_ID: 400,
  BAD_EVENT_ID: 400,
  BAD_QUERY: 400,
  BAD_PROOF: 400,
  GROUP_MISMATCH: 400,
  TS_IN_FUTURE: 400,
  RESERVED_KIND: 400,
  DELETED: 410,
  EVENT_TOO_LARGE: 413,
  BODY_TOO_LARGE: 413,
  BATCH_TOO_LARGE: 413,
  UNSUPPORTED_MEDIA_TYPE: 415,
  UNKNOWN_GROUP: 404,
  NOT_FOUND: 404,
  UNAUTHORIZED: 401,
  BAD_AUTH: 401,
  CHALLENGE_EXPIRED: 401,
  CHALLENGE_REPLAYED: 401,
  FORBIDDEN: 403,
  BAD_FRAME: 400,
  FRAME_TOO_LARGE: 413,
  CREDIT_EXCEEDED: 429,
  NOT_SUBSCRIBED: 400,
  UNSOLICITED: 400,
  UNSUPPORTED_VERSION: 400,
  PEER_TOO_SLOW: 503,
  RATE_LIMITED: 429,
  BAD_RECORD: 400,
  UNSIGNED: 400,
  NOT_SIGNER: 403,
  EXPIRED: 410,
  TTL_TOO_LONG: 400,
  STALE: 409,
  GROUP_FULL: 507,
  ADDR_FULL: 429,
  TOO_MANY_GROUPS: 507,
  // Operating errors (5xx): the node could not do it now.
  OVERLOADED: 503,
  TIMEOUT: 504,
  PEER_UNREACHABLE: 502,
  STAGE_DOWN: 503,
  SHUTTING_DOWN: 503,
  WAL_CORRUPTION: 500,
  STORAGE_CORRUPTION: 500,
  STORAGE_ERROR: 500,
  STORAGE_FULL: 507,
  DATA_FORMAT_TOO_NEW: 500,
  INTERNAL: 500,
} as const;

/** A stable upper-case error code. */
export type ErrorCode = keyof typeof ERROR_STATUS;

/** An error with a stable {@linkcode ErrorCode}. */
export class XfError extends Error {
  /** The stable code, e.g. `"BAD_SIGNATURE"`. */
  readonly code: ErrorCode;
  /**
   * Make an error with a stable code.
   *
   * @example
   * ```ts
   * import { assert } from "@std/assert";
   * import { XfError } from "./errors.ts";
   * const e = new XfError("BAD_CBOR", "Cannot decode event: truncated at byte 3");
   * assert(e.code === "BAD_CBOR");
   * ```
   */
  constructor(code: ErrorCode, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "XfError";
    this.code = code;
  }
}

/** The plain-data form of an error, as it crosses a Worker boundary. */
export interface WireError {
  name: string;
  code: ErrorCode;
  message: string;
}

/** Whether an error (of any shape) says the disk is full: ENOSPC, "No space left on device", os error 28. */
export function isDiskFull(e: unknown): boolean {
  for (let x: unknown = e, i = 0; x && i < 4; x = (x as { cause?: unknown }).cause, i++) {
    const m = `${(x as { code?: string }).code ?? ""} ${(x as Error).message ?? x}`;
    if (/ENOSPC|No space left|os error 28|STORAGE_FULL/i.test(m)) return true;
  }
  return false;
}

/** The HTTP status for a code. */
export function statusOf(code: ErrorCode): number {
  return ERROR_STATUS[code] ?? 500;
}

/** Turn any thrown value into plain data that `postMessage` can carry. */
export function toWire(e: unknown): WireError {
  if (e instanceof XfError) return { name: e.name, code: e.code, message: e.message };
  const err = e instanceof Error ? e : new Error(String(e));
  return { name: err.name, code: "INTERNAL", message: err.message };
}

/** Rebuild an error that crossed a Worker boundary. */
export function fromWire(w: WireError): XfError {
  return new XfError(w.code in ERROR_STATUS ? w.code : "INTERNAL", w.message);
}
