/**
 * Xaeroflux: a storage, indexing and sync engine for cloudless,
 * peer-to-peer social apps. Open a node in-process, publish signed events,
 * query them, subscribe to new ones, check Merkle proofs.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { createGroup, generateKeyPair, openNode, signEvent, toHex } from "./mod.ts";
 *
 * const node = await openNode({ dataDir: await Deno.makeTempDir(), workers: false });
 * try {
 *   const me = await generateKeyPair();
 *   const { gid, manifest } = await createGroup(me, { name: "friends", policy: 0 });
 *   await node.publish(manifest);
 *   const hello = await signEvent(me, {
 *     group: gid, ts: Date.now(), kind: 16, tags: [], payload: new TextEncoder().encode("hello"),
 *   });
 *   const [result] = await node.publish(hello);
 *   assert(result!.status === "stored");
 *   const page = await node.query({ gid: toHex(gid), limit: 10 });
 *   assert(page!.events.length === 2);
 * } finally {
 *   await node.close();
 * }
 * ```
 *
 * @module
 */

export { type NodeOptions, openNode, XfNode } from "./node.ts";
export type { EventResult } from "./actors/batch.ts";
export type { SubscriptionFilter } from "./actors/advertise.ts";
export type { EventQuery } from "./actors/index.ts";
export { LIMITS, type Limits, limitsWith } from "./core/limits.ts";
export {
  APP_KIND_MIN,
  createGroup,
  decodeEvent,
  encodeEvent,
  type Event,
  eventId,
  groupIdOf,
  KIND_MANIFEST,
  KIND_MEMBERSHIP,
  POLICY_CLOSED,
  POLICY_OPEN,
  signEvent,
  type StoredEvent,
  type UnsignedEvent,
  verifyEvent,
} from "./storage/event.ts";
export { generateKeyPair, type KeyPair, keyPairFromSeed } from "./storage/ed25519.ts";
export { fromHex, toHex } from "./core/bytes.ts";
export { type ErrorCode, XfError } from "./core/errors.ts";
export { verifyProof } from "./merkle/mod.ts";
export { serve, type Served } from "./net/server.ts";
export { configureLogging, getLogger, type LoggingOptions, resetLogging } from "./actors/log.ts";
export { type NodeLoggingOptions, startNodeLogging } from "./actors/node_log.ts";
export type { PeerInfo, SyncCounters } from "./net/peers.ts";
export type { SessionStats, SyncOptions, SyncRange, SyncReport } from "./net/sync.ts";
export {
  ACTION_ADD,
  ACTION_MAKE_ADMIN,
  ACTION_REMOVE,
  ACTION_REVOKE_ADMIN,
  encodeMembership,
  type Membership,
} from "./storage/membership.ts";
