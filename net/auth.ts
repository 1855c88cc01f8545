/**
 * Proof of identity: a peer or HTTP client signs a fresh server challenge
 * with its Ed25519 key. Challenges are single use and expire; a proven HTTP
 * client gets a short-lived bearer token.
 *
 * HTTP challenges (`challenge(addr, …)`) live in their own table, counted
 * per remote address: an address past its share is refused
 * (`RATE_LIMITED`), and a full table drops expired challenges, never a
 * pending one (`OVERLOADED`), so a flood cannot evict an honest client's
 * challenge.
 *
 * The signed message (`storage/auth_message.ts`, shared with the client) is the deterministic CBOR of
 * `["xf-auth-v1", purpose, challenge, signer key, verifier key]`, so a
 * signature made for one purpose or one server is useless for another.
 *
 * @module
 */

import { toHex } from "../core/bytes.ts";
import { type KeyPair, verify } from "../storage/ed25519.ts";
import { authMessage, type AuthPurpose } from "../storage/auth_message.ts";
import { XfError } from "../core/errors.ts";
import { CHALLENGE_TTL_MS, CHALLENGES_MAX, TOKEN_TTL_MS, TOKENS_MAX } from "../core/limits.ts";

/** Bounds of the HTTP challenge table (see {@linkcode Authenticator.challenge}). */
export interface ChallengeOptions {
  /** Pending challenges one remote address may hold; past it, `RATE_LIMITED`. */
  perAddrMax: number;
  /** Pending HTTP challenges in all; past it (after dropping expired ones), `OVERLOADED`. */
  max?: number;
}

/** Issues challenges, checks answers, and keeps HTTP tokens. */
export class Authenticator {
  private challenges = new Map<string, number>();
  /** HTTP challenges: expiry and remote address, in issue order (so in expiry order). */
  private httpChallenges = new Map<string, { expires: number; addr: string }>();
  private httpPerAddr = new Map<string, number>();
  private tokens = new Map<string, { key: Uint8Array; expires: number }>();

  constructor(readonly key: KeyPair, private readonly now: () => number = Date.now) {}

  /**
   * A fresh 32-byte challenge, valid for {@linkcode CHALLENGE_TTL_MS}.
   *
   * Without `addr`: a peer challenge (sync, DHT), the oldest dropped past
   * {@linkcode CHALLENGES_MAX}. With `addr` (the caller's socket address): an
   * HTTP challenge in its own table; throws `RATE_LIMITED` when `addr`
   * already holds `perAddrMax` pending ones and `OVERLOADED` when the table
   * holds `max` unexpired ones.
   *
   * @example
   * ```ts
   * import { assert } from "@std/assert";
   * import { generateKeyPair } from "../storage/ed25519.ts";
   * import { Authenticator } from "./auth.ts";
   * const auth = new Authenticator(await generateKeyPair());
   * const { challenge } = auth.challenge("192.0.2.1", { perAddrMax: 64 });
   * assert(challenge.length === 32);
   * ```
   */
  challenge(addr?: string, options?: ChallengeOptions): { challenge: Uint8Array; expires: number } {
    const challenge = crypto.getRandomValues(new Uint8Array(32));
    const now = this.now();
    const expires = now + CHALLENGE_TTL_MS;
    if (addr === undefined) {
      if (this.challenges.size >= CHALLENGES_MAX) this.challenges.delete(this.challenges.keys().next().value!);
      this.challenges.set(toHex(challenge), expires);
      return { challenge, expires };
    }
    // Issue order is expiry order: drop expired ones from the front.
    for (const [hex, c] of this.httpChallenges) {
      if (c.expires >= now) break;
      this.dropHttp(hex, c.addr);
    }
    const perAddrMax = options?.perAddrMax ?? CHALLENGES_MAX;
    const held = this.httpPerAddr.get(addr) ?? 0;
    if (held >= perAddrMax) {
      throw new XfError("RATE_LIMITED", `Cannot issue a challenge: ${held} are pending for this address`);
    }
    const max = options?.max ?? CHALLENGES_MAX;
    if (this.httpChallenges.size >= max) {
      throw new XfError("OVERLOADED", `Cannot issue a challenge: ${this.httpChallenges.size} are pending`);
    }
    this.httpChallenges.set(toHex(challenge), { expires, addr });
    this.httpPerAddr.set(addr, held + 1);
    return { challenge, expires };
  }

  private dropHttp(hex: string, addr: string): void {
    this.httpChallenges.delete(hex);
    const n = (this.httpPerAddr.get(addr) ?? 1) - 1;
    if (n > 0) this.httpPerAddr.set(addr, n);
    else this.httpPerAddr.delete(addr);
  }

  /**
   * Check an answer; the challenge is used up either way. Throws
   * `CHALLENGE_REPLAYED` (unknown or used), `CHALLENGE_EXPIRED` or `BAD_AUTH`.
   */
  async check(purpose: AuthPurpose, challenge: Uint8Array, signer: Uint8Array, sig: Uint8Array): Promise<void> {
    const hex = toHex(challenge);
    const http = this.httpChallenges.get(hex);
    const expires = http?.expires ?? this.challenges.get(hex);
    if (expires === undefined) {
      throw new XfError(
        "CHALLENGE_REPLAYED",
        `Cannot accept proof: challenge "${hex.slice(0, 16)}…" is unknown or already used`,
      );
    }
    if (http) this.dropHttp(hex, http.addr);
    else this.challenges.delete(hex);
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
    return this.tokenInfo(token)?.key ?? null;
  }

  /** The key a bearer token stands for and when it expires, or null if it is unknown or expired. */
  tokenInfo(token: string): { key: Uint8Array; expires: number } | null {
    const t = this.tokens.get(token);
    if (!t) return null;
    if (this.now() > t.expires) {
      this.tokens.delete(token);
      return null;
    }
    return t;
  }
}
