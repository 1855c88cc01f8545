// One catch-up run, for `bench/session.ts`: a full node ingests N events, a fresh node catches up from it over
// loopback WebSocket, and 30 sessions are opened to time the handshake. The node code comes from the tree given as
// the first argument (this repository by default), so the same script measures an earlier commit's code path in
// the same benchmark run. Prints one JSON line.
import { makeWorkload } from "./ingest.ts";
import { toHex } from "../core/bytes.ts";

const root = Deno.args[0] ? new URL(`file://${Deno.args[0].replace(/\/$/, "")}/`) : new URL("../", import.meta.url);
const n = Number(Deno.args[1] ?? 40_000);
// mod.ts: the library's entry, at the same path in every tree (the node moved from actors/node.ts to node.ts).
const { openNode, serve } = await import(new URL("mod.ts", root).href);

const w = await makeWorkload(n);
const full = await openNode({ dataDir: await Deno.makeTempDir({ prefix: "xf-bench-full-" }) });
const t0 = performance.now();
await full.publish(w.manifest);
for (let i = 0; i < w.events.length; i += 500) await full.publish(w.events.slice(i, i + 500));
const ingestRate = n / ((performance.now() - t0) / 1000);
const served = await serve(full, { host: "127.0.0.1", port: 0 });
const url = served.url.replace("http", "ws");
const fresh = await openNode({ dataDir: await Deno.makeTempDir({ prefix: "xf-bench-fresh-" }) });
const gid = toHex(w.gid);
const t1 = performance.now();
const s = await fresh.sync.connect(url, [gid]);
while (((await fresh.merkle(gid))?.count ?? 0) < n + 1) await new Promise((r) => setTimeout(r, 10));
const catchMs = performance.now() - t1;
const same = (await fresh.merkle(gid)).root === (await full.merkle(gid)).root;
const bytesIn = s.stats.bytesIn;
const framesIn = s.stats.framesIn;
s.close();
// Handshake: connect and prove both sides, no group.
const hs: number[] = [];
for (let i = 0; i < 30; i++) {
  const t = performance.now();
  const x = await fresh.sync.connect(url, []);
  hs.push(performance.now() - t);
  x.close();
}
hs.sort((a, b) => a - b);
fresh.sync.close();
await served.shutdown();
await fresh.close();
await full.close();
console.log(JSON.stringify({
  ingestRate,
  catchRate: (n + 1) / (catchMs / 1000),
  catchMs,
  same,
  bytesIn,
  framesIn,
  handshakeMedianMs: hs[15],
  handshakeP90Ms: hs[27],
}));
Deno.exit(0);
