// /metrics as a scraper reads it: the exposition parses, histograms hold their invariants, and the figures agree
// with each other and with the JSON routes (ack count, sync progress, events held, build info).
import { toHex } from "../core/bytes.ts";
import { assert, assertEquals } from "@std/assert";
import { makeEvents, tempNode, testGroup, until } from "./_helpers.ts";
import { createApp } from "../net/app.ts";
import { serve } from "../net/server.ts";
import { Histogram } from "../actors/histogram.ts";
import type { XfNode } from "../node.ts";
import { VERSION } from "../version.ts";

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

interface Exposition {
  types: Map<string, string>;
  samples: Sample[];
}

/** Parse Prometheus text format 0.0.4; throws on a line it cannot read. */
function parse(text: string): Exposition {
  const types = new Map<string, string>();
  const samples: Sample[] = [];
  for (const line of text.split("\n")) {
    if (!line) continue;
    const t = /^# TYPE (\w+) (counter|gauge|histogram|summary|untyped)$/.exec(line);
    if (t) {
      assert(!types.has(t[1]!), `TYPE of ${t[1]} given twice`);
      types.set(t[1]!, t[2]!);
      continue;
    }
    if (line.startsWith("# HELP ")) continue;
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) throw new Error(`Cannot parse exposition line "${line}"`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]!] = l[2]!;
    const value = m[3] === "+Inf" ? Infinity : Number(m[3]);
    assert(!Number.isNaN(value), `Not a number in "${line}"`);
    samples.push({ name: m[1]!, labels, value });
  }
  for (const s of samples) {
    const family = s.name.replace(/_(bucket|sum|count)$/, "");
    assert(types.has(s.name) || types.get(family) === "histogram", `Sample ${s.name} has no TYPE`);
  }
  return { types, samples };
}

/** The value of one sample (labels must match exactly those given); undefined when absent. */
function value(e: Exposition, name: string, labels: Record<string, string> = {}): number | undefined {
  return e.samples.find((s) =>
    s.name === name && Object.keys(s.labels).length === Object.keys(labels).length &&
    Object.entries(labels).every(([k, v]) => s.labels[k] === v)
  )?.value;
}

/**
 * Every histogram series (one per label set besides `le`): `le` increasing up to +Inf, buckets cumulative,
 * `_count` = the +Inf bucket, `_sum` ≥ 0.
 */
function checkHistograms(e: Exposition): string[] {
  const names = [...e.types].filter(([, t]) => t === "histogram").map(([n]) => n);
  for (const n of names) {
    const all = e.samples.filter((s) => s.name === `${n}_bucket`);
    assert(all.length >= 2, `${n} has buckets`);
    const series = new Map<string, typeof all>();
    for (const b of all) {
      const { le: _le, ...rest } = b.labels;
      const key = JSON.stringify(rest);
      series.set(key, [...(series.get(key) ?? []), b]);
    }
    for (const [key, buckets] of series) {
      const labels = JSON.parse(key) as Record<string, string>;
      const les = buckets.map((b) => b.labels.le === "+Inf" ? Infinity : Number(b.labels.le));
      assertEquals(les.at(-1), Infinity, `${n} ${key}: last bucket is +Inf`);
      for (let i = 1; i < buckets.length; i++) {
        assert(les[i]! > les[i - 1]!, `${n} ${key}: le increasing`);
        assert(buckets[i]!.value >= buckets[i - 1]!.value, `${n} ${key}: buckets cumulative (le=${les[i]})`);
      }
      assertEquals(value(e, `${n}_count`, labels), buckets.at(-1)!.value, `${n} ${key}: _count is the +Inf bucket`);
      assert(value(e, `${n}_sum`, labels)! >= 0, `${n} ${key}: _sum`);
    }
  }
  return names;
}

async function scrape(node: XfNode): Promise<Exposition> {
  return parse(await node.metrics());
}

Deno.test("Histogram writes cumulative buckets, _sum and _count", () => {
  const h = new Histogram([0.1, 1]);
  h.observe(0.05);
  h.observe(0.1);
  h.observe(0.5, 3);
  h.observe(7);
  assertEquals(h.lines("x"), [
    'x_bucket{le="0.1"} 2',
    'x_bucket{le="1"} 5',
    'x_bucket{le="+Inf"} 6',
    `x_sum ${0.05 + 0.1 + 1.5 + 7}`,
    "x_count 6",
  ]);
});

Deno.test("/metrics: histograms hold, ack count equals stored + duplicate events, totals match the groups", async () => {
  const t = await tempNode({ limits: { metrics_totals_ms: 0 } });
  try {
    const app = createApp(t.node);
    const g1 = await testGroup("one"), g2 = await testGroup("two");
    const evs = await makeEvents(g1, 40);
    await t.node.publish([g1.manifest, ...evs]);
    await t.node.publish([g2.manifest, ...await makeEvents(g2, 7)]);
    await t.node.publish(evs.slice(0, 5)); // duplicates: acknowledged too
    const bad = new Uint8Array(evs[0]!.bytes);
    bad[bad.length - 1]! ^= 1;
    await t.node.publish(bad); // rejected: not acknowledged
    // A stream sees a live batch: one observation of xf_stream_delivery_seconds.
    const res = await app.request(`/v1/groups/${toHex(g1.gid)}/stream`, { headers: { accept: "text/event-stream" } });
    const reader = res.body!.getReader();
    let seen = "";
    const late = (await makeEvents(g1, 1, Date.now()))[0]!;
    while (!seen.includes(toHex(late.id))) {
      const { value: chunk } = await reader.read();
      seen += new TextDecoder().decode(chunk);
      if (seen.includes("event: ready") && !seen.includes("published")) {
        seen += "published";
        await t.node.publish(late);
      }
    }
    await reader.cancel();

    const resp = await app.request("/metrics");
    assertEquals(resp.status, 200);
    assert(resp.headers.get("content-type")!.startsWith("text/plain"));
    const e = parse(await resp.text());
    const hs = checkHistograms(e);
    for (
      const n of [
        "xf_ack_seconds",
        "xf_sync_delivery_seconds",
        "xf_stream_delivery_seconds",
        "xf_stage_queue_seconds",
        "xf_stage_service_seconds",
      ]
    ) {
      assert(hs.includes(n), `${n} is a histogram`);
    }
    // Every stage served the batches of this test, and says how long they queued and took.
    for (const stage of ["ingest", "decode", "wal_flush", "index"]) {
      assert(value(e, "xf_stage_service_seconds_count", { stage })! > 0, `${stage} served batches`);
      assert(value(e, "xf_stage_queue_seconds_count", { stage })! > 0, `${stage} queue waits`);
    }
    const stored = value(e, "xf_events_out_total", { status: "stored" })!;
    const dup = value(e, "xf_events_out_total", { status: "duplicate" })!;
    assertEquals(stored, 50);
    assertEquals(dup, 5);
    assertEquals(value(e, "xf_ack_seconds_count"), stored + dup);
    assert(value(e, "xf_stream_delivery_seconds_count")! >= 1, "the live batch was timed");
    // Events held: the sum of the groups' Merkle counts, as /v1/groups shows them.
    const groups = (await (await app.request("/v1/groups")).json()).groups as { count: number }[];
    assertEquals(value(e, "xf_groups"), 2);
    assertEquals(value(e, "xf_events"), groups.reduce((n, g) => n + g.count, 0));
    assertEquals(value(e, "xf_events"), 50);
    assert(value(e, "xf_data_bytes")! > 0, "the data directory has bytes");
    const build = e.samples.find((s) => s.name === "xf_build_info")!;
    assertEquals(build.labels.version, VERSION);
    assertEquals(build.labels.deno, Deno.version.deno);
    assertEquals(build.value, 1);
    assert(value(e, "xf_uptime_seconds")! > 0);
    // The old "mean" gauges are gone; their means are ratios of counters.
    assertEquals(e.types.get("xf_wal_batch_records"), undefined);
    assertEquals(e.types.get("xf_index_batch_events"), undefined);
    assertEquals(e.types.get("xf_wal_records_total"), "counter");
    assertEquals(e.types.get("xf_wal_syncs_total"), "counter");
    // /health names the node for the dashboard.
    const h = await (await app.request("/health")).json();
    assertEquals(h.version, VERSION);
    assertEquals(h.key, toHex(t.node.key.publicKey));
    assert(/^[0-9a-f]{64}$/.test(h.nodeId) && h.nodeId !== h.key);
    assert(typeof h.uptime === "number");
  } finally {
    await t.done();
  }
});

Deno.test("/metrics: xf_sync_received_events never exceeds xf_sync_missing_events, during and after a sync", async () => {
  const a = await tempNode({ limits: { metrics_totals_ms: 0 } }),
    b = await tempNode({ limits: { metrics_totals_ms: 0 } });
  const sb = await serve(b.node, { host: "127.0.0.1", port: 0 });
  try {
    const g = await testGroup();
    const gid = toHex(g.gid);
    // Both sides hold events the other lacks: a receives what it asked for, and b pushes nothing unasked
    // into a's progress.
    await a.node.publish([g.manifest, ...await makeEvents(g, 300)]);
    const older = await makeEvents(g, 1500, Date.now() - 5_000_000);
    await b.node.publish([g.manifest, ...older.slice(0, 900)]);
    await b.node.publish(older.slice(900));
    let done = false, scrapes = 0, maxMissing = 0;
    const watch = (async () => {
      while (!done) {
        for (const n of [a.node, b.node]) {
          const e = await scrape(n);
          checkHistograms(e);
          const missing = value(e, "xf_sync_missing_events") ?? 0, received = value(e, "xf_sync_received_events") ?? 0;
          assert(received <= missing, `received ${received} > missing ${missing} during the sync`);
          maxMissing = Math.max(maxMissing, missing);
          scrapes++;
        }
        await new Promise((r) => setTimeout(r, 5));
      }
    })();
    const s = await a.node.sync.connect(sb.url.replace("http", "ws"), [gid]);
    await until(
      async () => (await a.node.merkle(gid))!.count === 1801 && (await b.node.merkle(gid))!.count === 1801,
      20_000,
    );
    done = true;
    await watch;
    assert(scrapes > 2, `scraped ${scrapes} times during the sync`);
    assert(maxMissing > 0, "a scrape saw the sync in progress");
    for (const n of [a.node, b.node]) {
      const e = await scrape(n);
      checkHistograms(e);
      assert((value(e, "xf_sync_received_events") ?? 0) <= (value(e, "xf_sync_missing_events") ?? 0));
      assertEquals(value(e, "xf_events"), 1801);
      assertEquals(
        value(e, "xf_ack_seconds_count"),
        value(e, "xf_events_out_total", { status: "stored" })! +
          value(e, "xf_events_out_total", { status: "duplicate" })!,
      );
    }
    const ea = await scrape(a.node);
    assert(value(ea, "xf_sync_delivery_seconds_count")! >= 1500, "a timed the events it stored from b");
    const eb = await scrape(b.node);
    assert(value(eb, "xf_sync_delivery_seconds_count")! >= 300, "b timed the events it stored from a");
    s.close();
  } finally {
    a.node.sync.close();
    await sb.shutdown();
    await a.done();
    await b.done();
  }
});
