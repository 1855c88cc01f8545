/**
 * The node as `net/` sees it: the calls the HTTP app, client streams,
 * exports, peer sync and the DHT make of a running node. `node.ts` (the
 * library façade, above `net/`) implements it; `net/` never imports
 * `node.ts`, so the layers stay acyclic. Peer sync (`NodeSync`) and the DHT
 * (`DhtService`) are `net/`'s own and are added where they are used
 * (`DhtNode` in `dht/service.ts`, `AppNode` in `app.ts`).
 *
 * @module
 */

import type { DeadLetter } from "../actors/root.ts";
import type { Pipeline } from "../actors/root.ts";
import type { EventResult } from "../actors/batch.ts";
import type { SubscriptionFilter } from "../actors/advertise.ts";
import type { ArrivalQuery, EventQuery } from "../actors/index.ts";
import type { Histogram } from "../actors/histogram.ts";
import type { Limits } from "../core/limits.ts";
import type { KeyPair } from "../storage/ed25519.ts";
import type { Event } from "../storage/event.ts";

/** Merkle root, count and depth of a group. */
export interface MerkleRootInfo {
  root: string;
  count: number;
  depth: number;
}

/** Liveness and readiness of every stage, and who the node is. */
export interface NodeHealth {
  status: string;
  ready: boolean;
  stages: Record<string, { state: string; mailbox: number; restarts: number }>;
  recovery: string;
  key: string;
  nodeId: string;
  version: string;
  uptime: number;
  storage: "ok" | "full";
  /** Batches set aside after they crashed a stage twice: how many, and the latest few. */
  deadLetters: { count: number; recent: DeadLetter[] };
}

/** What `net/` calls on a node (see `XfNode` in `node.ts` for each call's contract). */
export interface NodeCore {
  /** Per hex group: hex ids dropped as damaged and asked of peers (`restore`), until one sends them. */
  readonly restoring: Map<string, Set<string>>;
  /** The node's Ed25519 identity. */
  readonly key: KeyPair;
  /** The node's limits in force (its configured ones). */
  readonly limits: Limits;
  /** Where peers reach this node, `ws://host:port` ("" until it listens). */
  publicUrl: string;
  /** The root actor and its stages. */
  readonly pipeline: Pipeline;
  /** Per event stored from a peer's frame: seconds from the frame's arrival to stored. */
  readonly syncDeliverySeconds: Histogram;
  /** Per live batch written to a client stream: seconds from the hub receiving it to the write. */
  readonly streamDeliverySeconds: Histogram;
  access(
    gid: string,
    key: string,
  ): Promise<{ exists: boolean; readable: boolean; root: string; count: number; policy: number }>;
  publish(events: Uint8Array | Event | (Uint8Array | Event)[], gid?: Uint8Array): Promise<EventResult[]>;
  /** `reader`: the HTTP caller's token key ("" anonymous) that must see `gid`, else UNKNOWN_GROUP; null skips it. */
  submit(gid: Uint8Array | null, body: Uint8Array, reader?: string | null): Promise<EventResult[]>;
  get(id: string): Promise<Uint8Array | null>;
  query(q: EventQuery): Promise<{ events: Uint8Array[]; cursor: string | null; seqs: number[] } | null>;
  arrivals(q: ArrivalQuery): Promise<{ events: Uint8Array[]; seqs: number[]; last: number; more: boolean } | null>;
  lastArrival(gid: string): Promise<number>;
  merkle(gid: string): Promise<MerkleRootInfo | null>;
  /** The lowest `ts` this node keeps of a group (0: all of it); retention (kind 3) raises it. */
  retained(gid: string): Promise<number>;
  proof(gid: string, id: string): Promise<Uint8Array | null>;
  subscribe(
    filter: SubscriptionFilter,
    cb: (events: Uint8Array[], seqs: number[]) => void,
  ): Promise<() => Promise<void>>;
  health(): NodeHealth;
  metrics(): Promise<string>;
  close(): Promise<void>;
}
