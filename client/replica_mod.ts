/**
 * The client with the replica: everything `client/mod.ts` exports, plus
 * {@linkcode openReplica} (the device as a peer, `client/replica.ts`), its
 * store and the IndexedDB {@linkcode Kv}. `deno task build` bundles it as
 * `dist/xaeroflux-replica.js`, apart from the thin client
 * (`dist/xaeroflux-client.js`), which does not carry the replica's store,
 * Merkle index and sync session. The replica's Worker is its own bundle,
 * `dist/xaeroflux-replica-worker.js`.
 *
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { createGroup, generateKeyPair, MemoryKv, openReplica, textPayload } from "./replica_mod.ts";
 * const key = await generateKeyPair();
 * const { gid, manifest } = await createGroup(key, { name: "notes", policy: 1 });
 * const replica = await openReplica({ key, store: new MemoryKv() });
 * await replica.add([manifest.bytes]);
 * await replica.publish(gid, { kind: 16, payload: textPayload("offline") });
 * assertEquals((await replica.query(gid)).length, 2);
 * await replica.close();
 * ```
 *
 * @module
 */

export * from "./mod.ts";
export {
  openReplica,
  RemoteReplica,
  Replica,
  REPLICA_CONFIRM_MS,
  type ReplicaNode,
  type ReplicaOptions,
  type ReplicaProgress,
  type ReplicaSession,
  type ReplicaTraffic,
  workerChecker,
} from "./replica.ts";
export { type ApplyResult, checkEvents, type ReplicaQuery, ReplicaStore } from "../storage/replica_store.ts";
export { type Kv, MemoryKv } from "../storage/kv.ts";
export { openIndexedDb } from "../storage/kv_idb.ts";
