// The README promises that every error code is produced by some test and
// every limit is tested at its edge. A crude, honest check: each code must
// appear quoted ("CODE") and each limit by name in some test source (this
// file aside). What is not yet covered sits in an allow-list with its
// reason; an entry that becomes covered must be removed, so the lists only
// shrink.
import { assertEquals } from "@std/assert";
import { LIMITS } from "../core/limits.ts";
import { ERROR_STATUS } from "../core/errors.ts";

/** Error codes no test produces yet, each with why. */
const CODES_UNTESTED: Record<string, string> = {};

/** Limits no test names yet (a test at the edge should name the limit it pushes), each with why. */
const LIMITS_UNTESTED: Record<string, string> = {
  restart_period_ms: "the restart window is tested with periodMs passed directly",
  metrics_disk_walk_ms: "the disk-walk cache period is not tested",
  metrics_disk_walk_entries_max: "the disk-walk entry bound is not tested",
  sync_inbound_bytes_max: "no sync test at the inbound byte bound",
  peers_max: "no test with more candidate peers than the bound",
  peer_backoff_max_ms: "the backoff ceiling is not tested",
  dht_request_timeout_ms: "the DHT request timeout is not tested by name",
  dht_inflight_max: "no test fills the DHT in-flight requests",
  dht_sessions_max: "no test fills the DHT session table",
  dht_sessions_per_addr_max: "no test at the per-address DHT session bound",
  dht_idle_ms: "DHT idle close is not tested",
  dht_discover_ms: "the discovery period is not tested",
  dht_refresh_ms: "the refresh period is not tested",
};

async function testSources(): Promise<string> {
  const dir = new URL("./", import.meta.url);
  let text = "";
  for await (const e of Deno.readDir(dir)) {
    if (e.isFile && e.name.endsWith(".ts") && e.name !== "coverage_test.ts") {
      text += await Deno.readTextFile(new URL(e.name, dir));
    }
  }
  return text;
}

function check(kind: string, names: string[], covered: (n: string) => boolean, allowed: Record<string, string>) {
  const missing = names.filter((n) => !covered(n) && !(n in allowed));
  const stale = Object.keys(allowed).filter((n) => !names.includes(n) || covered(n));
  if (missing.length) console.log(`${kind} no test covers:\n  ${missing.join("\n  ")}`);
  assertEquals(missing, [], `${kind} no test covers (add a test, or an allow-list entry with its reason)`);
  assertEquals(stale, [], `${kind} allow-list entries now covered or unknown: remove them`);
}

Deno.test("Every error code is asserted by some test, or allow-listed with its reason", async () => {
  const src = await testSources();
  check("Error codes", Object.keys(ERROR_STATUS), (c) => src.includes(`"${c}"`), CODES_UNTESTED);
});

Deno.test("Every limit is named by some test, or allow-listed with its reason", async () => {
  const src = await testSources();
  check("Limits", Object.keys(LIMITS), (n) => new RegExp(`\\b${n}\\b`).test(src), LIMITS_UNTESTED);
});
