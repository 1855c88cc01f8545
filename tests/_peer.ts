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
    return String(err?.get("code") ?? reason.replace(/^peer error /, "").split(":")[0]);
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

/**
 * A hand peer over a WebSocket spoken by hand on a raw TCP connection, so the test decides when it reads:
 * `stopReading()` makes it a peer that never reads (the node's socket buffer fills).
 */
export async function tcpPeer(
  url: string,
  path: string,
  key: KeyPair,
  purpose: SessionPurpose,
  info: Record<string, unknown>,
) {
  const u = new URL(url);
  const conn = await Deno.connect({ hostname: u.hostname, port: Number(u.port) });
  const te = new TextEncoder();
  let writing: Promise<unknown> = Promise.resolve();
  const write = (b: Uint8Array) => {
    writing = writing.then(async () => {
      for (let o = 0; o < b.length;) o += await conn.write(b.subarray(o));
    }).catch(() => {});
  };
  const wsKey = btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(16))));
  write(te.encode(
    `GET ${path} HTTP/1.1\r\nHost: ${u.host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
      `Sec-WebSocket-Key: ${wsKey}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
  ));
  let buf = new Uint8Array(0);
  const more = async () => {
    const b = new Uint8Array(64 * 1024);
    const n = await conn.read(b);
    if (n === null) return false;
    const next = new Uint8Array(buf.length + n);
    next.set(buf);
    next.set(b.subarray(0, n), buf.length);
    buf = next;
    return true;
  };
  for (;;) {
    const end = new TextDecoder().decode(buf).indexOf("\r\n\r\n");
    if (end >= 0) {
      if (!new TextDecoder().decode(buf.subarray(0, end)).startsWith("HTTP/1.1 101")) {
        throw new Error("WebSocket upgrade refused");
      }
      buf = buf.slice(end + 4);
      break;
    }
    if (!(await more())) throw new Error("connection closed during upgrade");
  }
  const ch: FrameChannel = {
    send(f) {
      // Client frames are masked (RFC 6455 §5.3).
      const len = f.length;
      const head = len < 126 ? [0x82, 0x80 | len] : len < 65536 ? [0x82, 0x80 | 126, len >> 8, len & 0xff] : [
        0x82,
        0x80 | 127,
        ...Array.from({ length: 8 }, (_, i) => Number((BigInt(len) >> BigInt(8 * (7 - i))) & 0xffn)),
      ];
      const mask = crypto.getRandomValues(new Uint8Array(4));
      const out = new Uint8Array(head.length + 4 + len);
      out.set(head);
      out.set(mask, head.length);
      for (let i = 0; i < len; i++) out[head.length + 4 + i] = f[i]! ^ mask[i & 3]!;
      write(out);
    },
    close() {
      try {
        conn.close();
      } catch { /* closed already */ }
    },
    onFrame: null,
    onClose: null,
  };
  let reading = true;
  let ended = false;
  const end = (why: string) => {
    if (ended) return;
    ended = true;
    ch.onClose?.(why);
  };
  (async () => {
    try {
      for (;;) {
        while (buf.length >= 2) {
          const op = buf[0]! & 0x0f;
          let len = buf[1]! & 0x7f, o = 2;
          if (len === 126) {
            if (buf.length < 4) break;
            len = (buf[2]! << 8) | buf[3]!;
            o = 4;
          } else if (len === 127) {
            if (buf.length < 10) break;
            len = Number(new DataView(buf.buffer, buf.byteOffset + 2, 8).getBigUint64(0));
            o = 10;
          }
          if (buf.length < o + len) break;
          const payload = buf.slice(o, o + len);
          buf = buf.slice(o + len);
          if (op === 2) ch.onFrame?.(payload);
          if (op === 8) return end("closed by the node");
        }
        if (!reading) return;
        if (!(await more())) return end("connection closed");
      }
    } catch (e) {
      end(String(e));
    }
  })();
  const p = handPeer(ch, key, purpose, info);
  return {
    ...p,
    conn,
    /** From now on nothing more is read from the socket. */
    stopReading() {
      reading = false;
    },
  };
}
