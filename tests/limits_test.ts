import { assertEquals, assertThrows } from "@std/assert";
import { LIMITS, limitsWith } from "../core/limits.ts";

Deno.test("limitsWith() applies overrides over the defaults and refuses unknown names and bad values", () => {
  const l = limitsWith({ sync_stall_ms: 5000 });
  assertEquals(l.sync_stall_ms, 5000);
  assertEquals(l.sync_idle_ms, LIMITS.sync_idle_ms);
  assertThrows(() => limitsWith({ no_such_max: 1 } as never), TypeError, "no such limit");
  assertThrows(() => limitsWith({ sync_strikes_max: -1 }), TypeError, "not a non-negative number");
  assertThrows(() => limitsWith({ sync_strikes_max: Infinity }), TypeError, "not a non-negative number");
});

Deno.test("limitsWith() refuses a wal_commit_records_max below stage_batch_events_max (one batch is one WAL call)", () => {
  const at = limitsWith({ stage_batch_events_max: 64, wal_commit_records_max: 64 });
  assertEquals([at.stage_batch_events_max, at.wal_commit_records_max], [64, 64]);
  assertThrows(
    () => limitsWith({ stage_batch_events_max: 64, wal_commit_records_max: 63 }),
    TypeError,
    "below stage_batch_events_max",
  );
  assertThrows(() => limitsWith({ stage_batch_events_max: LIMITS.wal_commit_records_max + 1 }), TypeError);
});
