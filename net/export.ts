/**
 * A group as a verifiable CBOR sequence (RFC 8742: CBOR items one after
 * another, no array around them), what `GET /v1/groups/:gid/export` sends
 * and `xf export` writes to a file:
 *
 * | item | what |
 * |---|---|
 * | 1 | header, a map `{"xf-export": 1, "group": gid hex, "count": n, "root": hex}`: the group's Merkle root and event count when the export began |
 * | 2 | the group's manifest (kind 0): its exact bytes (an event is itself one CBOR item, an array) |
 * | … | its membership events (kind 1) in `(ts, id)` order |
 * | … | every other event in `(ts, id)` order |
 *
 * Each event is the event's exact bytes, so its id is SHA-256 of the item
 * and its signature is checked by whoever imports it: the file needs no
 * trust in the node that wrote it, and holds no key of that node. Importing
 * it in order into any node (even one that has never seen the group)
 * rebuilds the same set, hence the same root and count as the header.
 *
 * The stream reads the index one page at a time (`export_page_events_max`
 * events) when the consumer pulls, so a group of any size costs one or two
 * pages of memory. Events indexed after the export began are left out
 * (the arrival-seq snapshot a stream uses); an event deleted while the
 * export runs may still leave the header's root and count behind.
 *
 * @module
 */

import type { NodeCore } from "./node_api.ts";
import { encodeCbor } from "../storage/cbor.ts";
import { KIND_MANIFEST, KIND_MEMBERSHIP, peekEvent } from "../storage/event.ts";
import { SNAPSHOT_TRIES_MAX } from "../core/limits.ts";

/** Media type of a CBOR sequence (RFC 8742). */
export const CBOR_SEQ = "application/cbor-seq";

/** Value of the header's `xf-export` key: the format version. */
export const EXPORT_VERSION = 1;

/** The section of an export being read: manifest, membership events, everything else. */
type Section = { kinds: number[]; skip: (kind: number) => boolean };

const SECTIONS: Section[] = [
  { kinds: [KIND_MANIFEST], skip: () => false },
  { kinds: [KIND_MEMBERSHIP], skip: () => false },
  { kinds: [], skip: (k) => k === KIND_MANIFEST || k === KIND_MEMBERSHIP },
];

/**
 * The export of group `gid` (hex) as a byte stream, or null when the node
 * does not hold the group. The caller checks who may read it first.
 *
 * @example
 * ```ts
 * import { assert } from "@std/assert";
 * import { openNode } from "../node.ts";
 * import { exportStream } from "./export.ts";
 * const dir = await Deno.makeTempDir();
 * const node = await openNode({ dataDir: dir, workers: false });
 * assert((await exportStream(node, "00".repeat(32))) === null);
 * await node.close();
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function exportStream(node: NodeCore, gid: string): Promise<ReadableStream<Uint8Array> | null> {
  let info = await node.merkle(gid);
  if (!info) return null;
  // A consistent header: the last arrival seq did not move while the root was read.
  let seq = await node.lastArrival(gid);
  for (let i = 1; i < SNAPSHOT_TRIES_MAX; i++) {
    const again = await node.merkle(gid);
    const seq2 = await node.lastArrival(gid);
    if (!again) return null;
    const same = seq2 === seq && again.root === info.root;
    info = again;
    seq = seq2;
    if (same) break;
  }
  const header = new Map<string, string | number>([
    ["xf-export", EXPORT_VERSION],
    ["group", gid],
    ["count", info.count],
    ["root", info.root],
  ]);
  const pageMax = Math.max(1, Math.min(node.limits.export_page_events_max, node.limits.query_limit_max));
  let section = 0;
  let cursor: string | null = null;
  let headerSent = false;
  return new ReadableStream<Uint8Array>({
    // One page per pull: the stream asks for more only when its consumer has taken the last.
    async pull(ctl) {
      if (!headerSent) {
        headerSent = true;
        ctl.enqueue(encodeCbor(header as never));
        return;
      }
      while (section < SECTIONS.length) {
        const s = SECTIONS[section]!;
        const page = await node.query({
          gid,
          limit: pageMax,
          kinds: s.kinds,
          maxSeq: seq,
          ...(cursor ? { cursor } : {}),
        });
        cursor = page?.cursor ?? null;
        if (!cursor) section++;
        const events = (page?.events ?? []).filter((b) => !s.skip(peekEvent(b)?.kind ?? -1));
        if (events.length === 0) continue;
        let n = 0;
        for (const b of events) n += b.length;
        const chunk = new Uint8Array(n);
        let o = 0;
        for (const b of events) {
          chunk.set(b, o);
          o += b.length;
        }
        ctl.enqueue(chunk);
        return;
      }
      ctl.close();
    },
  }, { highWaterMark: 0 });
}
