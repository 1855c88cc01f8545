// A subscriber process of the stream benchmark (bench/stream.ts):
//   deno run -A bench/stream_sub.ts URL GID N SAMPLE
// opens N SSE streams on a group and counts the `event: event` records that come after each stream's `event: ready`
// by scanning the raw bytes (no text decoding); SAMPLE of the streams are fully parsed, and each of their events gives
// a latency sample: now − the publish time `t=<ms since the epoch>` carried in the event's payload (hex in the JSON).
// Stdout, one JSON line each: {"ready": n, "failed": m} once every stream is ready or failed; {"progress": received}
// every 250 ms after that; on a "stop" line on stdin (or SIGTERM): {"received", "samples", "cut", "ended"}, then exit.

import { fromHex } from "../core/bytes.ts";
const [url, gid, nArg, sampleArg] = Deno.args;
const N = Number(nArg), SAMPLE = Math.min(Number(sampleArg ?? 25), N);
if (!url || !gid || !(N > 0)) throw new Error("usage: stream_sub.ts URL GID N SAMPLE");

const enc = new TextEncoder();
const out = (o: unknown) => Deno.stdout.writeSync(enc.encode(JSON.stringify(o) + "\n"));
const nowMs = () => performance.timeOrigin + performance.now();
const stop = new AbortController();

let received = 0;
/** Streams that received `event: error` (e.g. PEER_TOO_SLOW), and streams whose body ended before the stop. */
let cut = 0, ended = 0;
const samples: number[] = [];
let ready = 0, failed = 0;
let readyResolve!: () => void;
const allSettled = new Promise<void>((r) => (readyResolve = r));
const settleOne = () => {
  if (ready + failed === N) readyResolve();
};

// "event: " then the record type's first byte: 'e'vent, 'r'eady, 'e'rror ('rr' tells error from event).
const PREFIX = enc.encode("event: ");
const NL = 10;

/** Byte scanner of one stream: looks only at line starts, so a data line costs one native indexOf. */
function scanner(onReady: () => void) {
  let atLineStart = true;
  let carry: Uint8Array | null = null;
  let isReady = false;
  return (chunk: Uint8Array) => {
    let buf = chunk;
    if (carry) {
      buf = new Uint8Array(carry.length + chunk.length);
      buf.set(carry), buf.set(chunk, carry.length);
      carry = null;
    }
    let p = atLineStart ? 0 : buf.indexOf(NL) + 1;
    if (!atLineStart && p === 0) return; // still inside a long line
    while (p < buf.length) {
      if (buf.length - p < 9) {
        carry = buf.slice(p);
        atLineStart = true;
        return;
      }
      if (buf[p] === 0x65 /* e */) {
        let m = true;
        for (let k = 1; k < 7 && m; k++) m = buf[p + k] === PREFIX[k];
        if (m) {
          const c = buf[p + 7], d = buf[p + 8];
          if (c === 0x65 && d === 0x76 /* ev */) {
            if (isReady) received++;
          } else if (c === 0x72 /* r */) {
            if (!isReady) isReady = true, onReady();
          } else if (c === 0x65 && d === 0x72 /* er */) cut++;
        }
      }
      const nl = buf.indexOf(NL, p);
      if (nl < 0) {
        atLineStart = false;
        return;
      }
      p = nl + 1;
    }
    atLineStart = true;
  };
}

function hexText(h: string): string {
  return new TextDecoder().decode(fromHex(h) ?? new Uint8Array());
}

/** Full parser of one sampled stream: every record is decoded; event payloads give latency samples. */
function parser(onReady: () => void) {
  const dec = new TextDecoder();
  let text = "";
  let isReady = false;
  return (chunk: Uint8Array) => {
    const t = nowMs();
    text += dec.decode(chunk, { stream: true });
    let end: number;
    while ((end = text.indexOf("\n\n")) >= 0) {
      const rec = text.slice(0, end);
      text = text.slice(end + 2);
      let type = "", data = "";
      for (const line of rec.split("\n")) {
        if (line.startsWith("event: ")) type = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (type === "ready") {
        if (!isReady) isReady = true, onReady();
      } else if (type === "error") cut++;
      else if (type === "event" && isReady) {
        received++;
        const m = /^t=([\d.]+)$/.exec(hexText(JSON.parse(data).payload));
        if (m) samples.push(t - Number(m[1]));
      }
    }
  };
}

async function open(i: number) {
  let counted = false;
  const onReady = () => {
    if (counted) return;
    counted = true;
    ready++;
    settleOne();
  };
  const fail = () => {
    if (counted) return;
    counted = true;
    failed++;
    settleOne();
  };
  try {
    const r = await fetch(`${url}/v1/groups/${gid}/stream`, {
      headers: { accept: "text/event-stream" },
      signal: stop.signal,
    });
    if (r.status !== 200 || !r.body) {
      await r.body?.cancel();
      return fail();
    }
    const feed = i < SAMPLE ? parser(onReady) : scanner(onReady);
    const reader = r.body.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      feed(value);
    }
    if (!stop.signal.aborted) ended++;
  } catch {
    if (!stop.signal.aborted) ended++;
  }
  fail(); // a stream that ended before its ready record counts as failed
}

for (let i = 0; i < N; i++) open(i);
await allSettled;
out({ ready, failed });
const progress = setInterval(() => out({ progress: received }), 250);

let finished = false;
function finish() {
  if (finished) return;
  finished = true;
  clearInterval(progress);
  stop.abort();
  out({ received, samples: samples.map((x) => Math.round(x * 1000) / 1000), cut, ended });
  Deno.exit(0);
}
Deno.addSignalListener("SIGTERM", finish);
const lines = Deno.stdin.readable.pipeThrough(new TextDecoderStream());
for await (const s of lines) if (s.includes("stop")) break;
finish();
