/**
 * `XfClient`: an app's connection to one Xaeroflux node over HTTP, with web
 * APIs only (`fetch`, `WebSocket`, WebCrypto), so it runs unchanged in
 * browsers and Deno. Events are signed here with the caller's key; reads of
 * closed groups use a bearer token the client fetches with the same key
 * (challenge and answer) and refreshes before it expires.
 *
 * @module
 */

import { answerChallenge } from "../storage/auth_message.ts";
import { CHALLENGE_TTL_MS } from "../core/limits.ts";
import { fromHex, toHex } from "../core/bytes.ts";
import {
  createGroup as makeGroup,
  eventId as eventIdOf,
  peekEvent,
  POLICY_CLOSED,
  POLICY_OPEN,
} from "../storage/event.ts";
import { type KeyPair } from "../storage/ed25519.ts";
import { decodeCbor } from "../storage/cbor.ts";
import { ERROR_STATUS, type ErrorCode } from "../core/errors.ts";
import {
  ACTION_ADD,
  ACTION_MAKE_ADMIN,
  ACTION_REMOVE,
  ACTION_REVOKE_ADMIN,
  encodeMembership,
  type MembershipAction,
} from "../storage/membership.ts";
import { checkProof } from "../merkle/proof.ts";
import type { Settings } from "../storage/retention.ts";
import { type ClientErrorCode, XfClientError } from "./errors.ts";
import {
  type ClientEvent,
  type EventDraft,
  fromStored,
  groupHex,
  readEvent,
  settingsDraft,
  signEvent,
  tombstoneDraft,
} from "./event.ts";
import { cborArrayOf } from "../storage/cbor.ts";
import { type PublishResult, startSubscription, type SubscribeOptions, type Subscription } from "./subscribe.ts";
import { type ExportHeader, readExport } from "./export.ts";

/** Events in one POST (the node's `http_batch_events_max`); bigger batches are split. */
export const PUBLISH_BATCH_EVENTS_MAX = 1000;
/** Bytes of one POST body (the node's `http_body_bytes_max`); bigger batches are split. */
export const PUBLISH_BODY_BYTES_MAX = 4 * 1024 * 1024;
/** How long `syncOnce` waits for the node's report (a whole group may take minutes). */
export const SYNC_ONCE_TIMEOUT_MS = 10 * 60_000;
/** A token with less than this left is refreshed before use. */
export const TOKEN_REFRESH_MS = 60_000;
/** Times an import batch the node sheds (`OVERLOADED`, 503) is sent again before the import fails. */
export const IMPORT_RETRIES_MAX = 5;
/** Membership events sent with a manifest in one request (within one of the node's stage batches, 512). */
export const IMPORT_HEAD_EVENTS_MAX = 256;
/** Longest wait for a node to index an import's head (the group, its members) before the rest is sent. */
export const IMPORT_SETTLE_MS_MAX = 10_000;

/** Options of {@linkcode XfClient.exportGroup}. */
export interface ExportOptions {
  /** Called with the export's header (the group's root and count when it began) before the first event. */
  onHeader?: (header: ExportHeader) => void;
  /** Verify every event's signature too (default: the client's `verify`; ids and group are always checked). */
  verify?: boolean;
  signal?: AbortSignal;
}

/** What {@linkcode XfClient.importEvents} did: events stored, already held, and rejected by code. */
export interface ImportCounts {
  stored: number;
  duplicate: number;
  /** Rejected events by error code, e.g. `{ BAD_SIGNATURE: 1 }`. */
  rejected: Record<string, number>;
}

/** When the client sends a bearer token. */
export type AuthMode = "auto" | "always" | "never";

/** Options of {@linkcode XfClient}. */
export interface ClientOptions {
  /** The caller's identity: signs events and proves membership for closed groups. */
  key?: KeyPair;
  /**
   * `"auto"` (default): send a token once one is held, and fetch one when a
   * read answers 401 or 404 (a closed group looks absent without it);
   * `"always"`: fetch one before the first request; `"never"`.
   */
  auth?: AuthMode;
  /** Milliseconds a request may take (default 10,000). */
  timeoutMs?: number;
  /** Verify the signature of every event read (ids are always checked against the bytes). Default false. */
  verify?: boolean;
  /** Replaces the global `fetch` (tests, instrumentation). */
  fetch?: typeof fetch;
  /** Replaces the global `WebSocket`. */
  WebSocket?: typeof WebSocket;
  /** The clock used for token expiry (default `Date.now`). */
  now?: () => number;
}

/** Filters of {@linkcode XfClient.query}. */
export interface QueryFilter {
  /** Events with `ts ≥ since` (ms). */
  since?: number;
  /** Events with `ts ≤ until` (ms). */
  until?: number;
  kind?: number[];
  /** Authors' public keys, hex. */
  author?: string[];
  /** Events per page (1..1000, default the node's 100); the iterator still walks every page. */
  limit?: number;
  /** Start after this cursor. */
  cursor?: string;
  /** Verify signatures (default: the client's `verify`). */
  verify?: boolean;
  signal?: AbortSignal;
}

/** One page of a query. */
export interface QueryPage {
  events: ClientEvent[];
  /** Pass back as `cursor` for the next page; null on the last one. */
  cursor: string | null;
}

/** A group's Merkle root. */
export interface MerkleInfo {
  /** Root hash, hex (64 zeros for no events). */
  root: string;
  count: number;
  depth: number;
}

/** A group as `groups()` lists it. */
export interface GroupInfo {
  id: string;
  name: string;
  policy: "open" | "closed";
  count: number;
  root: string;
}

/** A member's role. */
export type Role = "owner" | "admin" | "member";

/** A group's members. */
export interface Members {
  /** The owner's public key, hex. */
  owner: string;
  members: Array<{ key: string; role: Role }>;
}

/** What `createGroup` returns. */
export interface CreatedGroup {
  gid: string;
  manifest: ClientEvent;
  result: PublishResult;
}

/** A signed event with the node's answer. */
export interface Sent {
  event: ClientEvent;
  result: PublishResult;
}

/** A bearer token and when the client stops using it (its own clock). */
export interface Token {
  token: string;
  /** Local time (`now()`) the token expires. */
  expiresAt: number;
}

type Publishable = Uint8Array | { bytes: Uint8Array };

interface Answer {
  status: number;
  headers: Headers;
  body: Uint8Array;
}

interface RequestInit2 {
  method?: string;
  body?: Uint8Array;
  headers?: Record<string, string>;
  /** `"read"`: use a held token, fetch one on 401/404; `"need"`: always fetch one; `"none"`. */
  auth?: "read" | "need" | "none";
  signal?: AbortSignal;
  /** This request's bound instead of the client's `timeoutMs`. */
  timeoutMs?: number;
}

/** What `POST /v1/sync/once` reports (see the README's Peer sync). */
export interface SyncOnceReport {
  /** The peer's node key (hex). */
  peer: string;
  /** Wall time of the sync. */
  ms: number;
  framesIn: number;
  framesOut: number;
  bytesIn: number;
  bytesOut: number;
  negRounds: number;
  eventsSent: number;
  eventsReceived: number;
  eventsStored: number;
  eventsRejected: number;
  /** Per group, the range reconciled when it was not the whole group (`until` null: no end). */
  ranges?: Record<string, { since: number; until: number | null }>;
}

function policyOf(p: unknown): "open" | "closed" {
  return p === POLICY_CLOSED || p === "closed" ? "closed" : "open";
}

/**
 * A client of one node.
 *
 * @example
 * ```ts ignore
 * import { XfClient, generateKeyPair, textPayload } from "./mod.ts";
 * const me = await generateKeyPair();
 * const xf = new XfClient("http://127.0.0.1:7878", { key: me });
 * const { gid } = await xf.createGroup({ name: "friends", policy: "open" });
 * await xf.send(gid, { kind: 16, payload: textPayload("hello") });
 * for await (const e of xf.query(gid, { kind: [16] })) console.log(e.id, e.ts);
 * const sub = xf.subscribe(gid, { onEvent: (e) => console.log("live", e.id) });
 * sub.close();
 * ```
 */
export class XfClient {
  /** `http(s)://host:port`, without a trailing slash. */
  readonly url: string;
  /** The caller's key, if any. */
  readonly key: KeyPair | null;
  readonly #auth: AuthMode;
  readonly #timeoutMs: number;
  readonly #verify: boolean;
  readonly #fetch: typeof fetch;
  readonly #ws: typeof WebSocket;
  readonly #now: () => number;
  #token: Token | null = null;
  #tokenPending: Promise<Token> | null = null;

  /** A client of the node at `url` (`http://host:port`). */
  constructor(url: string, options: ClientOptions = {}) {
    if (!/^https?:\/\/[^\s/]+/.test(url)) {
      throw new TypeError(`Cannot use node URL "${url}": expected http(s)://host:port`);
    }
    this.url = url.replace(/\/+$/, "");
    this.key = options.key ?? null;
    this.#auth = options.auth ?? "auto";
    this.#timeoutMs = options.timeoutMs ?? 10_000;
    this.#verify = options.verify ?? false;
    this.#fetch = options.fetch ?? ((input, init) => fetch(input, init));
    this.#ws = options.WebSocket ?? globalThis.WebSocket;
    this.#now = options.now ?? Date.now;
  }

  // ---- tokens ----

  /**
   * A valid bearer token for the client's key: the held one while more than
   * {@linkcode TOKEN_REFRESH_MS} is left, else a new one (challenge, signed
   * answer). `refresh` forces a new one. Throws `UNAUTHORIZED` without a key.
   */
  async token(options: { refresh?: boolean } = {}): Promise<Token> {
    if (!this.key) throw new XfClientError("UNAUTHORIZED", "Cannot fetch a token: the client has no key");
    const held = this.#token;
    if (!options.refresh && held && held.expiresAt - this.#now() >= TOKEN_REFRESH_MS) return held;
    this.#tokenPending ??= this.#fetchToken().finally(() => (this.#tokenPending = null));
    return await this.#tokenPending;
  }

  async #fetchToken(): Promise<Token> {
    const key = this.key!;
    const t0 = this.#now();
    const c = this.#json<{ challenge?: unknown; expires?: unknown; node?: unknown }>(
      await this.#request("/v1/auth/challenge", { auth: "none" }),
    );
    const challenge = typeof c.challenge === "string" ? fromHex(c.challenge) : null;
    const node = typeof c.node === "string" ? fromHex(c.node) : null;
    if (!challenge || challenge.length !== 32 || !node || node.length !== 32 || typeof c.expires !== "number") {
      throw new XfClientError("BAD_RESPONSE", "Cannot read challenge: expected {challenge, expires, node}");
    }
    const sig = await answerChallenge(key, "http", challenge, node);
    const t = this.#json<{ token?: unknown; expires?: unknown }>(
      await this.#request("/v1/auth/token", {
        method: "POST",
        auth: "none",
        headers: { "content-type": "application/json" },
        body: new TextEncoder().encode(
          JSON.stringify({ key: toHex(key.publicKey), challenge: toHex(challenge), sig: toHex(sig) }),
        ),
      }),
    );
    if (typeof t.token !== "string" || typeof t.expires !== "number") {
      throw new XfClientError("BAD_RESPONSE", "Cannot read token: expected {token, expires}");
    }
    // The token's lifetime by the node's clock (the challenge was issued at expires - TTL), on ours.
    const ttl = t.expires - (c.expires - CHALLENGE_TTL_MS);
    const token = { token: t.token, expiresAt: t0 + (Number.isFinite(ttl) && ttl > 0 ? ttl : 0) };
    this.#token = token;
    return token;
  }

  // ---- requests ----

  /**
   * One fetch of `path` with `token`, bounded by the client's timeout; `read` runs inside that bound. With
   * `streaming`, the caller's `signal` keeps cancelling the answer's body after `read` returns.
   */
  async #fetchWith<T>(
    path: string,
    init: RequestInit2,
    token: string | null,
    read: (res: Response) => Promise<T>,
    streaming = false,
  ): Promise<T> {
    const url = this.url + path;
    const headers: Record<string, string> = { ...init.headers };
    if (token) headers.authorization = `Bearer ${token}`;
    const ctl = new AbortController();
    const timeoutMs = init.timeoutMs ?? this.#timeoutMs;
    const timer = setTimeout(
      () => ctl.abort(new XfClientError("NETWORK", `Cannot reach ${url}: no answer in ${timeoutMs} ms`)),
      timeoutMs,
    );
    const stop = () => ctl.abort(init.signal?.reason);
    init.signal?.addEventListener("abort", stop, { once: true });
    try {
      const res = await this.#fetch(url, {
        method: init.method ?? "GET",
        headers,
        ...(init.body ? { body: init.body as Uint8Array<ArrayBuffer> } : {}),
        signal: ctl.signal,
      });
      return await read(res);
    } catch (e) {
      if (e instanceof XfClientError) throw e;
      const reason = ctl.signal.reason;
      if (reason instanceof XfClientError) throw reason;
      throw new XfClientError("NETWORK", `Cannot reach ${url}: ${(e as Error).message}`, 0, { cause: e });
    } finally {
      clearTimeout(timer);
      if (!streaming) init.signal?.removeEventListener("abort", stop);
    }
  }

  /**
   * The auth policy around `attempt`: a token when one is needed or held (refreshed when it is about to
   * expire), and one retry with a fresh token when a held one met 401 or 404 (a closed group looks absent
   * without a member's token; a token the node forgot answers 401). `discard` drops a refused answer.
   */
  async #authorized<T extends { status: number }>(
    init: RequestInit2,
    attempt: (token: string | null) => Promise<T>,
    discard: (a: T) => Promise<void> = async () => {},
  ): Promise<T> {
    const want = init.auth ?? "read";
    const canAuth = this.key !== null && this.#auth !== "never" && want !== "none";
    let fresh = false;
    let token: string | null = null;
    if (canAuth) {
      const held = this.#token;
      if (want === "need" || this.#auth === "always" || held) {
        fresh = !held || held.expiresAt - this.#now() < TOKEN_REFRESH_MS;
        token = (await this.token()).token;
      }
    }
    let a = await attempt(token);
    if (canAuth && !fresh && (a.status === 401 || a.status === 404)) {
      await discard(a);
      a = await attempt((await this.token({ refresh: true })).token);
    }
    return a;
  }

  /** A request with the auth policy applied; throws {@linkcode XfClientError} for any non-2xx answer. */
  async #request(path: string, init: RequestInit2 = {}): Promise<Answer> {
    const a = await this.#authorized(init, (token) =>
      this.#fetchWith(path, init, token, async (res) => ({
        status: res.status,
        headers: res.headers,
        body: new Uint8Array(await res.arrayBuffer()),
      })));
    if (a.status < 200 || a.status > 299) throw this.#errorOf(a.status, a.body);
    return a;
  }

  /**
   * A GET whose body is read as it arrives (the timeout covers the answer's
   * head; `signal` cancels the rest), with the same auth policy and errors as
   * {@linkcode XfClient.#request}.
   */
  async #open(path: string, init: RequestInit2 = {}): Promise<Response> {
    const res = await this.#authorized(
      init,
      (token) => this.#fetchWith(path, { ...init, method: "GET" }, token, (r) => Promise.resolve(r), true),
      async (r) => void await r.body?.cancel(),
    );
    if (!res.ok) throw this.#errorOf(res.status, new Uint8Array(await res.arrayBuffer()));
    return res;
  }

  #errorOf(status: number, body: Uint8Array): XfClientError {
    try {
      const j = JSON.parse(new TextDecoder().decode(body)) as { error?: unknown; message?: unknown };
      if (typeof j.error === "string" && /^[A-Z][A-Z_]*$/.test(j.error)) {
        return new XfClientError(j.error as ClientErrorCode, String(j.message ?? j.error), status);
      }
    } catch { /* not JSON: below */ }
    return new XfClientError(
      "BAD_RESPONSE",
      `Cannot use the node's answer: status ${status} without an error code`,
      status,
    );
  }

  #json<T>(a: Answer): T {
    try {
      const v = JSON.parse(new TextDecoder().decode(a.body));
      if (typeof v !== "object" || v === null) throw new Error("not an object");
      return v as T;
    } catch (e) {
      throw new XfClientError("BAD_RESPONSE", `Cannot read the node's answer: ${(e as Error).message}`, a.status);
    }
  }

  #needKey(what: string): KeyPair {
    if (!this.key) throw new TypeError(`Cannot ${what}: the client has no key`);
    return this.key;
  }

  // ---- writing ----

  /** Sign an event of group `gid` with the client's key. */
  sign(gid: string | Uint8Array, draft: EventDraft): Promise<ClientEvent> {
    return signEvent(this.#needKey("sign an event"), gid, draft);
  }

  /**
   * Publish events of group `gid`: one (answer: its result) or many (answer:
   * one result per event, in order; batches over 1,000 events or 4 MiB go
   * in several POSTs). A rejected event is a result with its `code`, not a
   * throw; a request the node refuses as a whole (`UNKNOWN_GROUP`,
   * `OVERLOADED` …) or that gets no answer throws {@linkcode XfClientError}.
   */
  publish(gid: string | Uint8Array, event: Publishable): Promise<PublishResult>;
  publish(gid: string | Uint8Array, events: readonly Publishable[]): Promise<PublishResult[]>;
  async publish(
    gid: string | Uint8Array,
    events: Publishable | readonly Publishable[],
  ): Promise<PublishResult | PublishResult[]> {
    const one = !Array.isArray(events);
    const list = (one ? [events as Publishable] : events as readonly Publishable[]).map((e) =>
      e instanceof Uint8Array ? e : e.bytes
    );
    const g = groupHex(gid);
    const out: PublishResult[] = [];
    for (let i = 0; i < list.length;) {
      let j = i, bytes = 9;
      while (
        j < list.length && j - i < PUBLISH_BATCH_EVENTS_MAX &&
        (j === i || bytes + list[j]!.length <= PUBLISH_BODY_BYTES_MAX)
      ) {
        bytes += list[j]!.length;
        j++;
      }
      out.push(...await this.#publishBatch(g, list.slice(i, j)));
      i = j;
    }
    return one ? out[0]! : out;
  }

  async #publishBatch(gid: string, events: Uint8Array[]): Promise<PublishResult[]> {
    // Always an array, even of one: the node answers per event ({results}), so a rejection is a result.
    const a = await this.#request(`/v1/groups/${gid}/events`, {
      method: "POST",
      headers: { "content-type": "application/cbor", accept: "application/json" },
      body: cborArrayOf(events),
    });
    const r = this.#json<{ results?: unknown }>(a).results;
    if (!Array.isArray(r) || r.length !== events.length) {
      throw new XfClientError(
        "BAD_RESPONSE",
        `Cannot read publish answer: expected ${events.length} results`,
        a.status,
      );
    }
    return r.map((x: Record<string, unknown>, i) => {
      const status = x.status;
      if (status !== "stored" && status !== "duplicate" && status !== "rejected") {
        throw new XfClientError("BAD_RESPONSE", `Cannot read publish answer: status "${String(status)}"`, a.status);
      }
      const res: PublishResult = { status, id: typeof x.id === "string" ? x.id : idOf(events[i]!) };
      if (typeof x.code === "string") res.code = x.code as ErrorCode;
      if (typeof x.message === "string") res.message = x.message;
      return res;
    });
  }

  /** Sign an event and publish it; throws {@linkcode XfClientError} with the code when it is rejected. */
  async send(gid: string | Uint8Array, draft: EventDraft): Promise<Sent> {
    const event = await this.sign(gid, draft);
    const result = await this.publish(gid, event);
    throwIfRejected(result);
    return { event, result };
  }

  /**
   * Create a group owned by the client's key and publish its manifest.
   * Throws {@linkcode XfClientError} when the node rejects it.
   */
  async createGroup(options: { name: string; policy: "open" | "closed" | 0 | 1; ts?: number }): Promise<CreatedGroup> {
    const key = this.#needKey("create a group");
    const policy = options.policy === "closed" || options.policy === POLICY_CLOSED ? POLICY_CLOSED : POLICY_OPEN;
    const { gid, manifest } = await makeGroup(key, {
      name: options.name,
      policy,
      ...(options.ts !== undefined ? { ts: options.ts } : {}),
    });
    const result = await this.publish(gid, manifest);
    throwIfRejected(result);
    return { gid: toHex(gid), manifest: fromStored(manifest), result };
  }

  async #membership(
    gid: string | Uint8Array,
    action: MembershipAction,
    member: string | Uint8Array,
    ts?: number,
  ): Promise<Sent> {
    const m = typeof member === "string" ? fromHex(member) : member;
    if (!m || m.length !== 32) {
      throw new TypeError(`Cannot use member key "${String(member).slice(0, 80)}": expected 64 hex digits`);
    }
    return await this.send(gid, {
      kind: 1,
      payload: encodeMembership({ action, member: m }),
      ...(ts !== undefined ? { ts } : {}),
    });
  }

  /** Add a member (the client's key must be the owner or an admin). */
  addMember(gid: string | Uint8Array, member: string | Uint8Array, options: { ts?: number } = {}): Promise<Sent> {
    return this.#membership(gid, ACTION_ADD, member, options.ts);
  }

  /** Remove a member. */
  removeMember(gid: string | Uint8Array, member: string | Uint8Array, options: { ts?: number } = {}): Promise<Sent> {
    return this.#membership(gid, ACTION_REMOVE, member, options.ts);
  }

  /** Make a member an admin. */
  makeAdmin(gid: string | Uint8Array, member: string | Uint8Array, options: { ts?: number } = {}): Promise<Sent> {
    return this.#membership(gid, ACTION_MAKE_ADMIN, member, options.ts);
  }

  /** Take a member's admin role away. */
  revokeAdmin(gid: string | Uint8Array, member: string | Uint8Array, options: { ts?: number } = {}): Promise<Sent> {
    return this.#membership(gid, ACTION_REVOKE_ADMIN, member, options.ts);
  }

  /**
   * Delete events of group `gid` (1 to 256 ids, hex or bytes): sign a tombstone (kind 2) naming them and publish
   * it. Each target must be the client's own, or the client's key the owner or an admin of the group; the node
   * answers `FORBIDDEN` otherwise (and for manifests, membership events, tombstones and settings, which are never
   * deleted), thrown as {@linkcode XfClientError}. A deleted event is then refused `DELETED` wherever it arrives.
   */
  async delete(
    gid: string | Uint8Array,
    ids: readonly (string | Uint8Array)[],
    options: { ts?: number } = {},
  ): Promise<Sent> {
    return await this.send(gid, tombstoneDraft(ids, options.ts));
  }

  /**
   * Set group `gid`'s retention (the client's key must be the owner's or an admin's): sign and publish a settings
   * event (kind 3) with `retention_ms` and/or `retention_events` (an empty object keeps everything). Every node then
   * forgets the group's application events past the boundary; the latest settings event by `(ts, id)` wins.
   */
  async setRetention(gid: string | Uint8Array, settings: Settings, options: { ts?: number } = {}): Promise<Sent> {
    return await this.send(gid, settingsDraft(settings, options.ts));
  }

  // ---- reading ----

  /** One page of a group's events in `(ts, id)` order (CBOR: exact bytes, ids checked). */
  async queryPage(gid: string | Uint8Array, filter: QueryFilter = {}): Promise<QueryPage> {
    const g = groupHex(gid);
    const p = new URLSearchParams();
    if (filter.since !== undefined) p.set("since", String(filter.since));
    if (filter.until !== undefined) p.set("until", String(filter.until));
    for (const k of filter.kind ?? []) p.append("kind", String(k));
    for (const a of filter.author ?? []) p.append("author", a);
    if (filter.limit !== undefined) p.set("limit", String(filter.limit));
    if (filter.cursor) p.set("cursor", filter.cursor);
    const qs = p.toString();
    const a = await this.#request(`/v1/groups/${g}/events${qs ? `?${qs}` : ""}`, {
      headers: { accept: "application/cbor" },
      ...(filter.signal ? { signal: filter.signal } : {}),
    });
    let events: unknown, cursor: unknown;
    try {
      const m = decodeCbor(a.body);
      if (!(m instanceof Map)) throw new Error("not a map");
      events = m.get("events");
      cursor = m.get("cursor");
    } catch (e) {
      throw new XfClientError("BAD_RESPONSE", `Cannot read query answer: ${(e as Error).message}`, a.status);
    }
    if (!Array.isArray(events) || !(cursor === null || typeof cursor === "string")) {
      throw new XfClientError("BAD_RESPONSE", "Cannot read query answer: expected {events, cursor}", a.status);
    }
    const verify = filter.verify ?? this.#verify;
    const out: ClientEvent[] = [];
    for (const b of events) {
      if (!(b instanceof Uint8Array)) {
        throw new XfClientError("BAD_RESPONSE", "Cannot read query answer: an event is not bytes");
      }
      out.push(await readEvent(b, { group: g, verify }));
    }
    return { events: out, cursor };
  }

  /**
   * Every event of a group matching `filter`, in `(ts, id)` order, page by
   * page (following `cursor` until the node says there is no more).
   */
  async *query(gid: string | Uint8Array, filter: QueryFilter = {}): AsyncGenerator<ClientEvent> {
    let cursor: string | null = filter.cursor ?? null;
    do {
      const page: QueryPage = await this.queryPage(gid, { ...filter, ...(cursor ? { cursor } : {}) });
      yield* page.events;
      cursor = page.cursor;
    } while (cursor);
  }

  /**
   * Every event of group `gid` as its exact bytes, from the node's export
   * (`GET /v1/groups/:gid/export`): the manifest, then membership events,
   * then the rest in `(ts, id)` order; the order a node that has never seen
   * the group can import them in. Read as the bytes arrive: each event is
   * decoded (strict deterministic CBOR, so its id is SHA-256 of these bytes)
   * and must be of `gid`, else {@linkcode XfClientError} `BAD_RESPONSE`.
   * A closed group needs a member's key (without one it is `UNKNOWN_GROUP`,
   * like a group the node does not hold).
   */
  async *exportGroup(gid: string | Uint8Array, options: ExportOptions = {}): AsyncGenerator<Uint8Array> {
    const g = groupHex(gid);
    const res = await this.#open(`/v1/groups/${g}/export`, {
      headers: { accept: "application/cbor-seq" },
      ...(options.signal ? { signal: options.signal } : {}),
    });
    const verify = options.verify ?? this.#verify;
    let first = true;
    try {
      for await (const item of readExport(res.body ?? [])) {
        if (item.type === "header") {
          if (item.header.group !== g) {
            throw new XfClientError("BAD_RESPONSE", `Cannot accept export: it is of group "${item.header.group}"`);
          }
          options.onHeader?.(item.header);
        } else {
          const e = await readEvent(item.bytes, { group: g, verify });
          if (first && e.kind !== 0) {
            throw new XfClientError("BAD_RESPONSE", "Cannot accept export: its first event is not the manifest");
          }
          first = false;
          yield item.bytes;
        }
      }
    } finally {
      await res.body?.cancel().catch(() => {});
    }
  }

  /**
   * Publish events of group `gid` from an export (or any list), in order and
   * in batches through the normal POST route, so the node checks every one
   * again (signature, membership, limits). Rejected events are counted by
   * code, not thrown; a request refused as a whole throws (a batch shed with
   * `OVERLOADED` is sent again, up to {@linkcode IMPORT_RETRIES_MAX} times).
   *
   * A manifest goes in a request with the membership events right after it
   * (at most {@linkcode IMPORT_HEAD_EVENTS_MAX}), which a node that does not
   * hold the group judges together; the rest waits until the node has
   * indexed them (at most {@linkcode IMPORT_SETTLE_MS_MAX}), so a member who
   * is not the owner can import a closed group into a node that never held
   * it, provided the head adds it.
   */
  async importEvents(
    gid: string | Uint8Array,
    events: AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
  ): Promise<ImportCounts> {
    const g = groupHex(gid);
    const counts: ImportCounts = { stored: 0, duplicate: 0, rejected: {} };
    let batch: Uint8Array[] = [];
    let bytes = 9;
    /** Events of the group the node holds once the head is indexed (-1: no head pending). */
    let head = -1;
    const flush = async () => {
      if (batch.length === 0) return;
      const send = batch;
      batch = [];
      bytes = 9;
      for (let attempt = 0;; attempt++) {
        try {
          for (const r of await this.#publishBatch(g, send)) {
            if (r.status === "rejected") {
              const code = r.code ?? "INTERNAL";
              counts.rejected[code] = (counts.rejected[code] ?? 0) + 1;
            } else {
              counts[r.status]++;
              if (head >= 0) head++;
            }
          }
          break;
        } catch (e) {
          if (!(e instanceof XfClientError && e.code === "OVERLOADED") || attempt >= IMPORT_RETRIES_MAX) throw e;
          await new Promise((ok) => setTimeout(ok, 250 * 2 ** attempt));
        }
      }
      if (head >= 0) {
        await this.#indexed(g, head);
        head = -1;
      }
    };
    for await (const b of events) {
      const kind = b[0] === 0x88 ? peekEvent(b)?.kind : undefined;
      if (kind === 0) {
        await flush();
        head = 0;
      } else if (head >= 0 && (kind !== 1 || batch.length >= IMPORT_HEAD_EVENTS_MAX)) {
        await flush();
      }
      if (batch.length >= PUBLISH_BATCH_EVENTS_MAX || bytes + b.length > PUBLISH_BODY_BYTES_MAX) await flush();
      batch.push(b);
      bytes += b.length;
    }
    await flush();
    return counts;
  }

  /** Resolves once the node shows group `gid` to this client with at least `count` events (or time is up). */
  async #indexed(gid: string, count: number): Promise<void> {
    const t0 = this.#now();
    while (this.#now() - t0 < IMPORT_SETTLE_MS_MAX) {
      try {
        if ((await this.merkle(gid)).count >= count) return;
      } catch (e) {
        if (!(e instanceof XfClientError && e.code === "UNKNOWN_GROUP")) throw e;
      }
      await new Promise((ok) => setTimeout(ok, 20));
    }
  }

  /**
   * Make the node sync once with a peer node (`POST /v1/sync/once`, the operator's route: loopback, or
   * `operatorToken`), all groups both serve or `groups`, and with `since`/`until` only that `[since, until)`
   * range of each (partial sync, ms since 1970). Resolves with the node's report of what moved.
   */
  async syncOnce(
    peer: string,
    options: { groups?: string[]; since?: number; until?: number; operatorToken?: string; signal?: AbortSignal } = {},
  ): Promise<SyncOnceReport> {
    const { groups, since, until, operatorToken, signal } = options;
    for (const [name, v] of [["since", since], ["until", until]] as const) {
      if (v !== undefined && (!Number.isSafeInteger(v) || v < 0)) {
        throw new TypeError(`Cannot sync with ${name} ${v}: expected integer milliseconds since 1970`);
      }
    }
    if (since !== undefined && until !== undefined && since >= until) {
      throw new TypeError(`Cannot sync the range [${since}, ${until}): since must be before until`);
    }
    const body = new TextEncoder().encode(JSON.stringify({
      peer,
      ...(groups?.length ? { groups: groups.map(groupHex) } : {}),
      ...(since !== undefined ? { since } : {}),
      ...(until !== undefined ? { until } : {}),
    }));
    const init: RequestInit2 = {
      method: "POST",
      body,
      headers: { "content-type": "application/json" },
      auth: "none",
      timeoutMs: SYNC_ONCE_TIMEOUT_MS,
      ...(signal ? { signal } : {}),
    };
    const a = await this.#fetchWith("/v1/sync/once", init, operatorToken ?? null, async (res) => ({
      status: res.status,
      headers: res.headers,
      body: new Uint8Array(await res.arrayBuffer()),
    }));
    if (a.status < 200 || a.status > 299) throw this.#errorOf(a.status, a.body);
    return JSON.parse(new TextDecoder().decode(a.body)) as SyncOnceReport;
  }

  /** One event by id (exact bytes; the id is checked). Throws `NOT_FOUND`. */
  async event(id: string): Promise<ClientEvent> {
    if (!/^[0-9a-f]{64}$/.test(id)) {
      throw new TypeError(`Cannot use event id "${id.slice(0, 80)}": expected 64 hex digits`);
    }
    const a = await this.#request(`/v1/events/${id}`, { headers: { accept: "application/cbor" } });
    const e = await readEvent(a.body, { verify: this.#verify });
    if (e.id !== id) throw new XfClientError("BAD_RESPONSE", `Cannot accept event: asked for "${id}", got "${e.id}"`);
    return e;
  }

  /** Groups the caller may see (with a key, closed groups it is a member of too). */
  async groups(): Promise<GroupInfo[]> {
    const a = await this.#request("/v1/groups", { auth: this.key && this.#auth !== "never" ? "need" : "none" });
    const g = this.#json<{ groups?: unknown }>(a).groups;
    if (!Array.isArray(g)) throw new XfClientError("BAD_RESPONSE", "Cannot read groups: expected {groups}", a.status);
    return g.map((x: Record<string, unknown>) => ({
      id: String(x.id),
      name: String(x.name ?? ""),
      policy: policyOf(x.policy),
      count: Number(x.count ?? 0),
      root: String(x.root ?? ""),
    }));
  }

  /** A group's owner, admins and members. */
  async members(gid: string | Uint8Array): Promise<Members> {
    const a = await this.#request(`/v1/groups/${groupHex(gid)}/members`);
    const j = this.#json<{ owner?: unknown; members?: unknown }>(a);
    if (typeof j.owner !== "string" || !Array.isArray(j.members)) {
      throw new XfClientError("BAD_RESPONSE", "Cannot read members: expected {owner, members}", a.status);
    }
    return {
      owner: j.owner,
      members: j.members.map((m: Record<string, unknown>) => ({ key: String(m.key), role: String(m.role) as Role })),
    };
  }

  /** A group's Merkle root, event count and tree depth. */
  async merkle(gid: string | Uint8Array): Promise<MerkleInfo> {
    const a = await this.#request(`/v1/groups/${groupHex(gid)}/merkle`);
    const j = this.#json<Partial<MerkleInfo>>(a);
    if (typeof j.root !== "string" || typeof j.count !== "number" || typeof j.depth !== "number") {
      throw new XfClientError("BAD_RESPONSE", "Cannot read Merkle info: expected {root, count, depth}", a.status);
    }
    return { root: j.root, count: j.count, depth: j.depth };
  }

  /** The inclusion proof of event `id` in group `gid` (CBOR bytes; check with `verifyProof`). */
  async proof(gid: string | Uint8Array, id: string): Promise<Uint8Array> {
    return (await this.#request(`/v1/groups/${groupHex(gid)}/proof/${id}`, { headers: { accept: "application/cbor" } }))
      .body;
  }

  /**
   * Whether event `id` is in the group's current Merkle tree: proof and
   * root fetched, then checked. Asked twice if the root moved between.
   * Rejects with `BAD_PROOF` when the node answers a proof that does not parse.
   */
  async verifyInclusion(gid: string | Uint8Array, id: string): Promise<boolean> {
    for (let i = 0; i < 2; i++) {
      const proof = await this.proof(gid, id);
      const { root } = await this.merkle(gid);
      const r = fromHex(root), e = fromHex(id);
      if (!r || !e || r.length !== 32 || e.length !== 32) return false;
      let included: boolean;
      try {
        included = checkProof(proof, e, r);
      } catch (err) {
        throw new XfClientError("BAD_PROOF", `The node's proof of event "${id}": ${(err as Error).message}`, 0, {
          cause: err,
        });
      }
      if (included) return true;
    }
    return false;
  }

  /** Subscribe to a group's events: backfill, then live; reconnects and resumes (see `SubscribeOptions`). */
  subscribe(gid: string | Uint8Array, options: SubscribeOptions): Subscription {
    const g = groupHex(gid);
    return startSubscription(
      {
        baseUrl: this.url,
        fetch: this.#fetch,
        WebSocket: this.#ws,
        hasKey: this.key !== null && this.#auth !== "never",
        verify: this.#verify,
        timeoutMs: this.#timeoutMs,
        token: async (refresh) => (await this.token({ refresh })).token,
        publish: (gid, bytes) => this.publish(gid, bytes),
        errorOf: (status, body) => this.#errorOf(status, body),
      },
      g,
      options,
    );
  }
}

function idOf(bytes: Uint8Array): string {
  return toHex(eventIdOf(bytes));
}

function throwIfRejected(r: PublishResult): void {
  if (r.status !== "rejected") return;
  const code = r.code ?? "INTERNAL";
  throw new XfClientError(
    code,
    r.message ?? `Event "${r.id}" was rejected`,
    (ERROR_STATUS as Record<string, number>)[code] ?? 0,
  );
}
