/**
 * A `text/event-stream` reader over any byte stream (a `fetch` body), with
 * the parsing rules of `EventSource` (HTML §9.2.6): lines end in CRLF, LF
 * or CR; a blank line dispatches; `data` lines join with LF; `id` persists
 * across messages; comment lines (`:`) are reported as activity only.
 *
 * @module
 */

/** One dispatched server-sent message. */
export interface SseMessage {
  /** The `event` field; "message" when none. */
  event: string;
  data: string;
  /** The last event id seen on the stream (it persists, as in EventSource). */
  lastEventId: string;
}

/** Longest line the reader buffers (a bound against a stream with no newline). */
export const SSE_LINE_BYTES_MAX = 1 << 20;

/**
 * The messages of an event stream, in order. `onActivity` is called for
 * every chunk read (heartbeat comments included), for stall detection.
 *
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { readSse } from "./sse.ts";
 * const body = new Blob([": hb\n\nevent: ready\ndata: {\"cursor\":null}\n\nid: 7\r\ndata: a\r\ndata: b\r\n\r\n"]).stream();
 * const got = [];
 * for await (const m of readSse(body)) got.push(m);
 * assertEquals(got, [
 *   { event: "ready", data: '{"cursor":null}', lastEventId: "" },
 *   { event: "message", data: "a\nb", lastEventId: "7" },
 * ]);
 * ```
 */
export async function* readSse(
  body: ReadableStream<Uint8Array>,
  onActivity?: () => void,
): AsyncGenerator<SseMessage> {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  let event = "", data: string[] = [], lastEventId = "";
  let skipLf = false;
  try {
    while (true) {
      const { done, value } = await reader.read();
      if (done) return;
      onActivity?.();
      buf += value;
      let start = 0;
      for (let i = 0; i < buf.length; i++) {
        const c = buf.charCodeAt(i);
        if (skipLf) {
          skipLf = false;
          if (c === 10) {
            start = i + 1;
            continue;
          }
        }
        if (c !== 10 && c !== 13) continue;
        const line = buf.slice(start, i);
        start = i + 1;
        if (c === 13) skipLf = true;
        if (line === "") {
          if (data.length > 0) yield { event: event || "message", data: data.join("\n"), lastEventId };
          event = "";
          data = [];
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "event") event = value;
        else if (field === "data") data.push(value);
        else if (field === "id" && !value.includes("\0")) lastEventId = value;
      }
      buf = buf.slice(start);
      if (buf.length > SSE_LINE_BYTES_MAX) {
        throw new Error(`Cannot read event stream: a line is longer than ${SSE_LINE_BYTES_MAX} characters`);
      }
    }
  } finally {
    await reader.cancel().catch(() => {});
  }
}
