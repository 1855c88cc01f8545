// The replica in headless Chromium (tests/_replica_browser.ts): a page holds a replica over real IndexedDB with the
// checks in the bundled Worker, syncs 5,000 events from a node, goes offline (the test cuts the link), publishes
// 100 events, reloads (they persist), comes back online and ends on the node's root; the main thread's longest
// blocked stretch during the sync is printed. Needs Chromium at /usr/bin/chromium: skipped without it, failed when
// CI=true. The full 100,000-event run is `deno task bench replica`.
import { assert, assertEquals } from "@std/assert";
import { CHROMIUM, hasChromium, inCi } from "./_chromium.ts";
import { runReplicaBrowser } from "./_replica_browser.ts";

if (!hasChromium && !inCi) {
  console.warn(`replica_browser_test: skipped, no Chromium at ${CHROMIUM} (apt-get install -y chromium)`);
}

Deno.test({
  name: "Replica in Chromium: syncs over IndexedDB, publishes offline, persists across a reload, converges online",
  ignore: !hasChromium && !inCi,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    if (!hasChromium) throw new Error(`Cannot run the browser test: no Chromium at "${CHROMIUM}" (CI=true)`);
    const f = await runReplicaBrowser({ events: 5_000, offline: 100, dayEvents: 200, stepMs: 30_000, trace: true });
    const m = f.mainCpu!;
    const ratio = (x: number) => (x / 50).toFixed(2);
    console.log(
      `replica_browser_test: ${f.events} events synced in ${f.syncMs.toFixed(0)} ms (${f.syncRate.toFixed(0)} ev/s); ` +
        `main thread during the sync (page load excluded): longest 4 ms-interval gap ${f.maxGapMs.toFixed(1)} ms, ` +
        `longest task (Long Tasks API, wall) ${f.longTaskMs.toFixed(1)} ms = ${
          ratio(f.longTaskMs)
        } of the 50 ms target; ` +
        `trace: task with the most CPU ${m.cpuMs.toFixed(1)} ms CPU = ${ratio(m.cpuMs)} of the 50 ms target ` +
        `(${m.wallMs.toFixed(1)} ms wall, ${m.what}), longest in wall time ${m.longestWallMs.toFixed(1)} ms of which ` +
        `${m.longestWallCpuMs.toFixed(1)} ms CPU; ${f.seen} events to the page's subscriber; ` +
        `${f.bytesPerEvent.toFixed(0)} B/event on IndexedDB; reconnect after ${f.dayEvents} + ${f.offline} events ` +
        `offline: ${f.reconnectMs.toFixed(0)} ms, ${f.reconnectBytes} bytes, ${f.reconnectRounds} neg messages in ` +
        `${f.reconnectSessions} sessions`,
    );
    assertEquals(f.pageErrors.filter((e) => e.startsWith("pageerror")), []);
    assertEquals(f.afterReload, { count: f.events + 1 + f.offline, unsent: f.offline });
    assertEquals(f.roots.page, f.roots.node);
    assertEquals(f.roots.count, f.events + 1 + f.offline + f.dayEvents);
    assert(f.maxGapMs > 0, "the gap monitor ran");
    // The page's subscriber got every event, in bounded packs; the trace found the page's main thread.
    assertEquals(f.seen, f.events + 1);
    assert(m.longestWallMs > 0 && m.cpuMs > 0, "the trace holds the main thread's tasks");
  },
});
