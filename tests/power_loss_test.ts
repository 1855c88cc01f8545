// Power loss, not SIGKILL: a killed process leaves the page cache to the
// kernel, so a WAL without fdatasync survives the crash test. Here the WAL
// runs on PowerLossFs, which drops every byte not yet synced when the power
// goes; every record the WAL acknowledged must come back. `XF_NO_SYNC=1`
// turns syncData into a no-op in PowerLossFs (not in the WAL), and the first
// test then fails; the second runs that case on purpose and requires the
// check to catch it.
import { Prng, toHex } from "../core/bytes.ts";
import { assert, assertEquals, assertRejects } from "@std/assert";
import { Wal } from "../storage/wal.ts";
import { PowerLossFs } from "./_power_loss_fs.ts";

const ROUNDS = 20;
const WRITERS = 4;
const DIR = "/mem/wal";

/**
 * Rounds of: recover, check every acknowledged record, append from several
 * writers, lose power at a random write or sync. Returns what was checked.
 */
async function powerLossRounds(fs: PowerLossFs, rand: () => number) {
  const acked = new Map<bigint, Uint8Array>();
  let total = 0;
  for (let round = 0; round <= ROUNDS; round++) {
    const { wal, recovery } = await Wal.open(DIR, { checkpointSeq: 0n, fs, limits: { wal_segment_bytes_max: 2048 } });
    const held = new Map<bigint, Uint8Array>();
    for await (const batch of wal.replay(0n)) for (const r of batch) held.set(r.seq, r.payload);
    for (const [seq, payload] of acked) {
      const got = held.get(seq);
      if (!got) throw new Error(`round ${round}: acknowledged record ${seq} lost (${recovery.records} recovered)`);
      assertEquals(toHex(got), toHex(payload), `round ${round}: acknowledged record ${seq} changed`);
    }
    if (round === ROUNDS) {
      await wal.close();
      break;
    }
    // The power goes at a random write or sync, at least a few operations in.
    const failAt = 5 + Math.floor(rand() * 30);
    let ops = 0;
    let lost = false;
    fs.beforeOp = () => {
      if (lost || ++ops < failAt) return;
      lost = true;
      fs.powerLoss();
      throw new Error("Power lost");
    };
    let ackedThisRound = 0;
    const writer = async (w: number) => {
      for (let i = 0; !lost && i < 1000; i++) {
        const payloads = Array.from(
          { length: 1 + Math.floor(rand() * 4) },
          (_, j) => new TextEncoder().encode(`round ${round} writer ${w} append ${i}.${j} `.repeat(1 + (i % 5))),
        );
        try {
          const { firstSeq, lastSeq } = await wal.append(payloads);
          assertEquals(lastSeq - firstSeq + 1n, BigInt(payloads.length));
          payloads.forEach((p, j) => acked.set(firstSeq + BigInt(j), p));
          ackedThisRound += payloads.length;
        } catch {
          return; // not acknowledged: the power went first
        }
      }
    };
    await Promise.all(Array.from({ length: WRITERS }, (_, w) => writer(w)));
    fs.beforeOp = () => {};
    await wal.close().catch(() => {});
    assert(lost, `round ${round}: the power never went`);
    assert(ackedThisRound > 0, `round ${round}: nothing was acknowledged before the power went`);
    total += ackedThisRound;
  }
  return { acked: acked.size, total };
}

Deno.test("Wal keeps every acknowledged record through power losses that drop unsynced writes", async () => {
  const rand = new Prng(0x5eed).float;
  const fs = new PowerLossFs({ rand });
  const { acked } = await powerLossRounds(fs, rand);
  assert(acked > 100, `only ${acked} records acknowledged`);
  assert(fs.syncs > ROUNDS);
});

Deno.test("The power-loss check catches a WAL that acknowledges without fdatasync", async () => {
  const rand = new Prng(0x5eed).float;
  const fs = new PowerLossFs({ rand, noSync: true });
  const e = await assertRejects(() => powerLossRounds(fs, rand));
  assert(/acknowledged record \d+ (lost|changed)|Cannot open WAL segment/.test((e as Error).message), String(e));
});
