/**
 * A Prometheus histogram of durations in seconds: cumulative buckets,
 * `_sum` and `_count`, written in the text exposition format. Plain
 * numbers, no clock inside: callers measure and call `observe`.
 *
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { Histogram } from "./histogram.ts";
 * const h = new Histogram();
 * h.observe(0.003);
 * h.observe(0.2, 2);
 * assertEquals(h.count, 3);
 * assertEquals(h.lines("xf_x_seconds").at(-1), "xf_x_seconds_count 3");
 * ```
 *
 * @module
 */

/** Upper bounds of the buckets, in seconds (the last, `+Inf`, is implied). */
export const SECONDS_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10] as const;

/** A histogram as plain data. */
export interface HistogramData {
  counts: number[];
  sum: number;
  count: number;
}

/** Observations counted per bucket, with their sum and count. */
export class Histogram {
  /** Per bucket (not cumulative), the last one `+Inf`. */
  readonly #counts: number[];
  sum = 0;
  count = 0;

  constructor(readonly bounds: readonly number[] = SECONDS_BUCKETS) {
    this.#counts = new Array(bounds.length + 1).fill(0);
  }

  /** Count `n` observations of `value` (seconds). */
  observe(value: number, n = 1): void {
    if (!(n > 0) || !Number.isFinite(value)) return;
    const v = Math.max(0, value);
    let i = 0;
    while (i < this.bounds.length && v > this.bounds[i]!) i++;
    this.#counts[i]! += n;
    this.sum += v * n;
    this.count += n;
  }

  /** Plain data, to cross a Worker boundary. */
  snapshot(): HistogramData {
    return { counts: [...this.#counts], sum: this.sum, count: this.count };
  }

  /** Add another histogram's data (same bounds). */
  merge(d: HistogramData): void {
    d.counts.forEach((c, i) => (this.#counts[i]! += c));
    this.sum += d.sum;
    this.count += d.count;
  }

  /** The upper bound of the bucket holding quantile `q` (0..1); Infinity past the last bound, 0 when empty. */
  quantile(q: number): number {
    if (this.count === 0) return 0;
    const rank = q * this.count;
    let acc = 0;
    for (let i = 0; i < this.#counts.length; i++) {
      acc += this.#counts[i]!;
      if (acc >= rank) return i < this.bounds.length ? this.bounds[i]! : Infinity;
    }
    return Infinity;
  }

  /** The `_bucket`, `_sum` and `_count` sample lines of `name`, buckets cumulative. */
  lines(name: string): string[] {
    const out: string[] = [];
    let acc = 0;
    for (let i = 0; i < this.#counts.length; i++) {
      acc += this.#counts[i]!;
      const le = i < this.bounds.length ? String(this.bounds[i]) : "+Inf";
      out.push(`${name}_bucket{le="${le}"} ${acc}`);
    }
    out.push(`${name}_sum ${this.sum}`, `${name}_count ${this.count}`);
    return out;
  }
}
