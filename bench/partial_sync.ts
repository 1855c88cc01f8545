// Partial sync benchmark: one day of a one-year group against the whole group, in the same run, as ratios
// (partial / full), on two levels:
//
// - reconciliation alone: two Merkle trees of 365 days × XF_BENCH_PARTIAL_RECONCILE_PER_DAY items (default 1,000:
//   365,000 items), negentropy as a node runs it (responder answers id lists with its ids), over a SubRange of
//   one day against over the whole set: round trips and bytes;
// - two nodes: replicas of a group of 365 days × XF_BENCH_PARTIAL_PER_DAY events (default 100: 36,500 events),
//   synced in-process by two SyncSessions (`sub` with a range against one without): round trips, session bytes both
//   ways (frames, plaintext), events moved and wall time. Partial and full run on two identical pairs of nodes.
//
// The replicas differ inside the day (10 events only on each side) and outside it (one event only on A on each of
// 100 other days, one only on B on each of 100 more).
//
// `deno task bench partial-sync`, or `deno run -A bench/partial_sync.ts` for this section alone.
import { sha256 } from "@noble/hashes/sha2";
import { MerkleTree } from "../merkle/mod.ts";
import { Reconciler } from "../merkle/negentropy.ts";
import { type NegentropyStorage, SubRange } from "../merkle/negentropy_storage.ts";
import { openNode, type XfNode } from "../node.ts";
import { channelPair } from "../net/peers.ts";
import { SyncSession } from "../net/sync.ts";
import { generateKeyPair } from "../storage/ed25519.ts";
import { createGroup, signEvent, type StoredEvent } from "../storage/event.ts";
import { type Row, table, toHex } from "./_table.ts";

const PER_DAY = Number(Deno.env.get("XF_BENCH_PARTIAL_PER_DAY") ?? 100);
const RECONCILE_PER_DAY = Number(Deno.env.get("XF_BENCH_PARTIAL_RECONCILE_PER_DAY") ?? 1000);
const DAYS = 365;
const DAY = 86_400_000;
/** The day synced: one in the middle of the year. */
const TARGET = 200;
/** Differences inside the day, per side; and days outside it that hold one difference, per side. */
const IN_DAY = 10;
const OUT_DAYS = 100;

/** Day `d`'s start: the year ends a day ago. */
const Y0 = Math.floor(Date.now() / DAY) * DAY - (DAYS + 1) * DAY;
const dayStart = (d: number) => Y0 + d * DAY;

/** The days outside the target that hold a difference of side `k` (0: A, 1: B), spread over the year. */
const outDays = (k: number) =>
  Array.from({ length: OUT_DAYS }, (_, i) => (i * 3 + k + 1 + (i * 3 + k + 1 >= TARGET ? 1 : 0)) % DAYS);

interface Item {
  ts: number;
  id: Uint8Array;
}

// ---- reconciliation alone ----

function treeOf(items: Item[]): MerkleTree {
  const sorted = [...items].sort((a, b) => {
    if (a.ts !== b.ts) return a.ts - b.ts;
    for (let i = 0; i < 32; i++) if (a.id[i] !== b.id[i]) return a.id[i]! - b.id[i]!;
    return 0;
  });
  const { root, put } = MerkleTree.build(sorted);
  return new MerkleTree({ get: (h) => put.get(toHex(h)) }, root, { cachePages: put.size + 16 });
}

function reconcile(a: NegentropyStorage, b: NegentropyStorage) {
  const init = new Reconciler(a);
  let msg: Uint8Array | null = init.initiate();
  let rounds = 0, bytes = 0, found = 0;
  while (msg) {
    rounds++;
    bytes += msg.length;
    const reply = new Reconciler(b, { idListReply: true }).reconcile(msg).output!;
    bytes += reply.length;
    const r = init.reconcile(reply);
    found += r.have.length + r.need.length;
    msg = r.output;
  }
  return { rounds, bytes, found };
}

function reconcileLevel(): { rows: Row[]; note: string } {
  const item = (tag: string, ts: number): Item => ({ ts, id: sha256(new TextEncoder().encode(tag)) });
  const common: Item[] = [];
  for (let d = 0; d < DAYS; d++) {
    for (let i = 0; i < RECONCILE_PER_DAY; i++) {
      common.push(item(`c/${d}/${i}`, dayStart(d) + Math.floor((i * DAY) / RECONCILE_PER_DAY)));
    }
  }
  const only = (k: number) => [
    ...Array.from({ length: IN_DAY }, (_, i) => item(`in/${k}/${i}`, dayStart(TARGET) + 1000 * i + 7 + k)),
    ...outDays(k).map((d) => item(`out/${k}/${d}`, dayStart(d) + 13 + k)),
  ];
  const ta = treeOf([...common, ...only(0)]), tb = treeOf([...common, ...only(1)]);
  for (const t of [ta, tb]) t.iterate(0, t.size(), () => {}); // warm, as a node's index keeps its pages
  const day = [dayStart(TARGET), dayStart(TARGET + 1)] as const;
  const full = reconcile(ta, tb);
  const part = reconcile(new SubRange(ta, ...day), new SubRange(tb, ...day));
  if (full.found !== 2 * (IN_DAY + OUT_DAYS) || part.found !== 2 * IN_DAY) {
    throw new Error(`reconciliation found ${full.found} and ${part.found} differences`);
  }
  const n = common.length.toLocaleString("en-US");
  return {
    rows: [
      {
        figure: `reconciliation, ${n} items: round trips, one day`,
        value: part.rounds,
        peer: "the whole year",
        peerValue: full.rounds,
        lowerIsBetter: true,
      },
      {
        figure: `reconciliation, ${n} items: negentropy bytes both ways, one day`,
        value: part.bytes,
        peer: "the whole year",
        peerValue: full.bytes,
        lowerIsBetter: true,
      },
    ],
    note: `reconciliation alone (${DAYS} days × ${RECONCILE_PER_DAY} items; ${2 * IN_DAY} differences in the day, ${
      2 * OUT_DAYS
    } outside): partial/full round trips ${part.rounds}/${full.rounds} = ${
      (part.rounds / full.rounds).toFixed(3)
    }, bytes ${part.bytes.toLocaleString("en-US")}/${full.bytes.toLocaleString("en-US")} = ${
      (part.bytes / full.bytes).toFixed(3)
    }`,
  };
}

// ---- two nodes ----

interface SyncRun {
  rounds: number;
  bytes: number;
  moved: number;
  ms: number;
}

async function syncOnce(a: XfNode, b: XfNode, gid: string, range: { since?: number; until?: number }, expect: number) {
  const [ca, cb] = channelPair();
  const server = new SyncSession(b.sync, cb, "server", "bench");
  const client = new SyncSession(a.sync, ca, "client", "bench");
  const t0 = performance.now();
  await client.sync(gid, range);
  // What A sent may still be in flight when A's side is done: wait until B holds it.
  while (((await b.merkle(gid))?.count ?? 0) < expect) await new Promise((r) => setTimeout(r, 5));
  const ms = performance.now() - t0;
  const run: SyncRun = {
    rounds: client.stats.negRounds - 1, // the first neg, then one per reply
    bytes: client.stats.bytesIn + client.stats.bytesOut,
    moved: client.stats.eventsSent + server.stats.eventsSent - 1, // less the manifest pushed at sub
    ms,
  };
  client.close();
  return run;
}

async function nodeLevel(): Promise<{ rows: Row[]; note: string }> {
  const owner = await generateKeyPair();
  const { gid: g, manifest } = await createGroup(owner, { name: "year", policy: 0 });
  const gid = toHex(g);
  const sign = (ts: number, n: number) =>
    signEvent(owner, {
      group: g,
      ts,
      kind: 16,
      tags: [["n", String(n)]],
      payload: new Uint8Array(200).fill(n & 0xff),
    });
  console.error(`partial-sync: signing ${(DAYS * PER_DAY).toLocaleString("en-US")} events ...`);
  const common: StoredEvent[] = [];
  for (let d = 0; d < DAYS; d++) {
    common.push(
      ...await Promise.all(
        Array.from({ length: PER_DAY }, (_, i) => sign(dayStart(d) + Math.floor((i * DAY) / PER_DAY), d * PER_DAY + i)),
      ),
    );
  }
  const only = async (k: number) => [
    ...await Promise.all(Array.from({ length: IN_DAY }, (_, i) => sign(dayStart(TARGET) + 1000 * i + 7 + k, -1 - i))),
    ...await Promise.all(outDays(k).map((d) => sign(dayStart(d) + 13 + k, -100 - d))),
  ];
  const onlyA = await only(0), onlyB = await only(1);
  const dirs: string[] = [];
  const nodes: XfNode[] = [];
  const open = async (events: StoredEvent[]) => {
    const dir = await Deno.makeTempDir({ prefix: "xf-bench-partial-" });
    dirs.push(dir);
    const n = await openNode({ dataDir: dir, workers: false });
    nodes.push(n);
    await n.publish(manifest);
    for (let i = 0; i < events.length; i += 500) await n.publish(events.slice(i, i + 500));
    return n;
  };
  try {
    console.error("partial-sync: loading two pairs of replicas ...");
    const [a1, b1, a2, b2] = [
      await open([...common, ...onlyA]),
      await open([...common, ...onlyB]),
      await open([...common, ...onlyA]),
      await open([...common, ...onlyB]),
    ];
    const size = 1 + common.length + onlyB.length;
    const full = await syncOnce(a1!, b1!, gid, {}, size + onlyA.length);
    const part = await syncOnce(a2!, b2!, gid, { since: dayStart(TARGET), until: dayStart(TARGET + 1) }, size + IN_DAY);
    if (full.moved !== onlyA.length + onlyB.length || part.moved !== 2 * IN_DAY) {
      throw new Error(`moved ${full.moved} and ${part.moved} events`);
    }
    const n = common.length.toLocaleString("en-US");
    const r = (x: number, y: number) => (x / y).toFixed(3);
    return {
      rows: [
        {
          figure: `two nodes, ${n} events: round trips, one day`,
          value: part.rounds,
          peer: "the whole year",
          peerValue: full.rounds,
          lowerIsBetter: true,
        },
        {
          figure: `two nodes, ${n} events: session bytes both ways, one day`,
          value: part.bytes,
          peer: "the whole year",
          peerValue: full.bytes,
          lowerIsBetter: true,
        },
        {
          figure: `two nodes, ${n} events: wall time (ms), one day`,
          value: part.ms,
          peer: "the whole year",
          peerValue: full.ms,
          lowerIsBetter: true,
        },
      ],
      note:
        `two nodes (${DAYS} days × ${PER_DAY} events of ~300 bytes; ${2 * IN_DAY} differences in the day, ${
          2 * OUT_DAYS
        } outside): partial/full round trips ${part.rounds}/${full.rounds} = ${r(part.rounds, full.rounds)}, bytes ${
          part.bytes.toLocaleString("en-US")
        }/${full.bytes.toLocaleString("en-US")} = ${
          r(part.bytes, full.bytes)
        }, events moved ${part.moved}/${full.moved}, ` +
        `wall ${part.ms.toFixed(0)}/${full.ms.toFixed(0)} ms = ${r(part.ms, full.ms)}`,
    };
  } finally {
    for (const n of nodes) await n.close();
    for (const d of dirs) await Deno.remove(d, { recursive: true }).catch(() => {});
  }
}

/** Run the partial sync benchmark; returns table rows and notes (partial / full ratios). */
export async function benchPartialSync(): Promise<{ rows: Row[]; notes: string[] }> {
  const rec = reconcileLevel();
  const node = await nodeLevel();
  return { rows: [...rec.rows, ...node.rows], notes: [rec.note, node.note] };
}

if (import.meta.main) {
  const t = performance.now();
  const out = await benchPartialSync();
  console.log(table(`partial-sync (${((performance.now() - t) / 1000).toFixed(0)} s)`, out.rows));
  console.log("");
  for (const n of out.notes) console.log(`- ${n}`);
}
