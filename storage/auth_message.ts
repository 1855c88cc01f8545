/**
 * The message a peer or HTTP client signs to prove its identity: the
 * deterministic CBOR of `["xf-auth-v1", purpose, challenge, signer key,
 * verifier key]`, so a signature made for one purpose or one server is
 * useless for another. The node checks answers (`net/auth.ts`); the client
 * and peers make them. Pure: no Deno API.
 *
 * @module
 */

import { encodeCbor } from "./cbor.ts";
import { type KeyPair, sign } from "./ed25519.ts";

/** What an auth signature is for. */
export type AuthPurpose = "sync" | "http" | "dht";

/** The bytes signed to answer a challenge. */
export function authMessage(
  purpose: AuthPurpose,
  challenge: Uint8Array,
  signer: Uint8Array,
  verifier: Uint8Array,
): Uint8Array {
  return encodeCbor(["xf-auth-v1", purpose, challenge, signer, verifier]);
}

/** Answer a challenge: sign it for `verifier` with our key. */
export function answerChallenge(
  key: KeyPair,
  purpose: AuthPurpose,
  challenge: Uint8Array,
  verifier: Uint8Array,
): Promise<Uint8Array> {
  return sign(key, authMessage(purpose, challenge, key.publicKey, verifier));
}
