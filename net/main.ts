/**
 * The `xf` program: `serve` runs a node (what `deno task start` does); the
 * other commands are a client for people, printing JSON:
 *
 * ```
 * xf serve [--data DIR] [--host H] [--port N] [--key FILE] [--group GID]... [--peer URL]... [--operator-token T]
 *          [--cors-origin ORIGIN]... [--limits JSON]
 * xf keygen [--key FILE]
 * xf group create --name NAME [--closed] [--key FILE] [--node URL]
 * xf group add|remove|admin|unadmin --group GID --member KEY [--key FILE] [--node URL]
 * xf groups [--key FILE] [--node URL]          (open groups, and closed ones --key is a member of)
 * xf members --group GID [--key FILE] [--node URL]
 * xf tail --group GID [--since MS] [--cursor C] [--kind N]... [--transport sse|ws] [--key FILE] [--node URL]
 * xf publish --group GID [--kind N] [--tag k=v]... (--text S | --file F) [--key FILE] [--node URL]
 * xf sync --peer ws://HOST:PORT [--group GID]... [--node URL] [--operator-token T]   (one-shot sync of the node with a peer)
 * xf fsck [--data DIR] [--group GID]...   (node stopped: rebuild each group's Merkle tree and compare every page)
 * xf get ID [--node URL]
 * xf query --group GID [--since MS] [--until MS] [--kind N] [--author HEX] [--limit N] [--cursor C] [--node URL]
 * ```
 *
 * Every flag of `serve` is also an environment variable `XF_*`
 * (`XF_DATA`, `XF_HOST`, `XF_PORT`, `XF_KEY`, `XF_GROUP`, `XF_PEER`, comma
 * separated for the repeatable ones; `XF_OPERATOR_TOKEN`). Without an
 * operator token, operator routes (`/v1/sync/once`) answer loopback only.
 *
 * @module
 */

import { openNode } from "../actors/node.ts";
import { serve } from "./server.ts";
import { fromHex, generateKeyPair, type KeyPair, keyPairFromSeed, toHex } from "../storage/ed25519.ts";
import type { Tag } from "../storage/event.ts";
import { type ClientEvent, XfClient, XfClientError } from "../client/mod.ts";
import { configureLogging, loggingOptions } from "../actors/log.ts";
import { startNodeLogging } from "../actors/node_log.ts";

/** Parsed command-line flags: repeatable flags collect into arrays. */
export interface Flags {
  _: string[];
  [k: string]: string[] | string | boolean | undefined;
}

const REPEATABLE = new Set(["group", "peer", "tag", "kind", "author", "cors-origin"]);
const BOOLEAN = new Set(["closed", "help"]);

/** Parse `--flag value`, `--flag=value` and bare words. */
export function parseFlags(args: string[]): Flags {
  const out: Flags = { _: [] };
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (!a.startsWith("--")) {
      out._.push(a);
      continue;
    }
    let [name, value] = a.slice(2).split(/=(.*)/s, 2) as [string, string | undefined];
    if (BOOLEAN.has(name)) {
      out[name] = true;
      continue;
    }
    if (value === undefined) {
      value = args[++i];
      if (value === undefined) throw new Error(`Flag --${name} needs a value`);
    }
    if (REPEATABLE.has(name)) ((out[name] ??= []) as string[]).push(value);
    else out[name] = value;
  }
  return out;
}

function flag(f: Flags, name: string, env?: string): string | undefined {
  const v = f[name];
  if (typeof v === "string") return v;
  return env ? Deno.env.get(env) ?? undefined : undefined;
}

function list(f: Flags, name: string, env: string): string[] {
  const v = f[name];
  if (Array.isArray(v)) return v;
  const e = Deno.env.get(env);
  return e ? e.split(",").map((s) => s.trim()).filter(Boolean) : [];
}

/** Load the key pair in `path`, creating it (mode 0600) on first use. */
export async function loadOrCreateKey(path: string): Promise<KeyPair> {
  try {
    const hex = (await Deno.readTextFile(path)).trim();
    const seed = fromHex(hex);
    if (!seed || seed.length !== 32) throw new Error(`Key file "${path}" does not hold a 64-hex-digit seed`);
    return await keyPairFromSeed(seed);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
    const kp = await generateKeyPair();
    const dir = path.includes("/") ? path.slice(0, path.lastIndexOf("/")) : ".";
    await Deno.mkdir(dir, { recursive: true });
    await Deno.writeTextFile(path, toHex(kp.seed) + "\n", { mode: 0o600 });
    return kp;
  }
}

async function runServe(f: Flags) {
  const dataDir = flag(f, "data", "XF_DATA") ?? "./data";
  const host = flag(f, "host", "XF_HOST") ?? "127.0.0.1";
  const port = Number(flag(f, "port", "XF_PORT") ?? "7878");
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`Cannot use port "${port}"`);
  const keyFile = flag(f, "key", "XF_KEY") ?? `${dataDir}/node.key`;
  const key = await loadOrCreateKey(keyFile);
  const groups = list(f, "group", "XF_GROUP");
  const peers = list(f, "peer", "XF_PEER");
  let node: Awaited<ReturnType<typeof openNode>> | null = null;
  // Limit overrides as JSON, e.g. XF_LIMITS='{"sync_stall_ms":5000}' (names as in the README's limits table).
  const limitsJson = flag(f, "limits", "XF_LIMITS");
  let limits: Record<string, number> = {};
  try {
    limits = limitsJson ? JSON.parse(limitsJson) : {};
  } catch {
    throw new Error(`Cannot read limits "${limitsJson}": not JSON like {"sync_stall_ms":5000}`);
  }
  // Logs on stderr: --log-format text|json, --log-level debug|info|warning|error (XF_LOG_FORMAT, XF_LOG_LEVEL).
  await configureLogging(loggingOptions(flag(f, "log-format", "XF_LOG_FORMAT"), flag(f, "log-level", "XF_LOG_LEVEL")));
  node = await openNode({
    dataDir,
    key,
    groups,
    limits,
    onFatal: (e) => {
      console.error(`fatal: ${e.message}`);
      Deno.exit(1);
    },
  });
  const operatorToken = flag(f, "operator-token", "XF_OPERATOR_TOKEN");
  const corsOrigins = list(f, "cors-origin", "XF_CORS_ORIGIN");
  const served = await serve(node, { host, port, corsOrigins, ...(operatorToken ? { operatorToken } : {}) });
  console.log(`listening on ${served.url}`);
  const stopLogs = startNodeLogging(node, { dataDir, url: served.url });
  console.log(
    JSON.stringify({ node: toHex(key.publicKey), data: dataDir, groups, peers, recovery: node.pipeline.recovery }),
  );
  // Stay connected to every bootstrap peer: sync each group both serve, then live events; reconnect on drops.
  for (const p of peers) node.sync.dial(p);
  // Find each group's other members through its DHT, from the --peer list, and keep syncing with them.
  node.publicUrl = served.url.replace(/^http/, "ws");
  for (const g of groups) node.dht.join(g, peers);
  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    console.log(`${signal}: stopping`);
    await served.shutdown();
    await node!.close();
    stopLogs();
    console.log("stopped");
    Deno.exit(0);
  };
  Deno.addSignalListener("SIGINT", () => stop("SIGINT"));
  Deno.addSignalListener("SIGTERM", () => stop("SIGTERM"));
}

function nodeUrl(f: Flags): string {
  return (flag(f, "node", "XF_NODE") ?? "http://127.0.0.1:7878").replace(/\/$/, "");
}

/** A client of the node at `--node`, signing (and fetching tokens for closed groups) with `key`, if given. */
function clientFor(f: Flags, key?: KeyPair): XfClient {
  return new XfClient(nodeUrl(f), key ? { key } : {});
}

/** The `--group` flag as 64 hex digits; throws a usage error naming the command. */
function groupFlag(f: Flags, cmd: string): string {
  const gid = list(f, "group", "XF_GROUP")[0] ?? "";
  if (!/^[0-9a-f]{64}$/.test(gid)) throw new UsageError(`${cmd} needs --group GID (64 hex digits)`);
  return gid;
}

/** An event as a person reads it: text payloads as text, times as ISO dates. */
function show(e: ClientEvent) {
  const text = (() => {
    try {
      return new TextDecoder("utf-8", { fatal: true }).decode(e.payload);
    } catch {
      return null;
    }
  })();
  return {
    id: e.id,
    author: e.author,
    ts: e.ts,
    time: new Date(e.ts).toISOString(),
    kind: e.kind,
    tags: e.tags,
    ...(text !== null ? { text } : { payload: toHex(e.payload) }),
  };
}

/** A mistake in how the command was called (exit code 2). */
class UsageError extends Error {}

const MEMBERSHIP_VERBS = {
  add: "addMember",
  remove: "removeMember",
  admin: "makeAdmin",
  unadmin: "revokeAdmin",
} as const;

async function main(args: string[]) {
  const f = parseFlags(args);
  const [cmd, sub] = f._;
  const keyFile = flag(f, "key", "XF_KEY") ?? "./data/node.key";
  const signer = () => loadOrCreateKey(keyFile);
  /** The key for reads: only when --key (or XF_KEY) names one, so reads of open groups need none. */
  const reader = async () => (flag(f, "key", "XF_KEY") ? await signer() : undefined);
  switch (cmd) {
    case "serve":
      return await runServe(f);
    case "keygen": {
      const kp = await loadOrCreateKey(keyFile);
      return console.log(JSON.stringify({ key: keyFile, publicKey: toHex(kp.publicKey) }));
    }
    case "group": {
      if (sub === "create") {
        const name = flag(f, "name") ?? "unnamed";
        const xf = clientFor(f, await signer());
        const g = await xf.createGroup({ name, policy: f.closed ? "closed" : "open" });
        return console.log(JSON.stringify({ group: g.gid, manifest: g.manifest.id, result: g.result }));
      }
      if (sub && sub in MEMBERSHIP_VERBS) {
        const gid = groupFlag(f, `group ${sub}`);
        const member = flag(f, "member") ?? "";
        if (!/^[0-9a-f]{64}$/.test(member)) throw new UsageError(`group ${sub} needs --member KEY (64 hex digits)`);
        const xf = clientFor(f, await signer());
        const verb = MEMBERSHIP_VERBS[sub as keyof typeof MEMBERSHIP_VERBS];
        const r = await xf[verb](gid, member);
        return console.log(JSON.stringify({ group: gid, member, action: sub, id: r.event.id, result: r.result }));
      }
      throw new UsageError(`Unknown command "group ${sub ?? ""}": try group create|add|remove|admin|unadmin`);
    }
    case "groups":
      return console.log(JSON.stringify({ groups: await clientFor(f, await reader()).groups() }));
    case "members": {
      const gid = groupFlag(f, "members");
      return console.log(JSON.stringify(await clientFor(f, await reader()).members(gid)));
    }
    case "publish": {
      const gid = groupFlag(f, "publish");
      const kp = await signer();
      const text = flag(f, "text");
      const file = flag(f, "file");
      const payload = text !== undefined
        ? new TextEncoder().encode(text)
        : file
        ? await Deno.readFile(file)
        : new Uint8Array();
      const tags = ((f.tag as string[] | undefined) ?? []).map((t) => t.split(/=(.*)/s, 2) as Tag);
      const kindText = (f.kind as string[] | undefined)?.[0] ?? "16";
      if (!/^\d{1,9}$/.test(kindText)) {
        throw new UsageError(`Cannot use --kind "${kindText}": not a non-negative integer`);
      }
      const xf = clientFor(f, kp);
      const ev = await xf.sign(gid, { kind: Number(kindText), tags, payload });
      const r = await xf.publish(gid, ev);
      console.log(JSON.stringify(r));
      if (r.status === "rejected") Deno.exit(1);
      return;
    }
    case "tail": {
      // Follows the group's stream: backfill from --since (or --cursor), then live; one JSON line per event.
      const gid = groupFlag(f, "tail");
      const xf = clientFor(f, await reader());
      const since = flag(f, "since");
      const cursor = flag(f, "cursor");
      const transport = flag(f, "transport") === "ws" ? "ws" : "sse";
      const s = xf.subscribe(gid, {
        transport,
        ...(since !== undefined ? { since: Number(since) } : {}),
        ...(cursor ? { cursor } : {}),
        kind: ((f.kind as string[] | undefined) ?? []).map(Number),
        author: (f.author as string[] | undefined) ?? [],
        onEvent: (e) => console.log(JSON.stringify({ ...show(e), cursor: e.cursor })),
        onReady: (c) => console.error(JSON.stringify({ ready: true, cursor: c })),
        onError: (e) => console.error(JSON.stringify({ error: e.code, message: e.message })),
      });
      Deno.addSignalListener("SIGINT", () => s.close());
      const err = await s.closed;
      if (err) throw err;
      return;
    }
    case "sync": {
      const peer = list(f, "peer", "XF_PEER")[0];
      if (!peer) throw new Error("sync needs --peer ws://host:port");
      const groups = list(f, "group", "XF_GROUP");
      const operatorToken = flag(f, "operator-token", "XF_OPERATOR_TOKEN");
      const r = await fetch(`${nodeUrl(f)}/v1/sync/once`, {
        method: "POST",
        body: JSON.stringify({ peer, ...(groups.length ? { groups } : {}) }),
        headers: operatorToken ? { authorization: `Bearer ${operatorToken}` } : {},
      });
      return console.log(JSON.stringify(await r.json()));
    }
    case "fsck": {
      // Offline check (the node must be stopped): rebuild each group's tree from its events, compare every page.
      const dataDir = flag(f, "data", "XF_DATA") ?? "./data";
      const node = await openNode({ dataDir, workers: false });
      let bad = 0;
      try {
        const groups = list(f, "group", "XF_GROUP");
        const all = groups.length ? groups : await node.pipeline.index<string[]>({ type: "index.listGroups" });
        for (const gid of all) {
          const r = await node.fsck(gid);
          if (!r?.ok) bad++;
          console.log(JSON.stringify({ group: gid, ...(r ?? { ok: false, firstDifference: "unknown group" }) }));
        }
      } finally {
        await node.close();
      }
      if (bad) Deno.exit(1);
      return;
    }
    case "get": {
      if (!sub) throw new UsageError("get needs an event id");
      return console.log(JSON.stringify(show(await clientFor(f, await reader()).event(sub))));
    }
    case "query": {
      const gid = groupFlag(f, "query");
      const num = (k: string) => {
        const v = flag(f, k);
        if (v !== undefined && !/^\d{1,16}$/.test(v)) throw new UsageError(`Cannot use --${k} "${v}": not a number`);
        return v === undefined ? undefined : Number(v);
      };
      const since = num("since"), until = num("until"), limit = num("limit");
      const cursor = flag(f, "cursor");
      const page = await clientFor(f, await reader()).queryPage(gid, {
        ...(since !== undefined ? { since } : {}),
        ...(until !== undefined ? { until } : {}),
        ...(limit !== undefined ? { limit } : {}),
        ...(cursor ? { cursor } : {}),
        kind: ((f.kind as string[] | undefined) ?? []).map(Number),
        author: (f.author as string[] | undefined) ?? [],
      });
      return console.log(JSON.stringify({ events: page.events.map(show), cursor: page.cursor }));
    }
    default:
      console.error(
        "usage: xf serve|keygen|group create|group add|group remove|group admin|group unadmin|groups|members|" +
          "publish|tail|sync|fsck|get|query  (see net/main.ts)",
      );
      Deno.exit(cmd ? 2 : 0);
  }
}

if (import.meta.main) {
  main(Deno.args).catch((e) => {
    if (e instanceof XfClientError) {
      // The node (or the network) said no: its stable code, for scripts.
      console.error(JSON.stringify({ error: e.code, status: e.status, message: e.message }));
      Deno.exit(1);
    }
    console.error(`error: ${(e as Error).message}`);
    Deno.exit(e instanceof UsageError ? 2 : 1);
  });
}
