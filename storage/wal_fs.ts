/**
 * The file operations the WAL uses ({@linkcode WalFs}), their Deno
 * implementation, and how a failed operation becomes `STORAGE_ERROR`. Tests
 * inject their own {@linkcode WalFs} to simulate faults and power loss.
 *
 * @module
 */

import { XfError } from "../core/errors.ts";

/** An open segment file, positioned for appending. */
export interface WalFile {
  /** Write all of `data` at the end of the file. */
  write(data: Uint8Array): Promise<void>;
  /** Flush the file's data (and the metadata needed to read it) to disk. */
  syncData(): Promise<void>;
  /** Close the file. */
  close(): void;
}

/**
 * The file operations the WAL needs. The default is {@linkcode denoWalFs};
 * tests inject their own to simulate faults (a write that throws, a sync that
 * fails).
 */
export interface WalFs {
  /** Create a directory and its parents; succeed if it exists. */
  mkdir(path: string): Promise<void>;
  /** Names of the files (not directories) in a directory. */
  readDir(path: string): Promise<string[]>;
  /** The whole contents of a file. */
  readFile(path: string): Promise<Uint8Array>;
  /** Open a file for appending; with `create`, make a new file and fail if it exists. */
  openFile(path: string, options: { create: boolean }): Promise<WalFile>;
  /** Cut a file to `length` bytes. */
  truncate(path: string, length: number): Promise<void>;
  /** Delete a file. */
  remove(path: string): Promise<void>;
  /** Make a directory's entries durable (new and deleted files); optional. */
  syncDir?(path: string): Promise<void>;
}

/** {@linkcode WalFs} over the real Deno file APIs. */
export const denoWalFs: WalFs = {
  mkdir: (path) => Deno.mkdir(path, { recursive: true }),
  async readDir(path) {
    const names: string[] = [];
    for await (const e of Deno.readDir(path)) if (e.isFile) names.push(e.name);
    return names;
  },
  readFile: (path) => Deno.readFile(path),
  async openFile(path, { create }) {
    const f = await Deno.open(
      path,
      create ? { createNew: true, append: true } : { append: true },
    );
    return {
      async write(data) {
        let off = 0;
        while (off < data.length) {
          const n = await f.write(data.subarray(off));
          if (n <= 0) {
            throw new Error(`Cannot write "${path}": write returned ${n}`);
          }
          off += n;
        }
      },
      syncData: () => f.syncData(),
      close: () => f.close(),
    };
  },
  truncate: (path, length) => Deno.truncate(path, length),
  remove: (path) => Deno.remove(path),
  async syncDir(path) {
    if (Deno.build.os === "windows") return; // Directories cannot be opened for fsync there.
    const d = await Deno.open(path, { read: true });
    try {
      await d.sync();
    } finally {
      d.close();
    }
  },
};

/** Await `p`; a failure becomes `STORAGE_ERROR` saying `what` could not be done. */
export async function io<T>(p: Promise<T>, what: string): Promise<T> {
  try {
    return await p;
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
    throw new XfError("STORAGE_ERROR", `${what}: ${msg}`, { cause: e });
  }
}
