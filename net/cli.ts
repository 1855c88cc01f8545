/**
 * The `xf` command line as data: every command with its flags, a usage line
 * and an example; the parser that validates a command line against them;
 * and the help texts. `main.ts` runs the commands.
 *
 * A flag is `--name value`, `--name=value` (for values that start with
 * `--`) or a bare `--name` for booleans. An unknown flag, or one missing its
 * value, is a {@linkcode UsageError} (exit 2) that lists the command's flags.
 *
 * @module
 */

import { VERSION } from "../version.ts";

/** A mistake in how the command was called (exit code 2). */
export class UsageError extends Error {
  /** The command the mistake is in, for pointing at its help. */
  readonly command: string | undefined;
  /** Make a usage error, naming the command if known. */
  constructor(message: string, command?: string) {
    super(message);
    this.name = "UsageError";
    this.command = command;
  }
}

/** One flag of a command. */
export interface FlagSpec {
  /** The name without dashes: `group`. */
  name: string;
  /** The value's placeholder (`GID`); absent for a boolean flag. */
  value?: string;
  /** May be given more than once: the values collect into an array. */
  repeat?: boolean;
  /** The environment variable read when the flag is absent. */
  env?: string;
  /** One line: what it is for. */
  help: string;
}

/** One command: its words, flags and help. */
export interface CommandSpec {
  /** The words that name it: `publish`, `group add`. */
  name: string;
  /** One line for `xf --help`. */
  summary: string;
  /** Positional arguments, e.g. `ID` (one each). */
  args?: string[];
  /** The usage line after `xf NAME`. */
  usage: string;
  /** Its flags (`--help` is always accepted). */
  flags: FlagSpec[];
  /** An example command line. */
  example: string;
}

/** Flags every command accepts. Other modules may add theirs (e.g. logging) before parsing. */
export const GLOBAL_FLAGS: FlagSpec[] = [
  { name: "help", help: "print this help and do nothing else" },
];

const NODE: FlagSpec = {
  name: "node",
  value: "URL",
  env: "XF_NODE",
  help: "the node to ask (default http://127.0.0.1:7878)",
};
const KEY_SIGN: FlagSpec = { name: "key", value: "FILE", env: "XF_KEY", help: "the key file to sign with (required)" };
const KEY_READ: FlagSpec = {
  name: "key",
  value: "FILE",
  env: "XF_KEY",
  help: "a member's key file: lets you read closed groups",
};
const GROUP: FlagSpec = { name: "group", value: "GID", env: "XF_GROUP", help: "the group id (64 hex digits)" };
const RAW: FlagSpec = { name: "raw", help: "show payloads as hex, also when they are text" };
const KIND: FlagSpec = { name: "kind", value: "N", repeat: true, help: "only events of this kind (repeatable)" };
const AUTHOR: FlagSpec = { name: "author", value: "HEX", repeat: true, help: "only events by this key (repeatable)" };

const MEMBERSHIP = (verb: string, summary: string): CommandSpec => ({
  name: `group ${verb}`,
  summary,
  usage: "--group GID --member KEY --key FILE [--node URL]",
  flags: [GROUP, { name: "member", value: "KEY", help: "the member's public key (64 hex digits)" }, KEY_SIGN, NODE],
  example: `xf group ${verb} --group GID --member 9f2c…e1 --key me.key`,
});

/** Every command of `xf`, in the order `xf --help` lists them. */
export const COMMANDS: CommandSpec[] = [
  {
    name: "serve",
    summary: "run a node (stops cleanly on SIGINT/SIGTERM)",
    usage: "[--data DIR] [--host H] [--port N] [--public-url ws://HOST:PORT] [--key FILE] [--group GID]... " +
      "[--peer URL]... [--operator-token T] [--cors-origin ORIGIN]... [--limits JSON] [--log-format text|json] " +
      "[--log-level LEVEL] [--index-nice N]",
    flags: [
      { name: "data", value: "DIR", env: "XF_DATA", help: "the data directory (default ./data)" },
      { name: "host", value: "H", env: "XF_HOST", help: "the address to listen on (default 127.0.0.1)" },
      { name: "port", value: "N", env: "XF_PORT", help: "the port to listen on (default 7878; 0 picks a free one)" },
      {
        name: "public-url",
        value: "URL",
        env: "XF_PUBLIC_URL",
        help: "the ws:// or wss:// address announced to peers (needed with --host 0.0.0.0)",
      },
      {
        name: "key",
        value: "FILE",
        env: "XF_KEY",
        help: "the node's identity, created on first start (DATA/node.key)",
      },
      { name: "group", value: "GID", repeat: true, env: "XF_GROUP", help: "a group to serve and sync (repeatable)" },
      {
        name: "peer",
        value: "URL",
        repeat: true,
        env: "XF_PEER",
        help: "a bootstrap peer ws://HOST:PORT (repeatable)",
      },
      {
        name: "operator-token",
        value: "T",
        env: "XF_OPERATOR_TOKEN",
        help: "lets non-loopback callers use operator routes",
      },
      {
        name: "cors-origin",
        value: "ORIGIN",
        repeat: true,
        env: "XF_CORS_ORIGIN",
        help: "an origin browsers may call from (repeatable)",
      },
      { name: "limits", value: "JSON", env: "XF_LIMITS", help: `limit overrides, e.g. '{"sync_stall_ms":5000}'` },
      { name: "log-format", value: "text|json", env: "XF_LOG_FORMAT", help: "log lines on stderr (default text)" },
      {
        name: "log-level",
        value: "LEVEL",
        env: "XF_LOG_LEVEL",
        help: "debug, info (default), warning or error",
      },
      {
        name: "index-nice",
        value: "N",
        env: "XF_INDEX_NICE",
        help: "the index stage thread's nice value, 0..19 (default 10: acknowledgements first on busy cores)",
      },
    ],
    example: "xf serve --data ./data --port 7878 --group GID --peer ws://10.0.0.2:7878",
  },
  {
    name: "keygen",
    summary: "create a key file (or show the public key of an existing one)",
    usage: "[--key FILE]",
    flags: [{ name: "key", value: "FILE", env: "XF_KEY", help: "the key file (default ./data/node.key)" }],
    example: "xf keygen --key me.key",
  },
  {
    name: "group create",
    summary: "create a group owned by --key",
    usage: "--name NAME [--closed] --key FILE [--node URL]",
    flags: [
      { name: "name", value: "NAME", help: "the group's name" },
      { name: "closed", help: "members only: reads need a member's key" },
      KEY_SIGN,
      NODE,
    ],
    example: "xf group create --name friends --closed --key me.key",
  },
  MEMBERSHIP("add", "add a member to a group"),
  MEMBERSHIP("remove", "remove a member from a group"),
  MEMBERSHIP("admin", "make a member an admin"),
  MEMBERSHIP("unadmin", "make an admin a plain member"),
  {
    name: "groups",
    summary: "list open groups, and closed ones --key is a member of",
    usage: "[--key FILE] [--node URL]",
    flags: [KEY_READ, NODE],
    example: "xf groups --key me.key",
  },
  {
    name: "members",
    summary: "list a group's owner, admins and members",
    usage: "--group GID [--key FILE] [--node URL]",
    flags: [GROUP, KEY_READ, NODE],
    example: "xf members --group GID --key me.key",
  },
  {
    name: "publish",
    summary: "sign an event with --key and publish it to a group",
    usage: "--group GID (--text S | --file F) [--kind N] [--tag k=v]... --key FILE [--node URL]",
    flags: [
      GROUP,
      { name: "text", value: "S", help: "the payload as UTF-8 text" },
      { name: "file", value: "F", help: "the payload: the bytes of this file" },
      { name: "kind", value: "N", help: "the event's kind (default 16)" },
      { name: "tag", value: "k=v", repeat: true, help: "a tag (repeatable)" },
      KEY_SIGN,
      NODE,
    ],
    example: 'xf publish --group GID --text "hello" --tag topic=news --key me.key',
  },
  {
    name: "delete",
    summary: "delete events of a group: publish a tombstone signed by --key (their author, the owner or an admin)",
    usage: "--group GID --id ID [--id ID]... --key FILE [--node URL]",
    flags: [
      GROUP,
      { name: "id", value: "ID", repeat: true, help: "an event to delete (64 hex; repeatable, at most 256)" },
      KEY_SIGN,
      NODE,
    ],
    example: "xf delete --group GID --id 5cf4…2d --id 9a01…7c --key me.key",
  },
  {
    name: "tail",
    summary: "follow a group's stream: backfill, then live events (one JSON line each)",
    usage: "--group GID [--since MS] [--cursor C] [--kind N]... [--author HEX]... [--transport sse|ws] [--raw] " +
      "[--key FILE] [--node URL]",
    flags: [
      GROUP,
      { name: "since", value: "MS", help: "backfill from this time (ms since 1970)" },
      { name: "cursor", value: "C", help: "resume after this cursor" },
      KIND,
      AUTHOR,
      { name: "transport", value: "sse|ws", help: "the stream's transport (default sse)" },
      RAW,
      KEY_READ,
      NODE,
    ],
    example: "xf tail --group GID --since 0 --key me.key",
  },
  {
    name: "sync",
    summary: "sync the node once with a peer; prints what moved",
    usage: "--peer ws://HOST:PORT [--group GID]... [--since MS|ISO] [--until MS|ISO] [--operator-token T] [--node URL]",
    flags: [
      { name: "peer", value: "URL", help: "the peer, ws://HOST:PORT" },
      { name: "group", value: "GID", repeat: true, help: "only this group (repeatable; default all both serve)" },
      {
        name: "since",
        value: "MS|ISO",
        help: "partial sync: only events from this time (ms since 1970 or ISO 8601, e.g. 2024-05-01)",
      },
      { name: "until", value: "MS|ISO", help: "partial sync: only events before this time (ms or ISO 8601)" },
      { name: "operator-token", value: "T", env: "XF_OPERATOR_TOKEN", help: "needed unless the node is on loopback" },
      NODE,
    ],
    example: "xf sync --peer ws://127.0.0.1:7879 --node http://127.0.0.1:7878",
  },
  {
    name: "export",
    summary: "write a group's events to a file, a verifiable CBOR sequence (backup, move)",
    usage: "--group GID --out FILE [--key FILE] [--node URL]",
    flags: [GROUP, { name: "out", value: "FILE", help: "the file to write" }, KEY_READ, NODE],
    example: "xf export --group GID --out friends.xfx --key me.key",
  },
  {
    name: "import",
    summary: "send a file written by export through the node's pipeline (every event checked again)",
    args: ["FILE"],
    usage: "FILE [--group GID] [--key FILE] [--node URL]",
    flags: [{ ...GROUP, help: "the group the file must be of (default: the file's)" }, KEY_READ, NODE],
    example: "xf import friends.xfx --node http://127.0.0.1:7879 --key me.key",
  },
  {
    name: "fsck",
    summary: "check a stopped node's data: rebuild each group's Merkle tree, compare every page",
    usage: "[--data DIR] [--group GID]...",
    flags: [
      { name: "data", value: "DIR", env: "XF_DATA", help: "the data directory (default ./data)" },
      { name: "group", value: "GID", repeat: true, help: "only this group (repeatable; default all)" },
    ],
    example: "xf fsck --data ./data2",
  },
  {
    name: "get",
    summary: "show one event by id",
    args: ["ID"],
    usage: "ID [--raw] [--key FILE] [--node URL]",
    flags: [RAW, KEY_READ, NODE],
    example: "xf get 5d41…9a",
  },
  {
    name: "query",
    summary: "list a group's events, oldest first, a page at a time",
    usage: "--group GID [--since MS] [--until MS] [--kind N]... [--author HEX]... [--limit N] [--cursor C] [--raw] " +
      "[--key FILE] [--node URL]",
    flags: [
      GROUP,
      { name: "since", value: "MS", help: "from this time (ms since 1970)" },
      { name: "until", value: "MS", help: "up to this time (ms since 1970)" },
      KIND,
      AUTHOR,
      { name: "limit", value: "N", help: "at most N events" },
      { name: "cursor", value: "C", help: "the next page: the cursor the last one printed" },
      RAW,
      KEY_READ,
      NODE,
    ],
    example: "xf query --group GID --since 0 --limit 10",
  },
];

/** Parsed flags: repeatable flags collect into arrays, booleans are `true`, positionals in `_`. */
export interface Flags {
  _: string[];
  [k: string]: string[] | string | boolean | undefined;
}

/** A command line, parsed: the command (or none), its flags, and whether help or the version was asked for. */
export interface CommandLine {
  command: CommandSpec | null;
  flags: Flags;
  help: boolean;
  version: boolean;
}

/** The first words of every command: `serve`, `group`, … */
function commandWords(): string[] {
  return [...new Set(COMMANDS.map((c) => c.name.split(" ")[0]!))];
}

/**
 * Parse `args` against {@linkcode COMMANDS}. `--help` anywhere asks for
 * help (and nothing is validated); otherwise unknown flags, missing values
 * and extra words are usage errors.
 *
 * @example
 * ```ts
 * import { assertEquals, assertThrows } from "@std/assert";
 * import { parseCommandLine, UsageError } from "./cli.ts";
 * const cl = parseCommandLine(["publish", "--group", "ab", "--tag", "a=1", "--tag=b=2"]);
 * assertEquals([cl.command?.name, cl.flags.group, cl.flags.tag], ["publish", "ab", ["a=1", "b=2"]]);
 * assertThrows(() => parseCommandLine(["publish", "--grup", "ab"]), UsageError);
 * ```
 */
export function parseCommandLine(args: string[]): CommandLine {
  const help = args.includes("--help") || args.includes("-h");
  const version = args[0] === "--version" || args[0] === "-V";
  const words: string[] = [];
  for (const a of args) {
    if (a.startsWith("-")) break;
    words.push(a);
  }
  if (!words.length) {
    if (help || version || !args.length) return { command: null, flags: { _: [] }, help, version };
    throw new UsageError(`Expected a command before "${args[0]}": try xf --help`);
  }
  const command = COMMANDS.find((c) => c.name === words.slice(0, 2).join(" ")) ??
    COMMANDS.find((c) => c.name === words[0]);
  if (!command) {
    const group = COMMANDS.filter((c) => c.name.startsWith(`${words[0]} `));
    if (group.length) {
      // `xf group` or `xf group --help`: the group's commands.
      if (help && words.length === 1) return { command: null, flags: { _: [words[0]!] }, help, version: false };
      throw new UsageError(
        `Unknown command "${words.slice(0, 2).join(" ")}": try ${group.map((c) => c.name).join(", ")}`,
        words[0],
      );
    }
    const near = commandWords().filter((w) => w.startsWith(words[0]!.slice(0, 2)));
    throw new UsageError(
      `Unknown command "${words[0]}"${near.length ? `: did you mean ${near.join(" or ")}?` : ""} (xf --help lists all)`,
    );
  }
  if (help) return { command, flags: { _: [] }, help, version: false };
  const specs = new Map([...command.flags, ...GLOBAL_FLAGS].map((s) => [s.name, s]));
  const valid = () => [...specs.keys()].map((n) => `--${n}`).join(", ");
  const flags: Flags = { _: [] };
  const rest = args.slice(command.name.split(" ").length);
  for (let i = 0; i < rest.length; i++) {
    const a = rest[i]!;
    if (!a.startsWith("--")) {
      if (a.startsWith("-") && a.length > 1) {
        throw new UsageError(`Unknown flag "${a}" for ${command.name}: valid flags are ${valid()}`, command.name);
      }
      flags._.push(a);
      continue;
    }
    const [name, inline] = a.slice(2).split(/=(.*)/s, 2) as [string, string | undefined];
    const spec = specs.get(name);
    if (!spec) {
      throw new UsageError(`Unknown flag "--${name}" for ${command.name}: valid flags are ${valid()}`, command.name);
    }
    if (!spec.value) {
      if (inline !== undefined) throw new UsageError(`Flag --${name} takes no value`, command.name);
      flags[name] = true;
      continue;
    }
    let value = inline;
    if (value === undefined) {
      const next = rest[i + 1];
      if (next === undefined || next.startsWith("--")) {
        throw new UsageError(`Flag --${name} needs a value (${spec.value})`, command.name);
      }
      value = next;
      i++;
    }
    if (spec.repeat) ((flags[name] ??= []) as string[]).push(value);
    else if (flags[name] !== undefined) {
      throw new UsageError(`Flag --${name} was given twice: it takes one value`, command.name);
    } else flags[name] = value;
  }
  const wanted = command.args?.length ?? 0;
  if (flags._.length > wanted) {
    throw new UsageError(
      `Unexpected "${flags._[wanted]}": ${command.name} takes ${wanted || "no"} argument${wanted === 1 ? "" : "s"} (${
        command.args?.join(" ") ?? "only flags"
      })`,
      command.name,
    );
  }
  return { command, flags, help: false, version: false };
}

const pad = (s: string, n: number) => s + " ".repeat(Math.max(1, n - s.length));

/** The text of `xf --help`: every command with one line. */
export function mainHelp(): string {
  const w = Math.max(...COMMANDS.map((c) => c.name.length)) + 2;
  return [
    `xf ${VERSION}: a Xaeroflux node (serve) and a client of one (the rest; they print JSON)`,
    "",
    "Usage: xf COMMAND [FLAGS]        xf COMMAND --help shows its flags and an example",
    "",
    "Commands:",
    ...COMMANDS.map((c) => `  ${pad(c.name, w)}${c.summary}`),
    "",
    "Flags: --help, --version",
    "Exit codes: 0 done, 1 the node (or the data) refused: its code on stderr as JSON, 2 a usage error",
  ].join("\n");
}

/** The help of the commands under one word: `xf group --help`. */
export function groupHelp(word: string): string {
  const cmds = COMMANDS.filter((c) => c.name.startsWith(`${word} `));
  const w = Math.max(...cmds.map((c) => c.name.length)) + 2;
  return [`Commands of xf ${word}:`, ...cmds.map((c) => `  ${pad(c.name, w)}${c.summary}`)].join("\n") +
    `\n\nxf ${word} SUBCOMMAND --help shows its flags and an example`;
}

/** The text of `xf COMMAND --help`: usage, flags (with their environment variables) and an example. */
export function commandHelp(c: CommandSpec): string {
  const all = [...c.flags, ...GLOBAL_FLAGS];
  const label = (f: FlagSpec) => `--${f.name}${f.value ? ` ${f.value}` : ""}`;
  const w = Math.max(...all.map((f) => label(f).length)) + 2;
  return [
    `xf ${c.name}: ${c.summary}`,
    "",
    `Usage: xf ${c.name} ${c.usage}`,
    "",
    "Flags:",
    ...all.map((f) => `  ${pad(label(f), w)}${f.help}${f.env ? ` (env ${f.env})` : ""}`),
    "",
    "Example:",
    `  ${c.example}`,
  ].join("\n");
}
