/**
 * A simulated network for the DHT core: a virtual clock and an event queue,
 * N nodes each with a {@linkcode RoutingTable}, message latency drawn from a
 * configurable distribution, message loss, churn, and noise nodes that answer
 * find-node requests with garbage. Everything is deterministic from a seed.
 *
 * The simulation speaks two messages, `find_node` and `ping`, with the same
 * rules a real node follows: a node adds whoever sends it a request, a
 * requester adds whoever answers, a full bucket pings its least recently seen
 * contact before replacing it, and a request that times out drops the
 * contact. A joining node knows one bootstrap node and looks up its own id.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { DhtSim } from "./_dht_sim.ts";
 * const sim = new DhtSim({ seed: 1 });
 * sim.grow(50);
 * const [a, b] = [sim.node(3), sim.node(40)];
 * const out = sim.lookup(a, b.id);
 * assert(out.result.some((c) => c.addr === b.addr));
 * ```
 *
 * @module
 */

import { ALPHA, JOIN_ATTEMPTS_MAX, K_BUCKET, LOOKUP_REQUESTS_MAX } from "../core/limits.ts";
import { bytesEqual } from "../core/bytes.ts";
import { sha256 } from "@noble/hashes/sha2";
import { Lookup, type LookupStats } from "../net/dht/lookup.ts";
import {
  commonPrefixLength,
  compareDistance,
  type Contact,
  RoutingTable,
  tableAnswered,
  tableHeard,
  tablePinged,
  tableUnanswered,
} from "../net/dht/routing.ts";
import { Prng } from "../core/bytes.ts";

/** How long one message takes, one way. */
export type LatencyModel =
  /** Always `ms`. */
  | { kind: "fixed"; ms: number }
  /** Uniform in [`minMs`, `maxMs`). */
  | { kind: "uniform"; minMs: number; maxMs: number }
  /** Log-normal with the given median and shape, capped at `maxMs`. */
  | { kind: "lognormal"; medianMs: number; sigma: number; maxMs: number };

/** What a node does with the find-node requests it gets. */
export type NodeRole =
  /** Answers with the k closest contacts of its table. */
  | "honest"
  /** Answers with k made-up contacts very close to the target, none of which exist. */
  | "garbage"
  /** Answers with only itself. */
  | "self";

/** Options of a {@linkcode DhtSim}. */
export interface SimOptions {
  /** Seed of every random choice. */
  seed: number;
  /** One-way latency; default log-normal, median 40 ms, σ 0.5, capped at 800 ms. */
  latency?: LatencyModel;
  /** Chance that any one message is lost; default 0. */
  lossRate?: number;
  /** How long a requester waits for an answer; default 1000 ms. */
  timeoutMs?: number;
  /** Fraction of nodes added by {@linkcode DhtSim.grow} and joins that are noise; default 0. */
  noiseFraction?: number;
  /** What noise nodes do: one behaviour, or a random mix; default `"mixed"`. */
  noiseMode?: "garbage" | "self" | "mixed";
  /** Kademlia k; default {@linkcode K_BUCKET}. */
  k?: number;
  /** Kademlia α; default {@linkcode ALPHA}. */
  alpha?: number;
  /**
   * After its self-lookup, a joining node refreshes every bucket farther
   * than its closest neighbour, as in the Kademlia paper; default true.
   */
  refreshOnJoin?: boolean;
  /** Times a lookup asks a contact again after a timeout; default 0 (the `retries` option of {@linkcode Lookup}). */
  lookupRetries?: number;
}

/** A node of the simulation. */
export interface SimNode {
  /** Position in {@linkcode DhtSim.nodes}, in order of creation. */
  index: number;
  /** Node id, SHA-256 of `key`. */
  id: Uint8Array;
  /** Public key (random bytes: the simulation signs nothing). */
  key: Uint8Array;
  /** Address, `sim:<index>`. */
  addr: string;
  /** What it answers. */
  role: NodeRole;
  /** False once it has left. */
  alive: boolean;
  /** Its routing table. */
  table: RoutingTable;
}

/** The outcome of one lookup. */
export interface LookupOutcome {
  /** The id looked up. */
  target: Uint8Array;
  /** The k closest nodes that answered, closest first. */
  result: Contact[];
  /** Requests, waves, timeouts. */
  stats: LookupStats;
  /** Virtual ms from start to done. */
  durationMs: number;
}

/** Messages sent so far, by kind. */
export interface SimCounters {
  /** `find_node` requests sent. */
  findNode: number;
  /** Pings sent (bucket-full checks). */
  ping: number;
  /** Messages lost in transit (requests and answers). */
  lost: number;
  /** Messages to nodes that had left or never existed. */
  unreachable: number;
}

interface Event {
  t: number;
  seq: number;
  run: () => void;
}

/** A binary min-heap of events by (time, sequence). */
class EventQueue {
  #heap: Event[] = [];
  get size(): number {
    return this.#heap.length;
  }
  push(e: Event): void {
    const h = this.#heap;
    h.push(e);
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!before(h[i]!, h[p]!)) break;
      [h[i], h[p]] = [h[p]!, h[i]!];
      i = p;
    }
  }
  pop(): Event | undefined {
    const h = this.#heap;
    const top = h[0];
    const last = h.pop();
    if (h.length > 0 && last) {
      h[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < h.length && before(h[l]!, h[m]!)) m = l;
        if (r < h.length && before(h[r]!, h[m]!)) m = r;
        if (m === i) break;
        [h[i], h[m]] = [h[m]!, h[i]!];
        i = m;
      }
    }
    return top;
  }
}

function before(a: Event, b: Event): boolean {
  return a.t < b.t || (a.t === b.t && a.seq < b.seq);
}

/** A lookup being driven by the simulation. */
export interface ActiveLookup {
  /** The node running it. */
  node: SimNode;
  /** Its state machine. */
  lookup: Lookup;
  /** Virtual ms when it started. */
  startedAt: number;
  /** Virtual ms when it was done, or null while it runs. */
  finishedAt: number | null;
}

const DEFAULT_LATENCY: LatencyModel = { kind: "lognormal", medianMs: 40, sigma: 0.5, maxMs: 800 };

/** The simulated network; see the module doc. */
export class DhtSim {
  /** The random source of every choice the simulation makes. */
  readonly rng: Prng;
  /** Kademlia k. */
  readonly k: number;
  /** Kademlia α. */
  readonly alpha: number;
  /** How long a requester waits for an answer. */
  readonly timeoutMs: number;
  readonly #latency: LatencyModel;
  readonly #loss: number;
  readonly #noiseFraction: number;
  readonly #noiseMode: "garbage" | "self" | "mixed";
  readonly #refreshOnJoin: boolean;
  readonly #retries: number;
  #now = 0;
  #seq = 0;
  #queue = new EventQueue();
  #nodes: SimNode[] = [];
  #counters: SimCounters = { findNode: 0, ping: 0, lost: 0, unreachable: 0 };
  /** Pings out, by `"<from index>:<to index>"`, so one contact is not pinged twice at once. */
  #pinging = new Set<string>();

  /** An empty network. */
  constructor(options: SimOptions) {
    this.rng = new Prng(options.seed);
    this.k = options.k ?? K_BUCKET;
    this.alpha = options.alpha ?? ALPHA;
    this.timeoutMs = options.timeoutMs ?? 1000;
    this.#latency = options.latency ?? DEFAULT_LATENCY;
    this.#loss = options.lossRate ?? 0;
    this.#noiseFraction = options.noiseFraction ?? 0;
    this.#noiseMode = options.noiseMode ?? "mixed";
    this.#refreshOnJoin = options.refreshOnJoin ?? true;
    this.#retries = options.lookupRetries ?? 0;
  }

  /** The virtual clock, ms. */
  now(): number {
    return this.#now;
  }

  /** Every node ever created, alive or not, by index. */
  nodes(): readonly SimNode[] {
    return this.#nodes;
  }

  /** The node with this index. */
  node(index: number): SimNode {
    const n = this.#nodes[index];
    if (!n) throw new RangeError(`Cannot find simulated node "${index}"`);
    return n;
  }

  /** The nodes that have not left. */
  alive(): SimNode[] {
    return this.#nodes.filter((n) => n.alive);
  }

  /** Messages sent so far. */
  counters(): SimCounters {
    return { ...this.#counters };
  }

  /**
   * A new node that knows nobody yet. Its role is `role`, or else drawn from
   * the noise options (the first node is always honest: it is the bootstrap).
   */
  addNode(role?: NodeRole): SimNode {
    const index = this.#nodes.length;
    const key = this.rng.bytes(32);
    const id = sha256(key);
    const r = role ?? (index > 0 && this.rng.float() < this.#noiseFraction ? this.#noiseRole() : "honest");
    const node: SimNode = {
      index,
      id,
      key,
      addr: `sim:${index}`,
      role: r,
      alive: true,
      // The simulation derives every id itself, so the per-insert hash check is skipped.
      table: new RoutingTable(id, { k: this.k, verifyIds: false }),
    };
    this.#nodes.push(node);
    return node;
  }

  /** Add `count` nodes, each joining through node 0 in turn (node 0 is created first if needed). */
  grow(count: number): void {
    if (this.#nodes.length === 0) {
      this.addNode("honest");
      count--;
    }
    for (let i = 0; i < count; i++) this.join(this.addNode(), this.node(0));
  }

  /**
   * `node` joins through `via`: it looks up its own id starting from `via`
   * alone (asking again, up to {@linkcode JOIN_ATTEMPTS_MAX} times, while
   * nobody answers), then (unless `refreshOnJoin` is off) refreshes its far
   * buckets. Returns the last self-lookup's outcome.
   */
  join(node: SimNode, via: SimNode): LookupOutcome {
    let out = this.#finish(this.startJoin(node, via));
    // Nobody answered (the bootstrap or its answer was lost): ask again, as a real node would.
    for (let i = 1; i < JOIN_ATTEMPTS_MAX && out.stats.responses === 0; i++) {
      out = this.#finish(this.startJoin(node, via));
    }
    if (this.#refreshOnJoin) this.refresh(node);
    return out;
  }

  /**
   * Refresh every bucket of `node` farther than its closest neighbour: look
   * up a random id in each. Returns the requests it took.
   */
  refresh(node: SimNode): number {
    const nearest = node.table.closest(node.id, 1)[0];
    if (!nearest) return 0;
    const depth = commonPrefixLength(node.id, nearest.id);
    let requests = 0;
    for (let bit = 0; bit < depth; bit++) {
      requests += this.lookup(node, randomIdInBucket(node.id, bit, this.rng)).stats.requests;
    }
    return requests;
  }

  /**
   * Start a join without running it; drive it with {@linkcode DhtSim.runUntil}
   * and watch `finishedAt`.
   */
  startJoin(node: SimNode, via: SimNode): ActiveLookup {
    return this.#start(node, node.id, [contactOf(via, this.#now)]);
  }

  /** `from` looks up `target`, starting from its own routing table. */
  lookup(from: SimNode, target: Uint8Array): LookupOutcome {
    return this.#finish(this.#start(from, target, from.table.closest(target, this.k)));
  }

  /** The node leaves silently: it stops answering; others find out by timeouts. */
  leave(node: SimNode): void {
    node.alive = false;
  }

  /**
   * Run events until `done()` holds, the queue is empty, or the clock passes
   * `untilMs`. Returns whether `done()` holds.
   */
  runUntil(done: () => boolean, untilMs = Infinity): boolean {
    while (!done()) {
      const e = this.#queue.pop();
      if (!e) return false;
      if (e.t > untilMs) {
        this.#queue.push(e);
        this.#now = untilMs;
        return done();
      }
      this.#now = e.t;
      e.run();
    }
    return true;
  }

  /** Run every queued event (late answers, pings) to completion. */
  settle(): void {
    this.runUntil(() => false);
  }

  /** The `n` alive nodes closest to `target` by brute force, closest first, leaving out `except`. */
  trueClosest(target: Uint8Array, n: number, except?: SimNode): SimNode[] {
    return this.#nodes
      .filter((x) => x.alive && x !== except)
      .sort((a, b) => compareDistance(target, a.id, b.id))
      .slice(0, n);
  }

  #noiseRole(): NodeRole {
    if (this.#noiseMode === "mixed") return this.rng.float() < 0.5 ? "garbage" : "self";
    return this.#noiseMode;
  }

  #finish(a: ActiveLookup): LookupOutcome {
    this.runUntil(() => a.finishedAt !== null);
    return {
      target: a.lookup.target,
      result: a.lookup.result(),
      stats: a.lookup.stats(),
      durationMs: (a.finishedAt ?? this.#now) - a.startedAt,
    };
  }

  #at(delay: number, run: () => void): void {
    this.#queue.push({ t: this.#now + delay, seq: this.#seq++, run });
  }

  #delay(): number {
    const m = this.#latency;
    switch (m.kind) {
      case "fixed":
        return m.ms;
      case "uniform":
        return m.minMs + this.rng.float() * (m.maxMs - m.minMs);
      case "lognormal":
        return Math.min(m.maxMs, m.medianMs * Math.exp(m.sigma * this.rng.normal()));
    }
  }

  /** Deliver `run` at the node with address `addr` after one latency, unless lost or nobody is there. */
  #send(addr: string, run: (to: SimNode) => void): void {
    if (this.rng.float() < this.#loss) {
      this.#counters.lost++;
      return;
    }
    const to = this.#byAddr(addr);
    const delay = this.#delay();
    this.#at(delay, () => {
      if (to && to.alive) run(to);
      else this.#counters.unreachable++;
    });
  }

  #byAddr(addr: string): SimNode | undefined {
    if (!addr.startsWith("sim:")) return undefined;
    const i = Number(addr.slice(4));
    return Number.isSafeInteger(i) ? this.#nodes[i] : undefined;
  }

  #start(node: SimNode, target: Uint8Array, seeds: Contact[]): ActiveLookup {
    const lookup = new Lookup(node.id, { k: this.k, alpha: this.alpha, retries: this.#retries });
    lookup.start(target, seeds);
    const a: ActiveLookup = { node, lookup, startedAt: this.#now, finishedAt: null };
    this.#pump(a);
    return a;
  }

  /** Send what the lookup wants sent; note when it is done. */
  #pump(a: ActiveLookup): void {
    if (a.finishedAt !== null) return;
    for (const req of a.lookup.next()) this.#findNode(a, req.to);
    if (a.lookup.done()) a.finishedAt = this.#now;
  }

  #findNode(a: ActiveLookup, to: Contact): void {
    const from = a.node;
    const target = a.lookup.target;
    let answered = false;
    this.#counters.findNode++;
    this.#send(to.addr, (server) => {
      this.#heard(server, from);
      const contacts = this.#answer(server, target);
      this.#send(from.addr, () => {
        if (!from.alive) return;
        answered = true;
        // The transport authenticated the answer: the contact is the server as it is.
        tableAnswered(from.table, contactOf(server, this.#now), this.#now, (old) => this.#ping(from, old));
        if (a.lookup.onResponse(server.id, contacts)) this.#pump(a);
      });
    });
    this.#at(this.timeoutMs, () => {
      if (answered || !from.alive) return;
      if (a.lookup.onTimeout(to.id)) {
        tableUnanswered(from.table, to.id);
        this.#pump(a);
      }
    });
  }

  /** What `server` answers to a find-node for `target`. */
  #answer(server: SimNode, target: Uint8Array): Contact[] {
    switch (server.role) {
      case "honest":
        return server.table.closest(target, this.k);
      case "self":
        return [contactOf(server, this.#now)];
      case "garbage":
        return Array.from({ length: this.k }, () => {
          // Ids sharing 24 bits with the target: closer than any real node,
          // and of nodes that do not exist.
          const id = this.rng.bytes(32);
          id.set(target.subarray(0, 3));
          return { id, key: this.rng.bytes(32), addr: `sim:fake:${this.rng.u32()}`, lastSeen: this.#now };
        });
    }
  }

  /** `server` got a request from `client`: add it, pinging the oldest contact if the bucket is full. */
  #heard(server: SimNode, client: SimNode): void {
    tableHeard(server.table, contactOf(client, this.#now), (old) => this.#ping(server, old));
  }

  #ping(from: SimNode, to: Contact): void {
    const target = this.#byAddr(to.addr);
    const tag = `${from.index}:${target?.index ?? to.addr}`;
    if (this.#pinging.has(tag)) return;
    this.#pinging.add(tag);
    this.#counters.ping++;
    let answered = false;
    this.#send(to.addr, (server) => {
      if (!bytesEqual(server.id, to.id)) return;
      this.#send(from.addr, () => {
        answered = true;
        this.#pinging.delete(tag);
        tablePinged(from.table, to, true, this.#now);
      });
    });
    this.#at(this.timeoutMs, () => {
      if (answered) return;
      this.#pinging.delete(tag);
      if (from.alive) tablePinged(from.table, to, false, this.#now);
    });
  }
}

/** A random id sharing exactly `bit` leading bits with `self`. */
function randomIdInBucket(self: Uint8Array, bit: number, rng: Prng): Uint8Array {
  const id = rng.bytes(self.length);
  const byte = bit >> 3;
  const mask = 0xff00 >> (bit & 7); // the bits of this byte before `bit`, as 0xff00 >> n & 0xff
  id.set(self.subarray(0, byte));
  const b = self[byte]!;
  const keep = mask & 0xff;
  const flip = 0x80 >> (bit & 7);
  id[byte] = (b & keep) | (~b & flip) | (id[byte]! & ~(keep | flip) & 0xff);
  return id;
}

/** A simulated node as a contact seen at `now`. */
export function contactOf(node: SimNode, now: number): Contact {
  return { id: node.id, key: node.key, addr: node.addr, lastSeen: now };
}

/** Options of {@linkcode runLookups}. */
export interface LookupBatchOptions {
  /** Lookups to run, each from a random alive honest node to a random alive honest node's id. */
  lookups: number;
  /**
   * Nodes that leave during the batch, and new nodes that join (through node
   * 0), as a fraction of `churnBase`, spread evenly between lookups; default 0.
   */
  churnFraction?: number;
  /** What `churnFraction` is a fraction of; default the alive nodes at the start. */
  churnBase?: number;
}

/** What {@linkcode runLookups} measured. */
export interface LookupBatch {
  /** Nodes that left during the batch. */
  left: number;
  /** Nodes that joined during the batch. */
  joined: number;
  /** Requests of each lookup. */
  requests: number[];
  /** Waves of each lookup. */
  waves: number[];
  /** Virtual ms of each lookup. */
  durationsMs: number[];
  /** Per lookup: the share of the true k closest alive nodes (brute force) in the result. */
  overlap: number[];
  /** Lookups whose result holds the target node. */
  found: number;
  /** Lookups that ended by their request budget rather than by converging. */
  exhausted: number;
}

/** Options of {@linkcode buildNetwork} and {@linkcode runScenario}. */
export interface NetworkOptions extends SimOptions {
  /** Nodes in the network: node 0 first, then each joining through node 0 in turn. */
  nodes: number;
}

/** A network built by {@linkcode buildNetwork}. */
export interface BuiltNetwork {
  /** The simulation, settled. */
  sim: DhtSim;
  /** Requests of each join's self-lookup. */
  joinRequests: number[];
}

/**
 * Build a network of `nodes` nodes, each joining through node 0, and let it settle.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { buildNetwork } from "./_dht_sim.ts";
 * const { sim } = buildNetwork({ seed: 1, nodes: 30 });
 * assert(sim.alive().length === 30);
 * ```
 */
export function buildNetwork(options: NetworkOptions): BuiltNetwork {
  const sim = new DhtSim(options);
  const joinRequests: number[] = [];
  sim.addNode("honest");
  for (let i = 1; i < options.nodes; i++) joinRequests.push(sim.join(sim.addNode(), sim.node(0)).stats.requests);
  sim.settle();
  return { sim, joinRequests };
}

/**
 * Run a batch of lookups on `sim`, with churn between them, and check each
 * against brute force.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { buildNetwork, runLookups } from "./_dht_sim.ts";
 * const { sim } = buildNetwork({ seed: 1, nodes: 60 });
 * const b = runLookups(sim, { lookups: 10, churnFraction: 0.2 });
 * assert(b.left === 12 && b.found === 10);
 * ```
 */
export function runLookups(sim: DhtSim, options: LookupBatchOptions): LookupBatch {
  const churn = Math.round((options.churnFraction ?? 0) * (options.churnBase ?? sim.alive().length));
  const out: LookupBatch = {
    left: 0,
    joined: 0,
    requests: [],
    waves: [],
    durationsMs: [],
    overlap: [],
    found: 0,
    exhausted: 0,
  };
  for (let i = 0; i < options.lookups; i++) {
    // Churn spread evenly: by lookup i, (i + 1)/lookups of it has happened.
    const due = Math.round((churn * (i + 1)) / options.lookups);
    while (out.left < due) {
      const alive = sim.alive().filter((n) => n.index !== 0);
      if (alive.length === 0) break;
      sim.leave(sim.rng.pick(alive));
      out.left++;
    }
    while (out.joined < due) {
      sim.join(sim.addNode(), sim.node(0));
      out.joined++;
    }
    const honest = sim.alive().filter((n) => n.role === "honest");
    if (honest.length < 2) break;
    const from = sim.rng.pick(honest);
    const to = sim.rng.pick(honest.filter((n) => n !== from));
    const res = sim.lookup(from, to.id);
    out.requests.push(res.stats.requests);
    out.waves.push(res.stats.waves);
    out.durationsMs.push(res.durationMs);
    if (res.stats.requests >= LOOKUP_REQUESTS_MAX) out.exhausted++;
    if (res.result.some((c) => bytesEqual(c.id, to.id))) out.found++;
    const truth = sim.trueClosest(to.id, sim.k, from);
    const got = new Set(res.result.map((c) => c.addr));
    out.overlap.push(truth.length === 0 ? 1 : truth.filter((n) => got.has(n.addr)).length / truth.length);
  }
  sim.settle();
  return out;
}

/** Options of {@linkcode runScenario}. */
export interface ScenarioOptions extends NetworkOptions, LookupBatchOptions {}

/** What {@linkcode runScenario} measured. */
export interface ScenarioReport extends LookupBatch {
  /** Nodes before the lookups. */
  nodes: number;
  /** Requests of each join's self-lookup while building the network. */
  joinRequests: number[];
  /** Routing-table sizes of the alive nodes at the end. */
  tableSizes: number[];
  /** Messages sent in the whole run. */
  counters: SimCounters;
  /** Virtual ms at the end. */
  virtualMs: number;
}

/**
 * Build a network of `nodes` nodes, run `lookups` lookups with churn
 * between them, and measure: {@linkcode buildNetwork} then
 * {@linkcode runLookups}.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { runScenario } from "./_dht_sim.ts";
 * const r = runScenario({ seed: 1, nodes: 60, lookups: 10 });
 * assert(r.found === 10);
 * ```
 */
export function runScenario(options: ScenarioOptions): ScenarioReport {
  const { sim, joinRequests } = buildNetwork(options);
  const batch = runLookups(sim, options);
  return {
    nodes: options.nodes,
    ...batch,
    joinRequests,
    tableSizes: sim.alive().map((n) => n.table.size()),
    counters: sim.counters(),
    virtualMs: sim.now(),
  };
}

/**
 * Virtual ms for a node joining a group of `groupSize` members through one of
 * them to have every member in its routing table (Infinity if it never does
 * within `limitMs`).
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { timeToFullView } from "./_dht_sim.ts";
 * assert(timeToFullView({ seed: 1 }, 5) < 2000);
 * ```
 */
export function timeToFullView(options: SimOptions, groupSize: number, limitMs = 600_000): number {
  const sim = new DhtSim(options);
  sim.grow(groupSize);
  sim.settle();
  const joiner = sim.addNode("honest");
  const start = sim.now();
  sim.startJoin(joiner, sim.node(0));
  const ok = sim.runUntil(() => joiner.table.size() >= groupSize, start + limitMs);
  return ok ? sim.now() - start : Infinity;
}
