/**
 * Proof of identity: a peer or HTTP client signs a fresh server challenge
 * with its Ed25519 key. Challenges are single use and expire; a proven HTTP
 * client gets a short-lived bearer token.
 *
 * The signed message is the deterministic CBOR of
 * `["xf-auth-v1", purpose, challenge, signer key, verifier key]`, so a
 * signature made for one purpose or one server is useless for another.
 *
 * @module
 */

import { encodeCbor } from "../storage/cbor.ts";
import { type KeyPair, sign, toHex, verify } from "../storage/ed25519.ts";
import { XfError } from "../storage/errors.ts";

/** How long a challenge may be answered. */
export const CHALLENGE_TTL_MS = 30_000;
/** Challenges outstanding at once (oldest dropped past this). */
export const CHALLENGES_MAX = 10_000;
/** How long an HTTP bearer token is valid. */
export const TOKEN_TTL_MS = 10 * 60_000;
/** Tokens held at once (oldest dropped past this). */
export const TOKENS_MAX = 10_000;

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

/** Issues challenges, checks answers, and keeps HTTP tokens. */
export class Authenticator {
  private challenges = new Map<string, number>();
  private tokens = new Map<string, { key: Uint8Array; expires: number }>();

  constructor(readonly key: KeyPair, private readonly now: () => number = Date.now) {}

  /** A fresh 32-byte challenge, valid for {@linkcode CHALLENGE_TTL_MS}. */
  challenge(): { challenge: Uint8Array; expires: number } {
    const challenge = crypto.getRandomValues(new Uint8Array(32));
    const expires = this.now() + CHALLENGE_TTL_MS;
    if (this.challenges.size >= CHALLENGES_MAX) this.challenges.delete(this.challenges.keys().next().value!);
    this.challenges.set(toHex(challenge), expires);
    return { challenge, expires };
  }

  /**
   * Check an answer; the challenge is used up either way. Throws
   * `CHALLENGE_REPLAYED` (unknown or used), `CHALLENGE_EXPIRED` or `BAD_AUTH`.
   */
  async check(purpose: AuthPurpose, challenge: Uint8Array, signer: Uint8Array, sig: Uint8Array): Promise<void> {
    const hex = toHex(challenge);
    const expires = this.challenges.get(hex);
    if (expires === undefined) {
      throw new XfError(
        "CHALLENGE_REPLAYED",
        `Cannot accept proof: challenge "${hex.slice(0, 16)}…" is unknown or already used`,
      );
    }
    this.challenges.delete(hex);
    if (this.now() > expires) throw new XfError("CHALLENGE_EXPIRED", "Cannot accept proof: the challenge expired");
    if (
      signer.length !== 32 || !(await verify(signer, sig, authMessage(purpose, challenge, signer, this.key.publicKey)))
    ) {
      throw new XfError("BAD_AUTH", "Cannot accept proof: the signature does not verify for that key");
    }
  }

  /** Issue a bearer token for a proven key. */
  token(key: Uint8Array): { token: string; expires: number } {
    const token = toHex(crypto.getRandomValues(new Uint8Array(32)));
    const expires = this.now() + TOKEN_TTL_MS;
    if (this.tokens.size >= TOKENS_MAX) this.tokens.delete(this.tokens.keys().next().value!);
    this.tokens.set(token, { key, expires });
    return { token, expires };
  }

  /** The key a bearer token stands for, or null if it is unknown or expired. */
  tokenKey(token: string): Uint8Array | null {
    const t = this.tokens.get(token);
    if (!t) return null;
    if (this.now() > t.expires) {
      this.tokens.delete(token);
      return null;
    }
    return t.key;
  }
}
