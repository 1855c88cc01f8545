// A replica in headless Chromium over real IndexedDB, against a real node behind a proxy that can cut the link:
// the scenario of tests/replica_browser_test.ts and bench/replica.ts. The page runs the bundled client, checks
// events in the bundled Worker (the whole replica runs there), and measures the main thread's longest blocked stretch (a 4 ms interval's largest
// gap, and the longest "longtask" Chromium reports) while it syncs.
import puppeteer, { type Browser, type Page } from "npm:puppeteer-core@25.16.0";
import { tempNode } from "./_helpers.ts";
import { tcpProxy } from "./_proxy.ts";
import { serve } from "../net/server.ts";
import { buildClient } from "../client/build.ts";
import { makeWorkload } from "../bench/ingest.ts";
import { toHex } from "../core/bytes.ts";
import { CHROMIUM, CHROMIUM_ARGS } from "./_chromium.ts";

/** The Worker's store: events applied, ms checking (hash, verify) and writing (of which IndexedDB batches). */
export type StoreStats = { events: number; checkMs: number; writeMs: number; batchMs: number; merkleMs: number };

/** What one run measured. */
export interface ReplicaBrowserFigures {
  events: number;
  /** Initial sync into the page's replica: ms, and events a second. */
  syncMs: number;
  syncRate: number;
  /** Main thread: the largest gap of a 4 ms interval, and the longest long task, during the initial sync (ms). */
  maxGapMs: number;
  longTaskMs: number;
  /** Each long task during the initial sync: [ms after the sync started, duration ms]. */
  longTasks: [number, number][];
  /**
   * From Chromium's trace of the initial sync (`trace` runs only; page load excluded): the main thread's task that
   * took the most CPU time (ms of CPU, and its wall ms), and its longest task in wall time (ms, and its CPU ms).
   * A task's wall time includes the stretches the OS ran other threads instead: on a loaded machine a timer
   * callback of 0.5 ms CPU can span 100 ms.
   */
  mainCpu?: { cpuMs: number; wallMs: number; what: string; longestWallMs: number; longestWallCpuMs: number };
  /** Events the page's subscriber (main thread) got during the initial sync. */
  seen: number;
  /** navigator.storage.estimate() after the initial sync, per event held. */
  bytesPerEvent: number;
  /** The reconnect after a day offline (the node got `dayEvents`, the page published `offline`). */
  dayEvents: number;
  offline: number;
  reconnectMs: number;
  reconnectBytes: number;
  reconnectRounds: number;
  /** Sessions the reconnect took (the sync, then a confirming one for what the page sent). */
  reconnectSessions: number;
  /** Held after the reload while offline (persisted in IndexedDB), and unsent then. */
  afterReload: { count: number; unsent: number };
  /** Roots at the end: page and node. */
  roots: { page: string; node: string; count: number };
  pageErrors: string[];
  store: StoreStats;
}

interface PageWindow {
  start(gid: string, nodes: string[]): Promise<void>;
  synced(count: number): Promise<
    {
      ms: number;
      maxGap: number;
      longTask: number;
      tasks: [number, number][];
      bytes: number;
      store: StoreStats;
      seen: number;
    }
  >;
  r: {
    progress(): { online: number; unsent: number };
    root(g: string): Promise<{ root: string; count: number }>;
    publish(g: string, d: unknown): Promise<unknown>;
    traffic(): Promise<{ sessions: number; negRounds: number; bytesIn: number; bytesOut: number }[]>;
  };
  xf: { textPayload(s: string): Uint8Array };
}
declare const window: PageWindow;

const PAGE = `<!doctype html><meta charset="utf-8"><title>replica</title><body><script type="module">
import * as xf from "/xaeroflux-replica.js";
window.xf = xf;
let seed = localStorage.getItem("seed");
if (!seed) { seed = xf.exportSeedHex(await xf.generateKeyPair()); localStorage.setItem("seed", seed); }
const key = await xf.keyPairFromHex(seed);
const gaps = { on: false, max: 0, longTask: 0, tasks: [] };
let last = performance.now();
setInterval(() => { const now = performance.now(); if (gaps.on) gaps.max = Math.max(gaps.max, now - last); last = now; }, 4);
try {
  new PerformanceObserver((l) => { for (const e of l.getEntries()) if (gaps.on) gaps.longTask = Math.max(gaps.longTask, e.duration); })
    .observe({ type: "longtask" });
} catch {}
window.start = async (gid, nodes) => {
  gaps.on = true; gaps.max = 0; gaps.longTask = 0; gaps.tasks = []; last = performance.now();
  window.t0 = performance.now();
  window.r = await xf.openReplica({ key, groups: [gid], store: "replica-browser", nodes, worker: "/xaeroflux-replica-worker.js" });
  // As an app would: a live view of the group on the main thread (its events come in bounded packs).
  window.seen = 0;
  window.r.subscribe(gid, (evs) => { window.seen += evs.length; }, { backfill: false });
};
window.synced = async (count) => {
  while ((await window.r.root((await window.r.groups())[0])).count < count) await new Promise((res) => setTimeout(res, 20));
  const ms = performance.now() - window.t0;
  gaps.on = false;
  const est = await navigator.storage.estimate();
  return { ms, maxGap: gaps.max, longTask: gaps.longTask, tasks: gaps.tasks, bytes: est.usage ?? 0, store: await window.r.stats(), seen: window.seen };
};
document.body.dataset.ready = "1";
</script></body>`;

const count = (o: { events: number }) => o.events + 1;

/**
 * The page's main thread in a Chromium trace: the renderer main thread that ran the most tasks (the test page's),
 * its task with the most CPU time and its longest in wall time. The trace is read a line at a time (Chromium
 * writes one event per line).
 */
async function mainThreadTasks(
  path: string,
): Promise<{ cpuMs: number; wallMs: number; what: string; longestWallMs: number; longestWallCpuMs: number }> {
  const mains = new Set<string>();
  const tasks = new Map<string, { n: number; cpu: number; wall: number; what: string; lw: number; lwCpu: number }>();
  for await (let line of lines(path)) {
    line = line.trim().replace(/,$/, "");
    if (!line.startsWith("{") || line.startsWith('{"traceEvents"')) continue;
    let e: {
      name?: string;
      ph?: string;
      pid?: number;
      tid?: number;
      dur?: number;
      tdur?: number;
      args?: Record<string, unknown>;
    };
    try {
      e = JSON.parse(line);
    } catch {
      continue;
    }
    const key = `${e.pid}/${e.tid}`;
    if (e.ph === "M" && e.name === "thread_name" && (e.args as { name?: string })?.name === "CrRendererMain") {
      mains.add(key);
    }
    if (e.ph !== "X" || e.name !== "ThreadControllerImpl::RunTask") continue;
    let t = tasks.get(key);
    if (!t) tasks.set(key, t = { n: 0, cpu: 0, wall: 0, what: "", lw: 0, lwCpu: 0 });
    t.n++;
    const cpu = (e.tdur ?? 0) / 1000, wall = (e.dur ?? 0) / 1000;
    if (cpu > t.cpu) {
      t.cpu = cpu;
      t.wall = wall;
      t.what = `${e.args?.src_file ?? ""}:${e.args?.src_func ?? ""}`;
    }
    if (wall > t.lw) {
      t.lw = wall;
      t.lwCpu = cpu;
    }
  }
  const main = [...tasks].filter(([k]) => mains.has(k)).sort((a, b) => b[1].n - a[1].n)[0]?.[1];
  if (!main) throw new Error("Cannot find the page's main thread in the trace");
  return { cpuMs: main.cpu, wallMs: main.wall, what: main.what, longestWallMs: main.lw, longestWallCpuMs: main.lwCpu };
}

/** A file's lines, read in chunks (a trace of a long sync is hundreds of MB). */
async function* lines(path: string): AsyncIterable<string> {
  using f = await Deno.open(path);
  const dec = new TextDecoder();
  let rest = "";
  for await (const chunk of f.readable) {
    const parts = (rest + dec.decode(chunk, { stream: true })).split("\n");
    rest = parts.pop()!;
    yield* parts;
  }
  if (rest) yield rest;
}

async function waitFor(page: Page, fn: (...a: never[]) => unknown, ms: number, ...args: unknown[]): Promise<void> {
  await page.waitForFunction(fn as never, { polling: 50, timeout: ms }, ...(args as never[]));
}

/** Run the scenario: `events` at the node, initial sync, offline with `offline` published, reload, reconnect. */
export async function runReplicaBrowser(
  options: { events: number; offline: number; dayEvents: number; stepMs: number; trace?: boolean },
): Promise<ReplicaBrowserFigures> {
  const tmp = await Deno.makeTempDir({ prefix: "xf-replica-browser-" });
  const t = await tempNode();
  const http = await serve(t.node, { host: "127.0.0.1", port: 0 });
  const proxy = tcpProxy(http.port);
  let browser: Browser | null = null;
  let site: Deno.HttpServer | null = null;
  const pageErrors: string[] = [];
  try {
    const w = await makeWorkload(options.events + options.dayEvents);
    const gid = toHex(w.gid);
    await t.node.publish(w.manifest);
    const first = w.events.slice(0, options.events), later = w.events.slice(options.events);
    for (let i = 0; i < first.length; i += 500) await t.node.publish(first.slice(i, i + 500));
    const client = await buildClient({ outfile: `${tmp}/xaeroflux-replica.js`, entry: "client/replica_mod.ts" });
    const worker = await buildClient({
      outfile: `${tmp}/xaeroflux-replica-worker.js`,
      entry: "client/replica_worker.ts",
    });
    const files: Record<string, string> = {
      "/xaeroflux-replica.js": client.path,
      "/xaeroflux-replica-worker.js": worker.path,
    };
    site = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
      const path = new URL(req.url).pathname;
      if (files[path]) {
        return new Response(await Deno.readFile(files[path]), { headers: { "content-type": "text/javascript" } });
      }
      return new Response(PAGE, { headers: { "content-type": "text/html" } });
    });
    const siteUrl = `http://127.0.0.1:${(site.addr as Deno.NetAddr).port}/`;
    browser = await puppeteer.launch({
      executablePath: CHROMIUM,
      ignoreDefaultArgs: true,
      args: [
        ...CHROMIUM_ARGS,
        "--disable-background-timer-throttling",
        "--disable-renderer-backgrounding",
        `--user-data-dir=${tmp}/profile`,
        "about:blank",
      ],
      timeout: 15_000,
      protocolTimeout: Math.max(30_000, options.stepMs * 2),
      handleSIGINT: false,
      handleSIGTERM: false,
      handleSIGHUP: false,
    });
    const page = await browser.newPage();
    page.setDefaultTimeout(options.stepMs);
    page.on("pageerror", (e) => pageErrors.push(`pageerror: ${(e as Error).message}`));
    page.on("console", (m) => m.type() === "error" && pageErrors.push(`console: ${m.text()}`));
    const load = async () => {
      await page.goto(siteUrl);
      await page.waitForSelector("body[data-ready]");
    };
    const open = async () => {
      await load();
      await page.evaluate((g, u) => window.start(g, [u]), gid, proxy.url);
    };

    // Initial sync, from the Worker's start (the page loaded first) until the page holds every event; traced on
    // request (Chromium's "toplevel" tasks: which thread ran what, wall and CPU time).
    await load();
    const tracePath = `${tmp}/trace.json`;
    if (options.trace) await page.tracing.start({ path: tracePath, categories: ["toplevel"] });
    await page.evaluate((g, u) => window.start(g, [u]), gid, proxy.url);
    const s = await page.evaluate((n) => window.synced(n), options.events + 1);
    if (options.trace) await page.tracing.stop();
    const mainCpu = options.trace ? await mainThreadTasks(tracePath) : undefined;
    await waitFor(
      page,
      (n: number) => (window as unknown as { seen: number }).seen >= n,
      options.stepMs,
      count(options),
    );
    const seen = await page.evaluate(() => (window as unknown as { seen: number }).seen);
    const count0 = count(options);

    // Offline: the link is cut; the node gets a day of events, the page publishes.
    proxy.cut();
    await waitFor(page, () => window.r.progress().online === 0, options.stepMs);
    for (let i = 0; i < later.length; i += 500) await t.node.publish(later.slice(i, i + 500));
    await page.evaluate(
      async (g, n) => {
        for (let i = 0; i < n; i++) {
          await window.r.publish(g, { kind: 16, payload: window.xf.textPayload(`offline ${i}`) });
        }
      },
      gid,
      options.offline,
    );

    // Reload: the replica comes back from IndexedDB, still offline.
    await open();
    const afterReload = await page.evaluate(async (g) => {
      const r = window.r;
      return { count: (await r.root(g)).count, unsent: r.progress().unsent };
    }, gid);
    if (afterReload.count !== count0 + options.offline) {
      throw new Error(`After the reload the page holds ${afterReload.count} events, not ${count0 + options.offline}`);
    }

    // Back online: both sides end on the same root.
    const t1 = performance.now();
    proxy.restore();
    const total = count0 + options.offline + later.length;
    await waitFor(
      page,
      async (g: string, n: number) => (await window.r.root(g)).count === n && window.r.progress().unsent === 0,
      options.stepMs,
      gid,
      total,
    );
    const reconnectMs = performance.now() - t1;
    const sess = await page.evaluate(() => window.r.traffic());
    const pageRoot = await page.evaluate(async (g) => (await window.r.root(g)).root, gid);
    const nodeRoot = (await t.node.merkle(gid))!;
    return {
      events: options.events,
      syncMs: s.ms,
      syncRate: options.events / (s.ms / 1000),
      maxGapMs: s.maxGap,
      longTaskMs: s.longTask,
      longTasks: s.tasks,
      ...(mainCpu ? { mainCpu } : {}),
      seen,
      bytesPerEvent: s.bytes / count0,
      dayEvents: options.dayEvents,
      offline: options.offline,
      reconnectMs,
      reconnectBytes: sess.reduce((a, x) => a + x.bytesIn + x.bytesOut, 0),
      reconnectRounds: sess.reduce((a, x) => a + x.negRounds, 0),
      reconnectSessions: sess.reduce((a, x) => a + x.sessions, 0),
      afterReload,
      roots: { page: pageRoot, node: nodeRoot.root, count: nodeRoot.count },
      pageErrors,
      store: s.store,
    };
  } finally {
    const b = browser as Browser | null;
    if (b) await b.close().catch(() => b.process()?.kill("SIGKILL"));
    await site?.shutdown();
    await proxy.close();
    await http.shutdown();
    await t.done();
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
  }
}
