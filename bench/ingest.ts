// Ingest benchmark (issue: a node that never loses an event). Measures, in
// one run: durable end-to-end ingest over HTTP and through the library API,
// acknowledgement latency at half that rate, shedding at twice that rate
// with the node's memory peak, and beside them the physical limit (Ed25519
// verifications per second on one core), raw RocksDB batched puts, and
// hypercore's batched append (run under Node).
import { createPrivateKey, createPublicKey, sign as nodeSign, verify as nodeVerify } from "node:crypto";
import { TextLineStream } from "@std/streams";
import { cborArrayOf, openNode } from "../actors/node.ts";
import { generateKeyPair } from "../storage/ed25519.ts";
import { createGroup, signEvent, type StoredEvent } from "../storage/event.ts";
import { openRocks } from "../storage/kv.ts";
import { eventKey } from "../storage/keys.ts";
import { percentile, type Row, toHex } from "./_table.ts";

const N = Number(Deno.env.get("XF_BENCH_EVENTS") ?? 60_000);

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

async function hypercoreRate(): Promise<number | null> {
  try {
    const out = await new Deno.Command("node", {
      args: [new URL("./hypercore_append.mjs", import.meta.url).pathname, "50000", "500"],
      stdout: "piped",
      stderr: "piped",
      cwd: new URL("..", import.meta.url).pathname,
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

export async function startNodeProcess(dir: string) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL("../net/main.ts", import.meta.url).pathname, "serve", "--data", dir, "--port", "0"],
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

async function postBatch(
  url: string,
  gid: Uint8Array,
  batch: StoredEvent[],
): Promise<{ status: number; stored: number }> {
  const r = await fetch(`${url}/v1/groups/${toHex(gid)}/events`, {
    method: "POST",
    body: cborArrayOf(batch.map((e) => e.bytes)) as BodyInit,
    headers: { "content-type": "application/cbor" },
  });
  if (r.status !== 200) {
    await r.body?.cancel();
    return { status: r.status, stored: 0 };
  }
  const { results } = await r.json();
  const stored = results.filter((x: { status: string }) => x.status === "stored").length;
  if (stored < batch.length && Deno.env.get("XF_BENCH_DEBUG")) {
    console.error(results.find((x: { status: string }) => x.status !== "stored"));
  }
  return { status: 200, stored };
}

/** Closed-loop: W writers, each posting batches back to back. */
export async function httpThroughput(url: string, gid: Uint8Array, events: StoredEvent[], writers = 4, batch = 500) {
  let next = 0;
  let stored = 0;
  const t = performance.now();
  await Promise.all(Array.from({ length: writers }, async () => {
    while (next < events.length) {
      const b = events.slice(next, next + batch);
      next += batch;
      stored += (await postBatch(url, gid, b)).stored;
    }
  }));
  return stored / ((performance.now() - t) / 1000);
}

/** Open-loop: batches of `batch` events offered at `rate` events/s for `seconds`. */
async function openLoop(
  url: string,
  gid: Uint8Array,
  events: StoredEvent[],
  rate: number,
  seconds: number,
  batch = 20,
) {
  const latencies: number[] = [];
  let shed = 0, stored = 0, sent = 0, other = 0;
  const interval = (batch / rate) * 1000;
  const start = performance.now();
  const inflight: Promise<void>[] = [];
  let i = 0;
  while (performance.now() - start < seconds * 1000 && i < events.length) {
    const due = start + (sent / batch) * interval;
    const wait = due - performance.now();
    if (wait > 1) await new Promise((r) => setTimeout(r, wait));
    const b = events.slice(i, i + batch);
    i += batch;
    sent += batch;
    const t0 = performance.now();
    inflight.push(
      postBatch(url, gid, b).then((r) => {
        if (r.status === 200) {
          latencies.push(performance.now() - t0);
          stored += r.stored;
        } else if (r.status === 503) shed += b.length;
        else other += b.length;
      }, () => {
        other += b.length;
      }),
    );
  }
  await Promise.all(inflight);
  const elapsed = (performance.now() - start) / 1000;
  latencies.sort((a, b) => a - b);
  return { offered: sent / elapsed, stored: stored / elapsed, shed, other, latencies };
}

/** Run the ingest benchmark; returns table rows. */
export async function benchIngest(): Promise<{ rows: Row[]; notes: string[] }> {
  const rows: Row[] = [];
  const notes: string[] = [];
  console.error(`ingest: signing ${N * 4} events ...`);
  const w = await makeWorkload(N * 4);
  const httpEvents = w.events.slice(0, N);
  const libEvents = w.events.slice(N, 2 * N);
  const fresh = w.events.slice(2 * N);

  // HTTP first, on a quiet machine: the node in its own process, as `deno task start` runs it.
  const dir = await Deno.makeTempDir({ prefix: "xf-bench-http-" });
  const proc = await startNodeProcess(dir);
  let httpRate = 0, p99 = 0, halfRate = 0, over: Awaited<ReturnType<typeof openLoop>> | null = null;
  let rssPeak = 0;
  try {
    await postBatch(proc.url, w.gid, [w.manifest]);
    httpRate = await httpThroughput(proc.url, w.gid, httpEvents);
    halfRate = Math.round(httpRate / 2);
    const halfEvents = fresh.splice(0, Math.round(halfRate * 5));
    const half = await openLoop(proc.url, w.gid, halfEvents, halfRate, 5);
    p99 = percentile(half.latencies, 0.99);
    notes.push(
      `ack latency at ${halfRate} ev/s offered (open loop, batches of 20, ${half.latencies.length} requests): p50 ${
        percentile(half.latencies, 0.5).toFixed(1)
      } ms, p90 ${percentile(half.latencies, 0.9).toFixed(1)} ms, p99 ${p99.toFixed(1)} ms, p99.9 ${
        percentile(half.latencies, 0.999).toFixed(1)
      } ms, max ${(half.latencies.at(-1) ?? 0).toFixed(1)} ms`,
    );
    // Twice the measured rate, with events the node has not seen.
    over = await openLoop(proc.url, w.gid, fresh, httpRate * 2, 4, 100);
    rssPeak = await proc.rssPeakMb();
  } finally {
    proc.child.kill("SIGTERM");
    await proc.child.status;
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }

  // Library API, stages in Workers (the service's own layout).
  const libDir = await Deno.makeTempDir({ prefix: "xf-bench-lib-" });
  const node = await openNode({ dataDir: libDir });
  await node.publish(w.manifest);
  let next = 0;
  const t0 = performance.now();
  await Promise.all(Array.from({ length: 4 }, async () => {
    while (next < libEvents.length) {
      const b = libEvents.slice(next, next + 500);
      next += 500;
      await node.publish(b);
    }
  }));
  const libRate = libEvents.length / ((performance.now() - t0) / 1000);
  await node.close();
  await Deno.remove(libDir, { recursive: true });

  const verify = verifyRate();
  const rocks = await rocksPutRate(w.events.slice(0, 50_000));
  const hyper = await hypercoreRate();
  rows.push(
    {
      figure: "HTTP batch POST, durable (ev/s)",
      value: httpRate,
      peer: "0.7 × one-core Ed25519 verify",
      peerValue: 0.7 * verify,
    },
    { figure: "HTTP batch POST, durable (ev/s)", value: httpRate, peer: "target 15,000 ev/s", peerValue: 15_000 },
    {
      figure: "library publish, durable (ev/s)",
      value: libRate,
      peer: "Ed25519 verify, one core (node:crypto)",
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
    figure: `ack p99 at ${halfRate} ev/s (ms)`,
    value: p99,
    peer: "limit 50 ms",
    peerValue: 50,
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
      } ev/s, shed with 503: ${over.shed} events, other failures: ${over.other}`,
    );
  }
  return { rows, notes };
}
