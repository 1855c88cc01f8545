// DHT benchmark: the Kademlia core (net/dht) in the deterministic simulated
// network, at 300, 1,000 and 10,000 nodes (about 1.5 min; --quick skips
// 10,000). Each
// figure is printed beside its target, measured in the same run:
// requests per lookup ≤ 60 at 300 nodes (HyperDHT measured about 57),
// success ≥ 99% with 20% of nodes leaving and joining, routing tables
// ≤ 1280 entries (libp2p kad-dht's bound), median ≤ 4 waves at 10,000 nodes.
//
//   deno run --allow-read --allow-env bench/dht_sim.ts [--quick] [--lookups N] [--seed N]

import { ALPHA, K_BUCKET, ROUTING_ENTRIES_MAX } from "../core/limits.ts";
import { buildNetwork, type LatencyModel, runLookups, timeToFullView } from "../tests/_dht_sim.ts";
import { table } from "./_table.ts";
import { percentile } from "../core/bytes.ts";

/** A sorted copy (percentile reads sorted numbers). */
const ascending = (xs: readonly number[]): number[] => [...xs].sort((a, b) => a - b);

/** One figure beside its target (the shape `bench/_table.ts` prints). */
export interface DhtBenchRow {
  /** What was measured. */
  figure: string;
  /** The measured value. */
  value: number;
  /** What it is compared with. */
  peer: string;
  /** Its value. */
  peerValue: number;
  /** Whether lower is better (the ratio is then target / value). */
  lowerIsBetter?: boolean;
}

export type { LatencyModel } from "../tests/_dht_sim.ts";

/** Options of {@linkcode runDhtBench}. */
export interface DhtBenchOptions {
  /** Network sizes; default 300, 1,000 and 10,000. */
  sizes?: number[];
  /** Lookups measured per size, steady and again under churn; default 300. */
  lookups?: number;
  /** Seed of the simulation; default 1. */
  seed?: number;
  /** Fraction of nodes that leave, and that join, during the churn batch; default 0.2. */
  churnFraction?: number;
  /** One-way latency; default the simulation's (log-normal, median 40 ms). */
  latency?: LatencyModel;
  /** Members of the group whose full view is timed; default 20. */
  groupSize?: number;
  /** Called with a line of progress per phase, e.g. `console.error`. */
  progress?: (line: string) => void;
}

/** Figures at one network size. */
export interface DhtBenchSize {
  /** Nodes in the network. */
  nodes: number;
  /** Requests per lookup, steady network: median and p99. */
  requestsMedian: number;
  /** Requests per lookup, p99. */
  requestsP99: number;
  /** Waves per lookup: median. */
  wavesMedian: number;
  /** Waves per lookup: p99. */
  wavesP99: number;
  /** Mean share of the true k closest (brute force) found, steady network. */
  overlapMean: number;
  /** Share of steady lookups that found their target. */
  successSteady: number;
  /** Share of lookups that found their target while nodes left and joined. */
  successChurn: number;
  /** Mean share of the true k closest found under churn. */
  overlapChurn: number;
  /** Largest routing table of an alive node, at the end. */
  tableMax: number;
  /** Mean routing-table size of the alive nodes, at the end. */
  tableMean: number;
  /** Median virtual ms of a steady lookup. */
  lookupMsMedian: number;
  /** Wall ms this size took (build, both batches). */
  wallMs: number;
}

/** What {@linkcode runDhtBench} measured. */
export interface DhtBenchResult {
  /** Per network size. */
  sizes: DhtBenchSize[];
  /** Virtual ms for a node joining a `groupSize` group through one member to hold every member. */
  fullViewMs: number;
  /** The α-limited estimate it is compared with: (1 + ⌈groupSize/α⌉) median round trips. */
  fullViewEstimateMs: number;
  /** The figures as table rows beside their targets. */
  rows: DhtBenchRow[];
}

function mean(xs: readonly number[]): number {
  return xs.length === 0 ? NaN : xs.reduce((a, b) => a + b, 0) / xs.length;
}

function medianRttMs(latency: LatencyModel | undefined): number {
  if (!latency) return 80;
  switch (latency.kind) {
    case "fixed":
      return 2 * latency.ms;
    case "uniform":
      return latency.minMs + latency.maxMs;
    case "lognormal":
      return 2 * latency.medianMs;
  }
}

/** Run the DHT simulation benchmark and return its figures (no printing but `progress`). */
export function runDhtBench(options: DhtBenchOptions = {}): DhtBenchResult {
  const sizes = options.sizes ?? [300, 1000, 10_000];
  const lookups = options.lookups ?? 300;
  const seed = options.seed ?? 1;
  const churnFraction = options.churnFraction ?? 0.2;
  const groupSize = options.groupSize ?? 20;
  const latency = options.latency ? { latency: options.latency } : {};
  const out: DhtBenchSize[] = [];
  for (const nodes of sizes) {
    const t0 = performance.now();
    const { sim } = buildNetwork({ seed: seed + nodes, nodes, ...latency });
    options.progress?.(`dht ${nodes}: built in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    const steady = runLookups(sim, { lookups });
    const tables = sim.alive().map((n) => n.table.size());
    const churn = runLookups(sim, { lookups, churnFraction, churnBase: nodes });
    const size: DhtBenchSize = {
      nodes,
      requestsMedian: percentile(ascending(steady.requests), 0.5),
      requestsP99: percentile(ascending(steady.requests), 0.99),
      wavesMedian: percentile(ascending(steady.waves), 0.5),
      wavesP99: percentile(ascending(steady.waves), 0.99),
      overlapMean: mean(steady.overlap),
      successSteady: steady.found / steady.requests.length,
      successChurn: churn.found / churn.requests.length,
      overlapChurn: mean(churn.overlap),
      tableMax: Math.max(...tables),
      tableMean: mean(tables),
      lookupMsMedian: percentile(ascending(steady.durationsMs), 0.5),
      wallMs: performance.now() - t0,
    };
    options.progress?.(`dht ${nodes}: done in ${(size.wallMs / 1000).toFixed(1)} s`);
    out.push(size);
  }
  const fullViewMs = timeToFullView({ seed, ...latency }, groupSize);
  const fullViewEstimateMs = (1 + Math.ceil(groupSize / ALPHA)) * medianRttMs(options.latency);
  const rows: DhtBenchRow[] = [];
  for (const s of out) {
    const n = s.nodes.toLocaleString("en-US");
    rows.push(
      {
        figure: `${n} nodes: requests per lookup, median`,
        value: s.requestsMedian,
        peer: "limit (HyperDHT ≈ 57)",
        peerValue: 60,
        lowerIsBetter: true,
      },
      {
        figure: `${n} nodes: requests per lookup, p99`,
        value: s.requestsP99,
        peer: "limit (HyperDHT ≈ 57)",
        peerValue: 60,
        lowerIsBetter: true,
      },
      {
        figure: `${n} nodes: waves, median`,
        value: s.wavesMedian,
        peer: "limit at 10,000 nodes",
        peerValue: 4,
        lowerIsBetter: true,
      },
      {
        figure: `${n} nodes: true ${K_BUCKET} closest found, mean share`,
        value: s.overlapMean,
        peer: "test floor",
        peerValue: 0.95,
      },
      {
        figure: `${n} nodes: success, ${Math.round(churnFraction * 100)}% churn`,
        value: s.successChurn,
        peer: "target",
        peerValue: 0.99,
      },
      {
        figure: `${n} nodes: routing table, max entries`,
        value: s.tableMax,
        peer: "libp2p kad-dht bound",
        peerValue: ROUTING_ENTRIES_MAX,
        lowerIsBetter: true,
      },
      {
        figure: `${n} nodes: routing table, mean entries`,
        value: s.tableMean,
        peer: "libp2p kad-dht bound",
        peerValue: ROUTING_ENTRIES_MAX,
        lowerIsBetter: true,
      },
    );
  }
  rows.push({
    figure: `full view of a ${groupSize}-node group from one bootstrap (virtual ms)`,
    value: fullViewMs,
    peer: `estimate (1 + ⌈${groupSize}/α⌉) median RTT`,
    peerValue: fullViewEstimateMs,
    lowerIsBetter: true,
  });
  return { sizes: out, fullViewMs, fullViewEstimateMs, rows };
}

if (import.meta.main) {
  const args = Deno.args;
  const arg = (name: string) => {
    const i = args.indexOf(name);
    return i >= 0 ? Number(args[i + 1]) : undefined;
  };
  const quick = args.includes("--quick");
  const lookups = arg("--lookups");
  const seed = arg("--seed");
  const r = runDhtBench({
    sizes: quick ? [300, 1000] : [300, 1000, 10_000],
    ...(lookups !== undefined ? { lookups } : {}),
    ...(seed !== undefined ? { seed } : {}),
    progress: (line) => console.error(line),
  });
  console.log(table("DHT (simulated network, k = 20, α = 3)", r.rows));
  console.log();
  console.log("| nodes | waves p99 | lookup median (virtual ms) | success steady | overlap under churn | wall s |");
  console.log("|---:|---:|---:|---:|---:|---:|");
  for (const s of r.sizes) {
    console.log(
      `| ${s.nodes} | ${s.wavesP99} | ${s.lookupMsMedian.toFixed(0)} | ${(100 * s.successSteady).toFixed(1)}% | ` +
        `${(100 * s.overlapChurn).toFixed(1)}% | ${(s.wallMs / 1000).toFixed(1)} |`,
    );
  }
}
