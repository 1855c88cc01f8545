/**
 * Lower the priority of the calling thread (Linux): a stage off the acknowledgement path (the index) runs at a
 * higher nice value in its Worker, so that on a machine with fewer cores than busy threads the threads an
 * acknowledgement waits for (HTTP, ingest, decode, verification, the WAL) are scheduled first. Work is not lost or
 * reordered, only scheduled later when the cores are busy; with idle cores the thread runs at full speed.
 *
 * Needs `--allow-ffi` (libc's `gettid` and `setpriority`); anywhere that is missing (another OS, no permission, a
 * browser) it does nothing and says why.
 *
 * @module
 */

/** `setpriority`'s `which` for one process or, on Linux, one thread id. */
const PRIO_PROCESS = 0;

/**
 * Set the calling thread's nice value to `nice` (0–19; only lowering is allowed without privileges). Returns null
 * when done, else why not.
 */
export function niceThisThread(nice: number): string | null {
  if (!Number.isInteger(nice) || nice < 0 || nice > 19) return `nice ${nice} is not an integer in 0..19`;
  if (Deno.build.os !== "linux") return `thread priority is Linux only (this is ${Deno.build.os})`;
  let lib: Deno.DynamicLibrary<{
    gettid: { parameters: []; result: "i32" };
    setpriority: { parameters: ["i32", "u32", "i32"]; result: "i32" };
  }>;
  try {
    lib = Deno.dlopen("libc.so.6", {
      gettid: { parameters: [], result: "i32" },
      setpriority: { parameters: ["i32", "u32", "i32"], result: "i32" },
    });
  } catch (e) {
    return `cannot load libc: ${(e as Error).message}`;
  }
  try {
    const tid = lib.symbols.gettid();
    return lib.symbols.setpriority(PRIO_PROCESS, tid, nice) === 0 ? null : `setpriority(${tid}, ${nice}) failed`;
  } finally {
    lib.close();
  }
}
