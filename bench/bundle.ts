// The client bundle's size, minified and gzipped, against its budget (section "bundle" of `deno task bench`), and the
// replica's bundles (the client plus the replica; its Worker) beside the same budget. It builds them first.
import { buildClient } from "../client/build.ts";
import type { Row } from "./_table.ts";

/** The gzipped bundle may be at most this (bytes). */
export const BUNDLE_GZIP_BUDGET_BYTES = 100 * 1024;
/** The minified bundle may be at most this (bytes). */
export const BUNDLE_MIN_BUDGET_BYTES = 256 * 1024;

export async function benchBundle(): Promise<{ rows: Row[]; notes: string[] }> {
  const { path } = await buildClient();
  const bytes = await Deno.readFile(path);
  const gz = new Uint8Array(
    await new Response(new Blob([bytes]).stream().pipeThrough(new CompressionStream("gzip"))).arrayBuffer(),
  );
  return {
    rows: [
      {
        figure: "dist/xaeroflux-client.js, minified (bytes)",
        value: bytes.length,
        peer: "budget for the minified bundle (bytes)",
        peerValue: BUNDLE_MIN_BUDGET_BYTES,
        lowerIsBetter: true,
      },
      {
        figure: "dist/xaeroflux-client.js, minified and gzipped (bytes)",
        value: gz.length,
        peer: "budget (bytes)",
        peerValue: BUNDLE_GZIP_BUDGET_BYTES,
        lowerIsBetter: true,
      },
      ...(await replicaRows()),
    ],
    notes: ["esbuild, minified, ES module; gzip by CompressionStream at its default level"],
  };
}

async function gzipBytes(bytes: Uint8Array): Promise<number> {
  const gz = await new Response(new Blob([bytes as BlobPart]).stream().pipeThrough(new CompressionStream("gzip")))
    .arrayBuffer();
  return gz.byteLength;
}

async function replicaRows(): Promise<Row[]> {
  const rows: Row[] = [];
  for (const entry of ["client/replica_mod.ts", "client/replica_worker.ts"] as const) {
    const { path } = await buildClient({ entry });
    const bytes = await Deno.readFile(path);
    const name = path.slice(path.lastIndexOf("dist/"));
    rows.push({
      figure: `${name}, minified (bytes)`,
      value: bytes.length,
      peer: "budget for the minified bundle (bytes)",
      peerValue: BUNDLE_MIN_BUDGET_BYTES,
      lowerIsBetter: true,
    }, {
      figure: `${name}, minified and gzipped (bytes)`,
      value: await gzipBytes(bytes),
      peer: "budget (bytes)",
      peerValue: BUNDLE_GZIP_BUDGET_BYTES,
      lowerIsBetter: true,
    });
  }
  return rows;
}
