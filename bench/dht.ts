// DHT section of `deno task bench`: the simulated network at 300, 1,000 and
// 10,000 nodes (bench/dht_sim.ts), as table rows.
import { runDhtBench } from "./dht_sim.ts";
import type { Row } from "./_table.ts";

/** Run the DHT benchmark; returns table rows. */
export function benchDht(): { rows: Row[]; notes: string[] } {
  const quick = Deno.env.get("XF_BENCH_QUICK") === "1";
  const r = runDhtBench(quick ? { sizes: [300, 1000] } : {});
  return {
    rows: r.rows as Row[],
    notes: r.sizes.map((s) => JSON.stringify(s)),
  };
}
