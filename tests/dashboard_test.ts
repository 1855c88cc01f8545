// The dashboard (`GET /`, net/dashboard.html) in real headless Chromium, driven with puppeteer-core, against a node
// on 127.0.0.1 port 0 that holds a group and has synced it with a second node: the page renders with no console
// error and shows what the JSON routes answer (node id, version, stages, groups and counts, the peer). A screenshot
// goes to test-output/dashboard.png. Needs Chromium at /usr/bin/chromium: skipped without it, failed when CI=true.
import { toHex } from "../core/bytes.ts";
import { assert, assertEquals } from "@std/assert";
import puppeteer, { type Browser } from "npm:puppeteer-core@25.16.0";
import { makeEvents, tempNode, testGroup, until } from "./_helpers.ts";
import { serve } from "../net/server.ts";
import { CHROMIUM, CHROMIUM_ARGS, hasChromium, inCi } from "./_chromium.ts";

/** What the page callbacks (run in Chromium) use of the DOM (no `lib="dom"` here, as in browser_test.ts). */
interface El {
  textContent: string | null;
  dataset: Record<string, string | undefined>;
}
declare const document: { querySelector(selector: string): El | null };

/** The whole test, browser start and shutdown included. */
const TEST_MS = 60_000;
/** One wait in the page. */
const STEP_MS = 10_000;
const SCREENSHOT = new URL("../test-output/dashboard.png", import.meta.url);

if (!hasChromium && !inCi) {
  console.warn(`dashboard_test: skipped, no Chromium at ${CHROMIUM} (apt-get install -y chromium)`);
}

async function withDeadline<T>(ms: number, what: string, p: Promise<T>): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => timer = setTimeout(() => reject(new Error(`${what}: over ${ms} ms`)), ms)),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

Deno.test({
  name: "The dashboard at GET / shows the node, its stages, groups and peers as the JSON routes do",
  ignore: !hasChromium && !inCi,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    assert(hasChromium, `No Chromium at ${CHROMIUM} (CI=true: the dashboard test must run)`);
    const a = await tempNode(), b = await tempNode();
    const sa = await serve(a.node, { host: "127.0.0.1", port: 0 });
    const sb = await serve(b.node, { host: "127.0.0.1", port: 0 });
    let browser: Browser | null = null;
    const profile = await Deno.makeTempDir({ prefix: "xf-dash-chromium-" });
    const errors: string[] = [];
    try {
      await withDeadline(
        TEST_MS,
        "dashboard test",
        (async () => {
          // Two groups on a, one synced with b (b holds events a lacks).
          const g = await testGroup("friends"), h = await testGroup("club board");
          const gid = toHex(g.gid);
          await a.node.publish([g.manifest, ...await makeEvents(g, 120)]);
          await a.node.publish([h.manifest, ...await makeEvents(h, 9)]);
          await b.node.publish([g.manifest, ...await makeEvents(g, 30, Date.now() - 5_000_000)]);
          await a.node.sync.connect(sb.url.replace("http", "ws"), [gid]);
          await until(async () => (await a.node.merkle(gid))!.count === 151, STEP_MS);
          await until(() => a.node.sync.peersOf(gid).length > 0, STEP_MS);

          browser = await puppeteer.launch({
            executablePath: CHROMIUM,
            ignoreDefaultArgs: true,
            args: [...CHROMIUM_ARGS, `--user-data-dir=${profile}`, "about:blank"],
            timeout: 15_000,
            protocolTimeout: 20_000,
            handleSIGINT: false,
            handleSIGTERM: false,
            handleSIGHUP: false,
          });
          const page = await browser.newPage();
          page.setDefaultTimeout(STEP_MS);
          await page.setViewport({ width: 1200, height: 800 });
          page.on("pageerror", (e) => errors.push(`pageerror: ${(e as Error).message}`));
          page.on("console", (m) => m.type() === "error" && errors.push(`console: ${m.text()}`));
          const res = await page.goto(`${sa.url}/`);
          assertEquals(res?.status(), 200);
          assert(res?.headers()["content-type"]?.startsWith("text/html"));
          await page.waitForSelector("body[data-ready]");
          const text = (sel: string) => page.$eval(sel, (e) => (e as unknown as El).textContent ?? "");
          // Refreshes with events published between them: the ingest chart has a rate to draw.
          const nextUpdate = async () => {
            const before = await page.$eval("body", (e) => (e as unknown as El).dataset.updated ?? "");
            await page.waitForFunction(
              (t) => (document.querySelector("body")?.dataset.updated ?? "") !== t,
              { polling: 100 },
              before,
            );
          };
          await nextUpdate();
          await a.node.publish(await makeEvents(h, 60, Date.now() - 60_000));
          await nextUpdate();
          assert((await text("#rate-ingest")) !== "0.0/s", "ingest rate shown");
          await nextUpdate();
          assert(await page.$("#chart-ingest polyline"), "the ingest sparkline is drawn");

          const health = await (await fetch(`${sa.url}/health`)).json();
          const groups = (await (await fetch(`${sa.url}/v1/groups`)).json()).groups as {
            id: string;
            name: string;
            count: number;
          }[];
          const peers = (await (await fetch(`${sa.url}/v1/groups/${gid}/peers`)).json()).peers as { nodeId: string }[];
          assertEquals(await page.$eval("#node-id", (e) => (e as unknown as El).dataset.full), health.nodeId);
          assertEquals(await text("#version"), health.version);
          assert(/^\d+(s|m \d+s)$/.test(await text("#uptime")), await text("#uptime"));
          const stages = await page.$$eval("#stages tr", (rows) => rows.map((r) => (r as unknown as El).dataset.stage));
          assertEquals(stages, Object.keys(health.stages));
          for (const s of Object.keys(health.stages)) {
            assertEquals(await text(`#stages tr[data-stage="${s}"] .restarts`), String(health.stages[s].restarts));
          }
          assertEquals(groups.length, 2);
          for (const gr of groups) {
            assertEquals(await text(`#groups tr[data-gid="${gr.id}"] .name`), gr.name);
            assertEquals(await text(`#groups tr[data-gid="${gr.id}"] .count`), String(gr.count));
          }
          assertEquals(groups.find((x) => x.id === gid)!.count, 151);
          assertEquals(peers.length, 1);
          assert(await page.$(`#groups tr[data-peer="${peers[0]!.nodeId}"]`), "the peer is listed");
          const held = groups.reduce((n, x) => n + x.count, 0);
          assert((await text("#totals")).startsWith(`2 groups, ${held} events`), await text("#totals"));
          assert((await text("#rate-ingest")).endsWith("/s"), await text("#rate-ingest"));

          await Deno.mkdir(new URL(".", SCREENSHOT), { recursive: true });
          await page.screenshot({ path: SCREENSHOT.pathname as `${string}.png`, fullPage: true });
          console.log(`dashboard screenshot: ${SCREENSHOT.pathname}`);
          assertEquals(errors, [], "no console errors or page errors");
        })(),
      );
    } finally {
      const br = browser as Browser | null;
      if (br) await withDeadline(5_000, "closing Chromium", br.close()).catch(() => br.process()?.kill("SIGKILL"));
      if (errors.length) console.error(`page log:\n  ${errors.join("\n  ")}`);
      await Deno.remove(profile, { recursive: true }).catch(() => {});
      a.node.sync.close();
      await sa.shutdown();
      await sb.shutdown();
      await a.done();
      await b.done();
    }
  },
});
