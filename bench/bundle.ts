// The client bundle's size, minified and gzipped, against its budget: one row of bench/_table.ts's table.
// Run: deno run -A bench/bundle.ts (builds dist/xaeroflux-client.js first).
import { buildClient } from "../client/build.ts";
import { table } from "./_table.ts";

/** The gzipped bundle may be at most this (bytes). */
export const BUNDLE_GZIP_BUDGET_BYTES = 100 * 1024;

const { path } = await buildClient();
const bytes = await Deno.readFile(path);
const gz = new Uint8Array(
  await new Response(new Blob([bytes]).stream().pipeThrough(new CompressionStream("gzip"))).arrayBuffer(),
);
console.log(table("Client bundle", [
  {
    figure: `dist/xaeroflux-client.js, minified (${bytes.length.toLocaleString("en-US")} B) and gzipped, bytes`,
    value: gz.length,
    peer: "budget",
    peerValue: BUNDLE_GZIP_BUDGET_BYTES,
    lowerIsBetter: true,
  },
]));
