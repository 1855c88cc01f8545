/**
 * Keys: generate, and import or export as a hex seed or as an Ed25519 JWK
 * (`{kty: "OKP", crv: "Ed25519", d: seed, x: public key}`, base64url). The
 * key pair itself is the node's (`storage/ed25519.ts`, WebCrypto).
 *
 * @module
 */

import { fromHex, toHex } from "../core/bytes.ts";
import { generateKeyPair, type KeyPair, keyPairFromSeed } from "../storage/ed25519.ts";

export { fromHex, generateKeyPair, type KeyPair, keyPairFromSeed, toHex };

/** An Ed25519 private key as a JSON Web Key (RFC 8037). */
export interface Ed25519Jwk {
  kty: "OKP";
  crv: "Ed25519";
  /** The 32-byte seed, base64url. */
  d: string;
  /** The 32-byte public key, base64url. */
  x: string;
}

/**
 * The key's 32-byte seed as 64 hex digits (a secret: store it like a password).
 *
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { exportSeedHex, generateKeyPair, keyPairFromHex } from "./keys.ts";
 * const kp = await generateKeyPair();
 * assertEquals((await keyPairFromHex(exportSeedHex(kp))).publicKey, kp.publicKey);
 * ```
 */
export function exportSeedHex(key: KeyPair): string {
  return toHex(key.seed);
}

/** The key pair of a 64-hex-digit seed; throws `TypeError` for anything else. */
export function keyPairFromHex(seedHex: string): Promise<KeyPair> {
  const seed = /^[0-9a-fA-F]{64}$/.test(seedHex) ? fromHex(seedHex) : null;
  if (!seed) throw new TypeError(`Cannot import key "${seedHex.slice(0, 8)}…": expected 64 hex digits`);
  return keyPairFromSeed(seed);
}

/**
 * The key as an Ed25519 private JWK (`d` is the seed, `x` the public key).
 *
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { exportJwk, generateKeyPair, keyPairFromJwk } from "./keys.ts";
 * const kp = await generateKeyPair();
 * const jwk = exportJwk(kp);
 * assertEquals(jwk.kty, "OKP");
 * assertEquals((await keyPairFromJwk(jwk)).seed, kp.seed);
 * ```
 */
export function exportJwk(key: KeyPair): Ed25519Jwk {
  return { kty: "OKP", crv: "Ed25519", d: toBase64Url(key.seed), x: toBase64Url(key.publicKey) };
}

/**
 * The key pair of an Ed25519 private JWK. Throws `TypeError` when it is not
 * one, or when its `x` is not the public key of its `d`.
 */
export async function keyPairFromJwk(jwk: JsonWebKey | Ed25519Jwk): Promise<KeyPair> {
  if (jwk.kty !== "OKP" || jwk.crv !== "Ed25519" || typeof jwk.d !== "string") {
    throw new TypeError(`Cannot import JWK: expected an Ed25519 private key (kty "OKP", crv "Ed25519", d)`);
  }
  const seed = fromBase64Url(jwk.d);
  if (!seed || seed.length !== 32) throw new TypeError("Cannot import JWK: d is not 32 bytes of base64url");
  const kp = await keyPairFromSeed(seed);
  if (jwk.x !== undefined && jwk.x !== toBase64Url(kp.publicKey)) {
    throw new TypeError("Cannot import JWK: x is not the public key of d");
  }
  return kp;
}

/** Base64url without padding. */
export function toBase64Url(b: Uint8Array): string {
  let s = "";
  for (let i = 0; i < b.length; i++) s += String.fromCharCode(b[i]!);
  return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** Bytes of base64url (padding optional), or null. */
export function fromBase64Url(s: string): Uint8Array | null {
  if (!/^[A-Za-z0-9_-]*={0,2}$/.test(s)) return null;
  try {
    const t = s.replace(/=+$/, "").replace(/-/g, "+").replace(/_/g, "/");
    const b = atob(t + "===".slice((t.length + 3) % 4));
    return Uint8Array.from(b, (c) => c.charCodeAt(0));
  } catch {
    return null;
  }
}
