/**
 * Every limit in Xaeroflux, in one place (TigerBeetle style: each queue,
 * batch, frame and loop has a named `*_max` constant). The README's limits
 * table is generated from this list; {@linkcode Limits} lets a node override
 * any of them in its config.
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
  /** Batches a stage may hold in its mailbox (its credit window on each incoming link). */
  stage_mailbox_batches_max: 8,
  /** Bytes of batches sent on one link between stages and not yet credited (a lone larger batch still goes). */
  stage_link_bytes_max: 8 * 1024 * 1024,
  /** Groups whose owner, policy and membership the decode stage holds (least recently used dropped past it). */
  decode_groups_max: 100_000,
  /** Helper Workers verifying signatures beside the decode stage (0: decode verifies alone). */
  decode_verify_workers_max: 1,
  /** Batches that crashed a stage twice and were set aside, remembered for /health and the dead-letter file. */
  dead_letters_max: 1000,
  /** How long after an index write the WAL checkpoint (index made durable, WAL segments deleted) follows. */
  wal_checkpoint_ms: 200,
  /** Ids the ingest stage remembers as recently stored (duplicate filter). */
  ingest_recent_ids_max: 100_000,
  /** Records one WAL group commit writes before its fdatasync. */
  wal_commit_records_max: 8192,
  /** Events one RocksDB index write holds (batches waiting are written together). */
  index_batch_events_max: 4096,
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
  return out;
}
