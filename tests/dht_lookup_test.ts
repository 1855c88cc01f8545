import { Prng } from "../core/bytes.ts";
import { ALPHA, K_BUCKET, LOOKUP_DISTRUST_FAILURES_MAX, LOOKUP_REQUESTS_MAX } from "../core/limits.ts";
import { assert, assertEquals } from "@std/assert";
import { Lookup, type LookupRequest } from "../net/dht/lookup.ts";
import { compareDistance, type Contact, nodeIdOf } from "../net/dht/routing.ts";

const rng = new Prng(0x100c);

function contact(): Contact {
  const key = rng.bytes(32);
  return { id: nodeIdOf(key), key, addr: `sim:${rng.u32()}`, lastSeen: 0 };
}

/** A tiny full-knowledge network: every node answers with the true k closest it knows (everyone). */
function network(n: number): Contact[] {
  return Array.from({ length: n }, contact);
}

function closestOf(all: Contact[], target: Uint8Array, k: number): Contact[] {
  return all.slice().sort((a, b) => compareDistance(target, a.id, b.id)).slice(0, k);
}

Deno.test("Lookup keeps at most α requests in flight and finds the k closest", () => {
  const all = network(400);
  const self = contact();
  const target = rng.bytes(32);
  const l = new Lookup(self.id);
  l.start(target, all.slice(0, 5));
  const flight: LookupRequest[] = [];
  while (!l.done()) {
    flight.push(...l.next());
    assert(l.inflight() <= ALPHA && flight.length <= ALPHA, `in flight: ${flight.length}`);
    const req = flight.shift();
    if (!req) break;
    // Each node knows a random half of the network.
    const known = all.filter(() => rng.float() < 0.5);
    assert(l.onResponse(req.to.id, closestOf(known, target, K_BUCKET)));
  }
  assert(l.done());
  assertEquals(l.result().map((c) => c.addr), closestOf(all, target, K_BUCKET).map((c) => c.addr));
  const s = l.stats();
  assert(s.requests >= K_BUCKET && s.requests < 80, `requests: ${s.requests}`);
  assert(s.waves >= 2);
});

Deno.test("Lookup counts waves as 1 + the wave of the revealing response", () => {
  const [a, b, c] = [contact(), contact(), contact()];
  const l = new Lookup(contact().id, { k: 3 });
  l.start(rng.bytes(32), [a!]);
  const [r1] = l.next();
  assertEquals(r1?.wave, 1);
  l.onResponse(a!.id, [b!]);
  const [r2] = l.next();
  assertEquals(r2?.wave, 2);
  l.onResponse(b!.id, [c!]);
  const [r3] = l.next();
  assertEquals(r3?.wave, 3);
  l.onResponse(c!.id, [a!, b!]);
  assert(l.done());
  assertEquals(l.stats().waves, 3);
  assertEquals(l.result().length, 3);
});

Deno.test("Lookup ignores answers it did not ask for, late answers and malformed contacts", () => {
  const [a, b] = [contact(), contact()];
  const l = new Lookup(contact().id);
  l.start(rng.bytes(32), [a!, b!]);
  assert(!l.onResponse(contact().id, [contact()]));
  const reqs = l.next();
  assertEquals(reqs.length, 2);
  assert(l.onTimeout(a!.id));
  assert(!l.onResponse(a!.id, [contact()]), "a late answer after a timeout is ignored");
  assert(!l.onTimeout(a!.id));
  const junk = [
    { id: new Uint8Array(3), key: new Uint8Array(32), addr: "x", lastSeen: 0 },
    { id: new Uint8Array(32), key: new Uint8Array(32), addr: "", lastSeen: 0 },
    null as unknown as Contact,
  ];
  assert(l.onResponse(b!.id, junk));
  assertEquals(l.stats().ignored, 3);
  assert(l.done());
  assertEquals(l.result().map((c) => c.addr), [b!.addr]);
});

Deno.test("Lookup is not stalled by a responder that answers with made-up ids", () => {
  const all = network(300);
  const target = rng.bytes(32);
  const liar = all[0]!;
  const exists = new Set(all.map((c) => c.addr));
  const l = new Lookup(contact().id);
  l.start(target, [liar, ...all.slice(1, 4)]);
  const flight: LookupRequest[] = [];
  let steps = 0;
  while (!l.done() && steps++ < 1000) {
    flight.push(...l.next());
    const req = flight.shift();
    if (!req) break;
    if (!exists.has(req.to.addr)) {
      l.onTimeout(req.to.id);
      continue;
    }
    if (req.to.addr === liar.addr) {
      // 20 ids sharing 24 bits with the target, none of which exist; and a flood past the cap.
      const fakes = Array.from({ length: 200 }, () => {
        const id = rng.bytes(32);
        id.set(target.subarray(0, 3));
        return { id, key: rng.bytes(32), addr: `fake:${rng.u32()}`, lastSeen: 0 };
      });
      l.onResponse(req.to.id, fakes);
    } else {
      l.onResponse(req.to.id, closestOf(all, target, K_BUCKET));
    }
  }
  assert(l.done());
  const s = l.stats();
  assertEquals(s.distrusted, 1);
  // Distrust comes after a few failures; requests already in flight still time out.
  assert(s.timeouts <= LOOKUP_DISTRUST_FAILURES_MAX + ALPHA - 1, `timeouts: ${s.timeouts}`);
  assert(s.ignored >= 180, "the flood past the per-response cap is ignored");
  assertEquals(l.result().map((c) => c.addr), closestOf(all, target, K_BUCKET).map((c) => c.addr));
});

Deno.test("Lookup is not stalled by a responder that names only itself", () => {
  const all = network(200);
  const target = rng.bytes(32);
  const l = new Lookup(contact().id);
  l.start(target, all.slice(0, 3));
  while (!l.done()) {
    for (const r of l.next()) {
      const self = all.indexOf(all.find((c) => c.addr === r.to.addr)!) % 3 === 0;
      l.onResponse(r.to.id, self ? [r.to] : closestOf(all, target, K_BUCKET));
    }
  }
  assertEquals(l.result().length, K_BUCKET);
});

Deno.test("Lookup stops at its request budget", () => {
  const l = new Lookup(contact().id, { requestsMax: 7 });
  l.start(rng.bytes(32), network(3));
  while (!l.done()) {
    // Every answer names 20 new nodes, so there is always someone closer to ask.
    for (const r of l.next()) l.onResponse(r.to.id, network(20));
  }
  assertEquals(l.stats().requests, 7);
  assertEquals(new Lookup(contact().id).requestsMax, LOOKUP_REQUESTS_MAX);
});

Deno.test("Lookup with no seeds is done at once", () => {
  const l = new Lookup(contact().id);
  l.start(rng.bytes(32), []);
  assert(l.done());
  assertEquals(l.next(), []);
  assertEquals(l.result(), []);
});
