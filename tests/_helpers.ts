// Shared fixtures for tests: temp nodes, keys, groups and signed events.
import { openNode, type XfNode } from "../actors/node.ts";
import type { PipelineOptions } from "../actors/root.ts";
import { generateKeyPair, type KeyPair } from "../storage/ed25519.ts";
import { createGroup, signEvent, type StoredEvent } from "../storage/event.ts";

/** A node on a fresh temp dir; `done()` closes it and removes the dir. */
export async function tempNode(
  opts: Partial<PipelineOptions> = {},
): Promise<{ node: XfNode; dir: string; done(): Promise<void> }> {
  const dir = opts.dataDir ?? await Deno.makeTempDir({ prefix: "xf-test-" });
  const node = await openNode({ workers: false, ...opts, dataDir: dir });
  return {
    node,
    dir,
    async done() {
      await node.close();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
  };
}

/** A group with its owner and manifest. */
export interface TestGroup {
  owner: KeyPair;
  gid: Uint8Array;
  manifest: StoredEvent;
}

export async function testGroup(name = "test", policy = 0): Promise<TestGroup> {
  const owner = await generateKeyPair();
  const { gid, manifest } = await createGroup(owner, { name, policy });
  return { owner, gid, manifest };
}

/** `n` signed app events in a group, with distinct timestamps from `ts0`. */
export async function makeEvents(
  g: TestGroup,
  n: number,
  ts0 = Date.now() - 1_000_000,
  author?: KeyPair,
): Promise<StoredEvent[]> {
  const key = author ?? g.owner;
  const out: StoredEvent[] = [];
  for (let i = 0; i < n; i++) {
    out.push(
      await signEvent(key, {
        group: g.gid,
        ts: ts0 + i,
        kind: 16 + (i % 3),
        tags: [["n", String(i)]],
        payload: new TextEncoder().encode(`event ${i}`),
      }),
    );
  }
  return out;
}

export function hexOf(b: Uint8Array): string {
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}
