/**
 * Retention: the pure rules of a group's settings event (kind 3, `KIND_SETTINGS` in `event.ts`) and of the
 * boundary past which every node forgets the group's application events. Shared by the decode stage, the index
 * and (later) a browser replica.
 *
 * A settings event's payload is the deterministic CBOR map of `retention_ms` and/or `retention_events`, each a
 * positive integer (at most {@linkcode RETENTION_MS_MAX} and {@linkcode RETENTION_EVENTS_MAX}); the empty map keeps
 * everything. Anything else is `BAD_EVENT`. It is signed by the owner or an admin as of its `ts` (else
 * `FORBIDDEN`); of the settings events held, the latest by `(ts, id)` wins.
 *
 * The boundary ({@linkcode retentionBoundary}) is a function of the group's event set alone, never of a node's
 * clock: `retention_ms` counts back from the newest event's `ts`, `retention_events` keeps the newest N events
 * (every event of the set counts, every kind; all those at the N-th newest one's `ts` are kept). Nodes that hold the
 * same set have the same boundary, whatever their clocks say, so they forget the same events and keep the same root.
 *
 * What retention never forgets: manifests, membership events, settings and tombstones (engine kinds, below 16):
 * forgetting them would change who may write or undo deletions. Only application events go.
 *
 * @module
 */

import { toHex } from "../core/bytes.ts";
import { XfError } from "../core/errors.ts";
import { RETENTION_EVENTS_MAX, RETENTION_MS_MAX } from "../core/limits.ts";
import { decodeCbor, encodeCbor } from "./cbor.ts";
import { APP_KIND_MIN } from "./event.ts";
import type { GroupState } from "./membership.ts";

/** A group's retention settings; an absent field sets no limit. */
export interface Settings {
  retention_ms?: number;
  retention_events?: number;
}

/** The settings in force in a group: the latest valid settings event's, with its `(ts, id)` (hex id). */
export interface SettingsRecord extends Settings {
  ts: number;
  id: string;
}

const KEYS = { retention_ms: RETENTION_MS_MAX, retention_events: RETENTION_EVENTS_MAX } as const;

function bad(what: string): never {
  throw new XfError("BAD_EVENT", `Cannot decode settings payload: ${what}`);
}

function check(name: string, v: unknown, max: number, verb: string) {
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 1 || v > max) {
    throw new XfError(
      "BAD_EVENT",
      `Cannot ${verb} settings payload: ${name} "${String(v)}" is not an integer from 1 to ${max}`,
    );
  }
}

/**
 * Encode a settings payload: the deterministic CBOR map of the fields given. Throws {@linkcode XfError}
 * `BAD_EVENT` for a value that is not a positive integer within its bound.
 *
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { decodeSettings, encodeSettings } from "./retention.ts";
 * assertEquals(decodeSettings(encodeSettings({ retention_events: 1000 })), { retention_events: 1000 });
 * ```
 */
export function encodeSettings(s: Settings): Uint8Array {
  const m = new Map<string, number>();
  for (const [name, max] of Object.entries(KEYS)) {
    const v = (s as Record<string, unknown>)[name];
    if (v === undefined) continue;
    check(name, v, max, "encode");
    m.set(name, v as number);
  }
  return encodeCbor(m);
}

/**
 * Decode a settings payload strictly: a deterministic CBOR map whose keys are `retention_ms` and `retention_events`
 * only, each a positive integer within its bound. Throws {@linkcode XfError} `BAD_EVENT` otherwise.
 *
 * @example
 * ```ts
 * import { assertThrows } from "@std/assert";
 * import { decodeSettings } from "./retention.ts";
 * import { encodeCbor } from "./cbor.ts";
 * assertThrows(() => decodeSettings(encodeCbor(new Map([["retention_ms", 0]]))), Error, "not an integer");
 * ```
 */
export function decodeSettings(payload: Uint8Array): Settings {
  let v: unknown;
  try {
    v = decodeCbor(payload);
  } catch (e) {
    bad((e as Error).message.replace(/^Cannot decode CBOR:? ?/, ""));
  }
  if (!(v instanceof Map)) bad("not a CBOR map");
  const out: Settings = {};
  for (const [k, x] of v as Map<unknown, unknown>) {
    if (k !== "retention_ms" && k !== "retention_events") {
      bad(`unknown key "${String(k)}" (retention_ms and retention_events only)`);
    }
    check(k, x, KEYS[k], "decode");
    out[k] = x as number;
  }
  return out;
}

/** The verdict of {@linkcode judgeSettings}. */
export type SettingsJudgement = { ok: true } | { ok: false; code: "FORBIDDEN"; message: string };

/** May `author` sign a settings event stamped `ts`? The owner or an admin at `ts` may; anyone else is `FORBIDDEN`. */
export function judgeSettings(state: GroupState, ev: { author: Uint8Array; ts: number }): SettingsJudgement {
  if (state.isAdmin(ev.author, ev.ts)) return { ok: true };
  return {
    ok: false,
    code: "FORBIDDEN",
    message: `Cannot apply settings event: signer "${toHex(ev.author)}" is not the owner or an admin at ts "${ev.ts}"`,
  };
}

/** True when the settings event `(ts, id)` (hex id) comes after `current` in `(ts, id)` order, or there is none. */
export function isNewerSettings(ts: number, id: string, current: SettingsRecord | null): boolean {
  return !current || ts > current.ts || (ts === current.ts && id > current.id);
}

/**
 * The lowest `ts` a group retains (0: everything), from its settings and its event set: `newestTs` is the greatest
 * `ts` in the set, `nthNewestTs` the `ts` of its `retention_events`-th newest event in `(ts, id)` order (null when
 * the set holds fewer than that many). Application events below it are forgotten, and refused when they arrive.
 *
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { retentionBoundary } from "./retention.ts";
 * assertEquals(retentionBoundary({ retention_ms: 100 }, 1000, null), 900);
 * assertEquals(retentionBoundary({ retention_ms: 100, retention_events: 5 }, 1000, 950), 950);
 * assertEquals(retentionBoundary(null, 1000, null), 0);
 * ```
 */
export function retentionBoundary(s: Settings | null, newestTs: number | null, nthNewestTs: number | null): number {
  let b = 0;
  if (s?.retention_ms !== undefined && newestTs !== null) b = Math.max(b, newestTs - s.retention_ms);
  if (s?.retention_events !== undefined && nthNewestTs !== null) b = Math.max(b, nthNewestTs);
  return b;
}

/** True for events retention may forget: application events (kind ≥ 16), never the engine's own kinds. */
export function isForgettableKind(kind: number): boolean {
  return kind >= APP_KIND_MIN;
}
