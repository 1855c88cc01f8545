// A data link (actors/link.ts) over a real MessageChannel: credit windows, resend after a restart, probation, poison.
import { assert, assertEquals } from "@std/assert";
import { bytesOf, Inlet, type LinkFrame, nowMs, Outlet, type Poisoned, transferables } from "../actors/link.ts";

interface Msg {
  n: number;
  b?: Uint8Array;
}

/** One receiver: what it got, and its inlet (credit goes back through it). */
class Receiver {
  readonly got: LinkFrame<Msg>[] = [];
  readonly inlet: Inlet<Msg>;
  readonly port: MessagePort;
  constructor() {
    const ch = new MessageChannel();
    this.port = ch.port1;
    this.inlet = new Inlet<Msg>(ch.port2, (f) => this.got.push(f));
  }
  ns(): number[] {
    return this.got.map((f) => f.m.n);
  }
  /** Credit the frame that carried message `n`. */
  credit(n: number) {
    const f = this.got.find((f) => f.m.n === n);
    if (!f) throw new Error(`no frame for ${n}`);
    this.inlet.credit(f.s);
  }
}

/** Let the ports deliver what is posted. */
const settle = () => new Promise((r) => setTimeout(r, 15));

async function until(cond: () => boolean, ms = 2000) {
  const end = Date.now() + ms;
  while (!cond() && Date.now() < end) await new Promise((r) => setTimeout(r, 2));
  assert(cond(), "condition not met in time");
}

function close(out: Outlet<Msg>, ...rx: Receiver[]) {
  out.unwire();
  for (const r of rx) {
    r.inlet.close();
    r.port.close();
  }
}

Deno.test("link: at most `windowBatches` batches in flight; credit lets the next go", async () => {
  const out = new Outlet<Msg>("t", 3, 1 << 20);
  const rx = new Receiver();
  out.wire(rx.port);
  for (let n = 0; n < 5; n++) out.send({ n });
  await settle();
  assertEquals(rx.ns(), [0, 1, 2]);
  assertEquals([out.inflight.size, out.queue.length, out.depth()], [3, 2, 5]);
  assert(!out.hasRoom());
  assertEquals(out.stats.sent, 3);
  // Sequence numbers are distinct and increasing; `at` is a wall-clock send time.
  assertEquals(rx.got.map((f) => f.s), [1, 2, 3]);
  assert(Math.abs(rx.got[0]!.at - nowMs()) < 5000);
  // Credit in any order: the middle one frees one slot.
  rx.credit(1);
  await settle();
  assertEquals(rx.ns(), [0, 1, 2, 3]);
  assertEquals(out.stats.credited, 1);
  // A credit for a sequence number not in flight (already credited, or never sent) is ignored.
  rx.credit(1);
  rx.inlet.credit(999);
  await settle();
  assertEquals(out.stats.credited, 1);
  assertEquals(rx.ns(), [0, 1, 2, 3]);
  rx.credit(0);
  await settle();
  assertEquals(rx.ns(), [0, 1, 2, 3, 4]);
  assert(out.hasRoom());
  close(out, rx);
});

Deno.test("link: the byte window bounds what is in flight, but a lone batch larger than it still goes", async () => {
  const out = new Outlet<Msg>("t", 10, 100);
  const rx = new Receiver();
  out.wire(rx.port);
  assertEquals(bytesOf({ n: 0, b: new Uint8Array(60) }), 60);
  const first = new Uint8Array(60).fill(7);
  out.send({ n: 0, b: first });
  out.send({ n: 1, b: new Uint8Array(60) }); // 60 + 60 > 100: waits
  out.send({ n: 2, b: new Uint8Array(10) }); // behind it, in order
  await settle();
  assertEquals(rx.ns(), [0]);
  // Kept for a resend, so copied, not transferred: the sender's buffer is intact, the receiver's is equal.
  assertEquals(first.byteLength, 60);
  assertEquals(rx.got[0]!.m.b, first);
  rx.credit(0);
  await settle();
  assertEquals(rx.ns(), [0, 1, 2], "60 + 10 ≤ 100");
  rx.credit(1);
  rx.credit(2);
  await settle();
  // A batch of 500 bytes with nothing in flight goes alone; the small one behind it waits for its credit.
  out.send({ n: 3, b: new Uint8Array(500) });
  out.send({ n: 4, b: new Uint8Array(1) });
  await settle();
  assertEquals(rx.ns(), [0, 1, 2, 3]);
  assertEquals(out.queue.length, 1);
  rx.credit(3);
  await settle();
  assertEquals(rx.ns(), [0, 1, 2, 3, 4]);
  close(out, rx);
});

Deno.test("link: after wire(port, true) what was not credited is sent again, on probation (one at a time)", async () => {
  const out = new Outlet<Msg>("t", 2, 1 << 20);
  const rx1 = new Receiver();
  out.wire(rx1.port);
  for (let n = 0; n < 4; n++) out.send({ n });
  await settle();
  assertEquals(rx1.ns(), [0, 1]);
  rx1.credit(0);
  await settle();
  assertEquals(rx1.ns(), [0, 1, 2]);
  // The receiver dies with 1 and 2 in its mailbox; a new one is wired in.
  const rx2 = new Receiver();
  out.wire(rx2.port, true);
  await settle();
  assertEquals(rx2.ns(), [1], "probation: one batch until the first credit");
  assertEquals([out.inflight.size, out.queue.length], [1, 2]);
  // A late credit from the dead receiver's port does nothing (that port is closed).
  rx1.credit(2);
  await settle();
  assertEquals(rx2.ns(), [1]);
  rx2.credit(1);
  await settle();
  assertEquals(rx2.ns(), [1, 2], "what was in flight at the restart goes again alone, each");
  rx2.credit(2);
  await settle();
  assertEquals(rx2.ns(), [1, 2, 3], "then the full window again");
  // New sequence numbers on the new port.
  assertEquals(new Set(rx2.got.map((f) => f.s)).size, 3);
  rx2.credit(3);
  await settle();
  assertEquals(out.depth(), 0);
  assertEquals(out.stats.poisoned, 0);
  // A rewire that is not a restart (`restarted` false) sends nothing again.
  out.send({ n: 4 });
  await settle();
  const rx3 = new Receiver();
  out.wire(rx3.port);
  await settle();
  assertEquals(rx3.ns(), []);
  close(out, rx1, rx2, rx3);
});

Deno.test("link: nothing in flight at a restart means no probation", async () => {
  const out = new Outlet<Msg>("t", 3, 1 << 20);
  const rx1 = new Receiver();
  out.wire(rx1.port);
  const rx2 = new Receiver();
  out.wire(rx2.port, true);
  for (let n = 0; n < 4; n++) out.send({ n });
  await settle();
  assertEquals(rx2.ns(), [0, 1, 2]);
  assertEquals(rx1.ns(), []);
  close(out, rx1, rx2);
});

Deno.test("link: a batch that crashes its receiver twice while alone in flight goes to onPoison; the rest flows", async () => {
  const poisoned: Poisoned<Msg>[] = [];
  const out = new Outlet<Msg>("t", 4, 1 << 20, (p) => poisoned.push(p));
  const rx1 = new Receiver();
  out.wire(rx1.port);
  for (let n = 0; n < 3; n++) out.send({ n });
  await settle();
  assertEquals(rx1.ns(), [0, 1, 2]);
  // First crash with three in flight: none is a suspect yet; all go again, one at a time (probation).
  const rx2 = new Receiver();
  out.wire(rx2.port, true);
  await settle();
  assertEquals(rx2.ns(), [0]);
  assertEquals(poisoned, []);
  // A crash while 0 is alone in flight counts against it once ...
  const rx3 = new Receiver();
  out.wire(rx3.port, true);
  await settle();
  assertEquals(poisoned, []);
  assertEquals(rx3.ns(), [0]);
  // ... and a second one makes it the poison.
  const rx4 = new Receiver();
  out.wire(rx4.port, true);
  await settle();
  assertEquals(poisoned.map((p) => [p.msg.n, p.crashes]), [[0, 2]]);
  assertEquals(out.stats.poisoned, 1);
  assertEquals(rx4.ns(), [1], "the next one goes, still on probation");
  rx4.credit(1);
  await settle();
  assertEquals(rx4.ns(), [1, 2]);
  out.send({ n: 3 });
  out.send({ n: 4 });
  await settle();
  assertEquals(rx4.ns(), [1, 2], "2 was in flight at a restart: it goes alone");
  rx4.credit(2);
  await settle();
  assertEquals(rx4.ns(), [1, 2, 3, 4], "window back to 4");
  for (const n of [3, 4]) rx4.credit(n);
  await settle();
  assertEquals(out.depth(), 0);
  assert(!rx4.ns().includes(0), "the poison batch was never sent again");
  close(out, rx1, rx2, rx3, rx4);
});

Deno.test("link: a poison batch that crashes its receiver with others in flight costs one crash more, not one per batch", async () => {
  // Issue 11: after a restart probation used to end at the first credit, and the poison batch went again beside the
  // others: every such crash was pinned on no one (the index's retry of a dead letter then passed the restart
  // intensity). Now each batch in flight at a restart goes again alone: 1 crash beside others, then 2 alone.
  const poisoned: Poisoned<Msg>[] = [];
  const out = new Outlet<Msg>("t", 4, 1 << 20, (p) => poisoned.push(p));
  let rx = new Receiver();
  const all = [rx];
  out.wire(rx.port);
  for (let n = 0; n < 4; n++) out.send({ n });
  let crashes = 0;
  // The receiver crashes whenever batch 3 (the last) is in its mailbox; it credits the others.
  for (let round = 0; round < 10 && poisoned.length === 0; round++) {
    await settle();
    if (!rx.ns().includes(3)) {
      for (const n of rx.ns()) rx.credit(n);
      continue;
    }
    crashes++;
    rx = new Receiver();
    all.push(rx);
    out.wire(rx.port, true);
  }
  assertEquals(poisoned.map((p) => p.msg.n), [3]);
  assertEquals(crashes, 3);
  close(out, ...all);
});

Deno.test("link: a batch sent alone waits for the link to empty and holds it while in flight", async () => {
  const out = new Outlet<Msg>("t", 4, 1 << 20);
  const rx = new Receiver();
  out.wire(rx.port);
  out.send({ n: 0 });
  out.send({ n: 1 }, true);
  out.send({ n: 2 });
  await settle();
  assertEquals(rx.ns(), [0], "1 waits for 0's credit");
  assert(!out.canSend());
  rx.credit(0);
  await settle();
  assertEquals(rx.ns(), [0, 1], "2 waits while 1 is in flight");
  assert(!out.canSend());
  rx.credit(1);
  await settle();
  assertEquals(rx.ns(), [0, 1, 2]);
  // A crash while it is in flight is pinned on it (it is alone).
  out.send({ n: 3 }, true);
  rx.credit(2);
  await settle();
  const rx2 = new Receiver();
  out.wire(rx2.port, true);
  await settle();
  assertEquals(rx2.ns(), [3]);
  assertEquals(out.inflight.get(rx2.got[0]!.s)!.crashes, 1);
  close(out, rx, rx2);
});

Deno.test("link: drained() resolves once everything is credited, room() once nothing waits for credit", async () => {
  const out = new Outlet<Msg>("t", 1, 1 << 20);
  const rx = new Receiver();
  await out.drained(); // nothing sent: at once
  await out.room();
  out.wire(rx.port);
  out.send({ n: 0 });
  out.send({ n: 1 });
  let drained = false, room = false;
  out.drained().then(() => (drained = true));
  out.room().then(() => (room = true));
  await settle();
  assertEquals([drained, room], [false, false]);
  rx.credit(0);
  await until(() => room);
  assertEquals(drained, false, "room: 1 is sent, not yet credited");
  assertEquals(out.depth(), 1);
  rx.credit(1);
  await until(() => drained);
  assertEquals(out.depth(), 0);
  close(out, rx);
});

Deno.test("link: an unwired outlet queues; wiring it sends what waited", async () => {
  const out = new Outlet<Msg>("t", 2, 1 << 20);
  out.send({ n: 0 });
  out.send({ n: 1 });
  out.send({ n: 2 });
  assertEquals(out.queue.length, 3);
  const rx = new Receiver();
  out.wire(rx.port);
  await settle();
  assertEquals(rx.ns(), [0, 1]);
  out.unwire();
  rx.credit(0);
  await settle();
  assertEquals(out.stats.credited, 0, "an unwired outlet hears no credit");
  close(out, rx);
});

Deno.test("link: transferables() lists whole buffers only, once each", () => {
  const whole = new Uint8Array(8);
  const view = new Uint8Array(new ArrayBuffer(16), 4, 4);
  const t = transferables({ a: whole, b: { c: whole, d: view }, e: 1 });
  assertEquals(t, [whole.buffer]);
  assertEquals(bytesOf({ a: whole, b: { d: view } }), 12);
});

Deno.test({
  name: "link: drained() waiting when the last batch in flight is poisoned resolves",
  // Regression (was a bug in actors/link.ts, Outlet.wire): a batch handed to onPoison leaves the outlet without a credit, and only
  // #credit() resolves the drained() waiters, so a drained() asked before the poison never resolves even though
  // depth() is 0. Not fixed here (helper brief: report, do not touch actors/).
  fn: async () => {
    const out = new Outlet<Msg>("t", 1, 1 << 20);
    const rx1 = new Receiver(), rx2 = new Receiver(), rx3 = new Receiver();
    out.wire(rx1.port);
    out.send({ n: 0 });
    let drained = false;
    out.drained().then(() => (drained = true));
    await settle();
    out.wire(rx2.port, true);
    await settle();
    out.wire(rx3.port, true);
    await settle();
    assertEquals(out.depth(), 0);
    await until(() => drained, 300);
    close(out, rx1, rx2, rx3);
  },
});
