import { ROUTING_ENTRIES_MAX, ROUTING_FAILURES_MAX } from "../core/limits.ts";
import { assert, assertEquals } from "@std/assert";
import { DhtSim, runScenario, type ScenarioReport, timeToFullView } from "./_dht_sim.ts";
import { percentile } from "../core/bytes.ts";

/** A sorted copy (percentile reads sorted numbers). */
const ascending = (xs: readonly number[]): number[] => [...xs].sort((a, b) => a - b);

const SCALE = Deno.env.get("XF_SCALE") !== undefined && Deno.env.get("XF_SCALE") !== "";

function mean(xs: readonly number[]): number {
  return xs.length === 0 ? NaN : xs.reduce((a, b) => a + b, 0) / xs.length;
}

/** One line of figures, printed so a test run doubles as a report. */
function summary(name: string, r: ScenarioReport): string {
  const n = r.requests.length;
  return `${name}: ${r.nodes} nodes, ${n} lookups, churn -${r.left}/+${r.joined}: ` +
    `found ${r.found}/${n} (${((100 * r.found) / n).toFixed(1)}%), ` +
    `k-closest overlap ${(100 * mean(r.overlap)).toFixed(1)}%, ` +
    `requests median ${percentile(ascending(r.requests), 0.5)} p99 ${percentile(ascending(r.requests), 0.99)}, ` +
    `waves median ${percentile(ascending(r.waves), 0.5)} p99 ${percentile(ascending(r.waves), 0.99)}, ` +
    `table max ${Math.max(...r.tableSizes)} mean ${mean(r.tableSizes).toFixed(0)}, exhausted ${r.exhausted}`;
}

Deno.test("DhtSim is deterministic from its seed", () => {
  const a = runScenario({ seed: 7, nodes: 150, lookups: 20, churnFraction: 0.2, noiseFraction: 0.1, lossRate: 0.02 });
  const b = runScenario({ seed: 7, nodes: 150, lookups: 20, churnFraction: 0.2, noiseFraction: 0.1, lossRate: 0.02 });
  assertEquals(a, b);
  const c = runScenario({ seed: 8, nodes: 150, lookups: 20, churnFraction: 0.2, noiseFraction: 0.1, lossRate: 0.02 });
  assert(JSON.stringify(a.requests) !== JSON.stringify(c.requests));
});

Deno.test("lookups in a 1,000-node network find the true k closest", () => {
  const r = runScenario({ seed: 1, nodes: 1000, lookups: 200 });
  console.log(summary("steady", r));
  const overlap = mean(r.overlap);
  assert(overlap >= 0.95, `mean overlap with brute force ${overlap}`);
  assert(r.found / r.requests.length >= 0.99, `found ${r.found}/${r.requests.length}`);
  assertEquals(r.exhausted, 0);
  assert(Math.max(...r.tableSizes) <= ROUTING_ENTRIES_MAX);
  assert(percentile(ascending(r.requests), 0.5) <= 60);
});

Deno.test("lookups succeed at least 99% of the time while 20% of nodes leave and 20% join", () => {
  const r = runScenario({ seed: 2, nodes: 1000, lookups: 300, churnFraction: 0.2 });
  console.log(summary("churn 20%", r));
  assertEquals(r.left, 200);
  assertEquals(r.joined, 200);
  assert(r.found / r.requests.length >= 0.99, `found ${r.found}/${r.requests.length}`);
  assert(mean(r.overlap) >= 0.95, `mean overlap ${mean(r.overlap)}`);
});

Deno.test("10% noise nodes answering garbage or only themselves do not stop lookups", () => {
  const r = runScenario({ seed: 3, nodes: 1000, lookups: 200, noiseFraction: 0.1, noiseMode: "mixed" });
  console.log(summary("noise 10%", r));
  assertEquals(r.exhausted, 0);
  assert(r.found / r.requests.length >= 0.99, `found ${r.found}/${r.requests.length}`);
  assert(mean(r.overlap) >= 0.95, `mean overlap ${mean(r.overlap)}`);
  for (const noiseMode of ["garbage", "self"] as const) {
    const m = runScenario({ seed: 4, nodes: 300, lookups: 100, noiseFraction: 0.1, noiseMode });
    console.log(summary(`noise 10% ${noiseMode}`, m));
    assertEquals(m.exhausted, 0);
    assert(m.found / m.requests.length >= 0.99, `${noiseMode}: found ${m.found}/${m.requests.length}`);
  }
});

Deno.test("lookups survive 5% message loss when they ask again once after a timeout", () => {
  // Without a retry, ~10% of lookups lose the target's own request or answer.
  const r = runScenario({ seed: 5, nodes: 500, lookups: 200, lossRate: 0.05, lookupRetries: 1 });
  console.log(summary("loss 5%, 1 retry", r));
  assert(r.found / r.requests.length >= 0.97, `found ${r.found}/${r.requests.length}`);
  assert(mean(r.overlap) >= 0.95, `mean overlap ${mean(r.overlap)}`);
});

Deno.test("a node joining a 20-node group through one member soon knows every member", () => {
  const ms = timeToFullView({ seed: 6 }, 20);
  console.log(`full view of a 20-node group: ${ms.toFixed(0)} virtual ms`);
  assert(Number.isFinite(ms) && ms < 5_000, `took ${ms} ms`);
});

Deno.test("DhtSim: a node that left stops answering and is dropped after repeated timeouts", () => {
  const sim = new DhtSim({ seed: 9 });
  sim.grow(100);
  sim.settle();
  const gone = sim.node(50);
  const knowers = sim.alive().filter((n) => n.table.has(gone.id));
  assert(knowers.length > 0);
  sim.leave(gone);
  const asker = knowers[0]!;
  for (let i = 0; i < ROUTING_FAILURES_MAX; i++) {
    assert(asker.table.has(gone.id), "one lost answer does not drop a contact");
    const out = sim.lookup(asker, gone.id);
    assert(!out.result.some((c) => c.addr === gone.addr));
    assertEquals(out.stats.timeouts, 1);
  }
  assert(!asker.table.has(gone.id));
});

Deno.test({
  name: "lookups in a 10,000-node network (XF_SCALE)",
  ignore: !SCALE,
  fn() {
    const r = runScenario({ seed: 10, nodes: 10_000, lookups: 300 });
    console.log(summary("scale", r));
    assert(mean(r.overlap) >= 0.95);
    assert(r.found / r.requests.length >= 0.99);
    assert(percentile(ascending(r.waves), 0.5) <= 4, `median waves ${percentile(ascending(r.waves), 0.5)}`);
    assert(Math.max(...r.tableSizes) <= ROUTING_ENTRIES_MAX);
    const c = runScenario({ seed: 11, nodes: 10_000, lookups: 300, churnFraction: 0.2 });
    console.log(summary("scale churn 20%", c));
    assert(c.found / c.requests.length >= 0.99);
  },
});
