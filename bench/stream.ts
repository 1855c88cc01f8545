// Stream fan-out benchmark: one node process (as `deno task start` runs it), N SSE subscribers on one open group in
// two subscriber processes (bench/stream_sub.ts), and a publisher posting pre-signed events open loop. Measures the
// share of events delivered to every stream, delivery latency (publish time carried in each payload → arrival in a
// sampled stream), the achieved publish rate, and the node's peak RSS (`ps`, every 200 ms).
// Env: XF_BENCH_STREAM_SUBS (1,000), XF_BENCH_STREAM_RATE (1,000 ev/s), XF_BENCH_STREAM_SECONDS (10).
import { TextLineStream } from "@std/streams";
import { cborArrayOf } from "../node.ts";
import { LIMITS } from "../core/limits.ts";
import { generateKeyPair } from "../storage/ed25519.ts";
import { createGroup, signEvent } from "../storage/event.ts";
import { percentile, type Row, toHex } from "./_table.ts";

const SUBS = Number(Deno.env.get("XF_BENCH_STREAM_SUBS") ?? 1_000);
const RATE = Number(Deno.env.get("XF_BENCH_STREAM_RATE") ?? 1_000);
const SECONDS = Number(Deno.env.get("XF_BENCH_STREAM_SECONDS") ?? 10);
const PROCS = 2;
/** Fully parsed (latency-sampled) streams per subscriber process. */
const SAMPLE = 25;
const BATCH = 10;
/** The whole benchmark, node start to clean-up, stays inside this. */
const BUDGET_MS = 90_000;

const root = new URL("..", import.meta.url);
/** `deno task start`'s arguments before its script (`run --v8-flags=… --allow-…`), from deno.json. */
const START_ARGS = (JSON.parse(await Deno.readTextFile(new URL("deno.json", root))).tasks.start as string)
  .split(" ").filter((a) => a.startsWith("--"));

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, Math.max(0, ms)));
const nowMs = () => performance.timeOrigin + performance.now();

/** `p`, or an error naming `what` after `ms`. */
async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, rej) => {
        timer = setTimeout(() => rej(new Error(`timed out after ${Math.round(ms)} ms: ${what}`)), Math.max(0, ms));
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** JSON lines of a child's stdout. */
function jsonLines(child: Deno.ChildProcess) {
  return child.stdout.pipeThrough(new TextDecoderStream()).pipeThrough(
    new TextLineStream() as unknown as TransformStream<string, string>,
  ).getReader();
}

/** Total CPU seconds (user + system) a process has used, from /proc. */
async function cpuSeconds(pid: number): Promise<number> {
  const stat = await Deno.readTextFile(`/proc/${pid}/stat`);
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(f[11]) + Number(f[12])) / 100; // utime, stime in clock ticks (USER_HZ = 100)
}

/** RSS of a process in MB by `ps`; throws if it cannot be read. */
async function rssMb(pid: number): Promise<number> {
  const o = await new Deno.Command("ps", { args: ["-o", "rss=", "-p", String(pid)], stdout: "piped", stderr: "null" })
    .output();
  const kb = Number(new TextDecoder().decode(o.stdout).trim());
  if (!o.success || !Number.isFinite(kb) || kb <= 0) throw new Error(`cannot read the RSS of process ${pid}`);
  return kb / 1024;
}

/** Events of kind 16 the node has indexed in the group: the backfill of a fresh stream, up to its `ready`. */
async function countIndexed(url: string, gid: string): Promise<number> {
  const r = await fetch(`${url}/v1/groups/${gid}/stream?kind=16`, { headers: { accept: "text/event-stream" } });
  if (r.status !== 200 || !r.body) throw new Error(`stream answered ${r.status}`);
  let text = "", n = 0;
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) throw new Error("the counting stream ended before its ready record");
      text += value;
      let end: number;
      while ((end = text.indexOf("\n\n")) >= 0) {
        const rec = text.slice(0, end);
        text = text.slice(end + 2);
        if (rec.startsWith("event: event\n")) n++;
        else if (rec.startsWith("event: ready\n")) return n;
        else if (rec.startsWith("event: error\n")) throw new Error(`counting stream: ${rec}`);
      }
    }
  } finally {
    await reader.cancel().catch(() => {});
  }
}

interface Sub {
  child: Deno.ChildProcess;
  lines: ReadableStreamDefaultReader<string>;
  progress: number;
  last: { received: number; samples: number[]; cut: number; ended: number } | null;
  pump: Promise<void>;
}

function spawnSub(url: string, gid: string, n: number, onReady: (r: { ready: number; failed: number }) => void): Sub {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL("./stream_sub.ts", import.meta.url).pathname, url, gid, String(n), String(SAMPLE)],
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
    cwd: root.pathname,
  }).spawn();
  const sub: Sub = { child, lines: jsonLines(child), progress: 0, last: null, pump: Promise.resolve() };
  sub.pump = (async () => {
    for (;;) {
      const { done, value } = await sub.lines.read();
      if (done) return;
      const m = JSON.parse(value);
      if ("ready" in m) onReady(m);
      else if ("progress" in m) sub.progress = m.progress;
      else if ("received" in m) sub.last = m;
    }
  })().catch(() => {});
  return sub;
}

/** Run the stream benchmark; returns table rows. */
export async function benchStream(): Promise<{ rows: Row[]; notes: string[] }> {
  const deadline = performance.now() + BUDGET_MS;
  const left = () => deadline - performance.now();
  const owner = await generateKeyPair();
  const { gid, manifest } = await createGroup(owner, { name: "bench-stream", policy: 0 });
  const gidHex = toHex(gid);
  const dir = await Deno.makeTempDir({ prefix: "xf-bench-stream-" });
  const limits = {
    streams_max: Math.max(LIMITS.streams_max, SUBS + 64),
    subscribers_max: LIMITS.subscribers_max,
  };
  const node = new Deno.Command(Deno.execPath(), {
    args: ["run", ...START_ARGS, new URL("net/main.ts", root).pathname, "serve", "--port", "0", "--data", dir],
    env: { XF_LIMITS: JSON.stringify(limits), NO_COLOR: "1" },
    stdout: "piped",
    stderr: "inherit",
    cwd: root.pathname,
  }).spawn();
  const subs: Sub[] = [];
  let sampling = true;
  let rssPeak = 0, rssError: Error | null = null, rssCount = 0;
  let sampler: Promise<void> = Promise.resolve();
  try {
    const nodeLines = jsonLines(node);
    const first = (await within(nodeLines.read(), Math.min(20_000, left()), "node start")).value ?? "";
    const url = /^listening on (\S+)$/.exec(first)?.[1];
    if (!url) throw new Error(`node did not start: ${first}`);
    (async () => {
      while (!(await nodeLines.read()).done) { /* drain */ }
    })().catch(() => {});
    sampler = (async () => {
      while (sampling) {
        try {
          rssPeak = Math.max(rssPeak, await rssMb(node.pid));
          rssCount++;
        } catch (e) {
          if (sampling) rssError = e as Error;
          return;
        }
        await sleep(200);
      }
    })();

    const m = await fetch(`${url}/v1/groups/${gidHex}/events`, {
      method: "POST",
      body: manifest.bytes as BodyInit,
      headers: { "content-type": "application/cbor" },
    });
    if (m.status !== 200 && m.status !== 201) throw new Error(`manifest POST answered ${m.status}: ${await m.text()}`);
    await m.body?.cancel();

    // Subscribers: every stream past its `ready` before the clock starts.
    const t0 = performance.now();
    let readyCount = 0, failedCount = 0, reported = 0;
    let allReported!: () => void;
    const reportedAll = new Promise<void>((r) => (allReported = r));
    for (let i = 0; i < PROCS; i++) {
      const n = Math.floor(SUBS / PROCS) + (i < SUBS % PROCS ? 1 : 0);
      subs.push(spawnSub(url, gidHex, n, (r) => {
        readyCount += r.ready, failedCount += r.failed;
        if (++reported === PROCS) allReported();
      }));
    }
    await within(reportedAll, Math.min(30_000, left()), "subscribers ready");
    if (failedCount) throw new Error(`${failedCount} of ${SUBS} streams failed to open`);
    const readyMs = performance.now() - t0;

    // Pre-signed batches; each event's payload is the publish time of its batch on the schedule, `t=<ms since the
    // epoch>`. The schedule starts once signing is done: estimated from a sample, with a margin.
    const total = RATE * SECONDS;
    const interval = (BATCH / RATE) * 1000;
    const authors = await Promise.all(Array.from({ length: 8 }, () => generateKeyPair()));
    const tsBase = Date.now();
    const sign = (i: number, tStart: number) =>
      signEvent(authors[i % authors.length]!, {
        group: gid,
        ts: tsBase + i,
        kind: 16,
        tags: [],
        payload: new TextEncoder().encode(`t=${(tStart + Math.floor(i / BATCH) * interval).toFixed(3)}`),
      });
    const c0 = performance.now();
    await Promise.all(Array.from({ length: 200 }, (_, i) => sign(i, 0)));
    const signMs = ((performance.now() - c0) / 200) * total;
    let start = 0;
    let bodies: Uint8Array[] = [];
    for (let attempt = 0; attempt < 2 && !bodies.length; attempt++) {
      start = nowMs() + signMs * (1.5 + attempt) + 300;
      const out: Uint8Array[] = [];
      for (let i = 0; i < total; i += BATCH) {
        const batch = await Promise.all(
          Array.from({ length: Math.min(BATCH, total - i) }, (_, j) => sign(i + j, start)),
        );
        out.push(cborArrayOf(batch.map((e) => e.bytes)));
      }
      if (nowMs() < start) bodies = out;
    }
    if (!bodies.length) throw new Error("signing overran its schedule twice");
    if (left() < SECONDS * 1000 + 20_000) throw new Error("not enough time left in the budget to publish");

    // Open loop: batch k is posted at start + k × interval, whatever the answers before it.
    const startPerf = start - performance.timeOrigin;
    await sleep(startPerf - performance.now());
    const cpu0 = await Promise.all([node.pid, ...subs.map((s) => s.child.pid), Deno.pid].map(cpuSeconds));
    const w0 = performance.now();
    let stored = 0, rejected = 0, shed = 0, failedPosts = 0, lastAck = startPerf;
    const inflight: Promise<void>[] = [];
    for (let k = 0; k < bodies.length; k++) {
      const wait = startPerf + k * interval - performance.now();
      if (wait > 1) await sleep(wait);
      const n = Math.min(BATCH, total - k * BATCH);
      inflight.push(
        fetch(`${url}/v1/groups/${gidHex}/events`, {
          method: "POST",
          body: bodies[k] as BodyInit,
          headers: { "content-type": "application/cbor" },
          signal: AbortSignal.timeout(15_000),
        }).then(async (r) => {
          if (r.status !== 200) {
            await r.body?.cancel();
            if (r.status === 503) shed += n;
            else rejected += n;
            return;
          }
          const { results } = await r.json();
          const ok = results.filter((x: { status: string }) => x.status === "stored").length;
          stored += ok;
          rejected += n - ok;
          lastAck = performance.now();
        }, () => {
          failedPosts += n;
        }),
      );
    }
    const postedMs = performance.now() - startPerf;
    await within(Promise.all(inflight), Math.min(20_000, left()), "publish answers");
    const achieved = stored / ((lastAck - startPerf) / 1000);

    // Deliveries settle: until every stream has every acknowledged event, no progress for 1 s, or 5 s.
    const s0 = performance.now();
    let lastSum = -1, lastChange = s0;
    while (performance.now() - s0 < 5_000) {
      const sum = subs.reduce((a, s) => a + s.progress, 0);
      if (sum >= SUBS * stored) break;
      if (sum !== lastSum) lastSum = sum, lastChange = performance.now();
      else if (performance.now() - lastChange > 1_000) break;
      await sleep(100);
    }
    const windowS = (performance.now() - w0) / 1000;
    const cpu1 = await Promise.all([node.pid, ...subs.map((s) => s.child.pid), Deno.pid].map(cpuSeconds));
    const cpuPct = cpu1.map((c, i) => (100 * (c - cpu0[i]!)) / windowS);

    // Stop the subscribers and collect their counts.
    for (const s of subs) {
      const w = s.child.stdin.getWriter();
      await w.write(new TextEncoder().encode("stop\n")).catch(() => {});
      await w.close().catch(() => {});
    }
    await within(Promise.all(subs.map((s) => s.pump)), Math.min(10_000, left()), "subscriber results");
    if (subs.some((s) => !s.last)) throw new Error("a subscriber process gave no result");
    // What the node indexed (a POST that timed out here may still have been stored): a fresh stream's backfill,
    // read once the subscribers are gone and the node has no backlog to write.
    const indexed = await within(countIndexed(url, gidHex), Math.min(15_000, left()), "counting indexed events");
    const expected = SUBS * indexed;
    sampling = false;
    await sampler;
    if (rssError) throw rssError;
    if (!rssCount || !(rssPeak > 0)) throw new Error("the node's RSS was never read");

    const received = subs.reduce((a, s) => a + s.last!.received, 0);
    const samples = subs.flatMap((s) => s.last!.samples).sort((a, b) => a - b);
    if (!samples.length) throw new Error("no latency samples");
    const cut = subs.reduce((a, s) => a + s.last!.cut, 0);
    const ended = subs.reduce((a, s) => a + s.last!.ended, 0);

    const rows: Row[] = [
      {
        figure: `delivered / expected (${SUBS} streams × ${indexed} events)`,
        value: received / expected,
        peer: "target 1.0",
        peerValue: 1,
      },
      {
        figure: "delivery latency p50 (ms)",
        value: percentile(samples, 0.5),
        peer: "limit 100 ms",
        peerValue: 100,
        lowerIsBetter: true,
      },
      {
        figure: "delivery latency p99 (ms)",
        value: percentile(samples, 0.99),
        peer: "limit 100 ms",
        peerValue: 100,
        lowerIsBetter: true,
      },
      { figure: "node peak RSS (MB)", value: rssPeak, peer: "limit 512 MB", peerValue: 512, lowerIsBetter: true },
      { figure: "publish rate achieved (ev/s)", value: achieved, peer: "offered", peerValue: RATE },
    ];
    const notes = [
      `${SUBS} SSE streams on one open group, in ${PROCS} subscriber processes (${SAMPLE} fully parsed streams each for latency, the rest counted by a byte scan); one node process started as \`deno task start\` (XF_LIMITS ${
        JSON.stringify(limits)
      }); all ${SUBS} streams ready ${(readyMs / 1000).toFixed(1)} s after the subscribers were spawned`,
      `publisher: ${RATE} ev/s offered for ${SECONDS} s, open loop, batches of ${BATCH} every ${interval} ms as CBOR arrays (events pre-signed, ${
        new TextEncoder().encode(`t=${start.toFixed(3)}`).length
      }-byte payload \`t=<scheduled publish time>\`); ${stored} stored, ${shed} shed (503), ${rejected} refused otherwise, ${failedPosts} in POSTs that failed or timed out (15 s); ${indexed} indexed by the node; posting took ${
        (postedMs / 1000).toFixed(2)
      } s`,
      `delivered ${received.toLocaleString("en-US")} of ${expected.toLocaleString("en-US")} (${
        samples.length.toLocaleString("en-US")
      } latency samples: p90 ${percentile(samples, 0.9).toFixed(1)} ms, p99.9 ${
        percentile(samples, 0.999).toFixed(1)
      } ms, max ${samples.at(-1)!.toFixed(1)} ms); streams cut by the node: ${cut}, ended otherwise: ${ended}`,
      `CPU during publish + settle (${windowS.toFixed(1)} s), % of one core: node ${
        cpuPct[0]!.toFixed(0)
      }, subscribers ${cpuPct.slice(1, -1).map((x) => x.toFixed(0)).join(" + ")}, publisher ${
        cpuPct.at(-1)!.toFixed(0)
      }`,
      `caveat: the node, both subscriber processes and the publisher share this machine's ${navigator.hardwareConcurrency} cores, so the subscribers' parsing competes with the node for CPU`,
    ];
    return { rows, notes };
  } finally {
    sampling = false;
    for (const s of subs) {
      try {
        s.child.kill("SIGTERM");
      } catch { /* exited */ }
    }
    await Promise.race([Promise.all(subs.map((s) => s.child.status)), sleep(3_000)]);
    for (const s of subs) {
      try {
        s.child.kill("SIGKILL");
      } catch { /* exited */ }
    }
    try {
      node.kill("SIGTERM");
    } catch { /* exited */ }
    const exited = await Promise.race([node.status.then(() => true), sleep(5_000).then(() => false)]);
    if (!exited) {
      try {
        node.kill("SIGKILL");
      } catch { /* exited */ }
      await node.status;
    }
    await sampler.catch(() => {});
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}
