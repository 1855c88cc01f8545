/**
 * Frame channels under a sync or DHT session: a WebSocket (the browser's
 * and Deno's, which are the same API) and, for tests, two channels piped
 * together in-process. No Deno API: the replica (`client/replica.ts`)
 * bundles this.
 *
 * @module
 */

import type { FrameChannel } from "./secure.ts";

/** A WebSocket as a {@linkcode FrameChannel}. */
export function socketChannel(ws: WebSocket): FrameChannel {
  ws.binaryType = "arraybuffer";
  const ch: FrameChannel = {
    send: (f) => {
      if (ws.readyState === WebSocket.OPEN) ws.send(f);
    },
    close: (reason, code = 1000) => {
      try {
        // A browser-style client socket may only send 1000 or 3000..4999: 1002/1008 go as 4002/4008.
        ws.close(code === 1000 || code >= 3000 ? code : 4000 + (code % 1000), reason.slice(0, 120));
      } catch { /* closed already */ }
    },
    onFrame: null,
    onClose: null,
    buffered: () => ws.bufferedAmount,
  };
  ws.onmessage = (ev) => {
    const data = ev.data instanceof ArrayBuffer ? new Uint8Array(ev.data) : null;
    if (data) ch.onFrame?.(data);
    else ch.onFrame?.(new Uint8Array(0)); // text frames are not part of the protocol
  };
  ws.onclose = (ev) => ch.onClose?.(ev.reason || `closed (${ev.code})`);
  ws.onerror = () => {};
  return ch;
}

/** Two channels piped together in-process (tests, like hypercore's stream pairs). */
export function channelPair(): [FrameChannel, FrameChannel] {
  const mk = (): FrameChannel => ({ send: () => {}, close: () => {}, onFrame: null, onClose: null });
  const a = mk(), b = mk();
  let open = true;
  a.send = (f) => open && queueMicrotask(() => b.onFrame?.(f.slice()));
  b.send = (f) => open && queueMicrotask(() => a.onFrame?.(f.slice()));
  const close = (reason: string) => {
    if (!open) return;
    open = false;
    queueMicrotask(() => {
      a.onClose?.(reason);
      b.onClose?.(reason);
    });
  };
  a.close = close;
  b.close = close;
  return [a, b];
}
