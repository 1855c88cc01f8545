/**
 * Every DHT constant and limit, in one place (TigerBeetle style). These
 * belong beside the node-wide `LIMITS` in `actors/limits.ts`; they live here
 * until that file takes them over.
 *
 * @module
 */

/** Bytes of a node id: SHA-256 of the node's Ed25519 public key (SPEC). */
export const ID_BYTES = 32;

/** Bytes of an Ed25519 public key. */
export const KEY_BYTES = 32;

/** Bits of a node id, and so the most buckets a routing table can have. */
export const ID_BITS: number = ID_BYTES * 8;

/** Contacts per bucket, and the size of a lookup's result: Kademlia's `k` (SPEC). */
export const K_BUCKET = 20;

/** Requests one lookup keeps in flight at most: Kademlia's `α` (SPEC). */
export const ALPHA = 3;

/** Contacts one routing table holds at most (the libp2p kad-dht bound). */
export const ROUTING_ENTRIES_MAX = 1280;

/**
 * Failures in a row (requests or pings unanswered) after which a contact is
 * dropped even though no newcomer is waiting for its slot. With a newcomer
 * waiting, one failure is enough (Kademlia's ping-before-replace).
 */
export const ROUTING_FAILURES_MAX = 3;

/** Bytes of a contact's address string, UTF-8. */
export const ADDR_BYTES_MAX = 256;

/** Contacts of one find-node response that a lookup looks at; the rest are ignored. */
export const RESPONSE_CONTACTS_MAX: number = K_BUCKET;

/** Requests one lookup sends at most, whatever its responders say. */
export const LOOKUP_REQUESTS_MAX = 200;

/** Contacts a lookup's shortlist keeps at most (the farthest are dropped). */
export const LOOKUP_SHORTLIST_MAX: number = 4 * K_BUCKET;

/**
 * A responder whose introduced contacts failed at least this many times, and
 * more than twice as often as they answered, is distrusted for the rest of
 * the lookup: its unqueried contacts are dropped.
 */
export const LOOKUP_DISTRUST_FAILURES_MAX = 3;

/** Times a joining node asks its bootstrap node before giving up, while it gets no answer. */
export const JOIN_ATTEMPTS_MAX = 5;

/** How long an announcement lives unless refreshed (SPEC: 20 minutes). */
export const ANNOUNCE_TTL_MS = 20 * 60 * 1000;

/** How far ahead of the local clock an announcement's `ts` may be. */
export const ANNOUNCE_FUTURE_MS = 10 * 60 * 1000;

/** Announcement records one store keeps per group (newest per node). */
export const RECORDS_PER_GROUP_MAX = 1024;

/** Groups one announcement store keeps records for. */
export const RECORD_GROUPS_MAX = 1024;

/**
 * Node keys whose address the announcement store remembers as verified (it
 * answered a request of ours there); the least recently verified are forgotten.
 */
export const VERIFIED_NODES_MAX = 4096;
