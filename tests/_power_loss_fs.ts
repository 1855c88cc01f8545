// A WalFs for tests that models a disk under a page cache: writes land in
// memory ("volatile"), syncData makes a file's data durable, syncDir makes
// the directory's entries durable, and powerLoss() throws away everything
// that was not made durable (keeping, like a real disk may, a random prefix
// of a file's unsynced tail). The WAL's own files are used unchanged, so a
// WAL that acknowledged before its fdatasync is caught.
//
// XF_NO_SYNC=1 makes syncData a no-op here (a test-only switch, never read by
// the WAL itself): the power-loss test must then fail, which shows it checks.
import type { WalFile, WalFs } from "../storage/wal.ts";

/** Options of {@linkcode PowerLossFs}. */
export interface PowerLossFsOptions {
  /** syncData does nothing (default: `XF_NO_SYNC=1` in the environment). */
  noSync?: boolean;
  /** Random numbers in [0, 1) for the torn tails kept at a power loss. */
  rand?: () => number;
}

/** A WalFs whose unsynced writes are lost at {@linkcode PowerLossFs.powerLoss}. */
export class PowerLossFs implements WalFs {
  /** What reads see now (the page cache). */
  readonly #volatile = new Map<string, Uint8Array>();
  /** Each file's data as of its last syncData. */
  readonly #durableData = new Map<string, Uint8Array>();
  /** Files whose directory entry was made durable by syncDir. */
  readonly #durableEntries = new Set<string>();
  readonly #noSync: boolean;
  readonly #rand: () => number;
  /** Bumped by each power loss: handles from before it fail. */
  #epoch = 0;
  /** Called before each write or sync; throw to simulate the power going at that moment. */
  beforeOp: (op: "write" | "sync") => void = () => {};
  /** syncData calls that made data durable. */
  syncs = 0;

  constructor(options: PowerLossFsOptions = {}) {
    this.#noSync = options.noSync ?? Deno.env.get("XF_NO_SYNC") === "1";
    this.#rand = options.rand ?? Math.random;
  }

  mkdir(_path: string): Promise<void> {
    return Promise.resolve();
  }

  readDir(path: string): Promise<string[]> {
    const names: string[] = [];
    for (const p of this.#volatile.keys()) {
      if (p.startsWith(`${path}/`) && !p.slice(path.length + 1).includes("/")) names.push(p.slice(path.length + 1));
    }
    return Promise.resolve(names);
  }

  readFile(path: string): Promise<Uint8Array> {
    const data = this.#volatile.get(path);
    if (!data) return Promise.reject(new Deno.errors.NotFound(`No file "${path}"`));
    return Promise.resolve(data.slice());
  }

  openFile(path: string, { create }: { create: boolean }): Promise<WalFile> {
    if (create && this.#volatile.has(path)) return Promise.reject(new Deno.errors.AlreadyExists(path));
    if (!create && !this.#volatile.has(path)) return Promise.reject(new Deno.errors.NotFound(path));
    if (create) this.#volatile.set(path, new Uint8Array());
    const epoch = this.#epoch;
    const alive = () => {
      if (epoch !== this.#epoch) throw new Error(`Power lost: "${path}" is gone`);
    };
    return Promise.resolve({
      write: (data: Uint8Array) => {
        try {
          alive();
          this.beforeOp("write");
          const old = this.#volatile.get(path) ?? new Uint8Array();
          const next = new Uint8Array(old.length + data.length);
          next.set(old);
          next.set(data, old.length);
          this.#volatile.set(path, next);
          return Promise.resolve();
        } catch (e) {
          return Promise.reject(e);
        }
      },
      syncData: () => {
        try {
          alive();
          this.beforeOp("sync");
          if (!this.#noSync) {
            this.#durableData.set(path, (this.#volatile.get(path) ?? new Uint8Array()).slice());
            this.syncs++;
          }
          return Promise.resolve();
        } catch (e) {
          return Promise.reject(e);
        }
      },
      close: () => {},
    });
  }

  truncate(path: string, length: number): Promise<void> {
    const data = this.#volatile.get(path);
    if (!data) return Promise.reject(new Deno.errors.NotFound(path));
    this.#volatile.set(path, data.slice(0, length));
    return Promise.resolve();
  }

  remove(path: string): Promise<void> {
    if (!this.#volatile.delete(path)) return Promise.reject(new Deno.errors.NotFound(path));
    return Promise.resolve();
  }

  syncDir(path: string): Promise<void> {
    for (const p of [...this.#durableEntries]) if (p.startsWith(`${path}/`)) this.#durableEntries.delete(p);
    for (const p of this.#volatile.keys()) if (p.startsWith(`${path}/`)) this.#durableEntries.add(p);
    return Promise.resolve();
  }

  /**
   * The power goes: open handles die, files whose entry was never synced
   * vanish, and each file keeps its synced data plus a random prefix of
   * what was written after it (a torn tail).
   */
  powerLoss(): void {
    this.#epoch++;
    const after = new Map<string, Uint8Array>();
    for (const p of this.#durableEntries) {
      const durable = this.#durableData.get(p) ?? new Uint8Array();
      const now = this.#volatile.get(p);
      let kept = durable;
      if (now && now.length > durable.length && startsWith(now, durable)) {
        kept = now.slice(0, durable.length + Math.floor(this.#rand() * (now.length - durable.length + 1)));
      }
      after.set(p, kept);
      this.#durableData.set(p, kept.slice());
    }
    this.#volatile.clear();
    for (const [p, d] of after) this.#volatile.set(p, d);
  }
}

function startsWith(a: Uint8Array, prefix: Uint8Array): boolean {
  if (prefix.length > a.length) return false;
  for (let i = 0; i < prefix.length; i++) if (a[i] !== prefix[i]) return false;
  return true;
}
