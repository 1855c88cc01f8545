// `deno task bench:scale`: one group of XF_SCALE_EVENTS events (default 10,000,000). Every cost the issue names is
// measured twice in the same run, once when the group holds XF_SCALE_BASE events (default 1,000,000) and once when it
// holds XF_SCALE_EVENTS, and printed as the larger group's figure beside 1.5 × the smaller one's:
//
// - index ingest: the index stage's own runtime (actors/index.ts, one RocksDB write per batch of 512, as the WAL stage
//   sends them at light load) over the XF_SCALE_WINDOW events written just before the group reaches each size, once
//   RocksDB's compactions of the fill are done: wall, and CPU of all threads including the compactions the window
//   causes (counted until the process idles again);
// - node ingest: a real node (openNode, stages in Workers) opened on the same data directory, XF_SCALE_PUBLISH signed
//   events submitted in bodies of 100, four at a time, until indexed: wall and process CPU (all threads) per event;
// - Merkle insert: GroupTrees.update alone (no write), 20 batches of 512 at random positions right after the group's
//   tree is loaded and again once every page is decoded (as a long-running index holds them), and 20 batches of 512
//   at the end: time per event;
// - range fingerprints: median and p99 of 2,000 random ranges from a loaded tree;
// - index bytes per event: the Merkle keyspace's keys and values ÷ events, against 40 B.
//
// The group is filled by the index runtime itself (not through the node: signing and verifying ten million events
// would about double the run), with dummy signatures, since the index does not verify (decode did); the node windows
// use signed events.
// XF_SCALE_DIR keeps the data directory (default: a temporary one, removed at the end).
import process from "node:process";
import { startIndexStage } from "./_index_stage.ts";
import { packBatch } from "../actors/batch.ts";
import { cborArrayOf } from "../storage/cbor.ts";
import { createGroup, encodeEvent, eventId, signEvent } from "../storage/event.ts";
import { generateKeyPair } from "../storage/ed25519.ts";
import { FORMAT_FILE } from "../storage/format.ts";
import { openRocks } from "../storage/kv_rocks.ts";
import { merklePrefix, prefixEnd } from "../storage/keys.ts";
import { GroupTrees } from "../storage/merkle_store.ts";
import { DATA_FORMAT_VERSION } from "../version.ts";
import { openNode } from "../node.ts";
import { percentile, type Row, table, toHex } from "./_table.ts";
import { submitBodies } from "./ingest.ts";

const TOTAL = Number(Deno.env.get("XF_SCALE_EVENTS") ?? 10_000_000);
const BASE = Number(Deno.env.get("XF_SCALE_BASE") ?? 1_000_000);
const WINDOW = Number(Deno.env.get("XF_SCALE_WINDOW") ?? 100_000);
const PUBLISH = Number(Deno.env.get("XF_SCALE_PUBLISH") ?? 20_000);
const BATCH = 512;
const FILL_BATCHES_PER_WRITE = 16;
const SETTLE_CPU_SHARE = 0.05;
const SETTLE_MS = 180_000;
const MERKLE_BATCHES = 20;
const RANGES = 2_000;
const BYTES_TARGET = 40;
const GROWTH_MAX = 1.5;

if (!(BASE >= WINDOW && TOTAL > BASE)) throw new Error("need XF_SCALE_WINDOW ≤ XF_SCALE_BASE < XF_SCALE_EVENTS");

/** What one size's measurements found. */
interface At {
  events: number;
  indexWallUs: number;
  indexCpuUs: number;
  nodeWallUs: number;
  nodeCpuUs: number;
  nodeOpenMs: number;
  loadMs: number;
  warmMs: number;
  merkleRandomColdUs: number;
  merkleRandomUs: number;
  merkleEndUs: number;
  fpMedianMs: number;
  fpP99Ms: number;
  bytesPerEvent: number;
  indexStartMs: number;
}

const cpuUs = () => {
  const u = process.cpuUsage();
  return u.user + u.system;
};
const log = (s: string) => console.error(`scale ${new Date().toISOString().slice(11, 19)}: ${s}`);

const keep = Deno.env.get("XF_SCALE_DIR");
const dataDir = keep ?? await Deno.makeTempDir({ prefix: "xf-bench-scale-" });
await Deno.mkdir(`${dataDir}/db`, { recursive: true });
await Deno.writeTextFile(`${dataDir}/${FORMAT_FILE}`, `${DATA_FORMAT_VERSION}\n`);

const owner = await generateKeyPair();
const { gid, manifest } = await createGroup(owner, { name: "scale-bench", policy: 0, ts: 1 });
const gidHex = toHex(gid);
// Fill timestamps 1 ms apart, ending well in the past; node windows come after them (the newest events), as live
// traffic does.
const ts0 = Date.now() - TOTAL - 4 * 3_600_000;
let nodeTs = ts0 + TOTAL + 1;

let filled = 0;
let seq = 1;

/** The index stage's runtime on the data directory's RocksDB, as the node runs it. */
async function startIndex() {
  const t = performance.now();
  const stage = await startIndexStage(`${dataDir}/db`);
  const ms = performance.now() - t;
  const { checkpoint } = await stage.call({ type: "index.stats" }) as { checkpoint: number };
  seq = checkpoint + 1;
  return { stage, ms };
}

function fillBatch(
  from: number,
  n: number,
): { bytes: Uint8Array; req: number; idx: number; id: Uint8Array; seq: number }[] {
  const items = [];
  for (let i = from; i < from + n; i++) {
    const bytes = encodeEvent({
      group: gid,
      author: owner.publicKey,
      ts: ts0 + i,
      kind: 16,
      tags: [],
      payload: new Uint8Array(100).fill(i & 0xff),
      sig: new Uint8Array(64),
    });
    items.push({ bytes, req: 0, idx: 0, id: eventId(bytes), seq: seq++ });
  }
  return items;
}

/**
 * Wait until the process idles (under SETTLE_CPU_SHARE of one core over a second: RocksDB's background compactions
 * done), at most SETTLE_MS. Returns how long it took and the CPU of the last (idle) second, which is not the window's.
 */
async function settle(): Promise<{ ms: number; idleCpuUs: number }> {
  const t = performance.now();
  for (;;) {
    const c = cpuUs();
    await new Promise((r) => setTimeout(r, 1000));
    const used = cpuUs() - c;
    if (used < SETTLE_CPU_SHARE * 1e6 || performance.now() - t > SETTLE_MS) {
      return { ms: performance.now() - t, idleCpuUs: used };
    }
  }
}

/** Fill the group up to `to` events; the last WINDOW of them are timed (batches built before the clock starts). */
async function fillTo(to: number): Promise<{ wallUs: number; cpuUs: number; startMs: number }> {
  const { stage, ms } = await startIndex();
  if (filled === 0) {
    await stage.run({
      do: "write",
      toks: [0],
      batches: [{
        batch: packBatch([{ bytes: manifest.bytes, req: 0, idx: 0, id: manifest.id, seq: seq++ }]),
        replay: false,
      }],
    });
  }
  const put = (items: ReturnType<typeof fillBatch>) =>
    stage.run({ do: "write", toks: [0], batches: [{ batch: packBatch(items), replay: false }] });
  const timedFrom = to - WINDOW;
  let lastLog = performance.now();
  while (filled < timedFrom) {
    // The fill writes 16 batches at once, as the index does when batches queue while it writes.
    const batches = [];
    for (let k = 0; k < FILL_BATCHES_PER_WRITE && filled < timedFrom; k++) {
      const n = Math.min(BATCH, timedFrom - filled);
      batches.push({ batch: packBatch(fillBatch(filled, n)), replay: false });
      filled += n;
    }
    await stage.run({ do: "write", toks: batches.map(() => 0), batches });
    if (performance.now() - lastLog > 30_000) {
      lastLog = performance.now();
      log(`${filled.toLocaleString("en-US")} events`);
    }
  }
  const batches: ReturnType<typeof fillBatch>[] = [];
  for (let at = filled; at < to; at += BATCH) batches.push(fillBatch(at, Math.min(BATCH, to - at)));
  // RocksDB compacts in background threads: the fill's debt is paid before the window (it would land on it), and
  // the window's own is counted in its CPU by waiting for the process to idle again after it.
  const settledBefore = await settle();
  const c0 = cpuUs(), t0 = performance.now();
  for (const b of batches) await put(b);
  const wallUs = (performance.now() - t0) * 1000 / WINDOW;
  const settledAfter = await settle();
  const used = (cpuUs() - c0 - settledAfter.idleCpuUs) / WINDOW;
  log(`settled ${settledBefore.ms.toFixed(0)} ms before the window, ${settledAfter.ms.toFixed(0)} ms after it`);
  filled = to;
  await stage.stop();
  return { wallUs, cpuUs: used, startMs: ms };
}

/** Merkle costs, fingerprints and bytes from a GroupTrees of its own over the store (nothing written). */
async function merkleAt(): Promise<
  Pick<
    At,
    | "loadMs"
    | "warmMs"
    | "merkleRandomColdUs"
    | "merkleRandomUs"
    | "merkleEndUs"
    | "fpMedianMs"
    | "fpP99Ms"
    | "bytesPerEvent"
  >
> {
  const kv = await openRocks(`${dataDir}/db`);
  try {
    const trees = new GroupTrees(kv);
    let t = performance.now();
    const tree = await trees.tree(gidHex);
    const loadMs = performance.now() - t;
    const count = tree.root().count;
    await settle();
    let bytes = 0;
    const mp = merklePrefix(gid);
    for await (const [k, v] of kv.range({ gte: mp, lt: prefixEnd(mp) })) bytes += k.length + v.length;
    // Random positions among the filled events (ts0 .. ts0 + filled): at 1 M, a span reaching the node windows' times
    // (past ts0 + 10 M) would put nine inserts in ten after the last event, where an insert is cheap.
    const span = filled;
    const item = (ts: number) => ({ group: gid, ts, id: crypto.getRandomValues(new Uint8Array(32)) });
    const timed = async (make: (i: number) => number) => {
      const batches = Array.from(
        { length: MERKLE_BATCHES },
        (_, b) => Array.from({ length: BATCH }, (_, i) => item(make(b * BATCH + i))),
      );
      // Wall time of the tree's own work (one thread, synchronous): process CPU would count RocksDB's threads too.
      const t0 = performance.now();
      for (const b of batches) (await trees.update(b, [])).commit();
      return (performance.now() - t0) * 1000 / (MERKLE_BATCHES * BATCH);
    };
    const random = () => ts0 + Math.floor(Math.random() * span);
    // Cold: right after the load, most leaves an insert lands on are still to be decoded (a decode re-hashes a page).
    const merkleRandomColdUs = await timed(random);
    // Warm: every page decoded once, as a long-running index holds them (DECODED_PAGES_MAX pages, 26,000 at 10 M).
    t = performance.now();
    tree.iterate(0, tree.root().count, () => {});
    const warmMs = performance.now() - t;
    tree.fingerprint(0, count);
    const fp: number[] = [];
    for (let i = 0; i < RANGES; i++) {
      const a = Math.floor(Math.random() * count), b = Math.floor(Math.random() * count);
      t = performance.now();
      tree.fingerprint(Math.min(a, b), Math.max(a, b) + 1);
      fp.push(performance.now() - t);
    }
    fp.sort((x, y) => x - y);
    const merkleRandomUs = await timed(random);
    const merkleEndUs = await timed((i) => nodeTs + 1_000_000 + i);
    return {
      loadMs,
      warmMs,
      merkleRandomColdUs,
      merkleRandomUs,
      merkleEndUs,
      fpMedianMs: percentile(fp, 0.5),
      fpP99Ms: percentile(fp, 0.99),
      bytesPerEvent: bytes / count,
    };
  } finally {
    await kv.close();
  }
}

/** A real node on the data directory: PUBLISH signed events, the newest of the group, until the index holds them. */
async function nodeAt(): Promise<Pick<At, "nodeWallUs" | "nodeCpuUs" | "nodeOpenMs">> {
  const authors = await Promise.all(Array.from({ length: 8 }, () => generateKeyPair()));
  const bodies: Uint8Array[] = [];
  for (let i = 0; i < PUBLISH; i += 100) {
    const chunk = await Promise.all(
      Array.from({ length: Math.min(100, PUBLISH - i) }, (_, j) =>
        signEvent(authors[(i + j) % 8]!, {
          group: gid,
          ts: nodeTs++,
          kind: 16,
          tags: [],
          payload: new Uint8Array(100).fill(j),
        })),
    );
    bodies.push(cborArrayOf(chunk.map((e) => e.bytes)));
  }
  let t = performance.now();
  const node = await openNode({ dataDir });
  try {
    log(`node open in ${(performance.now() - t).toFixed(0)} ms`);
    const before = (await node.merkle(gidHex))?.count ?? 0;
    const nodeOpenMs = performance.now() - t;
    log(`node open and first read of the group in ${nodeOpenMs.toFixed(0)} ms`);
    const c0 = cpuUs();
    t = performance.now();
    await submitBodies(node, gid, bodies);
    for (let i = 0; ((await node.merkle(gidHex))?.count ?? 0) < before + PUBLISH; i++) {
      if (i > 30_000) throw new Error("the node did not index the window in 5 minutes");
      await new Promise((r) => setTimeout(r, 10));
    }
    return {
      nodeWallUs: (performance.now() - t) * 1000 / PUBLISH,
      nodeCpuUs: (cpuUs() - c0) / PUBLISH,
      nodeOpenMs,
    };
  } finally {
    await node.close();
  }
}

async function measure(size: number): Promise<At> {
  log(`filling to ${size.toLocaleString("en-US")} events`);
  const idx = await fillTo(size);
  log(`Merkle and fingerprints at ${size.toLocaleString("en-US")}`);
  const m = await merkleAt();
  log(`node window at ${size.toLocaleString("en-US")}`);
  const n = await nodeAt();
  return {
    events: size,
    indexWallUs: idx.wallUs,
    indexCpuUs: idx.cpuUs,
    indexStartMs: idx.startMs,
    ...m,
    ...n,
  };
}

const t0 = performance.now();
try {
  const small = await measure(BASE);
  const large = await measure(TOTAL);
  const s = BASE.toLocaleString("en-US"), l = TOTAL.toLocaleString("en-US");
  const grow = (figure: string, key: keyof At): Row => ({
    figure: `${figure} at ${l}`,
    value: large[key],
    peer: `${GROWTH_MAX} × the same at ${s} (${small[key].toFixed(3)})`,
    peerValue: GROWTH_MAX * small[key],
    lowerIsBetter: true,
  });
  const rows: Row[] = [
    grow("index ingest wall per event (µs)", "indexWallUs"),
    grow("index ingest CPU per event (µs)", "indexCpuUs"),
    grow("node ingest wall per event (µs)", "nodeWallUs"),
    grow("node ingest CPU per event, all threads (µs)", "nodeCpuUs"),
    grow("Merkle insert per event, random positions, warm tree (µs)", "merkleRandomUs"),
    grow("Merkle insert per event, random positions, right after the load (µs)", "merkleRandomColdUs"),
    grow("Merkle insert per event, at the end (µs)", "merkleEndUs"),
    grow("range fingerprint median (ms)", "fpMedianMs"),
    grow("range fingerprint p99 (ms)", "fpP99Ms"),
    {
      figure: `Merkle index bytes per event at ${l}`,
      value: large.bytesPerEvent,
      peer: `target ${BYTES_TARGET} B`,
      peerValue: BYTES_TARGET,
      lowerIsBetter: true,
    },
  ];
  console.log(`## Run of ${new Date().toISOString()}\n`);
  console.log(`Machine: ${navigator.hardwareConcurrency} cores, Deno ${Deno.version.deno}\n`);
  console.log(table(`scale (${((performance.now() - t0) / 1000).toFixed(0)} s)`, rows));
  console.log("");
  const ratio = (k: keyof At) => (large[k] / small[k]).toFixed(2);
  console.log(
    `- growth ${s} → ${l} (value at ${l} ÷ value at ${s}): index wall ${ratio("indexWallUs")}, index CPU ${
      ratio("indexCpuUs")
    }, node wall ${ratio("nodeWallUs")}, node CPU ${ratio("nodeCpuUs")}, Merkle random ${
      ratio("merkleRandomUs")
    } (right after the load ${ratio("merkleRandomColdUs")}), Merkle end ${ratio("merkleEndUs")}, fingerprint median ${
      ratio("fpMedianMs")
    }, p99 ${ratio("fpP99Ms")}`,
  );
  for (const a of [small, large]) {
    console.log(
      `- at ${a.events.toLocaleString("en-US")}: index runtime start ${a.indexStartMs.toFixed(0)} ms, first load of ` +
        `the group's tree ${a.loadMs.toFixed(0)} ms, decoding all its pages ${a.warmMs.toFixed(0)} ms, node open ${
          a.nodeOpenMs.toFixed(0)
        } ms; Merkle ` +
        `${a.bytesPerEvent.toFixed(2)} B/event; index window ${WINDOW.toLocaleString("en-US")} events, node window ` +
        `${PUBLISH.toLocaleString("en-US")} (${(1e6 / a.nodeWallUs).toFixed(0)} ev/s)`,
    );
  }
} finally {
  if (!keep) await Deno.remove(dataDir, { recursive: true }).catch(() => {});
}
