/**
 * Time as a component takes it: the current time and timers, behind one
 * small interface, so a test can run a component on simulated time (a
 * virtual clock whose timers fire when the test advances it) and a node runs
 * it on the real one. Components take a {@linkcode Clock} optionally and
 * default to {@linkcode realClock}, so nothing changes where none is given.
 *
 * Pure: no Deno API (the browser client bundles it).
 *
 * @module
 */

/** A timer's handle, as `setTimeout` and `setInterval` give it. */
export type TimerHandle = ReturnType<typeof setTimeout>;

/** The current time and timers. */
export interface Clock {
  /** Milliseconds since the Unix epoch (a wall clock: it may be stepped either way). */
  now(): number;
  /** Milliseconds since an arbitrary start, never stepped: what durations (stalls, idleness) are measured on. */
  monotonic(): number;
  /** Call `fn` once after `ms` milliseconds. */
  setTimeout(fn: () => void, ms: number): TimerHandle;
  /** Cancel a timer of `setTimeout` (an unknown or undefined handle is ignored). */
  clearTimeout(handle: TimerHandle | undefined): void;
  /** Call `fn` every `ms` milliseconds. */
  setInterval(fn: () => void, ms: number): TimerHandle;
  /** Cancel a timer of `setInterval` (an unknown or undefined handle is ignored). */
  clearInterval(handle: TimerHandle | undefined): void;
}

/**
 * The real clock: `Date.now`, `performance.now` and the runtime's timers.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { realClock } from "./clock.ts";
 * const t = realClock.now();
 * await new Promise<void>((r) => realClock.setTimeout(r, 1));
 * assert(realClock.now() >= t);
 * ```
 */
export const realClock: Clock = Object.freeze({
  now: () => Date.now(),
  monotonic: () => performance.now(),
  setTimeout: (fn: () => void, ms: number) => setTimeout(fn, ms),
  clearTimeout: (h: TimerHandle | undefined) => clearTimeout(h),
  setInterval: (fn: () => void, ms: number) => setInterval(fn, ms),
  clearInterval: (h: TimerHandle | undefined) => clearInterval(h),
});

/** `n` random bytes a call: the source of a component's randomness (session ids, ephemeral keys, challenges). */
export type RandomSource = (n: number) => Uint8Array;

/**
 * The real random source: `crypto.getRandomValues`.
 *
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { realRandom } from "./clock.ts";
 * assertEquals(realRandom(16).length, 16);
 * ```
 */
export const realRandom: RandomSource = (n) => crypto.getRandomValues(new Uint8Array(n));
