// Each stage's logic in-process, with a fake context: what it emits and asks for given what it takes.
import { toHex } from "../core/bytes.ts";
import { assert, assertEquals } from "@std/assert";
import { makeEvents, testGroup } from "./_helpers.ts";
import { ingestStage, splitBody } from "../actors/ingest.ts";
import { decodeStage } from "../actors/decode.ts";
import { advertiseStage } from "../actors/advertise.ts";
import { type EventBatch, type EventResult, packBatch, unpackBatch } from "../actors/batch.ts";
import { LIMITS, type Limits } from "../core/limits.ts";
import { cborArrayOf } from "../node.ts";
import type { StageContext } from "../actors/runtime.ts";
import { XfError } from "../core/errors.ts";

function fakeCtx(answers: Record<string, (msg: unknown) => unknown> = {}) {
  const out: { to: string; msg: Record<string, unknown> }[] = [];
  const ctx: StageContext = {
    emit: (to, msg) => out.push({ to, msg: msg as Record<string, unknown> }),
    ask: <T>(to: string, msg: unknown) => {
      const f = answers[(msg as { type: string }).type];
      return f ? Promise.resolve(f(msg) as T) : Promise.reject(new XfError("STAGE_DOWN", `no ${to}`));
    },
  };
  const of = (type: string) => out.filter((o) => o.msg.type === type).map((o) => o.msg);
  return { ctx, out, of };
}

Deno.test("splitBody() splits an array of events, takes a single event whole, and refuses bad bodies", async () => {
  const g = await testGroup();
  const evs = await makeEvents(g, 3);
  assertEquals(splitBody(cborArrayOf(evs.map((e) => e.bytes)), LIMITS).map(toHex), evs.map((e) => toHex(e.bytes)));
  assertEquals(splitBody(evs[0]!.bytes, LIMITS).map(toHex), [toHex(evs[0]!.bytes)]);
  const code = (b: Uint8Array, limits: Limits = { ...LIMITS }) => {
    try {
      splitBody(b, limits);
      return "ok";
    } catch (e) {
      return (e as XfError).code;
    }
  };
  assertEquals(code(new Uint8Array()), "EMPTY_BODY");
  assertEquals(code(new Uint8Array([0x80])), "EMPTY_BODY");
  assertEquals(code(new Uint8Array([0x01])), "BAD_CBOR");
  assertEquals(code(evs[0]!.bytes.subarray(0, 40)), "BAD_CBOR");
  assertEquals(code(new Uint8Array([...evs[0]!.bytes, 0])), "BAD_CBOR");
  assertEquals(code(cborArrayOf(evs.map((e) => e.bytes)), { ...LIMITS, http_batch_events_max: 2 }), "BATCH_TOO_LARGE");
  assertEquals(code(new Uint8Array(100).fill(0x80), { ...LIMITS, http_body_bytes_max: 50 }), "BODY_TOO_LARGE");
});

Deno.test("ingest: ids, duplicates within a request and in RocksDB, group mismatch, then decode batches", async () => {
  const g = await testGroup(), other = await testGroup();
  const evs = await makeEvents(g, 4);
  const [foreign] = await makeEvents(other, 1);
  const stage = ingestStage();
  const known = toHex(evs[3]!.id);
  const f = fakeCtx({
    "index.has": (m) => {
      const ids = (m as { ids: Uint8Array }).ids;
      const out: boolean[] = [];
      for (let i = 0; i < ids.length; i += 32) out.push(toHex(ids.subarray(i, i + 32)) === known);
      return out;
    },
  });
  await stage.start!({ limits: LIMITS }, f.ctx);
  const body = cborArrayOf([evs[0]!.bytes, evs[1]!.bytes, evs[0]!.bytes, evs[3]!.bytes, foreign!.bytes, evs[2]!.bytes]);
  await stage.data({ type: "ingest.submit", subs: [{ req: 7, gid: g.gid, body }] }, f.ctx);
  assertEquals(f.of("ingest.split"), [{ type: "ingest.split", req: 7, n: 6 }]);
  const results = f.of("pipeline.results").flatMap((m) => m.items as EventResult[]);
  const byIdx = new Map(results.map((r) => [r.idx, r.status + (r.code ? `:${r.code}` : "")]));
  assertEquals([byIdx.get(2), byIdx.get(3), byIdx.get(4)], ["duplicate", "duplicate", "rejected:GROUP_MISMATCH"]);
  const batches = f.of("decode.batch").map((m) => unpackBatch(m.batch as EventBatch));
  assertEquals(batches.flat().map((it) => it.idx), [0, 1, 5]);
  // The same event again while the first is in flight is a duplicate; once released it is remembered.
  await stage.data({ type: "ingest.submit", subs: [{ req: 8, gid: null, body: evs[0]!.bytes }] }, f.ctx);
  assertEquals((f.of("pipeline.results").at(-1)!.items as EventResult[])[0]!.status, "duplicate");
  await stage.data({ type: "ingest.release", ids: evs[1]!.id, stored: false }, f.ctx);
  await stage.data({ type: "ingest.submit", subs: [{ req: 9, gid: null, body: evs[1]!.bytes }] }, f.ctx);
  assertEquals(f.of("decode.batch").length, 2, "a released (rejected) event may be sent again");
});

Deno.test("decode: shape, clock, group, signature and authorization, in arrival order", async () => {
  const g = await testGroup();
  const evs = await makeEvents(g, 3);
  const bad = evs[2]!.bytes.slice();
  bad[bad.length - 1] = bad[bad.length - 1]! ^ 1;
  const stage = decodeStage();
  const f = fakeCtx({ "index.groups": (m) => (m as { gids: string[] }).gids.map(() => null) });
  await stage.start!({ limits: LIMITS, now: () => Date.now() }, f.ctx);
  const item = (bytes: Uint8Array, idx: number, id: Uint8Array) => ({ bytes, req: 1, idx, id, seq: 0 });
  // Without the manifest first, the group is unknown.
  await stage.data({ type: "decode.batch", batch: packBatch([item(evs[0]!.bytes, 0, evs[0]!.id)]) }, f.ctx);
  assertEquals((f.of("pipeline.results")[0]!.items as EventResult[])[0]!.code, "UNKNOWN_GROUP");
  // Manifest and events in one batch: the manifest admits the group.
  await stage.data({
    type: "decode.batch",
    batch: packBatch([
      item(g.manifest.bytes, 0, g.manifest.id),
      item(evs[1]!.bytes, 1, evs[1]!.id),
      item(bad, 2, evs[2]!.id),
      item(new Uint8Array([0x82, 0x01, 0x02]), 3, new Uint8Array(32)),
    ]),
  }, f.ctx);
  const appended = f.of("wal.append").flatMap((m) => unpackBatch(m.batch as EventBatch).map((it) => it.idx));
  assertEquals(appended, [0, 1]);
  const codes = f.of("pipeline.results").slice(1).flatMap((m) => (m.items as EventResult[]).map((r) => r.code));
  assertEquals(codes.sort(), ["BAD_EVENT", "BAD_SIGNATURE"]);
  assertEquals(f.of("decode.rejected").length, 2);
});

Deno.test("advertise: matches indexed events to subscriptions by group and kind", async () => {
  const g = await testGroup(), h = await testGroup();
  const evs = [...await makeEvents(g, 3), ...await makeEvents(h, 2)];
  const stage = advertiseStage();
  const f = fakeCtx();
  await stage.start!({ limits: LIMITS }, f.ctx);
  await stage.call!({ type: "advertise.subscribe", sub: 1, filter: { gid: toHex(g.gid) } }, f.ctx);
  await stage.call!({ type: "advertise.subscribe", sub: 2, filter: { kinds: [17] } }, f.ctx);
  await stage.data({
    type: "advertise.indexed",
    batch: packBatch(evs.map((e, i) => ({ bytes: e.bytes, req: 0, idx: i, id: e.id, seq: i }))),
  }, f.ctx);
  const [d] = f.of("advertise.deliver");
  const m = d!.matches as { sub: number; idxs: number[] }[];
  assertEquals(m.find((x) => x.sub === 1)!.idxs, [0, 1, 2]);
  assertEquals(m.find((x) => x.sub === 2)!.idxs, [1, 4]); // kinds cycle 16, 17, 18
  assert(await stage.call!({ type: "advertise.unsubscribe", sub: 1 }, f.ctx));
});
