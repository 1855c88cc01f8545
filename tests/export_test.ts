// Group export and import: GET /v1/groups/:gid/export, XfClient.exportGroup()/importEvents(), and the
// CLI functions runExport()/runImport() (and once the file as a program), against real nodes on port 0.
import { assert, assertEquals, assertRejects } from "@std/assert";
import { tempNode } from "./_helpers.ts";
import { serve } from "../net/server.ts";
import { createApp } from "../net/app.ts";
import type { XfNode } from "../node.ts";
import { runExport, runImport } from "../net/cli_export.ts";
import {
  generateKeyPair,
  type KeyPair,
  splitCborSeq,
  textPayload,
  toHex,
  XfClient,
  XfClientError,
} from "../client/mod.ts";
import type { Limits } from "../core/limits.ts";
import { createGroup, peekEvent, signEvent } from "../storage/event.ts";

/** A node served on 127.0.0.1, port 0. */
async function served(limits: Partial<Limits> = {}): Promise<{ url: string; node: XfNode; done(): Promise<void> }> {
  const t = await tempNode({ limits });
  const s = await serve(t.node, { host: "127.0.0.1", port: 0 });
  return {
    url: s.url,
    node: t.node,
    async done() {
      await s.shutdown();
      await t.done();
    },
  };
}

const quiet = () => {};

async function codeOf(p: Promise<unknown>): Promise<{ code: string; status: number }> {
  try {
    await p;
  } catch (e) {
    if (e instanceof XfClientError) return { code: e.code, status: e.status };
    throw e;
  }
  throw new Error("expected an XfClientError");
}

/**
 * A closed group on the node at `url`: manifest, membership events (add, make admin, add and remove a
 * third key) and `n` app events by the owner and the member, published in batches.
 */
async function closedGroup(url: string, n: number): Promise<{ gid: string; owner: KeyPair; member: KeyPair }> {
  const owner = await generateKeyPair(), member = await generateKeyPair(), gone = await generateKeyPair();
  const t0 = Date.now() - 3_600_000;
  const xf = new XfClient(url, { key: owner });
  const { gid } = await xf.createGroup({ name: "backup me", policy: "closed", ts: t0 });
  await xf.addMember(gid, member.publicKey, { ts: t0 + 1 });
  await xf.addMember(gid, gone.publicKey, { ts: t0 + 2 });
  await xf.makeAdmin(gid, member.publicKey, { ts: t0 + 3 });
  await xf.removeMember(gid, gone.publicKey, { ts: t0 + 4 });
  const byMember = new XfClient(url, { key: member });
  const events = [];
  for (let i = 0; i < n; i++) {
    const c = i % 2 ? byMember : xf;
    events.push(await c.sign(gid, { kind: 16 + (i % 3), ts: t0 + 10 + i, payload: textPayload(`event ${i}`) }));
  }
  const rs = await xf.publish(gid, events);
  assertEquals(rs.filter((r) => r.status !== "stored"), []);
  return { gid, owner, member };
}

Deno.test("runExport() and runImport() move a closed group of 2,000 events to a fresh node: same root and count", async () => {
  const a = await served(), b = await served();
  const dir = await Deno.makeTempDir({ prefix: "xf-export-" });
  try {
    const { gid, member } = await closedGroup(a.url, 2000);
    const file = `${dir}/group.xfx`;
    const lines: string[] = [];
    // A member's key (not the owner's) exports and imports it.
    const ex = await runExport({ node: a.url, key: member, group: gid, out: file, print: (l) => lines.push(l) });
    const onA = await new XfClient(a.url, { key: member }).merkle(gid);
    assertEquals(onA.count, 2005);
    assertEquals([ex.events, ex.count, ex.root], [2005, 2005, onA.root]);
    assertEquals(JSON.parse(lines[0]!), ex);
    assertEquals(ex.bytes, (await Deno.stat(file)).size);

    // The file: header, manifest, the four membership events, then the rest in (ts, id) order.
    const items = await Array.fromAsync(splitCborSeq([await Deno.readFile(file)]));
    assertEquals(items.length, 2006);
    assertEquals(items.slice(1, 6).map((b) => peekEvent(b)?.kind), [0, 1, 1, 1, 1]);

    const im = await runImport({ node: b.url, key: member, file, print: (l) => lines.push(l) });
    const onB = await new XfClient(b.url, { key: member }).merkle(gid);
    assertEquals(onB, onA);
    assertEquals(im, {
      group: gid,
      file,
      events: 2005,
      stored: 2005,
      duplicate: 0,
      rejected: {},
      count: onA.count,
      root: onA.root,
      expected: { count: onA.count, root: onA.root },
      verified: true,
    });
    assertEquals(JSON.parse(lines[1]!), im);
    // Again: every event is a duplicate, and the node still agrees with the header.
    const again = await runImport({ node: b.url, key: member, file, print: quiet });
    assertEquals([again.stored, again.duplicate, again.verified], [0, 2005, true]);
    // The closed group is still closed on B: no key, no group.
    assertEquals(await codeOf(new XfClient(b.url).merkle(gid)), { code: "UNKNOWN_GROUP", status: 404 });
  } finally {
    await Deno.remove(dir, { recursive: true });
    await a.done();
    await b.done();
  }
});

Deno.test("A closed group's export answers a non-member exactly as an unknown group does", async () => {
  const a = await served();
  const dir = await Deno.makeTempDir({ prefix: "xf-export-" });
  try {
    const { gid } = await closedGroup(a.url, 3);
    const unknown = "ab".repeat(32);
    const raw = async (g: string, headers: Record<string, string> = {}) => {
      const res = await fetch(`${a.url}/v1/groups/${g}/export`, { headers });
      const body = await res.json();
      return { status: res.status, error: body.error, message: body.message.replace(g, "GID") };
    };
    assertEquals(await raw(gid), await raw(unknown));
    assertEquals((await raw(gid)).status, 404);
    // A stranger with a valid token: still 404 UNKNOWN_GROUP, and no file is left behind.
    const stranger = await generateKeyPair();
    const out = `${dir}/x.xfx`;
    const tried = await codeOf(runExport({ node: a.url, key: stranger, group: gid, out, print: quiet }));
    assertEquals(tried, { code: "UNKNOWN_GROUP", status: 404 });
    assertEquals(
      await codeOf(runExport({ node: a.url, key: stranger, group: unknown, out, print: quiet })),
      tried,
    );
    assertEquals([...Deno.readDirSync(dir)], []);
    assertEquals((await raw("zz")).error, "BAD_GROUP_ID");
  } finally {
    await Deno.remove(dir, { recursive: true });
    await a.done();
  }
});

Deno.test("runImport() refuses a tampered event, counts it, and reports the root as not verified", async () => {
  const a = await served(), b = await served();
  const dir = await Deno.makeTempDir({ prefix: "xf-export-" });
  try {
    const { gid, owner } = await closedGroup(a.url, 40);
    const file = `${dir}/group.xfx`;
    await runExport({ node: a.url, key: owner, group: gid, out: file, print: quiet });
    const bytes = await Deno.readFile(file);
    const items = await Array.fromAsync(splitCborSeq([bytes]));
    // One byte of the 20th app event's payload text ("event 1…" → "evfnt 1…"): still well-formed CBOR.
    let at = 0;
    for (const it of items.slice(0, 25)) at += it.length;
    const text = new TextEncoder().encode("event ");
    const victim = items[25]!;
    const off = victim.findIndex((_, i) => text.every((c, j) => victim[i + j] === c));
    assert(off > 0);
    bytes[at + off + 2]! ^= 3;
    await Deno.writeFile(file, bytes);
    const im = await runImport({ node: b.url, key: owner, file, print: quiet });
    assertEquals([im.events, im.stored, im.duplicate], [45, 44, 0]);
    assertEquals(im.rejected, { BAD_SIGNATURE: 1 });
    assertEquals([im.verified, im.count, im.expected?.count], [false, 44, 45]);

    // A file cut inside an event fails as a whole, after importing what came before it.
    await Deno.writeFile(file, bytes.subarray(0, bytes.length - 5));
    const cut = await codeOf(runImport({ node: b.url, key: owner, file, print: quiet }));
    assertEquals(cut.code, "BAD_RESPONSE");
  } finally {
    await Deno.remove(dir, { recursive: true });
    await a.done();
    await b.done();
  }
});

Deno.test("GET /v1/groups/:gid/export reads the index a page at a time, as the caller pulls", async () => {
  const t = await tempNode({ limits: { export_page_events_max: 16 } });
  try {
    const owner = await generateKeyPair();
    const { gid, manifest } = await createGroup(owner, { name: "paged", policy: 0 });
    const t0 = Date.now() - 100_000;
    const events = [manifest];
    for (let i = 0; i < 300; i++) {
      events.push(await signEvent(owner, { group: gid, ts: t0 + i, kind: 16, tags: [], payload: new Uint8Array([i]) }));
    }
    await t.node.publish([manifest]);
    await t.node.publish(events.slice(1));
    const pages: number[] = [];
    const query = t.node.query.bind(t.node);
    t.node.query = (q) => {
      pages.push(q.limit);
      return query(q);
    };
    const res = await createApp(t.node).request(`/v1/groups/${toHex(gid)}/export`);
    assertEquals(res.headers.get("content-type"), "application/cbor-seq");
    const reader = res.body!.getReader();
    await reader.read(); // header
    await reader.read(); // manifest
    const before = pages.length;
    assert(before <= 3, `${before} pages read before the caller asked for them`);
    assert(pages.every((l) => l === 16));
    const rest: Uint8Array[] = [];
    for (let r = await reader.read(); !r.done; r = await reader.read()) rest.push(r.value);
    // 300 events in pages of 16, read only as they were taken.
    assert(pages.length >= 19, `${pages.length} pages`);
    const items = await Array.fromAsync(splitCborSeq(rest));
    assertEquals(items.length, 300);
  } finally {
    await t.done();
  }
});

Deno.test("net/cli_export.ts runs as a program: export with --key, import, one JSON line each", async () => {
  const a = await served(), b = await served();
  const dir = await Deno.makeTempDir({ prefix: "xf-export-" });
  try {
    const { gid, member } = await closedGroup(a.url, 10);
    const keyFile = `${dir}/member.key`;
    await Deno.writeTextFile(keyFile, toHex(member.seed) + "\n");
    const run = async (...args: string[]) => {
      const cmd = new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", new URL("../net/cli_export.ts", import.meta.url).pathname, ...args],
        stdout: "piped",
        stderr: "piped",
      });
      const out = await cmd.output();
      return { code: out.code, out: new TextDecoder().decode(out.stdout), err: new TextDecoder().decode(out.stderr) };
    };
    const file = `${dir}/g.xfx`;
    const ex = await run("export", "--group", gid, "--out", file, "--node", a.url, "--key", keyFile);
    assertEquals(ex.code, 0, ex.err);
    assertEquals(JSON.parse(ex.out).events, 15);
    const im = await run("import", file, "--node", b.url, "--key", keyFile);
    assertEquals(im.code, 0, im.err);
    const s = JSON.parse(im.out);
    assertEquals([s.stored, s.verified], [15, true]);
    const noKey = await run("export", "--group", gid, "--out", file, "--node", a.url);
    assertEquals([noKey.code, JSON.parse(noKey.err).error], [1, "UNKNOWN_GROUP"]);
    assertEquals((await run("export", "--node", a.url)).code, 2);
  } finally {
    await Deno.remove(dir, { recursive: true });
    await a.done();
    await b.done();
  }
});

Deno.test("XfClient.exportGroup() refuses an event of another group in the export", async () => {
  const a = await served();
  try {
    const { gid, owner } = await closedGroup(a.url, 2);
    const other = await signEvent(owner, {
      group: new Uint8Array(32),
      ts: Date.now(),
      kind: 16,
      tags: [],
      payload: new Uint8Array(),
    });
    // A node that slips a foreign event into the sequence.
    const lying: typeof fetch = async (input, init) => {
      const res = await fetch(input, init);
      if (!String(input).endsWith("/export") || !res.ok) return res;
      const body = new Uint8Array(await res.arrayBuffer());
      const joined = new Uint8Array(body.length + other.bytes.length);
      joined.set(body);
      joined.set(other.bytes, body.length);
      return new Response(joined, { status: 200, headers: res.headers });
    };
    const xf = new XfClient(a.url, { key: owner, fetch: lying });
    const e = await assertRejects(() => Array.fromAsync(xf.exportGroup(gid)), XfClientError);
    assertEquals((e as XfClientError).code, "BAD_RESPONSE");
  } finally {
    await a.done();
  }
});
