// The CLI is a client of a running node (it uses client/): groups, membership, members, publish, query, tail.
import { assert, assertEquals, assertMatch } from "@std/assert";
import { makeEvents, tempNode, testGroup } from "./_helpers.ts";
import { toHex } from "../core/bytes.ts";
import { serve } from "../net/server.ts";
import { openNode } from "../node.ts";
import { COMMANDS } from "../net/cli.ts";
import { DATA_FORMAT_VERSION, VERSION } from "../version.ts";

const MAIN = new URL("../net/main.ts", import.meta.url).pathname;

async function xf(args: string[]): Promise<{ code: number; out: string; err: string }> {
  const o = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, ...args],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
    signal: AbortSignal.timeout(30_000),
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
    // Times as ISO 8601 beside the ms; --raw shows the payload as hex, in query and get alike.
    assertEquals(q.events.at(-1).time, new Date(q.events.at(-1).ts).toISOString());
    const raw = JSON.parse((await xf(["query", "--group", gid, "--raw", "--key", `${dir}/owner.key`, ...node])).out);
    assertEquals([raw.events.at(-1).payload, raw.events.at(-1).text], ["68656c6c6f20636c7562", undefined]);
    const id = q.events.at(-1).id;
    const got = JSON.parse((await xf(["get", id, "--key", `${dir}/owner.key`, ...node])).out);
    assertEquals([got.text, got.time], ["hello club", q.events.at(-1).time]);
    const gotRaw = JSON.parse((await xf(["get", id, "--raw", "--key", `${dir}/owner.key`, ...node])).out);
    assertEquals([gotRaw.payload, gotRaw.text], ["68656c6c6f20636c7562", undefined]);
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

/** A port nothing listens on (bound, then released). */
function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** `xf serve …` until it prints its JSON line (or exits); stop() ends it with SIGTERM. */
async function startServe(args: string[]) {
  const proc = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, "serve", "--port", "0", ...args],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  const kill = setTimeout(() => proc.kill("SIGKILL"), 30_000);
  const err: string[] = [];
  const errDone = (async () => {
    for await (const c of proc.stderr.pipeThrough(new TextDecoderStream())) err.push(c);
  })();
  const lines: string[] = [];
  const reader = proc.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  while (lines.length < 2) {
    const { done, value } = await reader.read();
    if (done) break;
    buf += value;
    const parts = buf.split("\n");
    buf = parts.pop()!;
    lines.push(...parts);
  }
  const url = lines[0]?.replace("listening on ", "") ?? "";
  const info = lines[1] ? JSON.parse(lines[1]) : null;
  const stop = async () => {
    proc.kill("SIGTERM");
    const drain = (async () => {
      while (!(await reader.read()).done);
    })();
    const status = await proc.status;
    clearTimeout(kill);
    await drain;
    await errDone;
    return status.code;
  };
  return { url, info, err, stop };
}

Deno.test("xf --help lists every command; COMMAND --help shows usage, flags and an example and never acts", async () => {
  const dir = await Deno.makeTempDir({ prefix: "xf-cli-help-" });
  try {
    const top = await xf(["--help"]);
    assertEquals(top.code, 0, top.err);
    for (const c of COMMANDS) assertMatch(top.out, new RegExp(`^  ${c.name} +\\S`, "m"));
    assertEquals((await xf([])).code, 0);
    const group = await xf(["group", "--help"]);
    assert(group.code === 0 && group.out.includes("group unadmin"), group.out);
    // Every command's help, with other flags missing or present: usage, flags, example; nothing done.
    const helps = await Promise.all(COMMANDS.map((c) => xf([...c.name.split(" "), "--data", `${dir}/d`, "--help"])));
    for (const [i, h] of helps.entries()) {
      const c = COMMANDS[i]!;
      assertEquals(h.code, 0, `${c.name}: ${h.err}`);
      assert(h.out.includes(`Usage: xf ${c.name}`) && h.out.includes("Example:"), h.out);
      for (const f of c.flags) assert(h.out.includes(`--${f.name}`), `${c.name} --help lacks --${f.name}`);
    }
    // serve --help started no node: no data directory was made.
    assertEquals(await Deno.stat(`${dir}/d`).catch(() => null), null);
    const version = await xf(["--version"]);
    assertEquals([version.code, version.out], [0, VERSION]);
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});

Deno.test("xf refuses unknown flags, missing values, bad numbers and unsigned signing with exit 2", async () => {
  const gid = "ab".repeat(32);
  const node = ["--node", `http://127.0.0.1:${freePort()}`];
  const unknown = await xf(["publish", "--grup", gid, ...node]);
  assertEquals(unknown.code, 2);
  assert(unknown.err.includes('"--grup"') && unknown.err.includes("--group, --text"), unknown.err);
  const missing = await xf(["query", "--group"]);
  assert(missing.code === 2 && missing.err.includes("--group needs a value"), missing.err);
  assertEquals((await xf(["publish", "--group", gid, "--kind", "abc", "--key", "x.key", ...node])).code, 2);
  assertEquals((await xf(["query", "--group", gid, "--limit", "ten", ...node])).code, 2);
  assertEquals((await xf(["get", "a", "b", ...node])).code, 2);
  for (const range of [["--since", "yesterday"], ["--until", "5/1/2024"], ["--since", "200", "--until", "100"]]) {
    const r = await xf(["sync", "--peer", "ws://127.0.0.1:1", ...range, ...node]);
    assert(r.code === 2 && (r.err.includes("--since") || r.err.includes("--until")), `${range.join(" ")}: ${r.err}`);
  }
  assertEquals((await xf(["pubish"])).code, 2);
  for (const n of ["20", "-1", "ten"]) {
    const r = await xf(["serve", "--data", "/nonexistent/xf", "--port", "0", "--index-nice", n]);
    assert(r.code === 2 && r.err.includes("--index-nice"), `--index-nice ${n}: ${r.code} ${r.err}`);
  }
  // --key is required to sign: no silent ./data/node.key.
  const unsigned = [
    ["publish", "--group", gid, "--text", "hi"],
    ["group", "create", "--name", "x"],
    ["group", "add", "--group", gid, "--member", gid],
  ];
  for (const cmd of unsigned) {
    const r = await xf([...cmd, ...node]);
    assert(r.code === 2 && r.err.includes("--key FILE"), `${cmd.join(" ")}: ${r.code} ${r.err}`);
  }
});

Deno.test("xf names the node it cannot reach: connection refused, exit 1", async () => {
  const url = `http://127.0.0.1:${freePort()}`;
  const r = await xf(["groups", "--node", url]);
  assertEquals(r.code, 1);
  assertEquals(JSON.parse(r.err).message, `Cannot reach the node at ${url}: connection refused`);
});

Deno.test("xf serve: port in use, a held data directory, fsck, a newer data format, --public-url", async () => {
  const dir = await Deno.makeTempDir({ prefix: "xf-cli-serve-" });
  const a = await startServe(["--data", `${dir}/a`]);
  try {
    assert(a.info, a.err.join(""));
    assertEquals(a.info.publicUrl, a.url.replace(/^http/, "ws"));
    const health = await (await fetch(`${a.url}/health`)).json();
    assertEquals(health.version, VERSION);
    assertEquals(await Deno.readTextFile(`${dir}/a/FORMAT`), `${DATA_FORMAT_VERSION}\n`);
    // A port in use is named, and nothing is created.
    const port = new URL(a.url).port;
    const taken = await xf(["serve", "--data", `${dir}/b`, "--port", port]);
    assert(taken.code === 1 && taken.err.includes(`port ${port} is in use`), taken.err);
    assertEquals(await Deno.stat(`${dir}/b`).catch(() => null), null);
    // A second node, or fsck, on a running node's directory: another process holds it.
    const second = await xf(["serve", "--data", `${dir}/a`, "--port", "0"]);
    assert(second.code === 1 && second.err.includes("another process holds it"), second.err);
    assert(second.err.includes(`${dir}/a`), second.err);
    const fsck = await xf(["fsck", "--data", `${dir}/a`]);
    assert(fsck.code === 1 && fsck.err.includes("another process holds it"), fsck.err);
    const none = await xf(["fsck", "--data", `${dir}/nonexistent`]);
    assert(none.code === 2 && none.err.includes(`${dir}/nonexistent`), none.err);
    assertEquals(await Deno.stat(`${dir}/nonexistent`).catch(() => null), null);
  } finally {
    assertEquals(await a.stop(), 0);
  }
  try {
    // A directory of a newer format is refused, naming the directory and both versions.
    await Deno.writeTextFile(`${dir}/a/FORMAT`, `${DATA_FORMAT_VERSION + 1}\n`);
    const newer = await xf(["serve", "--data", `${dir}/a`, "--port", "0"]);
    assertEquals([newer.code, JSON.parse(newer.err).error], [1, "DATA_FORMAT_TOO_NEW"], newer.err);
    for (const s of [`${dir}/a`, `format ${DATA_FORMAT_VERSION + 1}`, `format ${DATA_FORMAT_VERSION}`]) {
      assert(newer.err.includes(s), newer.err);
    }
    // Listening everywhere without --public-url: nothing announced, and a warning says what to pass.
    const any = await startServe(["--data", `${dir}/c`, "--host", "0.0.0.0"]);
    const anyCode = await any.stop();
    assertEquals([anyCode, any.info?.publicUrl], [0, null]);
    assert(any.err.join("").includes("--public-url"), any.err.join(""));
    const pub = await startServe(["--data", `${dir}/c`, "--host", "0.0.0.0", "--public-url", "wss://xf.example.org"]);
    assertEquals([await pub.stop(), pub.info?.publicUrl], [0, "wss://xf.example.org"]);
    assertEquals((await xf(["serve", "--data", `${dir}/c`, "--public-url", "http://x"])).code, 2);
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});

Deno.test("openNode() writes DATA/FORMAT on first start and upgrades a directory from before the file", async () => {
  const dir = await Deno.makeTempDir({ prefix: "xf-cli-format-" });
  try {
    await (await openNode({ dataDir: dir, workers: false })).close();
    assertEquals(await Deno.readTextFile(`${dir}/FORMAT`), `${DATA_FORMAT_VERSION}\n`);
    await Deno.remove(`${dir}/FORMAT`); // as a node before the format file left it: format 1
    await (await openNode({ dataDir: dir, workers: false })).close();
    assertEquals(await Deno.readTextFile(`${dir}/FORMAT`), `${DATA_FORMAT_VERSION}\n`);
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});

Deno.test("xf export and xf import move a group between nodes with the same root", async () => {
  const a = await tempNode(), b = await tempNode();
  const sa = await serve(a.node, { host: "127.0.0.1", port: 0 });
  const sb = await serve(b.node, { host: "127.0.0.1", port: 0 });
  const dir = await Deno.makeTempDir({ prefix: "xf-cli-" });
  try {
    await xf(["keygen", "--key", `${dir}/me.key`]);
    const gid =
      JSON.parse((await xf(["group", "create", "--name", "g", "--key", `${dir}/me.key`, "--node", sa.url])).out)
        .group;
    for (let i = 0; i < 3; i++) {
      await xf(["publish", "--group", gid, "--text", `m${i}`, "--key", `${dir}/me.key`, "--node", sa.url]);
    }
    const ex = await xf(["export", "--group", gid, "--out", `${dir}/g.xfx`, "--node", sa.url]);
    assertEquals(ex.code, 0, ex.err);
    const im = await xf(["import", `${dir}/g.xfx`, "--node", sb.url]);
    assertEquals([im.code, JSON.parse(im.out).verified], [0, true], im.err);
    assertEquals((await b.node.merkle(gid))!.root, (await a.node.merkle(gid))!.root);
    assertEquals((await xf(["import", "--node", sb.url])).code, 2);
  } finally {
    await sb.shutdown();
    await sa.shutdown();
    await b.done();
    await a.done();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});

Deno.test("xf sync --since ISO --until MS syncs only that range and prints it", async () => {
  const a = await tempNode(), b = await tempNode();
  const sa = await serve(a.node, { host: "127.0.0.1", port: 0 });
  const sb = await serve(b.node, { host: "127.0.0.1", port: 0 });
  try {
    const g = await testGroup();
    const gid = toHex(g.gid);
    const day = Date.UTC(2024, 4, 1), DAY = 86_400_000;
    await a.node.publish([g.manifest, ...await makeEvents(g, 5, day - DAY), ...await makeEvents(g, 4, day)]);
    await b.node.publish([g.manifest, ...await makeEvents(g, 3, day + 1000)]);
    const r = await xf([
      "sync",
      "--peer",
      sb.url.replace("http", "ws"),
      "--group",
      gid,
      "--since",
      "2024-05-01",
      "--until",
      String(day + DAY),
      "--node",
      sa.url,
    ]);
    assertEquals(r.code, 0, r.err);
    const out = JSON.parse(r.out);
    assertEquals(out.ranges, { [gid]: { since: day, until: day + DAY } });
    assertEquals([out.eventsSent, out.eventsReceived], [4, 3 + 1]); // b's 3, and the manifest pushed at sub
    assertEquals((await b.node.merkle(gid))!.count, 1 + 3 + 4); // not a's 5 of the day before
  } finally {
    await sb.shutdown();
    await sa.shutdown();
    await b.done();
    await a.done();
  }
});
