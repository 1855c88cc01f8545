// The index stage's Worker runs at a lower thread priority (STAGE_NICE in actors/root.ts): its RocksDB and Merkle
// work yields to the acknowledgement path on a busy machine. Read back from /proc (Linux): some thread of this process
// has nice 10 once a node with Workers runs, none when the option sets the index's nice to 0.
import { assert, assertEquals } from "@std/assert";
import { openNode } from "../node.ts";
import { niceThisThread } from "../actors/thread_priority.ts";

/** Nice values of this process's threads, read from /proc through `sh` (Deno asks for --allow-all to read /proc). */
async function threadNices(): Promise<number[]> {
  const out = await new Deno.Command("sh", {
    args: ["-c", `for f in /proc/${Deno.pid}/task/*/stat; do cat "$f" 2>/dev/null; echo; done`],
    stdout: "piped",
  }).output();
  const nices: number[] = [];
  for (const stat of new TextDecoder().decode(out.stdout).split("\n")) {
    if (!stat.includes(")")) continue; // a thread that ended meanwhile
    // Fields after the command name (which may hold spaces, inside parentheses): nice is field 19, the 17th after ")".
    nices.push(Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[16]));
  }
  return nices;
}

const linux = Deno.build.os === "linux";

Deno.test({
  name: "The index Worker's thread runs at nice 10; with nice { index: 0 } no thread does",
  ignore: !linux,
  async fn() {
    const before = await threadNices();
    assert(before.length > 1, `threads read: ${before.length}`);
    assertEquals(before.filter((n) => n === 10).length, 0, "no thread at nice 10 before");
    for (const [nice, expect] of [[undefined, true], [0, false]] as const) {
      const dir = await Deno.makeTempDir();
      const node = await openNode({ dataDir: dir, ...(nice === undefined ? {} : { nice: { index: nice } }) });
      try {
        const at10 = (await threadNices()).filter((n) => n === 10).length;
        assertEquals(at10 > 0, expect, `threads at nice 10 with index nice ${nice ?? "default"}: ${at10}`);
      } finally {
        await node.close();
        await Deno.remove(dir, { recursive: true });
      }
    }
  },
});

Deno.test("niceThisThread refuses a value outside 0..19 and raising priority is not asked for", () => {
  assert(niceThisThread(-1)?.includes("0..19"));
  assert(niceThisThread(20)?.includes("0..19"));
  assert(niceThisThread(1.5)?.includes("0..19"));
});
