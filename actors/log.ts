/**
 * Structured, levelled logs over LogTape: category loggers (`xf.node`,
 * `xf.sync`, `xf.dht`, `xf.pipeline`) that every module may import, and
 * {@linkcode configureLogging}, which the program (or an embedding app)
 * calls once. Until it is called nothing is logged: a library user who never
 * configures logging gets silence.
 *
 * | format | one line                                                                              |
 * | ------ | ------------------------------------------------------------------------------------- |
 * | text   | `2026-12-02T06:50:01.123Z INFO  xf.sync peer connected node=ab12cd34 addr=ws://…`      |
 * | json   | `{"ts":"2026-12-02T06:50:01.123Z","level":"info","category":"xf.sync","msg":"peer connected","node":"ab12cd34"}` |
 *
 * Bearer tokens and `token=` query values are masked in every line,
 * whatever logged them.
 *
 * @module
 */

import { configure, getConfig, getLogger, type Logger, type LogLevel, type LogRecord, reset } from "@logtape/logtape";

export { getLogger, type Logger };

/** Formats of a log line. */
export const LOG_FORMATS = ["text", "json"] as const;
/** A log line format. */
export type LogFormat = typeof LOG_FORMATS[number];
/** Levels a node logs at, lowest first. */
export const LOG_LEVELS = ["debug", "info", "warning", "error"] as const;
/** A log level. */
export type XfLogLevel = typeof LOG_LEVELS[number];

/** Options of {@linkcode configureLogging}. */
export interface LoggingOptions {
  /** `text` (default): one human line; `json`: one JSON object per line. */
  format?: LogFormat;
  /** The lowest level written (default `info`). */
  level?: XfLogLevel;
  /** Where lines go (default: `console.error`, so stdout stays for program output). */
  sink?: (line: string) => void;
}

/** The node's category loggers. */
export const log = {
  node: getLogger(["xf", "node"]),
  pipeline: getLogger(["xf", "pipeline"]),
  sync: getLogger(["xf", "sync"]),
  dht: getLogger(["xf", "dht"]),
} as const;

/** Mask secrets: bearer tokens and `token=` query values. */
export function redact(s: string): string {
  return s.replace(/([?&;]?\btoken=)[^&\s"]*/gi, "$1…").replace(/\b(Bearer\s+)[^\s"]+/gi, "$1…");
}

const LABEL: Record<LogLevel, string> = {
  trace: "TRACE",
  debug: "DEBUG",
  info: "INFO ",
  warning: "WARN ",
  error: "ERROR",
  fatal: "FATAL",
};

function messageOf(r: LogRecord): string {
  return r.message.map((m) => (typeof m === "string" ? m : JSON.stringify(m))).join("");
}

function clean(v: unknown): unknown {
  if (typeof v === "string") return redact(v);
  if (v instanceof Error) return redact(v.message);
  if (typeof v === "bigint") return String(v);
  if (v && typeof v === "object") return JSON.parse(redact(JSON.stringify(v)));
  return v;
}

/** One record as a human line: time, level, category, message, then `key=value` properties. */
export function textLine(r: LogRecord): string {
  let line = `${new Date(r.timestamp).toISOString()} ${LABEL[r.level]} ${r.category.join(".")} ${redact(messageOf(r))}`;
  for (const [k, v0] of Object.entries(r.properties)) {
    const v = clean(v0);
    const s = typeof v === "string" ? (/^[^\s"=]+$/.test(v) ? v : JSON.stringify(v)) : JSON.stringify(v);
    line += ` ${k}=${s}`;
  }
  return line;
}

/** One record as a JSON line: `ts`, `level`, `category`, `msg`, then the properties. */
export function jsonLine(r: LogRecord): string {
  const out: Record<string, unknown> = {
    ts: new Date(r.timestamp).toISOString(),
    level: r.level,
    category: r.category.join("."),
    msg: redact(messageOf(r)),
  };
  for (const [k, v] of Object.entries(r.properties)) if (!(k in out)) out[k] = clean(v);
  return JSON.stringify(out);
}

/** Check a format given on the command line or in the environment. */
export function parseLogFormat(s: string | undefined): LogFormat {
  if (s === undefined || s === "") return "text";
  if ((LOG_FORMATS as readonly string[]).includes(s)) return s as LogFormat;
  throw new Error(`Cannot use log format "${s}": use ${LOG_FORMATS.join(" or ")}`);
}

/** Check a level given on the command line or in the environment (`warn` means `warning`). */
export function parseLogLevel(s: string | undefined): XfLogLevel {
  if (s === undefined || s === "") return "info";
  const v = s.toLowerCase() === "warn" ? "warning" : s.toLowerCase();
  if ((LOG_LEVELS as readonly string[]).includes(v)) return v as XfLogLevel;
  throw new Error(`Cannot use log level "${s}": use one of ${LOG_LEVELS.join(", ")}`);
}

/** Options from a command line's or environment's strings; throws on an unknown format or level. */
export function loggingOptions(format: string | undefined, level: string | undefined): LoggingOptions {
  return { format: parseLogFormat(format), level: parseLogLevel(level) };
}

/** Whether logging is configured (by {@linkcode configureLogging}, or by the app through LogTape). */
export function loggingConfigured(): boolean {
  return getConfig() !== null;
}

/**
 * Write the node's logs (categories under `xf`) at `level` and above, as
 * `format` lines, to `sink`. Calling it again replaces the configuration.
 *
 * @example
 * ```ts
 * import { configureLogging, log, resetLogging } from "./log.ts";
 * const lines: string[] = [];
 * await configureLogging({ format: "json", sink: (l) => lines.push(l) });
 * log.node.info("node started", { port: 7878 });
 * await resetLogging();
 * if (JSON.parse(lines[0]!).msg !== "node started") throw new Error("not logged");
 * ```
 */
export async function configureLogging(opts: LoggingOptions = {}): Promise<void> {
  const format = parseLogFormat(opts.format);
  const level = parseLogLevel(opts.level);
  const write = opts.sink ?? ((l: string) => console.error(l));
  const toLine = format === "json" ? jsonLine : textLine;
  await configure({
    reset: true,
    sinks: { xf: (r: LogRecord) => write(toLine(r)) },
    loggers: [
      { category: ["xf"], lowestLevel: level, sinks: ["xf"] },
      // LogTape's own diagnostics (a sink that threw): warnings only, same sink.
      { category: ["logtape", "meta"], lowestLevel: "warning", sinks: ["xf"] },
    ],
  });
}

/** Back to silence (tests; a program that wants its stderr back). */
export async function resetLogging(): Promise<void> {
  await reset();
}

/** The first 8 hex digits of a key or id, for log lines. */
export function short(hex: string): string {
  return hex ? hex.slice(0, 8) : "-";
}
