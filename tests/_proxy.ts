// A TCP proxy in front of a node, for link cuts: `cut()` drops every connection and refuses new ones (closed at
// once, as a dead link looks to a WebSocket), `restore()` lets connections through again. On 127.0.0.1, port 0.

/** A proxy to `target` (host:port). */
export function tcpProxy(targetPort: number): {
  url: string;
  port: number;
  cut(): void;
  restore(): void;
  close(): Promise<void>;
} {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  const open = new Set<Deno.Conn>();
  let up = true;
  const pipes: Promise<void>[] = [];
  const pipe = async (from: Deno.Conn, to: Deno.Conn) => {
    try {
      await from.readable.pipeTo(to.writable, { preventClose: false });
    } catch { /* cut */ }
    for (const c of [from, to]) {
      try {
        c.close();
      } catch { /* closed already */ }
      open.delete(c);
    }
  };
  const accepting = (async () => {
    for await (const c of listener) {
      if (!up) {
        c.close();
        continue;
      }
      let t: Deno.Conn;
      try {
        t = await Deno.connect({ hostname: "127.0.0.1", port: targetPort });
      } catch {
        c.close();
        continue;
      }
      open.add(c).add(t);
      pipes.push(pipe(c, t), pipe(t, c));
    }
  })().catch(() => {});
  const dropAll = () => {
    for (const c of open) {
      try {
        c.close();
      } catch { /* closed already */ }
    }
    open.clear();
  };
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    cut() {
      up = false;
      dropAll();
    },
    restore() {
      up = true;
    },
    async close() {
      up = false;
      listener.close();
      dropAll();
      await accepting;
      await Promise.allSettled(pipes);
    },
  };
}
