// Negentropy v1 conformance, after the reference's fuzz harness (hoytech/negentropy `test/fuzz`): two random sets
// with a random overlap, random frame size limits on each side, reconciled to the end; what each side learns is
// checked against the true symmetric difference. Our Reconciler runs as initiator against our responder (both
// id-list modes) and against nostr-tools' `nip77.Negentropy` (reference-compatible), and nostr-tools' initiator
// against ours; where both are responders to the same messages, their replies must be byte for byte the same.
//
// Not covered: the reference's random id sizes (NIP-77 and nostr-tools fix ids at 32 bytes, and so do we).
// Timestamps stay below 2^31: nostr-tools' varints break above that.
//
// XF_CONFORMANCE_CASES=N runs N cases (default 300, about 6 s); XF_CONFORMANCE_SEED picks the seed.

import { Prng } from "../core/bytes.ts";
import { assert, assertEquals } from "@std/assert";
import { bytesToHex, hexToBytes } from "@noble/hashes/utils";
import { nip77 } from "npm:nostr-tools@2.25.2";
import { FRAME_SIZE_LIMIT_MIN, PROTOCOL_VERSION, Reconciler } from "../merkle/negentropy.ts";
import { VectorStorage } from "../merkle/negentropy_storage.ts";

const { Negentropy, NegentropyStorageVector } = nip77;

const CASES = Number(Deno.env.get("XF_CONFORMANCE_CASES") ?? 300);
const SEED = Number(Deno.env.get("XF_CONFORMANCE_SEED") ?? 0x6e6567);
const ITEMS_MAX = 2000;
const FRAME_MAX = 500_000;
const ROUNDS_MAX = 500;

interface Item {
  ts: number;
  id: Uint8Array;
}

interface Case {
  name: string;
  a: Item[];
  b: Item[];
  onlyA: Set<string>;
  onlyB: Set<string>;
  /** Frame size limits of the initiator and the responder. */
  limitA: number;
  limitB: number;
}

function makeCase(r: () => number, k: number): Case {
  const int = (lo: number, hi: number) => lo + Math.floor(r() * (hi - lo + 1));
  // Sizes: a third small (id lists only), the rest up to ITEMS_MAX; some one-sided and empty sets.
  const n = r() < 0.33 ? int(0, 40) : int(0, ITEMS_MAX);
  // Timestamp spans from one value (every item shares it) to ~2^31, so duplicates range from all to few.
  const span = [1, 2, 10, Math.max(1, n >> 2), n * 10, 2 ** 31 - 1][int(0, 5)]!;
  const base = int(0, 2 ** 31 - 1 - span);
  const pBoth = [0, 0.5, 0.9, 0.99, 1][int(0, 4)]!;
  const pA = r(); // of the rest, the share only A holds
  const a: Item[] = [], b: Item[] = [];
  const onlyA = new Set<string>(), onlyB = new Set<string>();
  const seen = new Set<string>();
  for (let i = 0; i < n; i++) {
    const id = new Uint8Array(32);
    for (let j = 0; j < 32; j++) id[j] = int(0, 255);
    // Some ids share a long prefix with an earlier one at the same timestamp: bounds then need id prefixes.
    let ts = base + Math.min(span - 1, Math.floor(r() * span));
    if (a.length + b.length > 0 && r() < 0.1) {
      const prev = (r() < 0.5 && a.length ? a : b.length ? b : a)[0]!;
      id.set(prev.id.subarray(0, int(1, 31)));
      ts = prev.ts;
    }
    const hex = bytesToHex(id);
    if (seen.has(hex)) continue;
    seen.add(hex);
    const x = { ts, id };
    const u = r();
    if (u < pBoth) {
      a.push(x);
      b.push(x);
    } else if (r() < pA) {
      a.push(x);
      onlyA.add(hex);
    } else {
      b.push(x);
      onlyB.add(hex);
    }
  }
  const limit = () => r() < 0.25 ? FRAME_SIZE_LIMIT_MIN : int(FRAME_SIZE_LIMIT_MIN, FRAME_MAX);
  const limitA = limit(), limitB = limit();
  return {
    name: `case ${k}: ${a.length}/${b.length} items, span ${span}, ${onlyA.size}+${onlyB.size} differ, ` +
      `limits ${limitA}/${limitB}`,
    a,
    b,
    onlyA,
    onlyB,
    limitA,
    limitB,
  };
}

/** One side of a run, with hex ids out. */
interface Party {
  initiate(): Uint8Array;
  reconcile(msg: Uint8Array): { output: Uint8Array | null; have: string[]; need: string[] };
}

function ours(items: Item[], frameSizeLimit: number, idListReply = false): Party {
  const s = new VectorStorage();
  for (const x of items) s.insert(x.ts, x.id);
  s.seal();
  const rec = new Reconciler(s, { frameSizeLimit, idListReply });
  return {
    initiate: () => rec.initiate(),
    reconcile(msg) {
      const r = rec.reconcile(msg);
      return { output: r.output, have: r.have.map(bytesToHex), need: r.need.map(bytesToHex) };
    },
  };
}

function theirs(items: Item[], frameSizeLimit: number): Party {
  const s = new NegentropyStorageVector();
  for (const x of items) s.insert(x.ts, bytesToHex(x.id));
  s.seal();
  const neg = new Negentropy(s, frameSizeLimit);
  let initiator = false;
  return {
    initiate() {
      initiator = true;
      return hexToBytes(neg.initiate());
    },
    reconcile(msg) {
      const have: string[] = [], need: string[] = [];
      const out = neg.reconcile(bytesToHex(msg), (id) => have.push(id), (id) => need.push(id));
      // A nostr-tools responder with nothing to add returns null; on the wire that is the bare version byte.
      const output = out === null ? (initiator ? null : Uint8Array.of(PROTOCOL_VERSION)) : hexToBytes(out);
      return { output, have, need };
    },
  };
}

interface Transcript {
  /** Every message, hex, in order (initiator's first). */
  msgs: string[];
  /** Ids found only on the initiator's side, by either side. */
  foundA: Set<string>;
  /** Ids found only on the responder's side, by either side. */
  foundB: Set<string>;
  /** What the responder itself learned (ids). */
  responderLearned: number;
}

function run(init: Party, resp: Party, label: string): Transcript {
  const t: Transcript = { msgs: [], foundA: new Set(), foundB: new Set(), responderLearned: 0 };
  let msg: Uint8Array | null = init.initiate();
  for (let round = 0; msg !== null; round++) {
    assert(round < ROUNDS_MAX, `${label}: no end after ${ROUNDS_MAX} rounds`);
    t.msgs.push(bytesToHex(msg));
    const r = resp.reconcile(msg);
    for (const id of r.have) t.foundB.add(id);
    for (const id of r.need) t.foundA.add(id);
    t.responderLearned += r.have.length + r.need.length;
    const reply = r.output;
    if (reply === null) throw new Error(`${label}: a responder always replies`);
    t.msgs.push(bytesToHex(reply));
    const i = init.reconcile(reply);
    for (const id of i.have) t.foundA.add(id);
    for (const id of i.need) t.foundB.add(id);
    msg = i.output;
  }
  return t;
}

function assertFound(t: Transcript, c: Case, label: string): void {
  // Set equality, reported compactly on failure.
  const diff = (x: Set<string>, y: Set<string>) => [...x].filter((v) => !y.has(v)).length;
  const bad = diff(t.foundA, c.onlyA) + diff(c.onlyA, t.foundA) + diff(t.foundB, c.onlyB) + diff(c.onlyB, t.foundB);
  assertEquals(bad, 0, `${label}: found ${t.foundA.size}+${t.foundB.size}, truth ${c.onlyA.size}+${c.onlyB.size}`);
}

function assertFrames(t: Transcript, initLimit: number, respLimit: number, label: string): void {
  // Each side stays within its own limit (0: unlimited).
  t.msgs.forEach((m, i) => {
    const limit = i % 2 === 0 ? initLimit : respLimit;
    assert(limit === 0 || m.length / 2 <= limit, `${label}: message ${i} of ${m.length / 2} bytes over ${limit}`);
  });
}

Deno.test(`Negentropy conformance: ${CASES} random cases against the true difference and nostr-tools`, () => {
  const r = new Prng(SEED).float;
  let rounds = 0, multiRound = 0, differing = 0;
  for (let k = 0; k < CASES; k++) {
    const c = makeCase(r, k);
    if (c.onlyA.size + c.onlyB.size > 0) differing++;

    // Ours against ours, nostr-tools' way (each side reports the id lists it receives).
    const oo = run(ours(c.a, c.limitA), ours(c.b, c.limitB), `${c.name}, ours/ours`);
    assertFound(oo, c, `${c.name}, ours/ours`);
    assertFrames(oo, c.limitA, c.limitB, `${c.name}, ours/ours`);

    // Ours against nostr-tools as the responder: same results, and its replies are ours byte for byte.
    const ot = run(ours(c.a, c.limitA), theirs(c.b, c.limitB), `${c.name}, ours/nostr-tools`);
    assertFound(ot, c, `${c.name}, ours/nostr-tools`);
    assertEquals(ot.msgs, oo.msgs, `${c.name}: our responder's messages differ from nostr-tools'`);

    // nostr-tools as the initiator against our responder and against its own: the same bytes both ways.
    const to = run(theirs(c.a, c.limitA), ours(c.b, c.limitB), `${c.name}, nostr-tools/ours`);
    assertFound(to, c, `${c.name}, nostr-tools/ours`);
    const tt = run(theirs(c.a, c.limitA), theirs(c.b, c.limitB), `${c.name}, nostr-tools/nostr-tools`);
    assertEquals(to.msgs, tt.msgs, `${c.name}: our responder's messages differ from nostr-tools'`);

    // The C++ reference's id-list replies (what nodes run): the initiator alone learns the whole difference.
    const full = run(ours(c.a, c.limitA), ours(c.b, c.limitB, true), `${c.name}, id-list replies`);
    assertFound(full, c, `${c.name}, id-list replies`);
    assertEquals(full.responderLearned, 0, `${c.name}: an id-list-replying responder learns nothing`);
    assertFrames(full, c.limitA, c.limitB, `${c.name}, id-list replies`);

    rounds += oo.msgs.length / 2;
    if (oo.msgs.length > 2) multiRound++;
  }
  // The generator must reach the interesting cases, not just small ones.
  if (CASES >= 100) {
    assert(multiRound >= CASES / 10, `only ${multiRound} of ${CASES} cases took more than one round`);
    assert(differing >= CASES / 2, `only ${differing} of ${CASES} cases differed`);
  }
  console.log(`${CASES} cases (seed ${SEED}): ${rounds} rounds, ${multiRound} multi-round, ${differing} differing`);
});

Deno.test("Negentropy conformance: unlimited frames (0) on our side find the whole difference", () => {
  const r = new Prng(SEED + 1).float;
  for (let k = 0; k < Math.max(10, CASES / 10); k++) {
    const c = makeCase(r, k);
    const t = run(ours(c.a, 0), ours(c.b, 0, true), `${c.name}, unlimited`);
    assertFound(t, c, `${c.name}, unlimited`);
  }
});
