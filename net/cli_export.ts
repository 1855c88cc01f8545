/**
 * `xf export` and `xf import`: a group to a file and back, through any
 * node's HTTP routes (the file format is in `net/export.ts`):
 *
 * ```
 * xf export --group G --out FILE [--node URL] [--key FILE]
 * xf import FILE [--node URL] [--key FILE]
 * ```
 *
 * `export` writes the group's export as it arrives (to `FILE.partial`,
 * renamed to `FILE` once complete), checking every event's id and group;
 * `import` reads the file as it goes and publishes its events in order, each
 * checked again by the receiving node, then compares the group's Merkle root
 * and count there with the file's header. A closed group needs `--key` of a
 * member for both. Each prints one JSON summary line. The file holds events
 * only: no key of any node.
 *
 * {@linkcode runExport} and {@linkcode runImport} take plain options so the
 * `xf` program (`net/main.ts`) can call them; run on its own, this file
 * takes the same arguments (`deno run -A net/cli_export.ts export …`).
 *
 * @module
 */

import { fromHex } from "../core/bytes.ts";
import { encodeCbor } from "../storage/cbor.ts";
import { type KeyPair, keyPairFromSeed } from "../storage/ed25519.ts";
import { type ExportHeader, IMPORT_SETTLE_MS_MAX, readExport, toHex, XfClient, XfClientError } from "../client/mod.ts";
import { SETTLE_QUIET_MS } from "../core/limits.ts";

/** Options of {@linkcode runExport}. */
export interface ExportCliOptions {
  /** The node, `http://host:port`. */
  node: string;
  /** Key of a member, for a closed group. */
  key?: KeyPair | undefined;
  /** Group id, 64 hex digits. */
  group: string;
  /** File to write. */
  out: string;
  /** Where the summary line goes (default `console.log`). */
  print?: (line: string) => void;
}

/** What {@linkcode runExport} wrote. */
export interface ExportSummary {
  group: string;
  file: string;
  /** Events written. */
  events: number;
  bytes: number;
  /** The header: the group's Merkle count and root when the export began. */
  count: number;
  root: string;
}

/** Options of {@linkcode runImport}. */
export interface ImportCliOptions {
  /** The node, `http://host:port`. */
  node: string;
  /** Key of a member, for a closed group. */
  key?: KeyPair | undefined;
  /** File to read. */
  file: string;
  /** The group the file must be of (default: the header's, else the first event's). */
  group?: string | undefined;
  /** Where the summary line goes (default `console.log`). */
  print?: (line: string) => void;
}

/** What {@linkcode runImport} did. */
export interface ImportSummary {
  group: string;
  file: string;
  /** Events read from the file. */
  events: number;
  stored: number;
  duplicate: number;
  /** Rejected events by error code. */
  rejected: Record<string, number>;
  /** The group's Merkle count and root on the node after the import. */
  count: number;
  root: string;
  /** The file header's count and root (null when the file has none). */
  expected: { count: number; root: string } | null;
  /** Whether the node now has exactly the header's root and count. */
  verified: boolean;
}

const GID = /^[0-9a-f]{64}$/;

/**
 * Write group `group`'s export from `node` to `out`, streaming (nothing but
 * the bytes in flight is held), and print one JSON summary line.
 *
 * @example
 * ```ts ignore
 * import { runExport } from "./cli_export.ts";
 * await runExport({ node: "http://127.0.0.1:7878", group: "ab".repeat(32), out: "group.xfx" });
 * ```
 */
export async function runExport(opts: ExportCliOptions): Promise<ExportSummary> {
  if (!GID.test(opts.group)) throw new TypeError(`Cannot export group "${opts.group}": expected 64 hex digits`);
  const xf = new XfClient(opts.node, opts.key ? { key: opts.key } : {});
  let header: ExportHeader | null = null;
  const partial = `${opts.out}.partial`;
  const file = await Deno.open(partial, { write: true, create: true, truncate: true });
  const writer = file.writable.getWriter();
  let events = 0, bytes = 0;
  let ok = false;
  try {
    const headerBytes: Uint8Array[] = [];
    const it = xf.exportGroup(opts.group, {
      onHeader: (h) => {
        header = h;
        headerBytes.push(encodeHeader(h));
      },
    });
    for await (const b of it) {
      for (const h of headerBytes.splice(0)) {
        await writer.write(h);
        bytes += h.length;
      }
      await writer.write(b);
      bytes += b.length;
      events++;
    }
    await writer.close();
    ok = true;
  } finally {
    if (!ok) {
      await writer.abort().catch(() => {});
      await Deno.remove(partial).catch(() => {});
    }
  }
  await Deno.rename(partial, opts.out);
  const h = header as ExportHeader | null;
  const summary: ExportSummary = {
    group: opts.group,
    file: opts.out,
    events,
    bytes,
    count: h?.count ?? events,
    root: h?.root ?? "",
  };
  (opts.print ?? console.log)(JSON.stringify(summary));
  return summary;
}

/** The header item again, byte for byte as the node sends it (deterministic CBOR of the same map). */
function encodeHeader(h: ExportHeader): Uint8Array {
  return encodeCbor(
    new Map<string, string | number>([
      ["xf-export", h.version],
      ["group", h.group],
      ["count", h.count],
      ["root", h.root],
    ]) as never,
  );
}

/**
 * Import the export in `file` into `node`, reading the file as it goes, and
 * print one JSON summary line (with `verified`: the node's root and count
 * now equal the header's).
 *
 * @example
 * ```ts ignore
 * import { runImport } from "./cli_export.ts";
 * const s = await runImport({ node: "http://127.0.0.1:7879", file: "group.xfx" });
 * if (!s.verified) Deno.exit(1);
 * ```
 */
export async function runImport(opts: ImportCliOptions): Promise<ImportSummary> {
  if (opts.group !== undefined && !GID.test(opts.group)) {
    throw new TypeError(`Cannot import into group "${opts.group}": expected 64 hex digits`);
  }
  const xf = new XfClient(opts.node, opts.key ? { key: opts.key } : {});
  const file = await Deno.open(opts.file, { read: true });
  const items = readExport(file.readable)[Symbol.asyncIterator]();
  let header: ExportHeader | null = null;
  let group: string;
  let events = 0;
  let counts: Awaited<ReturnType<XfClient["importEvents"]>>;
  try {
    let first = await items.next();
    if (!first.done && first.value.type === "header") {
      header = first.value.header;
      first = await items.next();
    }
    if (first.done || first.value.type !== "event") {
      throw new XfClientError("BAD_RESPONSE", `Cannot import "${opts.file}": it holds no events`);
    }
    const firstBytes = first.value.bytes;
    group = opts.group ?? header?.group ?? toHex(firstBytes.subarray(4, 36));
    if (header && header.group !== group) {
      throw new XfClientError(
        "BAD_RESPONSE",
        `Cannot import "${opts.file}" into "${group}": it is of "${header.group}"`,
      );
    }
    const eventBytes = async function* (): AsyncGenerator<Uint8Array> {
      events++;
      yield firstBytes;
      for (let r = await items.next(); !r.done; r = await items.next()) {
        if (r.value.type !== "event") continue;
        events++;
        yield r.value.bytes;
      }
    };
    counts = await xf.importEvents(group, eventBytes());
  } finally {
    // Stops reading (and closes the file) when the import ended early.
    await items.return?.(undefined);
  }
  const expected = header ? { count: header.count, root: header.root } : null;
  const m = await settledRoot(xf, group, expected);
  const summary: ImportSummary = {
    group,
    file: opts.file,
    events,
    ...counts,
    count: m.count,
    root: m.root,
    expected,
    verified: expected !== null && expected.count === m.count && expected.root === m.root,
  };
  (opts.print ?? console.log)(JSON.stringify(summary));
  return summary;
}

/** The group's root once it equals `expected`, or has stopped moving, or after {@linkcode IMPORT_SETTLE_MS_MAX}. */
async function settledRoot(
  xf: XfClient,
  group: string,
  expected: { count: number; root: string } | null,
): Promise<{ count: number; root: string }> {
  const t0 = Date.now();
  let m = await xf.merkle(group);
  let changed = Date.now();
  while (Date.now() - t0 < IMPORT_SETTLE_MS_MAX) {
    if (expected && m.root === expected.root && m.count === expected.count) break;
    if (Date.now() - changed >= SETTLE_QUIET_MS) break;
    await new Promise((ok) => setTimeout(ok, 50));
    const next = await xf.merkle(group);
    if (next.root !== m.root) changed = Date.now();
    m = next;
  }
  return { count: m.count, root: m.root };
}

/** A key file as `xf keygen` writes it (64 hex digits of seed); it must exist. */
async function readKey(path: string): Promise<KeyPair> {
  const seed = fromHex((await Deno.readTextFile(path)).trim());
  if (!seed || seed.length !== 32) throw new TypeError(`Key file "${path}" does not hold a 64-hex-digit seed`);
  return await keyPairFromSeed(seed);
}

/** `export …` or `import …` as the `xf` program would take them; exit code 0, 1 (node said no) or 2 (usage). */
async function main(args: string[]): Promise<number> {
  const [cmd, ...rest] = args;
  const flags: Record<string, string> = {};
  const words: string[] = [];
  for (let i = 0; i < rest.length; i++) {
    const a = rest[i]!;
    if (!a.startsWith("--")) {
      words.push(a);
      continue;
    }
    const [name, inline] = a.slice(2).split(/=(.*)/s, 2) as [string, string | undefined];
    const v = inline ?? rest[++i];
    if (v === undefined) return usage(`Flag --${name} needs a value`);
    flags[name] = v;
  }
  const node = (flags.node ?? Deno.env.get("XF_NODE") ?? "http://127.0.0.1:7878").replace(/\/$/, "");
  const keyFile = flags.key ?? Deno.env.get("XF_KEY");
  const key = keyFile ? await readKey(keyFile) : undefined;
  if (cmd === "export") {
    if (!GID.test(flags.group ?? "")) return usage("export needs --group GID (64 hex digits)");
    if (!flags.out) return usage("export needs --out FILE");
    await runExport({ node, key, group: flags.group!, out: flags.out });
    return 0;
  }
  if (cmd === "import") {
    if (!words[0]) return usage("import needs a FILE");
    const s = await runImport({ node, key, file: words[0], group: flags.group });
    return s.verified || !s.expected ? 0 : 1;
  }
  return usage(
    "usage: xf export --group G --out FILE [--node URL] [--key FILE] | xf import FILE [--node URL] [--key FILE]",
  );
}

function usage(message: string): number {
  console.error(`error: ${message}`);
  return 2;
}

if (import.meta.main) {
  main(Deno.args).then((code) => Deno.exit(code), (e) => {
    if (e instanceof XfClientError) {
      console.error(JSON.stringify({ error: e.code, status: e.status, message: e.message }));
      Deno.exit(1);
    }
    console.error(`error: ${(e as Error).message}`);
    Deno.exit(e instanceof TypeError ? 2 : 1);
  });
}
