// Merkle update rates through the persisted store the index stage uses (GroupTrees over RocksDB, one write per
// batch holding the events, the time index and the Merkle ops, unsynced as the index writes it: the WAL makes the
// events durable), for the code of one tree:
//
//   deno run -A bench/merkle_rate.ts [ROOT] [EVENTS] [BATCH]
//
// ROOT is a checkout of this repository ("" or "." for this one): bench/merkle.ts runs it on this tree and on a
// baseline worktree. It fills one group with EVENTS events in time order (batches of BATCH), then inserts
// RANDOM_BATCHES batches of BATCH events at random times inside the range, then removes RANDOM_BATCHES batches of
// BATCH random events (when the tree has a remove API), and prints one JSON line: the three rates in ev/s, the
// Merkle keyspace's bytes per event, whether the final root equals a from-scratch build of the final set, and where
// the random phases' time went (µs per event in the Merkle update, including its garbage collection, and in the
// RocksDB write). Where the store keeps a Merkle journal (GroupTrees.checkpointAll), each timed phase ends with a
// checkpoint, inside its time, so every page the phase changed is stored when its clock stops; then the script
// fills the journal to just under its limit and times a fresh load that replays it (`replay`).
//
// RANDOM_BATCHES defaults to one journal cycle, MERKLE_JOURNAL_ITEMS_MAX / BATCH batches (64 of 512, 8 of 4096): a
// phase then pays one checkpoint, as the index pays one per that many items. With fewer batches the phase's
// checkpoint still stores every leaf the phase touched, so it weighs more per item than it does in a running node
// (20 batches of 512 touch about 0.6 leaves per item, a full cycle about 0.3).
import { MERKLE_JOURNAL_ITEMS_MAX } from "../core/limits.ts";

const root = new URL(Deno.args[0] && Deno.args[0] !== "." ? `file://${Deno.args[0]}/` : "../", import.meta.url);
const EVENTS = Number(Deno.args[1] ?? 1_000_000);
const BATCH = Number(Deno.args[2] ?? 512);
/** Batches of the random phases (XF_MERKLE_RATE_RANDOM_BATCHES=0: the in-order fill alone; default one journal cycle). */
const RANDOM_BATCHES = Number(
  Deno.env.get("XF_MERKLE_RATE_RANDOM_BATCHES") ?? Math.max(1, Math.floor(MERKLE_JOURNAL_ITEMS_MAX / BATCH)),
);

const imp = async (...paths: string[]) => {
  for (const p of paths) {
    try {
      await Deno.stat(new URL(p, root));
      return await import(new URL(p, root).href);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
  }
  throw new Error(`none of ${paths.join(", ")} under ${root.pathname}`);
};
const store = await imp("storage/merkle_store.ts", "actors/merkle_store.ts");
const { openRocks } = await imp("storage/kv_rocks.ts", "storage/kv.ts");
const keys = await imp("storage/keys.ts");
const { MerkleTree, compareItems } = await imp("merkle/mod.ts");

interface Ev {
  group: Uint8Array;
  ts: number;
  id: Uint8Array;
}

const group = crypto.getRandomValues(new Uint8Array(32));
const ts0 = 1_600_000_000_000;
const span = Math.floor(EVENTS * 7.3);
const value = crypto.getRandomValues(new Uint8Array(150)); // about an event's size
const newEvent = (ts: number): Ev => ({ group, ts, id: crypto.getRandomValues(new Uint8Array(32)) });

const dir = await Deno.makeTempDir({ prefix: "xf-bench-merkle-rate-" });
const kv = await openRocks(dir);
const trees = new store.GroupTrees(kv);
type KvOp = { type: "put"; key: Uint8Array; value: Uint8Array } | { type: "del"; key: Uint8Array };

/** One batch as the index stage writes it: events, time index, Merkle ops, one synced write, then commit. */
async function write(add: Ev[], remove: Ev[]): Promise<void> {
  const ops: KvOp[] = [];
  for (const e of add) {
    ops.push({ type: "put", key: keys.eventKey(e.id), value });
    ops.push({ type: "put", key: keys.timeKey(group, e.ts, e.id), value: new Uint8Array(0) });
  }
  for (const e of remove) {
    ops.push({ type: "del", key: keys.eventKey(e.id) });
    ops.push({ type: "del", key: keys.timeKey(group, e.ts, e.id) });
  }
  const t0 = performance.now();
  const m = remove.length > 0 ? await trees.update(add, remove) : await trees.insert(add);
  for (const o of m.ops) ops.push(o);
  const t1 = performance.now();
  await kv.batch(ops, { sync: false });
  const t2 = performance.now();
  m.commit();
  split.tree += t1 - t0 + performance.now() - t2;
  split.kv += t2 - t1;
}

/** Store every page a journal still holds (trees without a journal have nothing to do). */
async function checkpoint(): Promise<void> {
  if (typeof trees.checkpointAll !== "function") return;
  const t0 = performance.now();
  const c = trees.checkpointAll();
  const t1 = performance.now();
  await kv.batch(c.ops, { sync: false });
  const t2 = performance.now();
  c.commit();
  split.tree += t1 - t0 + performance.now() - t2;
  split.kv += t2 - t1;
}

/** Time spent in the Merkle update (and commit) and in the RocksDB write, reset before each timed phase. */
const split = { tree: 0, kv: 0 };

const held: Ev[] = [];
console.error(`merkle_rate (${root.pathname}): ${EVENTS} events in time order ...`);
let t = performance.now();
for (let i = 0; i < EVENTS; i += BATCH) {
  const batch: Ev[] = [];
  for (let j = i; j < Math.min(EVENTS, i + BATCH); j++) batch.push(newEvent(ts0 + Math.floor(j * 7.3)));
  await write(batch, []);
  for (const e of batch) held.push(e);
}
await checkpoint();
const inOrder = EVENTS / ((performance.now() - t) / 1000);

console.error(`merkle_rate: ${RANDOM_BATCHES} batches of ${BATCH} inserts at random times ...`);
const randomBatches = Array.from(
  { length: RANDOM_BATCHES },
  () => Array.from({ length: BATCH }, () => newEvent(ts0 + Math.floor(Math.random() * span))),
);
t = performance.now();
split.tree = split.kv = 0;
for (const b of randomBatches) await write(b, []);
await checkpoint();
const randomInsert = (RANDOM_BATCHES * BATCH) / ((performance.now() - t) / 1000);
const insertSplit = {
  treeUs: (split.tree * 1000) / (RANDOM_BATCHES * BATCH),
  kvUs: (split.kv * 1000) / (RANDOM_BATCHES * BATCH),
};
let deleteSplit: typeof insertSplit | null = null;
for (const b of randomBatches) for (const e of b) held.push(e);

let randomDelete: number | null = null;
let live = held;
if (typeof trees.update === "function") {
  console.error(`merkle_rate: ${RANDOM_BATCHES} batches of ${BATCH} removals of random events ...`);
  // Distinct random victims: a partial Fisher-Yates shuffle.
  const victims: Ev[] = [];
  for (let k = 0; k < RANDOM_BATCHES * BATCH; k++) {
    const r = k + Math.floor(Math.random() * (held.length - k));
    [held[k], held[r]] = [held[r]!, held[k]!];
    victims.push(held[k]!);
  }
  t = performance.now();
  split.tree = split.kv = 0;
  for (let k = 0; k < victims.length; k += BATCH) await write([], victims.slice(k, k + BATCH));
  await checkpoint();
  randomDelete = victims.length / ((performance.now() - t) / 1000);
  deleteSplit = { treeUs: (split.tree * 1000) / victims.length, kvUs: (split.kv * 1000) / victims.length };
  live = held.slice(victims.length);
}

// The slowest load: a journal just under its limit, all random inserts, replayed by a fresh reader.
let replay: { items: number; ms: number; withoutJournalMs: number } | null = null;
if (typeof trees.checkpointAll === "function" && RANDOM_BATCHES > 0) {
  const { MERKLE_JOURNAL_ITEMS_MAX: journalMax } = await imp("core/limits.ts");
  let t0 = performance.now();
  await new store.GroupTrees(kv).root(hex(group));
  const withoutJournalMs = performance.now() - t0;
  let items = 0;
  while (items + BATCH <= journalMax) {
    const b = Array.from({ length: BATCH }, () => newEvent(ts0 + Math.floor(Math.random() * span)));
    await write(b, []);
    for (const e of b) live.push(e);
    items += BATCH;
  }
  t0 = performance.now();
  await new store.GroupTrees(kv).root(hex(group));
  replay = { items, ms: performance.now() - t0, withoutJournalMs };
}

const info = await trees.root(hex(group));
const built = MerkleTree.build(live.map((e) => ({ ts: e.ts, id: e.id })).sort(compareItems));
let merkleBytes = 0;
const mp = keys.merklePrefix(group);
for await (const [k, v] of kv.range({ gte: mp, lt: keys.prefixEnd(mp) })) merkleBytes += k.length + v.length;
await kv.close();
await Deno.remove(dir, { recursive: true });
console.log(JSON.stringify({
  inOrder,
  randomInsert,
  randomDelete,
  count: info.count,
  bytesPerEvent: merkleBytes / info.count,
  sameRootAsBuild: info.root === hex(built.root.hash) && info.count === built.root.count,
  insertSplit,
  deleteSplit,
  replay,
}));

function hex(b: Uint8Array): string {
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}
