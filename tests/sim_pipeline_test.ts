// The deterministic single-node simulation of the pipeline (issue 13): the five stage logics under a seeded
// scheduler, on simulated time, links and storage (tests/_sim_pipeline.ts says what is simulated and what is real).
// Invariants are checked after every step; a seed replays exactly (the same trace hash).
//
// `XF_SIM_PIPELINE_SEEDS=200` runs seeds 1..200 (`deno task test:sim` does), `XF_SIM_PIPELINE_SEED=7` one seed,
// `XF_SIM_TRACE=1` prints every scheduling decision.
import { assert, assertEquals, assertNotEquals } from "@std/assert";
import { simulate } from "./_sim_pipeline.ts";

const ONE = Deno.env.get("XF_SIM_PIPELINE_SEED");
const SEEDS = ONE
  ? [Number(ONE)]
  : Array.from({ length: Number(Deno.env.get("XF_SIM_PIPELINE_SEEDS") ?? 20) }, (_, i) => i + 1);

Deno.test("sim pipeline: one seed replays exactly (same trace hash twice)", async () => {
  const a = await simulate({ seed: 4242 });
  const b = await simulate({ seed: 4242 });
  assertEquals(a.hash, b.hash);
  assertEquals(a.stats, b.stats);
  assertNotEquals((await simulate({ seed: 4243 })).hash, a.hash);
  assert(a.stats.stored! > 0, `nothing stored: ${JSON.stringify(a.stats)}`);
  assert(a.stats.crashes! > 0 && a.stats.powerLosses! > 0, `no faults: ${JSON.stringify(a.stats)}`);
});

Deno.test(`sim pipeline: invariants hold for ${SEEDS.length} seeds`, async () => {
  const totals: Record<string, number> = {};
  const failures: string[] = [];
  const known: string[] = [];
  for (const seed of SEEDS) {
    const r = await simulate({ seed });
    for (const [k, v] of Object.entries(r.stats)) totals[k] = (totals[k] ?? 0) + v;
    failures.push(...r.violations);
    known.push(...r.known);
    for (const n of r.notes) console.log(n);
  }
  console.log(`seeds ${SEEDS[0]}..${SEEDS.at(-1)}: ${JSON.stringify(totals)}`);
  if (known.length) console.log(`known bug (see the ignored test below), ${known.length} times:\n${known.join("\n")}`);
  assertEquals(failures, []);
});

// The checks can fail: with the WAL's fdatasync made a no-op (the PowerLossFs switch), or with stages crediting
// a batch when they take it rather than when it is done, some of the first seeds break an invariant.
Deno.test("sim pipeline: the invariants catch a WAL without fdatasync and a broken credit rule", async () => {
  for (const sabotage of [{ noSync: true }, { creditOnTake: true }]) {
    let caught = "";
    for (let seed = 1; seed <= 10 && !caught; seed++) {
      caught = (await simulate({ seed, sabotage })).violations[0] ?? "";
    }
    assert(caught, `no seed of 1..10 caught ${JSON.stringify(sabotage)}`);
  }
});

// Issue 11 (known bug 1 below), made to happen: decode crashes once the removal of member A it admitted is on its way
// to the WAL (ingest has the credit for it, so it is not sent to decode again). Without the root's decode fence
// (root.ts `fenceDecode`; sabotage `noDecodeFence`) member A's next write is acknowledged on these seeds; with it, never.
Deno.test("sim pipeline: issue 11, a decode restart while its admitted removal is on its way to the WAL", async () => {
  for (const seed of [11, 30, 50]) {
    const fixed = await simulate({ seed, steps: 400, crashDecodeAfterRemoval: true });
    assertEquals([...fixed.violations, ...fixed.known], [], `seed ${seed}`);
    assert(fixed.stats.fenced! > 0 || fixed.stats.crashes! > 0);
    const broken = await simulate({
      seed,
      steps: 400,
      crashDecodeAfterRemoval: true,
      sabotage: { noDecodeFence: true },
    });
    assert(
      broken.violations.some((v) => v.includes("member A after its acknowledged removal")),
      `seed ${seed}: without the fence no removed member's write got in: ${broken.violations}`,
    );
  }
});

// Known bug 3 below, fixed: without the index's event-by-event retry of a batch it crashed on twice (root.ts
// `isolate`; sabotage `noIndexIsolation`) seed 183 acknowledges member A's writes after A's acknowledged removal.
Deno.test("sim pipeline: known bug 3 comes back without the index's event-by-event retry", async () => {
  const broken = await simulate({ seed: 183, steps: 400, sabotage: { noIndexIsolation: true } });
  assert(
    broken.known.some((v) => v.includes("member A after its acknowledged removal")),
    `without the retry no removed member's write got in: ${[...broken.violations, ...broken.known]}`,
  );
  const fixed = await simulate({ seed: 183, steps: 400 });
  assertEquals([...fixed.violations, ...fixed.known], []);
  assert(fixed.stats.isolated! > 0, JSON.stringify(fixed.stats));
});

// KNOWN BUGS found by this simulation (each is pinned below, ignored until fixed). The invariants test above counts
// their violations apart (it prints them) so it guards everything else.
//
// 1. FIXED since (root.ts `fenceDecode`: after a decode restart, wal_flush fences the dead decode's link off, and
//    the new decode's loads wait for the index to hold the WAL's last seq once what wal_flush had taken from it is
//    appended; the test above makes it happen on purpose). It was: a removed member's write acknowledged after
//    decode restarted (seed 2, 400 steps, before other fixes moved the schedule). Decode admits the closed
//    group's removal of member A and sends it to wal_flush; decode then crashes (a poison batch) before the removal
//    is appended. The new decode loads the group from the index (`load` → root.ts `answer` → `index.groupStates`
//    with `after: ackedSeq`, actors/root.ts:530, actors/decode.ts:319): the root waits only for the events
//    acknowledged *when it is asked*, and the removal is not acknowledged yet, so decode gets the state without it.
//    wal_flush then appends and acknowledges the removal (step 362); the client, having seen it stored, sends A's
//    next event (step 363, ts after the removal) and the new decode, holding the stale state, admits it: stored at
//    step 546.
//
// 2. FIXED since (the index's checkpoint is contiguous, the WAL resends what follows it after a restart of wal_flush or
//    the index, and a crash counts only against a batch alone in flight); the pinned seeds below now pass. It was:
//    An acknowledged event is never indexed, not even after a restart (seeds 24, 41, 83, 102, 118, 150, 199 of 200
//    at 800 steps). wal_flush reports `stored` when the append returns and then sends `put` to the index; the batch's
//    only other copy is the upstream's uncredited one, and decode is credited as soon as the put has left
//    wal_flush's outlet queue. Two crashes close together then lose the put for good:
//    a. seed 24: the index crashes with puts in flight; link.ts `wire(…, restarted)` (actors/link.ts:92-102) moves
//       them back into wal_flush's outlet queue, on probation one at a time; wal_flush crashes before they are sent
//       again and its outlet (queue and all) dies with it (host.ts `closeAll`); decode had already been credited.
//       (The same with decode crashing after being credited while its batch waits in wal_flush, then wal_flush.)
//    b. seed 199: two crashes of wal_flush (any cause) while a batch sits in its mailbox make link.ts count it as a
//       poison batch (`crashes >= 2`, actors/link.ts:95-98) even though probation had ended and several batches were
//       in flight; the batch was appended and acknowledged by the first wal_flush, and it is dead-lettered
//       (root.ts `dead`), never indexed.
//    The WAL still holds the events, but recovery replays only after the index's checkpoint (root.ts `replay`), which
//    later writes have moved past (the index's checkpoint is the highest seq it wrote, not the highest contiguous
//    one). Until a later write passes the hole, decode's group loads wait for the index to reach `ackedSeq` and the
//    writes stall (seed 41: 141 requests unanswered, recovered only by a restart). A fix: keep the checkpoint
//    contiguous (the lowest seq not yet indexed), or let wal_flush re-send acknowledged puts from the WAL after a
//    restart of either side, and do not count a crash against a batch that was not alone in flight.
//
// 3. FIXED since (root.ts `isolate`: a batch the index crashed on twice is not set aside; wal_flush reads its records
//    again from the WAL and sends each alone (`wal.isolate`, link.ts `send(…, alone)`); only an event that crashes the
//    index twice on its own is a dead letter and skipped; what was in flight at a restart goes again alone, so a
//    crash is pinned on one batch; the index stores the seqs it holds past a hole with its checkpoint). The test below
//    shows the bug back without it (sabotage `noIndexIsolation`). It was:
//    An acknowledged removal dead-lettered on its way into the index is never indexed, so every decode that loads the
//    group afterwards (a restart, a power loss) lets the removed member write again (seed 183, 400 steps). The
//    closed group's removal of member A is appended and acknowledged (step 265); the index then crashes twice (two
//    injected crashes, steps 270-271) while that put is alone in flight, so link.ts counts it a poison batch and the
//    root dead-letters it and tells the index to skip its seq (root.ts `dead` → `index.skip`). The WAL still holds it,
//    but nothing sends it to the index again; after the next decode restart member A's writes are acknowledged.
//    A fix: an index-side dead letter of acknowledged events must not be skipped silently (re-read it from the WAL
//    and index it event by event, setting aside only the event that crashes), or the index must not count a crash
//    against a batch that was merely alone in flight when an unrelated fault hit.
for (
  const [bug, seed, steps] of [
    ["1, a removed member's write refused after decode restarts", 2, 400],
    ["2a, acknowledged events indexed after an index crash then a wal_flush crash", 24, 800],
    ["2b, acknowledged events indexed after two unrelated wal_flush crashes", 199, 800],
    ["3, an acknowledged removal dead-lettered into the index still counts", 183, 400],
  ] as const
) {
  Deno.test({
    name: `sim pipeline: known bug ${bug} (seed ${seed}, pinned)`,
    async fn() {
      const r = await simulate({ seed, steps });
      assertEquals([...r.violations, ...r.known], []);
    },
  });
}
