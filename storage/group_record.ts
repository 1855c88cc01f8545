/**
 * A group as a store keeps it, shared by the node's index (`actors/index.ts`)
 * and the replica (`replica_store.ts`) so both read and write the same
 * keyspaces the same way: the group record (owner, policy, name, manifest id)
 * under `g`, and the group's membership state (`membership.ts`, as JSON)
 * under the metadata key `members:<gid>`. No Deno API.
 *
 * @module
 */

import { decodeCbor, encodeCbor } from "./cbor.ts";
import { metaKey } from "./keys.ts";
import { GroupState, type GroupStateJSON } from "./membership.ts";
import { fromHex } from "../core/bytes.ts";

/** A group as a store keeps it. */
export interface GroupRecord {
  /** The owner's public key, hex. */
  owner: string;
  policy: number;
  name: string;
  /** The manifest's id, hex. */
  manifest: string;
}

/**
 * The stored form of a group record: CBOR `[owner, policy, name, manifest]`.
 *
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { decodeGroup, encodeGroup } from "./group_record.ts";
 * const g = { owner: "ab".repeat(32), policy: 1, name: "n", manifest: "cd".repeat(32) };
 * assertEquals(decodeGroup(encodeGroup(g)), g);
 * ```
 */
export function encodeGroup(g: GroupRecord): Uint8Array {
  return encodeCbor([g.owner, g.policy, g.name, g.manifest]);
}

/** A group record from its stored form. */
export function decodeGroup(b: Uint8Array): GroupRecord {
  const [owner, policy, name, manifest] = decodeCbor(b) as [string, number, string, string];
  return { owner, policy, name, manifest };
}

/** The metadata key of a group's membership state. */
export const membersKey = (gid: string): Uint8Array => metaKey(`members:${gid}`);

/** A membership state's stored form (JSON bytes). */
export function encodeGroupState(st: GroupState): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(st.toJSON()));
}

/** A group's membership state from its stored form, or a fresh one from its record when none is stored. */
export function loadGroupState(rec: GroupRecord, raw: Uint8Array | undefined): GroupState {
  return raw
    ? GroupState.fromJSON(JSON.parse(new TextDecoder().decode(raw)) as GroupStateJSON)
    : new GroupState(fromHex(rec.owner)!, rec.policy);
}
