// One conformance suite for every Kv backend (as abstract-level's suite does for its stores): memory, RocksDB and
// IndexedDB (fake-indexeddb in Deno; tests/browser_test.ts runs the real one). Each backend must give the same answers
// to the same operations, checked against a plain sorted model, including range bounds, reverse, limits, keys-only
// scans, atomic batches, binary keys with 0x00 and 0xff bytes, and use after close.
//
// The Merkle tree and negentropy run unchanged over each backend: the last case builds a group's tree through
// GroupTrees on each and compares roots and a reconciliation against the memory backend's.
import { assert, assertEquals, assertRejects } from "@std/assert";
import "fake-indexeddb/auto";
import { compareBytes, toHex } from "../core/bytes.ts";
import type { Kv, KvRange } from "../storage/kv.ts";
import { MemoryKv } from "../storage/kv.ts";
import { openRocks } from "../storage/kv_rocks.ts";
import { IDB_RANGE_CHUNK, openIndexedDb } from "../storage/kv_idb.ts";
import { GroupTrees } from "../storage/merkle_store.ts";
import { Reconciler } from "../merkle/negentropy.ts";

/** What this test calls of the IndexedDB factory (Deno's type library has no IndexedDB). */
interface IdbFactory {
  deleteDatabase(name: string): { onsuccess: unknown; onerror: unknown; onblocked: unknown };
}

interface Backend {
  name: string;
  open(): Promise<{ kv: Kv; reopen(): Promise<Kv>; cleanup(): Promise<void> }>;
}

let idbN = 0;
const BACKENDS: Backend[] = [
  {
    name: "memory",
    open() {
      const kv = new MemoryKv();
      // Memory does not survive a close: "reopen" hands the same instance back, unclosed.
      return Promise.resolve({ kv, reopen: () => Promise.resolve(kv), cleanup: () => Promise.resolve() });
    },
  },
  {
    name: "rocksdb",
    async open() {
      const dir = await Deno.makeTempDir({ prefix: "xf-kv-" });
      return {
        kv: await openRocks(dir),
        reopen: () => openRocks(dir),
        cleanup: () => Deno.remove(dir, { recursive: true }),
      };
    },
  },
  {
    name: "indexeddb",
    async open() {
      const name = `xf-kv-${++idbN}`;
      return {
        kv: await openIndexedDb(name),
        reopen: () => openIndexedDb(name),
        cleanup: async () => {
          await new Promise<void>((resolve) => {
            const r = (globalThis as unknown as { indexedDB: IdbFactory }).indexedDB.deleteDatabase(name);
            r.onsuccess = r.onerror = r.onblocked = () => resolve();
          });
        },
      };
    },
  },
];

const b = (...xs: number[]) => Uint8Array.from(xs);
const enc = (s: string) => new TextEncoder().encode(s);

/** A deterministic random source (mulberry32). */
function rng(seed: number) {
  return () => {
    seed |= 0;
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

async function collect(kv: Kv, r: KvRange): Promise<[string, string][]> {
  const out: [string, string][] = [];
  for await (const [k, v] of kv.range(r)) out.push([toHex(k), toHex(v)]);
  return out;
}

/** What a range must return, from a sorted model. */
function expected(model: Map<string, Uint8Array>, r: KvRange): [string, string][] {
  const keys = [...model.keys()].map((h) => Uint8Array.from(h.match(/../g)?.map((x) => parseInt(x, 16)) ?? []));
  keys.sort(compareBytes);
  let sel = keys.filter((k) =>
    (!r.gt || compareBytes(k, r.gt) > 0) && (!r.gte || compareBytes(k, r.gte) >= 0) &&
    (!r.lt || compareBytes(k, r.lt) < 0) && (!r.lte || compareBytes(k, r.lte) <= 0)
  );
  if (r.reverse) sel = sel.reverse();
  if (r.limit !== undefined) sel = sel.slice(0, r.limit);
  return sel.map((k) => [toHex(k), r.values === false ? "" : toHex(model.get(toHex(k))!)]);
}

for (const be of BACKENDS) {
  Deno.test(`Kv conformance (${be.name}): get, getMany, batch put and del, overwrite`, async () => {
    const { kv, cleanup } = await be.open();
    try {
      assertEquals(await kv.get(b(1)), undefined);
      await kv.batch([
        { type: "put", key: b(1), value: enc("one") },
        { type: "put", key: b(2), value: enc("two") },
        { type: "put", key: b(0), value: new Uint8Array(0) },
      ], { sync: true });
      assertEquals(await kv.get(b(1)), enc("one"));
      assertEquals(await kv.get(b(0)), new Uint8Array(0), "an empty value is a value, not absence");
      assertEquals(await kv.getMany([b(2), b(9), b(1)]), [enc("two"), undefined, enc("one")]);
      assertEquals(await kv.getMany([]), []);
      await kv.batch([{ type: "put", key: b(1), value: enc("uno") }, { type: "del", key: b(2) }, {
        type: "del",
        key: b(7),
      }]);
      assertEquals(await kv.get(b(1)), enc("uno"));
      assertEquals(await kv.get(b(2)), undefined);
      // A value handed in is copied: changing the caller's array later changes nothing stored.
      const v = enc("mutable");
      await kv.batch([{ type: "put", key: b(3), value: v }]);
      v[0] = 0;
      assertEquals(await kv.get(b(3)), enc("mutable"));
      // Within one batch the later op on a key wins.
      await kv.batch([{ type: "put", key: b(4), value: enc("a") }, { type: "del", key: b(4) }]);
      assertEquals(await kv.get(b(4)), undefined);
      await kv.batch([{ type: "del", key: b(5) }, { type: "put", key: b(5), value: enc("b") }]);
      assertEquals(await kv.get(b(5)), enc("b"));
    } finally {
      await kv.close();
      await cleanup();
    }
  });

  Deno.test(`Kv conformance (${be.name}): ranges match a sorted model (bounds, reverse, limit, keys only)`, async () => {
    const { kv, cleanup } = await be.open();
    try {
      const rand = rng(7);
      const model = new Map<string, Uint8Array>();
      // Binary keys of varied length, with 0x00 and 0xff bytes, enough for several IndexedDB chunks.
      const n = IDB_RANGE_CHUNK * 2 + 37;
      const ops = [];
      for (let i = 0; i < n; i++) {
        const len = 1 + Math.floor(rand() * 5);
        const k = new Uint8Array(len);
        for (let j = 0; j < len; j++) k[j] = rand() < 0.2 ? 0 : rand() < 0.25 ? 0xff : Math.floor(rand() * 256);
        const v = enc(`v${i}`);
        model.set(toHex(k), v);
        ops.push({ type: "put" as const, key: k, value: v });
      }
      await kv.batch(ops);
      const keys = [...model.keys()].sort();
      const pick = () =>
        Uint8Array.from(keys[Math.floor(rand() * keys.length)]!.match(/../g)!.map((x) => parseInt(x, 16)));
      const cases: KvRange[] = [
        {},
        { reverse: true },
        { limit: 3 },
        { reverse: true, limit: IDB_RANGE_CHUNK + 1 },
        {
          values: false,
        },
        { gte: b(0xff) },
        { lt: b(0) },
        { lte: b(0) },
        { gt: b(0xff, 0xff, 0xff, 0xff, 0xff, 0xff) },
      ];
      for (let i = 0; i < 40; i++) {
        const r: KvRange = {};
        const lo = pick(), hi = pick();
        if (rand() < 0.5) r.gte = lo;
        else r.gt = lo;
        if (rand() < 0.5) r.lt = hi;
        else r.lte = hi;
        if (rand() < 0.4) r.reverse = true;
        if (rand() < 0.3) r.limit = Math.floor(rand() * 50);
        if (rand() < 0.3) r.values = false;
        cases.push(r);
      }
      // Equal bounds, open and closed.
      const k0 = pick();
      cases.push({ gte: k0, lte: k0 }, { gt: k0, lte: k0 }, { gte: k0, lt: k0 }, { gte: b(9), lt: b(3) });
      for (const r of cases) assertEquals(await collect(kv, r), expected(model, r), JSON.stringify(r));
    } finally {
      await kv.close();
      await cleanup();
    }
  });

  Deno.test(`Kv conformance (${be.name}): a scan goes on while the caller awaits other reads`, async () => {
    const { kv, cleanup } = await be.open();
    try {
      const ops = [];
      for (let i = 0; i < IDB_RANGE_CHUNK + 10; i++) {
        ops.push({ type: "put" as const, key: b(1, i >> 8, i & 255), value: b(i & 255) });
      }
      await kv.batch(ops);
      let n = 0;
      for await (const [k] of kv.range({ gte: b(1), lt: b(2) })) {
        // The index's query does this: a getMany between steps of a scan.
        const [v] = await kv.getMany([k]);
        assert(v && v.length === 1);
        n++;
      }
      assertEquals(n, IDB_RANGE_CHUNK + 10);
    } finally {
      await kv.close();
      await cleanup();
    }
  });

  Deno.test(`Kv conformance (${be.name}): what was written is there after a close and reopen; a closed store refuses`, async () => {
    const { kv, reopen, cleanup } = await be.open();
    await kv.batch([{ type: "put", key: enc("t/1"), value: enc("x") }], { sync: true });
    await kv.compact(enc("t"), enc("u"));
    if (be.name !== "memory") {
      await kv.close();
      await assertRejects(() => kv.get(enc("t/1")), Error, "closed");
    }
    const again = await reopen();
    try {
      assertEquals(await again.get(enc("t/1")), enc("x"));
    } finally {
      await again.close();
      await cleanup();
    }
  });

  Deno.test(`Kv conformance (${be.name}): the Merkle tree and negentropy run unchanged on it`, async () => {
    const { kv, cleanup } = await be.open();
    const ref = new MemoryKv();
    try {
      const rand = rng(11);
      const group = new Uint8Array(32).fill(5);
      const events = [];
      for (let i = 0; i < 3000; i++) {
        const id = new Uint8Array(32);
        for (let j = 0; j < 32; j++) id[j] = Math.floor(rand() * 256);
        events.push({ group, ts: 1_700_000_000_000 + Math.floor(rand() * 1e9), id });
      }
      const gid = toHex(group);
      const roots: string[] = [];
      for (const store of [kv, ref]) {
        const trees = new GroupTrees(store);
        for (let i = 0; i < events.length; i += 500) {
          const u = await trees.update(events.slice(i, i + 500), i >= 1000 ? events.slice(i - 1000, i - 900) : []);
          await store.batch(u.ops);
          u.commit();
        }
        // A fresh GroupTrees reads the pages back from the store.
        roots.push((await new GroupTrees(store).root(gid)).root);
      }
      assertEquals(roots[0], roots[1]);
      // Reconcile the backend's tree against a tree lacking 20 events: the difference is found exactly.
      const a = await new GroupTrees(kv).tree(gid);
      const fewer = new MemoryKv();
      const t2 = new GroupTrees(fewer);
      // The backend's tree lost four ranges of 100 (the updates above); the second tree lacks every 150th one more.
      const inA = (i: number) => ![0, 500, 1000, 1500].some((s) => i >= s && i < s + 100);
      const kept = events.filter((_, i) => inA(i) && i % 150 !== 7);
      const u2 = await t2.update(kept, []);
      await fewer.batch(u2.ops);
      u2.commit();
      const r1 = new Reconciler(a), r2 = new Reconciler(await t2.tree(gid), { idListReply: true });
      let msg: Uint8Array | null = r1.initiate();
      const have: string[] = [];
      for (let round = 0; msg && round < 20; round++) {
        const reply = r2.reconcile(msg).output;
        if (!reply) break;
        const res = r1.reconcile(reply);
        have.push(...res.have.map(toHex));
        msg = res.output;
      }
      const want = events.filter((_, i) => inA(i) && i % 150 === 7).map((e) => toHex(e.id)).sort();
      assertEquals(have.sort(), want);
    } finally {
      await kv.close();
      await cleanup();
    }
  });
}
