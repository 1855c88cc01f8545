// The CLI is a client of a running node (it uses client/): groups, membership, members, publish, query, tail.
import { assert, assertEquals } from "@std/assert";
import { tempNode } from "./_helpers.ts";
import { serve } from "../net/server.ts";

const MAIN = new URL("../net/main.ts", import.meta.url).pathname;

async function xf(args: string[]): Promise<{ code: number; out: string; err: string }> {
  const o = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, ...args],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  const td = new TextDecoder();
  return { code: o.code, out: td.decode(o.stdout).trim(), err: td.decode(o.stderr).trim() };
}

Deno.test("xf: a closed group from the CLI: create, add a member, members, groups, publish, query, tail", async () => {
  const t = await tempNode();
  const s = await serve(t.node, { host: "127.0.0.1", port: 0 });
  const dir = await Deno.makeTempDir({ prefix: "xf-cli-" });
  try {
    const node = ["--node", s.url];
    const owner = JSON.parse((await xf(["keygen", "--key", `${dir}/owner.key`])).out);
    const friend = JSON.parse((await xf(["keygen", "--key", `${dir}/friend.key`])).out);
    const created = await xf(["group", "create", "--name", "club", "--closed", "--key", `${dir}/owner.key`, ...node]);
    assertEquals(created.code, 0, created.err);
    const gid = JSON.parse(created.out).group as string;
    const add = await xf([
      "group",
      "add",
      "--group",
      gid,
      "--member",
      friend.publicKey,
      "--key",
      `${dir}/owner.key`,
      ...node,
    ]);
    assertEquals([add.code, JSON.parse(add.out).result.status], [0, "stored"], add.err);
    const members = JSON.parse((await xf(["members", "--group", gid, "--key", `${dir}/friend.key`, ...node])).out);
    assertEquals(members.owner, owner.publicKey);
    assertEquals(members.members.map((m: { role: string }) => m.role).sort(), ["member", "owner"]);
    // Without a member's key the closed group is not there: exit 1 with the node's code.
    const hidden = await xf(["members", "--group", gid, ...node]);
    assertEquals([hidden.code, JSON.parse(hidden.err).error], [1, "UNKNOWN_GROUP"]);
    const groups = JSON.parse((await xf(["groups", "--key", `${dir}/friend.key`, ...node])).out);
    assertEquals(groups.groups.map((g: { id: string }) => g.id), [gid]);
    const pub = await xf(["publish", "--group", gid, "--text", "hello club", "--key", `${dir}/friend.key`, ...node]);
    assertEquals([pub.code, JSON.parse(pub.out).status], [0, "stored"], pub.err);
    const q = JSON.parse((await xf(["query", "--group", gid, "--key", `${dir}/owner.key`, ...node])).out);
    assertEquals(q.events.at(-1).text, "hello club");
    // tail follows the stream: backfill, then a live event.
    const tail = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", MAIN, "tail", "--group", gid, "--key", `${dir}/owner.key`, ...node],
      stdout: "piped",
      stderr: "null",
    }).spawn();
    const lines: string[] = [];
    const reading = (async () => {
      const r = tail.stdout.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await r.read();
        if (done) break;
        buf += value;
        const parts = buf.split("\n");
        buf = parts.pop()!;
        lines.push(...parts);
      }
    })();
    const end = Date.now() + 15_000;
    while (lines.length < 3 && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
    await xf(["publish", "--group", gid, "--text", "live one", "--key", `${dir}/owner.key`, ...node]);
    while (!lines.some((l) => l.includes("live one")) && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
    tail.kill("SIGTERM");
    await tail.status;
    await reading;
    assert(lines.some((l) => JSON.parse(l).text === "live one"), lines.join("\n"));
    // A usage error exits 2.
    assertEquals((await xf(["publish", "--group", "nope", ...node])).code, 2);
    assertEquals(
      (await xf(["publish", "--group", gid, "--kind", "abc", "--key", `${dir}/owner.key`, ...node])).code,
      2,
    );
  } finally {
    await s.shutdown();
    await t.done();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});
