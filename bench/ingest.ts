// Ingest benchmark (issue: a node that never loses an event). Measures, in
// one run: durable end-to-end ingest over HTTP and through the library API,
// acknowledgement latency at half that rate, shedding at twice that rate
// with the node's memory peak, and beside them the physical limit (Ed25519
// verifications per second on one core), raw RocksDB batched puts, and
// hypercore's batched append (run under Node).
import { createPrivateKey, createPublicKey, sign as nodeSign, verify as nodeVerify } from "node:crypto";
import { TextLineStream } from "@std/streams";
import { cborArrayOf, openNode } from "../node.ts";
import { generateKeyPair } from "../storage/ed25519.ts";
import { createGroup, signEvent, type StoredEvent } from "../storage/event.ts";
import { openRocks } from "../storage/kv_rocks.ts";
import { eventKey } from "../storage/keys.ts";
import { percentile, type Row, toHex } from "./_table.ts";

const N = Number(Deno.env.get("XF_BENCH_EVENTS") ?? 60_000);
/** The V8 flags `deno task start` runs the node with (see deno.json). */
const V8_FLAGS = (JSON.parse(await Deno.readTextFile(new URL("../deno.json", import.meta.url))).tasks.start as string)
  .split(" ").filter((a) => a.startsWith("--v8-flags"));

/** Ed25519 verifications per second on one core (node:crypto, synchronous). */
function verifyRate(): number {
  const seed = new Uint8Array(32).fill(3);
  const der = new Uint8Array([0x30, 0x2e, 2, 1, 0, 0x30, 5, 6, 3, 0x2b, 0x65, 0x70, 4, 0x22, 4, 0x20, ...seed]);
  const priv = createPrivateKey({ key: der as unknown as Buffer, format: "der", type: "pkcs8" });
  const pub = createPublicKey(priv);
  const msg = new Uint8Array(300);
  const sig = nodeSign(null, msg, priv);
  const n = 20_000;
  const t = performance.now();
  for (let i = 0; i < n; i++) if (!nodeVerify(null, msg, pub, sig)) throw new Error("verify failed");
  return n / ((performance.now() - t) / 1000);
}

async function rocksPutRate(events: StoredEvent[]): Promise<number> {
  const dir = await Deno.makeTempDir({ prefix: "xf-bench-rocks-" });
  const kv = await openRocks(dir);
  const t = performance.now();
  for (let i = 0; i < events.length; i += 500) {
    await kv.batch(
      events.slice(i, i + 500).map((e) => ({ type: "put" as const, key: eventKey(e.id), value: e.bytes })),
      { sync: true },
    );
  }
  const rate = events.length / ((performance.now() - t) / 1000);
  await kv.close();
  await Deno.remove(dir, { recursive: true });
  return rate;
}

/** hypercore, the peer figure's package: installed with npm on first use, for the benchmark only. */
export const HYPERCORE = "hypercore@11.39.5";

async function hypercoreRate(): Promise<number | null> {
  try {
    // Bench-only: `deno task start` and `deno task test` never install it. It runs under Node from a cache dir.
    const dir = `${Deno.env.get("XF_BENCH_CACHE") ?? "/tmp/xf-bench-cache"}/hypercore`;
    await Deno.mkdir(dir, { recursive: true });
    if (!(await Deno.stat(`${dir}/node_modules/hypercore`).catch(() => null))) {
      const inst = await new Deno.Command("npm", {
        args: ["install", "--no-save", "--no-audit", "--no-fund", "--prefix", dir, HYPERCORE],
        stdout: "null",
        stderr: "piped",
      }).output();
      if (!inst.success) return null;
    }
    await Deno.copyFile(new URL("./hypercore_append.mjs", import.meta.url), `${dir}/hypercore_append.mjs`);
    const out = await new Deno.Command("node", {
      args: [`${dir}/hypercore_append.mjs`, "50000", "500"],
      stdout: "piped",
      stderr: "piped",
      cwd: dir,
    }).output();
    return JSON.parse(new TextDecoder().decode(out.stdout)).appendsPerSec;
  } catch {
    return null;
  }
}

export async function makeWorkload(n: number) {
  const owner = await generateKeyPair();
  const { gid, manifest } = await createGroup(owner, { name: "bench", policy: 0 });
  const authors = await Promise.all(Array.from({ length: 8 }, () => generateKeyPair()));
  const ts0 = Date.now() - 10_000_000;
  const events = await Promise.all(Array.from({ length: n }, (_, i) =>
    signEvent(authors[i % authors.length]!, {
      group: gid,
      ts: ts0 + i,
      kind: 16,
      tags: [["n", String(i)]],
      payload: new Uint8Array(200).fill(i & 0xff),
    })));
  return { gid, manifest, events };
}

/**
 * Signed events packed straight into request bodies of `per` events each (CBOR arrays), so the load
 * generator holds a few hundred buffers instead of a few hundred thousand objects (whose garbage
 * collection would otherwise slow the client, not the node).
 */
/**
 * Submit request bodies through the library API, `writers` at a time, as a well-behaved app does: past the in-flight
 * limit (the index behind the acks) it waits 5 ms and retries. Returns how many submissions were answered OVERLOADED.
 */
export async function submitBodies(
  node: { submit(gid: Uint8Array, body: Uint8Array): Promise<unknown> },
  gid: Uint8Array,
  bodies: readonly Uint8Array[],
  writers = 4,
): Promise<number> {
  let next = 0;
  let shed = 0;
  await Promise.all(Array.from({ length: writers }, async () => {
    while (next < bodies.length) {
      const body = bodies[next++]!;
      for (;;) {
        try {
          await node.submit(gid, body);
          break;
        } catch (e) {
          if ((e as { code?: string }).code !== "OVERLOADED") throw e;
          shed++;
          await new Promise((r) => setTimeout(r, 5));
        }
      }
    }
  }));
  return shed;
}

export async function makeBodies(
  gid: Uint8Array,
  n: number,
  per: number,
  tsBase: number,
): Promise<{ bodies: Uint8Array[]; events: number }> {
  const authors = await Promise.all(Array.from({ length: 8 }, () => generateKeyPair()));
  const bodies: Uint8Array[] = [];
  for (let i = 0; i < n; i += per) {
    const chunk = await Promise.all(
      Array.from({ length: Math.min(per, n - i) }, (_, j) =>
        signEvent(authors[(i + j) % authors.length]!, {
          group: gid,
          ts: tsBase + i + j,
          kind: 16,
          tags: [["n", String(i + j)]],
          payload: new Uint8Array(200).fill((i + j) & 0xff),
        })),
    );
    bodies.push(cborArrayOf(chunk.map((e) => e.bytes)));
  }
  return { bodies, events: n };
}

async function postBody(url: string, gid: Uint8Array, body: Uint8Array): Promise<{ status: number; stored: number }> {
  const r = await fetch(`${url}/v1/groups/${toHex(gid)}/events`, {
    method: "POST",
    body: body as BodyInit,
    headers: { "content-type": "application/cbor" },
  });
  if (r.status !== 200) {
    await r.body?.cancel();
    // A 503 without Retry-After counts as a failure, not as shedding.
    if (r.status === 503 && !r.headers.get("retry-after")) return { status: 0, stored: 0 };
    return { status: r.status, stored: 0 };
  }
  const { results } = await r.json();
  return { status: 200, stored: results.filter((x: { status: string }) => x.status === "stored").length };
}

export async function startNodeProcess(dir: string) {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      ...V8_FLAGS,
      new URL("../net/main.ts", import.meta.url).pathname,
      "serve",
      "--data",
      dir,
      "--port",
      "0",
    ],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).pipeThrough(
    new TextLineStream() as unknown as TransformStream<string, string>,
  ).getReader();
  const first = (await reader.read()).value ?? "";
  const url = /^listening on (\S+)$/.exec(first)?.[1];
  if (!url) throw new Error(`node did not start: ${first}`);
  (async () => {
    while (!(await reader.read()).done) { /* drain */ }
  })().catch(() => {});
  const rssPeakMb = async () => {
    const status = await Deno.readTextFile(`/proc/${child.pid}/status`);
    return Number(/VmHWM:\s+(\d+)/.exec(status)![1]) / 1024;
  };
  return { child, url, rssPeakMb };
}

/** Closed loop: W writers, each posting bodies back to back; events stored per second. */
export async function httpThroughput(url: string, gid: Uint8Array, bodies: Uint8Array[], writers = 4) {
  let next = 0;
  let stored = 0;
  const t = performance.now();
  await Promise.all(Array.from({ length: writers }, async () => {
    while (next < bodies.length) {
      // Not `stored += await …`: that reads `stored` before the await and loses the other writers' counts.
      const r = await postBody(url, gid, bodies[next++]!);
      stored += r.stored;
    }
  }));
  return stored / ((performance.now() - t) / 1000);
}

/** Open loop: bodies of `per` events offered at `rate` events/s for at most `seconds`. */
async function openLoop(
  url: string,
  gid: Uint8Array,
  bodies: Uint8Array[],
  per: number,
  rate: number,
  seconds: number,
) {
  const latencies: number[] = [];
  let shed = 0, stored = 0, sent = 0, other = 0;
  const interval = (per / rate) * 1000;
  const start = performance.now();
  const inflight: Promise<void>[] = [];
  let i = 0;
  while (performance.now() - start < seconds * 1000 && i < bodies.length) {
    const due = start + i * interval;
    const wait = due - performance.now();
    if (wait > 1) await new Promise((r) => setTimeout(r, wait));
    const body = bodies[i++]!;
    sent += per;
    const t0 = performance.now();
    inflight.push(
      postBody(url, gid, body).then((r) => {
        if (r.status === 200) {
          latencies.push(performance.now() - t0);
          stored += r.stored;
        } else if (r.status === 503) shed += per;
        else other += per;
      }, () => {
        other += per;
      }),
    );
  }
  await Promise.all(inflight);
  const elapsed = (performance.now() - start) / 1000;
  latencies.sort((a, b) => a - b);
  return { offered: sent / elapsed, stored: stored / elapsed, shed, other, latencies };
}

/** The stage histograms of a node's /metrics: per stage and kind (queue, service), bucket counts, sum, count. */
async function stageHistograms(url: string) {
  const text = await (await fetch(`${url}/metrics`)).text();
  const out = new Map<string, { le: number[]; counts: number[]; sum: number; count: number }>();
  for (const line of text.split("\n")) {
    const m = /^xf_stage_(queue|service)_seconds_(bucket|sum|count)\{stage="(\w+)"(?:,le="([^"]+)")?\} (\S+)$/.exec(
      line,
    );
    if (!m) continue;
    const key = `${m[3]} ${m[1]}`;
    const h = out.get(key) ?? { le: [], counts: [], sum: 0, count: 0 };
    if (m[2] === "bucket") {
      h.le.push(m[4] === "+Inf" ? Infinity : Number(m[4]));
      h.counts.push(Number(m[5]));
    } else if (m[2] === "sum") h.sum = Number(m[5]);
    else h.count = Number(m[5]);
    out.set(key, h);
  }
  return out;
}

/**
 * Where an acknowledgement's time goes, per stage, between two scrapes: batches served, mean and p99 (bucket
 * bound) of queue wait (sent by the stage before → taken here) and service (taken → done).
 */
function breakdown(
  before: Awaited<ReturnType<typeof stageHistograms>>,
  after: Awaited<ReturnType<typeof stageHistograms>>,
): string[] {
  const lines: string[] = [];
  for (const stage of ["ingest", "decode", "wal_flush", "index", "advertise"]) {
    const parts: string[] = [];
    for (const kind of ["queue", "service"]) {
      const a = after.get(`${stage} ${kind}`);
      if (!a) continue;
      const b = before.get(`${stage} ${kind}`);
      const n = a.count - (b?.count ?? 0);
      const mean = n > 0 ? ((a.sum - (b?.sum ?? 0)) / n) * 1000 : 0;
      let p99 = 0;
      for (let i = 0; i < a.le.length; i++) {
        if (a.counts[i]! - (b?.counts[i] ?? 0) >= 0.99 * n) {
          p99 = a.le[i]! * 1000;
          break;
        }
      }
      parts.push(`${kind} mean ${mean.toFixed(1)} ms, p99 ≤ ${p99} ms`);
      if (kind === "service") parts.unshift(`${n} batches`);
    }
    lines.push(`  - ${stage}: ${parts.join("; ")}`);
  }
  return lines;
}

/** Waits until the library node's index holds `n` events of the group. */
async function untilIndexedLib(
  node: { merkle(gid: string): Promise<{ count: number } | null> },
  gid: Uint8Array,
  n: number,
) {
  for (let i = 0; i < 12_000; i++) {
    if (((await node.merkle(toHex(gid)))?.count ?? 0) >= n) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error(`index did not reach ${n} events`);
}

/** Polls a group's Merkle count until it reaches `n`; ms waited. */
async function untilIndexed(url: string, gid: Uint8Array, n: number, timeoutMs = 120_000): Promise<number> {
  const t = performance.now();
  while (performance.now() - t < timeoutMs) {
    const r = await fetch(`${url}/v1/groups/${toHex(gid)}/merkle`);
    const { count } = await r.json();
    if (count >= n) return performance.now() - t;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`index did not reach ${n} events in ${timeoutMs} ms`);
}

/** Run the ingest benchmark; returns table rows. */
export async function benchIngest(): Promise<{ rows: Row[]; notes: string[] }> {
  const rows: Row[] = [];
  const notes: string[] = [];
  const owner = await generateKeyPair();
  const { gid, manifest } = await createGroup(owner, { name: "bench", policy: 0 });
  const ts0 = Date.now() - 100_000_000;
  console.error(`ingest: signing events ...`);
  const http = await makeBodies(gid, N, 500, ts0);
  const lib = await makeBodies(gid, N, 500, ts0 + N);
  // Open-loop phases get fresh events sized after the measured rate (capped): half rate for 5 s, twice it for 4 s.
  const halfMax = Math.min(15_000, N) * 5;
  const half = await makeBodies(gid, halfMax, 20, ts0 + 2 * N);
  const overMax = Math.min(40_000, 2 * N) * 4;
  const overBodies = await makeBodies(gid, overMax, 100, ts0 + 2 * N + halfMax);

  // HTTP first, on a quiet machine: the node in its own process, as `deno task start` runs it.
  const dir = await Deno.makeTempDir({ prefix: "xf-bench-http-" });
  const proc = await startNodeProcess(dir);
  let httpRate = 0, p99 = 0, p999 = 0, halfRate = 0, over: Awaited<ReturnType<typeof openLoop>> | null = null;
  let rssPeak = 0, sustained = 0;
  try {
    await postBody(proc.url, gid, cborArrayOf([manifest.bytes]));
    const tHttp = performance.now();
    httpRate = await httpThroughput(proc.url, gid, http.bodies);
    // Acknowledged is not yet indexed: the rate the node sustains is the one at which the index holds them too.
    await untilIndexed(proc.url, gid, N + 1);
    sustained = N / ((performance.now() - tHttp) / 1000);
    halfRate = Math.round(httpRate / 2);
    const before = await stageHistograms(proc.url);
    const h = await openLoop(proc.url, gid, half.bodies, 20, halfRate, 5);
    const after = await stageHistograms(proc.url);
    p99 = percentile(h.latencies, 0.99);
    p999 = percentile(h.latencies, 0.999);
    notes.push(
      `ack latency at ${halfRate} ev/s offered (open loop, batches of 20, ${h.latencies.length} requests): p50 ${
        percentile(h.latencies, 0.5).toFixed(1)
      } ms, p90 ${percentile(h.latencies, 0.9).toFixed(1)} ms, p99 ${p99.toFixed(1)} ms, p99.9 ${
        p999.toFixed(1)
      } ms, max ${(h.latencies.at(-1) ?? 0).toFixed(1)} ms`,
      `per-stage breakdown during that run (queue: from the stage before sending to this stage taking the batch; ` +
        `service: taken to done; p99 as the histogram bucket bound):`,
      ...breakdown(before, after),
      `HTTP closed loop: ${httpRate.toFixed(0)} ev/s acknowledged; ${
        sustained.toFixed(0)
      } ev/s once the index also holds them (all ${N} indexed)`,
    );
    over = await openLoop(proc.url, gid, overBodies.bodies, 100, httpRate * 2, 4);
    rssPeak = await proc.rssPeakMb();
  } finally {
    proc.child.kill("SIGTERM");
    await proc.child.status;
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }

  // Library API, stages in Workers (the service's own layout).
  const libDir = await Deno.makeTempDir({ prefix: "xf-bench-lib-" });
  // XF_INDEX_NICE (as `xf serve` reads it for the HTTP node above): the index thread's nice value in this run.
  const nice = Deno.env.get("XF_INDEX_NICE");
  const node = await openNode({ dataDir: libDir, ...(nice === undefined ? {} : { nice: { index: Number(nice) } }) });
  notes.push(`index thread nice value: ${nice ?? "10 (default)"} (XF_INDEX_NICE)`);
  await node.publish(manifest);
  const t0 = performance.now();
  const libShed = await submitBodies(node, gid, lib.bodies);
  await untilIndexedLib(node, gid, N + 1);
  const libRate = N / ((performance.now() - t0) / 1000);
  notes.push(
    `library publish: ${N} events acknowledged and indexed; ${libShed} submissions answered OVERLOADED and retried`,
  );
  await node.close();
  await Deno.remove(libDir, { recursive: true });

  const verify = verifyRate();
  const rocks = await rocksPutRate((await makeWorkload(20_000)).events);
  const hyper = await hypercoreRate();
  rows.push(
    {
      figure: "HTTP batch POST, durable (ev/s)",
      value: httpRate,
      peer: "0.8 × one-core Ed25519 verify (target)",
      peerValue: 0.8 * verify,
    },
    {
      figure: "HTTP batch POST, durable and indexed (ev/s)",
      value: sustained,
      peer: "0.8 × one-core Ed25519 verify (target)",
      peerValue: 0.8 * verify,
    },
    {
      figure: "library publish, durable and indexed (ev/s)",
      value: libRate,
      peer: "1.0 × one-core Ed25519 verify (target, node:crypto)",
      peerValue: verify,
    },
    {
      figure: "HTTP batch POST, durable (ev/s)",
      value: httpRate,
      peer: "RocksDB batched puts (sync, 500/batch)",
      peerValue: rocks,
    },
  );
  if (hyper) {
    rows.push({
      figure: "HTTP batch POST, durable (ev/s)",
      value: httpRate,
      peer: "hypercore batched append (Node, 500/batch)",
      peerValue: hyper,
    });
  } else notes.push("hypercore: could not run under node on this machine");
  rows.push({
    figure: `ack p99 at ${halfRate} ev/s, batches of 20 (ms)`,
    value: p99,
    peer: "limit 50 ms",
    peerValue: 50,
    lowerIsBetter: true,
  }, {
    figure: `ack p99.9 at ${halfRate} ev/s, batches of 20 (ms)`,
    value: p999,
    peer: "limit 100 ms",
    peerValue: 100,
    lowerIsBetter: true,
  });
  if (over) {
    rows.push({
      figure: "memory peak under 2× load (MB RSS)",
      value: rssPeak,
      peer: "limit 512 MB",
      peerValue: 512,
      lowerIsBetter: true,
    });
    notes.push(
      `2× load: offered ${over.offered.toFixed(0)} ev/s, stored ${
        over.stored.toFixed(0)
      } ev/s, shed with 503 (each with Retry-After): ${over.shed} events, other failures: ${over.other}`,
    );
  }
  return { rows, notes };
}
