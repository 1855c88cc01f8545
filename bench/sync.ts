// Sync benchmark: reconciliation between two million-event sets (the Merkle
// trees two nodes hold for one group) with d differences, beside nostr-tools'
// negentropy reconciling the same two sets in the same run; and full catch-up
// of a fresh node from a full one over loopback WebSocket, beside the node's
// own ingest rate.
import { nip77 } from "npm:nostr-tools@2.25.2";
import { sha256 } from "@noble/hashes/sha2";
import { MerkleTree } from "../merkle/mod.ts";
import { Reconciler } from "../merkle/negentropy.ts";
import { openNode } from "../node.ts";
import { serve } from "../net/server.ts";
import { makeWorkload } from "./ingest.ts";
import { percentile, type Row, toHex } from "./_table.ts";

const N = Number(Deno.env.get("XF_BENCH_SYNC_EVENTS") ?? 1_000_000);
const CATCHUP = Number(Deno.env.get("XF_BENCH_CATCHUP_EVENTS") ?? 40_000);
/** nostr-tools at d = 10,000 over a million items takes minutes (it rescans per round); opt in. */
const THEIRS_FULL = Deno.env.get("XF_BENCH_FULL") === "1";

interface Item {
  ts: number;
  id: Uint8Array;
}

function makeItems(n: number, tag: string, ts0: number): Item[] {
  const out: Item[] = [];
  for (let i = 0; i < n; i++) {
    out.push({ ts: ts0 + Math.floor(i / 4), id: sha256(new TextEncoder().encode(`${tag}/${i}`)) });
  }
  return out;
}

const cmp = (a: Item, b: Item) => {
  if (a.ts !== b.ts) return a.ts - b.ts;
  for (let i = 0; i < 32; i++) if (a.id[i] !== b.id[i]) return a.id[i]! - b.id[i]!;
  return 0;
};

function tree(items: Item[]): MerkleTree {
  const sorted = [...items].sort(cmp);
  const { root, put } = MerkleTree.build(sorted);
  return new MerkleTree({ get: (h) => put.get(toHex(h)) }, root, { cachePages: put.size + 16 });
}

interface Run {
  rounds: number;
  bytesOut: number;
  bytesIn: number;
  ms: number;
  perMsgMs: number[];
  found: number;
}

/**
 * Our reconciliation as a node runs it: the initiator keeps one Reconciler, the responder makes a new one per
 * message over its index (as `index.reconcile` does) and, in production, answers id lists with its own ids
 * (`idListReply`, the C++ reference's way). The clock starts before `initiate()`, as `runTheirs`' does.
 */
function runOurs(a: MerkleTree, b: MerkleTree, idListReply: boolean): Run {
  const perMsgMs: number[] = [];
  let rounds = 0, bytesOut = 0, bytesIn = 0, found = 0;
  const t0 = performance.now();
  let t = t0;
  const init = new Reconciler(a);
  let msg: Uint8Array | null = init.initiate();
  perMsgMs.push(performance.now() - t);
  while (msg) {
    bytesOut += msg.length;
    rounds++;
    t = performance.now();
    const r = new Reconciler(b, { idListReply }).reconcile(msg);
    perMsgMs.push(performance.now() - t);
    found += r.have.length + r.need.length;
    // A responder with nothing to say answers the bare version byte, as nostr-tools' run counts it.
    const reply = r.output ?? new Uint8Array([0x61]);
    bytesIn += reply.length;
    t = performance.now();
    const i = init.reconcile(reply);
    perMsgMs.push(performance.now() - t);
    found += i.have.length + i.need.length;
    msg = i.output;
  }
  return { rounds, bytesOut, bytesIn, ms: performance.now() - t0, perMsgMs, found };
}

async function runTheirs(a: Item[], b: Item[]): Promise<Run> {
  const store = (items: Item[]) => {
    const s = new nip77.NegentropyStorageVector();
    for (const x of items) s.insert(x.ts, toHex(x.id));
    s.seal();
    return s;
  };
  const sa = store(a), sb = store(b);
  const perMsgMs: number[] = [];
  let rounds = 0, bytesOut = 0, bytesIn = 0, found = 0;
  const t0 = performance.now();
  let t = t0;
  const init = new nip77.Negentropy(sa, 60_000);
  const resp = new nip77.Negentropy(sb, 60_000);
  let msg: string | null = await init.initiate();
  perMsgMs.push(performance.now() - t);
  while (msg) {
    bytesOut += msg.length / 2;
    rounds++;
    t = performance.now();
    const out: string | null = await resp.reconcile(msg, () => found++, () => found++);
    perMsgMs.push(performance.now() - t);
    const reply = out ?? "61";
    bytesIn += reply.length / 2;
    t = performance.now();
    msg = await init.reconcile(reply, () => found++, () => found++);
    perMsgMs.push(performance.now() - t);
  }
  return { rounds, bytesOut, bytesIn, ms: performance.now() - t0, perMsgMs, found };
}

/** Run the sync benchmark; returns table rows. */
export async function benchSync(): Promise<{ rows: Row[]; notes: string[] }> {
  const rows: Row[] = [];
  const notes: string[] = [];
  // Timestamps in seconds-scale numbers: nostr-tools' wire varints are 32-bit.
  console.error(`sync: building two sets of ${N} items ...`);
  const base = makeItems(N, "base", 1_600_000_000);
  const cases: { name: string; onlyA: Item[]; onlyB: Item[] }[] = [
    { name: "d = 0", onlyA: [], onlyB: [] },
    { name: "d = 1", onlyA: [], onlyB: makeItems(1, "one", 1_600_000_000 + N / 8) },
    {
      name: "d = 100 random",
      onlyA: makeItems(50, "ra", 1_600_000_000).map((x, i) => ({ ...x, ts: x.ts + ((i * 2654435761) % (N / 4)) })),
      onlyB: makeItems(50, "rb", 1_600_000_000).map((x, i) => ({ ...x, ts: x.ts + ((i * 40503) % (N / 4)) })),
    },
    { name: "d = 100 newest", onlyA: [], onlyB: makeItems(100, "new", 1_600_000_000 + N) },
    {
      name: "d = 10,000 random",
      onlyA: makeItems(5000, "ta", 1_600_000_000).map((x, i) => ({ ...x, ts: x.ts + ((i * 7919) % (N / 4)) })),
      onlyB: makeItems(5000, "tb", 1_600_000_000).map((x, i) => ({ ...x, ts: x.ts + ((i * 104729) % (N / 4)) })),
    },
  ];
  const table: string[] = [
    "| set difference | ours (production: id-list replies): round trips | bytes → / ← | wall ms | per message ms, median / max | ours in nostr-tools' mode: round trips | bytes → / ← | nostr-tools: round trips | bytes → / ← | wall ms | per message ms, median / max |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  ];
  const sorted = (xs: number[]) => [...xs].sort((x, y) => x - y);
  const perMsg = (r: Run) => {
    const s = sorted(r.perMsgMs);
    return { median: percentile(s, 0.5), max: s.at(-1)! };
  };
  const bytes = (r: Run) => `${r.bytesOut.toLocaleString("en-US")} / ${r.bytesIn.toLocaleString("en-US")}`;
  for (const c of cases) {
    const a = [...base, ...c.onlyA], b = [...base, ...c.onlyB];
    const ta = tree(a), tb = tree(b);
    // A node's index keeps its group's pages decoded; touch every leaf once so the figures are the warm ones.
    for (const t of [ta, tb]) t.iterate(0, t.size(), () => {});
    const d = c.onlyA.length + c.onlyB.length;
    const ours = runOurs(ta, tb, true);
    if (ours.found < d) throw new Error(`${c.name}: found ${ours.found} of ${d} differences`);
    // The same protocol without id-list replies must match nostr-tools round for round, byte for byte.
    const oursNostrMode = runOurs(ta, tb, false);
    const o = perMsg(ours);
    rows.push({
      figure: `${c.name}: ours, max local work per message (ms)`,
      value: o.max,
      peer: "limit 50 ms",
      peerValue: 50,
      lowerIsBetter: true,
    });
    let theirsCell = "not run (set XF_BENCH_FULL=1; minutes) | | | |";
    if (d <= 100 || THEIRS_FULL) {
      const theirs = await runTheirs(a, b);
      const t = perMsg(theirs);
      theirsCell = `${theirs.rounds} | ${bytes(theirs)} | ${theirs.ms.toFixed(0)} | ${t.median.toFixed(1)} / ${
        t.max.toFixed(1)
      }`;
      if (
        theirs.rounds !== oursNostrMode.rounds || theirs.bytesOut !== oursNostrMode.bytesOut ||
        theirs.bytesIn !== oursNostrMode.bytesIn
      ) {
        notes.push(`${c.name}: ours in nostr-tools' mode differs from nostr-tools in rounds or bytes`);
      }
      // Like against like: the same case, the same statistic, ours as production runs it.
      rows.push({
        figure: `${c.name}: round trips, ours (production)`,
        value: ours.rounds,
        peer: "nostr-tools round trips",
        peerValue: theirs.rounds,
        lowerIsBetter: true,
      });
      rows.push({
        figure: `${c.name}: bytes both ways, ours (production)`,
        value: ours.bytesOut + ours.bytesIn,
        peer: "nostr-tools bytes",
        peerValue: theirs.bytesOut + theirs.bytesIn,
        lowerIsBetter: true,
      });
      rows.push({
        figure: `${c.name}: wall time, ours (production) (ms)`,
        value: ours.ms,
        peer: "nostr-tools wall time (ms)",
        peerValue: theirs.ms,
        lowerIsBetter: true,
      });
      rows.push({
        figure: `${c.name}: median local work per message, ours (ms)`,
        value: o.median,
        peer: "nostr-tools median per message (ms)",
        peerValue: t.median,
        lowerIsBetter: true,
      });
      rows.push({
        figure: `${c.name}: max local work per message, ours (ms)`,
        value: o.max,
        peer: "nostr-tools max per message (ms)",
        peerValue: t.max,
        lowerIsBetter: true,
      });
    }
    table.push(
      `| ${c.name} | ${ours.rounds} | ${bytes(ours)} | ${ours.ms.toFixed(0)} | ${o.median.toFixed(1)} / ${
        o.max.toFixed(1)
      } | ${oursNostrMode.rounds} | ${bytes(oursNostrMode)} | ${theirsCell} |`,
    );
  }
  notes.push(
    `reconciliation of two ${
      N.toLocaleString("en-US")
    }-item sets (Merkle index vs Merkle index; nostr-tools vector vs vector; both clocks start before the ` +
      `initiator's first message):\n\n${table.join("\n")}\n`,
  );

  // Catch-up of a fresh node from a full one over loopback WebSocket.
  console.error(`sync: signing ${CATCHUP} events for catch-up ...`);
  const w = await makeWorkload(CATCHUP);
  const full = await openNode({ dataDir: await Deno.makeTempDir({ prefix: "xf-bench-full-" }) });
  const t0 = performance.now();
  await full.publish(w.manifest);
  for (let i = 0; i < w.events.length; i += 500) await full.publish(w.events.slice(i, i + 500));
  const ingestRate = CATCHUP / ((performance.now() - t0) / 1000);
  const served = await serve(full, { host: "127.0.0.1", port: 0 });
  const fresh = await openNode({ dataDir: await Deno.makeTempDir({ prefix: "xf-bench-fresh-" }) });
  const gid = toHex(w.gid);
  const t1 = performance.now();
  const s = await fresh.sync.connect(served.url.replace("http", "ws"), [gid]);
  while (((await fresh.merkle(gid))?.count ?? 0) < CATCHUP + 1) await new Promise((r) => setTimeout(r, 20));
  const catchRate = (CATCHUP + 1) / ((performance.now() - t1) / 1000);
  const same = (await fresh.merkle(gid))!.root === (await full.merkle(gid))!.root;
  s.close();
  fresh.sync.close();
  await served.shutdown();
  await fresh.close();
  await full.close();
  rows.push({
    figure: `catch-up of a fresh node, ${CATCHUP.toLocaleString("en-US")} events over WebSocket (ev/s)`,
    value: catchRate,
    peer: "the node's own ingest rate, library (ev/s)",
    peerValue: ingestRate,
  });
  notes.push(
    `catch-up: same Merkle root after: ${same}; ${s.stats.negRounds} negentropy rounds, ${
      s.stats.bytesIn.toLocaleString("en-US")
    } bytes in`,
  );
  return { rows, notes };
}
