/**
 * The data directory's format version: `DIR/FORMAT` holds one decimal
 * integer and a newline.
 *
 * | `DIR/FORMAT`          | what opening the directory does                          |
 * | --------------------- | -------------------------------------------------------- |
 * | absent, directory new | writes the current version                               |
 * | absent, files present | a directory of format 1 (before the file): writes it     |
 * | lower than current    | upgrades: writes the current version                     |
 * | equal                 | nothing                                                  |
 * | higher than current   | refuses: `DATA_FORMAT_TOO_NEW`                           |
 *
 * Opening also checks that no other process holds the directory (RocksDB's
 * lock on `DIR/db/LOCK`) before any stage touches the WAL.
 *
 * @module
 */

import { XfError } from "../core/errors.ts";
import { openRocks } from "./kv_rocks.ts";

/** The name of the format file inside a data directory. */
export const FORMAT_FILE = "FORMAT";

/** What {@linkcode openDataDir} found and did. */
export interface DataDirReport {
  /** The format the directory was in: `null` for a new directory. */
  found: number | null;
  /** The format it is in now. */
  format: number;
}

/**
 * Read `DIR/FORMAT`: its integer, or `null` when there is no file.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { readDataFormat } from "./format.ts";
 * assert(await readDataFormat(await Deno.makeTempDir()) === null);
 * ```
 */
export async function readDataFormat(dir: string): Promise<number | null> {
  let text: string;
  try {
    text = await Deno.readTextFile(`${dir}/${FORMAT_FILE}`);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw new XfError("STORAGE_ERROR", `Cannot read "${dir}/${FORMAT_FILE}": ${(e as Error).message}`);
  }
  if (!/^\d{1,9}\s*$/.test(text)) {
    throw new XfError("STORAGE_CORRUPTION", `Cannot read "${dir}/${FORMAT_FILE}": "${text.trim()}" is not an integer`);
  }
  return Number(text.trim());
}

/**
 * Prepare `dir` for a node that reads format `current`: refuse a newer
 * format (`DATA_FORMAT_TOO_NEW`) or a directory another process holds
 * (`STORAGE_ERROR`), then create the directory and write the format file.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { openDataDir, readDataFormat } from "./format.ts";
 * const dir = await Deno.makeTempDir();
 * assert((await openDataDir(dir, 1)).found === null && await readDataFormat(dir) === 1);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function openDataDir(dir: string, current: number): Promise<DataDirReport> {
  const written = await readDataFormat(dir);
  let found = written;
  if (found !== null && found > current) {
    throw new XfError(
      "DATA_FORMAT_TOO_NEW",
      `Cannot open data directory "${dir}": it is in data format ${found}, this node reads format ${current} and older`,
    );
  }
  if (found === null) {
    // Directories written before the format file existed are format 1.
    const old = await Array.fromAsync(Deno.readDir(dir)).then((a) => a.length > 0, () => false);
    if (old) found = 1;
  }
  await Deno.mkdir(`${dir}/db`, { recursive: true });
  // Fails with a clear message when another process holds the directory; closed at once for the index stage.
  await (await openRocks(`${dir}/db`)).close();
  if (written !== current) await Deno.writeTextFile(`${dir}/${FORMAT_FILE}`, `${current}\n`);
  return { found: found === null ? null : found, format: current };
}
