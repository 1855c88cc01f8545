// `deno task bench:scale` at a toy size (the real run holds 10,000,000 events and takes most of an hour): the script
// fills a group through the index runtime, opens a node on the same directory twice, and prints every row with a
// finite value. Guards the script against rot; the figures themselves come from the real run (BENCHMARKS.md).
import { assert, assertStringIncludes } from "@std/assert";

Deno.test("bench:scale runs end to end at a toy size and prints every figure", async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL("../bench/scale.ts", import.meta.url).pathname],
    env: { XF_SCALE_EVENTS: "6000", XF_SCALE_BASE: "3000", XF_SCALE_WINDOW: "1024", XF_SCALE_PUBLISH: "300" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  assert(out.success, new TextDecoder().decode(out.stderr));
  const rows = text.split("\n").filter((l) => l.startsWith("| ") && !l.startsWith("| figure"));
  assert(rows.length === 10, text);
  for (const r of rows) {
    const cells = r.split("|").map((c) => c.trim());
    for (const c of [cells[2], cells[4], cells[5]]) assert(Number.isFinite(Number(c!.replace(/,/g, ""))), r);
  }
  assertStringIncludes(text, "Merkle index bytes per event at 6,000");
});
