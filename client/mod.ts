/**
 * The Xaeroflux client: what an app that is not a node (a browser tab, a
 * script) uses to talk to a node. Web APIs only (`fetch`, `WebSocket`,
 * WebCrypto), so the same code runs in browsers and Deno; `deno task build`
 * bundles it as `dist/xaeroflux-client.js`.
 *
 * Keys, event encoding and signing, membership payloads and proof checking
 * are the node's own pure modules, re-exported here.
 *
 * The replica (a device as a peer: `openReplica`, its store over IndexedDB,
 * the sync session) is not in here, so an app that only talks to a node
 * loads a small bundle: `client/replica_mod.ts` is this module plus the
 * replica, bundled as `dist/xaeroflux-replica.js`.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { generateKeyPair, readText, signEvent, textPayload } from "./mod.ts";
 * const me = await generateKeyPair();
 * const e = await signEvent(me, "00".repeat(32), { kind: 16, payload: textPayload("hello") });
 * assert(readText(e.payload) === "hello" && e.author.length === 64);
 * ```
 *
 * @module
 */

export {
  type AuthMode,
  type ClientOptions,
  type CreatedGroup,
  type ExportOptions,
  type GroupInfo,
  IMPORT_HEAD_EVENTS_MAX,
  IMPORT_RETRIES_MAX,
  IMPORT_SETTLE_MS_MAX,
  type ImportCounts,
  type Members,
  type MerkleInfo,
  PUBLISH_BATCH_EVENTS_MAX,
  PUBLISH_BODY_BYTES_MAX,
  type QueryFilter,
  type QueryPage,
  type Role,
  type Sent,
  type Token,
  TOKEN_REFRESH_MS,
  XfClient,
} from "./client.ts";
export { type PublishResult, type SubscribeOptions, type Subscription, type Transport } from "./subscribe.ts";
export {
  EXPORT_ITEM_BYTES_MAX,
  type ExportHeader,
  type ExportItem,
  readExport,
  readExportHeader,
  splitCborSeq,
} from "./export.ts";
export { asClientError, type ClientErrorCode, XfClientError } from "./errors.ts";
export { cborArrayOf } from "../storage/cbor.ts";
export {
  type ClientEvent,
  eventCursor,
  type EventDraft,
  eventFromJson,
  type EventJson,
  fromStored,
  groupBytes,
  groupHex,
  readEvent,
  signEvent,
  type Tag,
} from "./event.ts";
export {
  type Ed25519Jwk,
  exportJwk,
  exportSeedHex,
  fromBase64Url,
  fromHex,
  generateKeyPair,
  type KeyPair,
  keyPairFromHex,
  keyPairFromJwk,
  keyPairFromSeed,
  toBase64Url,
  toHex,
} from "./keys.ts";
export { bytesPayload, jsonPayload, readJson, readText, textPayload } from "./payload.ts";
export { readSse, type SseMessage } from "./sse.ts";
export { createGroup } from "../storage/event.ts";
export { checkProof, verifyProof } from "../merkle/proof.ts";
export { type ErrorCode } from "../core/errors.ts";
export {
  ACTION_ADD,
  ACTION_MAKE_ADMIN,
  ACTION_REMOVE,
  ACTION_REVOKE_ADMIN,
  decodeMembership,
  encodeMembership,
  type Membership,
} from "../storage/membership.ts";
export {
  APP_KIND_MIN,
  KIND_MANIFEST,
  KIND_MEMBERSHIP,
  KIND_SETTINGS,
  KIND_TOMBSTONE,
  POLICY_CLOSED,
  POLICY_OPEN,
} from "../storage/event.ts";
export { decodeTombstone, encodeTombstone } from "../storage/deletion.ts";
export { decodeSettings, encodeSettings, type Settings } from "../storage/retention.ts";
