// Shared fixtures for tests: temp nodes, keys, groups and signed events.
import { openNode, type XfNode } from "../node.ts";
import { channelPair } from "../net/peers.ts";
import { SyncSession } from "../net/sync.ts";
import type { PipelineOptions } from "../actors/root.ts";
import { generateKeyPair, type KeyPair } from "../storage/ed25519.ts";
import { createGroup, signEvent, type StoredEvent } from "../storage/event.ts";
import { XfError } from "../core/errors.ts";
import { ACTION_ADD, encodeMembership } from "../storage/membership.ts";
import { TextLineStream } from "@std/streams";

/** A node on a fresh temp dir; `done()` closes it and removes the dir. */
export async function tempNode(
  opts: Partial<PipelineOptions> = {},
): Promise<{ node: XfNode; dir: string; done(): Promise<void> }> {
  const dir = opts.dataDir ?? await Deno.makeTempDir({ prefix: "xf-test-" });
  const node = await openNode({ workers: false, ...opts, dataDir: dir });
  return {
    node,
    dir,
    async done() {
      await node.close();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
  };
}

/** A group with its owner and manifest. */
export interface TestGroup {
  owner: KeyPair;
  gid: Uint8Array;
  manifest: StoredEvent;
}

export async function testGroup(name = "test", policy = 0): Promise<TestGroup> {
  const owner = await generateKeyPair();
  const { gid, manifest } = await createGroup(owner, { name, policy });
  return { owner, gid, manifest };
}

/** `n` signed app events in a group, with distinct timestamps from `ts0`. */
export async function makeEvents(
  g: TestGroup,
  n: number,
  ts0 = Date.now() - 1_000_000,
  author?: KeyPair,
): Promise<StoredEvent[]> {
  const key = author ?? g.owner;
  const out: StoredEvent[] = [];
  for (let i = 0; i < n; i++) {
    out.push(
      await signEvent(key, {
        group: g.gid,
        ts: ts0 + i,
        kind: 16 + (i % 3),
        tags: [["n", String(i)]],
        payload: new TextEncoder().encode(`event ${i}`),
      }),
    );
  }
  return out;
}

/** Wait until `cond` holds, polling; throws after `ms`. */
export async function until(cond: () => Promise<boolean> | boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await cond()) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error("condition not met in time");
}

/** The stable code of the XfError `fn` throws (fails if it throws nothing or something else). */
export function code(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    if (e instanceof XfError) return e.code;
    throw e;
  }
  throw new Error("expected an XfError");
}

/** A closed group on `node` with one member besides its owner (added 100 s ago). */
export async function closedGroup(node: XfNode) {
  const owner = await generateKeyPair();
  const member = await generateKeyPair();
  const { gid, manifest } = await createGroup(owner, { name: "secret", policy: 1 });
  const add = await signEvent(owner, {
    group: gid,
    ts: Date.now() - 100_000,
    kind: 1,
    tags: [],
    payload: encodeMembership({ action: ACTION_ADD, member: member.publicKey }),
  });
  const res = await node.publish([manifest, add]);
  if (res.some((r) => r.status !== "stored")) throw new Error(`closedGroup: not stored: ${JSON.stringify(res)}`);
  return { owner, member, gid, manifest, add };
}

/**
 * `xf serve` on `dir` in a child process (port 0), for tests that kill it with SIGKILL. Resolves once it prints
 * its address; its stdout keeps being drained so it never blocks on a full pipe.
 */
export async function spawnNode(dir: string, args: string[] = []): Promise<{ child: Deno.ChildProcess; url: string }> {
  const cmd = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      new URL("../net/main.ts", import.meta.url).pathname,
      "serve",
      "--data",
      dir,
      "--port",
      "0",
      ...args,
    ],
    stdout: "piped",
    stderr: "inherit",
  });
  const child = cmd.spawn();
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).pipeThrough(
    new TextLineStream() as unknown as TransformStream<string, string>,
  );
  const reader = lines.getReader();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const first = await Promise.race([
    reader.read(),
    new Promise<never>((_, rej) => timer = setTimeout(() => rej(new Error("child did not start in 30 s")), 30_000)),
  ]).finally(() => clearTimeout(timer));
  const m = /^listening on (http:\/\/\S+)$/.exec(first.value ?? "");
  if (!m) {
    child.kill("SIGKILL");
    throw new Error(`unexpected first line: ${first.value}`);
  }
  (async () => {
    try {
      while (!(await reader.read()).done) { /* drain */ }
    } catch { /* killed */ }
  })();
  return { child, url: m[1]! };
}

/** Every event of a group a node returns to queries, page by page (the bytes, in query order). */
export async function queryAll(node: XfNode, gid: string): Promise<Uint8Array[]> {
  const out: Uint8Array[] = [];
  let cursor: string | null = null;
  do {
    const page: { events: Uint8Array[]; cursor: string | null } | null = await node.query({
      gid,
      limit: 1000,
      ...(cursor ? { cursor } : {}),
    });
    out.push(...page!.events);
    cursor = page!.cursor;
  } while (cursor);
  return out;
}

/** A sync session pair over an in-process channel: `a` dials (client), `b` answers (server). */
export function syncLink(a: XfNode, b: XfNode): { client: SyncSession; server: SyncSession } {
  const [ca, cb] = channelPair();
  const server = new SyncSession(b.sync, cb, "server", "in-process");
  const client = new SyncSession(a.sync, ca, "client", "in-process");
  return { client, server };
}
