/**
 * Kademlia's iterative lookup as a pure state machine: it decides whom to ask
 * and when it is finished; the caller sends the requests, runs the timers and
 * feeds back what happened. No sockets, no clock.
 *
 * The lookup keeps a shortlist sorted by XOR distance to the target. It
 * keeps at most α requests in flight, always to the closest unqueried
 * contacts among the k closest it knows that have not failed, and it is done
 * when those k have all answered. A contact that fails leaves the shortlist,
 * so the next one moves up. Garbage from one responder cannot stall it:
 * responses are capped at {@linkcode RESPONSE_CONTACTS_MAX} contacts, a
 * responder whose introductions keep failing is distrusted and its
 * unqueried introductions are dropped, and the whole lookup sends at most
 * {@linkcode LOOKUP_REQUESTS_MAX} requests.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { Lookup } from "./lookup.ts";
 * import { nodeIdOf } from "./routing.ts";
 * const key = (n: number) => new Uint8Array(32).fill(n);
 * const contact = (n: number) => ({ id: nodeIdOf(key(n)), key: key(n), addr: `sim:${n}`, lastSeen: 0 });
 * const lookup = new Lookup(nodeIdOf(key(0)));
 * lookup.start(nodeIdOf(key(9)), [contact(1)]);
 * const [req] = lookup.next();
 * lookup.onResponse(req!.to.id, [contact(2)]);
 * for (const r of lookup.next()) lookup.onTimeout(r.to.id);
 * assert(lookup.done() && lookup.result().length === 1);
 * ```
 *
 * @module
 */

import {
  ADDR_BYTES_MAX,
  ALPHA,
  K_BUCKET,
  LOOKUP_DISTRUST_FAILURES_MAX,
  LOOKUP_REQUESTS_MAX,
  LOOKUP_SHORTLIST_MAX,
  RESPONSE_CONTACTS_MAX,
} from "../../core/limits.ts";
import { bytesEqual } from "../../core/bytes.ts";
import { ID_BYTES, KEY_BYTES } from "./constants.ts";
import { compareDistance, type Contact } from "./routing.ts";

/** A find-node request the caller should send now. */
export interface LookupRequest {
  /** Whom to ask. */
  to: Contact;
  /** Its wave: 1 for a seed, else 1 + the wave of the response that revealed it. */
  wave: number;
}

/** What a lookup has cost so far. */
export interface LookupStats {
  /** Requests handed out by {@linkcode Lookup.next}. */
  requests: number;
  /** Responses accepted. */
  responses: number;
  /** Requests that timed out. */
  timeouts: number;
  /** Sequential rounds: the highest wave of any request sent. */
  waves: number;
  /** Responders distrusted because their introductions kept failing. */
  distrusted: number;
  /** Contacts ignored: malformed, over the per-response cap, or from distrusted responders. */
  ignored: number;
}

/** Options of a {@linkcode Lookup}. */
export interface LookupOptions {
  /** Size of the result; default {@linkcode K_BUCKET}. */
  k?: number;
  /** Requests in flight at most; default {@linkcode ALPHA}. */
  alpha?: number;
  /** Requests in all at most; default {@linkcode LOOKUP_REQUESTS_MAX}. */
  requestsMax?: number;
  /** Contacts in the shortlist at most; default {@linkcode LOOKUP_SHORTLIST_MAX}. */
  shortlistMax?: number;
  /**
   * Times a contact is asked again after a timeout before it counts as
   * failed; default 0. Worth 1 over a lossy datagram transport, not over
   * WebSocket, where a timeout means the peer is gone.
   */
  retries?: number;
}

type State = "fresh" | "inflight" | "ok" | "failed";

interface Entry {
  contact: Contact;
  /** The first 6 bytes of the distance to the target as a number: decides nearly every comparison. */
  near: number;
  state: State;
  wave: number;
  /** Timeouts so far. */
  timeouts: number;
  /** Whether the local routing table supplied it (as a seed). */
  local: boolean;
  /** The responders that revealed it. */
  introducers: Entry[];
  /** As a responder: how many of the contacts it revealed answered. */
  introOk: number;
  /** As a responder: how many of the contacts it revealed failed. */
  introFailed: number;
  /** As a responder: whether its revelations are no longer believed. */
  distrusted: boolean;
}

/**
 * Entries by id, hashed on the id's first 6 bytes. Ids sharing those bytes
 * (only a forger makes them) share a slot and are told apart in full.
 */
class IdMap {
  #m = new Map<number, Entry[]>();
  static #hash(id: Uint8Array): number {
    return ((id[0]! << 16) | (id[1]! << 8) | id[2]!) * 16777216 + ((id[3]! << 16) | (id[4]! << 8) | id[5]!);
  }
  get(id: Uint8Array): Entry | undefined {
    const slot = this.#m.get(IdMap.#hash(id));
    if (!slot) return undefined;
    for (const e of slot) if (bytesEqual(e.contact.id, id)) return e;
    return undefined;
  }
  /** Add `e` (its id must not be present). */
  add(e: Entry): void {
    const h = IdMap.#hash(e.contact.id);
    const slot = this.#m.get(h);
    if (slot) slot.push(e);
    else this.#m.set(h, [e]);
  }
  delete(e: Entry): void {
    const h = IdMap.#hash(e.contact.id);
    const slot = this.#m.get(h);
    if (!slot) return;
    const at = slot.indexOf(e);
    if (at >= 0) slot.splice(at, 1);
    if (slot.length === 0) this.#m.delete(h);
  }
  clear(): void {
    this.#m.clear();
  }
}

/** Order entries by distance to `target`: the 48-bit prefix decides unless it ties. */
function compareEntries(target: Uint8Array, a: Entry, b: Entry): number {
  return a.near - b.near || compareDistance(target, a.contact.id, b.contact.id);
}

/** The first 6 bytes of the XOR distance of `id` and `t`, as a number. */
function near48(id: Uint8Array, t: Uint8Array): number {
  const hi = ((id[0]! ^ t[0]!) << 16) | ((id[1]! ^ t[1]!) << 8) | (id[2]! ^ t[2]!);
  const lo = ((id[3]! ^ t[3]!) << 16) | ((id[4]! ^ t[4]!) << 8) | (id[5]! ^ t[5]!);
  return hi * 16777216 + lo;
}

function wellFormed(c: Contact): boolean {
  return typeof c === "object" && c !== null &&
    c.id instanceof Uint8Array && c.id.length === ID_BYTES &&
    c.key instanceof Uint8Array && c.key.length === KEY_BYTES &&
    typeof c.addr === "string" && c.addr.length > 0 && c.addr.length <= ADDR_BYTES_MAX;
}

function limit(name: string, v: number | undefined, dflt: number): number {
  if (v === undefined) return dflt;
  if (!Number.isSafeInteger(v) || v < 1) {
    throw new RangeError(`Cannot make lookup: ${name} "${v}" is not a positive integer`);
  }
  return v;
}

/** One iterative find-node lookup; see the module doc. Reusable: {@linkcode Lookup.start} resets it. */
export class Lookup {
  /** The local node id; never queried, never in the result. */
  readonly self: Uint8Array;
  /** Size of the result. */
  readonly k: number;
  /** Requests in flight at most. */
  readonly alpha: number;
  /** Requests in all at most. */
  readonly requestsMax: number;
  /** Contacts in the shortlist at most. */
  readonly shortlistMax: number;
  /** Times a contact is asked again after a timeout. */
  readonly retries: number;
  #target: Uint8Array = new Uint8Array(ID_BYTES);
  /** Not failed, closest first. */
  #shortlist: Entry[] = [];
  /** Every contact ever placed, by id key (failed ones included, so they are not retried). */
  #known = new IdMap();
  /** Unqueried contacts dropped because their introducers were distrusted. */
  #dropped = new IdMap();
  #inflight = 0;
  #stats: LookupStats = { requests: 0, responses: 0, timeouts: 0, waves: 0, distrusted: 0, ignored: 0 };

  /** A lookup run by the node whose id is `self`. */
  constructor(self: Uint8Array, options: LookupOptions = {}) {
    if (self.length !== ID_BYTES) {
      throw new RangeError(`Cannot make lookup: local id has "${self.length}" bytes, not ${ID_BYTES}`);
    }
    this.self = self.slice();
    this.k = limit("k", options.k, K_BUCKET);
    this.alpha = limit("alpha", options.alpha, ALPHA);
    this.requestsMax = limit("requestsMax", options.requestsMax, LOOKUP_REQUESTS_MAX);
    this.shortlistMax = Math.max(this.k, limit("shortlistMax", options.shortlistMax, LOOKUP_SHORTLIST_MAX));
    this.retries = options.retries ?? 0;
    if (!Number.isSafeInteger(this.retries) || this.retries < 0) {
      throw new RangeError(`Cannot make lookup: retries "${this.retries}" is not a non-negative integer`);
    }
  }

  /** The id being looked up. */
  get target(): Uint8Array {
    return this.#target;
  }

  /** Begin (or restart) a lookup of `target` from `seeds`, usually the routing table's closest. */
  start(target: Uint8Array, seeds: readonly Contact[]): void {
    if (target.length !== ID_BYTES) {
      throw new RangeError(`Cannot start lookup: target has "${target.length}" bytes, not ${ID_BYTES}`);
    }
    this.#target = target.slice();
    this.#shortlist = [];
    this.#known.clear();
    this.#dropped.clear();
    this.#inflight = 0;
    this.#stats = { requests: 0, responses: 0, timeouts: 0, waves: 0, distrusted: 0, ignored: 0 };
    for (const c of seeds) this.#offer(c, 1, null);
  }

  /** The requests to send now, closest first; never more than α in flight. */
  next(): LookupRequest[] {
    const out: LookupRequest[] = [];
    if (this.done()) return out;
    const top = Math.min(this.k, this.#shortlist.length);
    for (let i = 0; i < top && this.#inflight < this.alpha && this.#stats.requests < this.requestsMax; i++) {
      const e = this.#shortlist[i]!;
      if (e.state !== "fresh") continue;
      e.state = "inflight";
      this.#inflight++;
      this.#stats.requests++;
      if (e.wave > this.#stats.waves) this.#stats.waves = e.wave;
      out.push({ to: { ...e.contact }, wave: e.wave });
    }
    return out;
  }

  /**
   * `from` answered with `contacts`. Returns false (and changes nothing) if
   * no request to `from` was in flight, e.g. a late answer after a timeout.
   */
  onResponse(from: Uint8Array, contacts: readonly Contact[]): boolean {
    const e = from.length === ID_BYTES ? this.#known.get(from) : undefined;
    if (!e || e.state !== "inflight") return false;
    e.state = "ok";
    this.#inflight--;
    this.#stats.responses++;
    this.#credit(e, "ok");
    const n = Array.isArray(contacts) ? contacts.length : 0;
    if (n > RESPONSE_CONTACTS_MAX) this.#stats.ignored += n - RESPONSE_CONTACTS_MAX;
    for (let i = 0; i < Math.min(n, RESPONSE_CONTACTS_MAX); i++) {
      const c = contacts[i]!;
      if (!wellFormed(c) || e.distrusted) {
        this.#stats.ignored++;
        continue;
      }
      this.#offer(c, e.wave + 1, e);
    }
    return true;
  }

  /**
   * The request to `from` timed out (or failed). It is asked again if it has
   * retries left, else it leaves the shortlist. Returns false if no request
   * to it was in flight.
   */
  onTimeout(from: Uint8Array): boolean {
    const e = from.length === ID_BYTES ? this.#known.get(from) : undefined;
    if (!e || e.state !== "inflight") return false;
    this.#inflight--;
    this.#stats.timeouts++;
    if (++e.timeouts <= this.retries) {
      e.state = "fresh";
      return true;
    }
    e.state = "failed";
    const at = this.#shortlist.indexOf(e);
    if (at >= 0) this.#shortlist.splice(at, 1);
    this.#credit(e, "failed");
    return true;
  }

  /**
   * Whether the lookup is over: the k closest contacts that have not failed
   * have all answered, or nobody is left to ask, or the request budget is
   * spent and nothing is in flight.
   */
  done(): boolean {
    if (this.#stats.requests >= this.requestsMax) {
      return this.#inflight === 0 || this.#topAnswered();
    }
    return this.#topAnswered();
  }

  /** Requests sent and not yet answered or timed out. */
  inflight(): number {
    return this.#inflight;
  }

  /** The k closest contacts that answered, closest first. */
  result(): Contact[] {
    const out: Contact[] = [];
    for (const e of this.#shortlist) {
      if (out.length >= this.k) break;
      if (e.state === "ok") out.push({ ...e.contact });
    }
    return out;
  }

  /** What the lookup has cost so far. */
  stats(): LookupStats {
    return { ...this.#stats };
  }

  #topAnswered(): boolean {
    const top = Math.min(this.k, this.#shortlist.length);
    for (let i = 0; i < top; i++) if (this.#shortlist[i]!.state !== "ok") return false;
    return true;
  }

  /** Credit the responders that introduced `e` with its outcome; distrust the ones that keep lying. */
  #credit(e: Entry, outcome: "ok" | "failed"): void {
    for (const s of e.introducers) {
      if (outcome === "ok") s.introOk++;
      else s.introFailed++;
      if (!s.distrusted && s.introFailed >= LOOKUP_DISTRUST_FAILURES_MAX && s.introFailed > 2 * s.introOk) {
        s.distrusted = true;
        this.#stats.distrusted++;
        this.#dropDistrusted();
      }
    }
  }

  #trusted(e: Entry): boolean {
    return e.local || e.introducers.some((s) => !s.distrusted);
  }

  #dropDistrusted(): void {
    this.#shortlist = this.#shortlist.filter((e) => {
      if (e.state !== "fresh" || this.#trusted(e)) return true;
      this.#known.delete(e);
      this.#dropped.add(e);
      return false;
    });
  }

  /** Place a contact revealed by `introducer` (null: the local table). */
  #offer(c: Contact, wave: number, introducer: Entry | null): void {
    if (!wellFormed(c)) {
      this.#stats.ignored++;
      return;
    }
    if (bytesEqual(c.id, this.self)) return;
    const known = this.#known.get(c.id);
    if (known) {
      if (known === introducer) return; // a responder naming itself adds nothing
      if (introducer === null) known.local = true;
      else if (!known.introducers.includes(introducer)) known.introducers.push(introducer);
      if (known.state === "fresh" && wave < known.wave) known.wave = wave;
      return;
    }
    let e = this.#dropped.get(c.id);
    if (e) {
      this.#dropped.delete(e);
      if (introducer === null) e.local = true;
      else e.introducers.push(introducer);
      e.wave = Math.min(e.wave, wave);
    } else {
      e = {
        contact: { id: c.id, key: c.key, addr: c.addr, lastSeen: c.lastSeen },
        near: near48(c.id, this.#target),
        state: "fresh",
        wave,
        timeouts: 0,
        local: introducer === null,
        introducers: introducer === null ? [] : [introducer],
        introOk: 0,
        introFailed: 0,
        distrusted: false,
      };
    }
    // Binary search for its place, closest first.
    let lo = 0;
    let hi = this.#shortlist.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (compareEntries(this.#target, this.#shortlist[mid]!, e) < 0) lo = mid + 1;
      else hi = mid;
    }
    if (lo >= this.shortlistMax) return; // farther than everything kept: not worth remembering
    this.#shortlist.splice(lo, 0, e);
    this.#known.add(e);
    // Trim: drop the farthest unqueried contacts past the bound.
    for (let i = this.#shortlist.length - 1; this.#shortlist.length > this.shortlistMax && i >= 0; i--) {
      const x = this.#shortlist[i]!;
      if (x.state !== "fresh") continue;
      this.#shortlist.splice(i, 1);
      this.#known.delete(x);
    }
  }
}
