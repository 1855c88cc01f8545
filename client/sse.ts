/**
 * A `text/event-stream` reader over any byte stream (a `fetch` body), with
 * the parsing rules of `EventSource` (HTML §9.2.6): lines end in CRLF, LF
 * or CR; a blank line dispatches; `data` lines join with LF; `id` persists
 * across messages; comment lines (`:`) are reported as activity only.
 *
 * @module
 */

import { XfClientError } from "./errors.ts";

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
/** Most `data` characters one message gathers (a bound against a stream with no blank line). */
export const SSE_MESSAGE_BYTES_MAX = 1 << 20;

/**
 * The messages of an event stream, in order. `onActivity` is called for
 * every chunk read (heartbeat comments included), for stall detection.
 * Throws {@linkcode XfClientError} `BAD_RESPONSE` when a line is longer than
 * {@linkcode SSE_LINE_BYTES_MAX} or a message's data than
 * {@linkcode SSE_MESSAGE_BYTES_MAX}.
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
  // Decoded here rather than by TextDecoderStream: Deno's streaming decoder also drops a U+FEFF that
  // starts the second chunk (found by tests/fuzz_test.ts); only the stream's first character may be a BOM.
  const reader = body.getReader();
  const decoder = new TextDecoder("utf-8", { ignoreBOM: true });
  let first = true;
  /** The unterminated line so far, in pieces (joined once, when it ends: each character is scanned once). */
  let pending: string[] = [];
  let pendingChars = 0;
  let event = "", data: string[] = [], dataChars = 0, lastEventId = "";
  let skipLf = false;
  try {
    while (true) {
      const { done, value: bytes } = await reader.read();
      if (done) return;
      let text = decoder.decode(bytes, { stream: true });
      if (first && text.length > 0) {
        first = false;
        if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
      }
      onActivity?.();
      let start = 0;
      for (let i = 0; i < text.length; i++) {
        const c = text.charCodeAt(i);
        if (skipLf) {
          skipLf = false;
          if (c === 10) {
            start = i + 1;
            continue;
          }
        }
        if (c !== 10 && c !== 13) continue;
        let line = text.slice(start, i);
        if (pending.length > 0) {
          line = pending.join("") + line;
          pending = [];
          pendingChars = 0;
        }
        start = i + 1;
        if (c === 13) skipLf = true;
        if (line === "") {
          if (data.length > 0) yield { event: event || "message", data: data.join("\n"), lastEventId };
          event = "";
          data = [];
          dataChars = 0;
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "event") event = value;
        else if (field === "data") {
          dataChars += value.length + 1;
          if (dataChars > SSE_MESSAGE_BYTES_MAX) {
            throw new XfClientError(
              "BAD_RESPONSE",
              `Cannot read event stream: a message's data is longer than ${SSE_MESSAGE_BYTES_MAX} characters`,
            );
          }
          data.push(value);
        } else if (field === "id" && !value.includes("\0")) lastEventId = value;
      }
      if (start < text.length) {
        pending.push(text.slice(start));
        pendingChars += text.length - start;
        if (pendingChars > SSE_LINE_BYTES_MAX) {
          throw new XfClientError(
            "BAD_RESPONSE",
            `Cannot read event stream: a line is longer than ${SSE_LINE_BYTES_MAX} characters`,
          );
        }
      }
    }
  } finally {
    await reader.cancel().catch(() => {});
  }
}
