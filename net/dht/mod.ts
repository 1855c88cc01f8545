/**
 * The DHT core of Xaeroflux: per-group Kademlia routing tables, the
 * iterative lookup as a pure state machine, and signed announcement records.
 * No sockets and no timers here; the simulated network that tests them is
 * `tests/_dht_sim.ts` (test support, not part of the node).
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { Lookup, nodeIdOf, RoutingTable } from "./mod.ts";
 * const key = (n: number) => new Uint8Array(32).fill(n);
 * const table = new RoutingTable(nodeIdOf(key(0)));
 * table.insert({ id: nodeIdOf(key(1)), key: key(1), addr: "ws://peer", lastSeen: 0 });
 * const lookup = new Lookup(table.self);
 * lookup.start(nodeIdOf(key(2)), table.closest(nodeIdOf(key(2))));
 * assert(lookup.next().length === 1);
 * ```
 *
 * @module
 */

export * from "./constants.ts";
export * from "./routing.ts";
export * from "./lookup.ts";
export * from "./records.ts";
