/**
 * Serves the chat example: its page (`index.html`, `app.js`) and the client
 * bundle (`dist/xaeroflux-client.js`, built first with `deno task build`
 * when missing) on 127.0.0.1. The page talks to the node given by `--node`
 * directly (the node answers CORS for any origin by default).
 *
 * Run: `deno task example:chat [--port 8080] [--node http://127.0.0.1:7878]`
 * (port 0 picks a free one). Prints `chat on http://HOST:PORT/?node=NODE`.
 *
 * @module
 */

const here = new URL(".", import.meta.url).pathname;
const root = new URL("../..", import.meta.url).pathname;

/** Where `deno task build` writes the bundle. */
export const BUNDLE = `${root}dist/xaeroflux-client.js`;
/** Default node the page talks to (`deno task start`'s). */
export const DEFAULT_NODE = "http://127.0.0.1:7878";
/** Default port of the page. */
export const DEFAULT_PORT = 8080;

/** A running chat server. */
export interface ChatServer {
  /** `http://127.0.0.1:PORT` */
  origin: string;
  /** The page, pointed at the node: `http://127.0.0.1:PORT/?node=NODE`. */
  url: string;
  port: number;
  shutdown(): Promise<void>;
}

/** Options of {@linkcode serveChat}. */
export interface ChatOptions {
  /** Default 8080; 0 picks a free port. */
  port?: number;
  /** The node URL the page is given (default {@linkcode DEFAULT_NODE}). */
  node?: string;
  /** The bundle to serve (default {@linkcode BUNDLE}, built when missing). */
  bundle?: string;
}

const FILES: Record<string, { path: string; type: string }> = {
  "/": { path: `${here}index.html`, type: "text/html; charset=utf-8" },
  "/index.html": { path: `${here}index.html`, type: "text/html; charset=utf-8" },
  "/app.js": { path: `${here}app.js`, type: "text/javascript; charset=utf-8" },
};

async function exists(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile;
  } catch {
    return false;
  }
}

/** Build the bundle with `deno task build` unless it is there. */
export async function ensureBundle(path = BUNDLE): Promise<void> {
  if (await exists(path)) return;
  if (path !== BUNDLE) throw new Error(`Cannot serve bundle "${path}": no such file`);
  const out = await new Deno.Command(Deno.execPath(), { args: ["task", "build"], cwd: root, stdout: "inherit" })
    .output();
  if (!out.success || !await exists(path)) {
    throw new Error(`Cannot build "${path}": deno task build exited ${out.code}`);
  }
}

/** Serve the chat page and the bundle on 127.0.0.1. */
export async function serveChat(options: ChatOptions = {}): Promise<ChatServer> {
  const node = (options.node ?? DEFAULT_NODE).replace(/\/+$/, "");
  if (!/^https?:\/\/[^\s/]+$/.test(node)) {
    throw new TypeError(`Cannot use node URL "${node}": expected http(s)://host:port`);
  }
  const bundle = options.bundle ?? BUNDLE;
  await ensureBundle(bundle);
  const files: typeof FILES = {
    ...FILES,
    "/xaeroflux-client.js": { path: bundle, type: "text/javascript; charset=utf-8" },
  };
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: options.port ?? DEFAULT_PORT, onListen: () => {} },
    async (req) => {
      const f = files[new URL(req.url).pathname];
      if (!f || (req.method !== "GET" && req.method !== "HEAD")) return new Response("Not found\n", { status: 404 });
      const body = await Deno.readFile(f.path);
      return new Response(req.method === "HEAD" ? null : body, {
        headers: { "content-type": f.type, "cache-control": "no-store" },
      });
    },
  );
  const { hostname, port } = server.addr;
  const origin = `http://${hostname}:${port}`;
  return {
    origin,
    url: `${origin}/?node=${node}`,
    port,
    shutdown: () => server.shutdown(),
  };
}

function parseArgs(args: string[]): { port: number; node: string } {
  let port = DEFAULT_PORT, node = DEFAULT_NODE;
  for (let i = 0; i < args.length; i++) {
    const [flag, inline] = args[i]!.split(/=(.*)/s, 2) as [string, string | undefined];
    const value = () => inline ?? args[++i] ?? "";
    if (flag === "--port") {
      const v = value();
      port = /^\d{1,5}$/.test(v) && Number(v) <= 65535 ? Number(v) : NaN;
      if (Number.isNaN(port)) throw new TypeError(`Cannot use port "${v}": expected 0..65535`);
    } else if (flag === "--node") node = value();
    else throw new TypeError(`Cannot use argument "${args[i]}": expected --port N or --node URL`);
  }
  return { port, node };
}

if (import.meta.main) {
  try {
    const s = await serveChat(parseArgs(Deno.args));
    console.log(`chat on ${s.url}`);
  } catch (e) {
    console.error((e as Error).message);
    Deno.exit(2);
  }
}
