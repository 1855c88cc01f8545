/**
 * Every limit in Xaeroflux, in one place (TigerBeetle style: each queue,
 * batch, frame and loop has a named `*_max` constant, each time a `*_ms`).
 *
 * - {@linkcode LIMITS}: the limits a node may override in its config
 *   ({@linkcode limitsWith}); every component reads the node's configured
 *   ones (`node.limits`, a stage's `config.limits`), never these defaults.
 *   The README's limits table lists them.
 * - The named constants after it: fixed bounds (protocol constants of the
 *   SPEC, caches, retry counts, internal timers). They are not configurable;
 *   the README's "Fixed bounds" table lists them.
 *
 * Pure: no import, no Deno API (the browser client bundles it).
 *
 * @module
 */

/** The default limits. Names end in `_max` (a bound) or `_ms` (a time). */
export const LIMITS = {
  /** Largest event, in bytes of its CBOR encoding (SPEC). */
  event_bytes_max: 64 * 1024,
  /** How far ahead of the node's clock an event's `ts` may be (SPEC). */
  event_future_ms: 10 * 60 * 1000,
  /** Tags per event (SPEC). */
  event_tags_max: 64,
  /** Bytes of one tag string (SPEC). */
  tag_bytes_max: 256,
  /** Largest HTTP request body. */
  http_body_bytes_max: 4 * 1024 * 1024,
  /** Events in one HTTP POST (a CBOR array of events). */
  http_batch_events_max: 1000,
  /** HTTP auth challenges one remote address may hold pending; past it, RATE_LIMITED. */
  http_challenges_per_addr_max: 64,
  /** Events answered by one query page. */
  query_limit_max: 1000,
  /** Events one page of a group export (`GET /v1/groups/:gid/export`) reads from the index before it is sent. */
  export_page_events_max: 256,
  /** Events admitted to the pipeline and not yet acknowledged; past this, 503. */
  pipeline_inflight_events_max: 10_000,
  /** Events in one message between stages. */
  stage_batch_events_max: 512,
  /** Batches a stage may hold in its mailbox (its credit window). */
  stage_mailbox_batches_max: 8,
  /** Bytes of batches sent on one link between stages and not yet credited (a lone larger batch still goes). */
  stage_link_bytes_max: 8 * 1024 * 1024,
  /** Groups whose owner, policy and membership the decode stage holds (least recently used dropped past it). */
  decode_groups_max: 100_000,
  /** Helper Workers verifying signatures beside the decode stage (0: decode verifies alone). */
  decode_verify_workers_max: 1,
  /** Dead letters (batches that crashed a stage twice) /health remembers; every one is counted and kept on disk. */
  dead_letters_max: 1000,
  /** How long after an index write the WAL checkpoint (index made durable, WAL segments deleted) follows. */
  wal_checkpoint_ms: 200,
  /** Bytes of ingest's filter of held ids (a Bloom filter: only a "maybe held" is asked of the index). */
  ingest_id_filter_bytes_max: 32 * 1024 * 1024,
  /** Ids the ingest stage remembers as recently stored (duplicate filter). */
  ingest_recent_ids_max: 100_000,
  /** Records one WAL group commit writes before its fdatasync. */
  wal_commit_records_max: 8192,
  /** Events one RocksDB index write holds (batches waiting are written together). */
  index_batch_events_max: 4096,
  /** How often the index forgets, in every group with retention settings, the events past its boundary. */
  retention_prune_ms: 60_000,
  /** Events one retention write forgets (a prune is several such writes, each between the index's own). */
  retention_prune_events_max: 1024,
  /**
   * Events forgotten (deleted or past retention) after which the index asks RocksDB to compact the whole store
   * (every table file rewritten), in the background, so their disk space comes back.
   */
  compact_after_forgotten: 100_000,
  /**
   * How long that compaction first waits for the reads open when it was asked for (their snapshots would keep the
   * deleted values) to end; past it, it compacts anyway and what they pin goes at the next compaction.
   */
  compact_wait_reads_ms: 60_000,
  /** Bytes of one WAL segment file before a new one starts. */
  wal_segment_bytes_max: 64 * 1024 * 1024,
  /** Bytes of the reserve file kept in the data directory; deleted when the disk is full so a clean stop can proceed. */
  storage_reserve_bytes: 4 * 1024 * 1024,
  /** While the disk is full, free space is probed (by writing the reserve file again) this often. */
  storage_full_probe_ms: 1000,
  /** Every request that waits for a reply gives up after this. */
  request_timeout_ms: 10_000,
  /** A stage restarted more than this many times ... */
  restart_intensity_max: 5,
  /** ... within this many ms escalates to the root (the node stops). */
  restart_period_ms: 10_000,
  /** How long a stage may take to stop cleanly before it is terminated. */
  stage_shutdown_ms: 5_000,
  /**
   * How long a stage's (re)start may take (its Worker loads its modules — type-checked too under `deno test` — and
   * opens its files: RocksDB, the WAL's recovery) before it counts as failed.
   */
  stage_start_ms: 60_000,
  /** Live subscribers per node (sync sessions and stream hubs; streams of one group share one). */
  subscribers_max: 1024,
  /** Client streams (`GET /v1/groups/:gid/stream`, SSE or WebSocket) at once. */
  streams_max: 2048,
  /** Bytes a client stream may fall behind (queued, unsent) before it is cut off with PEER_TOO_SLOW. */
  stream_lag_bytes_max: 4 * 1024 * 1024,
  /** A stream sends a heartbeat at least this often. */
  stream_heartbeat_ms: 10_000,
  /** `/metrics` walks the data directory for `xf_data_bytes` at most this often (the figure is cached between). */
  metrics_disk_walk_ms: 30_000,
  /** Files and directories one walk of the data directory visits at most (`xf_data_bytes` counts those). */
  metrics_disk_walk_entries_max: 100_000,
  /** `/metrics` counts groups and events (`xf_groups`, `xf_events`) at most this often. */
  metrics_totals_ms: 5_000,
  /** Bytes of one sync WebSocket frame. */
  sync_frame_bytes_max: 1024 * 1024,
  /** Events a sync peer may send before we grant more (its credit window, in events). */
  sync_credit_events: 2048,
  /** Bytes of events a sync peer may send before we grant more (its credit window, in bytes). */
  sync_credit_bytes_max: 4 * 1024 * 1024,
  /** Bytes of events queued for one sync peer; past this it is cut off (PEER_TOO_SLOW). */
  sync_peer_queue_bytes_max: 8 * 1024 * 1024,
  /** Bytes of events queued for all sync peers together; the peer that would pass it is cut off. */
  sync_memory_bytes_max: 96 * 1024 * 1024,
  /** Event ids a peer asked for (want) or reconciliation found it lacks, queued and not yet sent. */
  sync_want_queue_ids_max: 65_536,
  /** Bytes received from a sync peer and not yet handled; past this it is cut off (RATE_LIMITED). */
  sync_inbound_bytes_max: 8 * 1024 * 1024,
  /** Bytes a sync socket may hold unsent before we stop sending to it. */
  sync_socket_buffer_bytes_max: 1024 * 1024,
  /** A peer that has made no progress (read, granted credit) this long while we have data for it is cut off. */
  sync_stall_ms: 15_000,
  /** An authenticated sync session subscribed to nothing in either direction is closed after this. */
  sync_idle_ms: 60_000,
  /** Groups one sync session may subscribe to (separate from the node-wide subscribers_max). */
  sync_session_groups_max: 64,
  /** Sync sessions from one remote address at once. */
  sync_sessions_per_addr_max: 16,
  /** Ids in one `want` frame. */
  sync_want_ids_max: 4096,
  /** Sync sessions (WebSocket peers) at once. */
  sync_sessions_max: 256,
  /** Protocol violations a peer may make before it is cut off. */
  sync_strikes_max: 3,
  /** A sync peer that completes no handshake within this is cut off. */
  sync_handshake_ms: 10_000,
  /** Outgoing peer connections kept (the `--peer` list and DHT-found members). */
  peers_max: 8,
  /** Longest wait between reconnection attempts to a peer. */
  peer_backoff_max_ms: 30_000,
  /** Bytes of one DHT WebSocket frame. */
  dht_frame_bytes_max: 64 * 1024,
  /** DHT requests one peer may make per second (a token bucket this deep); past it, RATE_LIMITED. */
  dht_requests_per_sec_max: 50,
  /** DHT requests one remote network address (an IPv6 /64) may make per second, over all its keys; past it, RATE_LIMITED. */
  dht_requests_per_addr_per_sec_max: 200,
  /** A DHT request unanswered for this long fails with TIMEOUT; also the DHT handshake's time. */
  dht_request_timeout_ms: 5_000,
  /** DHT requests one session has queued or in flight. */
  dht_inflight_max: 64,
  /** DHT sessions (WebSocket peers, both directions) at once. */
  dht_sessions_max: 256,
  /** DHT sessions from one remote address at once. */
  dht_sessions_per_addr_max: 16,
  /** An incoming DHT session that makes no request this long is closed. */
  dht_idle_ms: 120_000,
  /** Announcements in one find-peers or find-providers answer. */
  dht_answer_records_max: 100,
  /** Announcements one remote network address (an IPv6 /64) may have stored per group; past it, ADDR_FULL. */
  dht_records_per_addr_max: 4,
  /** Longest pause between two discovery rounds of a group. */
  dht_discover_ms: 30_000,
  /** Re-announce and refresh buckets this often (announcements live 20 minutes). */
  dht_refresh_ms: 600_000,
} as const;

/** The limits in force on a node: the defaults with any overrides. */
export type Limits = { -readonly [K in keyof typeof LIMITS]: number };

/** The limits with the given overrides applied. */
export function limitsWith(overrides: Partial<Limits> = {}): Limits {
  const out = { ...LIMITS } as Limits;
  for (const [k, v] of Object.entries(overrides)) {
    if (!(k in LIMITS)) throw new TypeError(`Cannot set limit "${k}": no such limit`);
    if (typeof v !== "number" || !Number.isFinite(v) || v < 0) {
      throw new TypeError(`Cannot set limit "${k}" to "${v}": not a non-negative number`);
    }
    (out as Record<string, number>)[k] = v;
  }
  // The WAL stage appends one stage batch per call, and one call is one group commit at most.
  if (out.wal_commit_records_max < out.stage_batch_events_max) {
    throw new TypeError(
      `Cannot set limit "wal_commit_records_max" to "${out.wal_commit_records_max}": ` +
        `below stage_batch_events_max (${out.stage_batch_events_max}), a batch the WAL must take in one call`,
    );
  }
  return out;
}

// ---------------------------------------------------------------------------
// Fixed bounds: storage (event format, CBOR, keys, membership, Merkle store)

/** Deepest nesting the decoder follows. */
export const CBOR_DEPTH_MAX = 16;

/** Most items in one decoded array or map. */
export const CBOR_ITEMS_MAX = 100_000;

/** Public keys whose imported CryptoKey is kept for reuse. */
export const VERIFY_KEY_CACHE_MAX = 4096;

/** Most membership events one {@linkcode GroupState} holds (override with `eventsMax`). */
export const MEMBERSHIP_EVENTS_MAX = 100_000;

/** Decoded Merkle pages kept per group (about 10,800 for a million events: leaves of ~93 ids). */
export const DECODED_PAGES_MAX = 65_536;

/**
 * Items (events added or removed) a group's Merkle journal holds before its pages are stored: a write past it
 * stores every page changed since the last checkpoint instead of a journal record (storage/merkle_store.ts).
 * It bounds the replay when a tree loads (at most this many items re-applied) and lets a page changed by many
 * writes in between be stored once.
 */
export const MERKLE_JOURNAL_ITEMS_MAX = 32_768;

/** Damaged events listed in one fsck report (the count is always exact). */
export const FSCK_DAMAGED_MAX = 10_000;

/** Event reads per RocksDB `getMany` during fsck. */
export const FSCK_READ_BATCH = 256;

/** `getMany` reads fsck keeps in flight (at most this × FSCK_READ_BATCH events read and not yet checked). */
export const FSCK_READS_IN_FLIGHT = 4;

/**
 * Bytes one RocksDB iterator step reads ahead for a bulk scan (a group's Merkle pages at first use): 64 pages of
 * 16 KiB per round trip into the binding instead of one (its default is 16 KiB).
 */
export const KV_BULK_READ_BYTES_MAX = 1024 * 1024;

/** Target event ids one tombstone (kind 2) names (SPEC: 1 to 256). */
export const TOMBSTONE_TARGETS_MAX = 256;

/** Largest `retention_ms` of a group settings event (kind 3): about 100 years. */
export const RETENTION_MS_MAX = 3_155_760_000_000;

/** Largest `retention_events` of a group settings event (kind 3). */
export const RETENTION_EVENTS_MAX = 1_000_000_000;

// ---------------------------------------------------------------------------
// Fixed bounds: the pipeline's stages

/** Group ids remembered as not held (so looking one up again costs no read). */
export const ABSENT_GROUPS_MAX = 10_000;

/** Groups described in one `index.groupInfo` answer. */
export const GROUP_INFO_MAX = 1000;

/** Open initiator sessions the index keeps (oldest dropped past this). */
export const RECONCILE_SESSIONS_MAX = 256;

/** An initiator session idle this long is dropped. */
export const RECONCILE_SESSION_IDLE_MS = 120_000;

/** Ids the index's filter of deleted ids is sized for at least (it grows to twice the deleted set). */
export const DELETED_FILTER_IDS_MIN = 65_536;

/** Time-index entries one query page may scan while filtering by kind or author. */
export const QUERY_SCAN_MAX = 10_000;

/** Node logging: a disk warning when less than this share of the data directory's filesystem is free. */
export const DISK_FREE_RATIO_MIN = 0.05;
/** Node logging: a disk warning when less than this many bytes are free. */
export const DISK_FREE_BYTES_MIN = 1024 ** 3;

// ---------------------------------------------------------------------------
// Fixed bounds: HTTP auth, client streams, exports

/** How long a challenge may be answered. */
export const CHALLENGE_TTL_MS = 30_000;

/** Challenges outstanding at once (oldest dropped past this). */
export const CHALLENGES_MAX = 10_000;

/** How long an HTTP bearer token is valid. */
export const TOKEN_TTL_MS = 10 * 60_000;

/** Tokens held at once (oldest dropped past this). */
export const TOKENS_MAX = 10_000;

/** A client that reads nothing of its backfill for this long is cut off (PEER_TOO_SLOW). */
export const STREAM_STALL_MS = 15_000;

/** Live events of a group are gathered this long (or up to STREAM_BATCH_EVENTS_MAX) and go out together. */
export const STREAM_COALESCE_MS = 20;

/** Live events gathered into one batch at most. */
export const STREAM_BATCH_EVENTS_MAX = 1000;

/** Tries at a snapshot where root, count and last arrival agree before settling for the last one. */
export const SNAPSHOT_TRIES_MAX = 3;

/** The root counts as settled once it has not moved for this long. */
export const SETTLE_QUIET_MS = 500;

// ---------------------------------------------------------------------------
// Fixed bounds: peer sync

/** Bytes of one handshake message at most. */
export const HANDSHAKE_BYTES_MAX = 4096;

/** Peers remembered per group (oldest forgotten past this). */
export const PEERS_PER_GROUP_MAX = 1024;

/** Events held per session to try again once their manifest or membership arrives. */
export const RETRY_EVENTS_MAX = 10_000;

/** Ids remembered per session as received from the peer, so they are not echoed back. */
export const ECHO_IDS_MAX = 100_000;

/** Ids fetched from the index at once to answer a peer. */
export const FETCH_IDS_MAX = 2048;

/** How often a session checks for stalls and idleness. */
export const SYNC_TICK_MS = 1_000;

/** Items one {@linkcode VectorStorage} holds (2 GiB of ids). */
export const VECTOR_ITEMS_MAX = 2 ** 26;

// ---------------------------------------------------------------------------
// Fixed bounds: the replica (a device as a peer: storage/replica_store.ts, client/replica.ts)

/** Events one replica write holds: a larger batch is written in several, manifests and membership first. */
export const REPLICA_APPLY_EVENTS_MAX = 1024;

/** Live local subscribers of one replica. */
export const REPLICA_SUBSCRIBERS_MAX = 1024;

/** Events sent to a node are confirmed held by a reconciliation this long after the last one went out. */
export const REPLICA_CONFIRM_MS = 1_000;

/** A call to the replica's check Worker (ids and signatures of a batch) fails with TIMEOUT after this. */
export const REPLICA_WORKER_CALL_MS = 30_000;

/** Events one window-pruning pass of a replica deletes at most (the next pass goes on). */
export const REPLICA_PRUNE_EVENTS_MAX = 4096;

/** Nodes one replica dials. */
export const REPLICA_NODES_MAX = 8;

/**
 * Bytes of events one message from a replica's Worker to its page carries at most (a larger event goes alone):
 * the page decodes each message in one task, so this bounds the main thread's work per message.
 */
export const REPLICA_PAGE_BYTES_MAX = 64 * 1024;

// ---------------------------------------------------------------------------
// Fixed bounds: the DHT (k and α are the SPEC's)

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

/** Peers whose request rate is tracked at once (least recently seen forgotten past this). */
export const RATE_PEERS_MAX = 4096;

/** Remote network addresses whose request rate is tracked at once (least recently seen forgotten past this). */
export const RATE_ADDRS_MAX = 4096;

/** An outgoing DHT session unused this long is closed. */
export const DHT_IDLE_MS = 60_000;

/** A routing table change is written to disk at most this long after it happens. */
export const DHT_SAVE_DELAY_MS = 2_000;

/** Buckets refreshed (one lookup of a random id each) per refresh, farthest first. */
export const REFRESH_BUCKETS_MAX = 16;

/** Failed connection attempts in a row after which a member counts as dead (until it announces anew). */
export const CONNECT_ATTEMPTS_MAX = 3;

/** A connection that lived this long resets the attempt count when it drops. */
export const CONNECT_HEALTHY_MS = 30_000;

/** Members remembered as dead (oldest forgotten past this). */
export const DEAD_MEMBERS_MAX = 1024;

// ---------------------------------------------------------------------------
// Fixed bounds: times and sizes that were literals in the code

/** Time-index keys one query page fetches and filters at a time. */
export const QUERY_FETCH_KEYS_MAX = 256;
/** `fsck` and `scan` read a whole group or store: they may take this many times `request_timeout_ms`. */
export const FSCK_TIMEOUT_FACTOR_MAX = 30;
/** `/metrics` waits this long for the WAL stage's counters (they are left out of that scrape past it). */
export const METRICS_STAGE_CALL_MS = 1_000;
/** Bytes of a token request body (`POST /v1/auth/token`: key, challenge, signature). */
export const TOKEN_REQUEST_BYTES_MAX = 4096;
/** A dial (`node.sync.connect`) whose WebSocket does not open within this fails with PEER_UNREACHABLE. */
export const PEER_CONNECT_MS = 10_000;
/** First wait before redialing a peer; it doubles per failed attempt up to `peer_backoff_max_ms`. */
export const PEER_BACKOFF_BASE_MS = 250;
/** First wait before retrying a DHT-found member; it doubles per failed attempt up to `peer_backoff_max_ms`. */
export const MEMBER_BACKOFF_BASE_MS = 500;
/** A sync transfer the local pipeline refused (OVERLOADED, STAGE_DOWN) is sent again after this. */
export const SYNC_STORE_RETRY_MS = 200;
/** After a decode restart, the root asks wal_flush again this long after its fence call failed (actors/root.ts). */
export const DECODE_FENCE_RETRY_MS = 100;
/** Node logging: rejected events are summarised once per this period. */
export const LOG_REJECTS_EVERY_MS = 10_000;
/** Node logging: memory is checked once per this period. */
export const LOG_MEMORY_EVERY_MS = 10_000;
/** Node logging: the RSS budget (a warning past 80 % of it). */
export const LOG_MEMORY_BUDGET_BYTES = 512 * 1024 * 1024;
/** The node's RSS budget: past MEMORY_RELIEF_RATIO of it, every isolate collects its garbage (checked every second). */
export const MEMORY_BUDGET_BYTES = LOG_MEMORY_BUDGET_BYTES;
/** The share of MEMORY_BUDGET_BYTES past which the node collects garbage in every isolate. */
export const MEMORY_RELIEF_RATIO = 0.7;
/** At most one such collection per this period. */
export const MEMORY_RELIEF_EVERY_MS = 5_000;
/** Node logging: disk is checked once per this period. */
export const LOG_DISK_EVERY_MS = 60_000;
