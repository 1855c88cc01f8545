// The chat example (examples/chat/) in real headless Chromium, driven with puppeteer-core, against a node on
// 127.0.0.1 port 0: two browser contexts (two keys), an open group joined by link, live messages both ways, a
// reload and a page left and reopened (resume by the stored cursor: each message once, none missed), and a closed
// group the owner adds the other key to. Needs Chromium at /usr/bin/chromium: skipped without it, failed when CI=true.
import { assert, assertEquals } from "@std/assert";
import puppeteer, { type Browser, type BrowserContext, type Page } from "npm:puppeteer-core@25.16.0";
import { tempNode } from "./_helpers.ts";
import { serve } from "../net/server.ts";
import { buildClient } from "../client/build.ts";
import { serveChat } from "../examples/chat/serve.ts";
import { CHROMIUM, CHROMIUM_ARGS, hasChromium, inCi } from "./_chromium.ts";

/**
 * What the page callbacks (run in Chromium) use of the DOM. Deno's types have no DOM, and a `lib="dom"` reference
 * here would change the globals of every file type-checked with this one.
 */
interface El {
  textContent: string | null;
  value: string;
  href: string;
  hidden: boolean;
  dataset: Record<string, string | undefined>;
}
declare const document: { getElementById(id: string): El | null; querySelectorAll(selector: string): Iterable<El> };

/** The whole test, browser start and shutdown included. */
const TEST_MS = 60_000;
/** One wait in a page (a message to appear, the stream to be live). */
const STEP_MS = 10_000;

if (!hasChromium && !inCi) {
  console.warn(`browser_test: skipped, no Chromium at ${CHROMIUM} (apt-get install -y chromium)`);
}

interface Tab {
  page: Page;
  /** Page errors and console errors, for the failure message. */
  log: string[];
  /** `Last-Event-ID` of each stream request the page made ("" for none). */
  resumes: string[];
}

async function openTab(ctx: BrowserContext, url: string): Promise<Tab> {
  const page = await ctx.newPage();
  page.setDefaultTimeout(STEP_MS);
  const tab: Tab = { page, log: [], resumes: [] };
  page.on("pageerror", (e) => tab.log.push(`pageerror: ${(e as Error).message}`));
  page.on("console", (m) => m.type() === "error" && tab.log.push(`console: ${m.text()}`));
  page.on("request", (r) => {
    if (r.url().includes("/stream")) tab.resumes.push(r.headers()["last-event-id"] ?? "");
  });
  await goto(tab, url);
  return tab;
}

async function goto(tab: Tab, url: string): Promise<void> {
  await tab.page.goto(url);
  await tab.page.waitForSelector("body[data-ready]");
}

/** Waits until the status line says `state`. */
async function waitStatus(tab: Tab, state: string): Promise<void> {
  await tab.page.waitForFunction((s) => document.getElementById("status")?.dataset.state === s, { polling: 50 }, state);
}

/** The text of each message shown, in order. */
function messages(tab: Tab): Promise<string[]> {
  return tab.page.$$eval("#messages li.msg .text", (els) => els.map((e) => e.textContent ?? ""));
}

async function waitMessage(tab: Tab, text: string): Promise<void> {
  await tab.page.waitForFunction(
    (t) => [...document.querySelectorAll("#messages li.msg .text")].some((e) => e.textContent === t),
    { polling: 50 },
    text,
  );
}

async function send(tab: Tab, text: string): Promise<void> {
  await tab.page.type("#text", text);
  await tab.page.click("#send");
  await waitMessage(tab, text);
}

async function createGroup(tab: Tab, name: string, policy: "open" | "closed"): Promise<{ gid: string; link: string }> {
  await tab.page.waitForSelector("#setup:not([hidden])");
  await tab.page.$eval("#group-name-input", (e) => (e as unknown as El).value = "");
  await tab.page.type("#group-name-input", name);
  await tab.page.select("#policy", policy);
  await tab.page.click("#create");
  await waitStatus(tab, "live");
  const gid = await tab.page.$eval("#gid", (e) => (e as unknown as El).value);
  const link = await tab.page.$eval("#link", (e) => (e as unknown as El).href);
  assert(/^[0-9a-f]{64}$/.test(gid), gid);
  assert(link.endsWith(`#gid=${gid}`) && link.includes("?node="), link);
  return { gid, link };
}

/** The cursor the page stored for a group. */
function storedCursor(tab: Tab, gid: string): Promise<string | null> {
  return tab.page.evaluate((g) => JSON.parse(localStorage.getItem(`xf-chat:group:${g}`) ?? "{}").cursor ?? null, gid);
}

function withDeadline<T>(ms: number, what: string, p: Promise<T>): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`Cannot finish ${what}: over ${ms} ms`)), ms);
  });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

Deno.test({
  name: "Chat example in Chromium: open group by link, live both ways, reload resumes once, closed group member added",
  ignore: !hasChromium && !inCi,
  // puppeteer keeps sockets and timers of its own; everything is closed in finally.
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    if (!hasChromium) throw new Error(`Cannot run the browser test: no Chromium at "${CHROMIUM}" (CI=true)`);
    const t0 = performance.now();
    const tmp = await Deno.makeTempDir({ prefix: "xf-browser-" });
    const t = await tempNode();
    const node = await serve(t.node, { host: "127.0.0.1", port: 0 });
    let chat: Awaited<ReturnType<typeof serveChat>> | null = null;
    let browser: Browser | null = null;
    const tabs: Tab[] = [];
    try {
      await withDeadline(
        TEST_MS,
        "the browser test",
        (async () => {
          // A fresh bundle of the client as it is now (dist/ may be stale).
          const { path: bundle } = await buildClient({ outfile: `${tmp}/xaeroflux-client.js` });
          chat = await serveChat({ port: 0, node: node.url, bundle });
          browser = await puppeteer.launch({
            executablePath: CHROMIUM,
            ignoreDefaultArgs: true,
            args: [...CHROMIUM_ARGS, `--user-data-dir=${tmp}/profile`, "about:blank"],
            timeout: 15_000,
            protocolTimeout: 20_000,
            handleSIGINT: false,
            handleSIGTERM: false,
            handleSIGHUP: false,
          });
          // Two contexts: two localStorages, so two keys.
          const a = await openTab(await browser.createBrowserContext(), chat.url);
          const b = await openTab(await browser.createBrowserContext(), chat.url);
          tabs.push(a, b);
          const keyA = await a.page.$eval("#my-key", (e) => (e as unknown as El).value);
          const keyB = await b.page.$eval("#my-key", (e) => (e as unknown as El).value);
          assert(/^[0-9a-f]{64}$/.test(keyA) && /^[0-9a-f]{64}$/.test(keyB) && keyA !== keyB);

          // Open group: A creates it, B joins by the link; messages both ways, live.
          const open = await createGroup(a, "friends", "open");
          assert(await a.page.$eval("#add-form", (e) => (e as unknown as El).hidden), "no Add member in an open group");
          await goto(b, open.link);
          await waitStatus(b, "live");
          await send(a, "hello from A");
          await waitMessage(b, "hello from A");
          assertEquals(
            await b.page.$eval("#messages li.msg .who", (e) => e.textContent),
            keyA.slice(0, 8),
            "B shows A's short key",
          );
          await send(b, "hi from B");
          await waitMessage(a, "hi from B");

          // B reloads: what it saw is shown once, and the stream resumes after the stored cursor.
          const cursor = await storedCursor(b, open.gid);
          assert(cursor, "B stored a cursor");
          b.resumes.length = 0;
          await b.page.reload();
          await b.page.waitForSelector("body[data-ready]");
          await waitStatus(b, "live");
          assertEquals(await messages(b), ["hello from A", "hi from B"]);
          assertEquals(b.resumes[0], cursor, "the stream resumed from the stored cursor");
          await send(a, "after reload");
          await waitMessage(b, "after reload");

          // B leaves; A writes meanwhile; B comes back: the message missed is there, nothing twice.
          await b.page.goto("about:blank");
          await send(a, "while B was away");
          b.resumes.length = 0;
          await goto(b, open.link);
          await waitStatus(b, "live");
          await waitMessage(b, "while B was away");
          assert(b.resumes[0], "the stream resumed from a stored cursor");
          assertEquals(await messages(b), ["hello from A", "hi from B", "after reload", "while B was away"]);
          await send(b, "back");
          await waitMessage(a, "back");
          assertEquals(await messages(a), ["hello from A", "hi from B", "after reload", "while B was away", "back"]);

          // Closed group: B opens the link before it is a member (no access), A adds B's key, B gets in on its own.
          await goto(a, chat.url);
          const closed = await createGroup(a, "inner circle", "closed");
          await a.page.waitForSelector("#add-form:not([hidden])");
          await goto(b, closed.link);
          await waitStatus(b, "no access");
          await a.page.type("#member-key", await b.page.$eval("#my-key", (e) => (e as unknown as El).value));
          await a.page.click("#add");
          await a.page.waitForFunction(() => document.getElementById("info")?.textContent?.startsWith("Added"), {
            polling: 50,
          });
          await waitStatus(b, "live");
          await send(a, "secret hello");
          await waitMessage(b, "secret hello");
          await send(b, "secret reply");
          await waitMessage(a, "secret reply");
          assertEquals(await messages(b), ["secret hello", "secret reply"]);
          // The membership change shows as a note on both sides.
          await b.page.waitForFunction(
            (k) =>
              [...document.querySelectorAll("#messages li.note .text")].some((e) => e.textContent === `added ${k}`),
            { polling: 50 },
            keyB.slice(0, 8),
          );
          assertEquals(b.log.concat(a.log).filter((l) => l.startsWith("pageerror")), []);

          const shot = `${tmp}/chat.png`;
          await a.page.setViewport({ width: 900, height: 700 });
          await a.page.screenshot({ path: shot });
          console.log(`browser_test: screenshot ${shot}, ${Math.round(performance.now() - t0)} ms`);
        })(),
      );
    } catch (e) {
      for (const [i, tab] of tabs.entries()) {
        if (tab.log.length) console.error(`page ${"AB"[i]} log:\n  ${tab.log.join("\n  ")}`);
      }
      throw e;
    } finally {
      const b = browser as Browser | null;
      if (b) {
        await withDeadline(5_000, "closing Chromium", b.close()).catch(() => b.process()?.kill("SIGKILL"));
      }
      await (chat as Awaited<ReturnType<typeof serveChat>> | null)?.shutdown();
      await node.shutdown();
      await t.done();
      if (!Deno.env.get("XF_KEEP_SCREENSHOT")) await Deno.remove(tmp, { recursive: true }).catch(() => {});
    }
  },
});
