// A hand-driven peer for attack tests: it completes the real session handshake (net/secure.ts) with any
// key and info it likes, then sends whatever frames the test wants and records what comes back.
import { type FrameChannel, SecureChannel, type SessionPurpose } from "../net/secure.ts";
import { channelPair, socketChannel } from "../net/peers.ts";
import { decodeCbor, encodeCbor } from "../storage/cbor.ts";
import type { KeyPair } from "../storage/ed25519.ts";

/** Frames decoded as maps. */
export type F = Map<string, unknown>;

/** Info a well-behaved sync peer sends in its handshake. */
export const SYNC_INFO = { v: 2, frame: 1 << 20, credit: 1000, creditBytes: 4 << 20 };

/** A peer over `raw` (one end of a pipe or a WebSocket): handshake as initiator, then free-form frames. */
export function handPeer(raw: FrameChannel, key: KeyPair, purpose: SessionPurpose, info: Record<string, unknown>) {
  const sec = new SecureChannel(raw, {
    key,
    purpose,
    role: "initiator",
    info: info as never,
    frameMax: 64 << 20,
    handshakeMs: 5000,
  });
  const frames: F[] = [];
  let closedReason: string | null = null;
  const waiters: (() => void)[] = [];
  sec.onFrame = (f) => {
    frames.push(decodeCbor(f) as F);
    waiters.splice(0).forEach((w) => w());
  };
  sec.onClose = (r) => {
    closedReason = r;
    waiters.splice(0).forEach((w) => w());
  };
  // Frames asked for before the handshake completes go out once it has, in order.
  const send = (t: string, fields: Record<string, unknown> = {}) =>
    void sec.ready.then(
      () => sec.send(encodeCbor(new Map<string, unknown>([["t", t], ...Object.entries(fields)]) as never)),
      () => {},
    );
  const next = async (t: string, ms = 3000): Promise<F> => {
    const end = Date.now() + ms;
    while (Date.now() < end) {
      const i = frames.findIndex((f) => f.get("t") === t);
      if (i >= 0) return frames.splice(i, 1)[0]!;
      if (closedReason !== null) throw new Error(`closed (${closedReason}) before a "${t}" frame`);
      await new Promise<void>((r) => {
        waiters.push(r);
        setTimeout(r, 50);
      });
    }
    throw new Error(`no "${t}" frame within ${ms} ms`);
  };
  const closed = async (ms = 3000) => {
    const end = Date.now() + ms;
    while (closedReason === null && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
    return closedReason ?? "";
  };
  /** The code of the error frame that ended the session ("" if none). */
  const endCode = async (ms = 3000) => {
    const reason = await closed(ms);
    const err = frames.find((f) => f.get("t") === "error" && f.get("gid") === undefined);
    return String(err?.get("code") ?? reason.split(":")[0]);
  };
  return { sec, send, next, closed, endCode, frames, raw };
}

/** A hand peer piped in-process to `accept` (e.g. a node's `sync.accept`). */
export function pipedPeer(
  accept: (ch: FrameChannel) => unknown,
  key: KeyPair,
  purpose: SessionPurpose = "sync",
  info: Record<string, unknown> = SYNC_INFO,
) {
  const [mine, theirs] = channelPair();
  accept(theirs);
  return handPeer(mine, key, purpose, info);
}

/** A hand peer over a real WebSocket to `url` + `path` (`/v1/sync` or `/v1/dht`). */
export async function socketPeer(
  url: string,
  path: string,
  key: KeyPair,
  purpose: SessionPurpose,
  info: Record<string, unknown>,
) {
  const ws = new WebSocket(url.replace(/^http/, "ws") + path);
  await new Promise<void>((resolve, reject) => {
    ws.onopen = () => resolve();
    ws.onerror = () => reject(new Error(`cannot connect to ${url}${path}`));
  });
  const p = handPeer(socketChannel(ws), key, purpose, info);
  return { ...p, ws };
}
