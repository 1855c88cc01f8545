// Shared helpers of the benchmark scripts: the result table and percentiles.

/** One figure beside the limit or peer it is compared with. */
export interface Row {
  figure: string;
  value: number;
  peer: string;
  peerValue: number;
  /** For latencies and sizes: the ratio is limit / value, so ≥ 1 is good either way. */
  lowerIsBetter?: boolean;
}

/** Percentiles and hex: one copy, in core/bytes.ts. */
export { percentile, toHex } from "../core/bytes.ts";

function fmt(n: number): string {
  if (!Number.isFinite(n)) return String(n);
  if (Math.abs(n) >= 1000) return Math.round(n).toLocaleString("en-US");
  if (Math.abs(n) >= 10) return n.toFixed(1);
  return n.toFixed(3);
}

/** A markdown table; ratio ≥ 1 means the figure meets or beats the peer or limit. */
export function table(title: string, rows: Row[]): string {
  const lines = [
    `### ${title}`,
    "",
    "| figure | value | compared with | its value | ratio: its value ÷ value where lower is better, else value ÷ its value (≥ 1 is good) |",
    "|---|---:|---|---:|---:|",
  ];
  for (const r of rows) {
    const ratio = r.lowerIsBetter ? r.peerValue / r.value : r.value / r.peerValue;
    lines.push(`| ${r.figure} | ${fmt(r.value)} | ${r.peer} | ${fmt(r.peerValue)} | ${ratio.toFixed(2)} |`);
  }
  return lines.join("\n");
}
