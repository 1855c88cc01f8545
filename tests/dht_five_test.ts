// Five real node processes on 127.0.0.1, each told only the first one's address, find each other
// through the group's DHT and sync: every node lists the other four as peers, and an event written
// on any node reaches all.
import { toHex } from "../core/bytes.ts";
import { assert, assertEquals } from "@std/assert";
import { generateKeyPair } from "../storage/ed25519.ts";
import { signEvent } from "../storage/event.ts";
import { testGroup } from "./_helpers.ts";

const MAIN = new URL("../net/main.ts", import.meta.url).pathname;
const NODES = 5;
const DEADLINE_MS = 40_000;

interface Child {
  proc: Deno.ChildProcess;
  dir: string;
  url: string;
  log: string[];
}

/** Start `xf serve` and wait for its "listening on" line; the rest of its output is kept for failures. */
async function startNode(args: string[]): Promise<Child> {
  const dir = await Deno.makeTempDir({ prefix: "xf-dht5-" });
  const proc = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, "serve", "--data", dir, "--port", "0", ...args],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const log: string[] = [];
  const lines = proc.stdout.pipeThrough(new TextDecoderStream()).getReader();
  (async () => {
    for await (const chunk of proc.stderr.pipeThrough(new TextDecoderStream())) log.push(chunk);
  })().catch(() => {});
  let buf = "";
  const child: Child = { proc, dir, url: "", log };
  const timer = setTimeout(() => proc.kill("SIGKILL"), 20_000);
  try {
    while (!child.url) {
      const { done, value } = await lines.read();
      if (done) throw new Error(`Node exited before listening: ${log.join("")}`);
      buf += value;
      const m = /listening on (http:\/\/\S+)/.exec(buf);
      if (m) child.url = m[1]!;
    }
  } finally {
    clearTimeout(timer);
  }
  (async () => {
    for (;;) {
      const { done, value } = await lines.read();
      if (done) break;
      log.push(value);
    }
  })().catch(() => {});
  return child;
}

async function stopNode(c: Child): Promise<void> {
  try {
    c.proc.kill("SIGTERM");
  } catch { /* gone */ }
  const timer = setTimeout(() => {
    try {
      c.proc.kill("SIGKILL");
    } catch { /* gone */ }
  }, 5_000);
  await c.proc.status;
  clearTimeout(timer);
  await Deno.remove(c.dir, { recursive: true }).catch(() => {});
}

async function until(what: string, cond: () => Promise<boolean>, deadline: number): Promise<void> {
  while (Date.now() < deadline) {
    if (await cond().catch(() => false)) return;
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`Not within ${DEADLINE_MS} ms: ${what}`);
}

Deno.test({
  name: "Five node processes started with one bootstrap address find each other through the DHT and sync",
  sanitizeResources: false, // child stdio streams end with the processes
  async fn() {
    const children: Child[] = [];
    try {
      const g = await testGroup("five");
      const gid = toHex(g.gid);
      const first = await startNode(["--group", gid]);
      children.push(first);
      const r = await fetch(`${first.url}/v1/groups/${gid}/events`, {
        method: "POST",
        body: g.manifest.bytes as BodyInit,
        headers: { "content-type": "application/cbor" },
      });
      assertEquals(r.status, 201, await r.text());
      const boot = first.url.replace(/^http/, "ws");
      const t0 = Date.now();
      children.push(
        ...await Promise.all(Array.from({ length: NODES - 1 }, () => startNode(["--group", gid, "--peer", boot]))),
      );
      const deadline = t0 + DEADLINE_MS;
      const keyOf = new Map<string, string>();
      for (const c of children) {
        const h = await (await fetch(`${c.url}/v1/auth/challenge`)).json();
        keyOf.set(c.url, h.node);
      }
      // Every node lists the other four.
      await until("every node lists the other four peers", async () => {
        for (const c of children) {
          const res = await fetch(`${c.url}/v1/groups/${gid}/peers`);
          if (res.status !== 200) {
            await res.body?.cancel();
            return false;
          }
          const listed = new Set((await res.json()).peers.map((p: { key: string }) => p.key));
          for (const o of children) if (o !== c && !listed.has(keyOf.get(o.url))) return false;
        }
        return true;
      }, deadline);
      const peersMs = Date.now() - t0;
      // An event written on any node reaches all.
      const author = await generateKeyPair();
      const ev = await signEvent(author, {
        group: g.gid,
        ts: Date.now(),
        kind: 16,
        tags: [],
        payload: new TextEncoder().encode("hello five"),
      });
      const writer = children[NODES - 1]!;
      const w = await fetch(`${writer.url}/v1/groups/${gid}/events`, {
        method: "POST",
        body: ev.bytes as BodyInit,
        headers: { "content-type": "application/cbor" },
      });
      assertEquals(w.status, 201, await w.text());
      await until("the event reaches every node", async () => {
        for (const c of children) {
          const res = await fetch(`${c.url}/v1/events/${toHex(ev.id)}`);
          await res.body?.cancel();
          if (res.status !== 200) return false;
        }
        return true;
      }, Date.now() + DEADLINE_MS);
      console.log(`peers found in ${peersMs} ms; event everywhere ${Date.now() - t0 - peersMs} ms later`);
      assert(Date.now() - t0 < 2 * DEADLINE_MS);
    } catch (e) {
      for (const c of children) console.error(`--- ${c.url}\n${c.log.join("").slice(-3000)}`);
      throw e;
    } finally {
      await Promise.all(children.map(stopNode));
    }
  },
});
