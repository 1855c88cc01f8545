/**
 * Reading a group export: a CBOR sequence (RFC 8742) of an optional header
 * map `{"xf-export": 1, group, count, root}` and then events, each its exact
 * bytes (see `net/export.ts` for the format). Items are found with
 * `skipItem` as the bytes arrive, so neither a response nor a file is ever
 * held whole.
 *
 * @module
 */

import { decodeCbor, skipItem } from "../storage/cbor.ts";
import { XfError } from "../core/errors.ts";
import { XfClientError } from "./errors.ts";

/** Largest item of an export sequence (an event is at most 64 KiB on a node with default limits). */
export const EXPORT_ITEM_BYTES_MAX = 1024 * 1024;

/** The first item of an export: what the group looked like when the export began. */
export interface ExportHeader {
  /** Format version (1). */
  version: number;
  /** Group id, hex. */
  group: string;
  /** Events in the group (its Merkle count). */
  count: number;
  /** The group's Merkle root, hex. */
  root: string;
}

/** One item of an export: its header, or an event's exact bytes. */
export type ExportItem = { type: "header"; header: ExportHeader } | { type: "event"; bytes: Uint8Array };

/**
 * The items of a CBOR sequence arriving in chunks of any size, each as its
 * own bytes. Throws {@linkcode XfClientError} `BAD_RESPONSE` for bytes that
 * are not a sequence of well-formed items, an item over `itemBytesMax`, or a
 * sequence cut in the middle of an item.
 *
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { splitCborSeq } from "./export.ts";
 * // 1, [2, 3], "a", cut anywhere.
 * const chunks = [new Uint8Array([0x01, 0x82]), new Uint8Array([0x02, 0x03, 0x61, 0x61])];
 * const items = await Array.fromAsync(splitCborSeq(chunks));
 * assertEquals(items.map((b) => b.length), [1, 3, 2]);
 * ```
 */
export async function* splitCborSeq(
  chunks: AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
  itemBytesMax: number = EXPORT_ITEM_BYTES_MAX,
): AsyncGenerator<Uint8Array> {
  let buf = new Uint8Array(0);
  let offset = 0; // bytes of the sequence before buf[0], for messages
  for await (const chunk of chunks) {
    if (chunk.length === 0) continue;
    const joined = new Uint8Array(buf.length + chunk.length);
    joined.set(buf);
    joined.set(chunk, buf.length);
    buf = joined;
    let pos = 0;
    while (pos < buf.length) {
      let end: number;
      try {
        end = skipItem(buf, pos);
      } catch (e) {
        if (e instanceof XfError && e.message.includes("truncated")) break;
        throw new XfClientError("BAD_RESPONSE", `Cannot read export at byte ${offset + pos}: ${(e as Error).message}`);
      }
      if (end - pos > itemBytesMax) {
        throw new XfClientError(
          "BAD_RESPONSE",
          `Cannot read export at byte ${offset + pos}: item over ${itemBytesMax} bytes`,
        );
      }
      yield buf.slice(pos, end);
      pos = end;
    }
    if (buf.length - pos > itemBytesMax) {
      throw new XfClientError(
        "BAD_RESPONSE",
        `Cannot read export at byte ${offset + pos}: item over ${itemBytesMax} bytes`,
      );
    }
    buf = buf.slice(pos);
    offset += pos;
  }
  if (buf.length > 0) {
    throw new XfClientError("BAD_RESPONSE", `Cannot read export: it ends inside the item at byte ${offset}`);
  }
}

/** The header an item holds, or null when it is not a header (a map with `xf-export`). */
export function readExportHeader(item: Uint8Array): ExportHeader | null {
  if (item[0] === undefined || item[0] >> 5 !== 5) return null;
  let m: unknown;
  try {
    m = decodeCbor(item);
  } catch {
    return null;
  }
  if (!(m instanceof Map) || !m.has("xf-export")) return null;
  const version = m.get("xf-export"), group = m.get("group"), count = m.get("count"), root = m.get("root");
  if (
    typeof version !== "number" || typeof group !== "string" || !/^[0-9a-f]{64}$/.test(group) ||
    typeof count !== "number" || typeof root !== "string" || !/^[0-9a-f]{64}$/.test(root)
  ) {
    throw new XfClientError("BAD_RESPONSE", "Cannot read export header: expected {xf-export, group, count, root}");
  }
  if (version !== 1) throw new XfClientError("BAD_RESPONSE", `Cannot read export of version "${version}": expected 1`);
  return { version, group, count, root };
}

/**
 * The items of an export arriving in chunks (a response body, a file): the
 * header if the first item is one, then every event's bytes, unchecked (a
 * node checks them on import; `XfClient.exportGroup` checks what it reads).
 *
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { encodeCbor } from "../storage/cbor.ts";
 * import { readExport } from "./export.ts";
 * const header = encodeCbor(new Map<string, string | number>([
 *   ["xf-export", 1], ["group", "ab".repeat(32)], ["count", 0], ["root", "00".repeat(32)],
 * ]) as never);
 * const items = await Array.fromAsync(readExport([header]));
 * assertEquals(items[0]?.type, "header");
 * ```
 */
export async function* readExport(
  chunks: AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
): AsyncGenerator<ExportItem> {
  let first = true;
  for await (const item of splitCborSeq(chunks)) {
    const header = first ? readExportHeader(item) : null;
    first = false;
    yield header ? { type: "header", header } : { type: "event", bytes: item };
  }
}
