/**
 * Binds the Hono app to a socket with `Deno.serve` (the thin runtime
 * adapter beside `app.ts`).
 *
 * @module
 */

import { type AppNode, type AppOptions, createApp } from "./app.ts";

/** A listening server. */
export interface Served {
  /** `http://host:port` as bound (port 0 resolved). */
  url: string;
  port: number;
  /** Stop accepting, finish in-flight requests. */
  shutdown(): Promise<void>;
}

/**
 * Serve a node's HTTP surface on host:port (port 0 picks a free one). The
 * app sees each caller's socket address (Deno.serve's handler info is
 * Hono's `c.env`); `operatorToken` opens operator routes to remote callers.
 */
export function serve(
  node: AppNode,
  options: { host: string; port: number } & Pick<AppOptions, "operatorToken" | "corsOrigins">,
): Promise<Served> {
  const app = createApp(node, {
    ...(options.operatorToken ? { operatorToken: options.operatorToken } : {}),
    ...(options.corsOrigins?.length ? { corsOrigins: options.corsOrigins } : {}),
  });
  return new Promise((resolve) => {
    const server = Deno.serve({
      hostname: options.host,
      port: options.port,
      onListen: () => {},
    }, app.fetch);
    const addr = server.addr as Deno.NetAddr;
    resolve({
      url: `http://${addr.hostname}:${addr.port}`,
      port: addr.port,
      shutdown: () => server.shutdown(),
    });
  });
}
