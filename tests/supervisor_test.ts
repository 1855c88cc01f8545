import { assert, assertEquals } from "@std/assert";
import { Supervisor } from "../actors/supervisor.ts";
import { ChildRef, inProcessSpawner, workerSpawner } from "../actors/child.ts";
import { serveStage, type Stage } from "../actors/runtime.ts";
import { XfError } from "../core/errors.ts";
import { LIMITS } from "../core/limits.ts";

/** Crash requests already carried out: a resent batch does not crash again (unless it is `always`). */
const crashedOnce = new Set<string>();

/** A stage that counts what it sees, forwards to `next`, and crashes on a message `{crash: true}`. */
function counter(log: string[], name: string, next?: string): () => Stage {
  return () => ({
    data(msg, ctx) {
      const m = msg as { n: number; crash?: boolean; always?: boolean; key?: string };
      if (m.crash && (m.always || !crashedOnce.has(m.key ?? ""))) {
        crashedOnce.add(m.key ?? "");
        throw new Error(`${name} told to crash`);
      }
      log.push(`${name}:${m.n}`);
      if (next) ctx.emit(next, m);
    },
    call(msg) {
      return { echo: msg };
    },
  });
}

function supervise(strategy: "one_for_one" | "rest_for_one", log: string[], opts: { intensityMax?: number } = {}) {
  const starts: string[] = [];
  let escalated: XfError | null = null;
  const specs = ["a", "b", "c"].map((id, i, all) => ({
    id,
    start: (() => {
      const spawn = inProcessSpawner((ep) => serveStage(ep, counter(log, id, all[i + 1])));
      return () => {
        starts.push(id);
        return spawn();
      };
    })(),
    config: () => ({}),
    restart: "permanent" as const,
    shutdownMs: 500,
  }));
  const sup: Supervisor = new Supervisor(specs, {
    strategy,
    intensityMax: opts.intensityMax ?? 3,
    periodMs: 10_000,
    onEmit: (_from, to, msg) => sup.child(to).send(msg),
    onAsk: (_from, to, msg, t) => sup.child(to).call(msg, t),
    onEscalate: (e) => (escalated = e),
  });
  return { sup, starts, escalated: () => escalated };
}

async function until(cond: () => boolean, ms = 3000) {
  const end = Date.now() + ms;
  while (!cond() && Date.now() < end) await new Promise((r) => setTimeout(r, 5));
  assert(cond(), "condition not met in time");
}

Deno.test("Supervisor starts children in order and stops them in reverse", async () => {
  const log: string[] = [];
  const { sup, starts } = supervise("rest_for_one", log);
  await sup.start();
  assertEquals(starts, ["a", "b", "c"]);
  assertEquals(await sup.child("b").call({ x: 1 }), { echo: { x: 1 } });
  sup.child("a").send({ n: 1 });
  await until(() => log.includes("c:1"));
  await sup.stop();
  assertEquals(sup.children.map((c) => c.state), ["down", "down", "down"]);
});

Deno.test("Supervisor rest_for_one restarts the crashed child and those after it, and resends its unfinished batch", async () => {
  const log: string[] = [];
  const { sup, starts } = supervise("rest_for_one", log);
  await sup.start();
  sup.child("b").send({ n: 1, crash: true, key: "rest-b" });
  await until(() => sup.restartCount === 1);
  assertEquals(starts, ["a", "b", "c", "b", "c"]);
  assertEquals(sup.child("b").stats.crashes, 1);
  // The batch b had not finished was sent again to the new b (and, this time, went through).
  await until(() => log.includes("c:1"));
  sup.child("a").send({ n: 2 });
  await until(() => log.includes("c:2"));
  await sup.stop();
});

Deno.test("Supervisor one_for_one restarts only the crashed child", async () => {
  const log: string[] = [];
  const { sup, starts } = supervise("one_for_one", log);
  await sup.start();
  sup.child("b").send({ n: 1, crash: true, key: "one-b" });
  await until(() => sup.restartCount === 1);
  assertEquals(starts, ["a", "b", "c", "b"]);
  await sup.stop();
});

Deno.test("Supervisor escalates when restart intensity is exceeded", async () => {
  const log: string[] = [];
  const { sup, escalated } = supervise("one_for_one", log, { intensityMax: 2 });
  await sup.start();
  for (let i = 0; i < 4; i++) {
    const before = sup.restartCount;
    sup.child("c").send({ n: i, crash: true, always: true });
    await until(() => sup.restartCount > before || escalated() !== null);
    if (escalated()) break;
  }
  await until(() => escalated() !== null);
  assert(escalated()!.message.includes("told to crash"));
  await until(() => sup.children.every((c) => c.state === "down"));
});

Deno.test("ChildRef.call() times out, and waits for a restarting child within its timeout", async () => {
  const log: string[] = [];
  const { sup } = supervise("one_for_one", log);
  await sup.start();
  sup.child("a").send({ n: 1, crash: true, key: "call-a" });
  // Called while a restarts: answered once it is up again.
  assertEquals(await sup.child("a").call({ y: 2 }, 2000), { echo: { y: 2 } });
  await sup.stop();
});

Deno.test("A real Worker child is supervised like an in-process one", async () => {
  const url = new URL("../actors/advertise_worker.ts", import.meta.url);
  let crashed: XfError | null = null;
  const sup: Supervisor = new Supervisor([{
    id: "advertise",
    start: workerSpawner(url, (e) => sup.child("advertise").crashed(e)),
    config: () => ({ limits: { ...LIMITS } }),
    restart: "permanent",
    shutdownMs: 1000,
  }], {
    strategy: "one_for_one",
    onEmit: () => {},
    onAsk: () => Promise.reject(new Error("no")),
    onEscalate: (e) => (crashed = e),
  });
  await sup.start();
  assertEquals(await sup.child("advertise").call({ type: "advertise.subscribe", sub: 1, filter: {} }), true);
  assertEquals(
    (await sup.child("advertise").call({ type: "advertise.stats" }) as { subscribers: number }).subscribers,
    1,
  );
  await sup.stop();
  assertEquals(crashed, null);
});

/** One in-process child over a stage, outside any supervisor; crashes are recorded. */
async function lone(stage: Stage) {
  const crashes: XfError[] = [];
  const ref = new ChildRef("lone", inProcessSpawner((ep) => serveStage(ep, () => stage)), {
    onEmit: () => {},
    onAsk: () => Promise.reject(new Error("no")),
    onCrash: (_from, e) => crashes.push(e),
  });
  await ref.start({}, 2000);
  return { ref, crashes };
}

const codeOfRejection = (p: Promise<unknown>) =>
  p.then(() => "resolved", (e) => (e instanceof XfError ? e.code : `not an XfError: ${e}`));

Deno.test("ChildRef.call() rejects with TIMEOUT when the child never answers", async () => {
  const { ref } = await lone({ data() {}, call: () => new Promise(() => {}) });
  assertEquals(await codeOfRejection(ref.call({ q: 1 }, 30)), "TIMEOUT");
  ref.closed = true;
  ref.kill(new XfError("SHUTTING_DOWN", "test over"));
});

Deno.test("ChildRef.call() rejects with STAGE_DOWN when the child is stopped, dies under a call, or does not come up", async () => {
  const hang = { data() {}, call: () => new Promise(() => {}) };
  const a = await lone(hang);
  const pending = a.ref.call({ q: 1 }, 5000);
  a.ref.kill(new XfError("INTERNAL", "gone")); // not a restart: calls in flight fail now
  assertEquals(await codeOfRejection(pending), "STAGE_DOWN");
  // Down and never restarted: the call waits for it within its timeout, then gives up.
  assertEquals(await codeOfRejection(a.ref.call({ q: 2 }, 30)), "STAGE_DOWN");
  const b = await lone(hang);
  await b.ref.stop(100);
  b.ref.closed = true;
  assertEquals(await codeOfRejection(b.ref.call({ q: 3 }, 1000)), "STAGE_DOWN");
});

Deno.test("A stage that throws a plain Error crashes with INTERNAL, and a stage without call() answers INTERNAL", async () => {
  const { ref, crashes } = await lone({
    data() {
      throw new Error("broken invariant");
    },
  });
  assertEquals(await codeOfRejection(ref.call({ q: 1 }, 1000)), "INTERNAL");
  ref.send({ n: 1 });
  await until(() => crashes.length === 1);
  assertEquals(crashes[0]!.code, "INTERNAL");
  assert(crashes[0]!.message.includes("broken invariant"));
  ref.closed = true;
  ref.kill(new XfError("SHUTTING_DOWN", "test over"));
});
