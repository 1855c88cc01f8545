// Peer figure: hypercore's batched append on this machine, run under Node
// (hypercore's native fs extension needs libuv, which Deno does not expose).
// Prints one JSON line: {"appendsPerSec": N}.
import Hypercore from "hypercore";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const N = Number(process.argv[2] ?? 50000);
const BATCH = Number(process.argv[3] ?? 500);
const dir = mkdtempSync(join(tmpdir(), "xf-hc-"));
const core = new Hypercore(dir);
await core.ready();
const blocks = Array.from({ length: BATCH }, (_, i) => Buffer.alloc(300, i & 0xff));
const t = performance.now();
for (let i = 0; i < N; i += BATCH) await core.append(blocks);
const s = (performance.now() - t) / 1000;
await core.close();
rmSync(dir, { recursive: true, force: true });
console.log(JSON.stringify({ appendsPerSec: N / s, n: N, batch: BATCH }));
