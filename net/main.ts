/**
 * The `xf` program: `serve` runs a node (what `deno task start` does); the
 * other commands are a client for people, printing JSON. The commands, their
 * flags, help texts and the parser are in `cli.ts`; this file runs them.
 * `xf --help` lists the commands, `xf COMMAND --help` shows one.
 *
 * Exit codes: 0 done; 1 the node answered an error (`{"error": CODE, …}`
 * on stderr), or the data directory or port could not be used; 2 a usage
 * error (unknown flag, missing value, bad number).
 *
 * Every flag of `serve` is also an environment variable `XF_*`
 * (`XF_DATA`, `XF_HOST`, `XF_PORT`, `XF_PUBLIC_URL`, `XF_KEY`, `XF_GROUP`,
 * `XF_PEER`, comma separated for the repeatable ones; `XF_OPERATOR_TOKEN`).
 * Without an operator token, operator routes (`/v1/sync/once`) answer
 * loopback only.
 *
 * @module
 */

import { fromHex, toHex } from "../core/bytes.ts";
import { openNode } from "../node.ts";
import { serve } from "./server.ts";
import { generateKeyPair, type KeyPair, keyPairFromSeed } from "../storage/ed25519.ts";
import type { Tag } from "../storage/event.ts";
import { type ClientEvent, XfClient, XfClientError } from "../client/mod.ts";
import { configureLogging, loggingOptions } from "../actors/log.ts";
import { runExport, runImport } from "./cli_export.ts";
import { startNodeLogging } from "../actors/node_log.ts";
import { XfError } from "../core/errors.ts";
import { VERSION } from "../version.ts";
import { commandHelp, type Flags, groupHelp, mainHelp, parseCommandLine, UsageError } from "./cli.ts";

export { parseCommandLine, UsageError };
export type { Flags };

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

/** Read the key pair in `path`. */
async function readKey(path: string): Promise<KeyPair> {
  const hex = (await Deno.readTextFile(path)).trim();
  const seed = fromHex(hex);
  if (!seed || seed.length !== 32) throw new Error(`Key file "${path}" does not hold a 64-hex-digit seed`);
  return await keyPairFromSeed(seed);
}

/** Load the key pair in `path`, creating it (mode 0600) on first use. */
export async function loadOrCreateKey(path: string): Promise<KeyPair> {
  try {
    return await readKey(path);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
    const kp = await generateKeyPair();
    const dir = path.includes("/") ? path.slice(0, path.lastIndexOf("/")) : ".";
    await Deno.mkdir(dir, { recursive: true });
    await Deno.writeTextFile(path, toHex(kp.seed) + "\n", { mode: 0o600 });
    return kp;
  }
}

/** The key named by `--key` (or `XF_KEY`): it must exist; only `keygen` and `serve` create one. */
async function existingKey(f: Flags, cmd: string): Promise<KeyPair> {
  const path = flag(f, "key", "XF_KEY");
  if (!path) throw new UsageError(`${cmd} signs with your key: pass --key FILE (xf keygen --key FILE makes one)`, cmd);
  try {
    return await readKey(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new UsageError(`Cannot read key file "${path}": not found (xf keygen --key ${path} makes one)`, cmd);
    }
    throw e;
  }
}

/** Hosts that listen everywhere and so are no address a peer can dial. */
const UNSPECIFIED_HOSTS = new Set(["0.0.0.0", "::", "[::]"]);

/** Fail with the port's number, before anything is created, when `host:port` is taken. */
function checkPortFree(host: string, port: number) {
  if (port === 0) return;
  try {
    Deno.listen({ hostname: host, port }).close();
  } catch (e) {
    if (e instanceof Deno.errors.AddrInUse) {
      throw new Error(`Cannot listen on ${host}:${port}: port ${port} is in use (pick another with --port)`);
    }
    throw new Error(`Cannot listen on ${host}:${port}: ${(e as Error).message}`);
  }
}

async function runServe(f: Flags) {
  const dataDir = flag(f, "data", "XF_DATA") ?? "./data";
  const host = flag(f, "host", "XF_HOST") ?? "127.0.0.1";
  const portText = flag(f, "port", "XF_PORT") ?? "7878";
  const port = Number(portText);
  if (!/^\d{1,5}$/.test(portText) || port > 65535) {
    throw new UsageError(`Cannot use port "${portText}": not an integer from 0 to 65535`, "serve");
  }
  const publicUrl = flag(f, "public-url", "XF_PUBLIC_URL");
  if (publicUrl !== undefined && !/^wss?:\/\/[^/\s]+/.test(publicUrl)) {
    throw new UsageError(`Cannot use --public-url "${publicUrl}": not a ws:// or wss:// URL`, "serve");
  }
  // Limit overrides as JSON, e.g. XF_LIMITS='{"sync_stall_ms":5000}' (names as in the README's limits table).
  const limitsJson = flag(f, "limits", "XF_LIMITS");
  let limits: Record<string, number> = {};
  try {
    limits = limitsJson ? JSON.parse(limitsJson) : {};
  } catch {
    throw new UsageError(`Cannot read limits "${limitsJson}": not JSON like {"sync_stall_ms":5000}`, "serve");
  }
  // Logs on stderr: --log-format text|json, --log-level debug|info|warning|error (XF_LOG_FORMAT, XF_LOG_LEVEL).
  let logOptions: Parameters<typeof configureLogging>[0];
  try {
    logOptions = loggingOptions(flag(f, "log-format", "XF_LOG_FORMAT"), flag(f, "log-level", "XF_LOG_LEVEL"));
  } catch (e) {
    throw new UsageError((e as Error).message, "serve");
  }
  const niceFlag = flag(f, "index-nice", "XF_INDEX_NICE");
  if (niceFlag !== undefined && !/^(1?\d)$/.test(niceFlag)) {
    throw new UsageError(`Cannot use --index-nice "${niceFlag}": not an integer in 0..19`, "serve");
  }
  // Nothing is created (data directory, key) before we know the port is free.
  checkPortFree(host, port);
  await configureLogging(logOptions);
  const keyFile = flag(f, "key", "XF_KEY") ?? `${dataDir}/node.key`;
  const key = await loadOrCreateKey(keyFile);
  const groups = list(f, "group", "XF_GROUP");
  const peers = list(f, "peer", "XF_PEER");
  const node = await openNode({
    dataDir,
    key,
    groups,
    limits,
    ...(niceFlag === undefined ? {} : { nice: { index: Number(niceFlag) } }),
    onFatal: (e) => {
      console.error(`fatal: ${e.message}`);
      Deno.exit(1);
    },
  });
  const operatorToken = flag(f, "operator-token", "XF_OPERATOR_TOKEN");
  const corsOrigins = list(f, "cors-origin", "XF_CORS_ORIGIN");
  let served: Awaited<ReturnType<typeof serve>>;
  try {
    served = await serve(node, { host, port, corsOrigins, ...(operatorToken ? { operatorToken } : {}) });
  } catch (e) {
    await node.close();
    if (e instanceof Deno.errors.AddrInUse) throw new Error(`Cannot listen on ${host}:${port}: port ${port} is in use`);
    throw e;
  }
  // Signals are handled before anything is announced: a stop that comes at once is still clean.
  let stopping = false;
  let stopLogs = () => {};
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    console.log(`${signal}: stopping`);
    await served.shutdown();
    await node.close();
    stopLogs();
    console.log("stopped");
    Deno.exit(0);
  };
  Deno.addSignalListener("SIGINT", () => stop("SIGINT"));
  Deno.addSignalListener("SIGTERM", () => stop("SIGTERM"));
  console.log(`listening on ${served.url}`);
  stopLogs = startNodeLogging(node, { dataDir, url: served.url });
  // The address peers dial: --public-url, else the listening one unless it is 0.0.0.0 or ::.
  node.publicUrl = publicUrl ?? (UNSPECIFIED_HOSTS.has(host) ? "" : served.url.replace(/^http/, "ws"));
  if (!node.publicUrl) {
    console.error(
      `warning: announcing no address to peers: --host ${host} is not an address they can dial; ` +
        "pass --public-url ws://HOST:PORT (or XF_PUBLIC_URL)",
    );
  }
  console.log(
    JSON.stringify({
      node: toHex(key.publicKey),
      version: VERSION,
      data: dataDir,
      publicUrl: node.publicUrl || null,
      groups,
      peers,
      recovery: node.pipeline.recovery,
    }),
  );
  // Stay connected to every bootstrap peer: sync each group both serve, then live events; reconnect on drops.
  for (const p of peers) node.sync.dial(p);
  // Find each group's other members through its DHT, from the --peer list, and keep syncing with them.
  for (const g of groups) node.dht.join(g, peers);
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
  const g = f.group;
  const gid = (Array.isArray(g) ? g[0] : typeof g === "string" ? g : list(f, "group", "XF_GROUP")[0]) ?? "";
  if (!/^[0-9a-f]{64}$/.test(gid)) throw new UsageError(`${cmd} needs --group GID (64 hex digits)`, cmd);
  return gid;
}

/** Repeatable `--NAME N` flags as integers; a usage error names the bad one. */
function integers(f: Flags, name: string, cmd: string): number[] {
  const v = f[name];
  const all = Array.isArray(v) ? v : typeof v === "string" ? [v] : [];
  for (const s of all) {
    if (!/^\d{1,9}$/.test(s)) throw new UsageError(`Cannot use --${name} "${s}": not a non-negative integer`, cmd);
  }
  return all.map(Number);
}

/** One `--NAME MS` flag as a number, or undefined; a usage error names a bad one. */
function number(f: Flags, name: string, cmd: string): number | undefined {
  const v = flag(f, name);
  if (v !== undefined && !/^\d{1,16}$/.test(v)) throw new UsageError(`Cannot use --${name} "${v}": not a number`, cmd);
  return v === undefined ? undefined : Number(v);
}

/** A time flag given as ms since 1970 or as an ISO 8601 date (`2024-05-01`, `2024-05-01T12:00:00Z`). */
export function instant(f: Flags, name: string, cmd: string): number | undefined {
  const v = flag(f, name);
  if (v === undefined) return undefined;
  if (/^\d{1,16}$/.test(v)) return Number(v);
  const ms = /^\d{4}-\d{2}-\d{2}/.test(v) ? Date.parse(v) : NaN;
  if (!Number.isSafeInteger(ms) || ms < 0) {
    throw new UsageError(`Cannot use --${name} "${v}": not ms since 1970 or an ISO 8601 date`, cmd);
  }
  return ms;
}

/** An event as a person reads it: text payloads as text (hex with `raw`), times as ISO 8601 beside the ms. */
export function show(e: ClientEvent, raw = false): Record<string, unknown> {
  const text = raw ? null : (() => {
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

const MEMBERSHIP_VERBS = {
  add: "addMember",
  remove: "removeMember",
  admin: "makeAdmin",
  unadmin: "revokeAdmin",
} as const;

/** Run one command line; resolves when it is done (for `serve`, once the node listens). */
export async function main(args: string[]): Promise<void> {
  const cl = parseCommandLine(args);
  const f = cl.flags;
  if (cl.version) return console.log(VERSION);
  if (!cl.command) return console.log(f._[0] ? groupHelp(f._[0]) : mainHelp());
  if (cl.help) return console.log(commandHelp(cl.command));
  const cmd = cl.command.name;
  const raw = f.raw === true;
  /** The key for reads: only when --key (or XF_KEY) names one, so reads of open groups need none. */
  const reader = async () => (flag(f, "key", "XF_KEY") ? await existingKey(f, cmd) : undefined);
  switch (cmd) {
    case "serve":
      return await runServe(f);
    case "keygen": {
      const keyFile = flag(f, "key", "XF_KEY") ?? "./data/node.key";
      const kp = await loadOrCreateKey(keyFile);
      return console.log(JSON.stringify({ key: keyFile, publicKey: toHex(kp.publicKey) }));
    }
    case "group create": {
      const name = flag(f, "name") ?? "unnamed";
      const xf = clientFor(f, await existingKey(f, cmd));
      const g = await xf.createGroup({ name, policy: f.closed ? "closed" : "open" });
      return console.log(JSON.stringify({ group: g.gid, manifest: g.manifest.id, result: g.result }));
    }
    case "group add":
    case "group remove":
    case "group admin":
    case "group unadmin": {
      const verb = cmd.slice("group ".length) as keyof typeof MEMBERSHIP_VERBS;
      const gid = groupFlag(f, cmd);
      const member = flag(f, "member") ?? "";
      if (!/^[0-9a-f]{64}$/.test(member)) throw new UsageError(`${cmd} needs --member KEY (64 hex digits)`, cmd);
      const xf = clientFor(f, await existingKey(f, cmd));
      const r = await xf[MEMBERSHIP_VERBS[verb]](gid, member);
      return console.log(JSON.stringify({ group: gid, member, action: verb, id: r.event.id, result: r.result }));
    }
    case "groups":
      return console.log(JSON.stringify({ groups: await clientFor(f, await reader()).groups() }));
    case "members": {
      const gid = groupFlag(f, cmd);
      return console.log(JSON.stringify(await clientFor(f, await reader()).members(gid)));
    }
    case "publish": {
      const gid = groupFlag(f, cmd);
      const [kind = 16] = integers(f, "kind", cmd);
      const text = flag(f, "text");
      const file = flag(f, "file");
      if (text !== undefined && file !== undefined) {
        throw new UsageError("publish takes --text or --file, not both", cmd);
      }
      const tags = ((f.tag as string[] | undefined) ?? []).map((t) => {
        if (!t.includes("=")) throw new UsageError(`Cannot use --tag "${t}": expected k=v`, cmd);
        return t.split(/=(.*)/s, 2) as Tag;
      });
      const kp = await existingKey(f, cmd);
      const payload = text !== undefined
        ? new TextEncoder().encode(text)
        : file
        ? await Deno.readFile(file)
        : new Uint8Array();
      const xf = clientFor(f, kp);
      const ev = await xf.sign(gid, { kind, tags, payload });
      const r = await xf.publish(gid, ev);
      console.log(JSON.stringify(r));
      if (r.status === "rejected") Deno.exitCode = 1;
      return;
    }
    case "delete": {
      const gid = groupFlag(f, cmd);
      const ids = (f.id as string[] | undefined) ?? [];
      if (ids.length === 0) throw new UsageError("delete needs --id ID (repeatable): the events to delete", cmd);
      const bad = ids.find((id) => !/^[0-9a-f]{64}$/i.test(id));
      if (bad !== undefined) throw new UsageError(`Cannot delete event "${bad}": not 64 hex digits`, cmd);
      const { event, result } = await clientFor(f, await existingKey(f, cmd)).delete(gid, ids);
      return console.log(JSON.stringify({ ...result, tombstone: event.id, deleted: ids }));
    }
    case "tail": {
      // Follows the group's stream: backfill from --since (or --cursor), then live; one JSON line per event.
      const gid = groupFlag(f, cmd);
      const since = number(f, "since", cmd);
      const cursor = flag(f, "cursor");
      const transport = flag(f, "transport") ?? "sse";
      if (transport !== "sse" && transport !== "ws") {
        throw new UsageError(`Cannot use --transport "${transport}": expected sse or ws`, cmd);
      }
      const kind = integers(f, "kind", cmd);
      const xf = clientFor(f, await reader());
      const s = xf.subscribe(gid, {
        transport,
        ...(since !== undefined ? { since } : {}),
        ...(cursor ? { cursor } : {}),
        kind,
        author: (f.author as string[] | undefined) ?? [],
        onEvent: (e) => console.log(JSON.stringify({ ...show(e, raw), cursor: e.cursor })),
        onReady: (c) => console.error(JSON.stringify({ ready: true, cursor: c })),
        onError: (e) => console.error(JSON.stringify({ error: e.code, message: nodeMessage(e, nodeUrl(f)) })),
      });
      Deno.addSignalListener("SIGINT", () => s.close());
      const err = await s.closed;
      if (err) throw err;
      return;
    }
    case "sync": {
      const peer = flag(f, "peer", "XF_PEER")?.split(",")[0];
      if (!peer) throw new UsageError("sync needs --peer ws://HOST:PORT", cmd);
      const groups = list(f, "group", "XF_GROUP");
      const since = instant(f, "since", cmd), until = instant(f, "until", cmd);
      if (since !== undefined && until !== undefined && since >= until) {
        throw new UsageError(`Cannot sync --since ${since} --until ${until}: since must be before until`, cmd);
      }
      const operatorToken = flag(f, "operator-token", "XF_OPERATOR_TOKEN");
      const report = await clientFor(f).syncOnce(peer, {
        ...(groups.length ? { groups } : {}),
        ...(since !== undefined ? { since } : {}),
        ...(until !== undefined ? { until } : {}),
        ...(operatorToken ? { operatorToken } : {}),
      });
      return console.log(JSON.stringify(report));
    }
    case "fsck": {
      // Offline check (the node must be stopped): read every block of the store, rebuild each group's tree from
      // its time index and compare every page, read and hash every event the tree or the index names.
      const dataDir = flag(f, "data", "XF_DATA") ?? "./data";
      const st = await Deno.stat(dataDir).catch(() => null);
      if (!st?.isDirectory) throw new UsageError(`Cannot check "${dataDir}": no such data directory`, cmd);
      const node = await openNode({ dataDir, workers: false });
      let bad = 0;
      try {
        const scan = await node.scan();
        if (!scan.ok) bad++;
        console.log(JSON.stringify({ store: scan }));
        const deleted = await node.fsckDeleted();
        if (!deleted.ok) bad++;
        console.log(JSON.stringify({ deleted }));
        const groups = list(f, "group", "XF_GROUP");
        const all = groups.length ? groups : await node.pipeline.index<string[]>({ type: "index.listGroups" });
        for (const gid of all) {
          const r = await node.fsck(gid);
          if (!r?.ok) bad++;
          if (!r) {
            console.log(JSON.stringify({ group: gid, ok: false, firstDifference: "unknown group" }));
            continue;
          }
          const restorable = r.damaged.filter((d) => d.restorable).length;
          console.log(JSON.stringify({
            group: gid,
            ...r,
            ...(r.damagedCount
              ? {
                summary: `${r.damagedCount} events damaged or missing; ${restorable} restorable from peers (ids known)`,
              }
              : {}),
          }));
        }
      } finally {
        await node.close();
      }
      if (bad) Deno.exitCode = 1;
      return;
    }
    case "get": {
      const id = f._[0];
      if (!id) throw new UsageError("get needs an event id: xf get ID", cmd);
      return console.log(JSON.stringify(show(await clientFor(f, await reader()).event(id), raw)));
    }
    case "export": {
      const gid = groupFlag(f, cmd);
      const out = flag(f, "out");
      if (!out) throw new UsageError("export needs --out FILE", cmd);
      await runExport({ node: nodeUrl(f), key: await reader(), group: gid, out });
      return;
    }
    case "import": {
      const file = f._[0];
      if (!file) throw new UsageError("import needs a FILE written by xf export", cmd);
      const group = list(f, "group", "XF_GROUP")[0];
      const r = await runImport({ node: nodeUrl(f), key: await reader(), file, ...(group ? { group } : {}) });
      if (!r.verified || Object.keys(r.rejected).length) Deno.exit(1);
      return;
    }
    case "query": {
      const gid = groupFlag(f, cmd);
      const since = number(f, "since", cmd), until = number(f, "until", cmd), limit = number(f, "limit", cmd);
      const kind = integers(f, "kind", cmd);
      const cursor = flag(f, "cursor");
      const page = await clientFor(f, await reader()).queryPage(gid, {
        ...(since !== undefined ? { since } : {}),
        ...(until !== undefined ? { until } : {}),
        ...(limit !== undefined ? { limit } : {}),
        ...(cursor ? { cursor } : {}),
        kind,
        author: (f.author as string[] | undefined) ?? [],
      });
      return console.log(JSON.stringify({ events: page.events.map((e) => show(e, raw)), cursor: page.cursor }));
    }
    default:
      throw new Error(`Command "${cmd}" has no implementation`);
  }
}

/** A client error's message, saying which node could not be reached and why, in words. */
function nodeMessage(e: XfClientError, url: string): string {
  if (e.code !== "NETWORK") return e.message;
  const causes: string[] = [];
  for (let c: unknown = e; c instanceof Error; c = c.cause) causes.push(c.message, c.name);
  const all = causes.join(" ");
  const why = /refused/i.test(all)
    ? "connection refused"
    : /no answer in/i.test(all)
    ? (/no answer in \d+ ms/.exec(all)?.[0] ?? "no answer")
    : /dns|lookup|name or service/i.test(all)
    ? "host not found"
    : e.message.replace(/^Cannot reach \S+: /, "");
  return `Cannot reach the node at ${url}: ${why}`;
}

/** Print an error the way scripts read it and pick the exit code: 2 usage, 1 anything else. */
function fail(e: unknown, args: string[]): number {
  if (e instanceof UsageError) {
    console.error(`error: ${e.message}`);
    console.error(e.command ? `(xf ${e.command} --help shows its flags)` : "(xf --help lists the commands)");
    return 2;
  }
  if (e instanceof XfClientError) {
    // The node (or the network) said no: its stable code, for scripts.
    const url = nodeUrl(parseLoosely(args));
    console.error(JSON.stringify({ error: e.code, status: e.status, message: nodeMessage(e, url) }));
    return 1;
  }
  if (e instanceof XfError) {
    console.error(JSON.stringify({ error: e.code, message: e.message }));
    return 1;
  }
  console.error(`error: ${(e as Error).message}`);
  return 1;
}

/** The flags of a command line that already parsed once (for messages); empty if it does not. */
function parseLoosely(args: string[]): Flags {
  try {
    return parseCommandLine(args).flags;
  } catch {
    return { _: [] };
  }
}

if (import.meta.main) {
  main(Deno.args).catch((e) => Deno.exit(fail(e, Deno.args)));
}
