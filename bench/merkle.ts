// Merkle index benchmark at a million events in one group: insert rate as the
// index actor sees it (its own logic, batches of 512, RocksDB synced) beside
// the bare RocksDB writes of the same events; range-fingerprint latency beside
// nostr-tools' vector storage computing the same fingerprint by scan; proof
// size and verify time; bytes of index per event.
import { nip77 } from "npm:nostr-tools@2.25.2";
import { startIndexStage } from "./_index_stage.ts";
import { packBatch } from "../actors/batch.ts";
import { LIMITS } from "../core/limits.ts";
import { MerkleTree, verifyProof } from "../merkle/mod.ts";
import { encodeEvent, eventId } from "../storage/event.ts";
import { generateKeyPair } from "../storage/ed25519.ts";
import { createGroup } from "../storage/event.ts";
import { openRocks } from "../storage/kv_rocks.ts";
import { eventKey, merklePrefix, prefixEnd, timeKey } from "../storage/keys.ts";
import { percentile, type Row, toHex } from "./_table.ts";

/** The last format-1 tree (one binary tree per page, leaves of ~385); XF_BENCH_MERKLE_BASELINE overrides. */
const BASELINE = Deno.env.get("XF_BENCH_MERKLE_BASELINE") ?? "b0c0f2f";
/** Batch sizes the rates are measured at: one stage batch, and one index write when batches queue. */
const RATE_BATCHES = [LIMITS.stage_batch_events_max, LIMITS.index_batch_events_max];
const RATE_EVENTS = Number(Deno.env.get("XF_BENCH_MERKLE_EVENTS") ?? 1_000_000);
const RATE_TARGET = 10_000;

interface Rates {
  inOrder: number;
  randomInsert: number;
  randomDelete: number | null;
  count: number;
  bytesPerEvent: number;
  sameRootAsBuild: boolean;
  /** µs per event in the Merkle update and in the RocksDB write (absent in trees older than this field). */
  insertSplit?: { treeUs: number; kvUs: number };
  deleteSplit?: { treeUs: number; kvUs: number } | null;
  /** A fresh load replaying a journal of `items` (ms), and one with the journal empty (absent without a journal). */
  replay?: { items: number; ms: number; withoutJournalMs: number } | null;
}

async function rates(root: string, batch: number): Promise<Rates> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      new URL("./merkle_rate.ts", import.meta.url).pathname,
      root,
      String(RATE_EVENTS),
      String(batch),
    ],
    stdout: "piped",
    stderr: "inherit",
  }).output();
  if (!out.success) throw new Error(`merkle_rate on "${root}" failed`);
  return JSON.parse(new TextDecoder().decode(out.stdout).trim().split("\n").pop()!);
}

/**
 * Random-position inserts and removals, and in-order inserts, through GroupTrees on RocksDB (one synced write per
 * batch) at RATE_EVENTS events, in batches of 512 (a stage batch) and 4096 (an index write when batches queue): this
 * tree beside BASELINE checked out as a git worktree, in this run.
 */
export async function benchMerkleRates(): Promise<{ rows: Row[]; notes: string[] }> {
  const dir = `${await Deno.makeTempDir({ prefix: "xf-merkle-baseline-" })}/tree`;
  const repo = new URL("..", import.meta.url).pathname;
  const git = (args: string[]) =>
    new Deno.Command("git", { args, cwd: repo, stdout: "null", stderr: "piped" }).output().catch(() => null);
  const added = await git(["worktree", "add", "--detach", dir, BASELINE]);
  const notes: string[] = [];
  const base = new Map<number, Rates>();
  if (added?.success) {
    try {
      for (const b of RATE_BATCHES) base.set(b, await rates(dir, b));
    } finally {
      await git(["worktree", "remove", "--force", dir]);
    }
  } else notes.push(`baseline ${BASELINE} could not be checked out (no git history?): rates not compared`);
  const n = RATE_EVENTS.toLocaleString("en-US");
  const rows: Row[] = [];
  const prev = `${BASELINE} (format 1, same run)`;
  let last: Rates | null = null;
  const ours = new Map<number, Rates>();
  for (const b of RATE_BATCHES) {
    const mine = last = await rates(".", b);
    ours.set(b, mine);
    const old = base.get(b);
    const at = `at ${n} events, batches of ${b}`;
    rows.push(
      {
        figure: `random-position insert ${at} (ev/s)`,
        value: mine.randomInsert,
        peer: "target",
        peerValue: RATE_TARGET,
      },
      {
        figure: `random-position delete ${at} (ev/s)`,
        value: mine.randomDelete ?? 0,
        peer: "target",
        peerValue: RATE_TARGET,
      },
    );
    if (old) {
      rows.push(
        {
          figure: `random-position insert ${at} (ev/s)`,
          value: mine.randomInsert,
          peer: prev,
          peerValue: old.randomInsert,
        },
        {
          figure: `random-position delete ${at} (ev/s)`,
          value: mine.randomDelete ?? 0,
          peer: prev,
          peerValue: old.randomDelete ?? 0,
        },
        { figure: `in-order insert ${at} (ev/s)`, value: mine.inOrder, peer: prev, peerValue: old.inOrder },
      );
    }
    const us = (x?: { treeUs: number; kvUs: number } | null) =>
      x ? `${x.treeUs.toFixed(1)} µs Merkle update + ${x.kvUs.toFixed(1)} µs RocksDB write` : "not measured";
    notes.push(
      `batches of ${b}: root equals a from-scratch build of the final set: this tree ${mine.sameRootAsBuild}` +
        (old ? `, ${BASELINE} ${old.sameRootAsBuild}` : "") +
        `; per random insert ${us(mine.insertSplit)}, per random delete ${us(mine.deleteSplit)} (this tree)` +
        (old ? `; ${BASELINE}: insert ${us(old.insertSplit)}, delete ${us(old.deleteSplit)}` : ""),
    );
  }
  const old = base.get(RATE_BATCHES[0]!);
  if (old) {
    rows.push({
      figure: "Merkle keyspace bytes per event",
      value: last!.bytesPerEvent,
      peer: prev,
      peerValue: old.bytesPerEvent,
      lowerIsBetter: true,
    });
  }
  rows.push({
    figure: "Merkle keyspace bytes per event",
    value: last!.bytesPerEvent,
    peer: "target 40 B (issue 11)",
    peerValue: 40,
    lowerIsBetter: true,
  });
  const replays = RATE_BATCHES.map((b) => ({ b, r: ours.get(b)?.replay })).filter((x) => x.r);
  for (const { b, r } of replays) {
    rows.push({
      figure: `first use of the ${n}-event tree after a crash, replaying a journal of ${
        r!.items.toLocaleString("en-US")
      } random inserts (batches of ${b}) (ms)`,
      value: r!.ms,
      peer: "the same load with the journal empty",
      peerValue: r!.withoutJournalMs,
      lowerIsBetter: true,
    });
  }
  notes.push(
    `through GroupTrees on RocksDB, one unsynced write per batch as the index writes it (events, time index, ` +
      `Merkle journal record and root, or at a checkpoint the changed pages); one journal cycle ` +
      `(MERKLE_JOURNAL_ITEMS_MAX = 32,768 items: 64 batches of 512, 8 of 4096) at random times inside the range, ` +
      `then as many random removals; each timed phase ends with a checkpoint (GroupTrees.checkpointAll) inside its ` +
      `time, so every page it changed is stored when the clock stops, and pays one checkpoint as the index does ` +
      `per journal cycle`,
  );
  return { rows, notes };
}

const N = Number(Deno.env.get("XF_BENCH_MERKLE_EVENTS") ?? 1_000_000);
const BATCH = 512;

async function dirBytes(dir: string): Promise<number> {
  let n = 0;
  for await (const e of Deno.readDir(dir)) if (e.isFile) n += (await Deno.stat(`${dir}/${e.name}`)).size;
  return n;
}

/** Run the Merkle benchmark; returns table rows. */
export async function benchMerkle(): Promise<{ rows: Row[]; notes: string[] }> {
  const r = await benchMerkleRates();
  const notes: string[] = [...r.notes];
  const owner = await generateKeyPair();
  const { gid, manifest } = await createGroup(owner, { name: "merkle-bench", policy: 0, ts: 1 });
  // The index does not verify signatures (decode did), so the bench events carry a dummy one.
  console.error(`merkle: encoding ${N} events ...`);
  const ts0 = 1_600_000_000_000;
  const events: { bytes: Uint8Array; id: Uint8Array; ts: number }[] = [];
  for (let i = 0; i < N; i++) {
    const ts = ts0 + Math.floor(i * 7.3);
    const bytes = encodeEvent({
      group: gid,
      author: owner.publicKey,
      ts,
      kind: 16,
      tags: [],
      payload: new Uint8Array(8).fill(i & 0xff),
      sig: new Uint8Array(64),
    });
    events.push({ bytes, id: eventId(bytes), ts });
  }

  // 1. The index actor's logic on RocksDB, fed batches of 512 as the WAL stage sends them.
  const dir = await Deno.makeTempDir({ prefix: "xf-bench-merkle-" });
  // The index stage's runtime, driven directly: one write per batch, as its logic asks when batches come one by one.
  const stage = await startIndexStage(`${dir}/db`);
  const put = (batch: ReturnType<typeof packBatch>) =>
    stage.run({ do: "write", toks: [0], batches: [{ batch, replay: false }] });
  await put(packBatch([{ bytes: manifest.bytes, req: 0, idx: 0, id: manifest.id, seq: 1 }]));
  let seq = 2;
  const t0 = performance.now();
  for (let i = 0; i < N; i += BATCH) {
    const items = events.slice(i, i + BATCH).map((e) => ({ bytes: e.bytes, req: 0, idx: 0, id: e.id, seq: seq++ }));
    await put(packBatch(items));
  }
  const indexRate = N / ((performance.now() - t0) / 1000);
  // Late (old) events arriving by sync: 20 batches of 512 random timestamps inside the range.
  const late: { bytes: Uint8Array; id: Uint8Array }[] = [];
  for (let i = 0; i < 20 * BATCH; i++) {
    const bytes = encodeEvent({
      group: gid,
      author: owner.publicKey,
      ts: ts0 + Math.floor(Math.random() * N * 7.3),
      kind: 17,
      tags: [],
      payload: new Uint8Array(4).fill(i & 0xff),
      sig: new Uint8Array(64),
    });
    late.push({ bytes, id: eventId(bytes) });
  }
  const tl = performance.now();
  for (let i = 0; i < late.length; i += BATCH) {
    const items = late.slice(i, i + BATCH).map((e) => ({ bytes: e.bytes, req: 0, idx: 0, id: e.id, seq: seq++ }));
    await put(packBatch(items));
  }
  const lateRate = late.length / ((performance.now() - tl) / 1000);
  const merkleInfo = await stage.call({ type: "index.merkle", gid: toHex(gid) }) as {
    count: number;
    depth: number;
    root: string;
  };
  const fsckT = performance.now();
  const fsck = await stage.call({ type: "index.fsck", gid: toHex(gid) }) as { ok: boolean };
  const fsckMs = performance.now() - fsckT;
  await stage.stop();

  // Bytes of index per event: the Merkle keyspace's live bytes (keys + values).
  const kv = await openRocks(`${dir}/db`);
  let merkleBytes = 0, pages = 0;
  const mp = merklePrefix(gid);
  const pageStore = new Map<string, Uint8Array>();
  for await (const [k, v] of kv.range({ gte: mp, lt: prefixEnd(mp) })) {
    merkleBytes += k.length + v.length;
    pages++;
    pageStore.set(toHex(k.subarray(33)), v);
  }
  await kv.close();
  const total = merkleInfo.count;
  const dbBytes = await dirBytes(`${dir}/db`);
  await Deno.remove(dir, { recursive: true });

  // 2. Bare RocksDB writes of the same events (events by id and the time index, no Merkle), same batches, synced.
  const dir2 = await Deno.makeTempDir({ prefix: "xf-bench-rocks-" });
  const kv2 = await openRocks(dir2);
  const t2 = performance.now();
  for (let i = 0; i < N; i += BATCH) {
    const ops = [];
    for (const e of events.slice(i, i + BATCH)) {
      ops.push({ type: "put" as const, key: eventKey(e.id), value: e.bytes });
      ops.push({ type: "put" as const, key: timeKey(gid, e.ts, e.id), value: new Uint8Array(0) });
    }
    await kv2.batch(ops, { sync: true });
  }
  const bareRate = N / ((performance.now() - t2) / 1000);
  await kv2.close();
  await Deno.remove(dir2, { recursive: true });

  // 3. Fingerprints from the tree (pages in memory, as the index actor holds them) vs nostr-tools' scan.
  const rootHash = Uint8Array.from(merkleInfo.root.match(/../g)!.map((h) => parseInt(h, 16)));
  const tree = new MerkleTree({ get: (h) => pageStore.get(toHex(h)) }, {
    hash: rootHash,
    count: total,
    depth: merkleInfo.depth,
  }, {
    cachePages: pages + 16,
  });
  const vec = new nip77.NegentropyStorageVector();
  tree.iterate(0, total, (item) => {
    vec.insert(item.ts, toHex(item.id)); // its storage sorts numbers; only its wire varints are 32-bit
  });
  vec.seal();
  const ranges: [number, number][] = Array.from({ length: 2000 }, () => {
    const a = Math.floor(Math.random() * total);
    const b = Math.floor(Math.random() * total);
    return [Math.min(a, b), Math.max(a, b) + 1];
  });
  tree.fingerprint(0, total); // warm the cache
  const ours: number[] = [];
  for (const [a, b] of ranges) {
    const t = performance.now();
    tree.fingerprint(a, b);
    ours.push(performance.now() - t);
  }
  const theirs: number[] = [];
  for (const [a, b] of ranges.slice(0, 40)) {
    const t = performance.now();
    await vec.fingerprint(a, b);
    theirs.push(performance.now() - t);
  }
  ours.sort((x, y) => x - y);
  theirs.sort((x, y) => x - y);
  // Same fingerprint as nostr-tools (ids sum + count; ts plays no part in it).
  let same = true;
  for (const [a, b] of ranges.slice(0, 20)) {
    same &&= toHex(tree.fingerprint(a, b)) === toHex(await vec.fingerprint(a, b) as unknown as Uint8Array);
  }

  // 4. Proofs.
  const sizes: number[] = [];
  const verifyTimes: number[] = [];
  for (let i = 0; i < 500; i++) {
    const item = tree.getItem(Math.floor(Math.random() * total));
    const proof = tree.prove(item)!;
    sizes.push(proof.length);
    const t = performance.now();
    if (!verifyProof(proof, item.id, rootHash)) throw new Error("proof failed to verify");
    verifyTimes.push(performance.now() - t);
  }
  sizes.sort((x, y) => x - y);
  verifyTimes.sort((x, y) => x - y);

  const rows: Row[] = [
    ...r.rows,
    {
      figure: `index insert, ${N.toLocaleString("en-US")} events in time order (ev/s)`,
      value: indexRate,
      peer: "bare RocksDB writes of the same events (ev/s)",
      peerValue: bareRate,
    },
    {
      figure: "index insert, late events at random times (ev/s)",
      value: lateRate,
      peer: "bare RocksDB writes (ev/s)",
      peerValue: bareRate,
    },
    {
      figure: "range fingerprint median (ms)",
      value: percentile(ours, 0.5),
      peer: "target 1 ms",
      peerValue: 1,
      lowerIsBetter: true,
    },
    {
      figure: "range fingerprint median (ms)",
      value: percentile(ours, 0.5),
      peer: "nostr-tools vector scan median (ms)",
      peerValue: percentile(theirs, 0.5),
      lowerIsBetter: true,
    },
    {
      figure: "range fingerprint p99 (ms)",
      value: percentile(ours, 0.99),
      peer: "nostr-tools vector scan p99 (ms)",
      peerValue: percentile(theirs, 0.99),
      lowerIsBetter: true,
    },
    {
      figure: "proof size, max of 500 (bytes)",
      value: sizes.at(-1)!,
      peer: "limit 1 KiB",
      peerValue: 1024,
      lowerIsBetter: true,
    },
    {
      figure: "Merkle index bytes per event (live keys + pages)",
      value: merkleBytes / total,
      peer: "target 80 B",
      peerValue: 80,
      lowerIsBetter: true,
    },
    {
      figure: "Merkle index bytes per event",
      value: merkleBytes / total,
      peer: "AT Protocol MST (about 77 B per key)",
      peerValue: 77,
      lowerIsBetter: true,
    },
  ];
  notes.push(
    `tree: ${total.toLocaleString("en-US")} items, depth ${merkleInfo.depth}, ${pages} pages; fsck of the whole group ${
      fsckMs.toFixed(0)
    } ms: ${fsck.ok ? "consistent" : "MISMATCH"}`,
    `proof verify: median ${(percentile(verifyTimes, 0.5) * 1000).toFixed(0)} µs, p99 ${
      (percentile(verifyTimes, 0.99) * 1000).toFixed(0)
    } µs; proof size median ${percentile(sizes, 0.5)} B`,
    `whole RocksDB directory after the run: ${(dbBytes / total).toFixed(0)} B per event (events themselves ~${
      events[0]!.bytes.length
    } B each, the time index, the Merkle pages, uncompacted)`,
    `fingerprints of 20 random ranges equal nostr-tools' for the same items: ${same}`,
  );
  return { rows, notes };
}
