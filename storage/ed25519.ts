/**
 * Ed25519 keys, signatures and verification over WebCrypto.
 *
 * A key pair is kept as its 32-byte seed and 32-byte public key, so it can be
 * saved to a file and shown as hex. Imported verification keys are cached
 * (bounded) because importing costs about as much as a verify.
 *
 * @module
 */

import { toHex } from "../core/bytes.ts";
import { VERIFY_KEY_CACHE_MAX } from "../core/limits.ts";

/** An Ed25519 identity: 32-byte seed (secret) and 32-byte public key. */
export interface KeyPair {
  seed: Uint8Array;
  publicKey: Uint8Array;
  /** The imported private key, for signing. */
  privateKey: CryptoKey;
}

const PKCS8_PREFIX = new Uint8Array([
  0x30,
  0x2e,
  0x02,
  0x01,
  0x00,
  0x30,
  0x05,
  0x06,
  0x03,
  0x2b,
  0x65,
  0x70,
  0x04,
  0x22,
  0x04,
  0x20,
]);

/**
 * The key pair for a 32-byte seed.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { keyPairFromSeed } from "./ed25519.ts";
 * const kp = await keyPairFromSeed(new Uint8Array(32));
 * assert(kp.publicKey.length === 32);
 * ```
 */
export async function keyPairFromSeed(seed: Uint8Array): Promise<KeyPair> {
  if (seed.length !== 32) throw new TypeError(`Cannot make key pair: seed is ${seed.length} bytes, not 32`);
  const pkcs8 = new Uint8Array(48);
  pkcs8.set(PKCS8_PREFIX);
  pkcs8.set(seed, 16);
  const privateKey = await crypto.subtle.importKey("pkcs8", pkcs8, { name: "Ed25519" }, true, ["sign"]);
  const jwk = await crypto.subtle.exportKey("jwk", privateKey);
  const publicKey = fromBase64Url(jwk.x!);
  return { seed: seed.slice(), publicKey, privateKey };
}

/** A fresh random key pair. */
export function generateKeyPair(): Promise<KeyPair> {
  return keyPairFromSeed(crypto.getRandomValues(new Uint8Array(32)));
}

/** Sign `message` with the key pair; 64 bytes. */
export async function sign(key: KeyPair, message: Uint8Array): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.sign("Ed25519", key.privateKey, message as BufferSource));
}

const verifyKeys = new Map<string, CryptoKey>();

async function verifyKey(publicKey: Uint8Array): Promise<CryptoKey> {
  const hex = toHex(publicKey);
  const hit = verifyKeys.get(hex);
  if (hit) {
    verifyKeys.delete(hex);
    verifyKeys.set(hex, hit);
    return hit;
  }
  const key = await crypto.subtle.importKey("raw", publicKey as BufferSource, { name: "Ed25519" }, false, ["verify"]);
  if (verifyKeys.size >= VERIFY_KEY_CACHE_MAX) verifyKeys.delete(verifyKeys.keys().next().value!);
  verifyKeys.set(hex, key);
  return key;
}

/** True when `sig` is a valid Ed25519 signature of `message` by `publicKey`. */
export async function verify(publicKey: Uint8Array, sig: Uint8Array, message: Uint8Array): Promise<boolean> {
  if (publicKey.length !== 32 || sig.length !== 64) return false;
  try {
    return await crypto.subtle.verify(
      "Ed25519",
      await verifyKey(publicKey),
      sig as BufferSource,
      message as BufferSource,
    );
  } catch {
    return false; // a public key that is not a curve point
  }
}

/**
 * Signing and verifying as a component takes them: {@linkcode webCryptoEd25519} by default. A simulation passes
 * one whose promises settle on microtasks alone (WebCrypto's may settle after other tasks), so that a run's
 * interleaving depends on its seed only.
 */
export interface Ed25519 {
  sign(key: KeyPair, message: Uint8Array): Promise<Uint8Array>;
  verify(publicKey: Uint8Array, sig: Uint8Array, message: Uint8Array): Promise<boolean>;
}

/**
 * {@linkcode sign} and {@linkcode verify}: WebCrypto.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { generateKeyPair, webCryptoEd25519 } from "./ed25519.ts";
 * const kp = await generateKeyPair();
 * const m = new Uint8Array([1, 2, 3]);
 * assert(await webCryptoEd25519.verify(kp.publicKey, await webCryptoEd25519.sign(kp, m), m));
 * ```
 */
export const webCryptoEd25519: Ed25519 = Object.freeze({ sign, verify });

function fromBase64Url(s: string): Uint8Array {
  const b = atob(s.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((s.length + 3) % 4));
  return Uint8Array.from(b, (c) => c.charCodeAt(0));
}
