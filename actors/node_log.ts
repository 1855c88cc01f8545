/**
 * The node's periodic log lines, running only while logging is configured:
 * rejected events summarised per code per interval, memory pressure (RSS
 * against a budget) and disk pressure (free space of the data directory's
 * filesystem), plus the start and stop lines. Every check is a timer the
 * returned stop function clears.
 *
 * The disk check needs `Deno.statfs`; a Deno without it (2.9 has none) skips
 * the check and says so once, at debug level.
 *
 * @module
 */

import { toHex } from "../core/bytes.ts";
import type { KeyPair } from "../storage/ed25519.ts";
import type { Pipeline } from "./root.ts";
import { log, loggingConfigured, short } from "./log.ts";
import {
  DISK_FREE_BYTES_MIN,
  DISK_FREE_RATIO_MIN,
  LOG_DISK_EVERY_MS,
  LOG_MEMORY_BUDGET_BYTES,
  LOG_MEMORY_EVERY_MS,
  LOG_REJECTS_EVERY_MS,
} from "../core/limits.ts";

/** Options of {@linkcode startNodeLogging}; the periods and thresholds are injectable for tests. */
export interface NodeLoggingOptions {
  /** The data directory (its filesystem is watched for free space). */
  dataDir?: string;
  /** Where the node listens, for the start line. */
  url?: string;
  /** Rejected events are summarised once per this period (default 10 s). */
  rejectsEveryMs?: number;
  /** Memory is checked once per this period (default 10 s). */
  memoryEveryMs?: number;
  /** RSS budget: a warning past 80 % of it (default 512 MiB). */
  memoryBudgetBytes?: number;
  /** Disk is checked once per this period (default 60 s). */
  diskEveryMs?: number;
  /** The process's resident set size, in bytes (default `Deno.memoryUsage().rss`). */
  rss?: () => number;
  /** Free and total bytes of the filesystem holding `dir` (default `Deno.statfs`, if this Deno has it). */
  statfs?: (dir: string) => Promise<{ free: number; total: number }>;
}

/** Memory warning threshold: this share of the budget. */
export const MEMORY_WARN_RATIO = 0.8;

const MiB = 1024 * 1024;

type StatFs = (path: string) => Promise<{ bavail: number; blocks: number; bsize: number; frsize?: number }>;

function denoStatfs(): ((dir: string) => Promise<{ free: number; total: number }>) | null {
  const fn = (globalThis as { Deno?: { statfs?: StatFs } }).Deno?.statfs;
  if (typeof fn !== "function") return null;
  return async (dir) => {
    const s = await fn(dir);
    const unit = s.frsize || s.bsize;
    return { free: s.bavail * unit, total: s.blocks * unit };
  };
}

/** What node logging reads of a node (`XfNode` in `node.ts` is one): its key and its pipeline's counters. */
export interface LoggedNode {
  readonly key: KeyPair;
  readonly pipeline: Pipeline;
}

/**
 * Log the node's start now, then its rejects, memory and disk pressure
 * periodically; returns the function that stops the timers and logs the
 * stop. Does nothing (no timer) unless logging is configured.
 *
 * @example
 * ```ts ignore
 * await configureLogging({ format: "json" });
 * const stopLogs = startNodeLogging(node, { dataDir: "./data" });
 * await node.close();
 * stopLogs();
 * ```
 */
export function startNodeLogging(node: LoggedNode, opts: NodeLoggingOptions = {}): () => void {
  if (!loggingConfigured()) return () => {};
  const timers: ReturnType<typeof setInterval>[] = [];
  log.node.info("node started", {
    node: short(toHex(node.key.publicKey)),
    ...(opts.url ? { url: opts.url } : {}),
    ...(opts.dataDir ? { data: opts.dataDir } : {}),
    ...(node.pipeline.recovery ? { recovery: node.pipeline.recovery } : {}),
  });

  // Rejects: one line per period with the count of each code, from the pipeline's counters.
  const rejectsEvery = opts.rejectsEveryMs ?? LOG_REJECTS_EVERY_MS;
  let seen = { ...node.pipeline.counters.rejected };
  const summariseRejects = () => {
    const now = node.pipeline.counters.rejected;
    const codes: Record<string, number> = {};
    let total = 0;
    for (const [code, n] of Object.entries(now)) {
      const d = n - (seen[code] ?? 0);
      if (d > 0) {
        codes[code] = d;
        total += d;
      }
    }
    seen = { ...now };
    if (!total) return;
    const list = Object.entries(codes).sort((a, b) => b[1] - a[1]).map(([c, n]) => `${c}=${n}`).join(" ");
    log.pipeline.info(`rejects in the last ${secs(rejectsEvery)} s: ${list}`, { total, codes });
  };
  timers.push(setInterval(summariseRejects, rejectsEvery));

  // Memory: a warning when RSS passes 80 % of the budget, an info line when it is back under.
  const budget = opts.memoryBudgetBytes ?? LOG_MEMORY_BUDGET_BYTES;
  const rss = opts.rss ??
    (typeof Deno !== "undefined" && typeof Deno.memoryUsage === "function" ? () => Deno.memoryUsage().rss : null);
  if (rss) {
    let high = false;
    timers.push(setInterval(() => {
      const r = rss();
      const over = r > budget * MEMORY_WARN_RATIO;
      if (over && !high) {
        log.node.warn("memory pressure: RSS above 80 % of the budget", {
          rssMiB: Math.round(r / MiB),
          budgetMiB: Math.round(budget / MiB),
        });
      } else if (!over && high) {
        log.node.info("memory back under 80 % of the budget", { rssMiB: Math.round(r / MiB) });
      }
      high = over;
    }, opts.memoryEveryMs ?? LOG_MEMORY_EVERY_MS));
  }

  // Disk: a warning when the data directory's filesystem has less than 5 % or 1 GiB free.
  const statfs = opts.statfs ?? denoStatfs();
  if (opts.dataDir && statfs) {
    const dir = opts.dataDir;
    let low = false;
    let checking = false;
    timers.push(setInterval(async () => {
      if (checking) return;
      checking = true;
      try {
        const { free, total } = await statfs(dir);
        const isLow = free < DISK_FREE_BYTES_MIN || (total > 0 && free / total < DISK_FREE_RATIO_MIN);
        if (isLow && !low) {
          log.node.warn("disk pressure: little free space for the data directory", {
            data: dir,
            freeMiB: Math.round(free / MiB),
            freePercent: total ? Math.round((free / total) * 1000) / 10 : 0,
          });
        } else if (!isLow && low) log.node.info("disk space back above the thresholds", { data: dir });
        low = isLow;
      } catch (e) {
        log.node.debug("disk check failed", { data: dir, error: (e as Error).message });
      } finally {
        checking = false;
      }
    }, opts.diskEveryMs ?? LOG_DISK_EVERY_MS));
  } else if (opts.dataDir) {
    log.node.debug("disk check skipped: this Deno has no Deno.statfs");
  }

  let stopped = false;
  return () => {
    if (stopped) return;
    stopped = true;
    for (const t of timers) clearInterval(t);
    summariseRejects();
    log.node.info("node stopped", { node: short(toHex(node.key.publicKey)) });
  };
}

function secs(ms: number): string {
  return ms % 1000 === 0 ? String(ms / 1000) : (ms / 1000).toFixed(1);
}
