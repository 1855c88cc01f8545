/**
 * Bundle, with esbuild, each as one minified ES module: the thin client
 * (`client/mod.ts`) as `dist/xaeroflux-client.js`; the client with the
 * replica (`client/replica_mod.ts`) as `dist/xaeroflux-replica.js`; the
 * replica's Worker (`client/replica_worker.ts`) as
 * `dist/xaeroflux-replica-worker.js`. Bare specifiers are resolved
 * through `deno.json`'s import map to the exact npm versions Deno put under
 * `node_modules/.deno/` (falling back to `node_modules/`).
 *
 * Run: `deno task build`.
 *
 * @module
 */

import * as esbuild from "npm:esbuild@0.28.2";

/** Where the bundle goes by default. */
export const BUNDLE_PATH = "dist/xaeroflux-client.js";
/** Where the client with the replica goes by default. */
export const REPLICA_BUNDLE_PATH = "dist/xaeroflux-replica.js";
/** Where the replica's Worker goes by default (pass its URL as `openReplica({worker})`). */
export const WORKER_BUNDLE_PATH = "dist/xaeroflux-replica-worker.js";

/** The bundles' entry points and where each goes by default. */
export const BUNDLES = {
  "client/mod.ts": BUNDLE_PATH,
  "client/replica_mod.ts": REPLICA_BUNDLE_PATH,
  "client/replica_worker.ts": WORKER_BUNDLE_PATH,
} as const;

const root = new URL("..", import.meta.url).pathname;

/** `npm:` import-map targets as [prefix, package name, version]. */
function npmEntries(): Array<{ key: string; name: string; version: string; sub: string }> {
  const map = JSON.parse(Deno.readTextFileSync(`${root}deno.json`)).imports as Record<string, string>;
  const out = [];
  for (const [key, target] of Object.entries(map)) {
    const m = /^npm:\/?((?:@[^/@]+\/)?[^/@]+)@([^/]+)(\/.*)?$/.exec(target);
    if (m) out.push({ key, name: m[1]!, version: m[2]!, sub: m[3] ?? "" });
  }
  // Longest key first, so "@hono/hono/" wins over "@hono/hono".
  return out.sort((a, b) => b.key.length - a.key.length);
}

const importMap: esbuild.Plugin = {
  name: "deno-import-map",
  setup(build) {
    const entries = npmEntries();
    build.onResolve({ filter: /^[^./]/ }, async (args) => {
      if (args.pluginData === "mapped") return undefined;
      const e = entries.find((x) => x.key.endsWith("/") ? args.path.startsWith(x.key) : args.path === x.key);
      if (!e) return undefined;
      const rest = e.key.endsWith("/") ? args.path.slice(e.key.length) : "";
      const spec = `${e.name}${e.sub}${e.sub.endsWith("/") || !rest ? "" : "/"}${rest}`.replace(/\/$/, "");
      const pinned = `${root}node_modules/.deno/${e.name.replace("/", "+")}@${e.version}/node_modules`;
      let resolveDir = `${root}node_modules`;
      try {
        Deno.statSync(pinned);
        resolveDir = pinned;
      } catch { /* not installed pinned: the top-level link */ }
      const r = await build.resolve(spec, { kind: args.kind, resolveDir, pluginData: "mapped" });
      return r.errors.length ? { errors: r.errors } : { path: r.path };
    });
  },
};

/** Build the bundle; answers its path and size in bytes. */
export async function buildClient(
  options: { outfile?: string; minify?: boolean; entry?: keyof typeof BUNDLES } = {},
): Promise<
  { path: string; bytes: number }
> {
  const entry = options.entry ?? "client/mod.ts";
  const outfile = options.outfile ?? `${root}${BUNDLES[entry]}`;
  try {
    await esbuild.build({
      entryPoints: [`${root}${entry}`],
      bundle: true,
      format: "esm",
      platform: "browser",
      target: "es2022",
      minify: options.minify ?? true,
      outfile,
      plugins: [importMap],
      logLevel: "warning",
      legalComments: "none",
    });
  } finally {
    await esbuild.stop();
  }
  const text = await Deno.readTextFile(outfile);
  if (/\bDeno\.\w/.test(text)) throw new Error(`Cannot ship ${outfile}: it refers to the Deno namespace`);
  return { path: outfile, bytes: text.length };
}

if (import.meta.main) {
  for (const entry of Object.keys(BUNDLES) as (keyof typeof BUNDLES)[]) {
    const { path, bytes } = await buildClient({ entry });
    console.log(`${path}: ${bytes.toLocaleString("en-US")} bytes`);
  }
}
