import { toHex } from "../core/bytes.ts";
import { assert, assertEquals, assertMatch, assertThrows } from "@std/assert";
import { makeEvents, tempNode, testGroup, until } from "./_helpers.ts";
import { serve } from "../net/server.ts";
import { configureLogging, log, loggingOptions, redact, resetLogging } from "../actors/log.ts";
import { startNodeLogging } from "../actors/node_log.ts";

/** Lines written while `fn` runs with logging configured; logging is reset afterwards. */
async function capture(
  opts: { format?: "text" | "json"; level?: "debug" | "info" | "warning" | "error" },
  fn: (lines: string[]) => Promise<void>,
): Promise<string[]> {
  const lines: string[] = [];
  await configureLogging({ ...opts, sink: (l) => lines.push(l) });
  try {
    await fn(lines);
  } finally {
    await resetLogging();
  }
  return lines;
}

const TEXT_LINE = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO |WARN |ERROR) xf\.\w+ /;

Deno.test("Logs: two peers syncing log peer connected, a sync summary with counts, and peer lost", async () => {
  const a = await tempNode(), b = await tempNode();
  const sb = await serve(b.node, { host: "127.0.0.1", port: 0 });
  try {
    const lines = await capture({}, async () => {
      const g = await testGroup();
      const gid = toHex(g.gid);
      await a.node.publish([g.manifest, ...await makeEvents(g, 30)]);
      await b.node.publish([g.manifest, ...await makeEvents(g, 20, Date.now() - 300_000)]);
      const s = await a.node.sync.connect(sb.url.replace("http", "ws"), [gid]);
      s.close("test done");
      await until(() => b.node.sync.sessions.size === 0 && a.node.sync.sessions.size === 0);
    });
    for (const l of lines) assertMatch(l, TEXT_LINE);
    const connected = lines.filter((l) => / xf\.sync peer connected /.test(l));
    assertEquals(connected.length, 2, lines.join("\n")); // one line on each side
    const synced = lines.find((l) => l.includes(" group synced "));
    assert(synced, lines.join("\n"));
    assertMatch(synced, / missing=20 received=2[01] sent=30 bytesIn=\d+ bytesOut=\d+ durationMs=\d+/);
    const lost = lines.filter((l) => l.includes(" peer lost "));
    assertEquals(lost.length, 2, lines.join("\n"));
    assert(lost.some((l) => l.includes(`addr=${sb.url.replace("http", "ws")}`) && l.includes('reason="test done"')));
    assert(lost.every((l) => /received=\d+ stored=\d+ rejected=0 sent=\d+ bytesIn=\d+ bytesOut=\d+/.test(l)));
  } finally {
    a.node.sync.close();
    await sb.shutdown();
    await a.done();
    await b.done();
  }
});

Deno.test("Logs: JSON lines parse and carry ts, level, category and msg; secrets are masked", async () => {
  const lines = await capture({ format: "json", level: "debug" }, async () => {
    log.sync.info("peer connected", { addr: "ws://h:1/v1/stream?group=g&token=s3cret", n: 3 });
    log.node.debug("header", { auth: "Bearer abc.def" });
    await Promise.resolve();
  });
  assertEquals(lines.length, 2);
  const [first, second] = lines.map((l) => JSON.parse(l));
  assertMatch(first.ts, /^\d{4}-\d\d-\d\dT.*Z$/);
  assertEquals([first.level, first.category, first.msg, first.n], ["info", "xf.sync", "peer connected", 3]);
  assertEquals(first.addr, "ws://h:1/v1/stream?group=g&token=…");
  assertEquals([second.level, second.category, second.auth], ["debug", "xf.node", "Bearer …"]);
  assert(!lines.join("").includes("s3cret") && !lines.join("").includes("abc.def"));
  assertEquals(redact("x?token=a&b=1"), "x?token=…&b=1");
});

Deno.test("Logs: rejects are summarised per code per interval, not one line per event", async () => {
  const t = await tempNode();
  try {
    const lines = await capture({ format: "json" }, async (lines) => {
      const stop = startNodeLogging(t.node, { rejectsEveryMs: 100 });
      try {
        const g = await testGroup();
        await t.node.publish(g.manifest);
        const bad = (await makeEvents(g, 5)).map((e) => {
          const b = e.bytes.slice();
          b[b.length - 1]! ^= 0xff; // the signature's last byte
          return b;
        });
        const r = await t.node.publish(bad);
        assertEquals(r.map((x) => x.code), Array(5).fill("BAD_SIGNATURE"));
        await until(() => lines.some((l) => l.includes("rejects in the last")), 3000);
        await new Promise((r) => setTimeout(r, 250)); // two more intervals: nothing new, no line
      } finally {
        stop();
      }
    });
    const rejects = lines.map((l) => JSON.parse(l)).filter((r) => r.msg.startsWith("rejects"));
    assertEquals(rejects.length, 1, lines.join("\n"));
    assertEquals(rejects[0].msg, "rejects in the last 0.1 s: BAD_SIGNATURE=5");
    assertEquals([rejects[0].total, rejects[0].codes], [5, { BAD_SIGNATURE: 5 }]);
    assertEquals(lines.map((l) => JSON.parse(l).msg).filter((m) => m.startsWith("node ")), [
      "node started",
      "node stopped",
    ]);
  } finally {
    await t.done();
  }
});

Deno.test("Logs: the level filters lines; memory pressure is a warning", async () => {
  const t = await tempNode();
  try {
    const lines = await capture({ level: "warning" }, async (lines) => {
      log.node.info("not written");
      log.node.debug("not written either");
      const stop = startNodeLogging(t.node, { memoryEveryMs: 20, memoryBudgetBytes: 100, rss: () => 90 });
      try {
        await until(() => lines.length > 0, 2000);
      } finally {
        stop();
      }
    });
    assertEquals(lines.length, 1, lines.join("\n"));
    assertMatch(lines[0]!, /WARN {2}xf\.node memory pressure: RSS above 80 % of the budget/);
  } finally {
    await t.done();
  }
});

Deno.test("Logs: disk pressure is a warning when the data directory's filesystem runs low", async () => {
  const t = await tempNode();
  try {
    const lines = await capture({}, async (lines) => {
      const statfs = () => Promise.resolve({ free: 512 * 1024 ** 2, total: 100 * 1024 ** 3 });
      const stop = startNodeLogging(t.node, { dataDir: t.dir, diskEveryMs: 20, statfs });
      try {
        await until(() => lines.some((l) => l.includes("disk pressure")), 2000);
      } finally {
        stop();
      }
    });
    assertMatch(lines.find((l) => l.includes("disk pressure"))!, /WARN .* freeMiB=512 freePercent=0\.5/);
  } finally {
    await t.done();
  }
});

Deno.test("Logs: nothing is written without configuration, and no timer starts", async () => {
  const t = await tempNode();
  const written: string[] = [];
  const orig = { log: console.log, error: console.error, warn: console.warn, info: console.info, debug: console.debug };
  for (const k of Object.keys(orig) as (keyof typeof orig)[]) {
    console[k] = (...a: unknown[]) => written.push(a.join(" "));
  }
  try {
    startNodeLogging(t.node, { rejectsEveryMs: 10 }); // not stopped: the test's sanitizer would see a timer
    log.sync.error("nobody hears this");
    const g = await testGroup();
    await t.node.publish(g.manifest);
    await new Promise((r) => setTimeout(r, 30));
  } finally {
    Object.assign(console, orig);
    await t.done();
  }
  assertEquals(written, []);
});

Deno.test("Logs: a stage restart is a warning from the supervisor", async () => {
  const t = await tempNode({ faults: { decode: { crashAtBatch: 2 } } });
  try {
    const lines = await capture({ format: "json" }, async (lines) => {
      const g = await testGroup();
      await t.node.publish(g.manifest);
      const evs = await makeEvents(g, 30);
      for (let i = 0; i < 30; i += 10) await t.node.publish(evs.slice(i, i + 10));
      await until(() => lines.some((l) => l.includes("stage restarted")), 5000);
    });
    const r = lines.map((l) => JSON.parse(l)).find((x) => x.msg === "stage restarted");
    assertEquals([r.level, r.category, r.stage, r.restarted], [
      "warning",
      "xf.pipeline",
      "decode",
      "decode", // one_for_one: only the crashed stage restarts
    ]);
    assertMatch(r.error, /^[A-Z_]+: /);
  } finally {
    await t.done();
  }
});

Deno.test("Logs: an unknown format or level is a clear error", () => {
  assertThrows(() => loggingOptions("xml", undefined), Error, 'Cannot use log format "xml": use text or json');
  assertThrows(() => loggingOptions(undefined, "loud"), Error, 'Cannot use log level "loud"');
  assertEquals(loggingOptions(undefined, "WARN"), { format: "text", level: "warning" });
});
