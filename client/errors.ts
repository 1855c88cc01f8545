/**
 * The one error class of the client: the node's stable upper-case code (or
 * `NETWORK` / `BAD_RESPONSE` for failures on the client's side) and the HTTP
 * status (0 when there was no answer).
 *
 * @module
 */

import type { ErrorCode } from "../core/errors.ts";

/** A code an {@linkcode XfClientError} carries: the node's, or one of the client's own. */
export type ClientErrorCode = ErrorCode | "NETWORK" | "BAD_RESPONSE";

/**
 * An error from the client: a node's `{error, message}` answer, a request
 * that got no answer (`NETWORK`), or an answer the client cannot use
 * (`BAD_RESPONSE`).
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { XfClientError } from "./errors.ts";
 * const e = new XfClientError("UNKNOWN_GROUP", "Group \"ab…\" is not known to this node", 404);
 * assert(e instanceof Error && e.code === "UNKNOWN_GROUP" && e.status === 404);
 * ```
 */
export class XfClientError extends Error {
  /** The stable code, e.g. `"BAD_SIGNATURE"`, `"NETWORK"`. */
  readonly code: ClientErrorCode;
  /** The HTTP status of the answer; 0 when there was none. */
  readonly status: number;

  /** Make an error with a code and the status it came with. */
  constructor(code: ClientErrorCode, message: string, status = 0, options?: ErrorOptions) {
    super(message, options);
    this.name = "XfClientError";
    this.code = code;
    this.status = status;
  }
}

/** An {@linkcode XfClientError} for anything thrown: kept as is, or wrapped with `code`. */
export function asClientError(e: unknown, code: ClientErrorCode, what: string): XfClientError {
  if (e instanceof XfClientError) return e;
  const m = e instanceof Error ? e.message : String(e);
  return new XfClientError(code, `${what}: ${m}`, 0, { cause: e });
}
