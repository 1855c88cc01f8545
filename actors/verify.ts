/**
 * Ed25519 verification for the decode stage, with node:crypto (about twice
 * WebCrypto's rate per thread in Deno, measured: 24–27k/s against 10–12k/s)
 * and a bounded cache of imported public keys. `verify_worker.ts` runs the
 * same function in a helper Worker, so a large batch is verified on both
 * cores.
 *
 * @module
 */

import { createPublicKey, type KeyObject, verify } from "node:crypto";
import { Buffer } from "node:buffer";
import { VERIFY_KEY_CACHE_MAX } from "../core/limits.ts";

const SPKI_PREFIX = Buffer.from("302a300506032b6570032100", "hex");
const keys = new Map<string, KeyObject>();

function keyOf(author: Uint8Array): KeyObject {
  const hex = Buffer.from(author).toString("hex");
  let k = keys.get(hex);
  if (!k) {
    k = createPublicKey({ key: Buffer.concat([SPKI_PREFIX, author]), format: "der", type: "spki" });
    if (keys.size >= VERIFY_KEY_CACHE_MAX) keys.delete(keys.keys().next().value!);
    keys.set(hex, k);
  }
  return k;
}

/** One signature to check: the author's key, the signature, the signed bytes. */
export interface SigCheck {
  author: Uint8Array;
  sig: Uint8Array;
  signed: Uint8Array;
}

/** Verify each; a malformed key or signature is simply false. */
export function verifyAll(checks: readonly SigCheck[]): boolean[] {
  return checks.map((c) => {
    try {
      return c.sig.length === 64 && c.author.length === 32 && verify(null, c.signed, keyOf(c.author), c.sig);
    } catch {
      return false;
    }
  });
}
