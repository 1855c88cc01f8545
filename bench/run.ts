// `deno task bench [section ...]`: runs the benchmarks and prints markdown
// tables, each figure beside the limit or peer it is compared with, measured
// in the same run, as a ratio (≥ 1 is good). Sections: ingest, merkle, sync, partial-sync, session, dht, stream,
// bundle, replica; merkle-rates runs only the Merkle update rates against the previous tree (part of merkle).
import { table } from "./_table.ts";

const sections = Deno.args.length
  ? Deno.args
  : ["ingest", "merkle", "sync", "partial-sync", "session", "dht", "stream", "bundle", "replica"];
const cpu = (await Deno.readTextFile("/proc/cpuinfo").catch(() => "")).match(/model name\s*:\s*(.*)/)?.[1] ??
  "unknown CPU";
console.log(`## Run of ${new Date().toISOString()}\n`);
console.log(
  `Machine: ${navigator.hardwareConcurrency} cores, ${cpu}, ${
    (Deno.systemMemoryInfo().total / 2 ** 30).toFixed(0)
  } GiB, Deno ${Deno.version.deno}\n`,
);

for (const s of sections) {
  const t = performance.now();
  let out: { rows: import("./_table.ts").Row[]; notes: string[] } | null = null;
  try {
    if (s === "ingest") out = await (await import("./ingest.ts")).benchIngest();
    else if (s === "merkle") out = await (await import("./merkle.ts")).benchMerkle();
    else if (s === "merkle-rates") out = await (await import("./merkle.ts")).benchMerkleRates();
    else if (s === "sync") out = await (await import("./sync.ts")).benchSync();
    else if (s === "partial-sync") out = await (await import("./partial_sync.ts")).benchPartialSync();
    else if (s === "session") out = await (await import("./session.ts")).benchSession();
    else if (s === "dht") out = await (await import("./dht.ts")).benchDht();
    else if (s === "bundle") out = await (await import("./bundle.ts")).benchBundle();
    else if (s === "stream") out = await (await import("./stream.ts")).benchStream();
    else if (s === "replica") out = await (await import("./replica.ts")).benchReplica();
    else throw new Error(`unknown section "${s}"`);
  } catch (e) {
    console.log(`### ${s}\n\nfailed: ${(e as Error).stack ?? e}\n`);
    continue;
  }
  const done = out!;
  console.log(table(`${s} (${((performance.now() - t) / 1000).toFixed(0)} s)`, done.rows));
  console.log("");
  for (const n of done.notes) console.log(`- ${n}`);
  console.log("");
}
