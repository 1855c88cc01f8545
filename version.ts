/**
 * The versions of Xaeroflux: the release (`xf --version`, `/health`) and
 * the data directory's on-disk format (`DATA/FORMAT`). Nothing is imported
 * here, so every layer may read it.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { DATA_FORMAT_VERSION, VERSION } from "./version.ts";
 * assert(/^\d+\.\d+\.\d+$/.test(VERSION) && Number.isInteger(DATA_FORMAT_VERSION));
 * ```
 *
 * @module
 */

/** The release, as `xf --version` prints it and `/health` answers it. */
export const VERSION = "0.4.0";

/**
 * The on-disk format of a data directory (WAL, RocksDB keys, Merkle pages),
 * written to `DATA/FORMAT`. Raise it when a change makes older nodes misread
 * the directory; a node refuses a directory of a newer format.
 */
export const DATA_FORMAT_VERSION = 1;
