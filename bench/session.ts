// Encrypted sessions against the code path before them, in the same run: catch-up of a fresh node over loopback
// WebSocket and the time to open a session, measured by `bench/catchup.ts` with this tree's code and with the
// code of BASELINE (the last commit with plaintext sessions, checked out as a git worktree), alternating, RUNS
// times each. Also the handshake alone in-process and the AEAD's throughput.
//
// XF_BENCH_BASELINE=<commit> picks another baseline; XF_BENCH_SESSION_RUNS and XF_BENCH_CATCHUP_EVENTS size it.
import { channelPair } from "../net/peers.ts";
import { SecureChannel } from "../net/secure.ts";
import { generateKeyPair } from "../storage/ed25519.ts";
import { chacha20poly1305 } from "@noble/ciphers/chacha";
import type { Row } from "./_table.ts";

const BASELINE = Deno.env.get("XF_BENCH_BASELINE") ?? "1c90c10";
const RUNS = Number(Deno.env.get("XF_BENCH_SESSION_RUNS") ?? 3);
const EVENTS = Number(Deno.env.get("XF_BENCH_CATCHUP_EVENTS") ?? 40_000);

interface CatchUp {
  catchRate: number;
  handshakeMedianMs: number;
  ingestRate: number;
  same: boolean;
  bytesIn: number;
}

async function run(root: string): Promise<CatchUp> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL("./catchup.ts", import.meta.url).pathname, root, String(EVENTS)],
    stdout: "piped",
    stderr: "inherit",
  }).output();
  if (!out.success) throw new Error(`catch-up run on "${root || "this tree"}" failed`);
  return JSON.parse(new TextDecoder().decode(out.stdout).trim().split("\n").pop()!);
}

async function baselineTree(): Promise<string | null> {
  const dir = `${await Deno.makeTempDir({ prefix: "xf-baseline-" })}/tree`;
  const git = await new Deno.Command("git", {
    args: ["worktree", "add", "--detach", dir, BASELINE],
    cwd: new URL("..", import.meta.url).pathname,
    stdout: "null",
    stderr: "piped",
  }).output().catch(() => null);
  return git?.success ? dir : null;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const range = (xs: number[], d = 0) => `${Math.min(...xs).toFixed(d)}–${Math.max(...xs).toFixed(d)}`;

/** In-process handshakes (both sides in this thread): median ms of `n`. */
async function handshakes(n: number): Promise<number[]> {
  const a = await generateKeyPair(), b = await generateKeyPair();
  const ms: number[] = [];
  for (let i = 0; i < n; i++) {
    const [x, y] = channelPair();
    const t = performance.now();
    const opts = { purpose: "sync" as const, info: {}, frameMax: 1 << 20, handshakeMs: 5000 };
    const r = new SecureChannel(y, { ...opts, key: b, role: "responder" });
    const i2 = new SecureChannel(x, { ...opts, key: a, role: "initiator" });
    await Promise.all([i2.ready, r.ready]);
    ms.push(performance.now() - t);
    i2.close("done");
  }
  return ms;
}

export async function benchSession(): Promise<{ rows: Row[]; notes: string[] }> {
  const rows: Row[] = [];
  const notes: string[] = [];
  const hs = await handshakes(200);
  const key = crypto.getRandomValues(new Uint8Array(32));
  const frame = new Uint8Array(1 << 20);
  let bytes = 0;
  const t0 = performance.now();
  for (let k = 0; performance.now() - t0 < 1000; k++) {
    const nonce = new Uint8Array(12);
    new DataView(nonce.buffer).setUint32(0, k);
    chacha20poly1305(key, nonce).decrypt(chacha20poly1305(key, nonce).encrypt(frame));
    bytes += frame.length;
  }
  const aead = bytes / ((performance.now() - t0) / 1000) / 2 ** 20;
  const base = await baselineTree();
  if (!base) {
    notes.push(`baseline ${BASELINE} could not be checked out (no git history?): catch-up not compared`);
    return { rows, notes };
  }
  const ours: CatchUp[] = [], theirs: CatchUp[] = [];
  for (let i = 0; i < RUNS; i++) {
    console.error(`session: catch-up run ${i + 1}/${RUNS} (baseline, then encrypted) ...`);
    theirs.push(await run(base));
    ours.push(await run(""));
  }
  const oc = ours.map((r) => r.catchRate), tc = theirs.map((r) => r.catchRate);
  const oh = ours.map((r) => r.handshakeMedianMs), th = theirs.map((r) => r.handshakeMedianMs);
  rows.push({
    figure: `catch-up of ${EVENTS.toLocaleString("en-US")} events, encrypted (median ev/s of ${RUNS})`,
    value: median(oc),
    peer: `plaintext sessions of ${BASELINE} (median ev/s, same run); target ratio ≥ 0.90`,
    peerValue: median(tc),
  });
  rows.push({
    figure: "session open over loopback WebSocket, encrypted (median ms)",
    value: median(oh),
    peer: `challenge handshake of ${BASELINE} (median ms)`,
    peerValue: median(th),
    lowerIsBetter: true,
  });
  rows.push({
    figure: "handshake alone, both sides in one thread (median ms of 200)",
    value: median(hs),
    peer: "the encrypted session open above (median ms)",
    peerValue: median(oh),
    lowerIsBetter: true,
  });
  rows.push({
    figure: "ChaCha20-Poly1305 on 1 MiB frames, encrypt + decrypt (MiB/s)",
    value: aead,
    peer: "catch-up payload rate, encrypted run (MiB/s)",
    peerValue: median(ours.map((r) => r.bytesIn / (EVENTS / r.catchRate))) / 2 ** 20,
  });
  notes.push(
    `catch-up ev/s, encrypted: ${range(oc)}; plaintext ${BASELINE}: ${range(tc)}; per-run ratios ${
      oc.map((v, i) => (v / tc[i]!).toFixed(2)).join(", ")
    }; same root every run: ${ours.every((r) => r.same) && theirs.every((r) => r.same)}`,
  );
  notes.push(`session open ms, encrypted: ${range(oh, 1)}; plaintext: ${range(th, 1)}`);
  await new Deno.Command("git", {
    args: ["worktree", "remove", "--force", base],
    cwd: new URL("..", import.meta.url).pathname,
  }).output().catch(() => {});
  return { rows, notes };
}
